//! CUDA backend stub: this build has no `cuda` feature, so every entry point returns
//! [`Error::NotCompiled`]. The API mirrors `cuda/mod.rs`.

use crate::error::{Error, Result};

fn not_compiled<T>() -> Result<T> {
    Err(Error::NotCompiled {
        what: "the CUDA backend",
        feature: "cuda",
    })
}

/// Placeholder for the CUDA device handle.
#[derive(Debug)]
pub struct CudaEngine {
    _private: (),
}

impl CudaEngine {
    /// Always [`Error::NotCompiled`] in this build.
    pub fn new(_ordinal: usize) -> Result<Self> {
        not_compiled()
    }
}

/// Always [`Error::NotCompiled`] in this build.
pub fn driver_available() -> Result<()> {
    not_compiled()
}

/// Always [`Error::NotCompiled`] in this build.
pub fn nvrtc_available() -> Result<()> {
    not_compiled()
}

/// Always [`Error::NotCompiled`] in this build.
pub fn ptx() -> Result<String> {
    not_compiled()
}
