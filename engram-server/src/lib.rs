//! The Engram storage-tier server, behind `engram serve`: one process owns the tables, the
//! hot-row cache and the I/O; every engine on the host attaches to it with
//! `engram-client`'s `RemoteStore`.
//!
//! [`Server`] opens the tables read-only, listens on a Unix socket (mode 0600, or 0660
//! with a group), checks each peer's credentials ([`auth`]), and gives each client its own
//! shared region (submission and completion rings, per-slot id and row areas) and its own
//! serving thread ([`conn`]). Rows are written once, by the server, into memory the client
//! reads; nothing row-sized crosses the socket. It serves Prometheus text ([`http`]),
//! reloads tables on request or on SIGHUP ([`signals`]) and stops on SIGTERM.
//!
//! The protocol, the socket framing and the shared-memory region it serves are
//! `engram-client`'s ([`engram_client::protocol`]): one definition for both sides.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod conn;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod metrics;
pub mod signals;
pub mod table;

pub use auth::AllowRule;
pub use engram_client::stats::ServiceStats;
pub use table::TableSpec;

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engram_store::{Store, StoreOptions};

use auth::Peer;
use conn::{Conn, End};
use engram_client::bell::Doorbell;
use engram_client::error::{Result, ServiceError, io};
use engram_client::protocol::{
    H_MAGIC, H_ROW_BYTES, H_SLOT_ROWS, H_SLOTS, H_VERSION, MAX_SLOT_ROWS, MAX_SLOTS, MAX_SPIN_US,
    MAX_TABLE_NAME_BYTES, PROTOCOL_VERSION, REGION_MAGIC, RegionLayout, Reply, Request,
};
use engram_client::shm::Region;
use engram_client::stats::TableStats;
use engram_client::wire;
use metrics::{ClientMetrics, Counters, ServiceMetrics};
use table::Served;

/// Hard upper bound on `max_clients`.
pub const MAX_CLIENTS_LIMIT: usize = 4096;
/// Default most clients attached at once.
pub const DEFAULT_MAX_CLIENTS: usize = 64;
/// Default most slots (requests in flight) per client.
pub const DEFAULT_MAX_CLIENT_SLOTS: u32 = 64;
/// Default most bytes of shared region per client.
pub const DEFAULT_MAX_CLIENT_BYTES: u64 = 1 << 30;
/// Default longest server-side spin a client may ask for, in microseconds.
pub const DEFAULT_MAX_SPIN_US: u32 = 200;
/// How long a connecting peer has to say hello (the whole frame, however it is sent), and
/// a control request or reply to cross whole.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections that have not said hello yet (or wait for a stats or reload answer);
/// more are refused at once. Each holds a thread for at most [`HANDSHAKE_TIMEOUT`].
pub const MAX_HANDSHAKES: usize = 64;
/// How long stopping waits for client threads to end before leaving them behind (each
/// one notices the stop within its idle wait; only a read stuck in the store is slower).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often the accept loop checks for shutdown.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The Unix socket to listen on (created; an existing socket there is replaced).
    pub socket: PathBuf,
    /// The tables to serve (at least one).
    pub tables: Vec<TableSpec>,
    /// How each table's store is opened (its cache budget is the one copy every client
    /// shares).
    pub store: StoreOptions,
    /// Most clients attached at once (at most [`MAX_CLIENTS_LIMIT`]).
    pub max_clients: usize,
    /// Most slots (requests in flight) granted to one client.
    pub max_client_slots: u32,
    /// Most bytes of shared region granted to one client.
    pub max_client_bytes: u64,
    /// Longest a client may ask the server to poll its ring, in microseconds.
    pub max_spin_us: u32,
    /// Who may connect besides the server's own user and root.
    pub allow: AllowRule,
    /// Group that may connect (socket mode 0660 and the allow rule); `None`: mode 0600.
    pub group: Option<u32>,
    /// Serve Prometheus text at `http://ADDR/metrics`.
    pub metrics_addr: Option<SocketAddr>,
}

impl ServerOptions {
    /// Options with the defaults (the `DEFAULT_*` limits), serving `tables` at `socket`.
    pub fn new(socket: PathBuf, tables: Vec<TableSpec>) -> Self {
        Self {
            socket,
            tables,
            store: StoreOptions {
                max_in_flight: 256,
                ..StoreOptions::default()
            },
            max_clients: DEFAULT_MAX_CLIENTS,
            max_client_slots: DEFAULT_MAX_CLIENT_SLOTS,
            max_client_bytes: DEFAULT_MAX_CLIENT_BYTES,
            max_spin_us: DEFAULT_MAX_SPIN_US,
            allow: AllowRule::default(),
            group: None,
            metrics_addr: None,
        }
    }
}

/// State shared by the server's threads.
#[derive(Debug)]
pub struct Shared {
    /// The options the server was started with.
    pub options: ServerOptions,
    /// The served tables.
    pub tables: Vec<Served>,
    /// What the service counts.
    pub metrics: ServiceMetrics,
    /// Set when the server is stopping.
    pub stop: AtomicBool,
    clients: AtomicUsize,
    /// Connections between accept and the end of their handshake.
    handshakes: AtomicUsize,
    next_client: AtomicU64,
    owner: u32,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A running server. Dropping it stops it (clients see the connection close) and removes
/// the socket.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    http: Option<http::MetricsServer>,
}

fn prepare_socket(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Err(ServiceError::Invalid {
                what: "socket",
                reason: format!("another server is listening on {}", path.display()),
            }),
            Err(_) => std::fs::remove_file(path).map_err(|e| io("remove stale socket", path, e)),
        },
        Ok(_) => Err(ServiceError::Invalid {
            what: "socket",
            reason: format!("{} exists and is not a socket", path.display()),
        }),
    }
}

impl Server {
    /// Opens every table, binds the socket (mode 0600, or 0660 and group `group`) and
    /// starts accepting clients.
    pub fn start(options: ServerOptions) -> Result<Self> {
        if options.tables.is_empty() {
            return Err(ServiceError::Invalid {
                what: "tables",
                reason: "serve at least one table".into(),
            });
        }
        if options.max_clients == 0 {
            return Err(ServiceError::Invalid {
                what: "max clients",
                reason: format!(
                    "0 would refuse every client: give 1 to {MAX_CLIENTS_LIMIT} (--max-clients)"
                ),
            });
        }
        if options.max_clients > MAX_CLIENTS_LIMIT {
            return Err(ServiceError::Limit {
                what: "max clients",
                name: "MAX_CLIENTS_LIMIT",
                limit: MAX_CLIENTS_LIMIT as u64,
                found: options.max_clients as u64,
            });
        }
        if options.max_client_slots == 0 || options.max_client_slots > MAX_SLOTS {
            return Err(ServiceError::Limit {
                what: "slots per client",
                name: "MAX_SLOTS",
                limit: u64::from(MAX_SLOTS),
                found: u64::from(options.max_client_slots),
            });
        }
        if options.store.max_in_flight < options.max_clients {
            return Err(ServiceError::Invalid {
                what: "store max_in_flight",
                reason: format!(
                    "{} prefetch slots for up to {} clients: give every client at least one \
                     (--max-in-flight >= --max-clients)",
                    options.store.max_in_flight, options.max_clients
                ),
            });
        }
        for (i, t) in options.tables.iter().enumerate() {
            if options.tables[..i].iter().any(|o| o.name == t.name) {
                return Err(ServiceError::Invalid {
                    what: "tables",
                    reason: format!("two tables are named {:?}; give NAME=PATH", t.name),
                });
            }
        }
        let mut tables = Vec::with_capacity(options.tables.len());
        for spec in &options.tables {
            tables.push(Served::open(spec, &options.store)?);
            tracing::info!(target: "engram_service", table = %spec.name, path = %spec.path.display(), "serving");
        }
        let path = options.socket.clone();
        prepare_socket(&path)?;
        let listener = UnixListener::bind(&path).map_err(|e| io("bind", &path, e))?;
        let bound = BoundSocket::new(&path);
        let server = Self::listen(options, tables, listener, &path);
        if server.is_err() {
            bound.remove();
        }
        server
    }

    /// Everything after the bind: permissions, metrics, the accept thread.
    fn listen(
        options: ServerOptions,
        tables: Vec<Served>,
        listener: UnixListener,
        path: &Path,
    ) -> Result<Self> {
        let path = path.to_path_buf();
        let mode = if options.group.is_some() {
            0o660
        } else {
            0o600
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io("chmod", &path, e))?;
        if let Some(g) = options.group {
            std::os::unix::fs::chown(&path, None, Some(g)).map_err(|e| io("chown", &path, e))?;
        }
        listener
            .set_nonblocking(true)
            .map_err(|e| io("listen", &path, e))?;
        let mut allow = options.allow.clone();
        if allow.gid.is_none() {
            allow.gid = options.group;
        }
        let shared = Arc::new(Shared {
            options: ServerOptions { allow, ..options },
            tables,
            metrics: ServiceMetrics::default(),
            stop: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            next_client: AtomicU64::new(1),
            owner: rustix::process::geteuid().as_raw(),
            threads: Mutex::new(Vec::new()),
        });
        let http = match shared.options.metrics_addr {
            Some(addr) => Some(http::MetricsServer::start(addr, Arc::clone(&shared))?),
            None => None,
        };
        let sh = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("engram-accept".into())
            .spawn(move || accept_loop(&sh, &listener))
            .map_err(|e| io("spawn", &path, e))?;
        tracing::info!(target: "engram_service", socket = %path.display(), mode = format!("{mode:o}"), "listening");
        Ok(Self {
            shared,
            accept: Some(accept),
            http,
        })
    }

    /// The socket the server listens on.
    pub fn socket(&self) -> &Path {
        &self.shared.options.socket
    }

    /// Where `/metrics` is served (the bound port when asked for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(http::MetricsServer::addr)
    }

    /// Clients attached now.
    pub fn clients(&self) -> usize {
        self.shared.clients.load(Ordering::Relaxed)
    }

    /// Reopens every table (see [`Served::reload`]).
    pub fn reload(&self) -> Vec<engram_client::protocol::ReloadOutcome> {
        self.shared.reload()
    }

    /// Counters and latencies of every table and client.
    pub fn stats(&self) -> ServiceStats {
        self.shared.stats()
    }

    /// [`Server::stats`] as Prometheus text.
    pub fn prometheus(&self) -> String {
        self.shared.stats().prometheus()
    }

    /// Stops accepting, disconnects every client and waits for their threads.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let threads = self
            .shared
            .threads
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        join_by(threads, Instant::now() + SHUTDOWN_GRACE);
        if let Some(h) = self.http.take() {
            h.stop();
        }
        let _ = std::fs::remove_file(&self.shared.options.socket);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Joins `threads` that end before `deadline`; the others are left running (detached) and
/// named in the log: no client can hold the server's stop past the deadline.
fn join_by(threads: Vec<JoinHandle<()>>, deadline: Instant) {
    let mut left = threads;
    while !left.is_empty() && Instant::now() < deadline {
        let (done, running): (Vec<_>, Vec<_>) = left.into_iter().partition(|t| t.is_finished());
        for t in done {
            let _ = t.join();
        }
        left = running;
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if !left.is_empty() {
        tracing::warn!(target: "engram_service", threads = left.len(), "client threads still running at the shutdown deadline; leaving them");
    }
}

/// The socket file this server bound (device and inode), to remove it on a failed start
/// but never a file another server put at the same path since.
struct BoundSocket<'a> {
    path: &'a Path,
    id: Option<(u64, u64)>,
}

impl<'a> BoundSocket<'a> {
    fn new(path: &'a Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let id = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Self { path, id }
    }

    fn remove(self) {
        use std::os::unix::fs::MetadataExt;
        let now = std::fs::symlink_metadata(self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_some() && now == self.id {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

/// Counts a connection as in its handshake until dropped.
struct HandshakeGuard<'a>(&'a Shared);

impl Drop for HandshakeGuard<'_> {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// A bound for one control frame of a client: [`HANDSHAKE_TIMEOUT`], or the server
    /// stopping.
    fn bound(&self) -> wire::Bound<'_> {
        wire::Bound::within(HANDSHAKE_TIMEOUT).or_stop(&self.stop)
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener) {
    let path = shared.options.socket.clone();
    while !shared.stop.load(Ordering::Relaxed) {
        let mut fds = [rustix::event::PollFd::new(
            listener,
            rustix::event::PollFlags::IN,
        )];
        let t = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: ACCEPT_POLL.as_nanos() as i64,
        };
        let _ = rustix::event::poll(&mut fds, Some(&t));
        let sock = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!(target: "engram_service", error = %e, "accept failed");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
        if shared.handshakes.fetch_add(1, Ordering::Relaxed) >= MAX_HANDSHAKES {
            shared.handshakes.fetch_sub(1, Ordering::Relaxed);
            let reason = format!(
                "{MAX_HANDSHAKES} connections are still in their handshake (MAX_HANDSHAKES); \
                 try again"
            );
            shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "engram_service", %reason, "refused");
            let _ = wire::send(
                &sock,
                &path,
                &Reply::Refused { reason },
                &[],
                wire::Bound::within(Duration::ZERO),
            );
            continue;
        }
        let sh = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("engram-client".into())
            .spawn(move || handle(&sh, sock));
        match spawned {
            Ok(h) => {
                if let Ok(mut v) = shared.threads.lock() {
                    v.retain(|t| !t.is_finished());
                    v.push(h);
                }
            }
            Err(e) => {
                shared.handshakes.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(target: "engram_service", socket = %path.display(), error = %e, "cannot start a client thread")
            }
        }
    }
}

fn refuse(shared: &Shared, sock: &UnixStream, peer: Option<&Peer>, reason: String) {
    shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(target: "engram_service", pid = peer.map(|p| p.pid), uid = peer.map(|p| p.uid), %reason, "refused");
    let _ = wire::send(
        sock,
        &shared.options.socket,
        &Reply::Refused { reason },
        &[],
        shared.bound(),
    );
}

/// One connection, from credentials to goodbye.
fn handle(shared: &Arc<Shared>, sock: UnixStream) {
    let handshake = HandshakeGuard(shared);
    let path = &shared.options.socket;
    let peer = match auth::peer(&sock, path) {
        Ok(p) => p,
        Err(e) => return refuse(shared, &sock, None, e.to_string()),
    };
    if let Some(why) = shared.options.allow.refuses(shared.owner, &peer) {
        return refuse(shared, &sock, Some(&peer), why);
    }
    let req = match wire::recv::<Request>(&sock, path, "client", shared.bound()) {
        Ok((r, _)) => r,
        Err(e) => {
            tracing::debug!(target: "engram_service", pid = peer.pid, error = %e, "no request");
            return;
        }
    };
    let reply = match req {
        Request::Stats => Reply::Stats(shared.stats()),
        Request::Reload => shared.reload_for(peer.uid),
        Request::Hello {
            version,
            table,
            slots,
            slot_rows,
            server_spin_us,
        } => {
            if let Err(reason) = attach(
                shared,
                handshake,
                sock,
                peer,
                version,
                table,
                slots,
                slot_rows,
                server_spin_us,
            ) {
                shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "engram_service", pid = peer.pid, uid = peer.uid, %reason, "refused");
            }
            return;
        }
    };
    let _ = wire::send(&sock, path, &reply, &[], shared.bound());
}

/// Decrements the attached-client count however the client's thread ends.
struct ClientGuard<'a>(&'a Shared, &'a Served, u64);

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
        self.1.clients.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.remove_client(self.2);
    }
}

/// Attaches a data client and serves it; `Err` is the refusal already sent.
#[allow(clippy::too_many_arguments)]
fn attach(
    shared: &Arc<Shared>,
    handshake: HandshakeGuard<'_>,
    sock: UnixStream,
    peer: Peer,
    version: u32,
    table: Option<String>,
    slots: u32,
    slot_rows: u32,
    server_spin_us: u32,
) -> std::result::Result<(), String> {
    let path = &shared.options.socket;
    let no = |reason: String| {
        let _ = wire::send(
            &sock,
            path,
            &Reply::Refused {
                reason: reason.clone(),
            },
            &[],
            shared.bound(),
        );
        Err(reason)
    };
    if version != PROTOCOL_VERSION {
        return no(format!(
            "protocol version {version}; this server speaks {PROTOCOL_VERSION}"
        ));
    }
    let served = match choose_table(shared, table) {
        Ok(s) => s,
        Err(reason) => return no(reason),
    };
    let n = shared.clients.fetch_add(1, Ordering::Relaxed);
    served.clients.fetch_add(1, Ordering::Relaxed);
    let id = shared.next_client.fetch_add(1, Ordering::Relaxed);
    let _guard = ClientGuard(shared, served, id);
    if n >= shared.options.max_clients {
        return no(format!(
            "{n} clients are attached (limit {}, --max-clients)",
            shared.options.max_clients
        ));
    }
    let state = served.current();
    let (layout, region, bells) = match client_region(shared, &state.store, id, slots, slot_rows) {
        Ok(made) => made,
        Err(reason) => return no(reason),
    };
    let ((sq_bell, sq_theirs), (cq_bell, cq_theirs)) = bells;
    let welcome = Reply::Welcome {
        version: PROTOCOL_VERSION,
        client_id: id,
        table: served.name.clone(),
        manifest: state.manifest_json.clone(),
        backend: state.store.backend_kind().name().to_string(),
        slots: layout.slots,
        slot_rows: layout.slot_rows,
    };
    if let Err(e) = wire::send(
        &sock,
        path,
        &welcome,
        &[region.fd(), sq_theirs.as_fd(), cq_theirs.as_fd()],
        shared.bound(),
    ) {
        tracing::debug!(target: "engram_service", client = id, error = %e, "welcome not delivered");
        return Ok(());
    }
    let metrics = Arc::new(ClientMetrics {
        id,
        uid: peer.uid,
        pid: peer.pid,
        table: served.name.clone(),
        counters: Counters::default(),
    });
    shared.metrics.add_client(Arc::clone(&metrics));
    tracing::info!(target: "engram_service", client = id, pid = peer.pid, uid = peer.uid, table = %served.name, slots = layout.slots, slot_rows = layout.slot_rows, "attached");
    let spin = Duration::from_micros(u64::from(
        server_spin_us
            .min(shared.options.max_spin_us)
            .min(MAX_SPIN_US),
    ));
    let epoch = state.epoch;
    drop(state);
    // The client's ends live in the client only: its closing them is a hang-up here.
    drop((sq_theirs, cq_theirs));
    drop(handshake);
    let mut conn = match Conn::new(
        shared, served, epoch, sock, region, layout, sq_bell, cq_bell, spin, metrics,
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(target: "engram_service", client = id, error = %e, "cannot serve");
            return Ok(());
        }
    };
    report_end(shared, id, &peer, conn.serve());
    drop(conn);
    Ok(())
}

/// The table a client asked for (`None`: the only one served), or the refusal naming what
/// is served.
fn choose_table(shared: &Shared, table: Option<String>) -> std::result::Result<&Served, String> {
    let served = match &table {
        Some(t) if t.len() > MAX_TABLE_NAME_BYTES => {
            return Err(format!(
                "table name of {} bytes (MAX_TABLE_NAME_BYTES {MAX_TABLE_NAME_BYTES})",
                t.len()
            ));
        }
        Some(t) => shared.tables.iter().find(|s| s.matches(t)),
        None if shared.tables.len() == 1 => shared.tables.first(),
        None => None,
    };
    let names = || {
        shared
            .tables
            .iter()
            .map(|t| format!("{} ({})", t.name, t.path.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    served.ok_or_else(|| match table {
        Some(t) => format!("no table {t:?} here; this service serves {}", names()),
        None => format!(
            "this service serves {} tables ({}); name one: unix:PATH#NAME",
            shared.tables.len(),
            names()
        ),
    })
}

/// The bells of a client: (our end, the end sent to the client) for submissions, then for
/// completions.
type Bells = ((Doorbell, OwnedFd), (Doorbell, OwnedFd));

/// The shared-memory region of client `id` and its doorbells: the slots and rows it asked
/// for, clamped to the server's limits and the store's batch size; `Err` is the refusal.
fn client_region(
    shared: &Shared,
    store: &Store,
    id: u64,
    slots: u32,
    slot_rows: u32,
) -> std::result::Result<(RegionLayout, Region, Bells), String> {
    let slots = slots.clamp(1, shared.options.max_client_slots.min(MAX_SLOTS));
    let slots = 1u32 << (31 - slots.leading_zeros());
    let slot_rows = slot_rows.clamp(
        1,
        MAX_SLOT_ROWS.min(store.max_batch_rows().min(u32::MAX as usize) as u32),
    );
    let Ok(row_bytes) = u32::try_from(store.row_bytes()) else {
        return Err("rows wider than 4 GiB".into());
    };
    let layout = match RegionLayout::new(slots, slot_rows, row_bytes) {
        Ok(l) => l,
        Err(e) => return Err(e.to_string()),
    };
    if layout.bytes as u64 > shared.options.max_client_bytes {
        return Err(format!(
            "{slots} slots x {slot_rows} rows need a region of {} bytes, above the limit {} (--max-client-bytes); ask for fewer",
            layout.bytes, shared.options.max_client_bytes
        ));
    }
    let made = (|| -> Result<(Region, Bells)> {
        let region = Region::create(&format!("engram-client-{id}"), layout.bytes)?;
        region.write(H_MAGIC, &REGION_MAGIC.to_le_bytes())?;
        region.write(H_VERSION, &PROTOCOL_VERSION.to_le_bytes())?;
        region.write(H_SLOTS, &slots.to_le_bytes())?;
        region.write(H_SLOT_ROWS, &slot_rows.to_le_bytes())?;
        region.write(H_ROW_BYTES, &row_bytes.to_le_bytes())?;
        Ok((region, (Doorbell::pair()?, Doorbell::pair()?)))
    })();
    let (region, bells) = made.map_err(|e| e.to_string())?;
    Ok((layout, region, bells))
}

/// Logs how a client's connection ended; a protocol violation is counted.
fn report_end(shared: &Shared, id: u64, peer: &Peer, end: End) {
    match end {
        End::HangUp => tracing::info!(target: "engram_service", client = id, "detached"),
        End::Shutdown => {
            tracing::info!(target: "engram_service", client = id, "disconnected (server stopping)")
        }
        End::Violation(e) => {
            shared.metrics.violations.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "engram_service", client = id, pid = peer.pid, error = %e, "disconnected");
        }
    }
}

impl Shared {
    /// Requests one client may have in its table's store at once: the store's prefetch
    /// slots shared by the most clients allowed (at least 1).
    pub fn client_in_flight(&self) -> usize {
        (self.options.store.max_in_flight / self.options.max_clients).max(1)
    }

    /// Reopens every table (see [`Served::reload`]).
    pub fn reload(&self) -> Vec<engram_client::protocol::ReloadOutcome> {
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        self.tables
            .iter()
            .map(|t| t.reload(&self.options.store))
            .collect()
    }

    /// A reload asked by `uid` (the server's owner or root only).
    pub fn reload_for(&self, uid: u32) -> Reply {
        if uid != self.owner && uid != 0 {
            return Reply::Refused {
                reason: format!("only uid {} or root may reload tables", self.owner),
            };
        }
        Reply::Reloaded {
            tables: self.reload(),
        }
    }

    /// Counters and latencies of every table and client.
    pub fn stats(&self) -> ServiceStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServiceStats {
            socket: self.options.socket.display().to_string(),
            clients: self.clients.load(Ordering::Relaxed) as u64,
            connections_total: g(&self.metrics.connections),
            refused_total: g(&self.metrics.refused),
            protocol_violations_total: g(&self.metrics.violations),
            reloads_total: g(&self.metrics.reloads),
            tables: self
                .tables
                .iter()
                .map(|t| {
                    let state = t.current();
                    TableStats {
                        name: t.name.clone(),
                        path: t.path.display().to_string(),
                        backend: state.store.backend_kind().name().to_string(),
                        epoch: state.epoch,
                        clients: g(&t.clients),
                        requests: metrics::table_view(&t.counters),
                        store: state.store.stats(),
                    }
                })
                .collect(),
            client_list: self
                .metrics
                .clients()
                .iter()
                .map(|c| metrics::client_view(c))
                .collect(),
        }
    }
}
