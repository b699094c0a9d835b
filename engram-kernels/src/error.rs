//! The crate's one error type. Every variant says what was expected, what was found and where.

use std::path::PathBuf;

/// Errors from building layouts, compression tables and hashing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of its valid range.
    #[error("invalid config: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The config field (`max_ngram_size`, `n_head_per_ngram`, ...).
        field: &'static str,
        /// The value given, printed.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A raw token id does not exist in the compression table.
    #[error(
        "token id {id} at index {index} is out of range: the vocabulary has {vocab_size} ids (0..{vocab_size})"
    )]
    IdOutOfRange {
        /// The raw token id given.
        id: i64,
        /// Position of the id in the caller's token slice.
        index: usize,
        /// Number of raw ids the compression table maps (valid ids are `0..vocab_size`).
        vocab_size: usize,
    },
    /// A buffer's length does not match the shape it is used with.
    #[error("shape mismatch for {what}: expected {expected} elements, found {found}")]
    Shape {
        /// The buffer or argument whose length is wrong.
        what: &'static str,
        /// The element count the shape requires.
        expected: usize,
        /// The element count given.
        found: usize,
    },
    /// A batch with no rows or no positions where work was asked for.
    #[error("empty batch: {what}")]
    EmptyBatch {
        /// The batch that is empty.
        what: &'static str,
    },
    /// A layer id that the layout does not contain.
    #[error("layer {layer_id} is not an Engram layer of this layout (layers: {known:?})")]
    UnknownLayer {
        /// The layer id asked for.
        layer_id: u64,
        /// The layer ids the layout does contain, in order.
        known: Vec<u64>,
    },
    /// The tokenizer file could not be read or parsed.
    #[error("cannot load tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file (`tokenizer.json`).
        path: PathBuf,
        /// The read or parse error, in words.
        reason: String,
    },
    /// The tokenizer loaded but does not have the structure compression needs.
    #[error("tokenizer is unusable for compression: {0}")]
    TokenizerContents(String),
    /// A compression table given as data is malformed.
    #[error("invalid compression table: {0}")]
    CompressionTable(String),
    /// A number in the layout does not fit the type the arithmetic needs.
    #[error("arithmetic overflow computing {what}")]
    Overflow {
        /// The quantity whose computation overflowed.
        what: &'static str,
    },
    /// A kernel was asked for on a backend not compiled into this build.
    #[error("{what} is not compiled in: rebuild with `--features {feature}`")]
    NotCompiled {
        /// The kernel or backend asked for ("CUDA kernels").
        what: &'static str,
        /// The cargo feature that compiles it in.
        feature: &'static str,
    },
    /// A backend is compiled in but cannot run on this machine.
    #[error("{what} is not available on this machine: {reason}")]
    Unavailable {
        /// The backend asked for.
        what: &'static str,
        /// Why it cannot run here (no driver, no device), in words.
        reason: String,
    },
    /// Non-finite or otherwise unusable numeric input.
    #[error("invalid value in {what}: {reason}")]
    InvalidValue {
        /// The tensor or argument with the bad value.
        what: &'static str,
        /// What is wrong (`NaN at index 3`, ...).
        reason: String,
    },
    /// A row id past the end of the table it indexes.
    #[error("row id {row} at index {index} is out of range: the table has {rows} rows")]
    RowOutOfRange {
        /// The row id asked for.
        row: u64,
        /// Position of the id in the caller's id slice.
        index: usize,
        /// Number of rows the table has (valid ids are `0..rows`).
        rows: u64,
    },
    /// Two tensors that must agree in a dimension do not.
    #[error("width mismatch: {what}: {left} vs {right}")]
    WidthMismatch {
        /// The two tensors and the dimension compared.
        what: &'static str,
        /// The dimension of the first.
        left: usize,
        /// The dimension of the second.
        right: usize,
    },
    /// A CUDA driver call failed after the device was found.
    #[error("CUDA {op} failed: {reason}")]
    Cuda {
        /// The driver call that failed.
        op: &'static str,
        /// The driver's error, in words.
        reason: String,
    },
    /// NVRTC rejected a kernel source.
    #[error("NVRTC could not compile {kernel}: {log}")]
    CudaCompile {
        /// Name of the kernel source.
        kernel: &'static str,
        /// NVRTC's compile log.
        log: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> Error {
    Error::InvalidConfig {
        field,
        value: value.to_string(),
        reason,
    }
}

/// `Ok` when a buffer holds `expected` elements, else [`Error::Shape`] naming `what`.
pub(crate) fn check_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::Shape {
            what,
            expected,
            found,
        })
    }
}
