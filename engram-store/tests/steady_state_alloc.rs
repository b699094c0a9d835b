//! No heap allocation in the steady state: after warm-up, lookups and prefetch tickets on
//! every backend (with the cache) allocate nothing, on any thread.
//!
//! The counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use engram_store::RowLayout;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// Diagnostics for a failure: allocations made off the test thread, and the first sizes.
thread_local! { static MAIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) }; }
static OTHER: AtomicU64 = AtomicU64::new(0);
static SIZES: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            let n = ALLOCS.fetch_add(1, Ordering::Relaxed);
            if !MAIN.with(|m| m.get()) {
                OTHER.fetch_add(1, Ordering::Relaxed);
            }
            if (n as usize) < 8 {
                SIZES[n as usize].store(layout.size() as u64, Ordering::Relaxed);
            }
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn lookups_and_tickets_do_not_allocate_after_warm_up() {
    MAIN.with(|m| m.set(true));
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Fp8E4m3E8m0 { scale_block: 32 }, 256, 400, 2);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    for kind in ALL_BACKENDS {
        let Some(st) = try_store(&dir, kind, 64 * 264 * 16, 8) else {
            continue;
        };
        let rb = st.row_bytes();
        let rows = st.table().rows(1).expect("rows");
        let batches: Vec<Vec<u64>> = (0..8u64)
            .map(|b| (0..200).map(|k| (b * 7919 + k * k * 31) % rows).collect())
            .collect();
        let mut out = vec![0u8; 200 * rb];
        let mut bufs: Vec<_> = (0..2).map(|_| st.alloc_rows(200).expect("buf")).collect();
        let mut run = |bufs: &mut Vec<engram_store::AlignedBuf>| {
            for ids in &batches {
                st.lookup_into(1, ids, &mut out).expect("lookup");
                let b = bufs.pop().expect("buf");
                let (b, r) = st.prefetch(1, ids, b).wait();
                r.expect("prefetch");
                bufs.push(b);
            }
        };
        // Threads allocate once, lazily, the first time they block on a channel (crossbeam's
        // per-thread wait context), and a channel's waiter list grows to the most threads
        // that ever waited on it at once. Both depend on scheduling, not on calls: warm up
        // long enough, with pauses that let every thread reach its wait, that only per-call
        // allocations remain to be counted.
        for _ in 0..4 {
            for _ in 0..3 {
                run(&mut bufs);
            }
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        ALLOCS.store(0, Ordering::Relaxed);
        OTHER.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        run(&mut bufs);
        COUNTING.store(false, Ordering::Relaxed);
        let n = ALLOCS.load(Ordering::Relaxed);
        let sizes: Vec<u64> = SIZES.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        assert_eq!(
            n,
            0,
            "{kind}: {n} allocations in the steady state, {} on other threads, sizes {sizes:?}",
            OTHER.load(Ordering::Relaxed)
        );
    }
}
