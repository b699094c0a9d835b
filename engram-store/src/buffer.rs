//! Aligned, optionally page-locked buffers: the memory O_DIRECT reads land in and that a
//! GPU copy would read.
//!
//! Contract: an [`AlignedBuf`] owns `len` bytes allocated with `align` alignment (a power of
//! two, at least 4096 for I/O buffers) and zero-initialized; the pointer is valid and
//! unaliased for the buffer's lifetime; the memory is unlocked and freed exactly once, in
//! `Drop`. Buffers handed to the kernel (io_uring) are kept alive by their owner until the
//! completion is reaped (see `backend/uring.rs`).
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// Alignment of every I/O buffer (O_DIRECT needs the logical block size; pages are safer).
pub const IO_ALIGN: usize = 4096;

/// A heap buffer with a chosen alignment, optionally locked in RAM (`mlock`).
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
    locked: bool,
}

// SAFETY: AlignedBuf uniquely owns its allocation (like Vec<u8>); &self only gives shared
// reads and &mut self exclusive writes.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above; no interior mutability.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes aligned to `align` (rounded up to a page multiple).
    pub fn new(len: usize, align: usize) -> Result<Self> {
        if !align.is_power_of_two() {
            return Err(Error::Invalid {
                what: "alignment",
                reason: format!("{align} is not a power of two"),
            });
        }
        let cap = len.max(1).div_ceil(IO_ALIGN) * IO_ALIGN;
        let layout = Layout::from_size_align(cap, align).map_err(|e| Error::Invalid {
            what: "buffer size",
            reason: format!("{len} bytes aligned to {align}: {e}"),
        })?;
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| Error::Unavailable {
            what: "memory",
            reason: format!("allocating {cap} bytes failed"),
        })?;
        Ok(Self {
            ptr,
            len,
            layout,
            locked: false,
        })
    }

    /// A zeroed, page-aligned buffer, locked in RAM when `RLIMIT_MEMLOCK` allows (check
    /// [`AlignedBuf::is_locked`]; an unlocked buffer still works, only slower for DMA).
    pub fn new_pinned(len: usize) -> Result<Self> {
        let mut b = Self::new(len, IO_ALIGN)?;
        b.try_lock();
        Ok(b)
    }

    /// Locks the pages; returns whether they are locked now.
    pub fn try_lock(&mut self) -> bool {
        if !self.locked {
            // SAFETY: ptr..ptr+size is our live allocation.
            let rc = unsafe { libc::mlock(self.ptr.as_ptr().cast(), self.layout.size()) };
            self.locked = rc == 0;
        }
        self.locked
    }

    /// Whether the pages are locked in RAM.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated (the length rounded up to a page multiple).
    pub fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// Changes the visible length (up to the capacity) without touching the bytes.
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.layout.size() {
            return Err(Error::Shape {
                what: "buffer length (capacity)",
                expected: self.layout.size(),
                found: len,
            });
        }
        self.len = len;
        Ok(())
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: len <= capacity bytes, initialized (zeroed at allocation), owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.locked {
            // SAFETY: the range was locked by try_lock on this allocation.
            unsafe { libc::munlock(self.ptr.as_ptr().cast(), self.layout.size()) };
        }
        // SAFETY: allocated in `new` with exactly this layout; freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Page-locked host memory from the CUDA driver, for async host-to-device copies.
#[cfg(feature = "cuda")]
pub mod cuda {
    use crate::error::{Error, Result};

    /// Allocates `len` bytes of page-locked host memory through the CUDA driver
    /// (`cuMemHostAlloc` via cudarc). Errors, never panics, without a driver.
    pub fn pinned_host(len: usize) -> Result<cudarc::driver::PinnedHostSlice<u8>> {
        let ctx = std::panic::catch_unwind(|| cudarc::driver::CudaContext::new(0))
            .map_err(|_| Error::Unavailable {
                what: "CUDA driver",
                reason: "libcuda could not be loaded".into(),
            })?
            .map_err(|e| Error::Unavailable {
                what: "CUDA driver",
                reason: format!("{e:?}"),
            })?;
        // SAFETY: the slice is only read after it is written by the store.
        unsafe { ctx.alloc_pinned::<u8>(len) }.map_err(|e| Error::Unavailable {
            what: "CUDA pinned memory",
            reason: format!("{e:?}"),
        })
    }
}

/// Without the `cuda` feature: the typed "not compiled" error.
#[cfg(not(feature = "cuda"))]
pub mod cuda {
    use crate::error::{Error, Result};

    /// Always [`Error::NotCompiled`] in this build.
    pub fn pinned_host(_len: usize) -> Result<()> {
        Err(Error::NotCompiled {
            what: "CUDA pinned host memory",
            feature: "cuda",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::new_pinned(10_000).expect("alloc");
        assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[9_999] = 7;
        assert_eq!(b.capacity(), 12_288);
        assert!(AlignedBuf::new(10, 3).is_err());
    }
}
