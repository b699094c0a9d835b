//! The crate's one error type, split by operation. Every variant says what was expected,
//! what was found and where (path, layer, byte offset).

use std::path::PathBuf;

/// Errors from writing, opening, verifying and reading Engram tables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed. The OS error is part of the message, not a
    /// `source()`, so an error chain (`{:#}`) prints it once.
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// An I/O call failed at a byte offset of a file.
    #[error("{op} {path} at offset {offset}: {error}")]
    IoAt {
        op: &'static str,
        path: PathBuf,
        offset: u64,
        error: std::io::Error,
    },
    /// A buffer sized by input (the cache budget) could not be allocated.
    #[error(transparent)]
    Alloc(#[from] engram_kernels::alloc::AllocError),
    /// The manifest is missing, not JSON, or inconsistent.
    #[error("invalid manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    /// The table was written by a format version this build does not read.
    #[error("{path}: unsupported format version {found} (this build reads version {expected})")]
    Version {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    /// The manifest's addressing constants disagree with the ones re-derived from its config.
    #[error(
        "manifest {path}: layer {layer_id} {field} disagree with the layout derived from the \
         config (expected {expected}, found {found})"
    )]
    Layout {
        path: PathBuf,
        layer_id: u64,
        field: &'static str,
        expected: String,
        found: String,
    },
    /// The table was built with a different tokenizer than the caller uses.
    #[error(
        "table {path} was built with tokenizer sha256 {found}, but the caller uses {expected}: \
         row ids would address the wrong rows"
    )]
    TokenizerMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// A layer file header is malformed or disagrees with the manifest.
    #[error(
        "{path} (layer {layer_id}): bad header field {field} at offset {offset}: expected {expected}, found {found}"
    )]
    Header {
        path: PathBuf,
        layer_id: u64,
        field: &'static str,
        offset: u64,
        expected: String,
        found: String,
    },
    /// A layer file is shorter or longer than its header and manifest say.
    #[error(
        "{path} (layer {layer_id}): file is {found} bytes, expected {expected} (truncated or extended)"
    )]
    FileSize {
        path: PathBuf,
        layer_id: u64,
        expected: u64,
        found: u64,
    },
    /// A checksum does not match the bytes: the file is corrupted.
    #[error(
        "{path} (layer {layer_id}): checksum mismatch in {what} at offset {offset} \
         (length {len}): stored {stored:#018x}, computed {computed:#018x}"
    )]
    Checksum {
        path: PathBuf,
        layer_id: u64,
        what: &'static str,
        offset: u64,
        len: u64,
        stored: u64,
        computed: u64,
    },
    /// A row id beyond the layer's table.
    #[error("row id {row} at index {index} is out of range for layer index {layer} ({rows} rows)")]
    RowOutOfRange {
        layer: usize,
        index: usize,
        row: u64,
        rows: u64,
    },
    /// A layer index beyond the table's layers.
    #[error("layer index {layer} is out of range: the table has {n_layers} layers")]
    LayerOutOfRange { layer: usize, n_layers: usize },
    /// A buffer's length does not match the shape it is used with.
    #[error("shape mismatch for {what}: expected {expected}, found {found}")]
    Shape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// A size outside `1..=limit` (a named limit).
    #[error("{what} is {found}, {}", limit_text(*.found, *.limit, .name))]
    Limit {
        what: &'static str,
        name: &'static str,
        limit: usize,
        found: usize,
    },
    /// An argument or option value is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// The writer was used out of order.
    #[error("table writer: {0}")]
    Writer(String),
    /// The destination exists and `force` was not given.
    #[error("{path} already exists (pass force to replace it)")]
    Exists { path: PathBuf },
    /// Another writer holds the table path's lock (see `crate::publish`).
    #[error(
        "another writer ({holder}) is writing a table at {path} (it holds the lock {lock}): \
         wait for it to finish or write elsewhere"
    )]
    Locked {
        path: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    /// A forced write would replace something that is not a table directory.
    #[error(
        "refusing to replace {path}: it is {found}, not a table directory (expected \
         manifest.json inside, or an empty directory)"
    )]
    NotATable { path: PathBuf, found: &'static str },
    /// An input file is not a regular file or is too large (its I/O errors are [`Error::Io`]).
    #[error(transparent)]
    Input(engram_kernels::file::FileError),
    /// A profile file is malformed.
    #[error("invalid profile {path} at offset {offset}: {reason}")]
    Profile {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A records file is malformed or belongs to another table.
    #[error("invalid records file {path} at offset {offset}: {reason}")]
    Records {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A feature that is not compiled into this build.
    #[error("{what} is not compiled in: rebuild with `--features {feature}`")]
    NotCompiled {
        what: &'static str,
        feature: &'static str,
    },
    /// A backend or facility compiled in but not usable on this machine.
    // Not "on this machine": the cause may be a per-process limit (open files, locked
    // memory), which the reason names.
    #[error("{what} cannot be used: {reason}")]
    Unavailable { what: &'static str, reason: String },
    /// The store's workers stopped after an earlier failure; reopen the store.
    #[error("the store is shut down ({0}); reopen it")]
    ShutDown(&'static str),
    /// A component failed in a way that makes it unusable; reopen the store.
    #[error("{what} failed ({reason}); reopen the store")]
    Broken { what: &'static str, reason: String },
    /// The batch was cancelled before it finished (speculative prefetch).
    #[error("cancelled")]
    Cancelled,
    /// A file was replaced on disk between validating the table and opening it again, or
    /// the table directory was replaced every time `Table::open` tried it.
    #[error("{path} was replaced while the table was being opened; open the table again")]
    Replaced { path: PathBuf },
    /// A row source other than the in-process store failed (the storage service's client:
    /// the server went away, refused the client, or answered out of protocol).
    #[error(transparent)]
    Remote(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl From<engram_kernels::file::FileError> for Error {
    fn from(e: engram_kernels::file::FileError) -> Self {
        match e {
            engram_kernels::file::FileError::Io { op, path, error } => {
                Error::Io { op, path, error }
            }
            other => Error::Input(other),
        }
    }
}

fn limit_text(found: usize, limit: usize, name: &str) -> String {
    if found == 0 {
        "it must be at least 1".into()
    } else {
        format!("above the limit {limit} ({name})")
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(op: &'static str, path: &std::path::Path, error: std::io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

pub(crate) fn io_at(
    op: &'static str,
    path: &std::path::Path,
    offset: u64,
    error: std::io::Error,
) -> Error {
    Error::IoAt {
        op,
        path: path.to_path_buf(),
        offset,
        error,
    }
}
