//! Shared harness for the fuzz targets: the allocation cap every target runs under.
//!
//! libFuzzer's `-malloc_limit_mb` works through a sanitizer's malloc hooks, which a
//! `--sanitizer none` build (the stable-Rust build in `fuzz.sh`) does not have, so the cap on
//! a single allocation is enforced here, in the global allocator: an input that makes a
//! parser ask for more than [`MAX_ALLOC_BYTES`] at once aborts, and libFuzzer records it as a
//! crash. `-rss_limit_mb` (total memory) works without hooks.

use std::alloc::{GlobalAlloc, Layout, System};

/// Largest single allocation a target may make: 512 MiB, as `-malloc_limit_mb=512`.
pub const MAX_ALLOC_BYTES: usize = 512 << 20;

/// The system allocator, refusing (by aborting) any single allocation over
/// [`MAX_ALLOC_BYTES`].
#[derive(Debug)]
pub struct CappedAlloc;

fn check(size: usize) {
    if size > MAX_ALLOC_BYTES {
        // No allocation here: the message is static.
        eprintln!("==engram-fuzz== single allocation over MAX_ALLOC_BYTES (512 MiB)");
        std::process::abort();
    }
}

// SAFETY: every method checks the size and forwards the same arguments to `System`, which
// upholds the `GlobalAlloc` contract; nothing else is done with the memory.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: `ptr` came from `System` through this allocator with `layout`; the caller
        // upholds `realloc`'s contract for `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Declares a fuzz target running `$f(&[u8])` under [`CappedAlloc`].
#[macro_export]
macro_rules! target {
    ($f:path) => {
        #[global_allocator]
        static ALLOC: $crate::CappedAlloc = $crate::CappedAlloc;
        libfuzzer_sys::fuzz_target!(|data: &[u8]| $f(data));
    };
}
