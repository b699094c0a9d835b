//! The store: a table, a backend, the hot-row cache, I/O worker threads and tickets.
//!
//! `lookup_into` reads synchronously on the caller's thread; `prefetch` hands a batch to an
//! I/O worker (one backend reader, i.e. one ring, per worker) and returns a [`Ticket`].
//! In-flight prefetches are bounded by `max_in_flight` slots allocated at open: a full store
//! blocks the caller (back-pressure) instead of growing a queue.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::backend::{self, Backend, BackendKind, BackendOptions, IoCounters, RowReader, Tier};
use crate::buffer::AlignedBuf;
use crate::cache::RowCache;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, StatsSnapshot};
use crate::profile::Profile;
use crate::table::{OpenOptions, Table};

/// Default bound on prefetches in flight per store.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Default largest batch (rows per lookup or prefetch).
pub const DEFAULT_MAX_BATCH_ROWS: usize = 65_536;
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
    pub open: OpenOptions,
    pub backend: BackendOptions,
    /// I/O worker threads serving prefetches (each owns one backend reader).
    pub io_workers: usize,
    /// Prefetch tickets outstanding at once.
    pub max_in_flight: usize,
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            open: OpenOptions::default(),
            backend: BackendOptions::default(),
            io_workers: 2,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
            cache_bytes: 0,
            profile: None,
            admit_on_first_miss: false,
            seed: crate::cache::SeedOptions::default(),
        }
    }
}

/// A backend reader plus the scratch vectors one batch needs (allocated once).
#[derive(Debug)]
struct ReaderCtx {
    reader: Box<dyn RowReader>,
    miss_ids: Vec<u64>,
    miss_slots: Vec<u32>,
}

#[derive(Debug, Default)]
struct SlotState {
    // ids buffer of this slot while it is free
    spare_ids: Option<Vec<u64>>,
    done: Option<(AlignedBuf, Result<()>, Vec<u64>)>,
}

#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Debug)]
struct Job {
    slot: usize,
    layer: usize,
    ids: Vec<u64>,
    out: AlignedBuf,
}

#[derive(Debug)]
struct Shared {
    table: Arc<Table>,
    backend: Arc<dyn Backend>,
    fallback: Option<String>,
    cache: Option<RowCache>,
    metrics: Metrics,
    readers: Mutex<Vec<ReaderCtx>>,
    slots: Vec<Slot>,
    free_tx: Sender<usize>,
    free_rx: Receiver<usize>,
    max_batch_rows: usize,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the job channel stops the workers after the jobs already queued.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A shareable (`Send + Sync`, cheap `Clone`) handle to an open table.
#[derive(Debug, Clone)]
pub struct Store {
    handle: Arc<Handle>,
}

impl Shared {
    fn new_ctx(&self) -> Result<ReaderCtx> {
        Ok(ReaderCtx {
            reader: self.backend.reader()?,
            miss_ids: Vec::with_capacity(self.max_batch_rows),
            miss_slots: Vec::with_capacity(self.max_batch_rows),
        })
    }

    /// Whether DRAM alone holds every row: a resident backend, or every id in the cache.
    fn dram_serves(&self, layer: usize, ids: &[u64]) -> bool {
        self.backend.kind() == BackendKind::Memory
            || self
                .cache
                .as_ref()
                .is_some_and(|c| ids.iter().all(|&r| c.contains(layer, r)))
    }

    fn take_ctx(&self) -> Result<ReaderCtx> {
        let pooled = self.readers.lock().ok().and_then(|mut v| v.pop());
        match pooled {
            Some(c) => Ok(c),
            None => self.new_ctx(),
        }
    }

    fn put_ctx(&self, ctx: ReaderCtx) {
        if let Ok(mut v) = self.readers.lock() {
            v.push(ctx);
        }
    }

    fn check(&self, layer: usize, ids: &[u64], out_len: usize) -> Result<()> {
        if ids.len() > self.max_batch_rows {
            return Err(Error::Limit {
                what: "batch rows",
                name: "max_batch_rows",
                limit: self.max_batch_rows,
                found: ids.len(),
            });
        }
        let need = ids.len() * self.table.row_bytes();
        if out_len != need {
            return Err(Error::Shape {
                what: "output bytes (rows x row_bytes)",
                expected: need,
                found: out_len,
            });
        }
        self.table.check_ids(layer, ids)
    }

    fn read(&self, layer: usize, ids: &[u64], out: &mut [u8], ctx: &mut ReaderCtx) -> Result<()> {
        let t0 = Instant::now();
        let r = self.read_inner(layer, ids, out, ctx);
        self.metrics
            .record_batch(ids.len(), t0.elapsed().as_nanos() as u64, r.is_ok());
        r
    }

    fn read_inner(
        &self,
        layer: usize,
        ids: &[u64],
        out: &mut [u8],
        ctx: &mut ReaderCtx,
    ) -> Result<()> {
        self.check(layer, ids, out.len())?;
        let rb = self.table.row_bytes();
        let (bids, bslots): (&[u64], &[u32]) = match &self.cache {
            Some(cache) => {
                let t = Instant::now();
                ctx.miss_ids.clear();
                ctx.miss_slots.clear();
                for (k, (&row, dst)) in ids.iter().zip(out.chunks_exact_mut(rb)).enumerate() {
                    if !cache.get(layer, row, dst) {
                        ctx.miss_ids.push(row);
                        ctx.miss_slots.push(k as u32);
                    }
                }
                self.metrics
                    .record_tier(Tier::Cache, t.elapsed().as_nanos() as u64);
                (&ctx.miss_ids, &ctx.miss_slots)
            }
            None => (ids, &[]),
        };
        if bids.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let mut c = IoCounters::default();
        ctx.reader.read_rows(layer, bids, bslots, out, &mut c)?;
        self.metrics
            .record_tier(self.backend.kind().tier(), t.elapsed().as_nanos() as u64);
        self.metrics.record_io(bids.len(), &c);
        if let Some(cache) = &self.cache {
            for (&row, &slot) in bids.iter().zip(bslots) {
                let s = slot as usize * rb;
                cache.admit(layer, row, &out[s..s + rb]);
            }
        }
        Ok(())
    }
}

fn worker_loop(shared: Arc<Shared>, jobs: Receiver<Job>, mut ctx: ReaderCtx) {
    while let Ok(mut job) = jobs.recv() {
        let result = shared.read(job.layer, &job.ids, job.out.as_mut_slice(), &mut ctx);
        let slot = &shared.slots[job.slot];
        if let Ok(mut st) = slot.state.lock() {
            st.done = Some((job.out, result, job.ids));
        }
        slot.ready.notify_all();
    }
}

impl Store {
    /// Opens `dir` and the backend; starts the I/O workers; seeds the cache.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Self> {
        let table = Arc::new(Table::open_with(dir, &options.open)?);
        Self::from_table(table, options)
    }

    /// [`Store::open`] for a table already opened.
    pub fn from_table(table: Arc<Table>, options: &StoreOptions) -> Result<Self> {
        if options.max_batch_rows == 0 || options.max_batch_rows > MAX_BATCH_ROWS_LIMIT {
            return Err(Error::Limit {
                what: "max_batch_rows",
                name: "MAX_BATCH_ROWS_LIMIT",
                limit: MAX_BATCH_ROWS_LIMIT,
                found: options.max_batch_rows,
            });
        }
        if options.max_in_flight == 0 || options.io_workers == 0 {
            return Err(Error::Invalid {
                what: "store options",
                reason: "max_in_flight and io_workers must be at least 1".into(),
            });
        }
        for li in 0..table.n_layers() {
            if table.rows(li)? >= 1 << 48 {
                return Err(Error::Invalid {
                    what: "table",
                    reason: format!("layer index {li} has 2^48 rows or more"),
                });
            }
        }
        let opened = backend::open_backend(&table, &options.backend)?;
        tracing::info!(target: "engram_store", backend = %opened.backend.kind(), "opened {}", table.dir().display());
        let cache = RowCache::for_table(&table, options.cache_bytes, options.admit_on_first_miss)?;
        let (free_tx, free_rx) = bounded(options.max_in_flight);
        let mut slots = Vec::with_capacity(options.max_in_flight);
        for i in 0..options.max_in_flight {
            slots.push(Slot {
                state: Mutex::new(SlotState {
                    spare_ids: Some(Vec::with_capacity(options.max_batch_rows.min(1 << 16))),
                    done: None,
                }),
                ready: Condvar::new(),
            });
            let _ = free_tx.send(i);
        }
        let shared = Arc::new(Shared {
            table: Arc::clone(&table),
            backend: opened.backend,
            fallback: opened.fallback,
            cache,
            metrics: Metrics::default(),
            readers: Mutex::new(Vec::with_capacity(options.io_workers + 4)),
            slots,
            free_tx,
            free_rx,
            max_batch_rows: options.max_batch_rows,
        });
        if let Some(profile) = &options.profile {
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
        if let (Some(cache), Some(profile)) = (&shared.cache, &options.profile) {
            let mut ctx = shared.new_ctx()?;
            let layout = table.layout();
            let seeded = cache.seed(
                profile,
                &options.seed,
                |lid| layout.layer_index(lid).ok(),
                |li, rows, out| {
                    let mut c = IoCounters::default();
                    ctx.reader.read_rows(li, rows, &[], out, &mut c)
                },
            )?;
            tracing::info!(target: "engram_store", seeded, "hot-row cache seeded from profile");
            shared.put_ctx(ctx);
        }
        let (jobs_tx, jobs_rx) = bounded::<Job>(options.max_in_flight);
        let mut workers = Vec::with_capacity(options.io_workers);
        for w in 0..options.io_workers {
            let ctx = shared.new_ctx()?;
            let sh = Arc::clone(&shared);
            let rx = jobs_rx.clone();
            let h = std::thread::Builder::new()
                .name(format!("engram-io-{w}"))
                .spawn(move || worker_loop(sh, rx, ctx))
                .map_err(|e| Error::Unavailable {
                    what: "I/O worker thread",
                    reason: e.to_string(),
                })?;
            workers.push(h);
        }
        Ok(Self {
            handle: Arc::new(Handle {
                shared,
                jobs: Some(jobs_tx),
                workers,
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

    pub fn row_bytes(&self) -> usize {
        self.shared().table.row_bytes()
    }

    /// Largest batch.
    pub fn max_batch_rows(&self) -> usize {
        self.shared().max_batch_rows
    }

    /// Reads rows `ids` of layer index `layer` into `out` (`ids.len() * row_bytes`), on
    /// this thread.
    pub fn lookup_into(&self, layer: usize, ids: &[u64], out: &mut [u8]) -> Result<()> {
        let sh = self.shared();
        let mut ctx = sh.take_ctx()?;
        let r = sh.read(layer, ids, out, &mut ctx);
        sh.put_ctx(ctx);
        r
    }

    /// An output buffer for up to `rows` rows: page-aligned and locked when allowed.
    pub fn alloc_rows(&self, rows: usize) -> Result<AlignedBuf> {
        AlignedBuf::new_pinned(rows * self.row_bytes())
    }

    /// Starts reading rows `ids` of layer index `layer` into `out` (whose capacity must
    /// hold them; its length is set to `ids.len() * row_bytes`). Blocks while
    /// `max_in_flight` prefetches are outstanding. Errors surface in [`Ticket::wait`].
    pub fn prefetch(&self, layer: usize, ids: &[u64], mut out: AlignedBuf) -> Ticket {
        let sh = self.shared();
        let early = |out: AlignedBuf, e: Error| Ticket {
            handle: None,
            slot: None,
            ready: Some((out, Err(e))),
        };
        if let Err(e) = out.set_len(ids.len() * sh.table.row_bytes()) {
            return early(out, e);
        }
        if let Err(e) = sh.check(layer, ids, out.len()) {
            return early(out, e);
        }
        if ids.len() <= INLINE_MAX_ROWS && sh.dram_serves(layer, ids) {
            let r = sh.take_ctx().and_then(|mut ctx| {
                let r = sh.read(layer, ids, out.as_mut_slice(), &mut ctx);
                sh.put_ctx(ctx);
                r
            });
            return Ticket {
                handle: None,
                slot: None,
                ready: Some((out, r)),
            };
        }
        let Ok(slot) = sh.free_rx.recv() else {
            return early(out, Error::ShutDown("slot queue closed"));
        };
        let mut ids_buf = sh.slots[slot]
            .state
            .lock()
            .ok()
            .and_then(|mut s| s.spare_ids.take())
            .unwrap_or_default();
        ids_buf.clear();
        ids_buf.extend_from_slice(ids);
        let job = Job {
            slot,
            layer,
            ids: ids_buf,
            out,
        };
        let sent = match &self.handle.jobs {
            Some(tx) => tx.send(job).map_err(|e| e.into_inner()),
            None => Err(job),
        };
        match sent {
            Ok(()) => Ticket {
                handle: Some(Arc::clone(&self.handle)),
                slot: Some(slot),
                ready: None,
            },
            Err(job) => {
                let _ = sh.free_tx.send(slot);
                early(job.out, Error::ShutDown("I/O workers stopped"))
            }
        }
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

    /// Resets counters and histograms (e.g. after warm-up).
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

/// A prefetch in flight. [`Ticket::wait`] returns the buffer and the outcome; dropping a
/// ticket waits for its batch and drops the buffer.
#[derive(Debug)]
#[must_use = "a ticket must be waited on to get its rows"]
pub struct Ticket {
    handle: Option<Arc<Handle>>,
    slot: Option<usize>,
    ready: Option<(AlignedBuf, Result<()>)>,
}

impl Ticket {
    /// Whether the rows are ready (`wait` would not block).
    pub fn is_ready(&self) -> bool {
        match (&self.handle, self.slot) {
            (Some(h), Some(slot)) => h.shared.slots[slot]
                .state
                .lock()
                .map(|s| s.done.is_some())
                .unwrap_or(true),
            _ => true,
        }
    }

    /// Blocks until the rows are in the buffer; returns it with the outcome.
    pub fn wait(mut self) -> (AlignedBuf, Result<()>) {
        self.wait_inner()
    }

    fn wait_inner(&mut self) -> (AlignedBuf, Result<()>) {
        if let Some(r) = self.ready.take() {
            return r;
        }
        let (Some(h), Some(slot)) = (self.handle.take(), self.slot.take()) else {
            let empty = AlignedBuf::new(0, crate::buffer::IO_ALIGN);
            return match empty {
                Ok(b) => (b, Err(Error::ShutDown("ticket already consumed"))),
                Err(e) => unreachable!("a one-page allocation failed: {e}"),
            };
        };
        let sh = &h.shared;
        let s = &sh.slots[slot];
        let mut st = match s.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        loop {
            if let Some((buf, result, ids)) = st.done.take() {
                st.spare_ids = Some(ids);
                drop(st);
                let _ = sh.free_tx.send(slot);
                return (buf, result);
            }
            st = match s.ready.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.slot.is_some() {
            let _ = self.wait_inner();
        }
    }
}
