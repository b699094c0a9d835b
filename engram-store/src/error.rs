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
        /// The call that failed, as a verb phrase ("open", "read", "rename").
        op: &'static str,
        /// The file or directory the call was made on.
        path: PathBuf,
        /// The operating-system error.
        error: std::io::Error,
    },
    /// An I/O call failed at a byte offset of a file.
    #[error("{op} {path} at offset {offset}: {error}")]
    IoAt {
        /// The call that failed, as a verb phrase ("read", "write").
        op: &'static str,
        /// The file the call was made on.
        path: PathBuf,
        /// Byte offset in the file where the call started.
        offset: u64,
        /// The operating-system error.
        error: std::io::Error,
    },
    /// A buffer sized by input (the cache budget) could not be allocated.
    #[error(transparent)]
    Alloc(#[from] engram_kernels::alloc::AllocError),
    /// The manifest is missing, not JSON, or inconsistent.
    #[error("invalid manifest {path}: {reason}")]
    Manifest {
        /// Path of the `manifest.json` that was read.
        path: PathBuf,
        /// What is wrong, in words (the JSON error or the inconsistent field).
        reason: String,
    },
    /// The table was written by a format version this build does not read.
    #[error("{path}: unsupported format version {found} (this build reads version {expected})")]
    Version {
        /// Path of the manifest that names the version.
        path: PathBuf,
        /// The version this build reads ([`crate::FORMAT_VERSION`]).
        expected: u32,
        /// The version the manifest names.
        found: u32,
    },
    /// The manifest's addressing constants disagree with the ones re-derived from its config.
    #[error(
        "manifest {path}: layer {layer_id} {field} disagree with the layout derived from the \
         config (expected {expected}, found {found})"
    )]
    Layout {
        /// Path of the manifest.
        path: PathBuf,
        /// The model layer id (`layer_id` in the config), not a position in the table.
        layer_id: u64,
        /// The manifest field that disagrees (`multipliers`, `primes`, ...).
        field: &'static str,
        /// The value re-derived from the config, printed.
        expected: String,
        /// The value stored in the manifest, printed.
        found: String,
    },
    /// The table was built with a different tokenizer than the caller uses.
    #[error(
        "table {path} was built with tokenizer sha256 {found}, but the caller uses {expected}: \
         row ids would address the wrong rows"
    )]
    TokenizerMismatch {
        /// The table directory.
        path: PathBuf,
        /// Hex sha256 of the tokenizer the caller uses.
        expected: String,
        /// Hex sha256 of the tokenizer the table was built with.
        found: String,
    },
    /// A layer file header is malformed or disagrees with the manifest.
    #[error(
        "{path} (layer {layer_id}): bad header field {field} at offset {offset}: expected {expected}, found {found}"
    )]
    Header {
        /// The layer file.
        path: PathBuf,
        /// The model layer id of the file.
        layer_id: u64,
        /// The header field that is wrong (`magic`, `row_bytes`, ...).
        field: &'static str,
        /// Byte offset of the field in the file.
        offset: u64,
        /// The value the format or the manifest requires, printed.
        expected: String,
        /// The value in the file, printed.
        found: String,
    },
    /// A layer file is shorter or longer than its header and manifest say.
    #[error(
        "{path} (layer {layer_id}): file is {found} bytes, expected {expected} (truncated or extended)"
    )]
    FileSize {
        /// The layer file.
        path: PathBuf,
        /// The model layer id of the file.
        layer_id: u64,
        /// Length in bytes the header and manifest imply.
        expected: u64,
        /// Length in bytes of the file on disk.
        found: u64,
    },
    /// A checksum does not match the bytes: the file is corrupted.
    #[error(
        "{path} (layer {layer_id}): checksum mismatch in {what} at offset {offset} \
         (length {len}): stored {stored:#018x}, computed {computed:#018x}"
    )]
    Checksum {
        /// The file whose bytes do not match.
        path: PathBuf,
        /// The model layer id of the file.
        layer_id: u64,
        /// The checksummed region ("layer header", "data block", "records unit").
        what: &'static str,
        /// Byte offset of the region in the file.
        offset: u64,
        /// Length of the region in bytes.
        len: u64,
        /// The xxh3-64 checksum stored in the file or manifest.
        stored: u64,
        /// The xxh3-64 checksum of the bytes as read.
        computed: u64,
    },
    /// A row id beyond the layer's table.
    #[error("row id {row} at index {index} is out of range for layer index {layer} ({rows} rows)")]
    RowOutOfRange {
        /// Layer index in the table (`0..n_layers`).
        layer: usize,
        /// Position of the bad id in the caller's id slice.
        index: usize,
        /// The row id asked for.
        row: u64,
        /// Number of rows the layer has (valid ids are `0..rows`).
        rows: u64,
    },
    /// A layer index beyond the table's layers.
    #[error("layer index {layer} is out of range: the table has {n_layers} layers")]
    LayerOutOfRange {
        /// The layer index asked for.
        layer: usize,
        /// Number of layers the table has (valid indices are `0..n_layers`).
        n_layers: usize,
    },
    /// A buffer's length does not match the shape it is used with.
    #[error("shape mismatch for {what}: expected {expected}, found {found}")]
    Shape {
        /// The buffer or argument whose length is wrong.
        what: &'static str,
        /// The length the shape requires, in the buffer's units.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// A size outside `1..=limit` (a named limit).
    #[error("{what} is {found}, {}", limit_text(*.found, *.limit, .name))]
    Limit {
        /// The quantity that is out of range ("queue depth", "batch ids").
        what: &'static str,
        /// Name of the limit's const (`MAX_QUEUE_DEPTH`), to find it in the docs.
        name: &'static str,
        /// The largest value allowed (inclusive).
        limit: usize,
        /// The value given.
        found: usize,
    },
    /// An argument or option value is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The argument or option.
        what: &'static str,
        /// Why the value is refused, in words.
        reason: String,
    },
    /// The writer was used out of order.
    #[error("table writer: {0}")]
    Writer(String),
    /// The destination exists and `force` was not given.
    #[error("{path} already exists (pass force to replace it)")]
    Exists {
        /// The destination that already exists.
        path: PathBuf,
    },
    /// Another writer holds the table path's lock (see `crate::publish`).
    #[error(
        "another writer ({holder}) is writing a table at {path} (it holds the lock {lock}): \
         wait for it to finish or write elsewhere"
    )]
    Locked {
        /// The table path being written.
        path: PathBuf,
        /// The lock file another writer holds.
        lock: PathBuf,
        /// Who holds the lock: the process id its lock file records, or what kept replacing it.
        holder: String,
    },
    /// A forced write would replace something that is not a table directory.
    #[error(
        "refusing to replace {path}: it is {found}, not a table directory (expected \
         manifest.json inside, or an empty directory)"
    )]
    NotATable {
        /// The path a forced write would have replaced.
        path: PathBuf,
        /// What is there instead ("a file", "a regular file", "a special file").
        found: &'static str,
    },
    /// An input file is not a regular file or is too large (its I/O errors are [`Error::Io`]).
    #[error(transparent)]
    Input(engram_files::file::FileError),
    /// A profile file is malformed.
    #[error("invalid profile {path} at offset {offset}: {reason}")]
    Profile {
        /// The profile file.
        path: PathBuf,
        /// Byte offset of the problem in the file.
        offset: u64,
        /// What is wrong, in words.
        reason: String,
    },
    /// A records file is malformed or belongs to another table.
    #[error("invalid records file {path} at offset {offset}: {reason}")]
    Records {
        /// The records file.
        path: PathBuf,
        /// Byte offset of the problem in the file.
        offset: u64,
        /// What is wrong, in words.
        reason: String,
    },
    /// A candidates file is malformed.
    #[error("invalid candidates file {path} at offset {offset}: {reason}")]
    Candidates {
        /// The candidates file (`candidates.bin` in the table directory).
        path: PathBuf,
        /// Byte offset in the file where the problem was found.
        offset: u64,
        /// What is wrong, in words.
        reason: String,
    },
    /// A feature that is not compiled into this build.
    #[error("{what} is not compiled in: rebuild with `--features {feature}`")]
    NotCompiled {
        /// The facility that was asked for ("pinned buffers").
        what: &'static str,
        /// The cargo feature that compiles it in.
        feature: &'static str,
    },
    /// A backend or facility compiled in but not usable on this machine.
    // Not "on this machine": the cause may be a per-process limit (open files, locked
    // memory), which the reason names.
    #[error("{what} cannot be used: {reason}")]
    Unavailable {
        /// The backend or facility that was asked for ("io_uring").
        what: &'static str,
        /// Why it cannot be used here (kernel too old, a per-process limit), with its fix where there is one.
        reason: String,
    },
    /// The store's workers stopped after an earlier failure; reopen the store.
    #[error("the store is shut down ({0}); reopen it")]
    ShutDown(&'static str),
    /// A component failed in a way that makes it unusable; reopen the store.
    #[error("{what} failed ({reason}); reopen the store")]
    Broken {
        /// The component that failed (a worker, a ring).
        what: &'static str,
        /// The first failure, in words.
        reason: String,
    },
    /// An I/O engine (a ring, the pread pool, a remote store's client) failed: every
    /// request in flight on it ended with this error, and the store rebuilt the engine, so
    /// the next request may succeed. Counted in `StatsSnapshot::engine_failures`.
    #[error(
        "I/O engine {engine} failed ({cause}); the requests in flight on it were failed and \
         the engine rebuilt: retry"
    )]
    Engine {
        /// The engine's name (`uring`, `pread`, `mooncake`, `memory`).
        engine: &'static str,
        /// What failed, in words (`io_uring_enter: ...`, an injected `reap@N`).
        cause: String,
    },
    /// The batch was cancelled before it finished (speculative prefetch).
    #[error("cancelled")]
    Cancelled,
    /// A file was replaced on disk between validating the table and opening it again, or
    /// the table directory was replaced every time `Table::open` tried it.
    #[error("{path} was replaced while the table was being opened; open the table again")]
    Replaced {
        /// The file or directory that changed identity while it was opened.
        path: PathBuf,
    },
    /// A row source other than the in-process store failed (the storage service's client:
    /// the server went away, refused the client, or answered out of protocol).
    #[error(transparent)]
    Remote(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl From<engram_files::file::FileError> for Error {
    fn from(e: engram_files::file::FileError) -> Self {
        match e {
            engram_files::file::FileError::Io { op, path, error } => Error::Io { op, path, error },
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
