//! Staging memory for device reads: `depth` slots of `slot_bytes` bytes each, in one
//! page-aligned, page-locked allocation (registered with io_uring as one fixed buffer).
//!
//! This module is the one place that proves where a device read may write. Its contract:
//!
//! 1. Slot memory is reached only through a [`Lease`], and [`Staging::lease`] is the only
//!    way to get one. It refuses `len > slot_bytes` (and `len == 0`) before a read can be
//!    submitted, so a lease of slot `s` covers exactly
//!    `[base + s * slot_bytes, base + s * slot_bytes + len)`. With `s < depth`,
//!    `len <= slot_bytes` and an allocation of `depth * slot_bytes` bytes (multiplication
//!    checked in [`Staging::new`]), that extent lies inside the allocation. The whole
//!    extent, not only its start.
//! 2. Two live leases never share a slot: a slot index is either in the free list or in
//!    exactly one lease; dropping a lease puts its index back.
//! 3. The memory outlives every lease: each lease holds an `Arc` of it. A pool thread that
//!    still holds a lease after its driver is gone writes into live memory. What an `Arc`
//!    cannot cover is the kernel: an engine that gives a lease's address to the kernel must
//!    keep the lease until the kernel has finished with it (io_uring: until the CQE is
//!    reaped), and must leak it (`mem::forget`) if it cannot know that.
//! 4. Nothing else ever forms a reference to the whole allocation while leases may be live.
#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use crate::buffer::AlignedBuf;
use crate::error::{Error, Result};

/// Largest staging allocation of one reader (queue depth x longest read).
pub const MAX_STAGING_BYTES: usize = 1 << 30;
/// Slot sizes are multiples of this (the smallest O_DIRECT alignment).
pub const SECTOR_BYTES: usize = 512;

#[derive(Debug)]
struct Mem {
    /// Owns the allocation; never dereferenced as a whole after construction (rule 4).
    _buf: AlignedBuf,
    base: NonNull<u8>,
    slot_bytes: usize,
    depth: usize,
    capacity: usize,
    /// Free slot indices; capacity `depth`, so pushes never allocate.
    free: Mutex<Vec<u32>>,
}

// SAFETY: `Mem` owns its allocation like a `Vec<u8>`; access to slot memory goes through
// leases, each exclusive to one slot (rule 2); the free list is behind a mutex.
unsafe impl Send for Mem {}
// SAFETY: as above; `&Mem` gives no access to slot bytes, only to the mutex-guarded list.
unsafe impl Sync for Mem {}

/// The staging slots of one reader.
#[derive(Debug)]
pub struct Staging {
    mem: Arc<Mem>,
}

impl Staging {
    /// `depth` slots of `slot_bytes` bytes (a multiple of 512, the smallest O_DIRECT
    /// unit: every slot then starts 512-aligned in the page-aligned allocation), locked in
    /// RAM when `RLIMIT_MEMLOCK` allows.
    pub fn new(depth: usize, slot_bytes: usize) -> Result<Self> {
        if depth == 0 || depth > u32::MAX as usize || slot_bytes == 0 {
            return Err(Error::Invalid {
                what: "staging",
                reason: format!("{depth} slots of {slot_bytes} bytes"),
            });
        }
        if !slot_bytes.is_multiple_of(SECTOR_BYTES) {
            return Err(Error::Invalid {
                what: "staging slot bytes",
                reason: format!("{slot_bytes} is not a multiple of {SECTOR_BYTES}"),
            });
        }
        let total = depth
            .checked_mul(slot_bytes)
            .filter(|&t| t <= MAX_STAGING_BYTES)
            .ok_or(Error::Limit {
                what: "staging bytes (queue depth x longest read)",
                name: "MAX_STAGING_BYTES",
                limit: MAX_STAGING_BYTES,
                found: depth.saturating_mul(slot_bytes),
            })?;
        let mut buf = AlignedBuf::new_pinned(total)?;
        let capacity = buf.capacity();
        debug_assert!(capacity >= total);
        let base = NonNull::new(buf.as_mut_ptr()).ok_or(Error::Invalid {
            what: "staging",
            reason: "null allocation".into(),
        })?;
        let free = (0..depth as u32).rev().collect();
        Ok(Self {
            mem: Arc::new(Mem {
                _buf: buf,
                base,
                slot_bytes,
                depth,
                capacity,
                free: Mutex::new(free),
            }),
        })
    }

    /// Slots in the arena (the most reads in flight).
    pub fn depth(&self) -> usize {
        self.mem.depth
    }

    /// Bytes per slot, the longest read one slot takes.
    pub fn slot_bytes(&self) -> usize {
        self.mem.slot_bytes
    }

    /// Slots not leased now.
    pub fn free_slots(&self) -> usize {
        self.mem.free.lock().map(|f| f.len()).unwrap_or(0)
    }

    /// The whole allocation as one `iovec`, for `IORING_REGISTER_BUFFERS`.
    pub fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.mem.base.as_ptr().cast(),
            iov_len: self.mem.capacity,
        }
    }

    /// A free slot for a read of `len` bytes; `Ok(None)` when every slot is leased.
    /// A read longer than a slot is refused here, before anything is submitted.
    pub fn lease(&self, len: usize) -> Result<Option<Lease>> {
        if len == 0 || len > self.mem.slot_bytes {
            return Err(Error::Limit {
                what: "read length (staging slot bytes)",
                name: "slot_bytes",
                limit: self.mem.slot_bytes,
                found: len,
            });
        }
        let slot = match self.mem.free.lock() {
            Ok(mut f) => f.pop(),
            Err(_) => return Err(Error::ShutDown("staging free list poisoned")),
        };
        Ok(slot.map(|slot| {
            debug_assert!((slot as usize) < self.mem.depth);
            Lease {
                mem: Arc::clone(&self.mem),
                slot,
                len,
            }
        }))
    }
}

/// Exclusive use of `len` bytes of one staging slot (see the module contract).
#[derive(Debug)]
pub struct Lease {
    mem: Arc<Mem>,
    slot: u32,
    len: usize,
}

// SAFETY: a lease is the only handle to its slot's bytes (rule 2); moving it to another
// thread moves that exclusive access with it.
unsafe impl Send for Lease {}

impl Lease {
    /// Index of the slot the lease holds.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Bytes the read may write (at most the slot size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the lease allows no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the leased extent, for handing to the kernel. The extent is
    /// `[ptr, ptr + len)`, inside the staging allocation (rule 1).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        debug_assert!((self.slot as usize) < self.mem.depth && self.len <= self.mem.slot_bytes);
        // SAFETY: slot < depth, so slot * slot_bytes + len <= depth * slot_bytes <= the
        // allocation's size (rule 1): the offset stays inside one allocated object.
        unsafe {
            self.mem
                .base
                .as_ptr()
                .add(self.slot as usize * self.mem.slot_bytes)
        }
    }

    /// The leased bytes.
    pub fn bytes(&self) -> &[u8] {
        let start = self.slot as usize * self.mem.slot_bytes;
        // SAFETY: [start, start + len) is inside the allocation (rule 1), initialized (the
        // allocation is zeroed), and this lease is its only user (rule 2); `&self`
        // prevents a concurrent `bytes_mut`. An engine that lent the address to the kernel
        // hands the lease back only after the kernel is done with it (rule 3).
        unsafe { std::slice::from_raw_parts(self.mem.base.as_ptr().add(start), self.len) }
    }

    /// The leased bytes, writable (pread writes here).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let start = self.slot as usize * self.mem.slot_bytes;
        // SAFETY: as in `bytes`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.mem.base.as_ptr().add(start), self.len) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut f) = self.mem.free.lock() {
            debug_assert!(f.len() < self.mem.depth && !f.contains(&self.slot));
            f.push(self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_and_bounded() {
        let st = Staging::new(3, 8192).expect("staging");
        assert!(st.lease(8193).is_err(), "longer than a slot");
        assert!(st.lease(0).is_err());
        let mut a = st.lease(8192).expect("ok").expect("free");
        let b = st.lease(100).expect("ok").expect("free");
        let c = st.lease(4096).expect("ok").expect("free");
        assert!(st.lease(1).expect("ok").is_none(), "all leased");
        let slots = [a.slot(), b.slot(), c.slot()];
        assert!(slots.iter().all(|&s| s < 3));
        assert!(slots[0] != slots[1] && slots[1] != slots[2] && slots[0] != slots[2]);
        a.bytes_mut().fill(7);
        assert!(
            b.bytes().iter().all(|&x| x == 0),
            "neighbouring slot untouched"
        );
        drop(b);
        assert_eq!(st.free_slots(), 1);
        let d = st.lease(10).expect("ok").expect("freed slot");
        assert_eq!(d.bytes().len(), 10);
    }

    #[test]
    fn staging_size_is_limited() {
        assert!(Staging::new(1 << 20, 1 << 20).is_err());
        assert!(Staging::new(usize::MAX, 4096).is_err());
        assert!(Staging::new(2, 1000).is_err(), "not a sector multiple");
        let st = Staging::new(3, 512).expect("sector slots");
        let mut a = st.lease(512).expect("ok").expect("free");
        assert_eq!(a.as_mut_ptr() as usize % 512, 0);
    }

    #[test]
    fn memory_outlives_the_staging_while_leased() {
        let st = Staging::new(1, 4096).expect("staging");
        let mut l = st.lease(4096).expect("ok").expect("free");
        drop(st);
        l.bytes_mut()[4095] = 1;
        assert_eq!(l.bytes()[4095], 1);
    }
}
