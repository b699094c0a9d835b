//! The store: a table, a backend, the hot-row cache, I/O worker threads and tickets.
//!
//! `lookup_into` reads synchronously on the caller's thread; `prefetch` hands a batch to an
//! I/O worker (one backend reader, i.e. one ring, per worker) and returns a [`Ticket`].
//! In-flight prefetches are bounded by `max_in_flight` slots allocated at open: a full store
//! blocks the caller (back-pressure) instead of growing a queue.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded};

use crate::backend::{self, Backend, BackendKind, BackendOptions, IoCounters, RowReader, Tier};
use crate::buffer::AlignedBuf;
use crate::cache::RowCache;
use crate::error::{Error, Result};
use crate::io::{BatchId, Driver, Finished, MAX_ACTIVE_BATCHES, Outputs, Priority};
use crate::metrics::{Metrics, StatsSnapshot};
use crate::profile::Profile;
use crate::source::{PendingRows, PendingSpeculation, RowSource};
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
/// Speculations tracked for cancellation (a ring of the latest cancel requests).
pub const MAX_SPECULATIONS: usize = 256;
/// Hard upper bound on `max_batch_rows` (slots are u32; staging grows with it).
pub const MAX_BATCH_ROWS_LIMIT: usize = 1 << 24;

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How to open and validate the table.
    pub open: OpenOptions,
    /// Which backend to use and how to shape its reads.
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
            max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
            cache_bytes: 0,
            profile: None,
            admit_on_first_miss: false,
            seed: crate::cache::SeedOptions::default(),
            records: true,
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

/// Work for an I/O worker.
#[derive(Debug)]
enum Job {
    /// Rows a ticket waits for, read into its buffer.
    Fetch {
        slot: usize,
        layer: usize,
        ids: Vec<u64>,
        out: AlignedBuf,
    },
    /// Rows read into the hot-row cache only, at low priority (speculation `spec`).
    Warm {
        spec: u64,
        layer: usize,
        ids: Vec<u64>,
    },
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
    /// Speculations queued or running, at most `max_in_flight`.
    spec_pending: AtomicUsize,
    /// Next speculation number.
    spec_next: AtomicU64,
    /// (MAX_SPECULATIONS,) the number of the last cancelled speculation in each slot
    spec_cancelled: Vec<AtomicU64>,
    /// Id vectors of finished speculations, for the next ones (no allocation per token).
    spec_ids: Mutex<Vec<Vec<u64>>>,
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

    /// Errors unless `ids` fits a batch and every id is a row of layer `layer`.
    fn check_ids_len(&self, layer: usize, ids: &[u64]) -> Result<()> {
        self.check_len(ids)?;
        self.table.check_ids(layer, ids)
    }

    fn check_len(&self, ids: &[u64]) -> Result<()> {
        if ids.len() > self.max_batch_rows {
            return Err(Error::Limit {
                what: "batch rows",
                name: "max_batch_rows",
                limit: self.max_batch_rows,
                found: ids.len(),
            });
        }
        Ok(())
    }

    fn check(&self, layer: usize, ids: &[u64], out_len: usize) -> Result<()> {
        self.check_len(ids)?;
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

impl Shared {
    /// Hands a finished fetch to its ticket.
    fn deliver(&self, slot: usize, out: AlignedBuf, result: Result<()>, ids: Vec<u64>) {
        let slot = &self.slots[slot];
        if let Ok(mut st) = slot.state.lock() {
            st.done = Some((out, result, ids));
        }
        slot.ready.notify_all();
    }

    fn spec_is_cancelled(&self, spec: u64) -> bool {
        self.spec_cancelled[(spec % MAX_SPECULATIONS as u64) as usize].load(Ordering::Relaxed)
            == spec
    }

    /// Returns a finished speculation's id vector to the pool.
    fn spec_done(&self, mut ids: Vec<u64>) {
        self.spec_pending.fetch_sub(1, Ordering::Relaxed);
        ids.clear();
        if let Ok(mut pool) = self.spec_ids.lock()
            && pool.len() < MAX_SPECULATIONS
        {
            pool.push(ids);
        }
    }
}

fn worker_loop(shared: Arc<Shared>, jobs: Receiver<Job>, mut ctx: ReaderCtx) {
    if ctx.reader.driver().is_some() {
        StreamWorker::new(&shared).run(&jobs, &mut ctx);
        return;
    }
    // Resident backends: one job at a time (nothing to overlap), nothing to warm.
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Fetch {
                slot,
                layer,
                ids,
                mut out,
            } => {
                let result = shared.read(layer, &ids, out.as_mut_slice(), &mut ctx);
                shared.deliver(slot, out, result, ids);
            }
            Job::Warm { ids, .. } => shared.spec_done(ids),
        }
    }
}

/// A job whose misses are being read by the driver.
#[derive(Debug)]
struct Running {
    job: Job,
    /// (misses,) row ids and their output slots; empty slots: the identity
    miss_ids: Vec<u64>,
    miss_slots: Vec<u32>,
    /// Where a warm job's rows land before the cache.
    scratch: Option<AlignedBuf>,
    t0: Instant,
    t_io: Instant,
}

/// The output buffers of the running jobs, by batch id.
struct RunningOuts<'a>(&'a mut [Option<Running>]);

impl Outputs for RunningOuts<'_> {
    fn out(&mut self, batch: BatchId) -> &mut [u8] {
        match self.0.get_mut(batch as usize).and_then(Option::as_mut) {
            Some(Running {
                job: Job::Fetch { out, .. },
                ..
            }) => out.as_mut_slice(),
            Some(Running {
                scratch: Some(buf), ..
            }) => buf.as_mut_slice(),
            // An unknown batch gets no room: the scatter fails the batch, no panic.
            _ => &mut [],
        }
    }
}

/// An I/O worker over a batch driver: keeps taking jobs while reads are in flight, so
/// the device queue refills from the next job as the previous one's reads complete
/// (one continuous submission stream across batches and tickets).
struct StreamWorker<'a> {
    shared: &'a Shared,
    /// (MAX_ACTIVE_BATCHES,) running jobs by batch id
    running: Vec<Option<Running>>,
    spare_lists: Vec<(Vec<u64>, Vec<u32>)>,
    spare_bufs: Vec<AlignedBuf>,
    finished: Vec<Finished>,
}

impl<'a> StreamWorker<'a> {
    fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            running: (0..MAX_ACTIVE_BATCHES).map(|_| None).collect(),
            spare_lists: Vec::with_capacity(MAX_ACTIVE_BATCHES),
            spare_bufs: Vec::with_capacity(MAX_ACTIVE_BATCHES),
            finished: Vec::with_capacity(MAX_ACTIVE_BATCHES),
        }
    }

    fn run(&mut self, jobs: &Receiver<Job>, ctx: &mut ReaderCtx) {
        let Some(driver) = ctx.reader.driver() else {
            return;
        };
        let mut open = true;
        loop {
            while open && driver.can_start() {
                // Block for work only when nothing is in flight.
                let next = if driver.active() == 0 {
                    jobs.recv().map_err(|_| TryRecvError::Disconnected)
                } else {
                    jobs.try_recv()
                };
                match next {
                    Ok(job) => self.begin(driver, job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            if driver.active() == 0 {
                if open {
                    continue;
                }
                return;
            }
            for (id, r) in self.running.iter().enumerate() {
                if let Some(Running {
                    job: Job::Warm { spec, .. },
                    ..
                }) = r
                    && self.shared.spec_is_cancelled(*spec)
                {
                    driver.cancel(id as BatchId);
                }
            }
            driver.pump(
                true,
                &mut RunningOuts(&mut self.running),
                &mut self.finished,
            );
            let mut finished = std::mem::take(&mut self.finished);
            for f in finished.drain(..) {
                self.finish(f);
            }
            self.finished = finished;
        }
    }

    /// Probes the cache and starts the misses on the driver (or finishes at once).
    fn begin(&mut self, driver: &mut Driver, mut job: Job) {
        let sh = self.shared;
        let t0 = Instant::now();
        let (mut miss_ids, mut miss_slots) = self.spare_lists.pop().unwrap_or_default();
        miss_ids.clear();
        miss_slots.clear();
        let rb = sh.table.row_bytes();
        let mut scratch = None;
        let (layer, priority) = match &mut job {
            Job::Fetch {
                layer, ids, out, ..
            } => {
                match &sh.cache {
                    Some(cache) => {
                        for (k, (&row, dst)) in ids
                            .iter()
                            .zip(out.as_mut_slice().chunks_exact_mut(rb))
                            .enumerate()
                        {
                            if !cache.get(*layer, row, dst) {
                                miss_ids.push(row);
                                miss_slots.push(k as u32);
                            }
                        }
                        sh.metrics
                            .record_tier(Tier::Cache, t0.elapsed().as_nanos() as u64);
                    }
                    None => miss_ids.extend_from_slice(ids),
                }
                (*layer, Priority::Demand)
            }
            Job::Warm {
                spec, layer, ids, ..
            } => {
                if !sh.spec_is_cancelled(*spec)
                    && let Some(cache) = &sh.cache
                {
                    miss_ids.extend(ids.iter().filter(|&&r| !cache.contains(*layer, r)));
                }
                if !miss_ids.is_empty() {
                    let need = miss_ids.len() * rb;
                    let buf = match self.spare_bufs.iter().position(|b| b.capacity() >= need) {
                        Some(i) => Ok(self.spare_bufs.swap_remove(i)),
                        None => AlignedBuf::new(need, crate::buffer::IO_ALIGN),
                    };
                    match buf.and_then(|mut b| b.set_len(need).map(|()| b)) {
                        Ok(b) => scratch = Some(b),
                        Err(_) => miss_ids.clear(),
                    }
                }
                (*layer, Priority::Speculative)
            }
        };
        let running = Running {
            job,
            miss_ids,
            miss_slots,
            scratch,
            t0,
            t_io: Instant::now(),
        };
        if running.miss_ids.is_empty() {
            self.complete(running, Ok(()), IoCounters::default());
            return;
        }
        match driver.start(layer, &running.miss_ids, &running.miss_slots, priority) {
            Ok(id) => self.running[id as usize] = Some(running),
            Err(e) => self.complete(running, Err(e), IoCounters::default()),
        }
    }

    fn finish(&mut self, f: Finished) {
        match self
            .running
            .get_mut(f.batch as usize)
            .and_then(Option::take)
        {
            Some(running) => self.complete(running, f.result, f.counters),
            None => debug_assert!(false, "finished batch {} was not running", f.batch),
        }
    }

    /// Admits what was read, records metrics and hands the job back.
    fn complete(&mut self, r: Running, result: Result<()>, counters: IoCounters) {
        let sh = self.shared;
        let rb = sh.table.row_bytes();
        let misses = r.miss_ids.len();
        if misses > 0 {
            sh.metrics
                .record_tier(sh.backend.kind().tier(), r.t_io.elapsed().as_nanos() as u64);
            sh.metrics.record_io(misses, &counters);
        }
        match r.job {
            Job::Fetch {
                slot,
                layer,
                ids,
                out,
            } => {
                if result.is_ok()
                    && let Some(cache) = &sh.cache
                {
                    for (&row, &k) in r.miss_ids.iter().zip(&r.miss_slots) {
                        let at = k as usize * rb;
                        cache.admit(layer, row, &out[at..at + rb]);
                    }
                }
                sh.metrics.record_batch(
                    ids.len(),
                    r.t0.elapsed().as_nanos() as u64,
                    result.is_ok(),
                );
                sh.deliver(slot, out, result, ids);
            }
            Job::Warm { layer, ids, .. } => {
                sh.metrics.record_speculation(misses, &result);
                if result.is_ok()
                    && let (Some(cache), Some(buf)) = (&sh.cache, &r.scratch)
                {
                    for (&row, bytes) in r.miss_ids.iter().zip(buf.chunks_exact(rb)) {
                        cache.admit(layer, row, bytes);
                    }
                }
                sh.spec_done(ids);
            }
        }
        if let Some(buf) = r.scratch {
            self.spare_bufs.push(buf);
        }
        self.spare_lists.push((r.miss_ids, r.miss_slots));
    }
}

/// Seeding reads: longest merged read.
pub const SEED_MAX_READ_BYTES: u64 = 512 << 10;
/// Seeding reads: merge reads whose gap is at most this. Seeding reads a profile's rows
/// once, sorted by row: on a device that gives ~330 MB/s sequentially but ~5k random
/// 4 KiB reads/s (this project's VM), reading a 64 KiB gap costs less than one more read.
pub const SEED_COALESCE_GAP_BYTES: u64 = 64 << 10;
/// Seeding reads in flight (with [`SEED_MAX_READ_BYTES`]: 4 MiB of staging, within the
/// usual 8 MiB RLIMIT_MEMLOCK that io_uring's registered buffers count against).
pub const SEED_QUEUE_DEPTH: usize = 8;

/// A second backend for seeding the cache on device backends: the same engine, reads
/// coalesced across gaps ([`SEED_COALESCE_GAP_BYTES`]), no records. `None` (seed through
/// the store's own readers) for resident and external backends, or when it cannot open.
fn seed_backend(
    table: &Arc<Table>,
    options: &BackendOptions,
    kind: BackendKind,
) -> Option<Arc<dyn Backend>> {
    if options.engine.is_some() || !matches!(kind, BackendKind::Uring | BackendKind::Pread) {
        return None;
    }
    let mut o = options.clone();
    o.kind = Some(kind);
    o.records = None;
    o.queue_depth = o.queue_depth.min(SEED_QUEUE_DEPTH);
    o.pread_threads = o.pread_threads.min(SEED_QUEUE_DEPTH);
    o.coalesce_gap_bytes = o.coalesce_gap_bytes.max(SEED_COALESCE_GAP_BYTES);
    o.max_read_bytes = o.max_read_bytes.max(SEED_MAX_READ_BYTES);
    match backend::open_backend(table, &o) {
        Ok(opened) => Some(opened.backend),
        Err(e) => {
            tracing::info!(target: "engram_store", "seeding through the store's readers: {e}");
            None
        }
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
        let mut backend_options = options.backend.clone();
        let records_path = table.dir().join(crate::records::RECORDS_FILE);
        if options.records && backend_options.records.is_none() && records_path.exists() {
            let records = crate::records::Records::open(&records_path, &table)?;
            tracing::info!(target: "engram_store", layers = records.layers.iter().flatten().count(), "n-gram records from {}", records_path.display());
            backend_options.records = Some(Arc::new(records));
        }
        let opened = backend::open_backend(&table, &backend_options)?;
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
            spec_pending: AtomicUsize::new(0),
            spec_next: AtomicU64::new(0),
            spec_cancelled: (0..MAX_SPECULATIONS).map(|_| AtomicU64::new(0)).collect(),
            spec_ids: Mutex::new(Vec::with_capacity(MAX_SPECULATIONS)),
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
            let mut ctx = match seed_backend(&table, &backend_options, shared.backend.kind()) {
                Some(b) => ReaderCtx {
                    reader: b.reader()?,
                    miss_ids: Vec::new(),
                    miss_slots: Vec::new(),
                },
                None => shared.new_ctx()?,
            };
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
        // Room for every ticket's fetch and as many pending speculations.
        let (jobs_tx, jobs_rx) = bounded::<Job>(2 * options.max_in_flight);
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

    /// Bytes of one row; output buffers hold `ids.len() * row_bytes()`.
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
        let early = |out: AlignedBuf, e: Error| Ticket::ready(out, Err(e));
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
            return Ticket::ready(out, r);
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
        let job = Job::Fetch {
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
                pending: None,
            },
            Err(Job::Fetch { out, .. }) => {
                let _ = sh.free_tx.send(slot);
                early(out, Error::ShutDown("I/O workers stopped"))
            }
            Err(Job::Warm { .. }) => unreachable!("a fetch job came back as a warm job"),
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
        sh.check_ids_len(layer, ids)?;
        let resident = sh.backend.kind() == BackendKind::Memory;
        let pending = sh.spec_pending.fetch_add(1, Ordering::Relaxed);
        if sh.cache.is_none() || resident || ids.is_empty() || pending >= sh.slots.len() {
            sh.spec_pending.fetch_sub(1, Ordering::Relaxed);
            if !ids.is_empty() && sh.cache.is_some() && !resident {
                sh.metrics.record_speculation_dropped();
            }
            return Ok(Speculation::not_taken());
        }
        let spec = sh.spec_next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut buf = sh
            .spec_ids
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default();
        buf.extend_from_slice(ids);
        let job = Job::Warm {
            spec,
            layer,
            ids: buf,
        };
        let sent = match &self.handle.jobs {
            Some(tx) => tx.try_send(job).map_err(|e| e.into_inner()),
            None => Err(job),
        };
        match sent {
            Ok(()) => Ok(Speculation {
                handle: Some(Arc::clone(&self.handle)),
                spec,
                pending: None,
            }),
            Err(job) => {
                if let Job::Warm { ids, .. } = job {
                    sh.spec_done(ids);
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

/// A speculative prefetch ([`Store::speculate`]).
#[derive(Debug)]
pub struct Speculation {
    handle: Option<Arc<Handle>>,
    spec: u64,
    /// A speculation running outside this process's store.
    pending: Option<Box<dyn PendingSpeculation>>,
}

impl Speculation {
    /// A speculation the source did not take.
    pub fn not_taken() -> Self {
        Self {
            handle: None,
            spec: 0,
            pending: None,
        }
    }

    /// A speculation running elsewhere (another [`crate::RowSource`]).
    pub fn from_pending(pending: Box<dyn PendingSpeculation>) -> Self {
        Self {
            handle: None,
            spec: 0,
            pending: Some(pending),
        }
    }

    /// Whether the source took the speculation (false: no cache, a resident backend, or
    /// too many pending).
    pub fn accepted(&self) -> bool {
        self.handle.is_some() || self.pending.is_some()
    }

    /// Stops the speculation: reads not yet issued never are; rows already read still
    /// enter the cache.
    pub fn cancel(self) {
        if let Some(p) = self.pending {
            p.cancel();
            return;
        }
        if let Some(h) = &self.handle {
            let slot = (self.spec % MAX_SPECULATIONS as u64) as usize;
            h.shared.spec_cancelled[slot].store(self.spec, Ordering::Relaxed);
        }
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
    /// Rows being read outside this process's store.
    pending: Option<Box<dyn PendingRows>>,
}

impl Ticket {
    /// A ticket whose outcome is already known.
    pub fn ready(out: AlignedBuf, result: Result<()>) -> Self {
        Self {
            handle: None,
            slot: None,
            ready: Some((out, result)),
            pending: None,
        }
    }

    /// A ticket for rows being read elsewhere (another [`crate::RowSource`]).
    pub fn from_pending(pending: Box<dyn PendingRows>) -> Self {
        Self {
            handle: None,
            slot: None,
            ready: None,
            pending: Some(pending),
        }
    }

    /// Whether the rows are ready (`wait` would not block).
    pub fn is_ready(&self) -> bool {
        if let Some(p) = &self.pending {
            return p.is_ready();
        }
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
        if let Some(p) = self.pending.take() {
            return p.wait();
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
        if self.slot.is_some() || self.pending.is_some() {
            let _ = self.wait_inner();
        }
    }
}
