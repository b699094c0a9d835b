//! Row backends behind one trait; all return the memory tier's bytes for the same ids.
//!
//! A backend is shared by every thread; each of the store's reactors (one per I/O thread)
//! owns a driver over its own engine (a ring, staging buffers) from the backend, and gets
//! a new one from it when that engine fails.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::planner::PlanParams;
use crate::table::Table;

pub mod external;
pub mod memory;
pub mod mmap;
pub mod pread;
pub mod uring;

/// Environment variable that forces a backend: `memory`, `mmap`, `pread`, `uring`, `auto`.
pub const IO_BACKEND_ENV: &str = "ENGRAM_IO_BACKEND";
/// Environment variable that makes the io_uring probe fail (testing the fallback):
/// `setup`, `probe`, `register` or `ext_arg`; any other value is an error.
pub const URING_FAULT_ENV: &str = "ENGRAM_URING_FAULT";
/// Environment variable that turns a fallback from io_uring into an error (`1`): set by
/// the test script where io_uring works, so a regression cannot hide behind pread.
pub const REQUIRE_URING_ENV: &str = "ENGRAM_REQUIRE_URING";

/// Default queue depth per reader.
pub const DEFAULT_QUEUE_DEPTH: usize = 32;
/// Largest queue depth accepted.
pub const MAX_QUEUE_DEPTH: usize = 4096;
/// Longest hedge delay accepted (10 s).
pub const MAX_HEDGE_AFTER_US: u64 = 10_000_000;
/// Largest pread pool accepted.
pub const MAX_PREAD_THREADS: usize = 256;
/// Default longest coalesced read.
pub const DEFAULT_MAX_READ_BYTES: u64 = 64 << 10;

/// Which backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Every layer resident in RAM (loaded and verified at open).
    Memory,
    /// The layer files memory-mapped; the page cache decides residency.
    Mmap,
    /// `pread` on a thread pool; portable.
    Pread,
    /// io_uring with O_DIRECT, registered files and buffers.
    Uring,
    /// An engine built outside this crate by [`BackendOptions::engine`] (a distributed
    /// store such as Mooncake), named by its factory.
    External(&'static str),
}

impl BackendKind {
    /// The lowercase name used by `ENGRAM_IO_BACKEND`, flags and stats (`memory`, `uring`, ...).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Mmap => "mmap",
            BackendKind::Pread => "pread",
            BackendKind::Uring => "uring",
            BackendKind::External(name) => name,
        }
    }

    /// The tier whose statistics this backend feeds.
    pub fn tier(self) -> Tier {
        match self {
            BackendKind::Memory | BackendKind::Mmap => Tier::Dram,
            BackendKind::Pread | BackendKind::Uring => Tier::Ssd,
            BackendKind::External(_) => Tier::Remote,
        }
    }

    /// Parses the name of a built-in backend; `auto` is `None`. (External backends are
    /// chosen with [`BackendOptions::engine`], not by name.)
    pub fn parse(s: &str) -> Result<Option<Self>> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory" | "mem" => Ok(Some(BackendKind::Memory)),
            "mmap" => Ok(Some(BackendKind::Mmap)),
            "pread" => Ok(Some(BackendKind::Pread)),
            "uring" | "io_uring" => Ok(Some(BackendKind::Uring)),
            "auto" | "" => Ok(None),
            other => Err(Error::Invalid {
                what: "backend",
                reason: format!("{other:?}: expected memory, mmap, pread, uring or auto"),
            }),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Storage tiers, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The store's hot-row cache.
    Cache,
    /// Rows resident in this process's memory (memory backend, or mmap pages).
    Dram,
    /// Rows read from a local device (pread, io_uring).
    Ssd,
    /// Another host's memory, through an external engine.
    Remote,
}

/// Injected io_uring failures, to test the fallback chain on machines where it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringFault {
    /// `io_uring_setup` fails (seccomp, `kernel.io_uring_disabled`).
    Setup,
    /// An opcode is reported unsupported (old kernel).
    Probe,
    /// Buffer registration fails (`RLIMIT_MEMLOCK`): uring runs with unregistered buffers.
    Register,
    /// The kernel reports no `IORING_FEAT_EXT_ARG` (before Linux 5.11): hedged reads are
    /// refused on io_uring.
    NoExtArg,
}

impl UringFault {
    fn from_env() -> Result<Option<Self>> {
        let Ok(v) = std::env::var(URING_FAULT_ENV) else {
            return Ok(None);
        };
        match v.as_str() {
            "setup" => Ok(Some(UringFault::Setup)),
            "probe" => Ok(Some(UringFault::Probe)),
            "register" => Ok(Some(UringFault::Register)),
            "ext_arg" => Ok(Some(UringFault::NoExtArg)),
            "" => Ok(None),
            other => Err(Error::Invalid {
                what: "io_uring fault",
                reason: format!(
                    "{URING_FAULT_ENV}={other:?}: expected setup, probe, register or ext_arg"
                ),
            }),
        }
    }
}

/// Whether `ENGRAM_REQUIRE_URING` asks for io_uring to be required.
pub fn uring_required() -> bool {
    std::env::var(REQUIRE_URING_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// For tests and tools that exercise one backend explicitly: `Ok(true)` when `kind` can
/// run on this machine, `Ok(false)` (said on stderr, loudly) when it is io_uring and this
/// machine has none, and an error in that case when `ENGRAM_REQUIRE_URING` is set, so a
/// machine that has io_uring cannot silently skip it.
pub fn runnable_here(kind: BackendKind) -> Result<bool> {
    if kind != BackendKind::Uring {
        return Ok(true);
    }
    match uring::availability() {
        Ok(()) => Ok(true),
        Err(why) if uring_required() => Err(Error::Unavailable {
            what: "io_uring",
            reason: format!("{why} ({REQUIRE_URING_ENV} is set)"),
        }),
        Err(why) => {
            engram_kernels::skip::skipped(&format!(
                "the io_uring backend cannot run on this machine: {why}"
            ));
            Ok(false)
        }
    }
}

/// How to open and shape the backend.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// `None`: `$ENGRAM_IO_BACKEND`, else auto (uring, then pread).
    pub kind: Option<BackendKind>,
    /// Reads in flight per reader.
    pub queue_depth: usize,
    /// Read unit for unverified reads (512 or 4096); verified reads use the checksum block.
    pub read_unit: u64,
    /// Check every device read against its block checksum (and mmap blocks on first use).
    pub verify: bool,
    /// Merge reads whose gap is at most this.
    pub coalesce_gap_bytes: u64,
    /// Longest merged read.
    pub max_read_bytes: u64,
    /// io_uring: kernel submission-queue polling thread (costs a core).
    pub sqpoll: bool,
    /// pread: worker threads in the pool.
    pub pread_threads: usize,
    /// Test hook: make io_uring fail this way (also `$ENGRAM_URING_FAULT`).
    pub uring_fault: Option<UringFault>,
    /// Test hook: inject read faults (also `$ENGRAM_IO_FAULTS`).
    pub faults: Option<crate::reads::FaultPlan>,
    /// N-gram records the device backends read instead of several rows' pages (set by
    /// the store from the table's `records.bin`).
    pub records: Option<Arc<crate::records::Records>>,
    /// Hedged reads: issue a demand read again when it has been in flight this long (0:
    /// never). At most [`MAX_HEDGE_AFTER_US`].
    pub hedge_after_us: u64,
    /// Reads through engines this factory builds instead of a built-in backend (see
    /// [`external`]); when set it wins over `kind` and `$ENGRAM_IO_BACKEND`.
    pub engine: Option<Arc<dyn external::EngineFactory>>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            kind: None,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            read_unit: 4096,
            verify: true,
            coalesce_gap_bytes: 0,
            max_read_bytes: DEFAULT_MAX_READ_BYTES,
            sqpoll: false,
            pread_threads: 8,
            uring_fault: None,
            faults: None,
            records: None,
            hedge_after_us: 0,
            engine: None,
        }
    }
}

impl BackendOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.queue_depth == 0 || self.queue_depth > MAX_QUEUE_DEPTH {
            return Err(Error::Limit {
                what: "queue depth",
                name: "MAX_QUEUE_DEPTH",
                limit: MAX_QUEUE_DEPTH,
                found: self.queue_depth,
            });
        }
        if !self.read_unit.is_power_of_two() || !(512..=1 << 20).contains(&self.read_unit) {
            return Err(Error::Invalid {
                what: "read unit",
                reason: format!("{} must be a power of two in 512..=1 MiB", self.read_unit),
            });
        }
        if self.pread_threads == 0 || self.pread_threads > MAX_PREAD_THREADS {
            return Err(Error::Limit {
                what: "pread threads",
                name: "MAX_PREAD_THREADS",
                limit: MAX_PREAD_THREADS,
                found: self.pread_threads,
            });
        }
        for (what, name, limit, found) in [
            (
                "longest read",
                "MAX_READ_BYTES_LIMIT",
                crate::planner::MAX_READ_BYTES_LIMIT,
                self.max_read_bytes,
            ),
            (
                "coalescing gap",
                "MAX_COALESCE_GAP_BYTES",
                crate::planner::MAX_COALESCE_GAP_BYTES,
                self.coalesce_gap_bytes,
            ),
            (
                "hedge delay (us)",
                "MAX_HEDGE_AFTER_US",
                MAX_HEDGE_AFTER_US,
                self.hedge_after_us,
            ),
        ] {
            if found > limit {
                return Err(Error::Limit {
                    what,
                    name,
                    limit: limit as usize,
                    found: usize::try_from(found).unwrap_or(usize::MAX),
                });
            }
        }
        Ok(())
    }

    /// The read shape for layer `layer` of `table`: reads aligned to the checksum block
    /// when verified (every read covers whole blocks), else to the read unit.
    pub(crate) fn plan_params(&self, table: &Table, layer: usize) -> Result<PlanParams> {
        let h = &table.layer(layer)?.header;
        let m = table.manifest();
        let align = if self.verify {
            m.block_bytes
        } else {
            self.read_unit
        };
        PlanParams::new(
            &table.geometry(),
            m.data_offset,
            h.data_bytes,
            align,
            self.coalesce_gap_bytes,
            self.max_read_bytes,
        )
    }
}

/// Per-batch I/O accounting filled by readers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// Distinct rows fetched from the backend.
    pub rows_unique: u64,
    /// Device reads issued.
    pub reads: u64,
    /// Bytes read from the device (or touched in memory).
    pub device_bytes: u64,
    /// Of those: second copies of reads that were overdue (hedged reads).
    pub hedged_reads: u64,
    /// Of those: reads of n-gram records, and the distinct rows they served.
    pub record_reads: u64,
    /// Distinct rows those record reads served.
    pub record_rows: u64,
    /// Nanoseconds planning, submitting, waiting for completions, scattering.
    pub plan_ns: u64,
    /// Nanoseconds submitting reads.
    pub submit_ns: u64,
    /// Nanoseconds waiting for completions.
    pub complete_ns: u64,
    /// Nanoseconds copying rows to their output slots.
    pub scatter_ns: u64,
}

/// A backend shared by all threads.
pub(crate) trait Backend: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// A driver over a new engine, for one reactor. `rebuilt`: it replaces an engine that
    /// failed, so the fault plan's engine failures (which fire once per reader) are left
    /// out.
    fn driver(&self, rebuilt: bool) -> Result<crate::reads::Driver>;
    /// The rows, when this process holds them all (memory, mmap): the store serves such
    /// batches on the caller's thread.
    fn resident(&self) -> Option<&dyn crate::reads::ResidentRows> {
        None
    }
    /// Per-read device latency (submit to completion), for backends that issue reads.
    fn device_latency(&self) -> Option<&crate::metrics::SharedHist> {
        None
    }
}

impl BackendOptions {
    /// These options for a driver's engine: without the engine failures of the fault plan
    /// when the engine replaces one that failed.
    pub(crate) fn for_engine(&self, rebuilt: bool) -> std::borrow::Cow<'_, BackendOptions> {
        match &self.faults {
            Some(plan) if rebuilt && plan.breaks_engine() => {
                std::borrow::Cow::Owned(BackendOptions {
                    faults: Some(plan.for_rebuilt_engine()),
                    ..self.clone()
                })
            }
            _ => std::borrow::Cow::Borrowed(self),
        }
    }
}

/// A backend with the reason it was chosen.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    /// The opened backend, shared by the store's threads.
    pub backend: Arc<dyn Backend>,
    /// Why a fallback was taken, if one was.
    pub fallback: Option<String>,
}

/// Opens the requested backend. Without an explicit choice, io_uring is tried first and
/// pread taken when it is unavailable, logging why and how to fix it; an explicit
/// `uring` (option or `ENGRAM_IO_BACKEND`), or `ENGRAM_REQUIRE_URING=1`, makes that an
/// error instead.
pub(crate) fn open_backend(table: &Arc<Table>, options: &BackendOptions) -> Result<Opened> {
    options.validate()?;
    if let Some(factory) = &options.engine {
        let mut options = options.clone();
        if options.faults.is_none() {
            options.faults = crate::reads::FaultPlan::from_env()?;
        }
        return Ok(Opened {
            backend: Arc::new(external::ExternalBackend::new(
                table,
                &options,
                Arc::clone(factory),
            )),
            fallback: None,
        });
    }
    let kind = match options.kind {
        Some(k) => Some(k),
        None => match std::env::var(IO_BACKEND_ENV) {
            Ok(v) => BackendKind::parse(&v)?,
            Err(_) => None,
        },
    };
    let mut options = options.clone();
    if options.uring_fault.is_none() {
        options.uring_fault = UringFault::from_env()?;
    }
    if options.faults.is_none() {
        options.faults = crate::reads::FaultPlan::from_env()?;
    }
    match kind {
        Some(BackendKind::Memory) => Ok(Opened {
            backend: Arc::new(memory::MemoryBackend::load_with(table, &options)?),
            fallback: None,
        }),
        Some(BackendKind::Mmap) => Ok(Opened {
            backend: Arc::new(mmap::MmapBackend::open_with(table, &options)?),
            fallback: None,
        }),
        Some(BackendKind::Pread) => Ok(Opened {
            backend: Arc::new(pread::PreadBackend::new(table, &options)?),
            fallback: None,
        }),
        Some(BackendKind::Uring) => Ok(Opened {
            backend: Arc::new(uring::UringBackend::open(table, &options)?),
            fallback: None,
        }),
        Some(BackendKind::External(name)) => Err(Error::Invalid {
            what: "backend",
            reason: format!(
                "{name:?} is an external backend: pass its engine factory in BackendOptions::engine"
            ),
        }),
        None => match uring::UringBackend::open(table, &options) {
            Ok(b) => Ok(Opened {
                backend: Arc::new(b),
                fallback: None,
            }),
            Err(e) if !uring_required() => {
                let reason = format!(
                    "{e}; using pread instead (force a backend with {IO_BACKEND_ENV}=uring|pread)"
                );
                log_fallback_once(&reason);
                Ok(Opened {
                    backend: Arc::new(pread::PreadBackend::new(table, &options)?),
                    fallback: Some(reason),
                })
            }
            Err(e) => Err(Error::Unavailable {
                what: "io_uring",
                reason: format!("{e} ({REQUIRE_URING_ENV} is set, so pread is not taken)"),
            }),
        },
    }
}

fn log_fallback_once(reason: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(target: "engram_store", "{reason}");
    } else {
        tracing::debug!(target: "engram_store", "{reason}");
    }
}

/// Reads `buf.len()` bytes at `offset` with a blocking positional read (memory backend load).
pub(crate) fn pread_exact(
    file: &std::fs::File,
    path: &std::path::Path,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
        .map_err(|e| crate::error::io_at("read", path, offset, e))
}

/// Verifies every checksum block inside a read of `buf` at `offset` (block-aligned).
pub(crate) fn verify_read(table: &Table, layer: usize, offset: u64, buf: &[u8]) -> Result<()> {
    let m = table.manifest();
    let bb = m.block_bytes;
    let rel = offset - m.data_offset;
    let first = rel / bb;
    let mut at = 0usize;
    let mut block = first;
    while at < buf.len() {
        let len = (bb as usize).min(buf.len() - at);
        table.verify_block(layer, block, &buf[at..at + len])?;
        at += len;
        block += 1;
    }
    Ok(())
}
