//! The crate's error type: every variant names the file or tensor and what was expected.

use std::path::PathBuf;

/// Errors from loading a model and decoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model file could not be read, is not a regular file, is too large, or differs
    /// from the SHA-256 its directory's `SHA256SUMS` records.
    #[error(transparent)]
    File(#[from] engram_files::file::FileError),
    /// A buffer sized by the model could not be allocated.
    #[error(transparent)]
    Alloc(#[from] engram_kernels::alloc::AllocError),
    /// `config.json` or `vocab.json` is malformed or inconsistent.
    #[error("invalid {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor is missing from the weights file.
    #[error("{path}: tensor {name:?} is missing")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor has the wrong shape or dtype.
    #[error("{path}: tensor {name:?} has {found}, expected {expected}")]
    BadTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape and dtype the config implies.
        expected: String,
        /// The tensor's.
        found: String,
    },
    /// The weights file is not valid safetensors.
    #[error("{path} is not a valid safetensors file: {reason}")]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// The parser's error.
        reason: String,
    },
    /// The Engram table does not belong to this model (tokenizer, layers or addressing).
    #[error("the Engram table {table} does not match the model: {reason}")]
    TableMismatch {
        /// The table directory.
        table: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The tokenizer is not the one the model was trained with.
    #[error("tokenizer {path} has sha256 {found}, the model expects {expected}")]
    TokenizerMismatch {
        /// The tokenizer file.
        path: PathBuf,
        /// The SHA-256 the model's config records.
        expected: String,
        /// The file's SHA-256.
        found: String,
    },
    /// The prompt or generation exceeds the model's context.
    #[error("sequence of {len} tokens exceeds the model's context of {max}")]
    ContextFull {
        /// Tokens the sequence would hold.
        len: usize,
        /// The model's context (`max_position_embeddings`, or the longer one
        /// `Session::extend_context` set).
        max: usize,
    },
    /// Bad input at run time (empty prompt, bad sampler settings).
    #[error("invalid input: {0}")]
    Input(String),
    /// From the kernels.
    #[error(transparent)]
    Kernels(#[from] engram_kernels::Error),
    /// From the store.
    #[error(transparent)]
    Store(#[from] engram_store::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn config_err(path: &std::path::Path, reason: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
