//! Opening input files defensively: every file the project reads from a path goes through
//! here, so a FIFO, a device, a directory or a symlink to `/dev/zero` in place of a
//! manifest, a tokenizer or a weights file is a clear error instead of a hang or an
//! unbounded allocation.
//!
//! [`open_regular`] opens with `O_NONBLOCK` (so opening a FIFO with no writer does not
//! block), checks with `fstat` on the opened descriptor (no check-then-open race) that it
//! is a regular file, then clears `O_NONBLOCK`. [`read_regular`] also refuses files larger
//! than a named limit before reading a byte, and reads at most that many bytes even if the
//! file grows meanwhile; its buffer is reserved fallibly.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Why an input file could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The operating system refused (missing file, permissions, I/O error).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path is not a regular file (a FIFO, socket, device or directory).
    #[error("{path} is a {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    /// The file is larger than the limit for what it holds.
    #[error("{path} is {found} bytes, above the {limit}-byte limit for {what} ({name})")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        name: &'static str,
        limit: u64,
        found: u64,
    },
    /// Memory for the file's contents could not be reserved.
    #[error("{path}: cannot allocate {bytes} bytes to read it")]
    OutOfMemory { path: PathBuf, bytes: u64 },
}

/// A size limit with the name of the constant that sets it (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// What the file holds ("manifest", "tokenizer.json").
    pub what: &'static str,
    /// The constant's name (`MAX_MANIFEST_BYTES`).
    pub name: &'static str,
    /// Largest accepted size in bytes.
    pub bytes: u64,
}

fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Opens `path` read-only and returns it with its size, or an error unless it is a regular
/// file. Never blocks on a FIFO.
pub fn open_regular(path: &Path) -> Result<(File, u64), FileError> {
    open_regular_at(rustix::fs::CWD, path, path)
}

/// [`open_regular`] for `name` relative to the open directory `dir` (`openat`), so that
/// several files are taken from one directory even if its path is meanwhile renamed or
/// replaced. `shown` is the path used in messages.
pub fn open_regular_at(
    dir: impl AsFd,
    name: &Path,
    shown: &Path,
) -> Result<(File, u64), FileError> {
    let io = |op, source| FileError::Io {
        op,
        path: shown.to_path_buf(),
        source,
    };
    let flags =
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, rustix::fs::Mode::empty())
        .map_err(|e| io("open", e.into()))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| io("stat", e))?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular {
            path: shown.to_path_buf(),
            kind: kind_name(meta.file_type()),
        });
    }
    clear_nonblock(&file).map_err(|e| io("fcntl", e))?;
    Ok((file, meta.len()))
}

/// Reads all of the regular file `path`, refusing it when it is larger than `limit`.
pub fn read_regular(path: &Path, limit: Limit) -> Result<Vec<u8>, FileError> {
    read_regular_at(rustix::fs::CWD, path, path, limit)
}

/// [`read_regular`] for `name` relative to the open directory `dir` (see
/// [`open_regular_at`]); `shown` is the path used in messages.
pub fn read_regular_at(
    dir: impl AsFd,
    name: &Path,
    shown: &Path,
    limit: Limit,
) -> Result<Vec<u8>, FileError> {
    let path = shown;
    let (file, len) = open_regular_at(dir, name, shown)?;
    if len > limit.bytes {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            what: limit.what,
            name: limit.name,
            limit: limit.bytes,
            found: len,
        });
    }
    let mut bytes = Vec::new();
    // `len` <= limit, and limits are far below usize::MAX on 64-bit targets.
    let want = usize::try_from(len).unwrap_or(usize::MAX);
    bytes
        .try_reserve_exact(want)
        .map_err(|_| FileError::OutOfMemory {
            path: path.to_path_buf(),
            bytes: len,
        })?;
    // One byte past the limit tells a file that grew after fstat from one that did not.
    file.take(limit.bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limit.bytes {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            what: limit.what,
            name: limit.name,
            limit: limit.bytes,
            found: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// [`read_regular`] for UTF-8 text.
pub fn read_regular_string(path: &Path, limit: Limit) -> Result<String, FileError> {
    let bytes = read_regular(path, limit)?;
    String::from_utf8(bytes).map_err(|e| FileError::Io {
        op: "read (UTF-8)",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })
}

fn clear_nonblock(file: &File) -> std::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limit = Limit {
        what: "test file",
        name: "SMALL",
        bytes: 16,
    };

    #[test]
    fn reads_small_regular_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a");
        std::fs::write(&p, b"hello").expect("write");
        assert_eq!(read_regular(&p, SMALL).expect("read"), b"hello");
        assert_eq!(read_regular_string(&p, SMALL).expect("read"), "hello");
    }

    #[test]
    fn refuses_large_files_before_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("big");
        std::fs::write(&p, [0u8; 17]).expect("write");
        let e = read_regular(&p, SMALL).expect_err("too large");
        assert!(e.to_string().contains("above the 16-byte limit"), "{e}");
        assert!(e.to_string().contains("SMALL"), "{e}");
    }

    #[test]
    fn refuses_special_files_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = read_regular(dir.path(), SMALL).expect_err("directory");
        assert!(e.to_string().contains("directory"), "{e}");
        let e = read_regular(Path::new("/dev/zero"), SMALL).expect_err("device");
        assert!(e.to_string().contains("character device"), "{e}");
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(status.success());
        // Opening a FIFO with no writer blocks without O_NONBLOCK: this would hang.
        let e = read_regular(&fifo, SMALL).expect_err("fifo");
        assert!(e.to_string().contains("FIFO"), "{e}");
    }

    #[test]
    fn opens_relative_to_a_directory_handle_after_the_path_moved() {
        let root = tempfile::tempdir().expect("tempdir");
        let a = root.path().join("a");
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::write(a.join("f"), b"old").expect("write");
        let handle = File::open(&a).expect("directory handle");
        // The path now names another directory; the handle still reaches the first one.
        std::fs::rename(&a, root.path().join("moved")).expect("rename");
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::write(a.join("f"), b"new").expect("write");
        let got = read_regular_at(&handle, Path::new("f"), &a.join("f"), SMALL).expect("read");
        assert_eq!(got, b"old");
        let e = read_regular_at(&handle, Path::new("missing"), Path::new("shown/m"), SMALL)
            .expect_err("missing");
        assert!(e.to_string().contains("shown/m"), "{e}");
    }

    #[test]
    fn symlink_to_dev_zero_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("manifest.json");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        let e = read_regular(&link, SMALL).expect_err("device behind a link");
        assert!(e.to_string().contains("character device"), "{e}");
    }
}
