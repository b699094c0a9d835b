//! The shared region: a sealed memfd mapped by the server and by one client.
//!
//! Contract (the only `unsafe` in the crate besides `signals.rs`, which says why it needs
//! it):
//! - The mapping is `len` bytes, `MAP_SHARED`, readable and writable, alive from
//!   [`Region::create`] / [`Region::attach`] until drop. The memfd is sealed against
//!   shrinking and growing before it is shared, and `attach` refuses a memfd without
//!   those seals, so the peer can never make part of the mapping disappear (which would
//!   turn an access into `SIGBUS`).
//! - The peer writes the same bytes at any time. No Rust reference to the mapping's bytes
//!   is ever formed, and no plain load or store touches them: a plain copy racing the
//!   peer's writes would be a data race (undefined behaviour by the language's rules, not
//!   only a torn value). Bytes move in and out of private memory through relaxed atomic
//!   loads and stores ([`Region::read`], [`Region::write`]: `AtomicU64` for the aligned
//!   middle, `AtomicU8` at the edges), and the ring indices and flags are atomics
//!   ([`Region::atomic_u32`]). Every bit pattern is a valid value of each, so whatever
//!   the peer writes is only data: it is copied, then validated.
//! - Every offset and length is checked against `len` before the copy (offsets come from
//!   [`crate::protocol::RegionLayout`], never from the region).
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::error::{Result, ServiceError, io};

/// A shared mapping of a memfd.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the region is plain shared memory accessed only through raw-pointer copies and
// atomics (see the module contract); nothing in it is tied to a thread.
unsafe impl Send for Region {}
// SAFETY: as above; concurrent copies from several threads are the same as copies from
// the peer process, which the contract already allows.
unsafe impl Sync for Region {}

const SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

fn err(op: &'static str, e: rustix::io::Errno) -> ServiceError {
    io(op, Path::new("memfd"), e.into())
}

impl Region {
    /// A new zeroed region of `len` bytes (a multiple of 4096), sealed against resizing.
    pub fn create(name: &str, len: usize) -> Result<Self> {
        if len == 0 || !len.is_multiple_of(4096) {
            return Err(ServiceError::Invalid {
                what: "region size",
                reason: format!("{len}: expected a positive multiple of 4096"),
            });
        }
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| err("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(|e| err("ftruncate", e))?;
        rustix::fs::fcntl_add_seals(&fd, SEALS | SealFlags::SEAL).map_err(|e| err("seal", e))?;
        Self::map(fd, len)
    }

    /// Maps a region received from the peer; it must be exactly `len` bytes and sealed
    /// against resizing.
    pub fn attach(fd: OwnedFd, len: usize) -> Result<Self> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| err("get seals", e))?;
        if !seals.contains(SEALS) {
            return Err(ServiceError::Protocol {
                peer: "server",
                what: "region seals",
                expected: format!("{SEALS:?}"),
                found: format!("{seals:?}"),
            });
        }
        let st = rustix::fs::fstat(&fd).map_err(|e| err("fstat", e))?;
        if u64::try_from(st.st_size).ok() != Some(len as u64) {
            return Err(ServiceError::Protocol {
                peer: "server",
                what: "region bytes",
                expected: len.to_string(),
                found: st.st_size.to_string(),
            });
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self> {
        // SAFETY: a fresh shared mapping of `len` bytes of a memfd that is exactly `len`
        // bytes long and sealed against shrinking, so every byte of the mapping is backed
        // for its whole life; no existing memory is replaced (the address is the kernel's
        // choice).
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| err("mmap", e))?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| ServiceError::Invalid {
            what: "mapping",
            reason: "mmap returned null".into(),
        })?;
        Ok(Self { ptr, len, fd })
    }

    /// The memfd, to pass to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region maps no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, len: usize) -> Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(ServiceError::Invalid {
                what: "region access",
                reason: format!("{len} bytes at {off} in a region of {}", self.len),
            }),
        }
    }

    /// The 4-byte atomic at `off` (4-aligned, inside the header: a programmer error
    /// otherwise, since header offsets are constants).
    pub fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len.min(crate::protocol::HEADER_BYTES),
            "header field offset {off}"
        );
        // SAFETY: `off..off + 4` is inside the mapping (asserted) and 4-aligned (the
        // mapping is page-aligned); the mapping outlives `&self`; AtomicU32 has the size
        // and alignment of u32 and any bit pattern is valid, and every access to these
        // bytes, here and in the peer, is atomic.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU32>() }
    }

    /// The byte at `off` as an atomic (`off` checked by the caller).
    fn byte(&self, off: usize) -> &AtomicU8 {
        // SAFETY: the callers checked `off < len`; the mapping outlives `&self`; AtomicU8
        // has the size and alignment of u8, every bit pattern is valid, and every access
        // to these bytes from this process is atomic (module contract).
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU8>() }
    }

    /// The 8 bytes at `off` (8-aligned, checked by the caller) as an atomic.
    fn word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8));
        // SAFETY: as in `byte`; `off` is 8-aligned and the mapping page-aligned, so the
        // AtomicU64 is aligned, and `off + 8 <= len` (checked by the caller).
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU64>() }
    }

    /// Copies `dst.len()` bytes at `off` out of the region (relaxed atomic loads: the
    /// bytes may change under the copy, which then holds some mix of old and new bytes,
    /// validated by the caller like any input).
    pub fn read(&self, off: usize, dst: &mut [u8]) -> Result<()> {
        self.check(off, dst.len())?;
        let mut i = 0;
        while i < dst.len() && !(off + i).is_multiple_of(8) {
            dst[i] = self.byte(off + i).load(Ordering::Relaxed);
            i += 1;
        }
        while i + 8 <= dst.len() {
            let v = self.word(off + i).load(Ordering::Relaxed);
            dst[i..i + 8].copy_from_slice(&v.to_ne_bytes());
            i += 8;
        }
        while i < dst.len() {
            dst[i] = self.byte(off + i).load(Ordering::Relaxed);
            i += 1;
        }
        Ok(())
    }

    /// Copies `src` into the region at `off` (relaxed atomic stores; the ring index
    /// published after it, with `Release`, orders them for the peer).
    pub fn write(&self, off: usize, src: &[u8]) -> Result<()> {
        self.check(off, src.len())?;
        let mut i = 0;
        while i < src.len() && !(off + i).is_multiple_of(8) {
            self.byte(off + i).store(src[i], Ordering::Relaxed);
            i += 1;
        }
        while i + 8 <= src.len() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&src[i..i + 8]);
            self.word(off + i)
                .store(u64::from_ne_bytes(w), Ordering::Relaxed);
            i += 8;
        }
        while i < src.len() {
            self.byte(off + i).store(src[i], Ordering::Relaxed);
            i += 1;
        }
        Ok(())
    }

    /// Reads `dst.len()` little-endian u64 at `off`.
    pub fn read_u64s(&self, off: usize, dst: &mut [u64]) -> Result<()> {
        let mut b = [0u8; 8 * U64_CHUNK];
        for (k, chunk) in dst.chunks_mut(U64_CHUNK).enumerate() {
            let bytes = &mut b[..chunk.len() * 8];
            self.read(off + k * 8 * U64_CHUNK, bytes)?;
            for (d, v) in chunk.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(v);
                *d = u64::from_le_bytes(a);
            }
        }
        Ok(())
    }

    /// Writes `src` as little-endian u64 at `off`.
    pub fn write_u64s(&self, off: usize, src: &[u64]) -> Result<()> {
        let mut b = [0u8; 8 * U64_CHUNK];
        for (k, chunk) in src.chunks(U64_CHUNK).enumerate() {
            for (d, v) in b.chunks_exact_mut(8).zip(chunk) {
                d.copy_from_slice(&v.to_le_bytes());
            }
            self.write(off + k * 8 * U64_CHUNK, &b[..chunk.len() * 8])?;
        }
        Ok(())
    }
}

/// Ids converted per copy (a stack buffer, no allocation per request).
const U64_CHUNK: usize = 128;

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference into it can
        // outlive `self` (the only borrowed views are `&AtomicU32` tied to `&self`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn two_mappings_see_the_same_bytes() {
        let a = Region::create("t", 8192).expect("create");
        let fd = a.fd().try_clone_to_owned().expect("dup");
        let b = Region::attach(fd, 8192).expect("attach");
        a.write(5000, b"hello").expect("write");
        let mut got = [0u8; 5];
        b.read(5000, &mut got).expect("read");
        assert_eq!(&got, b"hello");
        a.atomic_u32(64).store(7, Ordering::Release);
        assert_eq!(b.atomic_u32(64).load(Ordering::Acquire), 7);
        assert!(a.write(8190, b"abc").is_err());
        assert!(a.read(usize::MAX, &mut got).is_err());
    }

    #[test]
    fn attach_refuses_wrong_size_and_unsealed_memfds() {
        let a = Region::create("t", 4096).expect("create");
        let fd = a.fd().try_clone_to_owned().expect("dup");
        assert!(Region::attach(fd, 8192).is_err());
        let plain = rustix::fs::memfd_create("plain", MemfdFlags::CLOEXEC).expect("memfd");
        rustix::fs::ftruncate(&plain, 4096).expect("truncate");
        assert!(Region::attach(plain, 4096).is_err());
    }
}
