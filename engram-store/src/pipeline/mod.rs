//! The store's one request pipeline. Every row request (a lookup, a prefetch ticket, a
//! speculative warm-up) is probed against the hot-row cache, then, unless DRAM serves it
//! whole on the caller's thread, becomes a [`Request`] on a bounded queue that the
//! reactors (one per I/O thread, [`reactor::Reactor`]) take from. A reactor owns a driver
//! over one engine, reads the misses, admits them to the cache and completes the request
//! into its slot ([`Slots`]), where the caller waits.
//!
//! The cache probe and admission ([`Shared::probe`], [`Shared::admit`]) exist here once.

pub(crate) mod reactor;
pub(crate) mod seed;
pub(crate) mod slots;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::backend::{Backend, BackendKind, IoCounters, Tier};
use crate::buffer::AlignedBuf;
use crate::cache::RowCache;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::table::Table;

pub(crate) use slots::Slots;

/// Speculations tracked for cancellation (a ring of the latest cancel requests).
pub const MAX_SPECULATIONS: usize = 256;

/// Work for a reactor.
#[derive(Debug)]
pub(crate) enum Request {
    /// A service client's slot request ([`crate::Store::start`]): rows read into `out`,
    /// handed to the caller's completion queue `reply` with its `tag`; store slot `slot`
    /// (the request's share of `max_in_flight`) is freed first.
    Slot {
        slot: usize,
        tag: u64,
        layer: usize,
        ids: Vec<u64>,
        out: AlignedBuf,
        reply: crossbeam_channel::Sender<Completion>,
    },
    /// Rows a caller waits for (a ticket or a lookup), read into `out`, completed into
    /// slot `slot`.
    Fetch {
        slot: usize,
        layer: usize,
        ids: Vec<u64>,
        out: AlignedBuf,
    },
    /// Rows read into the hot-row cache only, at low priority (speculation `spec`).
    Speculate {
        spec: u64,
        layer: usize,
        ids: Vec<u64>,
    },
}

/// A finished request started with [`crate::Store::start`]: the caller's tag, its buffer
/// (`ids.len() * row_bytes` long) and the outcome.
#[derive(Debug)]
pub struct Completion {
    /// The tag given to [`crate::Store::start`].
    pub tag: u64,
    /// The buffer given to [`crate::Store::start`], holding the rows when `result` is `Ok`.
    pub out: AlignedBuf,
    /// The request's outcome: an engine failure is an [`Error::Engine`].
    pub result: Result<()>,
}

/// A completion queue: where the requests a caller starts with [`crate::Store::start`]
/// complete, in the order they finish (not the order they started). Each start gives
/// exactly one [`Completion`]. Unbounded in type but bounded in use: every request holds
/// one of the store's `max_in_flight` slots until its completion is queued.
#[derive(Debug)]
pub struct Completions {
    tx: crossbeam_channel::Sender<Completion>,
    rx: crossbeam_channel::Receiver<Completion>,
}

impl Default for Completions {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self { tx, rx }
    }
}

impl Completions {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next completion, waiting for it. Only call it with a request outstanding:
    /// with none, it waits until `timeout` and returns `None`.
    pub fn wait(&self, timeout: std::time::Duration) -> Option<Completion> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next completion if one is queued.
    pub fn try_next(&self) -> Option<Completion> {
        self.rx.try_recv().ok()
    }

    /// Completes a request at once (served inline or refused).
    pub(crate) fn push(&self, c: Completion) {
        // The receiver lives in `self`: the send cannot fail.
        let _ = self.tx.send(c);
    }

    pub(crate) fn sender(&self) -> crossbeam_channel::Sender<Completion> {
        self.tx.clone()
    }
}

/// Speculations pending, their numbers and cancellations.
#[derive(Debug)]
pub(crate) struct Speculations {
    /// Queued or running, at most the store's `max_in_flight`.
    pub pending: AtomicUsize,
    /// Next speculation number.
    next: AtomicU64,
    /// (MAX_SPECULATIONS,) the number of the last cancelled speculation in each slot
    cancelled: Vec<AtomicU64>,
    /// Id vectors of finished speculations, for the next ones (no allocation per token).
    ids: Mutex<Vec<Vec<u64>>>,
}

impl Default for Speculations {
    fn default() -> Self {
        Self {
            pending: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            cancelled: (0..MAX_SPECULATIONS).map(|_| AtomicU64::new(0)).collect(),
            ids: Mutex::new(Vec::with_capacity(MAX_SPECULATIONS)),
        }
    }
}

impl Speculations {
    /// A new speculation's number and an id vector holding `ids`.
    pub fn begin(&self, ids: &[u64]) -> (u64, Vec<u64>) {
        let spec = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut buf = self
            .ids
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default();
        buf.extend_from_slice(ids);
        (spec, buf)
    }

    pub fn cancel(&self, spec: u64) {
        self.cancelled[(spec % MAX_SPECULATIONS as u64) as usize].store(spec, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self, spec: u64) -> bool {
        self.cancelled[(spec % MAX_SPECULATIONS as u64) as usize].load(Ordering::Relaxed) == spec
    }

    /// A speculation ended: its id vector goes back to the pool.
    pub fn done(&self, mut ids: Vec<u64>) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        ids.clear();
        if let Ok(mut pool) = self.ids.lock()
            && pool.len() < MAX_SPECULATIONS
        {
            pool.push(ids);
        }
    }
}

/// What every reactor and caller of one store share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub table: Arc<Table>,
    pub backend: Arc<dyn Backend>,
    pub fallback: Option<String>,
    pub cache: Option<RowCache>,
    pub metrics: Metrics,
    pub slots: Slots,
    pub max_batch_rows: usize,
    pub specs: Speculations,
}

thread_local! {
    /// Miss lists of the inline path (per caller thread; capacity kept).
    static INLINE_MISSES: RefCell<(Vec<u64>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl Shared {
    /// Errors unless `ids` fits a batch.
    pub fn check_len(&self, ids: &[u64]) -> Result<()> {
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

    /// Errors unless `ids` fits a batch, `out_len` holds its rows and every id is a row of
    /// layer `layer`.
    pub fn check(&self, layer: usize, ids: &[u64], out_len: usize) -> Result<()> {
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

    /// Whether DRAM alone holds every row: a resident backend (`mmap` too when
    /// `mmap_counts`), or every id in the cache.
    pub fn dram_serves(&self, layer: usize, ids: &[u64], mmap_counts: bool) -> bool {
        let resident = match self.backend.kind() {
            BackendKind::Memory => true,
            BackendKind::Mmap => mmap_counts,
            _ => false,
        };
        // No resident rows under a fault plan: those batches go through the fault engine.
        if resident && self.backend.resident().is_some() {
            return true;
        }
        self.cache
            .as_ref()
            .is_some_and(|c| ids.iter().all(|&r| c.contains(layer, r)))
    }

    /// The cache probe: copies the cached rows of `ids` into `out` (row `k` at `k`) and
    /// lists the others in `miss_ids` / `miss_slots`. Without a cache every row misses
    /// and `miss_slots` stays empty (the identity).
    pub fn probe(
        &self,
        layer: usize,
        ids: &[u64],
        out: &mut [u8],
        miss_ids: &mut Vec<u64>,
        miss_slots: &mut Vec<u32>,
    ) {
        miss_ids.clear();
        miss_slots.clear();
        let Some(cache) = &self.cache else {
            miss_ids.extend_from_slice(ids);
            return;
        };
        let t = Instant::now();
        let rb = self.table.row_bytes();
        for (k, (&row, dst)) in ids.iter().zip(out.chunks_exact_mut(rb)).enumerate() {
            if !cache.get(layer, row, dst) {
                miss_ids.push(row);
                miss_slots.push(k as u32);
            }
        }
        self.metrics
            .record_tier(Tier::Cache, t.elapsed().as_nanos() as u64);
    }

    /// Cache admission of rows read for misses: row `miss_ids[k]` is at slot
    /// `miss_slots[k]` of `rows` (slot `k` when `miss_slots` is empty).
    pub fn admit(&self, layer: usize, miss_ids: &[u64], miss_slots: &[u32], rows: &[u8]) {
        let Some(cache) = &self.cache else {
            return;
        };
        let rb = self.table.row_bytes();
        for (k, &row) in miss_ids.iter().enumerate() {
            let at = miss_slots.get(k).map_or(k, |&s| s as usize) * rb;
            if let Some(bytes) = rows.get(at..at + rb) {
                cache.admit(layer, row, bytes);
            }
        }
    }

    /// Serves a checked batch on the caller's thread when DRAM holds all of it (see
    /// [`Shared::dram_serves`]); `Ok(false)`: a row was not in DRAM after all (evicted
    /// meanwhile), submit the batch instead.
    pub fn read_inline(&self, layer: usize, ids: &[u64], out: &mut [u8]) -> Result<bool> {
        let t0 = Instant::now();
        INLINE_MISSES.with(|m| {
            let mut m = m.borrow_mut();
            let (miss_ids, miss_slots) = &mut *m;
            self.probe(layer, ids, out, miss_ids, miss_slots);
            if miss_ids.is_empty() {
                self.metrics
                    .record_batch(ids.len(), t0.elapsed().as_nanos() as u64, true);
                return Ok(true);
            }
            let Some(rows) = self.backend.resident() else {
                return Ok(false);
            };
            let t = Instant::now();
            let mut c = IoCounters::default();
            let r = rows.gather(layer, miss_ids, miss_slots, out, &mut c);
            self.metrics
                .record_tier(Tier::Dram, t.elapsed().as_nanos() as u64);
            self.metrics.record_io(miss_ids.len(), &c);
            if r.is_ok() {
                self.admit(layer, miss_ids, miss_slots, out);
            }
            self.metrics
                .record_batch(ids.len(), t0.elapsed().as_nanos() as u64, r.is_ok());
            r.map(|()| true)
        })
    }
}
