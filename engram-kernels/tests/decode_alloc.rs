//! Decode allocates nothing per call: every buffer lives in `DecodeScratch` and `ConvState`.
//! Counted with a global allocator wrapper (its own test binary, one test, so nothing else
//! allocates concurrently).
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use engram_kernels::{EngramModule, EngramModuleConfig, EngramModuleWeights};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Allocations made by this thread (const-initialised: no allocation to set it up).
    static MINE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn mine() -> usize {
    MINE.with(|c| c.get())
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        let _ = MINE.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_step_does_not_allocate() {
    let (d, m, dm) = (64usize, 4usize, 96usize);
    let cfg = EngramModuleConfig::new(d, m, dm, 3);
    let val = |n: usize| -> Vec<f32> { (0..n).map(|i| ((i % 13) as f32 - 6.0) * 0.05).collect() };
    let w = EngramModuleWeights {
        value_proj_w: val(d * dm),
        value_proj_b: val(d),
        key_proj_w: (0..m).map(|_| val(d * dm)).collect(),
        key_proj_b: (0..m).map(|_| val(d)).collect(),
        norm1: (0..m).map(|_| vec![1.0; d]).collect(),
        norm2: (0..m).map(|_| vec![1.0; d]).collect(),
        conv_norm: (0..m).map(|_| vec![1.0; d]).collect(),
        conv_w: val(m * d * 4),
    };
    let module = EngramModule::new(cfg, w).unwrap();
    for batch in [1usize, 8] {
        let mut states: Vec<_> = (0..batch).map(|_| module.new_state().unwrap()).collect();
        let mut scratch = module.decode_scratch(batch);
        let e = val(batch * dm);
        let h = val(batch * m * d);
        let mut y = vec![0f32; batch * m * d];
        // Warm-up: the thread pool and the CPU-level detection allocate once.
        module
            .forward_decode(&e, &h, &mut states, &mut y, &mut scratch)
            .unwrap();
        // Counted on the calling thread: other threads (a pool from the previous round
        // shutting down) may allocate meanwhile.
        let before = mine();
        for _ in 0..20 {
            module
                .forward_decode(&e, &h, &mut states, &mut y, &mut scratch)
                .unwrap();
        }
        assert_eq!(mine() - before, 0, "batch {batch}: decode allocated");
        // From inside a pool (the threaded path).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let extra = pool.install(|| {
            for _ in 0..5 {
                module
                    .forward_decode(&e, &h, &mut states, &mut y, &mut scratch)
                    .unwrap();
            }
            let before = (ALLOCS.load(Ordering::SeqCst), mine());
            for _ in 0..50 {
                module
                    .forward_decode(&e, &h, &mut states, &mut y, &mut scratch)
                    .unwrap();
            }
            (ALLOCS.load(Ordering::SeqCst) - before.0, mine() - before.1)
        });
        println!(
            "batch {batch}: threaded decode, 50 calls: {} allocations in all threads, {} on the calling worker",
            extra.0, extra.1
        );
        assert_eq!(extra.1, 0, "batch {batch}: threaded decode allocated");
    }
}
