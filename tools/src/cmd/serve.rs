//! `engram serve TABLE... --socket PATH`: the storage-tier service. One process owns the
//! tables, the hot-row cache and the I/O; engines attach with `--service PATH` (Rust CLI,
//! moe-core), `unix:PATH` (C ABI, Python) and read rows through shared memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use engram_server::signals::{Signal, Signals};
use engram_server::{AllowRule, Server, ServerOptions, TableSpec};
use engram_store::size::parse_bytes;
use engram_store::{Profile, StoreOptions};

/// Serve tables to engine processes on this host.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    engram serve target/engram-tables/stdlib-moe-engram-b --socket engram.sock --pid-file engram.pid\n  \
    engram serve /data/v41 --socket /run/engram/engram.sock --cache-bytes 32G\n  \
    engram serve v41=/data/v41 demo=/data/demo --socket /run/engram/engram.sock --group engram \\\n      \
    --metrics-addr 127.0.0.1:9464\n\n\
    Clients: engram lookup /data/v41 --service /run/engram/engram.sock ...; moe-core generate \
    --service /run/engram/engram.sock --engram /data/v41; C: engram_store_open(\"unix:/run/engram/engram.sock\"); \
    Python: engram.Store(\"unix:/run/engram/engram.sock\"). With several tables a client names one \
    (unix:PATH#NAME, or the table's path).\n\n\
    Without --socket: /run/engram/engram.sock where /run/engram exists, else \
    $XDG_RUNTIME_DIR/engram.sock, else ./engram.sock (printed at start).\n\n\
    `engram reload --service PATH` (or SIGHUP: kill -HUP $(cat PIDFILE) with --pid-file) reopens \
    every table: requests in flight finish on the old one. SIGINT / SIGTERM stop the server. \
    Logs: RUST_LOG=engram_service=info.")]
/// Serve tables to engine processes on this host (Unix socket + shared memory).
pub struct Args {
    /// Tables to serve: PATH (named by its directory) or NAME=PATH.
    #[arg(required = true)]
    pub tables: Vec<String>,
    /// The Unix socket to listen on (created with mode 0600; a stale socket is replaced)
    /// [default: /run/engram/engram.sock where /run/engram exists, else
    /// $XDG_RUNTIME_DIR/engram.sock, else ./engram.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Write the server's process id here once it listens (removed when it stops), for
    /// `kill -HUP $(cat PATH)` (reload) and `kill $(cat PATH)` (stop).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Let this group connect (socket mode 0660 and group GROUP; name or number).
    #[arg(long)]
    pub group: Option<String>,
    /// Also allow this user id (repeatable; the socket's mode must let it connect too).
    #[arg(long)]
    pub allow_uid: Vec<u32>,
    /// Serve Prometheus text at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Hot-row cache budget per table (e.g. 512M, 32G; 0 = none): one copy for all clients.
    #[arg(long, default_value = "0")]
    pub cache_bytes: String,
    /// Seed every table's cache from its profile.bin when present.
    #[arg(long)]
    pub seed_cache: bool,
    /// I/O worker threads per table.
    #[arg(long, default_value_t = 2)]
    pub io_workers: usize,
    /// Reads in flight per table (store prefetch slots).
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Largest request in rows.
    #[arg(long, default_value_t = engram_store::store::DEFAULT_MAX_BATCH_ROWS)]
    pub max_batch_rows: usize,
    /// Most clients attached at once.
    #[arg(long, default_value_t = engram_server::DEFAULT_MAX_CLIENTS)]
    pub max_clients: usize,
    /// Most requests in flight per client (slots; a power of two is granted).
    #[arg(long, default_value_t = engram_server::DEFAULT_MAX_CLIENT_SLOTS)]
    pub max_client_slots: u32,
    /// Most shared-memory bytes per client (e.g. 256M).
    #[arg(long, default_value = "1G")]
    pub max_client_bytes: String,
    /// Longest poll of a client's ring (microseconds) a client may ask of the server.
    #[arg(long, default_value_t = engram_server::DEFAULT_MAX_SPIN_US)]
    pub max_spin_us: u32,
    /// How the tables are read (backend, cache, verification).
    #[command(flatten)]
    pub read: super::read_args::ReadArgs,
}

/// A line on stderr; a closed stderr (a pipe whose reader went away) must not stop the
/// server, so write errors are ignored.
fn say(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "engram serve: {args}");
}

/// The directory a system-wide service's socket lives in (systemd's RuntimeDirectory).
const SYSTEM_SOCKET_DIR: &str = "/run/engram";
/// The socket's file name in the default directories.
const SOCKET_NAME: &str = "engram.sock";

/// `--socket`'s default: `SYSTEM_SOCKET_DIR` where it exists, else `$XDG_RUNTIME_DIR`,
/// else the current directory.
pub fn default_socket() -> PathBuf {
    let system = Path::new(SYSTEM_SOCKET_DIR);
    if system.is_dir() {
        return system.join(SOCKET_NAME);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_dir() => dir.join(SOCKET_NAME),
        _ => PathBuf::from(SOCKET_NAME),
    }
}

/// Errors, with what to create, when the socket's directory does not exist.
fn check_socket_dir(socket: &Path) -> Result<()> {
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Ok(()),
    };
    anyhow::ensure!(
        dir.is_dir(),
        "cannot listen on {}: the directory {} does not exist; create it (for a system service: \
         `sudo install -d -m 0755 -o $(id -un) {}`, or systemd's RuntimeDirectory=engram) or \
         pass --socket PATH in a directory you can write (without --socket: {})",
        socket.display(),
        dir.display(),
        dir.display(),
        default_socket().display()
    );
    Ok(())
}

/// Writes this process's id to `path` atomically (a temporary file renamed over it).
fn write_pid_file(path: &Path) -> Result<()> {
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing the PID file {}", path.display()))
}

/// Runs the command until SIGINT or SIGTERM.
pub fn run(args: Args) -> Result<ExitCode> {
    // Before any thread starts, so every thread inherits the mask.
    let signals = Signals::block().context("blocking signals")?;
    let tables = args
        .tables
        .iter()
        .map(|t| TableSpec::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let socket = args.socket.clone().unwrap_or_else(default_socket);
    check_socket_dir(&socket)?;
    let mut o = ServerOptions::new(socket.clone(), tables);
    o.store = StoreOptions {
        backend: serve_backend(&args.read)?,
        io_workers: args.io_workers,
        max_in_flight: args.max_in_flight,
        max_batch_rows: args.max_batch_rows,
        cache_bytes: parse_bytes(&args.cache_bytes)?,
        // Mooncake serves the layer files only (as engram lookup|bench --backend mooncake).
        records: !args.read.is_mooncake(),
        ..StoreOptions::default()
    };
    if args.seed_cache && o.store.cache_bytes > 0 {
        // One profile for all tables only when there is one table.
        if let [t] = &o.tables[..] {
            let p = t.path.join("profile.bin");
            if p.exists() {
                o.store.profile = Some(Profile::read(&p)?);
            }
        } else {
            anyhow::bail!("--seed-cache serves one table at a time");
        }
    }
    o.max_clients = args.max_clients;
    o.max_client_slots = args.max_client_slots;
    o.max_client_bytes = parse_bytes(&args.max_client_bytes)?;
    o.max_spin_us = args.max_spin_us;
    o.group = args
        .group
        .as_deref()
        .map(engram_server::auth::parse_group)
        .transpose()?;
    o.allow = AllowRule {
        uids: args.allow_uid.clone(),
        gid: o.group,
    };
    o.metrics_addr = args.metrics_addr;
    let server = Server::start(o)?;
    if let Some(p) = &args.pid_file {
        write_pid_file(p)?;
    }
    say(format_args!(
        "{} table(s) on {}{}",
        args.tables.len(),
        socket.display(),
        server
            .metrics_addr()
            .map(|a| format!(", metrics at http://{a}/metrics"))
            .unwrap_or_default()
    ));
    // Reload on SIGHUP until SIGINT or SIGTERM.
    while let Signal::Reload = signals.wait()? {
        for r in server.reload() {
            say(format_args!("reload {}: {}", r.table, r.outcome));
        }
    }
    say(format_args!("stopping"));
    server.stop();
    if let Some(p) = &args.pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(ExitCode::SUCCESS)
}

/// The backend options of the served stores: with `--backend mooncake`, every table (and
/// every reload of it) reads through engines on the Mooncake cluster `--mooncake` names,
/// the table's published version checked when its store opens; the cluster unreachable or
/// the table not published is an error, never the local disk instead.
fn serve_backend(read: &super::read_args::ReadArgs) -> Result<engram_store::BackendOptions> {
    let mut backend = read.backend_options()?;
    if read.is_mooncake() {
        let client = read.mooncake_client()?;
        backend.engine = Some(std::sync::Arc::new(MooncakeTables {
            client,
            tables: std::sync::Mutex::new(Vec::new()),
        }));
    } else if read.mooncake.is_some() {
        anyhow::bail!("--mooncake is used with --backend mooncake");
    }
    Ok(backend)
}

/// Mooncake engines for the tables a server opens: one factory per table version (its
/// descriptor checked once), made when the first engine of that version is built.
#[derive(Debug)]
struct MooncakeTables {
    client: std::sync::Arc<engram_mooncake::Client>,
    /// (table id, factory) of every table version opened so far (a few: tables x reloads).
    tables: std::sync::Mutex<Vec<(String, std::sync::Arc<engram_mooncake::MooncakeFactory>)>>,
}

impl MooncakeTables {
    fn factory(
        &self,
        table: &engram_store::Table,
    ) -> engram_store::Result<std::sync::Arc<engram_mooncake::MooncakeFactory>> {
        use engram_store::EngineFactory as _;
        let id = table.manifest().table_id.clone();
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, f)) = tables.iter().find(|(t, _)| *t == id) {
            return Ok(std::sync::Arc::clone(f));
        }
        let f = engram_mooncake::MooncakeFactory::new(std::sync::Arc::clone(&self.client), table)
            .map_err(|e| engram_store::Error::Unavailable {
            what: "Mooncake",
            reason: e.to_string(),
        })?;
        debug_assert_eq!(f.name(), engram_mooncake::BACKEND_NAME);
        let f = std::sync::Arc::new(f);
        tables.push((id, std::sync::Arc::clone(&f)));
        Ok(f)
    }
}

impl engram_store::EngineFactory for MooncakeTables {
    fn name(&self) -> &'static str {
        engram_mooncake::BACKEND_NAME
    }

    fn engine(
        &self,
        table: &std::sync::Arc<engram_store::Table>,
        staging: &engram_store::reads::Staging,
    ) -> engram_store::Result<Box<dyn engram_store::reads::Engine>> {
        self.factory(table)?.engine(table, staging)
    }
}
