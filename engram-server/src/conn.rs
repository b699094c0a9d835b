//! One attached client, served on its own thread: it drains the client's submission
//! ring, validates every entry, submits each slot's request to the table's store
//! ([`engram_store::Store::start`]: the store's reactors complete it into this client's
//! completion queue), writes each request's rows into the client's slot as it finishes
//! (in any order) and posts its completion.
//!
//! A client can only hurt itself: its requests run on its thread, its in-flight bound is
//! its slot count, a broken protocol disconnects it, and when it goes away (closed or
//! killed) everything it held is released: reads in flight finish into buffers the
//! requests own (nothing waits for them), its speculations are dropped, its region
//! unmapped, its descriptors closed.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use engram_store::{AlignedBuf, Completions, Speculation};

use crate::Shared;
use crate::metrics::ClientMetrics;
use crate::table::Served;
use engram_client::bell::{Doorbell, ServerWait, Woke, spin_then};
use engram_client::error::{Result, violation};
use engram_client::protocol::{
    Cqe, H_CLIENT_FLAGS, H_CQ_HEAD, H_CQ_TAIL, H_SERVER_FLAGS, H_SQ_HEAD, H_SQ_TAIL,
    MAX_ERROR_BYTES, NO_SLOT, OP_CANCEL, OP_LOOKUP, OP_SPECULATE, RegionLayout, Reply, Request,
    SQE_BYTES, ST_ERROR, ST_NOT_TAKEN, ST_OK, ST_TABLE_CHANGED, Sqe, ring_used,
};
use engram_client::shm::Region;
use engram_client::wire;

/// Speculations one client may have running (older ones are let go: they finish, they
/// just cannot be cancelled any more).
pub const MAX_CLIENT_SPECULATIONS: usize = 64;
/// How long an idle client thread sleeps before checking for shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// A request whose rows are being read (the store's tag is its slot).
#[derive(Debug, Clone, Copy)]
struct Pending {
    tag: u64,
    rows: usize,
    t0: Instant,
}

/// The serving state of one client.
#[derive(Debug)]
pub struct Conn<'a> {
    /// The server's state.
    pub shared: &'a Shared,
    /// The table this client is attached to.
    pub table: &'a Served,
    /// The table's epoch when the client attached (a newer one with another shape ends it).
    pub epoch: u64,
    /// The client's control socket.
    pub sock: UnixStream,
    /// The client's shared region.
    pub region: Region,
    /// Where everything lives in the region.
    pub layout: RegionLayout,
    /// Rung by the client when it submits.
    pub sq_bell: Doorbell,
    /// Rung by the server when it completes.
    pub cq_bell: Doorbell,
    /// How long to poll the ring before sleeping.
    pub spin: Duration,
    /// This client's counters.
    pub metrics: Arc<ClientMetrics>,
    /// Sleeps on the submission doorbell and the socket.
    pub wait: ServerWait,
    /// Requests this client may have in the store at once (`Shared::client_in_flight`).
    max_pending: usize,
    sq_head: u32,
    cq_tail: u32,
    busy: Vec<bool>,
    /// (slots,) the request in flight in each slot
    pending: Vec<Option<Pending>>,
    n_pending: usize,
    done: Completions,
    specs: VecDeque<(u64, Speculation)>,
    spare_bufs: Vec<AlignedBuf>,
    ids: Vec<u64>,
}

/// Why a client's loop ended.
#[derive(Debug)]
pub enum End {
    /// The client closed its socket.
    HangUp,
    /// The server is stopping.
    Shutdown,
    /// The client broke the protocol (it is disconnected).
    Violation(engram_client::error::ServiceError),
}

impl<'a> Conn<'a> {
    /// The serving state of a client that has just been welcomed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: &'a Shared,
        table: &'a Served,
        epoch: u64,
        sock: UnixStream,
        region: Region,
        layout: RegionLayout,
        sq_bell: Doorbell,
        cq_bell: Doorbell,
        spin: Duration,
        metrics: Arc<ClientMetrics>,
    ) -> Result<Self> {
        let wait = ServerWait::new(&sq_bell, std::os::fd::AsFd::as_fd(&sock))?;
        let max_pending = shared.client_in_flight();
        Ok(Self {
            max_pending,
            shared,
            table,
            epoch,
            sock,
            region,
            layout,
            sq_bell,
            cq_bell,
            spin,
            metrics,
            wait,
            sq_head: 0,
            cq_tail: 0,
            busy: vec![false; layout.slots as usize],
            pending: vec![None; layout.slots as usize],
            n_pending: 0,
            done: Completions::new(),
            specs: VecDeque::with_capacity(MAX_CLIENT_SPECULATIONS),
            spare_bufs: Vec::with_capacity(layout.slots as usize),
            ids: Vec::with_capacity(layout.slot_rows as usize),
        })
    }

    /// Serves until the client hangs up, breaks the protocol, or the server stops.
    pub fn serve(&mut self) -> End {
        match self.serve_inner() {
            Ok(end) => end,
            Err(e) => End::Violation(e),
        }
    }

    fn serve_inner(&mut self) -> Result<End> {
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return Ok(End::Shutdown);
            }
            self.pump()?;
            let region = &self.region;
            let head = self.sq_head;
            let ready = || region.atomic_u32(H_SQ_TAIL).load(Ordering::Acquire) != head;
            if spin_then(self.spin, self.region.atomic_u32(H_SERVER_FLAGS), ready) {
                continue;
            }
            match self.wait.wait(IDLE_WAIT)? {
                Woke::HangUp => return Ok(End::HangUp),
                Woke::Message => self.control()?,
                Woke::Bell => self.sq_bell.clear(),
                Woke::Timeout => {}
            }
        }
    }

    /// Starts every submitted request and completes them as they finish, starting newly
    /// submitted ones between completions, until none is running.
    fn pump(&mut self) -> Result<()> {
        loop {
            self.issue()?;
            if self.n_pending == 0 {
                return Ok(());
            }
            let Some(c) = self.done.wait(IDLE_WAIT) else {
                // Every request completes (an engine failure too, with an error); until
                // then only a stopping server ends the wait.
                if self.shared.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                continue;
            };
            let slot = c.tag as u32;
            let Some(p) = self.pending.get_mut(slot as usize).and_then(Option::take) else {
                debug_assert!(false, "a completion for slot {slot}, not in flight");
                continue;
            };
            self.n_pending -= 1;
            // Counted before the completion is posted: a client that sees it and asks for
            // the stats sees it counted.
            let ns = p.t0.elapsed().as_nanos() as u64;
            let ok = c.result.is_ok();
            self.metrics.counters.finished(p.rows, ns, ok);
            self.table.counters.finished(p.rows, ns, ok);
            match c.result {
                Ok(()) => {
                    let bytes = &c.out[..p.rows * self.layout.row_bytes as usize];
                    self.region.write(self.layout.rows(slot), bytes)?;
                    self.post(slot, p.tag, ST_OK, "")?;
                }
                Err(e) => self.post(slot, p.tag, ST_ERROR, &e.to_string())?,
            }
            self.spare_bufs.push(c.out);
        }
    }

    /// Takes submitted entries off the ring and starts them while the client has fewer
    /// than `max_pending` requests in the store (the rest wait in the ring: with every
    /// client so bounded the store's prefetch slots never run out, so no client thread
    /// blocks on a slot that only another client's thread would free).
    fn issue(&mut self) -> Result<()> {
        let tail = self.region.atomic_u32(H_SQ_TAIL).load(Ordering::Acquire);
        let n = ring_used(
            "client",
            "submission ring entries",
            self.sq_head,
            tail,
            self.layout.ring,
        )?;
        for _ in 0..n {
            if self.n_pending >= self.max_pending {
                break;
            }
            let mut b = [0u8; SQE_BYTES];
            self.region.read(self.layout.sqe(self.sq_head), &mut b)?;
            self.sq_head = self.sq_head.wrapping_add(1);
            self.region
                .atomic_u32(H_SQ_HEAD)
                .store(self.sq_head, Ordering::Release);
            self.start(Sqe::decode(&b))?;
        }
        Ok(())
    }

    fn start(&mut self, e: Sqe) -> Result<()> {
        if e.op == OP_CANCEL {
            if let Some(i) = self.specs.iter().position(|(t, _)| *t == e.tag)
                && let Some((_, s)) = self.specs.remove(i)
            {
                s.cancel();
            }
            return Ok(());
        }
        if e.op != OP_LOOKUP && e.op != OP_SPECULATE {
            return Err(violation(
                "client",
                "operation",
                "1 (lookup), 2 (speculate) or 3 (cancel)",
                e.op,
            ));
        }
        if e.slot >= self.layout.slots || e.slot == NO_SLOT {
            return Err(violation(
                "client",
                "slot",
                format!("below {}", self.layout.slots),
                e.slot,
            ));
        }
        if self.busy[e.slot as usize] {
            return Err(violation(
                "client",
                "slot state",
                "a free slot",
                format!("slot {} still in flight", e.slot),
            ));
        }
        if e.rows > self.layout.slot_rows {
            return Err(violation(
                "client",
                "rows",
                format!("at most {}", self.layout.slot_rows),
                e.rows,
            ));
        }
        self.busy[e.slot as usize] = true;
        let state = self.table.current();
        if state.epoch != self.epoch {
            let msg = format!(
                "table {} was reloaded with another shape; reconnect",
                self.table.name
            );
            return self.post(e.slot, e.tag, ST_TABLE_CHANGED, &msg);
        }
        let rows = e.rows as usize;
        self.ids.resize(rows, 0);
        self.region
            .read_u64s(self.layout.ids(e.slot), &mut self.ids)?;
        let layer = e.layer as usize;
        if e.op == OP_SPECULATE {
            return match state.store.speculate(layer, &self.ids) {
                Ok(s) if s.accepted() => {
                    if self.specs.len() == MAX_CLIENT_SPECULATIONS {
                        self.specs.pop_front();
                    }
                    self.specs.push_back((e.tag, s));
                    self.post(e.slot, e.tag, ST_OK, "")
                }
                Ok(_) => self.post(e.slot, e.tag, ST_NOT_TAKEN, ""),
                Err(err) => self.post(e.slot, e.tag, ST_ERROR, &err.to_string()),
            };
        }
        let cap = self.layout.slot_rows as usize * self.layout.row_bytes as usize;
        let buf = match self.spare_bufs.pop() {
            Some(b) => b,
            None => match AlignedBuf::new(cap, engram_store::buffer::IO_ALIGN) {
                Ok(b) => b,
                Err(err) => return self.post(e.slot, e.tag, ST_ERROR, &err.to_string()),
            },
        };
        self.metrics.counters.started();
        self.table.counters.started();
        self.pending[e.slot as usize] = Some(Pending {
            tag: e.tag,
            rows,
            t0: Instant::now(),
        });
        self.n_pending += 1;
        state
            .store
            .start(layer, &self.ids, buf, u64::from(e.slot), &self.done);
        Ok(())
    }

    /// Posts a completion for `slot` (error text first) and frees the slot.
    fn post(&mut self, slot: u32, tag: u64, status: u32, msg: &str) -> Result<()> {
        let mut end = msg.len().min(MAX_ERROR_BYTES);
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        if end > 0 {
            self.region
                .write(self.layout.error(slot), &msg.as_bytes()[..end])?;
        }
        let head = self.region.atomic_u32(H_CQ_HEAD).load(Ordering::Acquire);
        let used = ring_used(
            "client",
            "completion ring head",
            head,
            self.cq_tail,
            self.layout.ring,
        )?;
        if used == self.layout.ring {
            return Err(violation(
                "client",
                "completion ring room",
                "a free entry",
                "a full ring (completions not reaped)",
            ));
        }
        let cqe = Cqe {
            slot,
            status,
            tag,
            detail: end as u32,
        };
        self.region
            .write(self.layout.cqe(self.cq_tail), &cqe.encode())?;
        self.cq_tail = self.cq_tail.wrapping_add(1);
        self.region
            .atomic_u32(H_CQ_TAIL)
            .store(self.cq_tail, Ordering::Release);
        self.busy[slot as usize] = false;
        self.cq_bell
            .ring_unless_spinning(self.region.atomic_u32(H_CLIENT_FLAGS));
        Ok(())
    }

    /// Answers a control request on the data connection.
    fn control(&mut self) -> Result<()> {
        let path = self.shared.options.socket.clone();
        let (req, _fds) = wire::recv::<Request>(&self.sock, &path, "client", self.shared.bound())?;
        let reply = match req {
            Request::Stats => {
                let mut s = self.shared.stats();
                s.tables.retain(|t| t.name == self.table.name);
                s.client_list.retain(|c| c.id == self.metrics.id);
                Reply::Stats(s)
            }
            Request::Reload => self.shared.reload_for(self.metrics.uid),
            Request::Hello { .. } => Reply::Error {
                reason: "already attached".into(),
            },
        };
        wire::send(&self.sock, &path, &reply, &[], self.shared.bound())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        // Reads in flight write into buffers their requests own, never into the region:
        // they finish on their own and their completions are dropped with the queue.
        for _ in self.pending.iter().flatten() {
            self.metrics.counters.abandoned();
            self.table.counters.abandoned();
        }
        self.specs.clear();
    }
}
