//! The one implementation behind engram's C ABI (`engram-ffi`) and Python package
//! (`engram-py`): opening a store from flat options, layer ids instead of indices, hashing
//! token ids to row ids, dequantisation, prefetch tickets that own pooled pinned buffers,
//! stats as JSON, and the error kinds both boundaries report. The two bindings only
//! translate arguments and errors; no logic lives in them.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod extent;
pub mod handle;
pub mod ticket;

pub use engram_store::{BackendKind, RowLayout};
pub use error::{Error, ErrorKind, Result};
pub use extent::{Extent, disjoint};
pub use handle::{Handle, OpenConfig, RowInfo, TokenIds, parse_backend};
pub use ticket::PendingPrefetch;
