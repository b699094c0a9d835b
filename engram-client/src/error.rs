//! The crate's one error type. Every variant says what was expected, what was found and
//! where (socket path, table, peer).

use std::path::PathBuf;

/// Errors from serving tables and from talking to a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No server answered at the socket.
    #[error("cannot connect to the engram service at {socket}: {reason}")]
    Connect { socket: PathBuf, reason: String },
    /// The server refused this client (credentials, limits, unknown table).
    #[error("the engram service at {socket} refused this client: {reason}")]
    Refused { socket: PathBuf, reason: String },
    /// The server went away (stopped, restarted, or closed this client). The next call on
    /// the same `RemoteStore` connects again.
    #[error("the engram service at {socket} went away ({reason}); the next call reconnects")]
    Disconnected { socket: PathBuf, reason: String },
    /// The peer broke the protocol (a value read from it is out of range).
    #[error("protocol violation by the {peer}: {what}: expected {expected}, found {found}")]
    Protocol {
        peer: &'static str,
        what: &'static str,
        expected: String,
        found: String,
    },
    /// A size above a named limit.
    #[error("{what} is {found}, above the limit {limit} ({name})")]
    Limit {
        what: &'static str,
        name: &'static str,
        limit: u64,
        found: u64,
    },
    /// An argument or option is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// The server failed a request (its store's error, as text).
    #[error("the engram service failed a request on table {table}: {message}")]
    Server { table: String, message: String },
    /// The table behind the connection was replaced by one of another shape.
    #[error("table {table} changed on the server ({reason}); reconnect to use the new one")]
    TableChanged { table: String, reason: String },
    /// The store (opening a served table, or a check the client shares with it).
    #[error(transparent)]
    Store(#[from] engram_store::Error),
}

impl From<ServiceError> for engram_store::Error {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Store(s) => s,
            other => engram_store::Error::Remote(Box::new(other)),
        }
    }
}

/// `Result` with this crate's [`ServiceError`].
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// An I/O error of operation `op` on `path`.
pub fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> ServiceError {
    ServiceError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A protocol violation by `peer`.
pub fn violation(
    peer: &'static str,
    what: &'static str,
    expected: impl ToString,
    found: impl ToString,
) -> ServiceError {
    ServiceError::Protocol {
        peer,
        what,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}
