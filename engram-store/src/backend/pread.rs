//! The portable SSD path: positional reads (O_DIRECT where the filesystem allows) on a
//! pool of threads, so one caller keeps `queue_depth` reads in flight without io_uring.
//! Buffers move between the caller and the pool by value: no shared mutable memory.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};

use super::{Backend, BackendKind, BackendOptions, IoCounters, RowReader, verify_read};
use crate::batch::Plan;
use crate::buffer::AlignedBuf;
use crate::error::{Error, Result, io};
use crate::metrics::{SharedHist, new_hist, record_ns};
use crate::table::Table;

/// Tasks queued to the pool per thread before senders block (back-pressure).
pub const POOL_QUEUE_PER_THREAD: usize = 64;

/// Opens the layer files for unbuffered reads; falls back to buffered when the filesystem
/// rejects O_DIRECT (tmpfs), returning whether O_DIRECT is in effect.
pub(crate) fn open_direct(table: &Table) -> Result<(Vec<(File, PathBuf)>, bool)> {
    let mut files = Vec::with_capacity(table.n_layers());
    let mut direct = true;
    for li in 0..table.n_layers() {
        let path = table.layer(li)?.path.clone();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path);
        let f = match f {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                direct = false;
                File::open(&path).map_err(|e| io("open layer file", &path, e))?
            }
            Err(e) => return Err(io("open layer file (O_DIRECT)", &path, e)),
        };
        files.push((f, path));
    }
    if !direct {
        tracing::info!(target: "engram_store", "O_DIRECT not supported by the filesystem of {}; reads go through the page cache", table.dir().display());
    }
    Ok((files, direct))
}

#[derive(Debug)]
struct Task {
    layer: usize,
    offset: u64,
    len: usize,
    read_index: u32,
    buf: AlignedBuf,
    reply: Sender<Done>,
}

#[derive(Debug)]
struct Done {
    read_index: u32,
    buf: AlignedBuf,
    result: Result<()>,
}

/// pread on a thread pool.
#[derive(Debug)]
pub struct PreadBackend {
    table: Arc<Table>,
    options: BackendOptions,
    tasks: Sender<Task>,
    latency: SharedHist,
}

impl PreadBackend {
    pub fn new(table: &Arc<Table>, options: &BackendOptions) -> Result<Self> {
        let (files, _direct) = open_direct(table)?;
        let files = Arc::new(files);
        let (tx, rx) = bounded::<Task>(options.pread_threads * POOL_QUEUE_PER_THREAD);
        for t in 0..options.pread_threads {
            let rx: Receiver<Task> = rx.clone();
            let files = Arc::clone(&files);
            std::thread::Builder::new()
                .name(format!("engram-pread-{t}"))
                .spawn(move || {
                    // Exits when every sender (backend and readers) is gone.
                    while let Ok(mut task) = rx.recv() {
                        let result = match files.get(task.layer) {
                            Some((f, path)) => {
                                let len = task.len;
                                super::pread_exact(f, path, &mut task.buf[..len], task.offset)
                            }
                            None => Err(Error::LayerOutOfRange {
                                layer: task.layer,
                                n_layers: files.len(),
                            }),
                        };
                        let _ = task.reply.send(Done {
                            read_index: task.read_index,
                            buf: task.buf,
                            result,
                        });
                    }
                })
                .map_err(|e| Error::Unavailable {
                    what: "pread thread pool",
                    reason: e.to_string(),
                })?;
        }
        Ok(Self {
            table: Arc::clone(table),
            options: options.clone(),
            tasks: tx,
            latency: SharedHist::default(),
        })
    }
}

impl Backend for PreadBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Pread
    }
    fn reader(&self) -> Result<Box<dyn RowReader>> {
        let qd = self.options.queue_depth;
        let max_read = self
            .options
            .max_read_bytes
            .max(self.table.manifest().block_bytes) as usize;
        let bufs = (0..qd)
            .map(|_| AlignedBuf::new_pinned(max_read))
            .collect::<Result<Vec<_>>>()?;
        let (reply_tx, reply_rx) = bounded(qd);
        Ok(Box::new(PreadReader {
            table: Arc::clone(&self.table),
            options: self.options.clone(),
            tasks: self.tasks.clone(),
            reply_tx,
            reply_rx,
            free: bufs,
            plan: Plan::with_capacity(1024),
            started: Vec::with_capacity(1024),
            local: new_hist(),
            latency: self.latency.clone(),
        }))
    }
    fn device_latency(&self) -> Option<&SharedHist> {
        Some(&self.latency)
    }
}

#[derive(Debug)]
struct PreadReader {
    table: Arc<Table>,
    options: BackendOptions,
    tasks: Sender<Task>,
    reply_tx: Sender<Done>,
    reply_rx: Receiver<Done>,
    free: Vec<AlignedBuf>,
    plan: Plan,
    // (reads,) submit time per planned read
    started: Vec<Instant>,
    local: hdrhistogram::Histogram<u64>,
    latency: SharedHist,
}

impl RowReader for PreadReader {
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
        self.plan.build(ids, slots, &geo, &params);
        counters.plan_ns += t0.elapsed().as_nanos() as u64;
        counters.rows_unique += self.plan.unique_rows;
        let n = self.plan.reads.len();
        self.started.clear();
        self.started.resize(n, t0);
        let (mut next, mut inflight) = (0usize, 0usize);
        let mut first_err: Option<Error> = None;
        while next < n || inflight > 0 {
            let ts = Instant::now();
            while first_err.is_none() && next < n {
                let Some(buf) = self.free.pop() else { break };
                let r = self.plan.reads[next];
                let task = Task {
                    layer,
                    offset: r.offset,
                    len: r.len as usize,
                    read_index: next as u32,
                    buf,
                    reply: self.reply_tx.clone(),
                };
                self.started[next] = Instant::now();
                if let Err(e) = self.tasks.send(task) {
                    self.free.push(e.into_inner().buf);
                    first_err = Some(Error::ShutDown("pread pool stopped"));
                    break;
                }
                next += 1;
                inflight += 1;
                counters.reads += 1;
                counters.device_bytes += r.len;
            }
            counters.submit_ns += ts.elapsed().as_nanos() as u64;
            if inflight == 0 {
                break;
            }
            let tc = Instant::now();
            let done = self
                .reply_rx
                .recv()
                .map_err(|_| Error::ShutDown("pread pool stopped"))?;
            counters.complete_ns += tc.elapsed().as_nanos() as u64;
            inflight -= 1;
            let tsc = Instant::now();
            record_ns(
                &mut self.local,
                tsc.duration_since(self.started[done.read_index as usize])
                    .as_nanos() as u64,
            );
            let r = self.plan.reads[done.read_index as usize];
            let res = done.result.and_then(|()| {
                let bytes = &done.buf[..r.len as usize];
                if self.options.verify {
                    verify_read(&self.table, layer, r.offset, bytes)?;
                }
                self.plan.scatter(&r, bytes, &geo, params.data_offset, out);
                Ok(())
            });
            self.free.push(done.buf);
            if let Err(e) = res
                && first_err.is_none()
            {
                first_err = Some(e);
            }
            counters.scatter_ns += tsc.elapsed().as_nanos() as u64;
            if first_err.is_some() && next < n {
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
