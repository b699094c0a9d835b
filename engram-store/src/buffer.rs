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
    #[cfg(feature = "cuda")]
    cuda: Option<std::sync::Arc<cudarc::driver::CudaContext>>,
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
            #[cfg(feature = "cuda")]
            cuda: None,
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

    /// Length in bytes (as asked for, not rounded up).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes.
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

    /// Pointer to the first byte, aligned as asked.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Mutable pointer to the first byte, aligned as asked.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: len <= capacity bytes, initialized (zeroed at allocation), owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
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
        #[cfg(feature = "cuda")]
        if let Some(ctx) = self.cuda.take() {
            let _ = ctx.bind_to_thread();
            // SAFETY: the range was registered by register_cuda and is still allocated.
            let _ = unsafe { cudarc::driver::sys::cuMemHostUnregister(self.ptr.as_ptr().cast()) };
        }
        if self.locked {
            // SAFETY: the range was locked by try_lock on this allocation.
            unsafe { libc::munlock(self.ptr.as_ptr().cast(), self.layout.size()) };
        }
        // SAFETY: allocated in `new` with exactly this layout; freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

#[cfg(feature = "cuda")]
impl AlignedBuf {
    /// Page-locks the buffer through the CUDA driver (`cuMemHostRegister`, portable) so
    /// async host-to-device copies read it directly: the SSD DMA target and the GPU copy
    /// source are the same memory. Errors (never panics) without a driver or device.
    pub fn register_cuda(&mut self) -> Result<()> {
        if self.cuda.is_some() {
            return Ok(());
        }
        let ctx = cuda::context()?;
        // SAFETY: ptr..ptr+capacity is our live allocation; it is unregistered in Drop
        // before being freed.
        let rc = unsafe {
            cudarc::driver::sys::cuMemHostRegister_v2(
                self.ptr.as_ptr().cast(),
                self.layout.size(),
                cudarc::driver::sys::CU_MEMHOSTREGISTER_PORTABLE,
            )
        };
        if rc != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            return Err(Error::Unavailable {
                what: "CUDA host registration",
                reason: format!("cuMemHostRegister: {rc:?}"),
            });
        }
        self.cuda = Some(ctx);
        Ok(())
    }

    /// Whether the buffer is registered with the CUDA driver.
    pub fn is_cuda_registered(&self) -> bool {
        self.cuda.is_some()
    }
}

/// The CUDA driver, loaded at run time (the `cuda` feature builds without a toolkit).
#[cfg(feature = "cuda")]
pub mod cuda {
    use std::sync::Arc;

    use cudarc::driver::CudaContext;

    use crate::error::{Error, Result};

    /// Device 0's context, or `Unavailable` when libcuda or a device is missing.
    pub fn context() -> Result<Arc<CudaContext>> {
        // SAFETY: only probes whether the shared library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Unavailable {
                what: "CUDA driver",
                reason: "libcuda.so could not be loaded (no NVIDIA driver)".into(),
            });
        }
        CudaContext::new(0).map_err(|e| Error::Unavailable {
            what: "CUDA device 0",
            reason: format!("{e:?}"),
        })
    }
}

/// Without the `cuda` feature: the typed "not compiled" error.
#[cfg(not(feature = "cuda"))]
pub mod cuda {
    use crate::error::{Error, Result};

    /// Always [`Error::NotCompiled`] in this build.
    pub fn context() -> Result<()> {
        Err(Error::NotCompiled {
            what: "CUDA pinned host memory",
            feature: "cuda",
        })
    }
}

#[cfg(not(feature = "cuda"))]
impl AlignedBuf {
    /// Without the `cuda` feature: always [`Error::NotCompiled`].
    pub fn register_cuda(&mut self) -> Result<()> {
        Err(Error::NotCompiled {
            what: "CUDA host registration",
            feature: "cuda",
        })
    }

    /// Always false without the `cuda` feature.
    pub fn is_cuda_registered(&self) -> bool {
        false
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

    #[test]
    fn cuda_registration_is_an_error_not_a_panic_without_a_driver() {
        let mut b = AlignedBuf::new_pinned(4096).expect("alloc");
        match b.register_cuda() {
            Ok(()) => assert!(b.is_cuda_registered()),
            Err(e) => {
                assert!(!b.is_cuda_registered());
                let msg = e.to_string();
                assert!(msg.contains("cuda") || msg.contains("CUDA"), "{msg}");
            }
        }
    }
}
