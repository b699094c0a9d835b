//! Engram's compute kernels: bit-exact addressing (tokenizer compression, the numpy
//! multiplier chain, prime table sizes, multi-head n-gram hashing) and the module's
//! numeric kernels. Pure compute over slices; no I/O beyond reading a tokenizer file.
#![deny(unsafe_code)]

pub mod alloc;
pub mod compress;
pub mod conv;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda/stub.rs"]
pub mod cuda;
pub mod error;
pub mod fastmod;
pub mod file;
pub mod gate;
pub mod gather;
pub mod hash;
pub mod layout;
pub mod module;
pub mod primes;
pub mod quant;
pub mod reference;
pub mod rng;
pub mod tokenizer;

pub use compress::CompressionTable;
pub use conv::ConvState;
pub use error::{Error, Result};
pub use gather::{gather_rows, memory_vectors};
pub use hash::{HashOptions, HashOutput, NgramHasher};
pub use layout::{EngramConfig, EngramLayout, LayerLayout};
pub use module::{
    DecodeScratch, EngramModule, EngramModuleConfig, EngramModuleWeights, ForwardTrace,
    PrefillScratch,
};
pub use quant::{RowDtype, dequantize_rows, quantize_rows};
