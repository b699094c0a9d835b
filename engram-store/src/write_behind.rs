//! Write-behind for a layer file's data region: the table writer fills one batch while a
//! writer thread writes the previous one, so the disk is kept busy while rows are packed
//! and checksummed (and, for an import, while the source is read).
//!
//! A fixed set of [`WRITE_BATCHES`] page-aligned buffers cycles between the filler and the
//! thread: the filler hands a full batch over and takes back a free one, waiting while the
//! thread still writes every other one. A failed write stops the thread; the error is
//! returned by the next hand-over or by `WriteBehind::finish`, so nothing is published
//! after it. Dropping a `WriteBehind` waits for the write in flight (at most one batch),
//! so no write lands after the writer that owns the file is gone.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::buffer::AlignedBuf;
use crate::error::{Error, Result, io, io_at};

/// Batches per layer file being written: one being filled, one being written. More would
/// only help if packing were burstier than the disk; each costs one batch of memory.
pub const WRITE_BATCHES: usize = 2;

/// One full batch for the thread: `buf[..len]` goes to file offset `at`.
#[derive(Debug)]
struct Job {
    buf: AlignedBuf,
    len: usize,
    at: u64,
}

/// The writer thread of one layer file and the buffers it cycles.
#[derive(Debug)]
pub(crate) struct WriteBehind {
    path: PathBuf,
    jobs: Option<SyncSender<Job>>,
    free: Receiver<AlignedBuf>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// The thread's descriptors: `data` (`O_DIRECT` when `direct`) and `file`, the ordinary
/// descriptor the writes fall back to when `O_DIRECT` refuses one.
#[derive(Debug)]
struct Sink {
    path: PathBuf,
    file: File,
    data: File,
    direct: bool,
}

impl Sink {
    /// Writes `bytes` at `at`, through the page cache from now on if `O_DIRECT` refuses
    /// the write (alignment the device wants larger than a page).
    fn write(&mut self, bytes: &[u8], at: u64) -> Result<()> {
        let mut r = self.data.write_all_at(bytes, at);
        if self.direct && matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
            tracing::info!(path = %self.path.display(), "O_DIRECT write refused (EINVAL): writing through the page cache");
            self.direct = false;
            self.data = self
                .file
                .try_clone()
                .map_err(|e| io("dup", &self.path, e))?;
            r = self.data.write_all_at(bytes, at);
        }
        r.map_err(|e| io_at("write", &self.path, at, e))
    }
}

impl WriteBehind {
    /// Starts the thread for the file at `path`, writing through `data` (`O_DIRECT` when
    /// `direct`; `file` is the fallback), with [`WRITE_BATCHES`] buffers of `batch_bytes`
    /// (page-aligned). Returns the first buffer to fill.
    pub(crate) fn start(
        path: &Path,
        file: &File,
        data: File,
        direct: bool,
        batch_bytes: usize,
    ) -> Result<(Self, AlignedBuf)> {
        let page = crate::format::PAGE_BYTES as usize;
        let first = AlignedBuf::new(batch_bytes, page)?;
        let (back, free) = sync_channel(WRITE_BATCHES);
        for _ in 1..WRITE_BATCHES {
            back.send(AlignedBuf::new(batch_bytes, page)?)
                .map_err(|_| Error::Writer("filling the write-behind buffers".into()))?;
        }
        let (jobs, rx) = sync_channel::<Job>(WRITE_BATCHES);
        let mut sink = Sink {
            path: path.to_path_buf(),
            file: file.try_clone().map_err(|e| io("dup", path, e))?,
            data,
            direct,
        };
        let thread = std::thread::Builder::new()
            .name("engram-table-writer".into())
            .spawn(move || -> Result<()> {
                for job in rx {
                    sink.write(&job.buf.as_slice()[..job.len], job.at)?;
                    // The filler may be gone (dropped after an error elsewhere).
                    let _ = back.send(job.buf);
                }
                Ok(())
            })
            .map_err(|e| io("spawn the table writer thread for", path, e))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                jobs: Some(jobs),
                free,
                thread: Some(thread),
            },
            first,
        ))
    }

    /// Hands `batch[..len]` (for file offset `at`) to the thread and puts a free buffer in
    /// its place, waiting while every other buffer is still being written.
    pub(crate) fn submit(&mut self, batch: &mut AlignedBuf, len: usize, at: u64) -> Result<()> {
        debug_assert!(len <= batch.len(), "a batch is written from its own buffer");
        let Ok(mut next) = self.free.recv() else {
            return Err(self.stopped());
        };
        std::mem::swap(batch, &mut next);
        let job = Job { buf: next, len, at };
        match self.jobs.as_ref().map(|j| j.send(job)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    /// Waits for every batch handed over to be written; the first failed write's error.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.jobs = None;
        self.join()
    }

    /// The error that stopped the thread (it stops only on one, or when told to).
    fn stopped(&mut self) -> Error {
        self.jobs = None;
        match self.join() {
            Err(e) => e,
            Ok(()) => Error::Writer(format!(
                "the writer thread of {} stopped early",
                self.path.display()
            )),
        }
    }

    fn join(&mut self) -> Result<()> {
        match self.thread.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Writer(format!(
                "the writer thread of {} panicked",
                self.path.display()
            ))),
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // An abandoned layer: let the write in flight finish before the file goes.
        self.jobs = None;
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_land_at_their_offsets_and_buffers_cycle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = File::create(&path).expect("create");
        let data = file.try_clone().expect("dup");
        let (mut wb, mut batch) =
            WriteBehind::start(&path, &file, data, false, 8192).expect("start");
        for i in 0..5u8 {
            batch.as_mut_slice().fill(i + 1);
            wb.submit(&mut batch, 4096, u64::from(i) * 4096)
                .expect("submit");
        }
        wb.finish().expect("finish");
        let got = std::fs::read(&path).expect("read");
        assert_eq!(got.len(), 5 * 4096);
        for (i, page) in got.chunks(4096).enumerate() {
            assert!(page.iter().all(|&b| usize::from(b) == i + 1), "page {i}");
        }
    }

    #[test]
    fn a_failed_write_is_returned_by_a_later_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").expect("write");
        // A read-only descriptor: every write fails (EBADF).
        let file = File::open(&path).expect("open");
        let data = file.try_clone().expect("dup");
        let (mut wb, mut batch) =
            WriteBehind::start(&path, &file, data, false, 4096).expect("start");
        let mut first_err = None;
        for i in 0..4u64 {
            if let Err(e) = wb.submit(&mut batch, 4096, i * 4096) {
                first_err = Some(e);
                break;
            }
        }
        let e = match first_err {
            Some(e) => e,
            None => wb.finish().expect_err("the write failed"),
        };
        assert!(e.to_string().contains("write"), "{e}");
    }
}
