//! The portable SSD path: positional reads (O_DIRECT where the filesystem allows) on a
//! pool of threads, so one reader keeps `queue_depth` reads in flight without io_uring.
//! Staging leases move to the pool and back by value: a pool thread owns the bytes it
//! writes while it writes them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, bounded};

use super::{Backend, BackendKind, BackendOptions};
use crate::error::{Error, Result, io};
use crate::metrics::SharedHist;
use crate::reads::{Completion, Driver, Engine, EngineError, Lease, ReadReq, Staging};
use crate::table::Table;

/// Tasks queued to the pool per thread before senders block (back-pressure).
pub(crate) const POOL_QUEUE_PER_THREAD: usize = 64;

/// The layer files of a table opened for device reads, indexed by layer, then the
/// records file (index `n_layers`) when the store reads records.
#[derive(Debug)]
pub struct DeviceFiles {
    /// (file, path) per layer index, then the records file when present.
    pub files: Vec<(File, PathBuf)>,
    /// Whether O_DIRECT is in effect (the filesystem may refuse it: tmpfs).
    pub direct: bool,
}

/// Opens the layer files of `table` again for unbuffered reads, checking that each is the
/// same file (device and inode) the table validated: a table replaced on disk between
/// `Table::open` and here is an error, never rows of another table. Falls back to
/// buffered reads when the filesystem rejects O_DIRECT.
pub(crate) fn open_direct(
    table: &Table,
    records: Option<&crate::records::Records>,
) -> Result<DeviceFiles> {
    let mut files = Vec::with_capacity(table.n_layers() + 1);
    let mut direct = true;
    let mut validated = Vec::with_capacity(table.n_layers() + 1);
    for li in 0..table.n_layers() {
        let lf = table.layer(li)?;
        validated.push((&lf.file, &lf.path));
    }
    if let Some(r) = records {
        validated.push((&r.file, &r.path));
    }
    for (validated_file, path) in validated {
        let path = path.clone();
        // /proc/self/fd/N reopens the validated inode itself; the path is the fallback.
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", validated_file.as_raw_fd()));
        let open = |p: &std::path::Path, flags: i32| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(p)
        };
        let mut f = open(&proc_path, libc::O_DIRECT).or_else(|_| open(&path, libc::O_DIRECT));
        if matches!(&f, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
            direct = false;
            f = open(&proc_path, 0).or_else(|_| open(&path, 0));
        }
        let f = f.map_err(|e| io("open layer file for device reads", &path, e))?;
        let a = validated_file
            .metadata()
            .map_err(|e| io("stat", &path, e))?;
        let b = f.metadata().map_err(|e| io("stat", &path, e))?;
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return Err(Error::Replaced { path });
        }
        files.push((f, path));
    }
    if !direct {
        tracing::info!(target: "engram_store", "O_DIRECT not supported by the filesystem of {}; reads go through the page cache", table.dir().display());
    }
    Ok(DeviceFiles { files, direct })
}

#[derive(Debug)]
struct Task {
    req: ReadReq,
    lease: Lease,
    reply: Sender<Completion>,
}

/// Reads `lease.len()` bytes at `offset`, stopping early only at end of file; returns the
/// bytes read. Interrupted reads are retried.
fn read_into(file: &File, lease: &mut Lease, offset: u64) -> std::io::Result<usize> {
    let buf = lease.bytes_mut();
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn pool_thread(rx: Receiver<Task>, files: Arc<DeviceFiles>) {
    // Exits when every sender (the backend and its readers' engines) is gone.
    while let Ok(mut task) = rx.recv() {
        let result = match files.files.get(task.req.file as usize) {
            Some((f, _)) => {
                // A panic here would lose the lease and leave the reader waiting for a
                // reply forever: it becomes an error reply instead.
                let lease = &mut task.lease;
                let offset = task.req.offset;
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    read_into(f, lease, offset)
                }))
                .unwrap_or_else(|_| Err(std::io::Error::other("pread pool thread panicked")))
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("no layer file {}", task.req.file),
            )),
        };
        let _ = task.reply.send(Completion {
            tag: task.req.tag,
            lease: task.lease,
            result,
        });
    }
}

/// pread on a thread pool shared by every reader of the backend.
#[derive(Debug)]
pub struct PreadBackend {
    table: Arc<Table>,
    options: BackendOptions,
    tasks: Sender<Task>,
    latency: SharedHist,
}

impl PreadBackend {
    /// Opens the layer files and starts the pool of `options.pread_threads` threads.
    pub fn new(table: &Arc<Table>, options: &BackendOptions) -> Result<Self> {
        let files = Arc::new(open_direct(table, options.records.as_deref())?);
        let (tx, rx) = bounded::<Task>(options.pread_threads * POOL_QUEUE_PER_THREAD);
        for t in 0..options.pread_threads {
            let rx = rx.clone();
            let files = Arc::clone(&files);
            std::thread::Builder::new()
                .name(format!("engram-pread-{t}"))
                .spawn(move || pool_thread(rx, files))
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
    fn driver(&self, rebuilt: bool) -> Result<Driver> {
        let tasks = self.tasks.clone();
        Driver::new(
            &self.table,
            &self.options.for_engine(rebuilt),
            self.latency.clone(),
            |staging| Ok(Box::new(PreadEngine::new(tasks, staging))),
        )
    }
    fn device_latency(&self) -> Option<&SharedHist> {
        Some(&self.latency)
    }
}

/// One reader's view of the pool: its own reply channel.
#[derive(Debug)]
pub(crate) struct PreadEngine {
    tasks: Sender<Task>,
    reply_tx: Sender<Completion>,
    reply_rx: Receiver<Completion>,
    in_flight: usize,
}

impl PreadEngine {
    fn new(tasks: Sender<Task>, staging: &Staging) -> Self {
        let (reply_tx, reply_rx) = bounded(staging.depth());
        Self {
            tasks,
            reply_tx,
            reply_rx,
            in_flight: 0,
        }
    }
}

impl Engine for PreadEngine {
    fn name(&self) -> &'static str {
        "pread"
    }

    fn submit(&mut self, req: ReadReq, lease: Lease) -> Result<(), (Lease, EngineError)> {
        let task = Task {
            req,
            lease,
            reply: self.reply_tx.clone(),
        };
        match self.tasks.send(task) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(e) => Err((
                e.into_inner().lease,
                EngineError::Broken("the pread pool has stopped".into()),
            )),
        }
    }

    fn reap(
        &mut self,
        min_complete: usize,
        timeout: Option<std::time::Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), EngineError> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut got = 0;
        while got < min_complete && self.in_flight > 0 {
            // The reply sender lives in this engine, so recv cannot see a disconnect; pool
            // threads always reply (panics included).
            let c = match deadline {
                None => self
                    .reply_rx
                    .recv()
                    .map_err(|_| EngineError::Broken("the pread pool has stopped".into()))?,
                Some(d) => match self.reply_rx.recv_deadline(d) {
                    Ok(c) => c,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => break,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        return Err(EngineError::Broken("the pread pool has stopped".into()));
                    }
                },
            };
            self.in_flight -= 1;
            out.push(c);
            got += 1;
        }
        while let Ok(c) = self.reply_rx.try_recv() {
            self.in_flight -= 1;
            out.push(c);
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}
