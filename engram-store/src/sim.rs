//! A deterministic simulation of the request pipeline (in the manner of TigerBeetle's
//! VOPR): one reactor, driven on one thread, over a fault-injecting engine that wraps the
//! memory tier. An operation stream (bytes from a fuzzer, or a seeded generator) submits
//! fetches (into a completion slot, as tickets and lookups do, or into a completion queue,
//! as the service's slot requests do), speculations, cancellations and seeding reads and
//! pumps the reactor; every
//! engine the backend builds draws its own faults from the seed: failed reads, short
//! reads, flipped bytes, delayed and reordered completions, hedged reads, and a failed
//! submit or reap (an engine break, after which the reactor rebuilds the engine).
//!
//! Invariants checked as it runs ([`run`] returns the first violation):
//! - every row a fetch or a seeding read returns equals the memory tier's bytes; a
//!   failure is a typed error (engine, located I/O, checksum, cancelled);
//! - every request completes within [`MAX_PUMPS`] pumps of the reactor;
//! - at quiescence every staging slot is free and every completion slot is back;
//! - counters add up: batches = fetches completed, speculations ended = accepted,
//!   engine rebuilds = engine failures (every rebuild here succeeds).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::memory::MemoryBackend;
use crate::backend::{Backend, BackendKind, BackendOptions, IoCounters};
use crate::cache::RowCache;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, SharedHist};
use crate::pipeline::reactor::Reactor;
use crate::pipeline::{Completion, Completions, Request, Shared, Slots, Speculations};
use crate::reads::{Driver, Fault, FaultPlan};
use crate::table::Table;
use engram_kernels::rng::SplitMix64;

/// A request not completed within this many pumps of the reactor is a wedge.
pub const MAX_PUMPS: u32 = 256;
/// Operations one run executes at most (a fuzzer's input is cut there).
pub const MAX_OPS: usize = 4096;
/// Completion slots (requests in flight) of the simulated store.
const SLOTS: usize = 8;
/// Most rows per simulated request.
const MAX_ROWS: u64 = 48;

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Fetches completed with their rows.
    pub fetched: u64,
    /// Fetches completed with a typed error.
    pub failed: u64,
    /// Speculations accepted (all ended).
    pub speculated: u64,
    /// Seeding reads done (rows checked).
    pub seeded: u64,
    /// Engines that broke (and were rebuilt).
    pub engine_failures: u64,
    /// Reactor pumps.
    pub pumps: u64,
}

/// The memory tier behind engines that each draw their own faults.
#[derive(Debug)]
struct SimBackend {
    table: Arc<Table>,
    memory: MemoryBackend,
    options: BackendOptions,
    rng: Mutex<SplitMix64>,
}

impl SimBackend {
    /// The fault plan of the next engine: read faults, and (often) one engine break.
    fn next_plan(&self) -> FaultPlan {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let p = |rng: &mut SplitMix64, max: f64| rng.next_f64() * max;
        let mut plan = FaultPlan {
            seed: rng.next_u64(),
            eio: p(&mut rng, 0.05),
            short: p(&mut rng, 0.05),
            corrupt: p(&mut rng, 0.05),
            delay: p(&mut rng, 0.5),
            reorder: rng.below(2) == 0,
            at: Vec::new(),
        };
        match rng.below(3) {
            0 => plan.at.push((rng.below(40), Fault::Submit)),
            1 => plan.at.push((rng.below(40), Fault::Reap)),
            _ => {}
        }
        plan
    }
}

impl Backend for SimBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Memory
    }

    fn driver(&self, _rebuilt: bool) -> Result<Driver> {
        let options = BackendOptions {
            faults: Some(self.next_plan()),
            ..self.options.clone()
        };
        Driver::resident(
            &self.table,
            &options,
            SharedHist::default(),
            self.memory.resident_rows(),
        )
    }
}

/// A request the simulation waits for.
#[derive(Debug)]
struct Waiting {
    /// The completion slot (a fetch), or `None`: a slot request completed into the
    /// queue with tag `tag`.
    slot: Option<usize>,
    tag: u64,
    layer: usize,
    ids: Vec<u64>,
    submitted_at: u64,
}

/// The simulated store: one reactor, its shared state, what is in flight.
struct Sim {
    shared: Arc<Shared>,
    reactor: Reactor,
    reference: MemoryBackend,
    waiting: VecDeque<Waiting>,
    specs: Vec<u64>,
    report: SimReport,
    seeder: Option<Driver>,
    /// Where slot requests complete, and completions taken that no check has claimed yet.
    done: Completions,
    arrived: Vec<Completion>,
    next_tag: u64,
}

/// Runs the operation stream `ops` (cut at [`MAX_OPS`]) with faults drawn from `seed`
/// against `table`; `Err` names the first invariant violated.
pub fn run(table: &Arc<Table>, seed: u64, ops: &[u8]) -> std::result::Result<SimReport, String> {
    let mut sim = Sim::new(table, seed).map_err(|e| format!("setup: {e}"))?;
    let mut bytes = ops.iter().take(MAX_OPS).copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        sim.step(op, arg)?;
    }
    sim.quiesce()?;
    sim.check_counters()?;
    Ok(sim.report)
}

impl Sim {
    fn new(table: &Arc<Table>, seed: u64) -> Result<Self> {
        let mut rng = SplitMix64(seed);
        let options = BackendOptions {
            queue_depth: 1 + rng.below(8) as usize,
            coalesce_gap_bytes: if rng.below(2) == 0 { 0 } else { 4096 },
            hedge_after_us: if rng.below(4) == 0 { 1 } else { 0 },
            ..BackendOptions::default()
        };
        let memory = MemoryBackend::load_with(table, &options)?;
        let reference = MemoryBackend::load_with(table, &options)?;
        let backend = Arc::new(SimBackend {
            table: Arc::clone(table),
            memory,
            options,
            rng: Mutex::new(SplitMix64(rng.next_u64())),
        });
        let cache_rows = 1 + rng.below(64);
        let cache = RowCache::for_table(table, cache_rows * table.row_bytes() as u64, false)?;
        let shared = Arc::new(Shared {
            table: Arc::clone(table),
            backend: backend.clone(),
            fallback: None,
            cache,
            metrics: Metrics::default(),
            slots: Slots::new(SLOTS, MAX_ROWS as usize, Duration::ZERO),
            max_batch_rows: MAX_ROWS as usize,
            specs: Speculations::default(),
        });
        let reactor = Reactor::new(Arc::clone(&shared), backend.driver(false)?);
        let seeder = Some(backend.driver(false)?);
        Ok(Self {
            shared,
            reactor,
            reference,
            waiting: VecDeque::new(),
            specs: Vec::new(),
            report: SimReport::default(),
            seeder,
            done: Completions::new(),
            arrived: Vec::new(),
            next_tag: 0,
        })
    }

    /// Row ids for a request drawn from `arg`: a run, a spread, or a few hot rows.
    fn ids(&self, layer: usize, arg: u8) -> Vec<u64> {
        let rows = self.shared.table.rows(layer).unwrap_or(1).max(1);
        let n = 1 + u64::from(arg) % MAX_ROWS;
        let start = u64::from(arg).wrapping_mul(0x9E37) % rows;
        match arg % 3 {
            0 => (0..n).map(|k| (start + k) % rows).collect(),
            1 => (0..n).map(|k| (start + k * 977) % rows).collect(),
            _ => (0..n).map(|k| (start + k % 4) % rows).collect(),
        }
    }

    fn step(&mut self, op: u8, arg: u8) -> std::result::Result<(), String> {
        let layer = usize::from(arg >> 7) % self.shared.table.n_layers();
        match op % 6 {
            0 | 1 => self.fetch(layer, arg)?,
            2 => self.speculate(layer, arg)?,
            3 => {
                if let Some(&spec) = self.specs.get(usize::from(arg) % self.specs.len().max(1)) {
                    self.shared.specs.cancel(spec);
                }
            }
            4 => self.seed(layer, arg)?,
            _ => self.pump()?,
        }
        self.collect()
    }

    fn fetch(&mut self, layer: usize, arg: u8) -> std::result::Result<(), String> {
        // A free slot, pumping until one is back (bounded: requests complete).
        let slot = loop {
            if let Ok(s) = self.shared.slots.take() {
                break s;
            }
            self.pump()?;
            self.collect()?;
        };
        let ids = self.ids(layer, arg);
        let rb = self.shared.table.row_bytes();
        let mut out = crate::buffer::AlignedBuf::new(ids.len() * rb, crate::buffer::IO_ALIGN)
            .map_err(|e| e.to_string())?;
        // Stale bytes: a row never written must not pass as read.
        out.as_mut_slice().fill(0x5A);
        let ids_buf = self.shared.slots.ids(slot, &ids);
        let tag = self.next_tag;
        self.next_tag += 1;
        // Odd args: the service's slot request (the slot is freed by the reactor).
        let (req, slot) = if arg & 1 == 1 {
            let reply = self.done.sender();
            let req = Request::Slot {
                slot,
                tag,
                layer,
                ids: ids_buf,
                out,
                reply,
            };
            (req, None)
        } else {
            let req = Request::Fetch {
                slot,
                layer,
                ids: ids_buf,
                out,
            };
            (req, Some(slot))
        };
        self.accept(req)?;
        self.waiting.push_back(Waiting {
            slot,
            tag,
            layer,
            ids,
            submitted_at: self.report.pumps,
        });
        Ok(())
    }

    /// Hands `req` to the reactor as its thread does: only when it can take one.
    fn accept(&mut self, req: Request) -> std::result::Result<(), String> {
        let mut pumps = 0;
        while !self.reactor.can_accept() {
            self.pump()?;
            self.collect()?;
            pumps += 1;
            if pumps > MAX_PUMPS {
                return Err("the reactor takes no request".into());
            }
        }
        self.reactor.accept(req);
        Ok(())
    }

    /// A speculation, unless as many are pending as the store would allow.
    fn speculate(&mut self, layer: usize, arg: u8) -> std::result::Result<(), String> {
        if self.shared.specs.pending.fetch_add(1, Ordering::Relaxed) >= SLOTS {
            self.shared.specs.pending.fetch_sub(1, Ordering::Relaxed);
            return Ok(());
        }
        let ids = self.ids(layer, arg.rotate_left(3));
        let (spec, ids) = self.shared.specs.begin(&ids);
        self.specs.push(spec);
        if self.specs.len() > SLOTS {
            self.specs.remove(0);
        }
        self.report.speculated += 1;
        self.accept(Request::Speculate { spec, layer, ids })
    }

    /// A seeding read through its own driver (as the store seeds at open).
    fn seed(&mut self, layer: usize, arg: u8) -> std::result::Result<(), String> {
        let ids = self.ids(layer, arg.rotate_left(5));
        let mut out = vec![0u8; ids.len() * self.shared.table.row_bytes()];
        let backend = Arc::clone(&self.shared.backend);
        let r = crate::pipeline::seed::read_retrying(
            &self.shared,
            &*backend,
            &mut self.seeder,
            layer,
            &ids,
            &mut out,
        );
        match r {
            Ok(()) => {
                self.check_rows(layer, &ids, &out, "seeding read")?;
                self.report.seeded += 1;
                Ok(())
            }
            Err(e) => typed(&e, "seeding read"),
        }
    }

    fn pump(&mut self) -> std::result::Result<(), String> {
        if self.reactor.busy() {
            self.reactor.pump(true);
            self.report.pumps += 1;
        }
        Ok(())
    }

    /// Takes every completed fetch, checks it, and checks no request is overdue.
    fn collect(&mut self) -> std::result::Result<(), String> {
        while let Some(c) = self.done.try_next() {
            self.arrived.push(c);
        }
        let mut k = 0;
        while k < self.waiting.len() {
            let w = &self.waiting[k];
            let done = match w.slot {
                Some(slot) => self.shared.slots.is_done(slot),
                None => self.arrived.iter().any(|c| c.tag == w.tag),
            };
            if !done {
                if self.report.pumps - w.submitted_at > u64::from(MAX_PUMPS) {
                    return Err(format!(
                        "a fetch of {} rows is not complete after {MAX_PUMPS} pumps",
                        w.ids.len()
                    ));
                }
                k += 1;
                continue;
            }
            let w = self.waiting.remove(k).ok_or("waiting list changed")?;
            let (buf, r) = match w.slot {
                Some(slot) => {
                    let done = self.shared.slots.wait(slot);
                    self.shared.slots.release(slot);
                    done
                }
                None => {
                    let i = self.arrived.iter().position(|c| c.tag == w.tag);
                    let c = self.arrived.swap_remove(i.ok_or("completion vanished")?);
                    (c.out, c.result)
                }
            };
            match r {
                Ok(()) => {
                    self.check_rows(w.layer, &w.ids, &buf, "fetch")?;
                    self.report.fetched += 1;
                }
                Err(e) => {
                    typed(&e, "fetch")?;
                    self.report.failed += 1;
                }
            }
        }
        Ok(())
    }

    /// Every row equals the memory tier's bytes.
    fn check_rows(
        &self,
        layer: usize,
        ids: &[u64],
        got: &[u8],
        what: &str,
    ) -> std::result::Result<(), String> {
        let rb = self.shared.table.row_bytes();
        let mut want = vec![0u8; ids.len() * rb];
        let rows = self.reference.resident_rows();
        rows.gather(layer, ids, &[], &mut want, &mut IoCounters::default())
            .map_err(|e| format!("reference gather: {e}"))?;
        if got != want.as_slice() {
            let k = got
                .chunks(rb)
                .zip(want.chunks(rb))
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "{what}: row {} (position {k}) of layer {layer} differs from the memory tier",
                ids.get(k).copied().unwrap_or(0)
            ));
        }
        Ok(())
    }

    /// Pumps until nothing is in flight; then every slot is free.
    fn quiesce(&mut self) -> std::result::Result<(), String> {
        let mut pumps = 0;
        while self.reactor.busy() || !self.waiting.is_empty() {
            self.pump()?;
            self.collect()?;
            pumps += 1;
            if pumps > MAX_PUMPS * 4 {
                return Err("the reactor does not quiesce".into());
            }
        }
        if let Some(d) = self.reactor.driver()
            && (d.active() != 0 || d.in_flight() != 0 || d.free_staging() != d.staging_depth())
        {
            return Err(format!(
                "at rest: {} batches active, {} of {} staging slots free",
                d.active(),
                d.free_staging(),
                d.staging_depth()
            ));
        }
        if !self.arrived.is_empty() || self.done.try_next().is_some() {
            return Err("a slot request completed twice".into());
        }
        if self.shared.slots.free() != SLOTS {
            return Err(format!(
                "at rest: {} of {SLOTS} slots free",
                self.shared.slots.free()
            ));
        }
        Ok(())
    }

    fn check_counters(&mut self) -> std::result::Result<(), String> {
        let s = self
            .shared
            .metrics
            .snapshot("sim", self.shared.table.row_bytes() as u64);
        let fetches = self.report.fetched + self.report.failed;
        if s.batches != fetches || s.errors != self.report.failed {
            return Err(format!(
                "batches {} (errors {}) for {fetches} fetches ({} failed)",
                s.batches, s.errors, self.report.failed
            ));
        }
        if s.spec_batches != self.report.speculated
            || self.shared.specs.pending.load(Ordering::Relaxed) != 0
        {
            return Err(format!(
                "{} speculations ended of {} accepted",
                s.spec_batches, self.report.speculated
            ));
        }
        // Every failure is followed by a rebuild, except the seeder's last one when its
        // retry failed too (it rebuilds at its next read).
        let owed = u64::from(self.seeder.is_none());
        if s.engine_rebuilds > s.engine_failures || s.engine_failures - s.engine_rebuilds > owed {
            return Err(format!(
                "{} engine failures, {} rebuilds",
                s.engine_failures, s.engine_rebuilds
            ));
        }
        self.report.engine_failures = s.engine_failures;
        Ok(())
    }
}

/// A failure must be one of the typed errors a fault can cause.
fn typed(e: &Error, what: &str) -> std::result::Result<(), String> {
    match e {
        Error::Engine { .. } | Error::IoAt { .. } | Error::Checksum { .. } | Error::Cancelled => {
            Ok(())
        }
        other => Err(format!("{what}: unexpected error {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn the_pipeline_keeps_its_invariants(seed in any::<u64>(), ops in proptest::collection::vec(any::<u8>(), 0..600)) {
            let report = run(crate::fuzz::sim_table(), seed, &ops);
            prop_assert!(report.is_ok(), "seed {seed}: {report:?}");
        }
    }

    /// Long seeded runs break engines many times.
    #[test]
    fn long_runs_break_and_rebuild_engines() {
        let t = crate::fuzz::sim_table();
        let mut breaks = 0;
        for seed in 0..8u64 {
            let mut rng = SplitMix64(seed);
            let ops: Vec<u8> = (0..2 * MAX_OPS).map(|_| rng.next_u64() as u8).collect();
            let r = run(t, seed, &ops).unwrap_or_else(|e| unreachable!("seed {seed}: {e}"));
            assert!(r.fetched > 0, "seed {seed}: {r:?}");
            breaks += r.engine_failures;
        }
        assert!(breaks > 0, "no engine broke in 8 long runs");
    }
}
