//! The io_uring SSD path: O_DIRECT files and one staging buffer registered with a ring per
//! reader thread, batched submission of up to `queue_depth` reads, optional SQPOLL.
//!
//! Contract (the kernel's buffer-lifetime rule): a buffer address in a submitted SQE must
//! stay valid until its CQE is reaped. Every reader owns its staging buffer and its ring;
//! `read_rows` never returns with reads in flight (it drains on error too), and `Drop`
//! reaps anything still in flight before the buffer is freed. Registered files are `File`s
//! kept alive by an `Arc` the reader holds.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use io_uring::{IoUring, opcode, register::Probe, types};

use super::{Backend, BackendKind, BackendOptions, IoCounters, RowReader, UringFault, verify_read};
use crate::batch::Plan;
use crate::buffer::AlignedBuf;
use crate::error::{Error, Result, io_at};
use crate::metrics::{SharedHist, new_hist, record_ns};
use crate::table::Table;

/// SQPOLL thread idle time before it sleeps.
const SQPOLL_IDLE_MS: u32 = 2000;

/// io_uring backend.
#[derive(Debug)]
pub struct UringBackend {
    table: Arc<Table>,
    options: BackendOptions,
    files: Arc<Vec<(File, PathBuf)>>,
    registered_buffers: bool,
    latency: SharedHist,
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        what: "io_uring",
        reason,
    }
}

fn build_ring(entries: u32, sqpoll: bool) -> std::io::Result<IoUring> {
    let mut b = IoUring::builder();
    if sqpoll {
        b.setup_sqpoll(SQPOLL_IDLE_MS);
    }
    b.build(entries)
}

impl UringBackend {
    /// Probes io_uring and every opcode used; reads the first block of the first layer
    /// through it to prove the whole path works.
    pub fn open(table: &Arc<Table>, options: &BackendOptions) -> Result<Self> {
        if options.uring_fault == Some(UringFault::Setup) {
            return Err(unavailable(
                "io_uring_setup failed: EPERM (injected fault)".into(),
            ));
        }
        let ring = build_ring(8, options.sqpoll)
            .map_err(|e| unavailable(format!("io_uring_setup failed: {e}")))?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| unavailable(format!("IORING_REGISTER_PROBE failed: {e}")))?;
        let needed = [
            ("IORING_OP_READ_FIXED", opcode::ReadFixed::CODE),
            ("IORING_OP_READ", opcode::Read::CODE),
        ];
        for (name, code) in needed {
            if options.uring_fault == Some(UringFault::Probe) {
                return Err(unavailable(format!(
                    "opcode {name} is not supported by this kernel (injected fault)"
                )));
            }
            if !probe.is_supported(code) {
                return Err(unavailable(format!(
                    "opcode {name} is not supported by this kernel"
                )));
            }
        }
        let (files, _direct) = super::pread::open_direct(table)?;
        let files = Arc::new(files);
        let mut backend = Self {
            table: Arc::clone(table),
            options: options.clone(),
            files,
            registered_buffers: options.uring_fault != Some(UringFault::Register),
            latency: SharedHist::default(),
        };
        // One real read through a reader proves setup, registration and O_DIRECT.
        let mut reader = match backend.new_reader() {
            Ok(r) => r,
            Err(e) if backend.registered_buffers => {
                tracing::warn!(target: "engram_store", "io_uring buffer registration failed ({e}); using unregistered buffers. Fix: raise RLIMIT_MEMLOCK (ulimit -l)");
                backend.registered_buffers = false;
                backend.new_reader()?
            }
            Err(e) => return Err(e),
        };
        if !backend.registered_buffers && options.uring_fault == Some(UringFault::Register) {
            tracing::warn!(target: "engram_store", "io_uring buffer registration failed (injected fault); using unregistered buffers. Fix: raise RLIMIT_MEMLOCK (ulimit -l)");
        }
        let rb = table.row_bytes();
        let mut out = vec![0u8; rb];
        let mut c = IoCounters::default();
        reader.read_rows(0, &[0], &[], &mut out, &mut c)?;
        Ok(backend)
    }

    /// Whether readers use registered (fixed) buffers.
    pub fn registered_buffers(&self) -> bool {
        self.registered_buffers
    }

    fn new_reader(&self) -> Result<UringReader> {
        let qd = self.options.queue_depth;
        let entries = u32::try_from(qd.next_power_of_two()).unwrap_or(4096);
        let ring = build_ring(entries, self.options.sqpoll)
            .map_err(|e| unavailable(format!("io_uring_setup({entries}) failed: {e}")))?;
        let fds: Vec<i32> = self.files.iter().map(|(f, _)| f.as_raw_fd()).collect();
        ring.submitter()
            .register_files(&fds)
            .map_err(|e| unavailable(format!("IORING_REGISTER_FILES failed: {e}")))?;
        let slot_bytes = self
            .options
            .max_read_bytes
            .max(self.table.manifest().block_bytes) as usize;
        let mut staging = AlignedBuf::new_pinned(slot_bytes * qd)?;
        if self.registered_buffers {
            let iov = libc::iovec {
                iov_base: staging.as_mut_ptr().cast(),
                iov_len: staging.capacity(),
            };
            // SAFETY: the iovec covers the staging allocation, which the reader owns and
            // frees only after the ring (and its registration) is dropped (field order).
            unsafe { ring.submitter().register_buffers(&[iov]) }.map_err(|e| {
                unavailable(format!(
                    "IORING_REGISTER_BUFFERS ({} bytes) failed: {e}",
                    staging.capacity()
                ))
            })?;
        }
        Ok(UringReader {
            ring,
            table: Arc::clone(&self.table),
            files: Arc::clone(&self.files),
            options: self.options.clone(),
            registered: self.registered_buffers,
            free_slots: (0..qd as u32).rev().collect(),
            slot_bytes,
            plan: Plan::with_capacity(1024),
            inflight: 0,
            started: vec![Instant::now(); qd],
            local: new_hist(),
            latency: self.latency.clone(),
            staging,
        })
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }
    fn reader(&self) -> Result<Box<dyn RowReader>> {
        Ok(Box::new(self.new_reader()?))
    }
    fn device_latency(&self) -> Option<&SharedHist> {
        Some(&self.latency)
    }
}

/// One thread's ring. Field order matters: the ring is dropped before the staging buffer.
struct UringReader {
    ring: IoUring,
    table: Arc<Table>,
    files: Arc<Vec<(File, PathBuf)>>,
    options: BackendOptions,
    registered: bool,
    free_slots: Vec<u32>,
    slot_bytes: usize,
    plan: Plan,
    inflight: usize,
    // (queue_depth,) submit time per staging slot
    started: Vec<Instant>,
    local: hdrhistogram::Histogram<u64>,
    latency: SharedHist,
    staging: AlignedBuf,
}

impl std::fmt::Debug for UringReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringReader")
            .field("queue_depth", &self.options.queue_depth)
            .field("registered", &self.registered)
            .field("inflight", &self.inflight)
            .finish_non_exhaustive()
    }
}

impl UringReader {
    fn reap_all(&mut self) {
        while self.inflight > 0 {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            let n = self.ring.completion().count();
            self.inflight = self.inflight.saturating_sub(n);
        }
    }
}

impl Drop for UringReader {
    fn drop(&mut self) {
        self.reap_all();
    }
}

impl RowReader for UringReader {
    fn read_rows(
        &mut self,
        layer: usize,
        ids: &[u64],
        slots: &[u32],
        out: &mut [u8],
        counters: &mut IoCounters,
    ) -> Result<()> {
        let t0 = Instant::now();
        let params = self.options.plan_params(&self.table, layer)?;
        let geo = self.table.geometry();
        // An Arc clone (no allocation) so the path can be borrowed across &mut self uses.
        let files = Arc::clone(&self.files);
        let path = &files
            .get(layer)
            .ok_or(Error::LayerOutOfRange {
                layer,
                n_layers: files.len(),
            })?
            .1;
        self.plan.build(ids, slots, &geo, &params);
        counters.plan_ns += t0.elapsed().as_nanos() as u64;
        counters.rows_unique += self.plan.unique_rows;
        let n = self.plan.reads.len();
        let mut next = 0usize;
        let mut first_err: Option<Error> = None;
        let base = self.staging.as_mut_ptr();
        while next < n || self.inflight > 0 {
            let ts = Instant::now();
            {
                let mut sq = self.ring.submission();
                while first_err.is_none() && next < n && !sq.is_full() {
                    let Some(slot) = self.free_slots.pop() else {
                        break;
                    };
                    let r = self.plan.reads[next];
                    // SAFETY: slot < queue_depth, so the range lies inside staging.
                    let ptr = unsafe { base.add(slot as usize * self.slot_bytes) };
                    let len = r.len as u32;
                    let user_data = (u64::from(slot) << 32) | next as u64;
                    let fd = types::Fixed(layer as u32);
                    let sqe = if self.registered {
                        opcode::ReadFixed::new(fd, ptr, len, 0)
                            .offset(r.offset)
                            .build()
                            .user_data(user_data)
                    } else {
                        opcode::Read::new(fd, ptr, len)
                            .offset(r.offset)
                            .build()
                            .user_data(user_data)
                    };
                    // SAFETY: the SQE points into staging, owned by self and alive until the
                    // CQE is reaped (read_rows drains; Drop reaps).
                    if unsafe { sq.push(&sqe) }.is_err() {
                        self.free_slots.push(slot);
                        break;
                    }
                    self.started[slot as usize] = Instant::now();
                    next += 1;
                    self.inflight += 1;
                    counters.reads += 1;
                    counters.device_bytes += r.len;
                }
            }
            if self.inflight == 0 {
                break;
            }
            let submitted = self.ring.submit_and_wait(1);
            counters.submit_ns += ts.elapsed().as_nanos() as u64;
            if let Err(e) = submitted {
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // The ring is unusable; nothing more can be reaped safely than what is there.
                first_err.get_or_insert(io_at("io_uring_enter", path, 0, e));
                // Wait for whatever was accepted before leaving (buffer lifetime).
                self.reap_all();
                break;
            }
            let tc = Instant::now();
            let mut cq = self.ring.completion();
            cq.sync();
            counters.complete_ns += tc.elapsed().as_nanos() as u64;
            for cqe in &mut cq {
                self.inflight -= 1;
                let ud = cqe.user_data();
                let slot = (ud >> 32) as u32;
                let ri = (ud & 0xFFFF_FFFF) as usize;
                let r = self.plan.reads[ri];
                let res = cqe.result();
                let tsc = Instant::now();
                record_ns(
                    &mut self.local,
                    tsc.duration_since(self.started[slot as usize]).as_nanos() as u64,
                );
                let outcome = if res < 0 {
                    Err(io_at(
                        "io_uring read",
                        path,
                        r.offset,
                        std::io::Error::from_raw_os_error(-res),
                    ))
                } else if res as u64 != r.len {
                    Err(io_at(
                        "io_uring read",
                        path,
                        r.offset,
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("short read: {res} of {} bytes", r.len),
                        ),
                    ))
                } else {
                    let start = slot as usize * self.slot_bytes;
                    let bytes = &self.staging.as_slice()[start..start + r.len as usize];
                    let v = if self.options.verify {
                        verify_read(&self.table, layer, r.offset, bytes)
                    } else {
                        Ok(())
                    };
                    v.map(|()| self.plan.scatter(&r, bytes, &geo, params.data_offset, out))
                };
                self.free_slots.push(slot);
                if let Err(e) = outcome {
                    first_err.get_or_insert(e);
                }
                counters.scatter_ns += tsc.elapsed().as_nanos() as u64;
            }
            if first_err.is_some() {
                next = n;
            }
        }
        self.latency.merge(&mut self.local);
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What [`probe_random_reads`] measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ProbeResult {
    pub queue_depth: usize,
    pub block_bytes: u64,
    pub reads: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mb_per_s: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// Random `block_bytes` O_DIRECT reads over `[offset, offset + len)` of `path` at queue depth
/// `qd` for `seconds`, through io_uring with a registered buffer: the disk's own limit,
/// measured the way the store reads.
pub fn probe_random_reads(
    path: &std::path::Path,
    offset: u64,
    len: u64,
    block_bytes: u64,
    qd: usize,
    seconds: f64,
    seed: u64,
) -> Result<ProbeResult> {
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |reason: String| Error::Invalid {
        what: "probe",
        reason,
    };
    if !block_bytes.is_power_of_two() || block_bytes < 512 || len < block_bytes || qd == 0 {
        return Err(bad(format!(
            "block {block_bytes} (power of two >= 512), range {len}, qd {qd}"
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| crate::error::io("open (O_DIRECT)", path, e))?;
    let entries = u32::try_from(qd.next_power_of_two()).unwrap_or(4096);
    let mut ring =
        build_ring(entries, false).map_err(|e| unavailable(format!("io_uring_setup: {e}")))?;
    ring.submitter()
        .register_files(&[file.as_raw_fd()])
        .map_err(|e| unavailable(format!("register files: {e}")))?;
    let bb = block_bytes as usize;
    let mut staging = AlignedBuf::new_pinned(bb * qd)?;
    let iov = libc::iovec {
        iov_base: staging.as_mut_ptr().cast(),
        iov_len: staging.capacity(),
    };
    // SAFETY: staging outlives the ring (dropped after it, below) and every read is reaped
    // before returning.
    let registered = unsafe { ring.submitter().register_buffers(&[iov]) }.is_ok();
    let base = staging.as_mut_ptr();
    let blocks = len / block_bytes;
    let mut rng = crate::workload::SplitMix64(seed);
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| bad(e.to_string()))?;
    let mut started = vec![std::time::Instant::now(); qd];
    let mut free: Vec<u32> = (0..qd as u32).collect();
    let (mut inflight, mut reads) = (0usize, 0u64);
    let t0 = std::time::Instant::now();
    let deadline = std::time::Duration::from_secs_f64(seconds);
    let mut first_err = None;
    loop {
        let running = t0.elapsed() < deadline && first_err.is_none();
        {
            let mut sq = ring.submission();
            while running && !sq.is_full() {
                let Some(slot) = free.pop() else { break };
                let off = offset + rng.below(blocks) * block_bytes;
                // SAFETY: slot < qd, so the range lies inside staging.
                let ptr = unsafe { base.add(slot as usize * bb) };
                let sqe = if registered {
                    opcode::ReadFixed::new(types::Fixed(0), ptr, bb as u32, 0)
                        .offset(off)
                        .build()
                } else {
                    opcode::Read::new(types::Fixed(0), ptr, bb as u32)
                        .offset(off)
                        .build()
                }
                .user_data(u64::from(slot));
                started[slot as usize] = std::time::Instant::now();
                // SAFETY: staging outlives every in-flight read (we reap all before return).
                if unsafe { sq.push(&sqe) }.is_err() {
                    free.push(slot);
                    break;
                }
                inflight += 1;
            }
        }
        if inflight == 0 {
            break;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(io_at("io_uring_enter", path, 0, e));
        }
        for cqe in ring.completion() {
            inflight -= 1;
            let slot = cqe.user_data() as u32;
            let _ = hist.record((started[slot as usize].elapsed().as_nanos() as u64).max(1));
            if cqe.result() < 0 && first_err.is_none() {
                first_err = Some(io_at(
                    "io_uring read",
                    path,
                    0,
                    std::io::Error::from_raw_os_error(-cqe.result()),
                ));
            }
            reads += 1;
            free.push(slot);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(ring);
    drop(staging);
    if let Some(e) = first_err {
        return Err(e);
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(ProbeResult {
        queue_depth: qd,
        block_bytes,
        reads,
        seconds: secs,
        iops: reads as f64 / secs,
        mb_per_s: reads as f64 * block_bytes as f64 / secs / 1e6,
        mean_us: hist.mean() / 1000.0,
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
    })
}
