//! The Engram storage tier: the table format (write and read), DRAM / mmap / pread /
//! io_uring backends behind one trait, aligned and pinned buffers, batch planning, the
//! hot-row cache, prefetch tickets and statistics.
//!
//! An Engram *table* is a directory: `manifest.json` (addressing constants, row layout,
//! checksums; see `docs/format.md`) and one file per Engram layer holding that layer's
//! rows, `row_bytes` each, packed so that no row crosses a 4096-byte page. A row id comes
//! from hashing a token stream (`engram_kernels::NgramHasher`); this crate turns row ids
//! into row bytes, as fast as the medium allows.
//!
//! # Open a table and look up rows
//!
//! [`Store::open`] validates the table ([`Table::open`]: manifest, headers, sizes,
//! checksums of the headers and manifest) and starts the backend and the I/O workers.
//! [`Store::lookup_into`] reads rows of one layer (by layer *index*, `0..n_layers`, not
//! the model's layer id) into a caller's buffer of `ids.len() * row_bytes()` bytes, on the
//! calling thread. Ids may repeat and come in any order; an id past the layer's end is an
//! [`Error::RowOutOfRange`] naming it.
//!
//! ```
//! use engram_testbed::synth::{SynthSpec, write_synth};
//! use engram_store::{BackendKind, BackendOptions, Store, StoreOptions};
//! # fn main() -> engram_store::Result<()> {
//! // A tiny synthetic table (demo shape, 101 rows per hash head) in a temporary directory.
//! let dir = tempfile::tempdir().map_err(|e| engram_store::Error::Invalid {
//!     what: "tempdir",
//!     reason: e.to_string(),
//! })?;
//! let path = dir.path().join("table");
//! let spec = SynthSpec::preset("demo", Some(101), 7)?;
//! write_synth(&path, &spec, false, |_, _, _| {})?;
//!
//! let options = StoreOptions {
//!     backend: BackendOptions {
//!         kind: Some(BackendKind::Pread),
//!         ..BackendOptions::default()
//!     },
//!     ..StoreOptions::default()
//! };
//! let store = Store::open(&path, &options)?;
//! let ids = [1u64, 2, 3, 2];
//! let mut out = vec![0u8; ids.len() * store.row_bytes()];
//! store.lookup_into(0, &ids, &mut out)?;
//!
//! // Every row is the same whichever way it is read.
//! let rb = store.row_bytes();
//! let mut row = vec![0u8; rb];
//! engram_testbed::synth::synth_row(7, 0, 2, &mut row);
//! assert_eq!(&out[rb..2 * rb], &row[..]);
//! assert_eq!(&out[3 * rb..], &row[..]);
//! # Ok(()) }
//! ```
//!
//! # Prefetch tickets
//!
//! [`Store::prefetch`] hands a batch to a reactor (an I/O thread) and returns at once with a
//! [`Ticket`]; the rows land in an [`AlignedBuf`] from [`Store::alloc_rows`] (page-aligned,
//! page-locked when the process may lock memory), and [`Ticket::wait`] gives the buffer
//! back with the outcome. This is how a decoder overlaps the table read with the layers
//! computed before the Engram layer. At most [`StoreOptions::max_in_flight`] tickets are
//! outstanding; one more waits (back-pressure) instead of growing a queue, at most
//! [`StoreOptions::slot_wait`], after which its ticket holds [`Error::Limit`] (a caller
//! holding every ticket itself would otherwise wait forever). Dropping a ticket waits for
//! its batch. Small batches that DRAM alone can serve complete
//! on the caller's thread ([`store::INLINE_MAX_ROWS`]).
//!
//! A caller with many requests in flight that takes them as they finish, in any order (the
//! storage service: one queue per client), starts them with [`Store::start`] instead: each
//! completes, rows or error, into the caller's [`Completions`] queue with its tag.
//!
//! ```no_run
//! # use engram_store::{Store, StoreOptions};
//! # fn main() -> engram_store::Result<()> {
//! # let store = Store::open(std::path::Path::new("table"), &StoreOptions::default())?;
//! let ids = [5u64, 9, 11];
//! let ticket = store.prefetch(0, &ids, store.alloc_rows(ids.len())?);
//! // ... compute something else ...
//! let (rows, result) = ticket.wait();
//! result?;
//! assert_eq!(rows.len(), ids.len() * store.row_bytes());
//! # Ok(()) }
//! ```
//!
//! # Speculation
//!
//! [`Store::speculate`] reads rows a predictor expects soon (a draft model, MTP heads)
//! into the hot-row cache at low priority: its reads go out only when no demand read waits.
//! It never blocks; [`Speculation::accepted`] says whether it was taken (it is not without a
//! cache, on a resident backend, or when too many are pending) and
//! [`Speculation::cancel`] stops reads not yet issued.
//!
//! # Cache and profile
//!
//! [`StoreOptions::cache_bytes`] gives the hot-row cache ([`cache`]) a DRAM budget: S3-FIFO
//! admission per shard, or plain CLOCK with [`StoreOptions::admit_on_first_miss`]. A
//! frequency [`Profile`] (written by `engram-build` as [`profile::PROFILE_FILE`], bound to
//! the table by its `table_id`) seeds it at open, pinning the hottest rows
//! ([`cache::SeedOptions`]); on the device backends the seeding rows are read in file order
//! through a second backend whose reads merge across gaps up to
//! [`store::SEED_COALESCE_GAP_BYTES`] (a 1% cache of a 34 GiB table: 263 s of 4 KiB random
//! reads became 99 s on the same disk). N-gram records (`records.bin`, [`records`]) let one device read
//! serve the rows that the hash heads of one n-gram order hit together, on cache misses.
//!
//! [`Store::stats`] returns a [`StatsSnapshot`] (rows, cache hits, device reads and bytes,
//! read amplification, latency quantiles per tier and per stage);
//! [`StatsSnapshot::prometheus`] renders it as Prometheus text with `engram_store_*` names
//! in base units.
//!
//! # Backends and how one is chosen
//!
//! | [`BackendKind`] | reads | use |
//! |---|---|---|
//! | `Memory` | every layer loaded and verified at open | tables that fit in RAM |
//! | `Mmap` | the page cache | warm tables, tools |
//! | `Pread` | `pread` on a thread pool, O_DIRECT where allowed | any Linux |
//! | `Uring` | io_uring, O_DIRECT, registered files and buffers | NVMe at high queue depth |
//! | `External` | an engine from [`BackendOptions::engine`] ([`EngineFactory`]) | a remote store |
//!
//! [`BackendOptions::kind`] picks one; `None` reads [`IO_BACKEND_ENV`]
//! (`ENGRAM_IO_BACKEND=memory|mmap|pread|uring|auto`), and auto tries io_uring and falls
//! back to pread when the kernel, a seccomp filter or a resource limit refuses it. The
//! fallback is logged once with its reason and fix, and [`Store::fallback_reason`] returns
//! it. An explicit `uring`, or [`REQUIRE_URING_ENV`] (`ENGRAM_REQUIRE_URING=1`), turns the
//! fallback into [`Error::Unavailable`], so a machine that has io_uring cannot silently test
//! pread instead. [`UringFault`] and [`FaultPlan`] ([`IO_FAULTS_ENV`]) inject failures to
//! test these paths on any machine. Every device read is checked against its block
//! checksum unless [`BackendOptions::verify`] is off.
//!
//! # Writing a table
//!
//! [`TableWriter::create`] takes a [`Manifest`] (from [`Manifest::new`]: an
//! `engram_kernels::EngramLayout`, the tokenizer's SHA-256, a [`RowLayout`] and `dim`),
//! [`TableWriter::write_layer_rows`] streams each layer's rows in order, and
//! [`TableWriter::finish`] writes checksums and the manifest and publishes the directory.
//! Publication is atomic ([`publish`]): the table is built in a temporary sibling and
//! swapped into place with one rename, so the path always holds a complete table, the old
//! one or the new one, whatever is killed when; a second writer to the same path fails at
//! once with [`Error::Locked`]. `engram_testbed::synth` writes tables of pseudo-random rows
//! for tests and benchmarks.
//!
//! ```
//! use engram_kernels::{EngramConfig, EngramLayout};
//! use engram_store::{BuildInfo, Manifest, RowLayout, Table, TableWriter};
//! # fn main() -> engram_store::Result<()> {
//! # let dir = tempfile::tempdir().map_err(|e| engram_store::Error::Invalid {
//! #     what: "tempdir",
//! #     reason: e.to_string(),
//! # })?;
//! let config = EngramConfig {
//!     base_sizes: vec![53, 53],
//!     layer_ids: vec![1],
//!     ..EngramConfig::demo()
//! };
//! // 1000 canonical ids after compression; the padding id compresses to 2.
//! let layout = EngramLayout::new(&config, 1000, 2).map_err(|e| engram_store::Error::Invalid {
//!     what: "layout",
//!     reason: e.to_string(),
//! })?;
//! let tokenizer_sha256 = "0".repeat(64);
//! let manifest = Manifest::new(&layout, &tokenizer_sha256, RowLayout::F32, 4, None, BuildInfo::default())?;
//!
//! let path = dir.path().join("table");
//! let mut writer = TableWriter::create(&path, &manifest, false)?;
//! for (index, layer) in manifest.layers.iter().enumerate() {
//!     let rows = vec![0u8; layer.rows as usize * manifest.row_bytes as usize];
//!     writer.write_layer_rows(index, &rows)?;
//! }
//! writer.finish()?;
//!
//! let table = Table::open(&path)?;
//! assert_eq!(table.n_layers(), 1);
//! assert_eq!(table.row_bytes(), 16);
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! Every fallible call returns [`Error`], one `#[non_exhaustive]` enum split by operation.
//! Each variant names what was expected, what was found and where (path, layer, byte
//! offset), so a message says what to fix: a corrupt block is an [`Error::Checksum`] with
//! its file, offset and both checksums; a size from input above a named limit is an
//! [`Error::Limit`] naming the constant. [`Error::Engine`] means an I/O engine failed: the
//! requests in flight on it ended with it, the store rebuilt the engine, the next request
//! may succeed ([`StatsSnapshot::engine_failures`] counts them). [`Error::ShutDown`] and
//! [`Error::Broken`] mean the store cannot continue: reopen it. Bad input never panics.
//!
//! # Threading
//!
//! [`Store`] is a cheap `Clone` handle and `Send + Sync`; [`Table`] is `Send + Sync`. Any
//! number of threads may call [`Store::lookup_into`] at once. Every request takes one
//! path (`pipeline`): a cache probe, then, unless DRAM serves the whole batch on the
//! caller's thread, a bounded queue to [`StoreOptions::io_workers`] reactors (at most
//! [`store::MAX_IO_WORKERS`]), each an I/O thread owning one engine (its own staging
//! buffers and, for io_uring, its own ring). Dropping the store stops the reactors after
//! the requests already queued, whatever is in flight; the last clone of a store drops it.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod backend;
pub mod buffer;
pub mod cache;
pub mod candidates;
pub mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzz;
pub mod metrics;
pub(crate) mod pipeline;
pub mod planner;
pub mod profile;
pub mod publish;
pub mod reads;
pub mod records;
pub(crate) mod sim;
pub mod size;
pub mod source;
pub mod store;
pub mod table;
mod ticket;
pub mod write_behind;

pub use backend::external::EngineFactory;
pub use backend::{BackendKind, BackendOptions, IO_BACKEND_ENV, REQUIRE_URING_ENV, UringFault};
pub use buffer::AlignedBuf;
pub use candidates::Candidates;
pub use error::{Error, Result};
pub use format::{BuildInfo, FORMAT_VERSION, LayerManifest, Manifest, RowLayout};
pub use metrics::StatsSnapshot;
pub use profile::{LayerProfile, Profile};
pub use reads::{Fault, FaultPlan, IO_FAULTS_ENV};
pub use source::{PendingRows, PendingSpeculation, RowSource};
pub use store::{Completion, Completions, Speculation, Store, StoreOptions, Ticket};
pub use table::{OpenOptions, Table, TableWriter};
