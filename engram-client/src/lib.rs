//! The client side of the Engram storage-tier service, and the protocol both sides speak.
//! One process (`engram serve`, the `engram-server` crate) owns the tables, the hot-row
//! cache and the I/O; every engine on the host attaches to it with this crate, which links
//! no server.
//!
//! - [`RemoteStore`]: the client, implementing [`engram_store::RowSource`] like the
//!   in-process `Store`, so the decoder, the CLIs and the bindings take either.
//! - The protocol both sides speak, in one place: messages and the shared region's layout
//!   ([`protocol`]), socket framing with descriptor passing ([`wire`]), the shared-memory
//!   region ([`shm`]), the doorbells that wake a waiting peer ([`bell`]), and what a
//!   control client gets back from the server ([`stats`]).
//!
//! ```no_run
//! use engram_client::{ClientOptions, RemoteStore};
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
#![deny(missing_docs)]

pub mod bell;
pub mod client;
pub mod error;
pub mod protocol;
#[doc(hidden)]
pub mod raw;
pub mod shm;
pub mod stats;
pub mod wire;

pub use client::{ClientOptions, RemoteStore, ServiceAddress};
pub use error::{Result, ServiceError};
pub use stats::ServiceStats;
