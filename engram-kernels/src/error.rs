//! The crate's one error type. Every variant says what was expected, what was found and where.

use std::path::PathBuf;

/// Errors from building layouts, compression tables and hashing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of its valid range.
    #[error("invalid config: {field} = {value}: {reason}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A raw token id does not exist in the compression table.
    #[error(
        "token id {id} at index {index} is out of range: the vocabulary has {vocab_size} ids (0..{vocab_size})"
    )]
    IdOutOfRange {
        id: i64,
        index: usize,
        vocab_size: usize,
    },
    /// A buffer's length does not match the shape it is used with.
    #[error("shape mismatch for {what}: expected {expected} elements, found {found}")]
    Shape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// A batch with no rows or no positions where work was asked for.
    #[error("empty batch: {what}")]
    EmptyBatch { what: &'static str },
    /// A layer id that the layout does not contain.
    #[error("layer {layer_id} is not an Engram layer of this layout (layers: {known:?})")]
    UnknownLayer { layer_id: u64, known: Vec<u64> },
    /// The tokenizer file could not be read or parsed.
    #[error("cannot load tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// The tokenizer loaded but does not have the structure compression needs.
    #[error("tokenizer is unusable for compression: {0}")]
    TokenizerContents(String),
    /// A compression table given as data is malformed.
    #[error("invalid compression table: {0}")]
    CompressionTable(String),
    /// A number in the layout does not fit the type the arithmetic needs.
    #[error("arithmetic overflow computing {what}")]
    Overflow { what: &'static str },
    /// A kernel was asked for on a backend not compiled into this build.
    #[error("{what} is not compiled in: rebuild with `--features {feature}`")]
    NotCompiled {
        what: &'static str,
        feature: &'static str,
    },
    /// A backend is compiled in but cannot run on this machine.
    #[error("{what} is not available on this machine: {reason}")]
    Unavailable { what: &'static str, reason: String },
    /// Non-finite or otherwise unusable numeric input.
    #[error("invalid value in {what}: {reason}")]
    InvalidValue { what: &'static str, reason: String },
    /// A row id past the end of the table it indexes.
    #[error("row id {row} at index {index} is out of range: the table has {rows} rows")]
    RowOutOfRange { row: u64, index: usize, rows: u64 },
    /// Two tensors that must agree in a dimension do not.
    #[error("width mismatch: {what}: {left} vs {right}")]
    WidthMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
    /// A CUDA driver call failed after the device was found.
    #[error("CUDA {op} failed: {reason}")]
    Cuda { op: &'static str, reason: String },
    /// NVRTC rejected a kernel source.
    #[error("NVRTC could not compile {kernel}: {log}")]
    CudaCompile { kernel: &'static str, log: String },
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
