//! Crash-safe publication of a table directory (see `docs/format.md`, "Publication").
//!
//! A writer builds the whole table in a temporary sibling directory `.NAME.tmp-PID-NANOS`,
//! fsyncs every file and the directory, then swaps it with `NAME` in one
//! `renameat2(RENAME_EXCHANGE)` (or moves it there with `RENAME_NOREPLACE` when `NAME` does
//! not exist yet), fsyncs the parent and deletes the old version, which the swap left under
//! the temporary name. At every instant `NAME` is a complete table, the old one or the new
//! one, whatever is killed when.
//!
//! Writers to one path are serialised by an exclusive `flock` on the sibling `.NAME.lock`,
//! taken without waiting: a second writer fails at once with [`Error::Locked`] (a build can
//! take hours; waiting behind it only to replace its result helps nobody). The holder
//! deletes the lock file while it still holds the lock, and a writer checks after locking
//! that the file it locked is still the one at the path, so two writers never both hold
//! it. Holding the lock also means every `.NAME.tmp-*` or `.NAME.old-*` sibling belongs to
//! a writer that was killed, so the next writer deletes them without guessing from
//! process ids.
//!
//! File systems without `RENAME_EXCHANGE` (NFS, some FUSE file systems, kernels before 3.15,
//! seccomp filters that refuse `renameat2`) get two renames instead, `NAME` ->
//! `.NAME.old-PID-NANOS` then temporary -> `NAME`, with a warning that says why. A kill
//! between the two leaves `NAME` missing; the next writer's lock moves the old table back
//! before anything else. [`PUBLISH_FALLBACK_ENV`] forces that path so tests cover it.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::error::{Error, Result, io};
use crate::format::MANIFEST_FILE;

/// Set to `1` to publish with two renames even where `RENAME_EXCHANGE` works (tests).
pub const PUBLISH_FALLBACK_ENV: &str = "ENGRAM_PUBLISH_FALLBACK";

/// Times a writer starts over when the lock file it locked was deleted by the writer that
/// held it before.
const LOCK_ATTEMPTS: u32 = 8;

/// Most bytes read from a lock file to name its holder (a process id and a newline).
const LOCK_HOLDER_BYTES: usize = 32;

fn errno_io(e: Errno) -> std::io::Error {
    e.into()
}

/// Opens `path` as a directory handle (read-only, close-on-exec).
pub(crate) fn open_dir(path: &Path) -> Result<File> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(|e| io("open directory", path, errno_io(e)))
}

/// True when `path` no longer names the directory `handle` was opened from (it was
/// replaced or removed since).
pub(crate) fn replaced_since(path: &Path, handle: &File) -> bool {
    let Ok(held) = rustix::fs::fstat(handle) else {
        return false;
    };
    match rustix::fs::stat(path) {
        Ok(now) => (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino),
        Err(_) => true,
    }
}

/// The clock reading (nanoseconds) in a leftover sibling's name `.NAME.KIND-PID-NANOS`
/// (optionally with the `.old` suffix older writers gave their trash), or `None` if the
/// name is not exactly that, so that another table's siblings, whose names merely start
/// the same way, are never touched.
fn leftover_nanos(file_name: &OsStr, prefix: &[u8]) -> Option<u128> {
    let rest = file_name.as_bytes().strip_prefix(prefix)?;
    let rest = rest.strip_suffix(b".old").unwrap_or(rest);
    let rest = std::str::from_utf8(rest).ok()?;
    let (pid, nanos) = rest.split_once('-')?;
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(nanos) {
        return None;
    }
    nanos.parse().ok()
}

/// The destination of a table write: its parent directory, held open, and the exclusive
/// lock on `.NAME.lock`, held until this is dropped.
#[derive(Debug)]
pub(crate) struct Target {
    path: PathBuf,
    parent_path: PathBuf,
    parent: File,
    name: OsString,
    lock_name: OsString,
    lock_path: PathBuf,
    // Holds the flock; closing it (after `drop` deleted the file) releases the lock.
    _lock: File,
}

impl Drop for Target {
    fn drop(&mut self) {
        // Deleted while still locked, so no writer can lock this file after us: one that
        // opened it meanwhile sees it is no longer at the path and starts over.
        if let Err(e) = rustix::fs::unlinkat(&self.parent, &self.lock_name, AtFlags::empty()) {
            tracing::debug!(lock = %self.lock_path.display(), error = %errno_io(e), "could not delete the lock file");
        }
    }
}

impl Target {
    /// Locks `path` for writing (failing at once if another writer holds it), then moves
    /// back an old table a killed fallback publication left aside and deletes every other
    /// leftover of killed writers.
    pub(crate) fn lock(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .filter(|n| *n != "." && *n != "..")
            .map(OsStr::to_os_string)
            .ok_or_else(|| Error::Invalid {
                what: "table directory",
                reason: format!("{} has no file name", path.display()),
            })?;
        let parent_path = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent_path).map_err(|e| io("create directory", &parent_path, e))?;
        let parent = open_dir(&parent_path)?;
        let lock_name = sibling(&name, "lock");
        let lock_path = parent_path.join(&lock_name);
        let lock = lock_file(&parent, &lock_name, &lock_path, path)?;
        // Who holds it, for the message a second writer prints; informational only, so a
        // full disk here is not an error.
        let pid = format!("{}\n", std::process::id());
        if let Err(e) = rustix::fs::ftruncate(&lock, 0)
            .map_err(errno_io)
            .and_then(|()| lock.write_all_at(pid.as_bytes(), 0))
        {
            tracing::debug!(lock = %lock_path.display(), error = %e, "could not record the writer's pid in the lock file");
        }
        let target = Self {
            path: path.to_path_buf(),
            parent_path,
            parent,
            name,
            lock_name,
            lock_path,
            _lock: lock,
        };
        target.clean_leftovers();
        Ok(target)
    }

    /// The table path being written.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file's path.
    pub(crate) fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Whether the table path exists (as anything, a dangling symlink included).
    pub(crate) fn exists(&self) -> Result<bool> {
        match rustix::fs::statat(&self.parent, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(io("stat", &self.path, errno_io(e))),
        }
    }

    /// A fresh sibling name `.NAME.KIND-PID-NANOS`.
    fn unique_sibling(&self, kind: &str) -> OsString {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        sibling(
            &self.name,
            &format!("{kind}-{}-{nanos}", std::process::id()),
        )
    }

    /// Creates the temporary directory a table is written into; returns its name and path.
    pub(crate) fn make_temporary(&self) -> Result<(OsString, PathBuf)> {
        let name = self.unique_sibling("tmp");
        let path = self.parent_path.join(&name);
        rustix::fs::mkdirat(&self.parent, &name, Mode::from_raw_mode(0o755))
            .map_err(|e| io("create directory", &path, errno_io(e)))?;
        Ok((name, path))
    }

    /// Deletes the sibling `name` (a directory or a file), logging instead of failing: what
    /// it leaves is deleted by the next writer.
    pub(crate) fn remove_sibling(&self, name: &OsStr) {
        let path = self.parent_path.join(name);
        let result = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "could not delete; the next write to this table retries");
        }
    }

    /// Restores an old table a killed fallback publication left aside (if the table path
    /// is missing), then deletes every other leftover of killed writers. Never fails: a
    /// leftover that cannot be deleted is logged and retried at the next write.
    fn clean_leftovers(&self) {
        let entries = match fs::read_dir(&self.parent_path) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.parent_path.display(), error = %e, "cannot list the directory to clean up after interrupted writes");
                return;
            }
        };
        let tmp_prefix = sibling(&self.name, "tmp-");
        let old_prefix = sibling(&self.name, "old-");
        let mut temporaries = Vec::new();
        let mut olds = Vec::new();
        for entry in entries.flatten() {
            let n = entry.file_name();
            if leftover_nanos(&n, tmp_prefix.as_bytes()).is_some() {
                temporaries.push(n);
            } else if let Some(nanos) = leftover_nanos(&n, old_prefix.as_bytes()) {
                olds.push((nanos, n));
            }
        }
        // Normally at most one (writers are serialised); the newest is the latest table.
        olds.sort();
        let missing = matches!(self.exists(), Ok(false));
        if let Some((_, newest)) = olds.pop_if(|_| missing) {
            let from = self.parent_path.join(&newest);
            match rustix::fs::renameat(&self.parent, &newest, &self.parent, &self.name) {
                Ok(()) => {
                    tracing::warn!(path = %self.path.display(), from = %from.display(), "restored the table an interrupted replacement had moved aside");
                    let _ = self.parent.sync_all();
                }
                Err(e) => {
                    // Keep every old table: one may be the only copy.
                    tracing::warn!(path = %self.path.display(), from = %from.display(), error = %errno_io(e), "could not restore the table an interrupted replacement had moved aside; it is kept");
                    olds.clear();
                }
            }
        }
        for n in temporaries.iter().chain(olds.iter().map(|(_, n)| n)) {
            tracing::info!(path = %self.parent_path.join(n).display(), "deleting what an interrupted table write left behind");
            self.remove_sibling(n);
        }
    }

    /// Refuses to replace anything but a table directory, an empty directory or a symlink
    /// (whose target is left alone), so `--force` never deletes unrelated data.
    fn check_replaceable(&self) -> Result<()> {
        let st = rustix::fs::statat(&self.parent, &self.name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io("stat", &self.path, errno_io(e)))?;
        let found = match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => return Ok(()),
            FileType::Directory => {
                let manifest = Path::new(&self.name).join(MANIFEST_FILE);
                if rustix::fs::statat(&self.parent, &manifest, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                    return Ok(());
                }
                let empty = fs::read_dir(&self.path)
                    .map_err(|e| io("list directory", &self.path, e))?
                    .next()
                    .is_none();
                if empty {
                    return Ok(());
                }
                "a directory without manifest.json"
            }
            FileType::RegularFile => "a regular file",
            _ => "a special file",
        };
        Err(Error::NotATable {
            path: self.path.clone(),
            found,
        })
    }

    fn sync_parent(&self) -> Result<()> {
        self.parent
            .sync_all()
            .map_err(|e| io("fsync directory", &self.parent_path, e))
    }

    /// Moves the complete, fsynced temporary directory `tmp` to the table path, replacing
    /// an existing table only if `replace`. The old table is deleted afterwards.
    pub(crate) fn publish(&self, tmp: &OsStr, replace: bool) -> Result<()> {
        let tmp_path = self.parent_path.join(tmp);
        if !self.exists()? {
            match rustix::fs::renameat_with(
                &self.parent,
                tmp,
                &self.parent,
                &self.name,
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => return self.sync_parent(),
                Err(Errno::EXIST) if !replace => {
                    return Err(Error::Exists {
                        path: self.path.clone(),
                    });
                }
                // Created meanwhile by a writer that does not lock: replace it below.
                Err(Errno::EXIST) => {}
                Err(e) if no_rename_flags(e) => {
                    // We hold the lock and the path did not exist: a plain rename is safe
                    // against every writer that locks.
                    rustix::fs::renameat(&self.parent, tmp, &self.parent, &self.name)
                        .map_err(|e| io("rename", &tmp_path, errno_io(e)))?;
                    return self.sync_parent();
                }
                Err(e) => return Err(io("rename", &tmp_path, errno_io(e))),
            }
        }
        if !replace {
            return Err(Error::Exists {
                path: self.path.clone(),
            });
        }
        self.check_replaceable()?;
        let forced = std::env::var_os(PUBLISH_FALLBACK_ENV).is_some_and(|v| v == "1");
        let exchanged = if forced {
            Err(format!("{PUBLISH_FALLBACK_ENV}=1"))
        } else {
            match rustix::fs::renameat_with(
                &self.parent,
                tmp,
                &self.parent,
                &self.name,
                RenameFlags::EXCHANGE,
            ) {
                Ok(()) => Ok(()),
                Err(e) if no_rename_flags(e) => Err(format!(
                    "renameat2(RENAME_EXCHANGE) failed with {}: the file system or kernel does not support it",
                    errno_io(e)
                )),
                Err(e) => return Err(io("exchange (renameat2)", &tmp_path, errno_io(e))),
            }
        };
        match exchanged {
            Ok(()) => {
                self.sync_parent()?;
                // The old table now sits under the temporary name.
                self.remove_sibling(tmp);
                Ok(())
            }
            Err(reason) => self.publish_with_two_renames(tmp, &reason),
        }
    }

    /// The fallback: old table aside, new table in, old table deleted. A kill between the
    /// two renames leaves the path missing until the next writer restores the old table.
    fn publish_with_two_renames(&self, tmp: &OsStr, reason: &str) -> Result<()> {
        tracing::warn!(
            path = %self.path.display(),
            reason,
            "replacing the table with two renames: a crash between them leaves the path missing until the next write to it restores the old table"
        );
        let old = self.unique_sibling("old");
        rustix::fs::renameat(&self.parent, &self.name, &self.parent, &old)
            .map_err(|e| io("rename", &self.path, errno_io(e)))?;
        if let Err(e) = rustix::fs::renameat(&self.parent, tmp, &self.parent, &self.name) {
            // Put the old table back; if even that fails the next writer restores it.
            let _ = rustix::fs::renameat(&self.parent, &old, &self.parent, &self.name);
            return Err(io("rename", &self.parent_path.join(tmp), errno_io(e)));
        }
        self.sync_parent()?;
        self.remove_sibling(&old);
        Ok(())
    }
}

/// `renameat2` flags unsupported by this kernel, file system or seccomp filter.
fn no_rename_flags(e: Errno) -> bool {
    matches!(e, Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)
}

/// `.NAME.SUFFIX`.
fn sibling(name: &OsStr, suffix: &str) -> OsString {
    let mut s = OsString::from(".");
    s.push(name);
    s.push(".");
    s.push(suffix);
    s
}

/// Opens (creating it) and locks the lock file `name` in `parent` without waiting, and
/// checks that the locked file is still the one at that name (its previous holder deletes
/// it when done).
fn lock_file(parent: &File, name: &OsStr, lock_path: &Path, table: &Path) -> Result<File> {
    for _ in 0..LOCK_ATTEMPTS {
        let lock = rustix::fs::openat(
            parent,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::from_raw_mode(0o644),
        )
        .map(File::from)
        .map_err(|e| io("open lock file", lock_path, errno_io(e)))?;
        let held = rustix::fs::fstat(&lock).map_err(|e| io("stat", lock_path, errno_io(e)))?;
        if FileType::from_raw_mode(held.st_mode) != FileType::RegularFile {
            return Err(Error::Invalid {
                what: "lock file",
                reason: format!("{} is not a regular file", lock_path.display()),
            });
        }
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(Error::Locked {
                    path: table.to_path_buf(),
                    lock: lock_path.to_path_buf(),
                    holder: lock_holder(&lock),
                });
            }
            Err(e) => return Err(io("lock", lock_path, errno_io(e))),
        }
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(now) if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino) => return Ok(lock),
            Ok(_) | Err(Errno::NOENT) => continue,
            Err(e) => return Err(io("stat", lock_path, errno_io(e))),
        }
    }
    Err(Error::Locked {
        path: table.to_path_buf(),
        lock: lock_path.to_path_buf(),
        holder: format!("writers that keep replacing the lock file ({LOCK_ATTEMPTS} tries)"),
    })
}

/// The process id recorded in a held lock file, for the message.
fn lock_holder(lock: &File) -> String {
    let mut buf = [0u8; LOCK_HOLDER_BYTES];
    let pid = lock.read_at(&mut buf, 0).ok().and_then(|n| {
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    });
    match pid {
        Some(pid) => format!("process {pid}"),
        None => "another process".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_tables_leftovers_match() {
        let tmp = sibling(OsStr::new("t"), "tmp-");
        let yes = [
            ".t.tmp-1-2",
            ".t.tmp-4242-1796206862648537391",
            ".t.tmp-1-2.old",
        ];
        let no = [
            ".t.tmp-",
            ".t.tmp-1",
            ".t.tmp-1-",
            ".t.tmp--2",
            ".t.tmp-1-2-3",
            ".t.tmp-x-2",
            ".t.tmp-1-2.old.old",
            ".tt.tmp-1-2",
            ".t.tmp-1-2x",
            "t",
            ".t.lock",
            ".t.old-1-2",
        ];
        for n in yes {
            assert!(
                leftover_nanos(OsStr::new(n), tmp.as_bytes()).is_some(),
                "{n}"
            );
        }
        for n in no {
            assert!(
                leftover_nanos(OsStr::new(n), tmp.as_bytes()).is_none(),
                "{n}"
            );
        }
        // A table whose own name looks like a temporary's keeps its siblings apart.
        let other = sibling(OsStr::new("t.tmp-1-2"), "tmp-");
        let name = OsStr::new(".t.tmp-1-2.tmp-3-4");
        assert_eq!(leftover_nanos(name, tmp.as_bytes()), None);
        assert_eq!(leftover_nanos(name, other.as_bytes()), Some(4));
    }
}
