//! The one batch I/O driver for device reads. It owns everything between "rows of a layer"
//! and "bytes from an engine": the read plan of each batch, the staging slots, submission
//! order, completion handling (length check, checksum verification, scatter into the
//! caller's output) and per-read latency. Engines ([`super::engine::Engine`]: pread on a
//! pool, io_uring, an external engine, resident memory, the fault injector) only move
//! bytes from a file range into a lease. Rows resident in this process (the memory and
//! mmap tiers) take the gather fast path instead: copied straight into the output, no
//! staging copy, through the same batches, counters and completion order.
//!
//! Several batches may be active at once; their reads share one stream into the engine,
//! oldest batch first, so the device queue refills from the next batch as soon as the
//! previous one's reads complete. At most the queue depth of reads is in the engine; the
//! staging has as many slots again, so after each reap the queue is refilled first, while
//! the reads just reaped still hold their slots, and they are verified and scattered after.
//! A read error fails its batch only; an engine failure (a failed submit or reap) fails
//! every active batch with [`Error::Engine`] and the driver, which then refuses new work:
//! its owner (a reactor) drops it and builds another.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{Completion, Engine, EngineError, ReadReq};
use super::resident::{ResidentEngine, ResidentRows};
use super::staging::Staging;
use crate::backend::{BackendOptions, IoCounters, verify_read};
use crate::error::{Error, Result, io_at};
use crate::format::Geometry;
use crate::metrics::SharedHist;
use crate::planner::{Plan, PlanParams, Source};
use crate::table::Table;

/// Batches one driver keeps active at once (a named bound on its plan memory).
pub const MAX_ACTIVE_BATCHES: usize = 64;

/// Identifies an active batch of a driver.
pub type BatchId = u32;

// A read's tag: generation (31 bits) | speculative (1) | batch id (8) | read index (24).
// The generation tells a completion of a batch's read from one of an earlier batch in the
// same slot (a hedged read's slower copy, or a read of a failed batch): those are dropped.
const RI_BITS: u32 = 24;
const ID_BITS: u32 = 8;
const _: () = assert!(MAX_ACTIVE_BATCHES <= 1 << ID_BITS);
/// Most reads one batch may plan (the read index field of a tag).
pub const MAX_READS_PER_BATCH: usize = 1 << RI_BITS;

fn tag(generation: u32, speculative: bool, id: BatchId, read: usize) -> u64 {
    debug_assert!(read < MAX_READS_PER_BATCH && (id as usize) < MAX_ACTIVE_BATCHES);
    (u64::from(generation & 0x7FFF_FFFF) << (RI_BITS + ID_BITS + 1))
        | (u64::from(speculative) << (RI_BITS + ID_BITS))
        | (u64::from(id) << RI_BITS)
        | read as u64
}

/// (generation, speculative, batch id, read index) of a tag.
fn untag(t: u64) -> (u32, bool, usize, usize) {
    (
        (t >> (RI_BITS + ID_BITS + 1)) as u32,
        (t >> (RI_BITS + ID_BITS)) & 1 == 1,
        ((t >> RI_BITS) & ((1 << ID_BITS) - 1)) as usize,
        (t & ((1 << RI_BITS) - 1)) as usize,
    )
}

// Read states within a batch.
const PENDING: u8 = 0;
const IN_FLIGHT: u8 = 1;
const HEDGED: u8 = 2;
const DONE: u8 = 3;

/// Whose reads go first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Priority {
    /// Rows a caller is waiting for: submitted first, oldest batch first.
    #[default]
    Demand,
    /// Rows that may be needed (speculative prefetch): submitted only when no demand read
    /// is waiting for a slot, and never holding more than half the slots, so a demand read
    /// always finds one soon.
    Speculative,
}

/// Where the rows of each active batch go.
pub trait Outputs {
    /// The output of batch `batch`: `rows x row_bytes` bytes, row `k` at slot `k`.
    fn out(&mut self, batch: BatchId) -> &mut [u8];
}

/// A batch that has finished (all its reads done, or failed and drained).
#[derive(Debug)]
pub struct Finished {
    /// The batch's id.
    pub batch: BatchId,
    /// `Ok` when every row arrived; the first error otherwise.
    pub result: Result<()>,
    /// The batch's I/O accounting.
    pub counters: IoCounters,
}

#[derive(Debug, Default)]
struct BatchIo {
    active: bool,
    generation: u32,
    priority: Priority,
    layer: usize,
    plan: Plan,
    /// Next read of `plan.reads` to submit.
    next: usize,
    /// Reads whose bytes have arrived (each read counts once, hedged or not).
    done_reads: usize,
    /// (reads,) PENDING / IN_FLIGHT / HEDGED / DONE, and when each was first submitted
    state: Vec<u8>,
    submitted_at: Vec<Instant>,
    error: Option<Error>,
    counters: IoCounters,
    /// Resident tiers: the rows still to gather (empty slots: the identity).
    gather: Option<(Vec<u64>, Vec<u32>)>,
    /// Capacity kept across batches for `gather`.
    gather_spare: (Vec<u64>, Vec<u32>),
}

impl BatchIo {
    /// A failed batch is done at once: the copies of its reads still in flight carry its
    /// generation and are dropped when they complete.
    fn done(&self) -> bool {
        self.error.is_some() || (self.gather.is_none() && self.done_reads == self.plan.reads.len())
    }
}

/// The driver of one reader (one thread's engine and staging).
#[derive(Debug)]
pub struct Driver {
    table: Arc<Table>,
    geo: Geometry,
    /// (n_layers,) read shape per layer
    params: Vec<PlanParams>,
    verify: bool,
    /// Dropped before `staging` (field order): engines reap or leak in-flight leases.
    engine: Box<dyn Engine>,
    /// Rows resident in this process: batches gather from here, not through `engine`.
    resident: Option<Arc<dyn ResidentRows>>,
    staging: Staging,
    /// Reads in the engine at most (the queue depth): the staging slots beyond it hold
    /// reads reaped and not yet verified and scattered, so the device queue is refilled
    /// before that work, not after it.
    max_in_flight: usize,
    /// (MAX_ACTIVE_BATCHES,) batch slots; plans keep their capacity across batches
    batches: Vec<BatchIo>,
    /// Active batch ids, oldest first.
    order: VecDeque<BatchId>,
    completions: Vec<Completion>,
    finished: Vec<Finished>,
    /// (staging depth,) submit time of the read in each slot
    started: Vec<Instant>,
    /// Device-read latencies (ns) since the last round, recorded into `latency` at its end.
    local: Vec<u64>,
    latency: SharedHist,
    broken: Option<String>,
    /// Speculative reads in flight, and the most allowed.
    spec_in_flight: usize,
    spec_cap: usize,
    /// N-gram records read instead of several rows' pages (engine file `n_layers`).
    records: Option<Arc<crate::records::Records>>,
    /// Re-issue a demand read still in flight after this long (hedged reads; off: None).
    hedge_after: Option<Duration>,
    next_generation: u32,
}

/// Staging slots beside the queue depth's: as many again, so the reads reaped in one round
/// can stay in their slots while the queue is refilled, unless that would pass
/// [`super::staging::MAX_STAGING_BYTES`] (then none: the queue refills after verification).
/// `ENGRAM_STAGING_SPARE=0` turns them off, for A/B runs (engram-store/BENCHMARKS.md).
fn spare_slots(depth: usize, slot_bytes: usize) -> usize {
    let fits = depth
        .checked_mul(2)
        .and_then(|d| d.checked_mul(slot_bytes))
        .is_some_and(|b| b <= super::staging::MAX_STAGING_BYTES);
    let off = match std::env::var("ENGRAM_STAGING_SPARE").as_deref() {
        Ok("0") => true,
        Ok("1") | Err(_) => false,
        Ok(other) => {
            tracing::warn!(target: "engram_store", "ENGRAM_STAGING_SPARE={other:?} is not 0 or 1: spare slots on");
            false
        }
    };
    if fits && !off { depth } else { 0 }
}

/// The read shape of every layer of `table` under `options`, and the staging slot size
/// that holds the longest read.
pub(crate) fn read_shapes(
    table: &Table,
    options: &BackendOptions,
) -> Result<(Vec<PlanParams>, usize)> {
    let mut params = Vec::with_capacity(table.n_layers());
    let mut slot = 0u64;
    for li in 0..table.n_layers() {
        let p = options.plan_params(table, li)?;
        slot = slot.max(p.max_read_bytes);
        params.push(p);
    }
    if let Some(r) = &options.records {
        // Records reads coalesce units up to the same cap, and are at least one unit.
        slot = slot.max(u64::from(r.shape.unit_bytes));
    }
    let io = crate::buffer::IO_ALIGN as u64;
    let slot = usize::try_from(slot.div_ceil(io) * io).map_err(|_| Error::Invalid {
        what: "read size",
        reason: format!("{slot} bytes does not fit the address space"),
    })?;
    Ok((params, slot))
}

impl Driver {
    /// A driver for `table` whose engine `make_engine` builds over the staging slots
    /// (io_uring registers them).
    pub fn new(
        table: &Arc<Table>,
        options: &BackendOptions,
        latency: SharedHist,
        make_engine: impl FnOnce(&Staging) -> Result<Box<dyn Engine>>,
    ) -> Result<Self> {
        let (params, slot_bytes) = read_shapes(table, options)?;
        let depth = options.queue_depth;
        let staging = Staging::new(depth + spare_slots(depth, slot_bytes), slot_bytes)?;
        let engine = make_engine(&staging)?;
        let engine = match &options.faults {
            Some(plan) => Box::new(super::faulty::FaultyEngine::new(engine, plan.clone())),
            None => engine,
        };
        let slots = staging.depth();
        Ok(Self {
            table: Arc::clone(table),
            geo: table.geometry(),
            params,
            verify: options.verify,
            engine,
            resident: None,
            staging,
            max_in_flight: depth,
            batches: (0..MAX_ACTIVE_BATCHES)
                .map(|_| BatchIo::default())
                .collect(),
            order: VecDeque::with_capacity(MAX_ACTIVE_BATCHES),
            completions: Vec::with_capacity(slots),
            finished: Vec::with_capacity(MAX_ACTIVE_BATCHES),
            started: vec![Instant::now(); slots],
            local: Vec::with_capacity(slots),
            latency,
            broken: None,
            spec_in_flight: 0,
            spec_cap: (depth / 2).max(1),
            records: options.records.clone(),
            hedge_after: (options.hedge_after_us > 0)
                .then(|| Duration::from_micros(options.hedge_after_us)),
            next_generation: 0,
        })
    }

    /// A driver over rows resident in this process (`rows`): batches gather straight into
    /// their outputs. With a fault plan in `options`, reads go through a
    /// [`ResidentEngine`] wrapped by the fault injector instead, so injected faults reach
    /// the resident tiers too.
    pub fn resident(
        table: &Arc<Table>,
        options: &BackendOptions,
        latency: SharedHist,
        rows: Arc<dyn ResidentRows>,
    ) -> Result<Self> {
        let mut o = options.clone();
        // Resident tiers hold the layer files only, never the records file.
        o.records = None;
        let faulted = o.faults.is_some();
        if !faulted {
            // Staging is never read into on the gather path: one slot.
            o.queue_depth = 1;
        }
        let engine_rows = Arc::clone(&rows);
        let mut driver = Self::new(table, &o, latency, move |_| {
            Ok(Box::new(ResidentEngine::new(engine_rows)))
        })?;
        if !faulted {
            driver.resident = Some(rows);
        }
        Ok(driver)
    }

    /// The engine's name (`uring`, `pread`, `memory`, an external engine's name).
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Whether another batch can start now.
    pub fn can_start(&self) -> bool {
        self.broken.is_none() && self.order.len() < MAX_ACTIVE_BATCHES
    }

    /// Why the engine failed, once it has: the driver takes no more batches.
    pub fn failure(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Active batches.
    pub fn active(&self) -> usize {
        self.order.len()
    }

    /// Reads in the engine, those of batches already finished (a failed batch, the
    /// slower copy of a hedged read) included: the driver is at rest only at zero.
    pub fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }

    /// Staging slots not leased (all of them when the driver is at rest).
    pub fn free_staging(&self) -> usize {
        self.staging.free_slots()
    }

    /// Staging slots in all.
    pub fn staging_depth(&self) -> usize {
        self.staging.depth()
    }

    fn broken_error(&self, why: &str) -> Error {
        Error::Engine {
            engine: self.engine.name(),
            cause: why.to_string(),
        }
    }

    /// Plans rows `ids` of layer `layer` (output slot `slots[k]`, or `k`); their reads are
    /// submitted by [`Driver::pump`]. Ids must be in range (the store checks them).
    pub fn start(
        &mut self,
        layer: usize,
        ids: &[u64],
        slots: &[u32],
        priority: Priority,
    ) -> Result<BatchId> {
        if let Some(why) = &self.broken {
            return Err(self.broken_error(why));
        }
        let params = *self.params.get(layer).ok_or(Error::LayerOutOfRange {
            layer,
            n_layers: self.params.len(),
        })?;
        let Some(id) = self.batches.iter().position(|b| !b.active) else {
            return Err(Error::Limit {
                what: "active batches per reader",
                name: "MAX_ACTIVE_BATCHES",
                limit: MAX_ACTIVE_BATCHES,
                found: MAX_ACTIVE_BATCHES + 1,
            });
        };
        let t0 = Instant::now();
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let b = &mut self.batches[id];
        if self.resident.is_some() {
            let (mut rows, mut out_slots) = std::mem::take(&mut b.gather_spare);
            rows.clear();
            rows.extend_from_slice(ids);
            out_slots.clear();
            out_slots.extend_from_slice(slots);
            b.gather = Some((rows, out_slots));
            b.plan.reads.clear();
        }
        let records = self.records.as_deref().and_then(|r| {
            let layer_records = r.layers.get(layer)?.as_ref()?;
            Some(crate::planner::RecordPlan {
                records: layer_records,
                shape: r.shape,
                max_read_bytes: params.max_read_bytes,
            })
        });
        if b.gather.is_none() {
            b.plan
                .build(ids, slots, &self.geo, &params, records.as_ref());
        }
        if b.plan.reads.len() > MAX_READS_PER_BATCH {
            return Err(Error::Limit {
                what: "reads in one batch",
                name: "MAX_READS_PER_BATCH",
                limit: MAX_READS_PER_BATCH,
                found: b.plan.reads.len(),
            });
        }
        let n = b.plan.reads.len();
        b.state.clear();
        b.state.resize(n, PENDING);
        b.submitted_at.clear();
        b.submitted_at.resize(n, t0);
        b.done_reads = 0;
        b.generation = generation;
        b.active = true;
        b.priority = priority;
        b.layer = layer;
        b.next = 0;
        b.error = None;
        b.counters = IoCounters {
            rows_unique: b.plan.unique_rows,
            record_rows: b.plan.record_rows,
            plan_ns: t0.elapsed().as_nanos() as u64,
            ..IoCounters::default()
        };
        let id = id as BatchId;
        self.order.push_back(id);
        Ok(id)
    }

    /// Stops batch `id`: reads not yet submitted never will be, reads in flight complete
    /// and are discarded; it finishes with [`Error::Cancelled`]. A no-op for a batch that
    /// is not active.
    pub fn cancel(&mut self, id: BatchId) {
        if let Some(b) = self.batches.get_mut(id as usize).filter(|b| b.active) {
            b.error.get_or_insert(Error::Cancelled);
        }
    }

    /// One round: submits what the staging slots allow (see [`Priority`]), reaps
    /// completions (blocking for at least one when `wait` and reads are in flight),
    /// verifies and scatters them into `outs`, submits again into the freed slots, and
    /// appends the batches that finished to `finished`.
    pub fn pump(&mut self, wait: bool, outs: &mut dyn Outputs, finished: &mut Vec<Finished>) {
        self.round(wait, outs);
        finished.append(&mut self.finished);
    }

    /// [`Driver::pump`] leaving finished batches in `self.finished`.
    fn round(&mut self, wait: bool, outs: &mut dyn Outputs) {
        self.gather_resident(outs);
        self.submit_ready();
        let timeout = self.hedge();
        if self.engine.in_flight() > 0 {
            let tc = Instant::now();
            let reaped = self
                .engine
                .reap(usize::from(wait), timeout, &mut self.completions);
            let reaped_at = Instant::now();
            let wait_ns = reaped_at.duration_since(tc).as_nanos() as u64;
            if let Some(&oldest) = self.order.front() {
                self.batches[oldest as usize].counters.complete_ns += wait_ns;
            }
            match reaped {
                Ok(()) => {
                    // Refill the device queue (into spare slots) before verifying and
                    // scattering what was reaped.
                    self.submit_ready();
                    self.handle_completions(outs, reaped_at);
                }
                Err(e) => self.break_all(e),
            }
            self.submit_ready();
        }
        self.collect_finished();
        self.latency.record_all(&self.local);
        self.local.clear();
    }

    /// Resident tiers: copies the rows of every batch still to gather into its output.
    fn gather_resident(&mut self, outs: &mut dyn Outputs) {
        let Some(rows) = &self.resident else {
            return;
        };
        for &id in &self.order {
            let b = &mut self.batches[id as usize];
            let Some((ids, slots)) = b.gather.take() else {
                continue;
            };
            if b.error.is_none() {
                let t = Instant::now();
                let r = rows.gather(b.layer, &ids, &slots, outs.out(id), &mut b.counters);
                b.counters.scatter_ns += t.elapsed().as_nanos() as u64;
                if let Err(e) = r {
                    b.error = Some(e);
                }
            }
            b.gather_spare = (ids, slots);
        }
    }

    /// Submits reads while fewer than the queue depth are in flight: every demand batch
    /// first, oldest first; then, only if no demand read is left waiting, speculative
    /// batches up to their cap. The pass goes to the device at once ([`Engine::flush`]).
    fn submit_ready(&mut self) {
        if self.broken.is_some() || self.engine.in_flight() >= self.max_in_flight {
            return;
        }
        if self.submit_class(Priority::Demand) {
            self.submit_class(Priority::Speculative);
        }
        if let Err(e) = self.engine.flush() {
            self.break_all(e);
        }
    }

    /// Submits the reads of the active batches of one priority, oldest first; returns
    /// whether every one of their reads is submitted (false when slots or the cap ran out).
    fn submit_class(&mut self, class: Priority) -> bool {
        for &id in &self.order {
            let b = &mut self.batches[id as usize];
            if b.priority != class || b.error.is_some() {
                continue;
            }
            let ts = Instant::now();
            while b.next < b.plan.reads.len() {
                // The queue depth is reached, or the speculative reads' share of it.
                if self.engine.in_flight() >= self.max_in_flight
                    || (class == Priority::Speculative && self.spec_in_flight >= self.spec_cap)
                {
                    b.counters.submit_ns += ts.elapsed().as_nanos() as u64;
                    return false;
                }
                let r = b.plan.reads[b.next];
                // A read longer than its slot is refused here, before submission.
                let lease = match self.staging.lease(r.len as usize) {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        b.counters.submit_ns += ts.elapsed().as_nanos() as u64;
                        return false;
                    }
                    Err(e) => {
                        debug_assert!(false, "planner built a read over the slot size: {e}");
                        b.error = Some(e);
                        break;
                    }
                };
                let slot = lease.slot() as usize;
                let file = match r.source {
                    Source::Rows => b.layer,
                    Source::Records => self.table.n_layers(),
                };
                let req = ReadReq {
                    file: file as u32,
                    offset: r.offset,
                    tag: tag(b.generation, class == Priority::Speculative, id, b.next),
                };
                if let Err((_lease, e)) = self.engine.submit(req, lease) {
                    self.break_all(e);
                    return false;
                }
                let now = Instant::now();
                self.started[slot] = now;
                b.state[b.next] = IN_FLIGHT;
                b.submitted_at[b.next] = now;
                b.next += 1;
                b.counters.reads += 1;
                b.counters.device_bytes += r.len;
                b.counters.record_reads += u64::from(r.source == Source::Records);
                if class == Priority::Speculative {
                    self.spec_in_flight += 1;
                }
            }
            b.counters.submit_ns += ts.elapsed().as_nanos() as u64;
        }
        true
    }

    /// Hedged reads: a demand read in flight for longer than `hedge_after` is issued once
    /// more into a free slot; whichever copy completes first serves the batch. Returns how
    /// long the next reap may wait before another read becomes overdue.
    fn hedge(&mut self) -> Option<Duration> {
        let after = self.hedge_after?;
        if self.broken.is_some() {
            return None;
        }
        let now = Instant::now();
        let mut next_due: Option<Duration> = None;
        for &id in &self.order {
            let b = &mut self.batches[id as usize];
            if b.priority != Priority::Demand || b.error.is_some() {
                continue;
            }
            for ri in 0..b.next {
                if b.state[ri] != IN_FLIGHT {
                    continue;
                }
                let age = now.saturating_duration_since(b.submitted_at[ri]);
                if age < after {
                    let left = after - age;
                    next_due = Some(next_due.map_or(left, |d| d.min(left)));
                    continue;
                }
                let r = b.plan.reads[ri];
                if self.engine.in_flight() >= self.max_in_flight {
                    // Look again after the next completion.
                    return next_due;
                }
                let Ok(Some(lease)) = self.staging.lease(r.len as usize) else {
                    return next_due;
                };
                let file = match r.source {
                    Source::Rows => b.layer,
                    Source::Records => self.table.n_layers(),
                };
                let slot = lease.slot() as usize;
                let req = ReadReq {
                    file: file as u32,
                    offset: r.offset,
                    tag: tag(b.generation, false, id, ri),
                };
                if let Err((_lease, e)) = self.engine.submit(req, lease) {
                    self.break_all(e);
                    return None;
                }
                self.started[slot] = now;
                b.state[ri] = HEDGED;
                b.counters.reads += 1;
                b.counters.hedged_reads += 1;
                b.counters.device_bytes += r.len;
            }
        }
        next_due
    }

    /// Verifies and scatters the reads reaped at `reaped_at` (each read's latency ends
    /// there: the refill and the verification of the reads before it are not the device's).
    fn handle_completions(&mut self, outs: &mut dyn Outputs, reaped_at: Instant) {
        let mut completions = std::mem::take(&mut self.completions);
        for c in completions.drain(..) {
            let (generation, speculative, id, ri) = untag(c.tag);
            if speculative {
                self.spec_in_flight = self.spec_in_flight.saturating_sub(1);
            }
            let tsc = Instant::now();
            let slot = c.lease.slot() as usize;
            self.local.push(
                reaped_at
                    .saturating_duration_since(self.started[slot])
                    .as_nanos() as u64,
            );
            // A copy of a read of a batch that has finished (or of an earlier batch in
            // this slot), or the slower copy of a hedged read: nothing to do.
            let Some(b) = self
                .batches
                .get_mut(id)
                .filter(|b| b.active && b.generation & 0x7FFF_FFFF == generation)
            else {
                continue;
            };
            if b.error.is_some() || b.state.get(ri).is_none_or(|&st| st == DONE) {
                continue;
            }
            b.state[ri] = DONE;
            b.done_reads += 1;
            let Some(&r) = b.plan.reads.get(ri) else {
                debug_assert!(false, "completion for read {ri} of {}", b.plan.reads.len());
                b.error = Some(Error::Invalid {
                    what: "completion",
                    reason: format!("read {ri} is not in the batch's plan"),
                });
                continue;
            };
            let path = match (r.source, &self.records) {
                (Source::Records, Some(rec)) => rec.path.as_path(),
                _ => match self.table.layer(b.layer) {
                    Ok(l) => l.path.as_path(),
                    Err(e) => {
                        b.error = Some(e);
                        continue;
                    }
                },
            };
            let outcome = match c.result {
                Err(e) => Err(io_at("read", path, r.offset, e)),
                Ok(n) if n as u64 != r.len => Err(io_at(
                    "read",
                    path,
                    r.offset,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("short read: {n} of {} bytes", r.len),
                    ),
                )),
                Ok(_) => {
                    let bytes = c.lease.bytes();
                    let verified = match (r.source, &self.records) {
                        // Records are always read in whole, checksummed units.
                        (Source::Records, Some(rec)) => rec.verify_read(b.layer, r.offset, bytes),
                        (Source::Records, None) => Err(Error::Invalid {
                            what: "read plan",
                            reason: "a records read without records".into(),
                        }),
                        (Source::Rows, _) if self.verify => {
                            verify_read(&self.table, b.layer, r.offset, bytes)
                        }
                        (Source::Rows, _) => Ok(()),
                    };
                    verified.and_then(|()| {
                        b.plan.scatter(
                            &r,
                            bytes,
                            &self.geo,
                            self.params[b.layer].data_offset,
                            outs.out(id as BatchId),
                        )
                    })
                }
            };
            if let Err(e) = outcome {
                b.error = Some(e);
            }
            b.counters.scatter_ns += tsc.elapsed().as_nanos() as u64;
        }
        self.completions = completions;
    }

    /// The failure transition of the driver: every active batch fails with
    /// [`Error::Engine`], the driver takes no more (its owner rebuilds the engine).
    fn break_all(&mut self, e: EngineError) {
        let why = e.to_string();
        tracing::error!(target: "engram_store", engine = self.engine.name(), "I/O engine failed: {why}");
        let engine = self.engine.name();
        for &id in &self.order {
            let b = &mut self.batches[id as usize];
            b.error.get_or_insert_with(|| Error::Engine {
                engine,
                cause: why.clone(),
            });
        }
        self.spec_in_flight = 0;
        self.broken = Some(why);
    }

    fn collect_finished(&mut self) {
        let mut k = 0;
        while k < self.order.len() {
            let id = self.order[k];
            let b = &mut self.batches[id as usize];
            if b.done() {
                b.active = false;
                if let Some(g) = b.gather.take() {
                    b.gather_spare = g;
                }
                let result = match b.error.take() {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                self.finished.push(Finished {
                    batch: id,
                    result,
                    counters: b.counters,
                });
                let _ = self.order.remove(k);
            } else {
                k += 1;
            }
        }
    }
}

/// One output buffer for the only active batch.
struct OneOut<'a>(&'a mut [u8]);

impl Outputs for OneOut<'_> {
    fn out(&mut self, _batch: BatchId) -> &mut [u8] {
        self.0
    }
}

impl Driver {
    /// Reads rows `ids` of layer `layer` into `out` (row `k` at slot `slots[k]`, or `k`)
    /// and waits for them, on this thread, with no other batch active: the read that
    /// proves a backend at open, and cache seeding.
    pub fn read_sync(
        &mut self,
        layer: usize,
        ids: &[u64],
        slots: &[u32],
        out: &mut [u8],
        counters: &mut IoCounters,
    ) -> Result<()> {
        if !self.order.is_empty() {
            return Err(Error::Invalid {
                what: "synchronous read",
                reason: "other batches are active on this driver".into(),
            });
        }
        let id = self.start(layer, ids, slots, Priority::Demand)?;
        let mut outs = OneOut(out);
        loop {
            self.round(true, &mut outs);
            if let Some(f) = self.finished.pop() {
                debug_assert_eq!(f.batch, id);
                add_counters(counters, &f.counters);
                return f.result;
            }
            if self.engine.in_flight() == 0 {
                // Nothing in flight and nothing finished: no slot could be leased.
                debug_assert!(false, "batch stalled with no reads in flight");
                self.batches[id as usize].error = Some(Error::Invalid {
                    what: "read",
                    reason: format!(
                        "batch stalled: {} staging slots free",
                        self.staging.free_slots()
                    ),
                });
                self.collect_finished();
            }
        }
    }
}

/// `into += from`, field by field.
pub(crate) fn add_counters(into: &mut IoCounters, from: &IoCounters) {
    into.rows_unique += from.rows_unique;
    into.reads += from.reads;
    into.device_bytes += from.device_bytes;
    into.record_reads += from.record_reads;
    into.hedged_reads += from.hedged_reads;
    into.record_rows += from.record_rows;
    into.plan_ns += from.plan_ns;
    into.submit_ns += from.submit_ns;
    into.complete_ns += from.complete_ns;
    into.scatter_ns += from.scatter_ns;
}
