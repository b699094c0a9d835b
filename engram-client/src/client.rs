//! `RemoteStore`: a client of `engram serve` with the in-process store's API
//! ([`RowSource`]): `lookup_into`, prefetch tickets, speculation, stats.
//!
//! Each request takes a slot of the client's region, writes its ids there, and submits an
//! entry; the server writes the rows into the slot, and the caller copies them out. Any
//! thread may call; the thread that waits reaps completions for everyone (no extra
//! thread, so no extra wake-up on the path of a lookup). When the server goes away the
//! waiting calls fail with [`ServiceError::Disconnected`] and the next call connects again
//! (to a server of a table of the same shape, or it fails with
//! [`ServiceError::TableChanged`]).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use engram_kernels::EngramLayout;
use engram_store::metrics::{new_hist, record_ns, summary};
use engram_store::{
    AlignedBuf, Manifest, PendingRows, PendingSpeculation, RowSource, Speculation, StatsSnapshot,
    Ticket,
};
use hdrhistogram::Histogram;

use crate::bell::{Doorbell, Woke, spin_then, wait_client};
use crate::error::{Result, ServiceError, violation};
use crate::protocol::{
    CQE_BYTES, Cqe, H_CLIENT_FLAGS, H_CQ_HEAD, H_CQ_TAIL, H_MAGIC, H_ROW_BYTES, H_SERVER_FLAGS,
    H_SLOT_ROWS, H_SLOTS, H_SQ_HEAD, H_SQ_TAIL, H_VERSION, MAX_ERROR_BYTES, MAX_SPIN_US, NO_SLOT,
    OP_CANCEL, OP_LOOKUP, OP_SPECULATE, PROTOCOL_VERSION, REGION_MAGIC, RegionLayout, Reply,
    Request, ST_ERROR, ST_OK, ST_TABLE_CHANGED, Sqe, incompatible, ring_used,
};
use crate::shm::Region;
use crate::stats::ServiceStats;
use crate::wire;

/// How long connecting and each control request may take.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting client checks that the server is still there.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// Longest a prefetch waits for a slot while prefetch tickets, some of other threads,
/// hold every slot; then it is a `Limit` error.
pub const HELD_TICKET_WAIT: Duration = Duration::from_secs(10);
/// Default slots (requests in flight).
pub const DEFAULT_SLOTS: u32 = 16;
/// Default rows per request.
pub const DEFAULT_SLOT_ROWS: u32 = 8192;

/// Where a service is, and which of its tables: `unix:PATH`, `unix:PATH#TABLE` or a
/// plain socket path (`TABLE` is a served table's name or directory path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAddress {
    /// The server's Unix socket.
    pub socket: PathBuf,
    /// The served table to attach to (its name or path); `None` when the server serves one.
    pub table: Option<String>,
}

impl ServiceAddress {
    /// Parses `unix:PATH`, `unix:PATH#TABLE` or a plain socket path.
    pub fn parse(s: &str) -> Result<Self> {
        let rest = s.strip_prefix("unix:").unwrap_or(s);
        let (sock, table) = match rest.split_once('#') {
            Some((p, t)) if !t.is_empty() => (p, Some(t.to_string())),
            Some((p, _)) => (p, None),
            None => (rest, None),
        };
        if sock.is_empty() {
            return Err(ServiceError::Invalid {
                what: "service address",
                reason: format!("{s:?}: expected unix:PATH or unix:PATH#TABLE"),
            });
        }
        Ok(Self {
            socket: PathBuf::from(sock),
            table,
        })
    }

    /// Whether `s` names a service (`unix:...`) rather than a table directory.
    pub fn is_service(s: &str) -> bool {
        s.starts_with("unix:")
    }
}

/// What a client sends to name `table`: a relative path that exists here becomes its
/// absolute path (the server resolves paths in its own working directory); anything else
/// (a name, an absolute path) goes as it is.
fn table_key(table: &str) -> String {
    let p = Path::new(table);
    if p.is_relative()
        && p.exists()
        && let Ok(abs) = std::fs::canonicalize(p)
    {
        return abs.display().to_string();
    }
    table.to_string()
}

/// How a client attaches.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Requests in flight at once (a power of two; the server may grant fewer).
    pub slots: u32,
    /// Largest request in rows (the server may grant fewer; `max_batch_rows`).
    pub slot_rows: u32,
    /// Microseconds this client polls for a completion before sleeping (0: sleep at
    /// once; latency-critical clients spin, at the cost of a busy core while waiting).
    pub spin_us: u32,
    /// Microseconds the server polls this client's ring before sleeping (capped by the
    /// server's `--max-spin-us`).
    pub server_spin_us: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            slots: DEFAULT_SLOTS,
            slot_rows: DEFAULT_SLOT_ROWS,
            spin_us: 0,
            server_spin_us: 0,
        }
    }
}

#[derive(Debug)]
struct State {
    free: Vec<u32>,
    /// (slots,) tag of the request in the slot; 0 when free
    tags: Vec<u64>,
    /// (slots,) whether the slot carries a speculation (freed when it completes)
    spec: Vec<bool>,
    /// (slots,) the thread that started the prefetch ticket holding the slot (freed when
    /// the ticket is waited on or dropped: only its holder can free it)
    ticket: Vec<Option<std::thread::ThreadId>>,
    /// Slots held by tickets.
    tickets: usize,
    done: Vec<Option<Cqe>>,
    sq_tail: u32,
    cq_head: u32,
    reaping: bool,
    broken: Option<String>,
}

/// One connection to a server.
#[derive(Debug)]
struct Conn {
    socket: PathBuf,
    sock: UnixStream,
    /// Serializes control request / reply pairs.
    control: Mutex<()>,
    region: Region,
    layout: RegionLayout,
    sq_bell: Doorbell,
    cq_bell: Doorbell,
    spin: Duration,
    state: Mutex<State>,
    cond: Condvar,
    next_tag: AtomicU64,
}

/// What the welcome said.
#[derive(Debug)]
struct Attached {
    conn: Conn,
    manifest: Manifest,
    table: String,
    backend: String,
    client_id: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Conn {
    fn connect(target: &ServiceAddress, options: &ClientOptions) -> Result<Attached> {
        let socket = target.socket.clone();
        let sock = UnixStream::connect(&socket).map_err(|e| ServiceError::Connect {
            socket: socket.clone(),
            reason: match e.kind() {
                std::io::ErrorKind::PermissionDenied => format!(
                    "{e} (the socket's mode admits only its owner, or its group with --group)"
                ),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    format!("{e} (is `engram serve` running?)")
                }
                _ => e.to_string(),
            },
        })?;
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            table: target.table.as_deref().map(table_key),
            slots: options.slots,
            slot_rows: options.slot_rows,
            server_spin_us: options.server_spin_us.min(MAX_SPIN_US),
        };
        // A server that refuses a peer says why and closes at once, perhaps before the
        // hello is sent: read its answer even when sending failed.
        let bound = wire::Bound::within(CONTROL_TIMEOUT);
        let sent = wire::send(&sock, &socket, &hello, &[], bound);
        let (reply, fds) = match (wire::recv::<Reply>(&sock, &socket, "server", bound), sent) {
            (Ok(r), _) => r,
            (Err(_), Err(e)) => return Err(e),
            (Err(ServiceError::Disconnected { socket, reason }), Ok(())) => {
                return Err(ServiceError::Refused { socket, reason });
            }
            (Err(e), Ok(())) => return Err(e),
        };
        let (client_id, table, manifest_json, backend, slots, slot_rows) = match reply {
            Reply::Welcome {
                version,
                client_id,
                table,
                manifest,
                backend,
                slots,
                slot_rows,
            } => {
                if version != PROTOCOL_VERSION {
                    return Err(violation(
                        "server",
                        "protocol version",
                        PROTOCOL_VERSION,
                        version,
                    ));
                }
                (client_id, table, manifest, backend, slots, slot_rows)
            }
            Reply::Refused { reason } | Reply::Error { reason } => {
                return Err(ServiceError::Refused { socket, reason });
            }
            other => {
                return Err(violation(
                    "server",
                    "reply to hello",
                    "welcome",
                    format!("{other:?}"),
                ));
            }
        };
        if slots > options.slots.max(1) || slot_rows > options.slot_rows.max(1) {
            return Err(violation(
                "server",
                "granted slots x rows",
                format!("at most {} x {}", options.slots, options.slot_rows),
                format!("{slots} x {slot_rows}"),
            ));
        }
        let where_ = PathBuf::from(format!("unix:{}#{table}", socket.display()));
        let manifest = Manifest::from_json(manifest_json.as_bytes(), &where_)?;
        let row_bytes = u32::try_from(manifest.row_bytes)
            .map_err(|_| violation("server", "row bytes", "below 2^32", manifest.row_bytes))?;
        let layout = RegionLayout::new(slots, slot_rows, row_bytes)?;
        let mut fds = fds.into_iter();
        let (Some(r), Some(s), Some(c), None) = (fds.next(), fds.next(), fds.next(), fds.next())
        else {
            return Err(violation(
                "server",
                "descriptors with the welcome",
                3,
                "another number",
            ));
        };
        let region = Region::attach(r, layout.bytes)?;
        let mut h = [0u8; 24];
        region.read(H_MAGIC, &mut h)?;
        let mut want = [0u8; 24];
        want[H_MAGIC..H_MAGIC + 8].copy_from_slice(&REGION_MAGIC.to_le_bytes());
        want[H_VERSION..H_VERSION + 4].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        want[H_SLOTS..H_SLOTS + 4].copy_from_slice(&slots.to_le_bytes());
        want[H_SLOT_ROWS..H_SLOT_ROWS + 4].copy_from_slice(&slot_rows.to_le_bytes());
        want[H_ROW_BYTES..H_ROW_BYTES + 4].copy_from_slice(&row_bytes.to_le_bytes());
        if h != want {
            return Err(violation(
                "server",
                "region header",
                format!("{want:?}"),
                format!("{h:?}"),
            ));
        }
        let n = slots as usize;
        let conn = Conn {
            socket,
            sock,
            control: Mutex::new(()),
            region,
            layout,
            sq_bell: Doorbell::from_fd(s, "server")?,
            cq_bell: Doorbell::from_fd(c, "server")?,
            spin: Duration::from_micros(u64::from(options.spin_us.min(MAX_SPIN_US))),
            state: Mutex::new(State {
                free: (0..slots).rev().collect(),
                tags: vec![0; n],
                spec: vec![false; n],
                ticket: vec![None; n],
                tickets: 0,
                done: vec![None; n],
                sq_tail: 0,
                cq_head: 0,
                reaping: false,
                broken: None,
            }),
            cond: Condvar::new(),
            next_tag: AtomicU64::new(1),
        };
        Ok(Attached {
            conn,
            manifest,
            table,
            backend,
            client_id,
        })
    }

    fn gone(&self, reason: &str) -> ServiceError {
        ServiceError::Disconnected {
            socket: self.socket.clone(),
            reason: reason.to_string(),
        }
    }

    fn is_broken(&self) -> bool {
        lock(&self.state).broken.is_some()
    }

    /// Submits `sqe` (caller holds the state lock).
    fn submit(&self, st: &mut State, sqe: Sqe) -> Result<()> {
        let head = self.region.atomic_u32(H_SQ_HEAD).load(Ordering::Acquire);
        let used = ring_used(
            "server",
            "submission ring head",
            head,
            st.sq_tail,
            self.layout.ring,
        )?;
        if used == self.layout.ring {
            return Err(violation(
                "server",
                "submission ring room",
                "a free entry",
                "a full ring",
            ));
        }
        self.region
            .write(self.layout.sqe(st.sq_tail), &sqe.encode())?;
        st.sq_tail = st.sq_tail.wrapping_add(1);
        self.region
            .atomic_u32(H_SQ_TAIL)
            .store(st.sq_tail, Ordering::Release);
        self.sq_bell
            .ring_unless_spinning(self.region.atomic_u32(H_SERVER_FLAGS));
        Ok(())
    }

    /// Takes posted completions off the ring (caller holds the state lock).
    fn reap(&self, st: &mut State) -> Result<u32> {
        let tail = self.region.atomic_u32(H_CQ_TAIL).load(Ordering::Acquire);
        let n = ring_used(
            "server",
            "completion ring tail",
            st.cq_head,
            tail,
            self.layout.ring,
        )?;
        for _ in 0..n {
            let mut b = [0u8; CQE_BYTES];
            self.region.read(self.layout.cqe(st.cq_head), &mut b)?;
            let c = Cqe::decode(&b);
            let s = c.slot as usize;
            if c.slot >= self.layout.slots || st.tags[s] == 0 || st.tags[s] != c.tag {
                return Err(violation(
                    "server",
                    "completion",
                    "a slot in flight and its tag",
                    format!("slot {} tag {}", c.slot, c.tag),
                ));
            }
            st.cq_head = st.cq_head.wrapping_add(1);
            if st.spec[s] {
                st.spec[s] = false;
                st.tags[s] = 0;
                st.free.push(c.slot);
            } else {
                st.done[s] = Some(c);
            }
        }
        if n > 0 {
            self.region
                .atomic_u32(H_CQ_HEAD)
                .store(st.cq_head, Ordering::Release);
        }
        Ok(n)
    }

    /// Blocks until `take` yields, reaping completions (one waiter reaps and sleeps on
    /// the doorbell; the others wait for it).
    fn wait_for<T>(&self, mut take: impl FnMut(&mut State) -> Option<T>) -> Result<T> {
        let mut st = lock(&self.state);
        loop {
            if let Some(why) = &st.broken {
                return Err(self.gone(why));
            }
            if let Some(v) = take(&mut st) {
                return Ok(v);
            }
            match self.reap(&mut st) {
                Ok(0) => {}
                Ok(_) => {
                    self.cond.notify_all();
                    continue;
                }
                Err(e) => {
                    st.broken = Some(e.to_string());
                    self.cond.notify_all();
                    return Err(e);
                }
            }
            if st.reaping {
                // Bounded, so that `take` sees its own deadlines.
                st = match self.cond.wait_timeout(st, WAIT_SLICE) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
                continue;
            }
            st.reaping = true;
            drop(st);
            let r = self.block();
            st = lock(&self.state);
            st.reaping = false;
            self.cond.notify_all();
            if let Err(e) = r {
                st.broken = Some(match &e {
                    ServiceError::Disconnected { reason, .. } => reason.clone(),
                    other => other.to_string(),
                });
                return Err(e);
            }
        }
    }

    /// Waits for a completion to be posted, at most one [`WAIT_SLICE`]: spins if asked,
    /// then sleeps on the doorbell while watching the socket for the server going away.
    fn block(&self) -> Result<()> {
        let r = &self.region;
        let ready = || {
            r.atomic_u32(H_CQ_TAIL).load(Ordering::Acquire)
                != r.atomic_u32(H_CQ_HEAD).load(Ordering::Relaxed)
        };
        if spin_then(self.spin, r.atomic_u32(H_CLIENT_FLAGS), ready) {
            return Ok(());
        }
        // Back to the caller's `take` after a slice without a bell too (it may have a
        // deadline, and it reaps whatever came).
        match wait_client(&self.cq_bell, self.sock.as_fd(), WAIT_SLICE)? {
            Woke::HangUp => Err(self.gone("the server closed the connection")),
            Woke::Bell | Woke::Timeout | Woke::Message => Ok(()),
        }
    }

    /// Takes a free slot (waiting for one when `wait`), writes `ids` and submits; a
    /// `ticket` keeps its slot until [`Conn::finish`]. When tickets hold every slot, only
    /// their holders can free one: if this thread started them all, waiting would never
    /// end, so it is a [`ServiceError::Limit`] at once; if other threads hold some, it
    /// waits for one of them at most [`HELD_TICKET_WAIT`] (two threads that each hold
    /// tickets and each want one more would otherwise wait for each other for ever).
    fn start(
        &self,
        op: u32,
        layer: usize,
        ids: &[u64],
        wait: bool,
        ticket: bool,
    ) -> Result<Option<(u32, u64)>> {
        let slot = if wait {
            let slots = self.layout.slots as usize;
            let me = std::thread::current().id();
            let deadline = Instant::now() + HELD_TICKET_WAIT;
            self.wait_for(|st| match st.free.pop() {
                Some(s) => Some(Ok(s)),
                None if st.tickets >= slots
                    && (st.ticket.iter().all(|t| *t == Some(me)) || Instant::now() >= deadline) =>
                {
                    Some(Err(ServiceError::Limit {
                        what: "prefetch tickets held at once (wait on or free one first)",
                        name: "ClientOptions::slots, ENGRAM_SERVICE_MAX_TICKETS",
                        limit: slots as u64,
                        found: slots as u64 + 1,
                    }))
                }
                None => None,
            })??
        } else {
            let mut st = lock(&self.state);
            if st.broken.is_none() {
                let _ = self.reap(&mut st);
            }
            match st.free.pop() {
                Some(s) => s,
                None => return Ok(None),
            }
        };
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let sqe = Sqe {
            op,
            slot,
            layer: u32::try_from(layer).unwrap_or(u32::MAX),
            rows: ids.len() as u32,
            tag,
        };
        let mut st = lock(&self.state);
        let r = self
            .region
            .write_u64s(self.layout.ids(slot), ids)
            .and_then(|()| {
                st.tags[slot as usize] = tag;
                st.spec[slot as usize] = op == OP_SPECULATE;
                self.submit(&mut st, sqe)
            });
        if r.is_ok() && ticket {
            st.ticket[slot as usize] = Some(std::thread::current().id());
            st.tickets += 1;
        }
        if let Err(e) = r {
            st.tags[slot as usize] = 0;
            st.free.push(slot);
            return Err(e);
        }
        Ok(Some((slot, tag)))
    }

    /// Waits for the request in `slot`, copies its rows into `out` and frees the slot.
    fn finish(&self, slot: u32, table: &str, out: &mut [u8]) -> Result<()> {
        let c = self.wait_for(|st| st.done[slot as usize].take())?;
        let r = match c.status {
            ST_OK => self.region.read(self.layout.rows(slot), out),
            ST_ERROR => {
                let n = (c.detail as usize).min(MAX_ERROR_BYTES);
                let mut text = vec![0u8; n];
                match self.region.read(self.layout.error(slot), &mut text) {
                    Ok(()) => Err(ServiceError::Server {
                        table: table.to_string(),
                        message: String::from_utf8_lossy(&text).into_owned(),
                    }),
                    Err(e) => Err(e),
                }
            }
            ST_TABLE_CHANGED => Err(ServiceError::TableChanged {
                table: table.to_string(),
                reason: "the server reloaded it with another shape".into(),
            }),
            s => Err(violation("server", "completion status", "0, 1 or 3", s)),
        };
        let mut st = lock(&self.state);
        st.tags[slot as usize] = 0;
        if st.ticket[slot as usize].take().is_some() {
            st.tickets -= 1;
        }
        st.free.push(slot);
        self.cond.notify_all();
        r
    }

    /// A control request on the connection.
    fn control(&self, req: &Request) -> Result<Reply> {
        let _g = lock(&self.control);
        let bound = wire::Bound::within(CONTROL_TIMEOUT);
        wire::send(&self.sock, &self.socket, req, &[], bound)?;
        let (reply, _) = wire::recv::<Reply>(&self.sock, &self.socket, "server", bound)?;
        Ok(reply)
    }
}

/// What the client measured itself.
#[derive(Debug)]
struct ClientCounters {
    requests: AtomicU64,
    rows: AtomicU64,
    errors: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    /// The server's table counters at the last `reset_stats`.
    base: Mutex<Option<StatsSnapshot>>,
}

#[derive(Debug)]
struct Inner {
    target: ServiceAddress,
    options: ClientOptions,
    manifest: Manifest,
    layout: EngramLayout,
    table: String,
    backend: String,
    row_bytes: usize,
    slot_rows: usize,
    client_id: AtomicU64,
    conn: RwLock<Arc<Conn>>,
    counters: ClientCounters,
}

/// A table served by `engram serve`, with the in-process store's API. Cheap to clone,
/// `Send + Sync`.
#[derive(Debug, Clone)]
pub struct RemoteStore {
    inner: Arc<Inner>,
}

impl RemoteStore {
    /// Attaches to the service at `target` (`unix:PATH[#TABLE]`).
    pub fn connect(target: &str, options: &ClientOptions) -> Result<Self> {
        Self::open(&ServiceAddress::parse(target)?, options)
    }

    /// Attaches to the service at `target`.
    pub fn open(target: &ServiceAddress, options: &ClientOptions) -> Result<Self> {
        let a = Conn::connect(target, options)?;
        let layout = a.manifest.derive_layout(&a.conn.socket)?;
        let slot_rows = a.conn.layout.slot_rows as usize;
        tracing::info!(target: "engram_service", socket = %target.socket.display(), table = %a.table, client = a.client_id, slots = a.conn.layout.slots, slot_rows, "attached to the service");
        Ok(Self {
            inner: Arc::new(Inner {
                target: target.clone(),
                options: options.clone(),
                row_bytes: a.manifest.row_bytes as usize,
                manifest: a.manifest,
                layout,
                table: a.table,
                backend: a.backend,
                slot_rows,
                client_id: AtomicU64::new(a.client_id),
                conn: RwLock::new(Arc::new(a.conn)),
                counters: ClientCounters {
                    requests: AtomicU64::new(0),
                    rows: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    latency: Mutex::new(new_hist()),
                    base: Mutex::new(None),
                },
            }),
        })
    }

    /// The served table's name.
    pub fn table_name(&self) -> &str {
        &self.inner.table
    }

    /// The server's socket this client is attached to.
    pub fn socket(&self) -> &Path {
        &self.inner.target.socket
    }

    /// This client's number on the server (changes when it reconnects).
    pub fn client_id(&self) -> u64 {
        self.inner.client_id.load(Ordering::Relaxed)
    }

    /// The live connection, connecting again if the last one broke.
    fn conn(&self) -> Result<Arc<Conn>> {
        let current = match self.inner.conn.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        };
        if !current.is_broken() {
            return Ok(current);
        }
        let mut g = match self.inner.conn.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if !g.is_broken() {
            return Ok(Arc::clone(&g));
        }
        let a = Conn::connect(&self.inner.target, &self.inner.options)?;
        if let Some(why) = incompatible(&self.inner.manifest, &a.manifest) {
            return Err(ServiceError::TableChanged {
                table: a.table,
                reason: why,
            });
        }
        if (a.conn.layout.slot_rows as usize) < self.inner.slot_rows {
            return Err(ServiceError::TableChanged {
                table: a.table,
                reason: format!(
                    "the server now grants {} rows per request, this client was opened with {}",
                    a.conn.layout.slot_rows, self.inner.slot_rows
                ),
            });
        }
        tracing::info!(target: "engram_service", socket = %self.inner.target.socket.display(), client = a.client_id, "reconnected to the service");
        self.inner.client_id.store(a.client_id, Ordering::Relaxed);
        *g = Arc::new(a.conn);
        Ok(Arc::clone(&g))
    }

    fn check(&self, layer: usize, ids: &[u64], out_len: usize) -> engram_store::Result<()> {
        self.check_batch(layer, ids)?;
        let need = ids.len() * self.inner.row_bytes;
        if out_len != need {
            return Err(engram_store::Error::Shape {
                what: "output bytes (rows x row_bytes)",
                expected: need,
                found: out_len,
            });
        }
        Ok(())
    }

    fn record(&self, rows: usize, t0: Instant, ok: bool) {
        let c = &self.inner.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.rows.fetch_add(rows as u64, Ordering::Relaxed);
        if !ok {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        record_ns(&mut lock(&c.latency), t0.elapsed().as_nanos() as u64);
    }

    /// The service's stats as this client's connection sees them (its table, itself).
    pub fn service_stats(&self) -> Result<ServiceStats> {
        match self.conn()?.control(&Request::Stats)? {
            Reply::Stats(s) => Ok(s),
            other => Err(violation(
                "server",
                "reply to stats",
                "stats",
                format!("{other:?}"),
            )),
        }
    }

    fn table_snapshot(&self) -> Result<StatsSnapshot> {
        let s = self.service_stats()?;
        s.tables
            .into_iter()
            .find(|t| t.name == self.inner.table)
            .map(|t| t.store)
            .ok_or_else(|| {
                violation(
                    "server",
                    "stats",
                    format!("table {}", self.inner.table),
                    "none",
                )
            })
    }
}

/// The server's counters since `base`, with this client's own request view.
fn since(now: &StatsSnapshot, base: Option<&StatsSnapshot>) -> StatsSnapshot {
    let mut s = now.clone();
    if let Some(b) = base {
        let sub = |a: &mut u64, b: u64| *a = a.saturating_sub(b);
        sub(&mut s.cache_hits, b.cache_hits);
        sub(&mut s.cache_misses, b.cache_misses);
        sub(&mut s.rows_backend, b.rows_backend);
        sub(&mut s.rows_unique, b.rows_unique);
        sub(&mut s.device_reads, b.device_reads);
        sub(&mut s.device_bytes, b.device_bytes);
        sub(&mut s.record_reads, b.record_reads);
        sub(&mut s.record_rows, b.record_rows);
        sub(&mut s.hedged_reads, b.hedged_reads);
        sub(&mut s.spec_batches, b.spec_batches);
        sub(&mut s.spec_rows_read, b.spec_rows_read);
        sub(&mut s.spec_dropped, b.spec_dropped);
        sub(&mut s.spec_failed, b.spec_failed);
    }
    let looked = s.cache_hits + s.cache_misses;
    s.cache_hit_rate = if looked > 0 {
        s.cache_hits as f64 / looked as f64
    } else {
        0.0
    };
    s.read_amplification = if s.rows_unique > 0 {
        s.device_bytes as f64 / (s.rows_unique * s.row_bytes.max(1)) as f64
    } else {
        0.0
    };
    s
}

impl RowSource for RemoteStore {
    fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    fn layout(&self) -> &EngramLayout {
        &self.inner.layout
    }

    fn row_bytes(&self) -> usize {
        self.inner.row_bytes
    }

    fn max_batch_rows(&self) -> usize {
        self.inner.slot_rows
    }

    fn backend_name(&self) -> String {
        format!("service({})", self.inner.backend)
    }

    fn lookup_into(&self, layer: usize, ids: &[u64], out: &mut [u8]) -> engram_store::Result<()> {
        self.check(layer, ids, out.len())?;
        if ids.is_empty() {
            return Ok(());
        }
        let t0 = Instant::now();
        let conn = self.conn()?;
        let r = conn
            .start(OP_LOOKUP, layer, ids, true, false)
            .and_then(|s| s.ok_or_else(|| conn.gone("no slot")))
            .and_then(|(slot, _)| conn.finish(slot, &self.inner.table, out));
        self.record(ids.len(), t0, r.is_ok());
        r.map_err(Into::into)
    }

    fn alloc_rows(&self, rows: usize) -> engram_store::Result<AlignedBuf> {
        AlignedBuf::new_pinned(rows * self.inner.row_bytes)
    }

    fn prefetch(&self, layer: usize, ids: &[u64], mut out: AlignedBuf) -> Ticket {
        if let Err(e) = out.set_len(ids.len() * self.inner.row_bytes) {
            return Ticket::ready(out, Err(e));
        }
        if let Err(e) = self.check(layer, ids, out.len()) {
            return Ticket::ready(out, Err(e));
        }
        if ids.is_empty() {
            return Ticket::ready(out, Ok(()));
        }
        let t0 = Instant::now();
        let started = self.conn().and_then(|conn| {
            conn.start(OP_LOOKUP, layer, ids, true, true)
                .map(|s| (conn, s))
        });
        match started {
            Ok((conn, Some((slot, _)))) => Ticket::from_pending(Box::new(RemoteRows {
                store: self.clone(),
                conn,
                slot,
                rows: ids.len(),
                out,
                t0,
            })),
            Ok((conn, None)) => Ticket::ready(out, Err(conn.gone("no slot").into())),
            Err(e) => {
                self.record(ids.len(), t0, false);
                Ticket::ready(out, Err(e.into()))
            }
        }
    }

    fn speculate(&self, layer: usize, ids: &[u64]) -> engram_store::Result<Speculation> {
        self.check_batch(layer, ids)?;
        if ids.is_empty() {
            return Ok(Speculation::not_taken());
        }
        let conn = self.conn()?;
        Ok(match conn.start(OP_SPECULATE, layer, ids, false, false)? {
            Some((_, tag)) => Speculation::from_pending(Box::new(RemoteSpeculation { conn, tag })),
            None => Speculation::not_taken(),
        })
    }

    fn stats(&self) -> engram_store::Result<StatsSnapshot> {
        let now = self.table_snapshot()?;
        let base = lock(&self.inner.counters.base).clone();
        let mut s = since(&now, base.as_ref());
        let c = &self.inner.counters;
        s.backend = self.backend_name();
        s.batches = c.requests.load(Ordering::Relaxed);
        s.rows_requested = c.rows.load(Ordering::Relaxed);
        s.errors = c.errors.load(Ordering::Relaxed);
        s.batch = summary("batch", &lock(&c.latency));
        Ok(s)
    }

    fn reset_stats(&self) -> engram_store::Result<()> {
        let now = self.table_snapshot()?;
        let c = &self.inner.counters;
        *lock(&c.base) = Some(now);
        c.requests.store(0, Ordering::Relaxed);
        c.rows.store(0, Ordering::Relaxed);
        c.errors.store(0, Ordering::Relaxed);
        lock(&c.latency).reset();
        Ok(())
    }
}

/// A prefetch in flight through the service.
#[derive(Debug)]
struct RemoteRows {
    store: RemoteStore,
    conn: Arc<Conn>,
    slot: u32,
    rows: usize,
    out: AlignedBuf,
    t0: Instant,
}

impl PendingRows for RemoteRows {
    fn is_ready(&self) -> bool {
        let mut st = lock(&self.conn.state);
        if st.done[self.slot as usize].is_some() || st.broken.is_some() {
            return true;
        }
        let _ = self.conn.reap(&mut st);
        st.done[self.slot as usize].is_some()
    }

    fn wait(self: Box<Self>) -> (AlignedBuf, engram_store::Result<()>) {
        let RemoteRows {
            store,
            conn,
            slot,
            rows,
            mut out,
            t0,
        } = *self;
        let r = conn.finish(slot, &store.inner.table, out.as_mut_slice());
        store.record(rows, t0, r.is_ok());
        (out, r.map_err(Into::into))
    }
}

/// A speculation sent to the service.
#[derive(Debug)]
struct RemoteSpeculation {
    conn: Arc<Conn>,
    tag: u64,
}

impl PendingSpeculation for RemoteSpeculation {
    fn cancel(self: Box<Self>) {
        let mut st = lock(&self.conn.state);
        if st.broken.is_some() {
            return;
        }
        // A cancel is a hint: sent only while the ring is at most half full, so a slot's
        // request always finds room.
        let head = self
            .conn
            .region
            .atomic_u32(H_SQ_HEAD)
            .load(Ordering::Acquire);
        if st.sq_tail.wrapping_sub(head) < self.conn.layout.slots {
            let sqe = Sqe {
                op: OP_CANCEL,
                slot: NO_SLOT,
                layer: 0,
                rows: 0,
                tag: self.tag,
            };
            let _ = self.conn.submit(&mut st, sqe);
        }
    }
}

/// One control request on a connection of its own (`engram stats`, `engram reload`):
/// no region, no slots.
pub fn request(socket: &Path, req: &Request) -> Result<Reply> {
    let sock = UnixStream::connect(socket).map_err(|e| ServiceError::Connect {
        socket: socket.to_path_buf(),
        reason: e.to_string(),
    })?;
    let bound = wire::Bound::within(CONTROL_TIMEOUT);
    let sent = wire::send(&sock, socket, req, &[], bound);
    match (wire::recv::<Reply>(&sock, socket, "server", bound), sent) {
        (Ok((Reply::Refused { reason }, _)), _) => Err(ServiceError::Refused {
            socket: socket.to_path_buf(),
            reason,
        }),
        (Ok((r, _)), _) => Ok(r),
        (Err(_), Err(e)) | (Err(e), Ok(())) => Err(e),
    }
}
