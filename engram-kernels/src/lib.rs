//! Engram's compute kernels: bit-exact addressing (tokenizer compression, the numpy
//! multiplier chain, prime table sizes, multi-head n-gram hashing) and the module's
//! numeric kernels. Pure compute over slices; no I/O beyond reading a tokenizer file.
#![deny(unsafe_code)]

pub mod compress;
pub mod error;
pub mod fastmod;
pub mod hash;
pub mod layout;
pub mod primes;
pub mod reference;
pub mod rng;
pub mod tokenizer;

pub use compress::CompressionTable;
pub use error::{Error, Result};
pub use hash::{HashOptions, HashOutput, NgramHasher};
pub use layout::{EngramConfig, EngramLayout, LayerLayout};
