//! The Engram storage-tier service: one process owns the tables, the hot-row cache and the
//! I/O; every engine on the host attaches to it.
//!
//! - [`Server`] (behind `engram serve`): opens tables read-only, listens on a Unix socket
//!   (mode 0600, or 0660 with a group), checks each peer's credentials, and gives each
//!   client its own shared region (submission and completion rings, per-slot id and row
//!   areas) and its own serving thread. Rows are written once, by the server, into memory
//!   the client reads; nothing row-sized crosses the socket.
//! - [`RemoteStore`]: the client, implementing [`engram_store::RowSource`] like the
//!   in-process `Store`, so the decoder, the CLIs and the bindings take either.
//!
//! ```no_run
//! use engram_service::{ClientOptions, RemoteStore};
//! use engram_store::RowSource;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RemoteStore::connect("unix:/run/engram/engram.sock", &ClientOptions::default())?;
//! let ids = [1u64, 2, 3];
//! let mut out = vec![0u8; ids.len() * store.row_bytes()];
//! store.lookup_into(0, &ids, &mut out)?;
//! # Ok(()) }
//! ```
//!
//! The protocol is documented byte by byte in [`protocol`].
#![deny(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::panic,
    clippy::todo,
    clippy::unimplemented
)]

pub mod bell;
pub mod client;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod protocol;
#[doc(hidden)]
pub mod raw;
pub mod server;
pub mod shm;
pub mod signals;
pub mod wire;

pub use client::{ClientOptions, RemoteStore, Target};
pub use error::{Result, ServiceError};
pub use server::auth::AllowRule;
pub use server::metrics::ServiceStats;
pub use server::table::TableSpec;
pub use server::{Server, ServerOptions};
