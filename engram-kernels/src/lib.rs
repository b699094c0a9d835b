//! Engram's compute kernels: bit-exact addressing (tokenizer compression, the numpy
//! multiplier chain, prime table sizes, multi-head n-gram hashing) and the module's
//! numeric kernels. Pure compute over slices; no I/O (finding and reading `tokenizer.json`
//! and other input files is `engram-files`').
//!
//! The semantics are `ENGRAM-SPEC.md`'s; [`reference`](mod@reference) states them naively, and every fast
//! routine here is property-tested against it.
//!
//! # Addressing: from token ids to row ids
//!
//! 1. **Compression** ([`CompressionTable`]): raw tokenizer ids map to canonical ids, so
//!    that tokens differing only in case or surrounding whitespace share rows.
//!    [`CompressionTable::from_tokenizer`] derives the table from a `tokenizer.json`
//!    (loaded by `engram_files::tokenizer::load`); [`CompressionTable::identity`] and
//!    [`CompressionTable::from_lookup`] build one from data.
//! 2. **Layout** ([`EngramLayout`]): an [`EngramConfig`] (orders `2..=N`, `K` heads per
//!    order, base sizes, layer ids, seed) and the compressed vocabulary size give every
//!    layer its odd multipliers ([`layout::multipliers`]) and one distinct prime table size
//!    per head ([`primes`]); a layer's single table concatenates its heads' tables.
//! 3. **Hashing** ([`NgramHasher`]): for each position and each order `n`, the last `n`
//!    canonical ids (left-padded with the compressed padding id) are mixed with the layer's
//!    multipliers and reduced modulo each head's prime. [`HashOutput::RowId`] adds the
//!    head's offset, giving row ids of the layer's table, `(N-1) * K` per position;
//!    [`NgramHasher::hash_last_into`] hashes only the newest position (decode).
//!
//! ```
//! use engram_kernels::{CompressionTable, EngramConfig, EngramLayout};
//! use engram_kernels::{HashOptions, HashOutput, NgramHasher};
//! # fn main() -> engram_kernels::Result<()> {
//! let compression = CompressionTable::identity(1000);
//! let config = EngramConfig::demo(); // orders 2..3, 8 heads, layers 1 and 15
//! let pad = compression.compress_id(config.pad_id)?;
//! let layout = EngramLayout::new(&config, compression.compressed_vocab_size(), pad)?;
//! let hasher = NgramHasher::new(&layout, HashOptions::default())?;
//!
//! let ids = compression.compress(&[17, 4, 256, 17, 4])?; // one sequence, 5 positions
//! let heads = hasher.n_hash_heads(); // (N-1) * K = 16
//! let mut rows = vec![0u64; ids.len() * heads];
//! let layer_index = layout.layer_index(15)?; // by layer id
//! hasher.hash_into(layer_index, &ids, 1, ids.len(), HashOutput::RowId, &mut rows)?;
//! let total = layout.layers[layer_index].total_rows;
//! assert!(rows.iter().all(|&r| r < total));
//!
//! // Decode hashes the newest position from a window of the last N ids.
//! let mut last = vec![0u64; heads];
//! hasher.hash_last_into(layer_index, &ids[2..], HashOutput::RowId, &mut last)?;
//! assert_eq!(last, rows[4 * heads..]);
//! # Ok(()) }
//! ```
//!
//! # Dequantising rows
//!
//! Table rows are stored as [`RowLayout`]: `F32`, `Bf16`, `F16`, or FP8 E4M3 with one E8M0
//! scale per block of values (DeepSeek-V4.1's layout). [`dequantize_rows`] decodes rows to
//! `f32`, [`quantize_rows`] encodes them (the table builder's side), [`gather_rows`] gathers
//! and decodes row ids from a whole in-memory layer, and [`memory_vectors`] turns the rows of
//! `[tokens][heads]` (as a store returns them) into the module's input `e`.
//!
//! ```
//! use engram_kernels::{RowLayout, dequantize_rows, quantize_rows};
//! # fn main() -> engram_kernels::Result<()> {
//! let dtype = RowLayout::Bf16;
//! let width = 4;
//! let values = [1.0f32, -2.5, 0.125, 3.0]; // one row
//! let mut bytes = vec![0u8; dtype.row_bytes(width)?];
//! quantize_rows(dtype, width, &values, &mut bytes)?;
//! let mut back = [0f32; 4];
//! dequantize_rows(dtype, width, &bytes, &mut back)?;
//! assert_eq!(back, values); // exactly representable in bf16
//! # Ok(()) }
//! ```
//!
//! # The module kernels
//!
//! [`EngramModule`] is the Engram block's forward pass (`ENGRAM-SPEC.md` section 8): the
//! fused value and key projections of `e`, the per-branch context-aware gate against the
//! hidden state, RMSNorm, the dilated depthwise causal convolution ([`ConvState`] carries
//! its history), SiLU and the residual. [`EngramModule::forward_prefill`] takes whole
//! sequences; [`EngramModule::forward_decode`] one new position per sequence, continuing
//! from the states prefill left, so step-by-step decode equals prefill. The CPU path
//! ([`cpu`]) dispatches to AVX2+FMA or AVX-512F at run time, with a scalar path always
//! compiled (`ENGRAM_FORCE_SCALAR=1` forces it); [`cuda`] runs the same kernels on a GPU
//! with the `cuda` feature, and without it returns [`Error::NotCompiled`].
//!
//! # Conformance vectors
//!
//! `tests/data/conformance/` (in the repository) holds the normative vectors:
//! `engram-hash-v1.json` (raw ids, compressed ids, multipliers, primes and row ids for the
//! published configs, produced by the official Python demo) and `engram-forward-v1*`
//! (module weights, inputs, every intermediate and the output). The crate's tests check
//! compression, hashing, the reference, the fast CPU path, decode and CUDA against them;
//! its README says how they were produced.
//!
//! # Errors
//!
//! Every fallible call returns [`Error`], one `#[non_exhaustive]` enum whose variants name
//! what was expected, what was found and where (a field, an index, a layer id). Bad input
//! is an `Err`, never a panic.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod alloc;
pub mod compress;
pub mod conv;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda/stub.rs"]
pub mod cuda;
pub mod engram_module;
pub mod error;
pub mod fastmod;
pub mod gate;
pub mod gather;
pub mod hash;
pub mod layout;
pub mod preset;
pub mod primes;
pub mod quant;
pub mod reference;
pub mod rng;
pub mod skip;

pub use compress::CompressionTable;
pub use conv::ConvState;
pub use engram_module::{
    DecodeScratch, EngramModule, EngramModuleConfig, EngramModuleWeights, ForwardTrace,
    PrefillScratch,
};
pub use error::{Error, Result};
pub use gather::{gather_rows, memory_vectors};
pub use hash::{HashOptions, HashOutput, NgramHasher};
pub use layout::{EngramConfig, EngramLayout, LayerLayout};
pub use preset::Preset;
pub use quant::{RowLayout, dequantize_rows, quantize_rows};
