//! The read options every command that opens a store takes (`lookup`, `bench`), in one
//! place, so any read path can be checked for bytes from the command line.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use engram_mooncake::ClientConfig;
use engram_store::size::parse_bytes;
use engram_store::{BackendKind, BackendOptions, Store, StoreOptions};

/// How the store reads rows.
#[derive(Debug, Clone, ClapArgs)]
pub struct ReadArgs {
    /// Backend: memory, mmap, pread, uring, auto (default: $ENGRAM_IO_BACKEND, then auto:
    /// io_uring, falling back to pread with the reason). An explicit `uring` never falls
    /// back. `mooncake` reads the rows from the Mooncake cluster given by --mooncake
    /// (falling back to the local table, with the reason, when the cluster cannot serve
    /// it; a skeleton cannot fall back).
    #[arg(long)]
    pub backend: Option<String>,
    /// Mooncake master, HOST:PORT (with --backend mooncake; `scripts/mooncake-local.sh
    /// start` prints one). Metadata server, venv, protocol: $ENGRAM_MOONCAKE_*.
    #[arg(long)]
    pub mooncake: Option<String>,
    /// Mooncake: longest a batch of gets may take, in milliseconds, before the store
    /// reports the cluster broken.
    #[arg(long, default_value_t = 10_000)]
    pub mooncake_timeout_ms: u64,
    /// Mooncake: memory this process contributes to the cluster (e.g. 1G; 0: none).
    #[arg(long, default_value = "0")]
    pub mooncake_segment_bytes: String,
    /// Reads in flight per reader (1..=4096).
    #[arg(long, default_value_t = engram_store::backend::DEFAULT_QUEUE_DEPTH)]
    pub queue_depth: usize,
    /// Do not check block checksums on reads (reads then use --read-unit). A corrupted block
    /// on the medium then comes back as wrong rows, silently, instead of an error.
    #[arg(long)]
    pub no_verify: bool,
    /// Read unit for unverified reads: a power of two, 512 B to 1 MiB.
    #[arg(long, default_value_t = 4096)]
    pub read_unit: u64,
    /// Merge reads whose gap is at most this many bytes (at most 1 MiB).
    #[arg(long, default_value_t = 0)]
    pub coalesce_gap_bytes: u64,
    /// Longest merged read in bytes (at most 16 MiB; raised to one row's extent).
    #[arg(long, default_value_t = engram_store::backend::DEFAULT_MAX_READ_BYTES)]
    pub max_read_bytes: u64,
    /// io_uring SQPOLL (a kernel thread polls the queue; costs a core).
    #[arg(long)]
    pub sqpoll: bool,
    /// pread pool threads (default: the queue depth, at most 256).
    #[arg(long)]
    pub pread_threads: Option<usize>,
    /// Hedged reads: issue a read again once it has been in flight this many microseconds
    /// (0: never; see engram-store/BENCHMARKS.md for when it pays).
    #[arg(long, default_value_t = 0)]
    pub hedge_after_us: u64,
}

impl ReadArgs {
    /// The backend options these flags ask for (validated when the store opens).
    pub fn backend_options(&self) -> Result<BackendOptions> {
        let kind = match &self.backend {
            Some(_) if self.is_mooncake() => None,
            Some(b) => BackendKind::parse(b)?,
            None => None,
        };
        Ok(BackendOptions {
            kind,
            queue_depth: self.queue_depth,
            read_unit: self.read_unit,
            verify: !self.no_verify,
            coalesce_gap_bytes: self.coalesce_gap_bytes,
            max_read_bytes: self.max_read_bytes,
            sqpoll: self.sqpoll,
            hedge_after_us: self.hedge_after_us,
            pread_threads: self.pread_threads.unwrap_or(
                self.queue_depth
                    .min(engram_store::backend::MAX_PREAD_THREADS),
            ),
            ..BackendOptions::default()
        })
    }
}

impl ReadArgs {
    /// Whether `--backend mooncake` was asked for.
    pub fn is_mooncake(&self) -> bool {
        self.backend
            .as_deref()
            .is_some_and(|b| b.trim().eq_ignore_ascii_case(engram_mooncake::BACKEND_NAME))
    }

    /// The Mooncake client settings of these flags (`--mooncake` required).
    pub fn mooncake_config(&self) -> Result<ClientConfig> {
        let master = self
            .mooncake
            .as_deref()
            .context("--backend mooncake needs --mooncake HOST:PORT (the master)")?;
        let mut c = ClientConfig::new(master)?;
        c.timeout = Duration::from_millis(self.mooncake_timeout_ms);
        c.segment_bytes = parse_bytes(&self.mooncake_segment_bytes)?;
        Ok(c)
    }

    /// Opens the table at `dir` with these flags: the local backends, or Mooncake (with
    /// its fallback reason on stderr).
    pub fn open_store(&self, dir: &Path, options: &StoreOptions) -> Result<Store> {
        if !self.is_mooncake() {
            if self.mooncake.is_some() {
                anyhow::bail!("--mooncake is used with --backend mooncake");
            }
            if let Some(why) = engram_mooncake::local_read_refused(dir) {
                anyhow::bail!(why);
            }
            return Store::open(dir, options)
                .with_context(|| format!("opening table {}", dir.display()));
        }
        let opened = engram_mooncake::open_store(dir, options, &self.mooncake_config()?)
            .with_context(|| format!("opening table {} on Mooncake", dir.display()))?;
        // The fallback, if taken, was logged with its reason by engram-mooncake.
        Ok(opened.store)
    }

    /// A Mooncake client for these flags.
    pub fn mooncake_client(&self) -> Result<Arc<engram_mooncake::Client>> {
        let c = self.mooncake_config()?;
        Ok(Arc::new(
            engram_mooncake::Client::connect(&c).context("connecting to Mooncake")?,
        ))
    }
}

/// Reading through the storage service instead of opening the table (`lookup`, `bench`).
#[derive(Debug, Clone, ClapArgs)]
pub struct ServiceArgs {
    /// Read through the storage service at this socket (`engram serve`); TABLE then names
    /// a table the service serves, by its path (or its name).
    #[arg(long)]
    pub service: Option<std::path::PathBuf>,
    /// Microseconds a service client polls for a completion before sleeping (0: sleep at
    /// once; spinning trades a busy core for latency).
    #[arg(long, default_value_t = 0, requires = "service")]
    pub service_spin_us: u32,
}

impl ServiceArgs {
    /// The rows of `table`: through the service when `--service` is given (with room for
    /// `slots` requests of `max_rows` rows), else the store `open` opens. Returns the
    /// fallback reason of an in-process store.
    pub fn open(
        &self,
        table: &std::path::Path,
        slots: u32,
        max_rows: usize,
        open: impl FnOnce() -> Result<engram_store::Store>,
    ) -> Result<(std::sync::Arc<dyn engram_store::RowSource>, Option<String>)> {
        use anyhow::Context;
        match &self.service {
            Some(socket) => {
                let target = engram_client::ServiceAddress {
                    socket: socket.clone(),
                    table: Some(table.display().to_string()),
                };
                let options = engram_client::ClientOptions {
                    slots: slots.max(1).next_power_of_two(),
                    slot_rows: u32::try_from(max_rows.max(1)).unwrap_or(u32::MAX),
                    spin_us: self.service_spin_us,
                    server_spin_us: self.service_spin_us,
                };
                let r = engram_client::RemoteStore::open(&target, &options)
                    .with_context(|| format!("attaching to the service at {}", socket.display()))?;
                Ok((std::sync::Arc::new(r), None))
            }
            None => {
                let store = open()?;
                let why = store.fallback_reason().map(str::to_string);
                Ok((std::sync::Arc::new(store), why))
            }
        }
    }
}
