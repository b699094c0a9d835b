//! A reactor: one per I/O thread. It owns a driver over one engine and the requests
//! running on it; it takes requests from the store's bounded queue while reads are in
//! flight, so the device queue refills from the next request as the previous one's reads
//! complete (one continuous submission stream across tickets and lookups).
//!
//! An engine failure is one transition ([`Reactor::fail_engine`]): the driver has failed
//! every request it held with [`Error::Engine`]; the reactor counts the failure, drops the
//! driver and builds a new one from the backend, with at most
//! [`ENGINE_REBUILD_ATTEMPTS`] tries [`ENGINE_REBUILD_BACKOFF`] apart (doubling). Until a
//! rebuild succeeds each request it takes ends with an [`Error::Engine`] at once, and a
//! rebuild is tried again no sooner than [`ENGINE_REBUILD_RETRY`] later. The thread blocks
//! on the queue whenever nothing is in flight: it never spins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use super::slots::Done;
use super::{Request, Shared};
use crate::backend::IoCounters;
use crate::buffer::AlignedBuf;
use crate::error::{Error, Result};
use crate::reads::{BatchId, Driver, Finished, MAX_ACTIVE_BATCHES, Outputs, Priority};

/// Tries to build a new engine after one failed, before the reactor gives up for a while.
pub const ENGINE_REBUILD_ATTEMPTS: u32 = 3;
/// Wait before the second try of a rebuild (doubling for each further try).
pub const ENGINE_REBUILD_BACKOFF: Duration = Duration::from_millis(10);
/// After every try failed: the next request tries again no sooner than this.
pub const ENGINE_REBUILD_RETRY: Duration = Duration::from_secs(1);

/// A request whose misses are being read by the driver.
#[derive(Debug)]
struct Running {
    req: Request,
    /// (misses,) row ids and their output slots; empty slots: the identity
    miss_ids: Vec<u64>,
    miss_slots: Vec<u32>,
    /// Where a warm request's rows land before the cache.
    scratch: Option<AlignedBuf>,
    t0: Instant,
    t_io: Instant,
}

/// The output buffers of the running requests, by batch id.
struct RunningOuts<'a>(&'a mut [Option<Running>]);

impl Outputs for RunningOuts<'_> {
    fn out(&mut self, batch: BatchId) -> &mut [u8] {
        match self.0.get_mut(batch as usize).and_then(Option::as_mut) {
            Some(Running {
                req: Request::Fetch { out, .. } | Request::Slot { out, .. },
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

/// The engine a reactor reads through, or why it has none.
#[derive(Debug)]
enum EngineState {
    Ready(Box<Driver>),
    /// Every rebuild try failed: `cause`; the next try no sooner than `retry_at`.
    Down {
        engine: &'static str,
        cause: String,
        retry_at: Instant,
    },
}

/// One I/O thread's reactor.
#[derive(Debug)]
pub(crate) struct Reactor {
    shared: Arc<Shared>,
    engine: EngineState,
    /// (MAX_ACTIVE_BATCHES,) running requests by batch id
    running: Vec<Option<Running>>,
    n_running: usize,
    spare_lists: Vec<(Vec<u64>, Vec<u32>)>,
    spare_bufs: Vec<AlignedBuf>,
    finished: Vec<Finished>,
}

impl Reactor {
    /// A reactor over `driver` (built by the store at open).
    pub fn new(shared: Arc<Shared>, driver: Driver) -> Self {
        Self {
            shared,
            engine: EngineState::Ready(Box::new(driver)),
            running: (0..MAX_ACTIVE_BATCHES).map(|_| None).collect(),
            n_running: 0,
            spare_lists: Vec::with_capacity(MAX_ACTIVE_BATCHES),
            spare_bufs: Vec::with_capacity(MAX_ACTIVE_BATCHES),
            finished: Vec::with_capacity(MAX_ACTIVE_BATCHES),
        }
    }

    /// Whether anything is in flight: a request, or a read of one already completed (a
    /// failed batch's, a hedged read's slower copy), which is reaped before the reactor
    /// rests so its staging slot is free.
    pub fn busy(&self) -> bool {
        self.n_running > 0 || self.driver().is_some_and(|d| d.in_flight() > 0)
    }

    /// Whether [`Reactor::accept`] can take another request now.
    pub fn can_accept(&self) -> bool {
        match &self.engine {
            EngineState::Ready(d) => d.can_start(),
            EngineState::Down { .. } => true,
        }
    }

    /// The driver, when the engine is up (for the simulation's invariants).
    pub fn driver(&self) -> Option<&Driver> {
        match &self.engine {
            EngineState::Ready(d) => Some(d),
            EngineState::Down { .. } => None,
        }
    }

    /// The thread's loop: takes requests, pumps the driver, until the queue is closed and
    /// everything taken has completed. Blocks on the queue whenever nothing is in flight.
    pub fn run(mut self, requests: &Receiver<Request>) {
        let mut open = true;
        loop {
            while open && self.can_accept() {
                let next = if !self.busy() {
                    requests.recv().map_err(|_| TryRecvError::Disconnected)
                } else {
                    requests.try_recv()
                };
                match next {
                    Ok(req) => self.accept(req),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            if !self.busy() {
                if open {
                    continue;
                }
                return;
            }
            self.pump(true);
        }
    }

    /// Probes the cache and starts the misses on the driver (or completes at once).
    pub fn accept(&mut self, mut req: Request) {
        let sh = Arc::clone(&self.shared);
        let t0 = Instant::now();
        let (mut miss_ids, mut miss_slots) = self.spare_lists.pop().unwrap_or_default();
        let mut scratch = None;
        let (layer, priority) = match &mut req {
            Request::Fetch {
                layer, ids, out, ..
            }
            | Request::Slot {
                layer, ids, out, ..
            } => {
                sh.probe(
                    *layer,
                    ids,
                    out.as_mut_slice(),
                    &mut miss_ids,
                    &mut miss_slots,
                );
                (*layer, Priority::Demand)
            }
            Request::Speculate { spec, layer, ids } => {
                miss_ids.clear();
                miss_slots.clear();
                if !sh.specs.is_cancelled(*spec)
                    && let Some(cache) = &sh.cache
                {
                    miss_ids.extend(ids.iter().filter(|&&r| !cache.contains(*layer, r)));
                }
                scratch = self.warm_scratch(&mut miss_ids);
                (*layer, Priority::Speculative)
            }
        };
        let running = Running {
            req,
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
        let driver = match self.engine_up() {
            Ok(d) => d,
            Err(e) => return self.complete(running, Err(e), IoCounters::default()),
        };
        match driver.start(layer, &running.miss_ids, &running.miss_slots, priority) {
            Ok(id) => {
                self.running[id as usize] = Some(running);
                self.n_running += 1;
            }
            Err(e) => self.complete(running, Err(e), IoCounters::default()),
        }
    }

    /// A buffer for a warm request's misses (none, and no misses, if it cannot be had).
    fn warm_scratch(&mut self, miss_ids: &mut Vec<u64>) -> Option<AlignedBuf> {
        if miss_ids.is_empty() {
            return None;
        }
        let need = miss_ids.len() * self.shared.table.row_bytes();
        let buf = match self.spare_bufs.iter().position(|b| b.capacity() >= need) {
            Some(i) => Ok(self.spare_bufs.swap_remove(i)),
            None => AlignedBuf::new(need, crate::buffer::IO_ALIGN),
        };
        match buf.and_then(|mut b| b.set_len(need).map(|()| b)) {
            Ok(b) => Some(b),
            Err(_) => {
                miss_ids.clear();
                None
            }
        }
    }

    /// The driver, rebuilding the engine first if it is down and its retry time came.
    fn engine_up(&mut self) -> Result<&mut Driver> {
        if let EngineState::Down {
            engine,
            cause,
            retry_at,
        } = &self.engine
        {
            let (engine, cause) = (*engine, cause.clone());
            if Instant::now() < *retry_at {
                return Err(Error::Engine {
                    engine,
                    cause: format!("{cause}; not rebuilt yet"),
                });
            }
            self.engine = self.rebuild(engine, cause);
        }
        match &mut self.engine {
            EngineState::Ready(d) => Ok(d),
            EngineState::Down { engine, cause, .. } => Err(Error::Engine {
                engine,
                cause: cause.clone(),
            }),
        }
    }

    /// One round of the driver: cancels cancelled speculations, submits, reaps (blocking
    /// for a completion when `wait`), completes what finished; then, if the engine failed,
    /// the failure transition.
    pub fn pump(&mut self, wait: bool) {
        let EngineState::Ready(driver) = &mut self.engine else {
            return;
        };
        for (id, r) in self.running.iter().enumerate() {
            if let Some(Running {
                req: Request::Speculate { spec, .. },
                ..
            }) = r
                && self.shared.specs.is_cancelled(*spec)
            {
                driver.cancel(id as BatchId);
            }
        }
        driver.pump(
            wait,
            &mut RunningOuts(&mut self.running),
            &mut self.finished,
        );
        let failure = driver
            .failure()
            .map(|why| (driver.engine_name(), why.to_string()));
        let mut finished = std::mem::take(&mut self.finished);
        for f in finished.drain(..) {
            self.finish(f);
        }
        self.finished = finished;
        if let Some((engine, cause)) = failure {
            self.fail_engine(engine, cause);
        }
    }

    /// The failure transition: every request still running ends with [`Error::Engine`]
    /// (the driver has already failed its batches; this catches any it did not hand
    /// back), the failure is counted, and the engine is rebuilt.
    fn fail_engine(&mut self, engine: &'static str, cause: String) {
        self.shared.metrics.record_engine_failure();
        for k in 0..self.running.len() {
            if let Some(r) = self.running[k].take() {
                self.n_running -= 1;
                let e = Error::Engine {
                    engine,
                    cause: cause.clone(),
                };
                self.complete(r, Err(e), IoCounters::default());
            }
        }
        // Dropping the driver reaps (or, for a dead ring, leaks) what is still in flight.
        self.engine = EngineState::Down {
            engine,
            cause: cause.clone(),
            retry_at: Instant::now(),
        };
        self.engine = self.rebuild(engine, cause);
    }

    /// A new driver from the backend, with bounded tries and backoff.
    fn rebuild(&self, engine: &'static str, cause: String) -> EngineState {
        let mut last = cause;
        for attempt in 0..ENGINE_REBUILD_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(ENGINE_REBUILD_BACKOFF * (1 << (attempt - 1)));
            }
            match self.shared.backend.driver(true) {
                Ok(d) => {
                    self.shared.metrics.record_engine_rebuild();
                    tracing::warn!(target: "engram_store", engine, "I/O engine rebuilt after a failure");
                    return EngineState::Ready(Box::new(d));
                }
                Err(e) => last = format!("rebuilding the engine failed: {e}"),
            }
        }
        tracing::error!(target: "engram_store", engine, "{last}");
        EngineState::Down {
            engine,
            cause: last,
            retry_at: Instant::now() + ENGINE_REBUILD_RETRY,
        }
    }

    fn finish(&mut self, f: Finished) {
        match self
            .running
            .get_mut(f.batch as usize)
            .and_then(Option::take)
        {
            Some(running) => {
                self.n_running -= 1;
                self.complete(running, f.result, f.counters);
            }
            None => debug_assert!(false, "finished batch {} was not running", f.batch),
        }
    }

    /// Admits what was read, records metrics and hands the request back.
    fn complete(&mut self, r: Running, result: Result<()>, counters: IoCounters) {
        let sh = &*self.shared;
        let misses = r.miss_ids.len();
        if misses > 0 {
            sh.metrics
                .record_tier(sh.backend.kind().tier(), r.t_io.elapsed().as_nanos() as u64);
            sh.metrics.record_io(misses, &counters);
        }
        // A fetch's rows (a ticket's, a lookup's, a slot request's): admitted, counted.
        let fetched = |layer: usize, ids: &[u64], out: &[u8]| {
            if result.is_ok() {
                sh.admit(layer, &r.miss_ids, &r.miss_slots, out);
            }
            let ns = r.t0.elapsed().as_nanos() as u64;
            sh.metrics.record_batch(ids.len(), ns, result.is_ok());
        };
        match r.req {
            Request::Fetch {
                slot,
                layer,
                ids,
                out,
            } => {
                fetched(layer, &ids, &out);
                sh.slots.deliver(slot, Done { out, result, ids });
            }
            Request::Slot {
                slot,
                tag,
                layer,
                ids,
                out,
                reply,
            } => {
                fetched(layer, &ids, &out);
                // The slot first: the caller may start its next request on this completion.
                sh.slots.finish(slot, ids);
                let _ = reply.send(super::Completion { tag, out, result });
            }
            Request::Speculate { layer, ids, .. } => {
                sh.metrics.record_speculation(misses, &result);
                if result.is_ok()
                    && let Some(buf) = &r.scratch
                {
                    sh.admit(layer, &r.miss_ids, &[], buf);
                }
                sh.specs.done(ids);
            }
        }
        if let Some(buf) = r.scratch {
            self.spare_bufs.push(buf);
        }
        self.spare_lists.push((r.miss_ids, r.miss_slots));
    }
}
