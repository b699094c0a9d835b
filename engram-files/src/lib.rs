//! Engram's input files: everything that finds and reads a file from a path the user or the
//! environment names, so the compute crate (`engram-kernels`) does no I/O.
//!
//! - [`file`](mod@file): opening input files defensively (regular files only, no FIFO hang, a named
//!   size limit on every read) and the `SHA256SUMS` list that pins published files.
//! - [`tokenizer`]: finding `tokenizer.json` (`--tokenizer`, `$ENGRAM_TOKENIZER`, the cache
//!   `scripts/fetch-tokenizer.sh` fills) and loading it with its SHA-256 fingerprint.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod file;
#[doc(hidden)]
pub mod fuzz;
pub mod tokenizer;

pub use file::{FileError, Limit};
