//! Large sequential reads of checkpoint shards: `O_DIRECT` into 4 KiB-aligned buffers
//! (no page cache: a 100 GB shard neither evicts the machine's cache nor pays a copy), or,
//! where the file system refuses `O_DIRECT` (tmpfs, some FUSE and network file systems) or
//! when asked, `posix_fadvise(SEQUENTIAL)` + large `pread`s, dropping each range from the
//! cache once read (`DONTNEED`). Buffers cycle through a fixed pool ([`Pool`]), so memory
//! does not grow with the checkpoint.

use std::fs::File;
use std::num::NonZeroU64;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use anyhow::{Context, Result, bail};
pub use engram_store::AlignedBuf;

/// Alignment of `O_DIRECT` offsets, lengths and buffers.
pub const ALIGN: u64 = 4096;

/// How shards are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// `O_DIRECT` (falls back to `fadvise` where the file system refuses it).
    Direct,
    /// Page-cache reads with `posix_fadvise(SEQUENTIAL)`, dropped from the cache once read.
    Fadvise,
}

/// Buffers that return to their pool when the last [`Piece`] holding one is dropped.
#[derive(Debug)]
pub struct Pool {
    free: Receiver<AlignedBuf>,
    back: SyncSender<AlignedBuf>,
}

impl Pool {
    /// `n` buffers of `cap` bytes.
    pub fn new(n: usize, cap: usize) -> Result<Self> {
        let (back, free) = sync_channel(n);
        for _ in 0..n {
            back.send(AlignedBuf::new(cap, ALIGN as usize)?)
                .context("filling the read-buffer pool")?;
        }
        Ok(Self { free, back })
    }

    /// The next free buffer (waits while all are in use downstream). `None` when the
    /// pool is gone.
    pub fn take(&self) -> Option<AlignedBuf> {
        self.free.recv().ok()
    }

    /// A piece of `buf` (valid bytes `range`) that returns `buf` here when dropped.
    pub fn piece(&self, buf: AlignedBuf, range: Range<usize>, file_offset: u64) -> Piece {
        Piece {
            buf: Some(buf),
            range,
            file_offset,
            back: self.back.clone(),
        }
    }
}

/// Bytes read from a file: `file_offset` is the offset of `bytes()[0]`.
#[derive(Debug)]
pub struct Piece {
    buf: Option<AlignedBuf>,
    range: Range<usize>,
    /// File offset of `bytes()[0]`.
    pub file_offset: u64,
    back: SyncSender<AlignedBuf>,
}

impl Piece {
    /// The bytes read.
    pub fn bytes(&self) -> &[u8] {
        self.buf
            .as_ref()
            .map_or(&[][..], |b| &b.as_slice()[self.range.clone()])
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        // A full or closed pool only means the importer is finishing.
        if let Some(buf) = self.buf.take() {
            let _ = self.back.try_send(buf);
        }
    }
}

/// One open shard, read in large sequential ranges.
#[derive(Debug)]
pub struct SeqReader {
    file: File,
    path: PathBuf,
    mode: ReadMode,
}

impl SeqReader {
    /// Opens `path` for `mode`; `Direct` falls back to `Fadvise` (logged) when the file
    /// system refuses `O_DIRECT`.
    pub fn open(path: &Path, mode: ReadMode) -> Result<Self> {
        if mode == ReadMode::Direct {
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(path)
            {
                Ok(file) => {
                    return Ok(Self {
                        file,
                        path: path.to_path_buf(),
                        mode,
                    });
                }
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    tracing::info!(path = %path.display(), "O_DIRECT refused by the file system (EINVAL): reading through the page cache with fadvise");
                }
                Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
            }
        }
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        // Advice only: a file system without it reads the same bytes.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        Ok(Self {
            file,
            path: path.to_path_buf(),
            mode: ReadMode::Fadvise,
        })
    }

    /// The mode in effect (after any fallback).
    pub fn mode(&self) -> ReadMode {
        self.mode
    }

    /// Reads exactly `range` of the file into `buf` (at most `buf.len() - 2 * ALIGN`
    /// bytes); returns where in `buf` the bytes are. `what` names the tensor for errors.
    pub fn read(
        &self,
        range: Range<u64>,
        buf: &mut AlignedBuf,
        what: &str,
    ) -> Result<Range<usize>> {
        let (start, end) = match self.mode {
            ReadMode::Direct => (
                range.start / ALIGN * ALIGN,
                range.end.div_ceil(ALIGN) * ALIGN,
            ),
            ReadMode::Fadvise => (range.start, range.end),
        };
        let len = (end - start) as usize;
        if len > buf.capacity() {
            bail!(
                "read of {len} bytes exceeds the {}-byte buffer",
                buf.capacity()
            );
        }
        let need = (range.end - start) as usize;
        let out = &mut buf.as_mut_slice()[..len];
        let mut got = 0usize;
        while got < need {
            match self.file.read_at(&mut out[got..], start + got as u64) {
                Ok(0) => bail!(
                    "{} ended at byte {} inside {what} (needed bytes up to {}): truncated shard?",
                    self.path.display(),
                    start + got as u64,
                    range.end
                ),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "reading {} at byte {} ({what})",
                            self.path.display(),
                            start + got as u64
                        )
                    });
                }
            }
        }
        if self.mode == ReadMode::Fadvise
            && let Some(n) = NonZeroU64::new(end - start)
        {
            let _ = rustix::fs::fadvise(&self.file, start, Some(n), rustix::fs::Advice::DontNeed);
        }
        let off = (range.start - start) as usize;
        Ok(off..off + (range.end - range.start) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_modes_read_the_same_unaligned_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        for mode in [ReadMode::Direct, ReadMode::Fadvise] {
            let r = SeqReader::open(&path, mode).expect("open");
            let mut buf = AlignedBuf::new(1 << 16, ALIGN as usize).expect("alloc");
            for range in [0..10u64, 4095..4097, 1234..49_999, 40_000..50_000] {
                let at = r.read(range.clone(), &mut buf, "t").expect("read");
                let want = &data[range.start as usize..range.end as usize];
                assert_eq!(&buf.as_slice()[at], want, "{mode:?} {range:?}");
            }
            let e = r
                .read(49_000..50_001, &mut buf, "tensor x")
                .expect_err("past the end");
            assert!(format!("{e:#}").contains("tensor x"), "{e:#}");
        }
    }
}
