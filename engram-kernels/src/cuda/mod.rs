//! CUDA backend (feature `cuda`): work in progress; every entry point is the stub's.
#[path = "stub.rs"]
mod stub;
pub use stub::*;
