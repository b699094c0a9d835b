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
//!
//! Files whose contents must be exactly the ones published (model weights, the checkpoint a
//! table is imported from) are checked against a [`Sha256Sums`] list kept beside them, in
//! the format `sha256sum` writes and `sha256sum -c` checks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Why an input file could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The operating system refused (missing file, permissions, I/O error). The OS error is
    /// part of the message, not a `source()`, so an error chain prints it once.
    #[error("{op} {path}: {error}")]
    Io {
        /// The call that failed ("open", "stat", "read").
        op: &'static str,
        /// The file, as the caller named it.
        path: PathBuf,
        /// The operating-system error.
        error: std::io::Error,
    },
    /// The path is not a regular file (a FIFO, socket, device or directory).
    #[error("{path} is a {kind}, not a regular file")]
    NotRegular {
        /// The path that was opened.
        path: PathBuf,
        /// What it is instead ("directory", "FIFO", "character device", ...).
        kind: &'static str,
    },
    /// The file is larger than the limit for what it holds.
    #[error("{path} is {found} bytes, above the {limit}-byte limit for {what} ({name})")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What the file holds ("manifest", "tokenizer.json").
        what: &'static str,
        /// Name of the limit's const (`MAX_MANIFEST_BYTES`).
        name: &'static str,
        /// The largest accepted size in bytes.
        limit: u64,
        /// The file's size in bytes (or the bytes read before the limit was passed).
        found: u64,
    },
    /// Memory for the file's contents could not be reserved.
    #[error("{path}: cannot allocate {bytes} bytes to read it")]
    OutOfMemory {
        /// The file being read.
        path: PathBuf,
        /// The reservation that failed, in bytes.
        bytes: u64,
    },
    /// A `SHA256SUMS` file is malformed.
    #[error(
        "{path} line {line}: {reason} (expected `sha256sum` lines: 64 hex digits, two spaces, a file name)"
    )]
    Checksums {
        /// The `SHA256SUMS` file.
        path: PathBuf,
        /// The 1-based line number of the bad line.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A file that must be checksummed has no `SHA256SUMS` beside it.
    #[error(
        "{sums} is missing: {path} must be checked against it (write it in that directory with `sha256sum NAME... > SHA256SUMS`)"
    )]
    NoChecksums {
        /// The file that must be checked.
        path: PathBuf,
        /// The `SHA256SUMS` path that does not exist.
        sums: PathBuf,
    },
    /// A file that must be checksummed is not listed in the `SHA256SUMS` beside it.
    #[error(
        "{path} is not listed in {sums}: add it with `sha256sum NAME >> SHA256SUMS` in that directory"
    )]
    NotListed {
        /// The file that must be checked.
        path: PathBuf,
        /// The `SHA256SUMS` file that does not list it.
        sums: PathBuf,
    },
    /// A file's contents differ from the SHA-256 its `SHA256SUMS` records.
    #[error(
        "{path} has SHA-256 {found}, {sums} records {expected}: the file is corrupted or was replaced"
    )]
    ChecksumMismatch {
        /// The file whose contents differ.
        path: PathBuf,
        /// The `SHA256SUMS` file that records its digest.
        sums: PathBuf,
        /// The recorded digest, 64 lowercase hex digits.
        expected: String,
        /// The digest of the contents as read, 64 lowercase hex digits.
        found: String,
    },
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
    let io = |op, error| FileError::Io {
        op,
        path: shown.to_path_buf(),
        error,
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
    let (file, len) = open_regular_at(dir, name, shown)?;
    if len > limit.bytes {
        return Err(FileError::TooLarge {
            path: shown.to_path_buf(),
            what: limit.what,
            name: limit.name,
            limit: limit.bytes,
            found: len,
        });
    }
    read_stream(file, len, shown, limit)
}

/// Reads `reader` to its end into a buffer reserved fallibly (`size_hint` bytes first),
/// refusing more than `limit` bytes; `path` names the input in errors (`<stdin>` for a
/// pipe). For inputs that are not files, such as standard input.
pub fn read_stream(
    mut reader: impl Read,
    size_hint: u64,
    path: &Path,
    limit: Limit,
) -> Result<Vec<u8>, FileError> {
    /// Growth step when the size is not known in advance.
    const CHUNK: usize = 1 << 20;
    let oom = |bytes: usize| FileError::OutOfMemory {
        path: path.to_path_buf(),
        bytes: bytes as u64,
    };
    let mut bytes: Vec<u8> = Vec::new();
    // `size_hint` <= limit when it comes from fstat; limits are far below usize::MAX.
    let first = usize::try_from(size_hint.min(limit.bytes)).unwrap_or(usize::MAX);
    bytes.try_reserve_exact(first).map_err(|_| oom(first))?;
    // One byte past the limit tells a file that grew after fstat from one that did not.
    let cap = limit.bytes.saturating_add(1);
    let mut limited = (&mut reader).take(cap);
    let io = |error| FileError::Io {
        op: "read",
        path: path.to_path_buf(),
        error,
    };
    loop {
        if bytes.len() == bytes.capacity() {
            // Full: probe with a small buffer before growing, so a file of the size fstat
            // gave is never copied into a larger allocation just to find its end.
            let mut probe = [0u8; 4096];
            let n = match limited.read(&mut probe) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            if n == 0 {
                break;
            }
            // Amortized growth for streams of unknown length.
            bytes
                .try_reserve(n.max(CHUNK))
                .map_err(|_| oom(bytes.len() + n.max(CHUNK)))?;
            bytes.extend_from_slice(&probe[..n]);
            continue;
        }
        let start = bytes.len();
        let room = bytes.capacity() - start;
        bytes.resize(start + room, 0);
        match limited.read(&mut bytes[start..]) {
            Ok(0) => {
                bytes.truncate(start);
                break;
            }
            Ok(n) => bytes.truncate(start + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => bytes.truncate(start),
            Err(e) => return Err(io(e)),
        }
    }
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
        error: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })
}

/// File name of a directory's checksum list.
pub const SHA256SUMS_FILE: &str = "SHA256SUMS";

/// Largest `SHA256SUMS` accepted (a line per file: 1 MiB is ~10,000 files).
pub const MAX_SHA256SUMS_BYTES: Limit = Limit {
    what: "SHA256SUMS",
    name: "MAX_SHA256SUMS_BYTES",
    bytes: 1 << 20,
};

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The SHA-256 of the files of one directory, read from its `SHA256SUMS`: lines of 64 hex
/// digits, a space, a space or `*`, and a plain file name, as `sha256sum NAME... >
/// SHA256SUMS` writes them (so `sha256sum -c SHA256SUMS` checks the same files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Sums {
    path: PathBuf,
    // file name -> lower-case hex SHA-256
    sums: BTreeMap<String, String>,
}

impl Sha256Sums {
    /// The `SHA256SUMS` path of the directory holding `file`.
    pub fn beside(file: &Path) -> PathBuf {
        file.parent()
            .unwrap_or(Path::new("."))
            .join(SHA256SUMS_FILE)
    }

    /// Reads and parses a `SHA256SUMS` file.
    pub fn read(path: &Path) -> Result<Self, FileError> {
        let text = read_regular_string(path, MAX_SHA256SUMS_BYTES)?;
        Self::parse(&text, path)
    }

    /// Parses the text of a `SHA256SUMS` file read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, FileError> {
        let bad = |line: usize, reason: String| FileError::Checksums {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut sums = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let (hex, rest) = line
                .split_at_checked(64)
                .ok_or_else(|| bad(i + 1, "shorter than a SHA-256".into()))?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(i + 1, format!("{hex:?} is not 64 hex digits")));
            }
            let name = rest
                .strip_prefix("  ")
                .or_else(|| rest.strip_prefix(" *"))
                .ok_or_else(|| bad(i + 1, "no two-character separator after the sum".into()))?;
            let plain = !name.is_empty()
                && name != "."
                && name != ".."
                && !name.contains('/')
                && !name.contains('\\');
            if !plain {
                return Err(bad(
                    i + 1,
                    format!("{name:?} is not a plain file name in this directory"),
                ));
            }
            // `sha256sum` escapes such names (a leading backslash), which this reader does not
            // take; a bare carriage return would also not survive a rewrite of the list.
            if name.chars().any(char::is_control) {
                return Err(bad(
                    i + 1,
                    format!("{name:?} has a control character (escaped names are not read)"),
                ));
            }
            if sums
                .insert(name.to_owned(), hex.to_ascii_lowercase())
                .is_some()
            {
                return Err(bad(i + 1, format!("{name:?} is listed twice")));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            sums,
        })
    }

    /// The list as `SHA256SUMS` text, one `HEX  NAME` line per file in name order (what
    /// [`Sha256Sums::parse`] reads back).
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for (name, hex) in &self.sums {
            let _ = writeln!(s, "{hex}  {name}");
        }
        s
    }

    /// Where the list was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded SHA-256 of file `name`, lower-case hex.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.sums.get(name).map(String::as_str)
    }

    /// Checks `bytes`, the contents of `file` (a file of this list's directory), against the
    /// recorded sum; returns the SHA-256. A file the list does not name is an error.
    pub fn check(&self, file: &Path, bytes: &[u8]) -> Result<String, FileError> {
        let expected = file
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| self.get(n))
            .ok_or_else(|| FileError::NotListed {
                path: file.to_path_buf(),
                sums: self.path.clone(),
            })?;
        let found = sha256_hex(bytes);
        if found != expected {
            return Err(FileError::ChecksumMismatch {
                path: file.to_path_buf(),
                sums: self.path.clone(),
                expected: expected.to_owned(),
                found,
            });
        }
        Ok(found)
    }
}

/// Reads `path` like [`read_regular`] and checks it against the `SHA256SUMS` beside it,
/// which must exist and list it. Returns the bytes and their SHA-256.
pub fn read_checked(path: &Path, limit: Limit) -> Result<(Vec<u8>, String), FileError> {
    let sums_path = Sha256Sums::beside(path);
    let sums = Sha256Sums::read(&sums_path).map_err(|e| match e {
        FileError::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
            FileError::NoChecksums {
                path: path.to_path_buf(),
                sums: sums_path.clone(),
            }
        }
        other => other,
    })?;
    let bytes = read_regular(path, limit)?;
    let sha = sums.check(path, &bytes)?;
    Ok((bytes, sha))
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
    fn checksum_lists_are_parsed_strictly_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("w.bin");
        std::fs::write(&file, b"weights").expect("write");
        let sha = sha256_hex(b"weights");
        let sums_path = dir.path().join(SHA256SUMS_FILE);
        std::fs::write(
            &sums_path,
            format!("{sha}  w.bin\n{}  other\n", "0".repeat(64)),
        )
        .expect("write");
        let (bytes, got) = read_checked(&file, SMALL).expect("listed and intact");
        assert_eq!(
            (bytes.as_slice(), got.as_str()),
            (&b"weights"[..], sha.as_str())
        );
        // sha256sum's binary-mode marker is accepted too.
        let sums = Sha256Sums::parse(&format!("{sha} *w.bin\n"), &sums_path).expect("valid");
        assert_eq!(sums.get("w.bin"), Some(sha.as_str()));

        std::fs::write(&file, b"weightz").expect("write");
        let e = read_checked(&file, SMALL).expect_err("changed");
        assert!(matches!(e, FileError::ChecksumMismatch { .. }), "{e}");
        let e = read_checked(&dir.path().join("other"), SMALL).expect_err("missing file");
        assert!(e.to_string().contains("No such file"), "{e}");
        std::fs::write(dir.path().join("unlisted"), b"x").expect("write");
        let e = read_checked(&dir.path().join("unlisted"), SMALL).expect_err("unlisted");
        assert!(matches!(e, FileError::NotListed { .. }), "{e}");

        for bad in [
            "abc  w.bin",
            &format!("{}  w.bin", "g".repeat(64)),
            &format!("{sha} w.bin"),
            &format!("{sha}  ../w.bin"),
            &format!("{sha}  "),
            &format!("{sha}  w.bin\n{sha}  w.bin"),
            // Found by fuzzing: a name ending in a bare CR did not survive a rewrite.
            &format!("{sha}  w.bin\r\r\n"),
            &format!("{sha}  w\u{1b}.bin"),
        ] {
            let e = Sha256Sums::parse(bad, &sums_path).expect_err(bad);
            assert!(matches!(e, FileError::Checksums { .. }), "{bad:?}: {e}");
        }
        std::fs::remove_file(&sums_path).expect("rm");
        let e = read_checked(&file, SMALL).expect_err("no list");
        assert!(matches!(e, FileError::NoChecksums { .. }), "{e}");
    }

    #[test]
    fn os_errors_are_printed_once() {
        let e = read_regular(Path::new("/nonexistent/x"), SMALL).expect_err("missing");
        let chain = anyhow_like_chain(&e);
        assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
    }

    /// What `{:#}` of an error chain prints: every `source()` appended.
    fn anyhow_like_chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    #[test]
    fn streams_are_bounded() {
        let p = Path::new("<stdin>");
        assert_eq!(
            read_stream(&b"0123456789abcdef"[..], 0, p, SMALL).expect("16 bytes"),
            b"0123456789abcdef"
        );
        let e = read_stream(std::io::repeat(7), 0, p, SMALL).expect_err("endless");
        assert!(matches!(e, FileError::TooLarge { found: 17, .. }), "{e}");
        let big = Limit {
            bytes: 3 << 20,
            ..SMALL
        };
        let got = read_stream(std::io::repeat(1).take(5 << 19), 4096, p, big).expect("2.5 MiB");
        assert_eq!(got.len(), 5 << 19);
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
