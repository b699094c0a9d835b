//! The bindings' error type and the coarse kinds that cross the C and Python boundaries.
//!
//! Every failure keeps the message of the store or kernel error it came from (what was
//! expected, what was found, where); [`ErrorKind`] is the stable classification a C
//! caller switches on (`engram_status`) and a Python caller reads as `EngramError.kind`.

/// What kind of failure, stable across releases (new kinds may be added at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A required pointer or argument is missing (NULL).
    Null,
    /// An argument or option value is invalid.
    InvalidArgument,
    /// An output or input buffer has the wrong length (short, long or misshaped).
    BufferSize,
    /// A layer id that the table does not contain.
    UnknownLayer,
    /// A row id beyond the layer's table or a token id beyond the vocabulary.
    OutOfRange,
    /// The table directory or one of its files does not exist.
    NotFound,
    /// An operating-system I/O call failed.
    Io,
    /// The table (or profile) is malformed, corrupted or of an unsupported version.
    Corrupt,
    /// The tokenizer is missing, unreadable, or not the one the table was built with.
    Tokenizer,
    /// A backend or feature is not compiled in or not usable on this machine.
    Unavailable,
    /// A size above a named limit.
    Limit,
    /// The store's workers stopped after an earlier failure; reopen the store.
    ShutDown,
    /// Something this build does not do.
    Unsupported,
    /// A bug inside the library was caught before it crossed the boundary.
    Panic,
    /// Any other failure.
    Internal,
}

impl ErrorKind {
    /// The number the C ABI returns for this kind (`engram_status` in `engram.h`); Python's
    /// `EngramError.code` is the same number.
    pub fn code(self) -> i32 {
        match self {
            ErrorKind::Null => 1,
            ErrorKind::InvalidArgument => 2,
            ErrorKind::BufferSize => 3,
            ErrorKind::UnknownLayer => 4,
            ErrorKind::OutOfRange => 5,
            ErrorKind::NotFound => 6,
            ErrorKind::Io => 7,
            ErrorKind::Corrupt => 8,
            ErrorKind::Tokenizer => 9,
            ErrorKind::Unavailable => 10,
            ErrorKind::Limit => 11,
            ErrorKind::ShutDown => 12,
            ErrorKind::Unsupported => 13,
            ErrorKind::Panic => 14,
            ErrorKind::Internal => 15,
        }
    }

    /// Every kind, in code order.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::Null,
        ErrorKind::InvalidArgument,
        ErrorKind::BufferSize,
        ErrorKind::UnknownLayer,
        ErrorKind::OutOfRange,
        ErrorKind::NotFound,
        ErrorKind::Io,
        ErrorKind::Corrupt,
        ErrorKind::Tokenizer,
        ErrorKind::Unavailable,
        ErrorKind::Limit,
        ErrorKind::ShutDown,
        ErrorKind::Unsupported,
        ErrorKind::Panic,
        ErrorKind::Internal,
    ];

    /// A short snake_case name (`"buffer_size"`), as Python's `EngramError.kind` shows it.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Null => "null",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::BufferSize => "buffer_size",
            ErrorKind::UnknownLayer => "unknown_layer",
            ErrorKind::OutOfRange => "out_of_range",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Io => "io",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Tokenizer => "tokenizer",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Limit => "limit",
            ErrorKind::ShutDown => "shut_down",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Panic => "panic",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Errors of the bindings layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the storage tier (open, read, verify).
    #[error(transparent)]
    Store(#[from] engram_store::Error),
    /// From the kernels (hashing, compression, dequantisation, tokenizer).
    #[error(transparent)]
    Kernels(#[from] engram_kernels::Error),
    /// A required argument is missing.
    #[error("{what} is NULL")]
    Null {
        /// The argument's name.
        what: &'static str,
    },
    /// A buffer of the wrong length.
    #[error("{what}: expected {expected} {unit}, found {found}")]
    Buffer {
        /// The argument's name.
        what: &'static str,
        /// The unit of the lengths (`bytes`, `ids`, ...).
        unit: &'static str,
        /// The length the call needs.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// An argument value is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The argument or value.
        what: &'static str,
        /// Why, and what is accepted.
        reason: String,
    },
    /// Raw token ids were given but the store was opened without a tokenizer.
    #[error(
        "hashing raw token ids needs the tokenizer the table was built with: open the store \
         with a tokenizer path, or pass canonical (already compressed) ids"
    )]
    NoTokenizer,
    /// The tokenizer given at open is not the table's.
    #[error(
        "tokenizer {path} has sha256 {found}, but table {table} was built with {expected}: \
         row ids would address the wrong rows"
    )]
    TokenizerMismatch {
        /// The tokenizer file given.
        path: String,
        /// The table directory.
        table: String,
        /// The SHA-256 the table records.
        expected: String,
        /// The given tokenizer's SHA-256.
        found: String,
    },
    /// Something this build does not do.
    #[error("{what} is not supported by this build: {reason}")]
    Unsupported {
        /// The feature asked for.
        what: &'static str,
        /// Why not, and what would enable it.
        reason: String,
    },
    /// A panic caught at the boundary (a bug: please report it).
    #[error("internal error (caught panic in {function}): {message}")]
    Panic {
        /// The exported function that panicked.
        function: &'static str,
        /// The panic's message.
        message: String,
    },
    /// A failure recorded earlier and reported again (a ticket waited on twice).
    #[error("{message}")]
    Recorded {
        /// The recorded error's kind.
        kind: ErrorKind,
        /// Its message.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Store(e) => store_kind(e),
            Error::Kernels(e) => kernels_kind(e),
            Error::Null { .. } => ErrorKind::Null,
            Error::Buffer { .. } => ErrorKind::BufferSize,
            Error::Invalid { .. } => ErrorKind::InvalidArgument,
            Error::NoTokenizer | Error::TokenizerMismatch { .. } => ErrorKind::Tokenizer,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Panic { .. } => ErrorKind::Panic,
            Error::Recorded { kind, .. } => *kind,
        }
    }

    /// A copy that can be reported again (kind and message).
    pub fn recorded(&self) -> Error {
        Error::Recorded {
            kind: self.kind(),
            message: self.to_string(),
        }
    }

    /// The error for a panic payload caught in `function`.
    pub fn from_panic(function: &'static str, payload: &(dyn std::any::Any + Send)) -> Error {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Error::Panic { function, message }
    }
}

fn store_kind(e: &engram_store::Error) -> ErrorKind {
    use engram_store::Error as S;
    match e {
        S::Io { error, .. } | S::IoAt { error, .. } => {
            if error.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::NotFound
            } else {
                ErrorKind::Io
            }
        }
        S::Manifest { .. }
        | S::Version { .. }
        | S::Layout { .. }
        | S::Header { .. }
        | S::FileSize { .. }
        | S::Checksum { .. }
        | S::Profile { .. } => ErrorKind::Corrupt,
        S::TokenizerMismatch { .. } => ErrorKind::Tokenizer,
        S::RowOutOfRange { .. } => ErrorKind::OutOfRange,
        S::LayerOutOfRange { .. } => ErrorKind::UnknownLayer,
        S::Shape { .. } => ErrorKind::BufferSize,
        S::Limit { .. } => ErrorKind::Limit,
        S::Invalid { .. } | S::Writer(_) | S::Exists { .. } => ErrorKind::InvalidArgument,
        S::NotCompiled { .. } | S::Unavailable { .. } => ErrorKind::Unavailable,
        S::ShutDown(_) => ErrorKind::ShutDown,
        S::Remote(inner) => match inner.downcast_ref::<engram_client::ServiceError>() {
            Some(e) => service_kind(e),
            None => ErrorKind::Internal,
        },
        _ => ErrorKind::Internal,
    }
}

fn service_kind(e: &engram_client::ServiceError) -> ErrorKind {
    use engram_client::ServiceError as V;
    match e {
        V::Connect { .. } | V::Refused { .. } => ErrorKind::Unavailable,
        // The next call reconnects (or says the table changed): as for a stopped store,
        // the call failed and the handle may be used again.
        V::Disconnected { .. } | V::TableChanged { .. } => ErrorKind::ShutDown,
        V::Limit { .. } => ErrorKind::Limit,
        V::Invalid { .. } => ErrorKind::InvalidArgument,
        V::Io { .. } | V::Server { .. } => ErrorKind::Io,
        V::Store(s) => store_kind(s),
        _ => ErrorKind::Internal,
    }
}

fn kernels_kind(e: &engram_kernels::Error) -> ErrorKind {
    use engram_kernels::Error as K;
    match e {
        K::UnknownLayer { .. } => ErrorKind::UnknownLayer,
        K::IdOutOfRange { .. } => ErrorKind::OutOfRange,
        K::Shape { .. } | K::EmptyBatch { .. } => ErrorKind::BufferSize,
        K::Tokenizer { .. } | K::TokenizerContents(_) => ErrorKind::Tokenizer,
        K::InvalidConfig { .. } | K::CompressionTable(_) | K::InvalidValue { .. } => {
            ErrorKind::InvalidArgument
        }
        K::NotCompiled { .. } | K::Unavailable { .. } => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_source_error() {
        let missing = Error::Store(engram_store::Error::Io {
            op: "read manifest",
            path: "/nope".into(),
            error: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert!(missing.to_string().contains("/nope"));
        let layer = Error::Kernels(engram_kernels::Error::UnknownLayer {
            layer_id: 7,
            known: vec![1, 15],
        });
        assert_eq!(layer.kind(), ErrorKind::UnknownLayer);
        let again = layer.recorded();
        assert_eq!(again.kind(), ErrorKind::UnknownLayer);
        assert_eq!(again.to_string(), layer.to_string());
        let p = Error::from_panic("f", &"boom");
        assert_eq!(p.kind(), ErrorKind::Panic);
        assert!(p.to_string().contains("boom"));
    }
}
