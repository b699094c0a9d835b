//! One attached client, served on its own thread: it drains the client's submission
//! ring, validates every entry, starts the reads on the table's store, writes each
//! request's rows into the client's slot and posts its completion.
//!
//! A client can only hurt itself: its requests run on its thread, its in-flight bound is
//! its slot count, a broken protocol disconnects it, and when it goes away (closed or
//! killed) everything it held is released: reads in flight are waited for, its
//! speculations dropped, its region unmapped, its descriptors closed.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engram_store::{AlignedBuf, Speculation, Ticket};

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

/// A request whose rows are being read.
#[derive(Debug)]
struct Pending {
    slot: u32,
    tag: u64,
    rows: usize,
    ticket: Ticket,
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
    pending: VecDeque<Pending>,
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
            pending: VecDeque::with_capacity(layout.slots as usize),
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

    /// Starts every submitted request and completes them in order, starting newly
    /// submitted ones between completions, until none is running.
    fn pump(&mut self) -> Result<()> {
        loop {
            self.issue()?;
            let Some(p) = self.pending.pop_front() else {
                return Ok(());
            };
            let (buf, r) = p.ticket.wait();
            let ok = r.is_ok();
            match r {
                Ok(()) => {
                    let bytes = &buf[..p.rows * self.layout.row_bytes as usize];
                    self.region.write(self.layout.rows(p.slot), bytes)?;
                    self.post(p.slot, p.tag, ST_OK, "")?;
                }
                Err(e) => self.post(p.slot, p.tag, ST_ERROR, &e.to_string())?,
            }
            self.spare_bufs.push(buf);
            let ns = p.t0.elapsed().as_nanos() as u64;
            self.metrics.counters.finished(p.rows, ns, ok);
            self.table.counters.finished(p.rows, ns, ok);
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
            if self.pending.len() >= self.max_pending {
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
        let ticket = state.store.prefetch(layer, &self.ids, buf);
        self.pending.push_back(Pending {
            slot: e.slot,
            tag: e.tag,
            rows,
            ticket,
            t0: Instant::now(),
        });
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
        // Reads in flight write into buffers this thread owns: wait for them before the
        // buffers (and the region) go.
        for p in self.pending.drain(..) {
            let _ = p.ticket.wait();
            self.metrics.counters.abandoned();
            self.table.counters.abandoned();
        }
        self.specs.clear();
    }
}
