//! The Engram storage tier: the table format (write and read), DRAM / mmap / pread /
//! io_uring backends behind one trait, aligned and pinned buffers, batch planning, the
//! hot-row cache, prefetch tickets and statistics.
//!
//! ```no_run
//! use engram_store::{Store, StoreOptions};
//! # fn main() -> engram_store::Result<()> {
//! let store = Store::open(std::path::Path::new("table"), &StoreOptions::default())?;
//! let ids = [1u64, 2, 3];
//! let mut out = vec![0u8; ids.len() * store.row_bytes()];
//! store.lookup_into(0, &ids, &mut out)?;
//! let ticket = store.prefetch(0, &ids, store.alloc_rows(ids.len())?);
//! let (rows, result) = ticket.wait();
//! result?;
//! assert_eq!(&rows[..], &out[..]);
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::panic,
    clippy::todo,
    clippy::unimplemented
)]

pub mod backend;
pub mod batch;
pub mod buffer;
pub mod cache;
pub mod error;
pub mod format;
pub mod io;
pub mod metrics;
pub mod profile;
pub mod publish;
pub mod records;
pub mod source;
pub mod store;
pub mod synth;
pub mod table;
pub mod workload;

pub use backend::{BackendKind, BackendOptions, IO_BACKEND_ENV, REQUIRE_URING_ENV, UringFault};
pub use buffer::AlignedBuf;
pub use error::{Error, Result};
pub use format::{BuildInfo, FORMAT_VERSION, LayerManifest, Manifest, RowLayout};
pub use io::{Fault, FaultPlan, IO_FAULTS_ENV};
pub use metrics::StatsSnapshot;
pub use profile::{LayerProfile, Profile};
pub use source::{PendingRows, PendingSpeculation, RowSource};
pub use store::{Speculation, Store, StoreOptions, Ticket};
pub use table::{OpenOptions, Table, TableWriter};
