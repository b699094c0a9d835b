//! The one batch I/O driver for device reads. It owns everything between "rows of a layer"
//! and "bytes from an engine": the read plan of each batch, the staging slots, submission
//! order, completion handling (length check, checksum verification, scatter into the
//! caller's output) and per-read latency. Engines ([`super::engine::Engine`]: pread on a
//! pool, io_uring, the fault injector) only move bytes from a file range into a lease.
//!
//! Several batches may be active at once; their reads share one stream into the engine,
//! oldest batch first, so the device queue refills from the next batch as soon as the
//! previous one's reads complete. A read error fails its batch only; an engine failure
//! fails every active batch and the driver, which then refuses new work (reopen).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::engine::{Completion, Engine, EngineError, ReadReq};
use super::staging::Staging;
use crate::backend::{BackendOptions, IoCounters, RowReader, verify_read};
use crate::batch::{Plan, PlanParams};
use crate::error::{Error, Result, io_at};
use crate::format::Geometry;
use crate::metrics::{SharedHist, new_hist, record_ns};
use crate::table::Table;

/// Batches one driver keeps active at once (a named bound on its plan memory).
pub const MAX_ACTIVE_BATCHES: usize = 64;

/// Identifies an active batch of a driver.
pub type BatchId = u32;

/// Where the rows of each active batch go.
pub trait Outputs {
    /// The output of batch `batch`: `rows x row_bytes` bytes, row `k` at slot `k`.
    fn out(&mut self, batch: BatchId) -> &mut [u8];
}

/// A batch that has finished (all its reads done, or failed and drained).
#[derive(Debug)]
pub struct Finished {
    pub batch: BatchId,
    pub result: Result<()>,
    pub counters: IoCounters,
}

#[derive(Debug, Default)]
struct BatchIo {
    active: bool,
    layer: usize,
    plan: Plan,
    /// Next read of `plan.reads` to submit.
    next: usize,
    in_flight: usize,
    error: Option<Error>,
    counters: IoCounters,
}

impl BatchIo {
    fn done(&self) -> bool {
        self.in_flight == 0 && (self.error.is_some() || self.next == self.plan.reads.len())
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
    staging: Staging,
    /// (MAX_ACTIVE_BATCHES,) batch slots; plans keep their capacity across batches
    batches: Vec<BatchIo>,
    /// Active batch ids, oldest first.
    order: VecDeque<BatchId>,
    completions: Vec<Completion>,
    finished: Vec<Finished>,
    /// (staging depth,) submit time of the read in each slot
    started: Vec<Instant>,
    local: hdrhistogram::Histogram<u64>,
    latency: SharedHist,
    broken: Option<String>,
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
        let staging = Staging::new(options.queue_depth, slot_bytes)?;
        let engine = make_engine(&staging)?;
        let engine = match &options.faults {
            Some(plan) => Box::new(super::faulty::FaultyEngine::new(engine, plan.clone())),
            None => engine,
        };
        let depth = staging.depth();
        Ok(Self {
            table: Arc::clone(table),
            geo: table.geometry(),
            params,
            verify: options.verify,
            engine,
            staging,
            batches: (0..MAX_ACTIVE_BATCHES)
                .map(|_| BatchIo::default())
                .collect(),
            order: VecDeque::with_capacity(MAX_ACTIVE_BATCHES),
            completions: Vec::with_capacity(depth),
            finished: Vec::with_capacity(MAX_ACTIVE_BATCHES),
            started: vec![Instant::now(); depth],
            local: new_hist(),
            latency,
            broken: None,
        })
    }

    /// The engine's name (`uring`, `pread`, `faulty(uring)`).
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Whether another batch can start now.
    pub fn can_start(&self) -> bool {
        self.broken.is_none() && self.order.len() < MAX_ACTIVE_BATCHES
    }

    /// Active batches.
    pub fn active(&self) -> usize {
        self.order.len()
    }

    fn broken_error(why: &str) -> Error {
        Error::Broken {
            what: "I/O engine",
            reason: why.to_string(),
        }
    }

    /// Plans rows `ids` of layer `layer` (output slot `slots[k]`, or `k`); their reads are
    /// submitted by [`Driver::pump`]. Ids must be in range (the store checks them).
    pub fn start(&mut self, layer: usize, ids: &[u64], slots: &[u32]) -> Result<BatchId> {
        if let Some(why) = &self.broken {
            return Err(Self::broken_error(why));
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
        let b = &mut self.batches[id];
        b.plan.build(ids, slots, &self.geo, &params);
        b.active = true;
        b.layer = layer;
        b.next = 0;
        b.in_flight = 0;
        b.error = None;
        b.counters = IoCounters {
            rows_unique: b.plan.unique_rows,
            plan_ns: t0.elapsed().as_nanos() as u64,
            ..IoCounters::default()
        };
        let id = id as BatchId;
        self.order.push_back(id);
        Ok(id)
    }

    /// Submits what the staging slots allow, reaps completions (waiting for at least one
    /// when `wait` and nothing has finished yet), verifies and scatters them into `outs`,
    /// and appends finished batches to `finished`. Returns when a batch has finished, when
    /// nothing is in flight, or (without `wait`) after one pass.
    pub fn pump(&mut self, wait: bool, outs: &mut dyn Outputs, finished: &mut Vec<Finished>) {
        self.pump_inner(wait, outs);
        finished.append(&mut self.finished);
    }

    /// [`Driver::pump`] leaving finished batches in `self.finished`.
    fn pump_inner(&mut self, wait: bool, outs: &mut dyn Outputs) {
        loop {
            self.submit_ready();
            if self.engine.in_flight() > 0 {
                let min = usize::from(wait && self.finished.is_empty());
                let tc = Instant::now();
                let reaped = self.engine.reap(min, &mut self.completions);
                let wait_ns = tc.elapsed().as_nanos() as u64;
                if let Some(&oldest) = self.order.front() {
                    self.batches[oldest as usize].counters.complete_ns += wait_ns;
                }
                match reaped {
                    Ok(()) => self.handle_completions(outs),
                    Err(e) => self.break_all(e),
                }
                self.submit_ready();
            }
            self.collect_finished();
            let idle = self.engine.in_flight() == 0;
            if !wait || !self.finished.is_empty() || idle || self.order.is_empty() {
                break;
            }
        }
        self.latency.merge(&mut self.local);
    }

    fn submit_ready(&mut self) {
        if self.broken.is_some() {
            return;
        }
        'batches: for &id in &self.order {
            let b = &mut self.batches[id as usize];
            if b.error.is_some() {
                continue;
            }
            let ts = Instant::now();
            while b.next < b.plan.reads.len() {
                let r = b.plan.reads[b.next];
                // A read longer than its slot is refused here, before submission.
                let lease = match self.staging.lease(r.len as usize) {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        b.counters.submit_ns += ts.elapsed().as_nanos() as u64;
                        break 'batches;
                    }
                    Err(e) => {
                        debug_assert!(false, "planner built a read over the slot size: {e}");
                        b.error = Some(e);
                        break;
                    }
                };
                let slot = lease.slot() as usize;
                let req = ReadReq {
                    file: b.layer as u32,
                    offset: r.offset,
                    tag: (u64::from(id) << 32) | b.next as u64,
                };
                if let Err((_lease, e)) = self.engine.submit(req, lease) {
                    let why = e.to_string();
                    self.broken = Some(why);
                    return;
                }
                self.started[slot] = Instant::now();
                b.next += 1;
                b.in_flight += 1;
                b.counters.reads += 1;
                b.counters.device_bytes += r.len;
            }
            b.counters.submit_ns += ts.elapsed().as_nanos() as u64;
        }
    }

    fn handle_completions(&mut self, outs: &mut dyn Outputs) {
        let mut completions = std::mem::take(&mut self.completions);
        for c in completions.drain(..) {
            let id = (c.tag >> 32) as usize;
            let ri = (c.tag & 0xFFFF_FFFF) as usize;
            let tsc = Instant::now();
            let slot = c.lease.slot() as usize;
            record_ns(
                &mut self.local,
                tsc.duration_since(self.started[slot]).as_nanos() as u64,
            );
            let Some(b) = self
                .batches
                .get_mut(id)
                .filter(|b| b.active && b.in_flight > 0)
            else {
                debug_assert!(false, "completion for an inactive batch {id}");
                continue;
            };
            b.in_flight -= 1;
            if b.error.is_some() {
                continue;
            }
            let Some(&r) = b.plan.reads.get(ri) else {
                debug_assert!(false, "completion for read {ri} of {}", b.plan.reads.len());
                b.error = Some(Error::Invalid {
                    what: "completion",
                    reason: format!("read {ri} is not in the batch's plan"),
                });
                continue;
            };
            let path = match self.table.layer(b.layer) {
                Ok(l) => l.path.as_path(),
                Err(e) => {
                    b.error = Some(e);
                    continue;
                }
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
                    let verified = if self.verify {
                        verify_read(&self.table, b.layer, r.offset, bytes)
                    } else {
                        Ok(())
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

    fn break_all(&mut self, e: EngineError) {
        let why = e.to_string();
        tracing::error!(target: "engram_store", engine = self.engine.name(), "I/O engine failed: {why}");
        for &id in &self.order {
            let b = &mut self.batches[id as usize];
            b.in_flight = 0;
            b.error.get_or_insert_with(|| Self::broken_error(&why));
        }
        self.broken = Some(why);
    }

    fn collect_finished(&mut self) {
        let mut k = 0;
        while k < self.order.len() {
            let id = self.order[k];
            let b = &mut self.batches[id as usize];
            if b.done() {
                b.active = false;
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

impl RowReader for Driver {
    fn read_rows(
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
                reason: "other batches are active on this reader".into(),
            });
        }
        let id = self.start(layer, ids, slots)?;
        let mut outs = OneOut(out);
        loop {
            self.pump_inner(true, &mut outs);
            if let Some(f) = self.finished.pop() {
                debug_assert_eq!(f.batch, id);
                add_counters(counters, &f.counters);
                return f.result;
            }
            if let Some(why) = &self.broken {
                return Err(Self::broken_error(why));
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
    into.plan_ns += from.plan_ns;
    into.submit_ns += from.submit_ns;
    into.complete_ns += from.complete_ns;
    into.scatter_ns += from.scatter_ns;
}
