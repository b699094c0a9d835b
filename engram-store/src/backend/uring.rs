//! The io_uring SSD path: O_DIRECT layer files registered with one ring per reader, the
//! reader's staging slots registered as one fixed buffer, optional SQPOLL.
//!
//! Contract (the kernel's buffer-lifetime rule): an address in a submitted SQE must stay
//! valid, and unused by anyone else, until its CQE is reaped. The engine receives a
//! staging [`Lease`] with every read (whose extent `staging.rs` proves lies inside the
//! registered allocation) and keeps it in `in_flight[slot]` until the read's CQE is
//! reaped; only then does the lease go back to the driver. `Drop` reaps everything still
//! in flight; if the ring cannot be waited on any more, the leases are leaked, so their
//! memory is never freed under the kernel. Registered files are kept open by the `Arc`
//! the engine holds.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{IoUring, opcode, register::Probe, types};

use super::pread::{DeviceFiles, open_direct};
use super::{Backend, BackendKind, BackendOptions, IoCounters, UringFault};
use crate::error::{Error, Result};
use crate::metrics::SharedHist;
use crate::reads::{Completion, Driver, Engine, EngineError, Lease, ReadReq, Staging};
use crate::table::Table;

/// SQPOLL thread idle time before it sleeps.
const SQPOLL_IDLE_MS: u32 = 2000;

/// io_uring backend.
#[derive(Debug)]
pub struct UringBackend {
    table: Arc<Table>,
    options: BackendOptions,
    files: Arc<DeviceFiles>,
    registered_buffers: bool,
    latency: SharedHist,
}

/// Why io_uring could not be used, with what to do about it: the errno decides, so a
/// memory or open-file limit is not reported as io_uring being disabled.
pub(crate) fn setup_error(call: &str, e: &std::io::Error) -> Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "io_uring is blocked: allow io_uring_setup in seccomp or set sysctl \
             kernel.io_uring_disabled=0"
        }
        Some(libc::ENOSYS) => "this kernel has no io_uring: use Linux >= 5.6",
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "the open-file limit is reached: raise it (ulimit -n) or open fewer stores"
        }
        Some(libc::ENOMEM) => {
            "out of locked or kernel memory: raise RLIMIT_MEMLOCK (ulimit -l), lower the \
             queue depth, or free memory"
        }
        _ => "see the error",
    };
    Error::Unavailable {
        what: "io_uring",
        reason: format!("{call} failed: {e}; {hint}"),
    }
}

/// The running kernel's release (`uname -r`), for messages.
fn kernel_release() -> String {
    let mut u = std::mem::MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: `uname` writes the whole `utsname` it is given, a valid, writable struct of
    // the right size; the fields read below are NUL-terminated within their arrays.
    let rc = unsafe { libc::uname(u.as_mut_ptr()) };
    if rc != 0 {
        return "unknown kernel".into();
    }
    // SAFETY: `uname` succeeded, so the struct is initialized.
    let u = unsafe { u.assume_init() };
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    format!("Linux {}", String::from_utf8_lossy(&bytes))
}

/// Whether io_uring can be set up here with every opcode the store uses; the reason
/// when not. For tests and tools that must say loudly which path they exercise.
pub fn availability() -> std::result::Result<(), String> {
    let ring = build_ring(8, false).map_err(|e| setup_error("io_uring_setup", &e).to_string())?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| setup_error("IORING_REGISTER_PROBE", &e).to_string())?;
    for (name, code) in [
        ("IORING_OP_READ_FIXED", opcode::ReadFixed::CODE),
        ("IORING_OP_READ", opcode::Read::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("opcode {name} is not supported by this kernel"));
        }
    }
    Ok(())
}

fn build_ring(entries: u32, sqpoll: bool) -> std::io::Result<IoUring> {
    let mut b = IoUring::builder();
    if sqpoll {
        b.setup_sqpoll(SQPOLL_IDLE_MS);
    }
    b.build(entries)
}

/// A reader's ring, set up like fio's (`IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN |
/// COOP_TASKRUN`, Linux >= 6.1): completions are posted by the waiting thread itself in
/// one pass when it enters the kernel, instead of a task-work wake-up (an interrupt of the
/// thread, or a wake from its wait) per completion. The ring starts disabled
/// (`IORING_SETUP_R_DISABLED`) so that it can be registered on the thread that opens the
/// store and then owned by the thread that first submits (the reactor): see
/// [`UringEngine::own`]. `Ok((ring, true))` with those flags; a kernel that refuses them
/// (EINVAL) or SQPOLL gets the plain ring, `Ok((ring, false))`. BENCHMARKS.md has the
/// measurements.
fn build_reader_ring(entries: u32, sqpoll: bool) -> std::io::Result<(IoUring, bool)> {
    if !sqpoll && std::env::var_os("ENGRAM_URING_PLAIN").is_none() {
        let mut b = IoUring::builder();
        b.setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_r_disabled();
        match b.build(entries) {
            Ok(ring) => return Ok((ring, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    build_ring(entries, sqpoll).map(|ring| (ring, false))
}

impl UringBackend {
    /// Probes io_uring and every opcode used; reads the first row of the first layer
    /// through a reader to prove the whole path works.
    pub fn open(table: &Arc<Table>, options: &BackendOptions) -> Result<Self> {
        if options.uring_fault == Some(UringFault::Setup) {
            return Err(setup_error(
                "io_uring_setup (injected fault)",
                &std::io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
        let ring = build_ring(8, options.sqpoll).map_err(|e| setup_error("io_uring_setup", &e))?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| setup_error("IORING_REGISTER_PROBE", &e))?;
        for (name, code) in [
            ("IORING_OP_READ_FIXED", opcode::ReadFixed::CODE),
            ("IORING_OP_READ", opcode::Read::CODE),
        ] {
            if options.uring_fault == Some(UringFault::Probe) || !probe.is_supported(code) {
                let injected = if options.uring_fault.is_some() {
                    " (injected fault)"
                } else {
                    ""
                };
                return Err(Error::Unavailable {
                    what: "io_uring",
                    reason: format!(
                        "opcode {name} is not supported by this kernel{injected}; use Linux >= 5.6"
                    ),
                });
            }
        }
        let no_ext_arg = options.uring_fault == Some(UringFault::NoExtArg)
            || !ring.params().is_feature_ext_arg();
        if options.hedge_after_us > 0 && no_ext_arg {
            return Err(Error::Unavailable {
                what: "hedged reads on io_uring",
                reason: format!(
                    "this kernel ({}) lacks IORING_FEAT_EXT_ARG (Linux >= 5.11), so a wait \
                     for completions cannot time out to issue the second copy; turn hedging \
                     off (hedge_after_us 0) or use the pread backend",
                    kernel_release()
                ),
            });
        }
        drop(ring);
        let mut backend = Self {
            table: Arc::clone(table),
            options: options.clone(),
            files: Arc::new(open_direct(table, options.records.as_deref())?),
            registered_buffers: options.uring_fault != Some(UringFault::Register),
            latency: SharedHist::default(),
        };
        // One real read through a reader (without injected read faults) proves setup,
        // registration and O_DIRECT.
        let mut reader = match backend.new_driver(None) {
            Ok(r) => r,
            Err(e) if backend.registered_buffers => {
                tracing::warn!(target: "engram_store", "io_uring buffer registration failed ({e}); using unregistered buffers. Fix: raise RLIMIT_MEMLOCK (ulimit -l)");
                backend.registered_buffers = false;
                backend.new_driver(None)?
            }
            Err(e) => return Err(e),
        };
        if options.uring_fault == Some(UringFault::Register) {
            tracing::warn!(target: "engram_store", "io_uring buffer registration failed (injected fault); using unregistered buffers. Fix: raise RLIMIT_MEMLOCK (ulimit -l)");
        }
        let mut out = vec![0u8; table.row_bytes()];
        reader.read_sync(0, &[0], &[], &mut out, &mut IoCounters::default())?;
        Ok(backend)
    }

    /// Whether readers use registered (fixed) buffers.
    pub fn registered_buffers(&self) -> bool {
        self.registered_buffers
    }

    /// A driver over a new ring, injecting `faults` (the probe read at open: none).
    fn new_driver(&self, faults: Option<crate::reads::FaultPlan>) -> Result<Driver> {
        let options = BackendOptions {
            faults,
            ..self.options.clone()
        };
        let options = &options;
        Driver::new(&self.table, options, self.latency.clone(), |staging| {
            Ok(Box::new(UringEngine::new(
                staging,
                &self.files,
                self.options.sqpoll,
                self.registered_buffers,
            )?))
        })
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }
    fn driver(&self, rebuilt: bool) -> Result<Driver> {
        let faults = self.options.for_engine(rebuilt).faults.clone();
        self.new_driver(faults)
    }
    fn device_latency(&self) -> Option<&SharedHist> {
        Some(&self.latency)
    }
}

/// One ring with the layer files registered (fixed file `i` is layer `i`) and, when
/// `registered`, the staging allocation as fixed buffer 0.
pub(crate) struct UringEngine {
    ring: IoUring,
    /// Keeps the registered files open.
    _files: Arc<DeviceFiles>,
    registered: bool,
    /// A single-issuer ring not yet enabled: the first thread to submit or reap owns it.
    disabled: bool,
    /// (staging depth,) the tag and lease of the read in flight in each slot
    in_flight: Vec<Option<(u64, Lease)>>,
    n_in_flight: usize,
    /// When queued reads go to the kernel.
    submit: SubmitMode,
}

/// When the engine hands queued reads to the kernel (`ENGRAM_URING_SUBMIT`, for A/B runs;
/// engram-store/BENCHMARKS.md has the measurements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubmitMode {
    /// One system call per read, as it is queued (fio's `iodepth_batch_submit=1`; the
    /// default, which measured best).
    Each,
    /// At [`Engine::flush`]: every read the driver queued in one pass, in one system call.
    Pass,
    /// At the next reap's wait only.
    Reap,
}

impl SubmitMode {
    fn from_env() -> Self {
        match std::env::var("ENGRAM_URING_SUBMIT").as_deref() {
            Ok("pass") => Self::Pass,
            Ok("reap") => Self::Reap,
            Ok("each") | Err(_) => Self::Each,
            Ok(other) => {
                tracing::warn!(target: "engram_store", "ENGRAM_URING_SUBMIT={other:?} is not each, pass or reap: using each");
                Self::Each
            }
        }
    }
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("registered", &self.registered)
            .field("in_flight", &self.n_in_flight)
            .finish_non_exhaustive()
    }
}

impl UringEngine {
    /// A ring for `staging.depth()` reads over `files`.
    pub fn new(
        staging: &Staging,
        files: &Arc<DeviceFiles>,
        sqpoll: bool,
        registered: bool,
    ) -> Result<Self> {
        let depth = staging.depth();
        let entries = u32::try_from(depth.next_power_of_two()).map_err(|_| Error::Invalid {
            what: "queue depth",
            reason: format!("{depth} is too large for a ring"),
        })?;
        let (ring, single_issuer) = build_reader_ring(entries, sqpoll)
            .map_err(|e| setup_error(&format!("io_uring_setup({entries})"), &e))?;
        let fds: Vec<i32> = files.files.iter().map(|(f, _)| f.as_raw_fd()).collect();
        ring.submitter()
            .register_files(&fds)
            .map_err(|e| setup_error("IORING_REGISTER_FILES", &e))?;
        if registered {
            let iov = staging.iovec();
            // SAFETY: the iovec covers the staging allocation, which stays allocated while
            // any lease of it lives (staging.rs rule 3) and at least until this ring is
            // dropped: the engine is dropped by its driver before the driver's staging, and
            // only addresses of leases it holds are ever submitted.
            unsafe { ring.submitter().register_buffers(&[iov]) }.map_err(|e| {
                setup_error(
                    &format!("IORING_REGISTER_BUFFERS ({} bytes)", iov.iov_len),
                    &e,
                )
            })?;
        }
        Ok(Self {
            ring,
            _files: Arc::clone(files),
            registered,
            disabled: single_issuer,
            in_flight: (0..depth).map(|_| None).collect(),
            n_in_flight: 0,
            submit: SubmitMode::from_env(),
        })
    }

    /// Makes the calling thread the ring's only issuer, once (a single-issuer ring is
    /// created disabled, so the store can build it on the opening thread and hand it to a
    /// reactor); every later submit and wait must come from this thread (the kernel
    /// answers EEXIST otherwise, which fails the engine, never the memory rule).
    fn own(&mut self) -> Result<(), EngineError> {
        if self.disabled {
            self.ring
                .submitter()
                .register_enable_rings()
                .map_err(|e| EngineError::Broken(format!("IORING_REGISTER_ENABLE_RINGS: {e}")))?;
            self.disabled = false;
        }
        Ok(())
    }

    /// Hands the queued entries to the kernel without waiting (after each read in
    /// [`SubmitMode::Each`], after each pass in [`SubmitMode::Pass`]; BENCHMARKS.md has
    /// the modes side by side). A failed enter leaves the entries queued: the next reap's
    /// enter submits them or reports the error.
    fn enter(&mut self) -> Result<(), EngineError> {
        self.own()?;
        self.ring
            .submit()
            .map(drop)
            .map_err(|e| EngineError::Broken(format!("io_uring_enter: {e}")))
    }

    /// Waits for completions until nothing is in flight; false if the ring failed.
    fn reap_all(&mut self) -> bool {
        let mut scratch = Vec::with_capacity(self.n_in_flight);
        while self.n_in_flight > 0 {
            if self.reap(1, None, &mut scratch).is_err() {
                return false;
            }
            scratch.clear();
        }
        true
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        if !self.reap_all() {
            // The kernel may still write into these extents: never free them.
            for lease in self.in_flight.iter_mut().filter_map(Option::take) {
                std::mem::forget(lease);
            }
        }
    }
}

impl Engine for UringEngine {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn submit(&mut self, req: ReadReq, mut lease: Lease) -> Result<(), (Lease, EngineError)> {
        let slot = lease.slot() as usize;
        if self.in_flight.get(slot).is_none_or(Option::is_some) {
            return Err((
                lease,
                EngineError::Broken(format!("staging slot {slot} is already in flight")),
            ));
        }
        let len = lease.len() as u32;
        let ptr = lease.as_mut_ptr();
        let fd = types::Fixed(req.file);
        let sqe = if self.registered {
            opcode::ReadFixed::new(fd, ptr, len, 0)
                .offset(req.offset)
                .build()
        } else {
            opcode::Read::new(fd, ptr, len).offset(req.offset).build()
        }
        .user_data(slot as u64);
        loop {
            // SAFETY: the SQE's buffer is [ptr, ptr + len), exactly the lease's extent,
            // which lies inside the staging allocation (and so inside registered buffer 0)
            // by staging.rs rule 1 and belongs to no one else by rule 2. The lease is
            // stored in `in_flight[slot]` right below and handed back only after this
            // read's CQE is reaped (or leaked in Drop), which is the kernel's rule.
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_ok() {
                break;
            }
            // The submission queue is full of queued entries: hand them to the kernel.
            if let Err(e) = self.own() {
                return Err((lease, e));
            }
            if let Err(e) = self.ring.submit()
                && e.raw_os_error() != Some(libc::EINTR)
            {
                return Err((lease, EngineError::Broken(format!("io_uring_enter: {e}"))));
            }
        }
        self.in_flight[slot] = Some((req.tag, lease));
        self.n_in_flight += 1;
        if self.submit == SubmitMode::Each {
            let _ = self.enter();
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EngineError> {
        if self.submit == SubmitMode::Pass && !self.ring.submission().is_empty() {
            let _ = self.enter();
        }
        Ok(())
    }

    fn reap(
        &mut self,
        min_complete: usize,
        timeout: Option<std::time::Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), EngineError> {
        let want = min_complete.min(self.n_in_flight);
        self.own()?;
        loop {
            let entered = match timeout {
                Some(t) if want > 0 => {
                    let ts = types::Timespec::from(t);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(want, &args)
                }
                _ => self.ring.submit_and_wait(want),
            };
            match entered {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The timeout passed first: whatever completed is reaped below.
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => break,
                Err(e) => return Err(EngineError::Broken(format!("io_uring_enter: {e}"))),
            }
        }
        for cqe in self.ring.completion() {
            let slot = cqe.user_data() as usize;
            let Some((tag, lease)) = self.in_flight.get_mut(slot).and_then(Option::take) else {
                debug_assert!(false, "CQE for idle slot {slot}");
                continue;
            };
            self.n_in_flight -= 1;
            let res = cqe.result();
            let result = if res < 0 {
                Err(std::io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as usize)
            };
            out.push(Completion { tag, lease, result });
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.n_in_flight
    }
}

/// The store's io_uring engine over one file opened with O_DIRECT (fixed file 0), reading
/// into `staging`'s slots (registered as a fixed buffer where the kernel allows): for
/// tools that measure a device the way the store reads it (`engram probe`).
pub fn direct_file_engine(path: &std::path::Path, staging: &Staging) -> Result<Box<dyn Engine>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| crate::error::io("open (O_DIRECT)", path, e))?;
    let files = Arc::new(DeviceFiles {
        files: vec![(file, path.to_path_buf())],
        direct: true,
    });
    let engine = match UringEngine::new(staging, &files, false, true) {
        Ok(e) => e,
        Err(_) => UringEngine::new(staging, &files, false, false)?,
    };
    Ok(Box::new(engine))
}
