//! The crate's one error type. Variants say what was expected, what was found and where
//! (the Mooncake key, the table, the file).

use std::path::PathBuf;

/// Errors from publishing tables on Mooncake Store and reading them back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Mooncake client is not in this build.
    #[error(
        "the Mooncake client is not compiled in: rebuild the tools with it, \
         `scripts/install.sh --mooncake` (cargo: `--features {feature}` of engram-mooncake, \
         `--features mooncake` of engram-tools and moe-core)"
    )]
    NotCompiled {
        /// The cargo feature that builds it in.
        feature: &'static str,
    },
    /// The cluster or the client library cannot be used from here (unreachable master,
    /// missing wheel, failed setup).
    #[error("Mooncake at {master} is not available: {reason}")]
    Unavailable {
        /// The master's address (`host:port`).
        master: String,
        /// Why, with what to do.
        reason: String,
    },
    /// A Mooncake call returned an error code for an object.
    #[error("Mooncake {op} of {key} failed with error {code} ({name})")]
    Object {
        /// The client call (`upsert`, `get_into_ranges`, ...).
        op: &'static str,
        /// The object key.
        key: String,
        /// Mooncake's error code (negative).
        code: i64,
        /// The code's name in Mooncake's list.
        name: &'static str,
    },
    /// The table (this exact version) has no complete publication on the cluster.
    #[error("table {prefix} is not published on Mooncake: {reason}")]
    NotPublished {
        /// The version's key prefix (`engram/{table_id}/{version}`) or name key.
        prefix: String,
        /// What is missing.
        reason: String,
    },
    /// What the cluster holds disagrees with the local table.
    #[error("published {what} at {key}: expected {expected}, found {found}")]
    Mismatch {
        /// What was compared (descriptor field, chunk, manifest).
        what: &'static str,
        /// The object key.
        key: String,
        /// The local table's value.
        expected: String,
        /// The cluster's.
        found: String,
    },
    /// An argument or option value is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The argument or value.
        what: &'static str,
        /// Why, and what is accepted.
        reason: String,
    },
    /// A size above a named limit.
    #[error("{what} is {found}, above the limit {limit} ({name})")]
    Limit {
        /// What was too large.
        what: &'static str,
        /// The limit's constant.
        name: &'static str,
        /// The limit, in the unit of `found` (bytes unless said otherwise).
        limit: u64,
        /// The size asked for.
        found: u64,
    },
    /// An unexpected Python exception inside the client library.
    #[error("Mooncake client ({op}): {reason}")]
    Python {
        /// The client call.
        op: &'static str,
        /// The exception.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation (`read`, `open`, ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The table or the store refused something.
    #[error(transparent)]
    Store(#[from] engram_store::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The name of a Mooncake error code, for the codes this crate has seen and acts on
/// (others are reported by number).
pub fn code_name(code: i64) -> &'static str {
    match code {
        OBJECT_NOT_FOUND => "object not found",
        INVALID_PARAMS => "invalid parameters (a range outside the object)",
        _ => "a Mooncake ErrorCode",
    }
}

/// Mooncake's `OBJECT_NOT_FOUND`.
pub const OBJECT_NOT_FOUND: i64 = -704;
/// Mooncake's `INVALID_PARAMS`.
pub const INVALID_PARAMS: i64 = -600;
