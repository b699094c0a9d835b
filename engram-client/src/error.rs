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
        /// What was being done (`connect`, `mmap`, ...).
        op: &'static str,
        /// The file or socket it was done on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// No server answered at the socket.
    #[error("cannot connect to the engram service at {socket}: {reason}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why (the system's error, or a handshake that failed).
        reason: String,
    },
    /// The server refused this client (credentials, limits, unknown table).
    #[error("the engram service at {socket} refused this client: {reason}")]
    Refused {
        /// The socket.
        socket: PathBuf,
        /// The server's reason.
        reason: String,
    },
    /// The server went away (stopped, restarted, or closed this client). The next call on
    /// the same `RemoteStore` connects again.
    #[error("the engram service at {socket} went away ({reason}); the next call reconnects")]
    Disconnected {
        /// The socket.
        socket: PathBuf,
        /// What was seen (hang-up, a timeout, an error).
        reason: String,
    },
    /// The peer broke the protocol (a value read from it is out of range).
    #[error("protocol violation by the {peer}: {what}: expected {expected}, found {found}")]
    Protocol {
        /// Which side broke it (`server` or `client`).
        peer: &'static str,
        /// The value that was out of range.
        what: &'static str,
        /// What the protocol allows.
        expected: String,
        /// What the peer sent.
        found: String,
    },
    /// A size above a named limit.
    #[error("{what} is {found}, above the limit {limit} ({name})")]
    Limit {
        /// What was too large.
        what: &'static str,
        /// The limit's name (a constant or an option).
        name: &'static str,
        /// The limit.
        limit: u64,
        /// The size asked for.
        found: u64,
    },
    /// An argument or option is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The argument or option.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The server failed a request (its store's error, as text).
    #[error("the engram service failed a request on table {table}: {message}")]
    Server {
        /// The served table.
        table: String,
        /// The server's error text.
        message: String,
    },
    /// The table behind the connection was replaced by one of another shape.
    #[error("table {table} changed on the server ({reason}); reconnect to use the new one")]
    TableChanged {
        /// The served table.
        table: String,
        /// How its shape changed.
        reason: String,
    },
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
