//! A minimal DeepSeekMoE-style decoder with Engram layers (in progress).
#![deny(unsafe_code)]
