//! The store: a table, a backend, the hot-row cache, and the request pipeline
//! (the crate's `pipeline` module): one reactor per I/O thread, each owning one engine.
//!
//! `lookup_into` and `prefetch` submit a request to the reactors (the caller waits for a
//! lookup; a prefetch returns a [`Ticket`]); a batch DRAM serves entirely (the memory
//! tier, or every row in the cache) is served on the caller's thread instead. Requests in
//! flight are bounded by `max_in_flight` slots allocated at open: a full store makes the
//! caller wait, at most `slot_wait`, instead of growing a queue.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};

use crate::backend::{self, BackendKind, BackendOptions};
use crate::buffer::AlignedBuf;
use crate::cache::RowCache;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, StatsSnapshot};
use crate::pipeline::reactor::Reactor;
use crate::pipeline::{Request, Shared, Slots, Speculations};
use crate::profile::Profile;
use crate::source::RowSource;
use crate::table::{OpenOptions, Table};

pub use crate::pipeline::reactor::{
    ENGINE_REBUILD_ATTEMPTS, ENGINE_REBUILD_BACKOFF, ENGINE_REBUILD_RETRY,
};
pub use crate::pipeline::seed::{SEED_COALESCE_GAP_BYTES, SEED_MAX_READ_BYTES, SEED_QUEUE_DEPTH};
pub use crate::pipeline::{Completion, Completions, MAX_SPECULATIONS};
pub use crate::ticket::{Speculation, Ticket};

/// Default bound on requests in flight per store.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Default largest batch (rows per lookup or prefetch).
pub const DEFAULT_MAX_BATCH_ROWS: usize = 65_536;
/// Default [`StoreOptions::slot_wait`]: long enough for any request in flight to finish
/// on a healthy device, short enough that a caller holding every ticket hears about it.
pub const DEFAULT_SLOT_WAIT: Duration = Duration::from_secs(5);
/// Most I/O threads (reactors) per store.
pub const MAX_IO_WORKERS: usize = 64;
/// A prefetch of at most this many rows that DRAM alone can serve (memory backend, or
/// every row in the cache) completes on the caller's thread: handing it to an I/O worker
/// costs a thread wake-up (tens to hundreds of microseconds on a busy machine) for a copy
/// of a few kilobytes. Measured on the committed model: 137-254 us of stall per decode
/// token with the hand-off, for rows that were all in DRAM.
pub const INLINE_MAX_ROWS: usize = 1024;
/// Hard upper bound on `max_batch_rows` (slots are u32; staging grows with it).
pub const MAX_BATCH_ROWS_LIMIT: usize = 1 << 24;

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How to open and validate the table.
    pub open: OpenOptions,
    /// Which backend to use and how to shape its reads.
    pub backend: BackendOptions,
    /// I/O threads, one reactor each (each owns one engine: a ring, a pread queue).
    /// At most [`MAX_IO_WORKERS`].
    pub io_workers: usize,
    /// Requests in flight at once: prefetch tickets held, lookups running.
    pub max_in_flight: usize,
    /// How long a prefetch or lookup waits for one of the `max_in_flight` slots that other
    /// threads hold before it fails with [`Error::Limit`]. A thread that holds every slot
    /// itself (all the tickets are its own: nobody else can free one) gets `Limit` at
    /// once. Default [`DEFAULT_SLOT_WAIT`].
    pub slot_wait: Duration,
    /// Rows per batch.
    pub max_batch_rows: usize,
    /// Hot-row cache budget in bytes (0: no cache).
    pub cache_bytes: u64,
    /// Seed the cache from this profile.
    pub profile: Option<Profile>,
    /// Plain CLOCK admitting every miss (default: S3-FIFO admission).
    pub admit_on_first_miss: bool,
    /// How the profile seeds the cache.
    pub seed: crate::cache::SeedOptions,
    /// Read n-gram records (`records.bin` in the table directory, when present) instead of
    /// several rows' pages on cache misses of rows that share a record.
    pub records: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            open: OpenOptions::default(),
            backend: BackendOptions::default(),
            io_workers: 2,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            slot_wait: DEFAULT_SLOT_WAIT,
            max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
            cache_bytes: 0,
            profile: None,
            admit_on_first_miss: false,
            seed: crate::cache::SeedOptions::default(),
            records: true,
        }
    }
}

/// The reactors of a store and what they share; dropped with the last handle.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
    requests: Option<Sender<Request>>,
    reactors: Vec<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the queue stops each reactor once what it took has completed; no
        // reactor waits on anything but its queue and its engine's reads.
        self.requests = None;
        for r in self.reactors.drain(..) {
            let _ = r.join();
        }
    }
}

/// A shareable (`Send + Sync`, cheap `Clone`) handle to an open table.
#[derive(Debug, Clone)]
pub struct Store {
    handle: Arc<Handle>,
}

fn check_options(options: &StoreOptions) -> Result<()> {
    for (what, name, limit, found) in [
        (
            "max_batch_rows",
            "MAX_BATCH_ROWS_LIMIT",
            MAX_BATCH_ROWS_LIMIT,
            options.max_batch_rows,
        ),
        (
            "I/O threads (io_workers)",
            "MAX_IO_WORKERS",
            MAX_IO_WORKERS,
            options.io_workers,
        ),
    ] {
        if found == 0 || found > limit {
            return Err(Error::Limit {
                what,
                name,
                limit,
                found,
            });
        }
    }
    if options.max_in_flight == 0 {
        return Err(Error::Invalid {
            what: "store options",
            reason: "max_in_flight must be at least 1".into(),
        });
    }
    Ok(())
}

fn check_table(table: &Table, profile: Option<&Profile>) -> Result<()> {
    for li in 0..table.n_layers() {
        if table.rows(li)? >= 1 << 48 {
            return Err(Error::Invalid {
                what: "table",
                reason: format!("layer index {li} has 2^48 rows or more"),
            });
        }
    }
    if let Some(profile) = profile {
        let id = table.manifest().table_id_u64().unwrap_or(0);
        if profile.table_id != 0 && profile.table_id != id {
            return Err(Error::Invalid {
                what: "profile",
                reason: format!(
                    "measured for table_id {:016x}, this table is {:016x}",
                    profile.table_id, id
                ),
            });
        }
    }
    Ok(())
}

/// The backend options with the table's n-gram records, when it has them and they are
/// wanted.
fn with_records(table: &Table, options: &StoreOptions) -> Result<BackendOptions> {
    let mut backend_options = options.backend.clone();
    let records_path = table.dir().join(crate::records::RECORDS_FILE);
    if options.records && backend_options.records.is_none() && records_path.exists() {
        let records = crate::records::Records::open(&records_path, table)?;
        tracing::info!(target: "engram_store", layers = records.layers.iter().flatten().count(), "n-gram records from {}", records_path.display());
        backend_options.records = Some(Arc::new(records));
    }
    Ok(backend_options)
}

/// Starts one reactor thread per I/O worker, each over its own driver.
fn start_reactors(
    shared: &Arc<Shared>,
    workers: usize,
    queue: usize,
) -> Result<(Sender<Request>, Vec<JoinHandle<()>>)> {
    let (tx, rx) = bounded::<Request>(queue);
    let mut reactors = Vec::with_capacity(workers);
    for w in 0..workers {
        let reactor = Reactor::new(Arc::clone(shared), shared.backend.driver(false)?);
        let rx = rx.clone();
        let h = std::thread::Builder::new()
            .name(format!("engram-io-{w}"))
            .spawn(move || reactor.run(&rx))
            .map_err(|e| Error::Unavailable {
                what: "I/O thread",
                reason: e.to_string(),
            })?;
        reactors.push(h);
    }
    Ok((tx, reactors))
}

impl Store {
    /// Opens `dir` and the backend; seeds the cache; starts the reactors.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Self> {
        let table = Arc::new(Table::open_with(dir, &options.open)?);
        Self::from_table(table, options)
    }

    /// [`Store::open`] for a table already opened.
    pub fn from_table(table: Arc<Table>, options: &StoreOptions) -> Result<Self> {
        check_options(options)?;
        check_table(&table, options.profile.as_ref())?;
        let backend_options = with_records(&table, options)?;
        let opened = backend::open_backend(&table, &backend_options)?;
        tracing::info!(target: "engram_store", backend = %opened.backend.kind(), "opened {}", table.dir().display());
        let cache = RowCache::for_table(&table, options.cache_bytes, options.admit_on_first_miss)?;
        let ids_capacity = options.max_batch_rows.min(1 << 16);
        let shared = Arc::new(Shared {
            table: Arc::clone(&table),
            backend: opened.backend,
            fallback: opened.fallback,
            cache,
            metrics: Metrics::default(),
            slots: Slots::new(options.max_in_flight, ids_capacity, options.slot_wait),
            max_batch_rows: options.max_batch_rows,
            specs: Speculations::default(),
        });
        if let Some(profile) = &options.profile {
            let seeded = crate::pipeline::seed::seed_cache(
                &shared,
                &backend_options,
                profile,
                &options.seed,
            )?;
            tracing::info!(target: "engram_store", seeded, "hot-row cache seeded from profile");
        }
        // Room for every slot's request and as many pending speculations.
        let (requests, reactors) =
            start_reactors(&shared, options.io_workers, 2 * options.max_in_flight)?;
        Ok(Self {
            handle: Arc::new(Handle {
                shared,
                requests: Some(requests),
                reactors,
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The open table (manifest, layout, files).
    pub fn table(&self) -> &Arc<Table> {
        &self.shared().table
    }

    /// The backend in use.
    pub fn backend_kind(&self) -> BackendKind {
        self.shared().backend.kind()
    }

    /// Why the requested backend was not used, if it was not.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.shared().fallback.as_deref()
    }

    /// Bytes of one row; output buffers hold `ids.len() * row_bytes()`.
    pub fn row_bytes(&self) -> usize {
        self.shared().table.row_bytes()
    }

    /// Largest batch.
    pub fn max_batch_rows(&self) -> usize {
        self.shared().max_batch_rows
    }

    /// Hands `req` to the reactors; gives it back if they have stopped.
    fn submit(&self, req: Request) -> std::result::Result<(), Request> {
        match &self.handle.requests {
            Some(tx) => tx.send(req).map_err(|e| e.into_inner()),
            None => Err(req),
        }
    }

    /// Reads rows `ids` of layer index `layer` into `out` (`ids.len() * row_bytes`) and
    /// waits for them: on this thread when DRAM holds them all, else through a reactor
    /// (the rows land in a buffer of the request's slot and are copied into `out`).
    pub fn lookup_into(&self, layer: usize, ids: &[u64], out: &mut [u8]) -> Result<()> {
        let sh = self.shared();
        sh.check(layer, ids, out.len())?;
        if sh.dram_serves(layer, ids, true) && sh.read_inline(layer, ids, out)? {
            return Ok(());
        }
        let slot = sh.slots.take()?;
        let r = self.lookup_in_slot(slot, layer, ids, out);
        sh.slots.release(slot);
        r
    }

    fn lookup_in_slot(&self, slot: usize, layer: usize, ids: &[u64], out: &mut [u8]) -> Result<()> {
        let sh = self.shared();
        let mut buf = match sh.slots.take_buf(slot) {
            Some(b) if b.capacity() >= out.len() => b,
            _ => AlignedBuf::new(out.len(), crate::buffer::IO_ALIGN)?,
        };
        buf.set_len(out.len())?;
        let req = Request::Fetch {
            slot,
            layer,
            ids: sh.slots.ids(slot, ids),
            out: buf,
        };
        if self.submit(req).is_err() {
            return Err(Error::ShutDown("the I/O threads have stopped"));
        }
        let (buf, r) = sh.slots.wait(slot);
        if r.is_ok() {
            out.copy_from_slice(&buf);
        }
        sh.slots.keep_buf(slot, buf);
        r
    }

    /// An output buffer for up to `rows` rows: page-aligned and locked when allowed.
    pub fn alloc_rows(&self, rows: usize) -> Result<AlignedBuf> {
        AlignedBuf::new_pinned(rows * self.row_bytes())
    }

    /// Starts reading rows `ids` of layer index `layer` into `out` (whose capacity must
    /// hold them; its length is set to `ids.len() * row_bytes`). Waits while
    /// `max_in_flight` requests are outstanding, at most [`StoreOptions::slot_wait`]: then
    /// the ticket holds [`Error::Limit`]. Errors surface in [`Ticket::wait`].
    pub fn prefetch(&self, layer: usize, ids: &[u64], mut out: AlignedBuf) -> Ticket {
        let sh = self.shared();
        if let Err(e) = out.set_len(ids.len() * sh.table.row_bytes()) {
            return Ticket::ready(out, Err(e));
        }
        if let Err(e) = sh.check(layer, ids, out.len()) {
            return Ticket::ready(out, Err(e));
        }
        if ids.len() <= INLINE_MAX_ROWS && sh.dram_serves(layer, ids, false) {
            match sh.read_inline(layer, ids, out.as_mut_slice()) {
                Ok(true) => return Ticket::ready(out, Ok(())),
                Ok(false) => {}
                Err(e) => return Ticket::ready(out, Err(e)),
            }
        }
        let slot = match sh.slots.take() {
            Ok(s) => s,
            Err(e) => return Ticket::ready(out, Err(e)),
        };
        let req = Request::Fetch {
            slot,
            layer,
            ids: sh.slots.ids(slot, ids),
            out,
        };
        match self.submit(req) {
            Ok(()) => Ticket::in_flight(Arc::clone(&self.handle), slot),
            Err(req) => {
                sh.slots.release(slot);
                let Request::Fetch { out, .. } = req else {
                    return Ticket::gone();
                };
                Ticket::ready(out, Err(Error::ShutDown("the I/O threads have stopped")))
            }
        }
    }

    /// Starts reading rows `ids` of layer index `layer` into `out` (capacity as for
    /// [`Store::prefetch`]) and completes the request into `queue` with `tag`: for a caller
    /// with many requests in flight that takes them as they finish (the storage service,
    /// one queue per client). Every call gives exactly one [`Completion`], errors included
    /// (a bad batch, [`Error::Limit`] when no slot frees within `slot_wait`, an engine
    /// failure); a batch DRAM serves entirely completes before this returns. Never waits
    /// for the read itself; dropping `queue` with requests in flight is safe (their
    /// buffers are dropped when they finish).
    pub fn start(
        &self,
        layer: usize,
        ids: &[u64],
        mut out: AlignedBuf,
        tag: u64,
        queue: &Completions,
    ) {
        let sh = self.shared();
        let refused = |out, e| {
            queue.push(Completion {
                tag,
                out,
                result: Err(e),
            })
        };
        if let Err(e) = out.set_len(ids.len() * sh.table.row_bytes()) {
            return refused(out, e);
        }
        if let Err(e) = sh.check(layer, ids, out.len()) {
            return refused(out, e);
        }
        if ids.len() <= INLINE_MAX_ROWS && sh.dram_serves(layer, ids, false) {
            match sh.read_inline(layer, ids, out.as_mut_slice()) {
                Ok(true) => {
                    return queue.push(Completion {
                        tag,
                        out,
                        result: Ok(()),
                    });
                }
                Ok(false) => {}
                Err(e) => return refused(out, e),
            }
        }
        let slot = match sh.slots.take() {
            Ok(s) => s,
            Err(e) => return refused(out, e),
        };
        let req = Request::Slot {
            slot,
            tag,
            layer,
            ids: sh.slots.ids(slot, ids),
            out,
            reply: queue.sender(),
        };
        if let Err(Request::Slot { ids, out, .. }) = self.submit(req) {
            sh.slots.finish(slot, ids);
            refused(out, Error::ShutDown("the I/O threads have stopped"));
        }
    }

    /// Reads rows `ids` of layer index `layer` into the hot-row cache ahead of need, at low
    /// priority: speculative prefetch of rows a predictor (a candidate table, a draft
    /// model, MTP heads) expects soon. Its device reads go out only when no demand read is
    /// waiting and hold at most half the queue, so they never delay a demand read for
    /// long. Never blocks: with no cache, a resident backend, or `max_in_flight`
    /// speculations already pending, it does nothing and says so in the handle. Dropping
    /// the handle lets the speculation finish; [`Speculation::cancel`] stops it.
    pub fn speculate(&self, layer: usize, ids: &[u64]) -> Result<Speculation> {
        let sh = self.shared();
        sh.check_len(ids)?;
        sh.table.check_ids(layer, ids)?;
        let resident = sh.backend.kind() == BackendKind::Memory;
        let pending = sh.specs.pending.fetch_add(1, Ordering::Relaxed);
        if sh.cache.is_none() || resident || ids.is_empty() || pending >= sh.slots.len() {
            sh.specs.pending.fetch_sub(1, Ordering::Relaxed);
            if !ids.is_empty() && sh.cache.is_some() && !resident {
                sh.metrics.record_speculation_dropped();
            }
            return Ok(Speculation::not_taken());
        }
        let (spec, ids) = sh.specs.begin(ids);
        let req = Request::Speculate { spec, layer, ids };
        let sent = match &self.handle.requests {
            Some(tx) => tx.try_send(req).map_err(|e| e.into_inner()),
            None => Err(req),
        };
        match sent {
            Ok(()) => Ok(Speculation::local(Arc::clone(&self.handle), spec)),
            Err(req) => {
                if let Request::Speculate { ids, .. } = req {
                    sh.specs.done(ids);
                }
                sh.metrics.record_speculation_dropped();
                Ok(Speculation::not_taken())
            }
        }
    }

    /// Whether the hot-row cache holds row `row` of layer index `layer` now (false without
    /// a cache). Counts nothing and changes no eviction state: for diagnostics and
    /// simulators (`engram replay` classifies cold misses with it); under concurrent use the
    /// answer may be stale by the time it returns.
    pub fn cache_contains(&self, layer: usize, row: u64) -> bool {
        self.shared()
            .cache
            .as_ref()
            .is_some_and(|c| c.contains(layer, row))
    }

    /// Counters and latencies.
    pub fn stats(&self) -> StatsSnapshot {
        let sh = self.shared();
        let mut s = sh
            .metrics
            .snapshot(sh.backend.kind().name(), sh.table.row_bytes() as u64);
        if let Some(h) = sh.backend.device_latency() {
            s.device_read = h.summary("device_read");
        }
        if let Some(c) = &sh.cache {
            s.cache_hits = c.counters.hits.load(Ordering::Relaxed);
            s.cache_misses = c.counters.misses.load(Ordering::Relaxed);
            s.cache_rows = c.len() as u64;
            s.cache_capacity_rows = c.capacity_rows() as u64;
            let total = s.cache_hits + s.cache_misses;
            s.cache_hit_rate = if total > 0 {
                s.cache_hits as f64 / total as f64
            } else {
                0.0
            };
        }
        s
    }

    /// Resets counters and histograms (e.g. after warm-up); engine failures and rebuilds
    /// are kept.
    pub fn reset_stats(&self) {
        let sh = self.shared();
        sh.metrics.reset();
        if let Some(h) = sh.backend.device_latency() {
            h.reset();
        }
        if let Some(c) = &sh.cache {
            c.counters.hits.store(0, Ordering::Relaxed);
            c.counters.misses.store(0, Ordering::Relaxed);
        }
    }

    /// The stats in Prometheus text format.
    pub fn prometheus(&self) -> String {
        self.stats().prometheus()
    }
}

impl RowSource for Store {
    fn manifest(&self) -> &crate::format::Manifest {
        self.table().manifest()
    }
    fn layout(&self) -> &engram_kernels::EngramLayout {
        self.table().layout()
    }
    fn row_bytes(&self) -> usize {
        Store::row_bytes(self)
    }
    fn max_batch_rows(&self) -> usize {
        Store::max_batch_rows(self)
    }
    fn backend_name(&self) -> String {
        self.backend_kind().name().to_string()
    }
    fn lookup_into(&self, layer: usize, ids: &[u64], out: &mut [u8]) -> Result<()> {
        Store::lookup_into(self, layer, ids, out)
    }
    fn alloc_rows(&self, rows: usize) -> Result<AlignedBuf> {
        Store::alloc_rows(self, rows)
    }
    fn prefetch(&self, layer: usize, ids: &[u64], out: AlignedBuf) -> Ticket {
        Store::prefetch(self, layer, ids, out)
    }
    fn speculate(&self, layer: usize, ids: &[u64]) -> Result<Speculation> {
        Store::speculate(self, layer, ids)
    }
    fn stats(&self) -> Result<StatsSnapshot> {
        Ok(Store::stats(self))
    }
    fn reset_stats(&self) -> Result<()> {
        Store::reset_stats(self);
        Ok(())
    }
}
