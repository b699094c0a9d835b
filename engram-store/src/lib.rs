//! The Engram storage tier (in progress).
#![deny(unsafe_code)]
