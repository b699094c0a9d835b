//! A decode step allocates nothing: every buffer of the decoder (KV cache, scratch, the
//! hyper-connection coefficients and Sinkhorn matrices, the Engram rows and conv state) is
//! allocated when the session is made. Counted with a global allocator wrapper on the
//! decoding thread (its own test binary, one test).
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};

use common::{committed_models, tokenizer_available, write_zero_table};
use engram_store::{BackendKind, StoreOptions};
use moe_core::ModelConfig;
use moe_core::session::{EngramSource, Session};

struct Counting;

thread_local! {
    // Allocations made by this thread (const-initialised: no allocation to set it up).
    static MINE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn mine() -> u64 {
    MINE.with(|c| c.get())
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = MINE.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = MINE.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations on this thread during 16 decode steps, after a prompt and 4 warm-up steps.
fn steady_state_allocations(s: &mut Session) -> u64 {
    let raw = s.encode("def main():\n    x = 1\n").expect("encodes");
    s.prefill(&raw).expect("prefill");
    // Decode a fixed id (not a sampled one: the sampler is not under test).
    let id = s.vocab.reduce(raw[1]);
    for _ in 0..4 {
        s.step(id).expect("step");
    }
    let before = mine();
    for _ in 0..16 {
        s.step(id).expect("step");
    }
    mine() - before
}

#[test]
fn decode_steps_do_not_allocate() {
    if !tokenizer_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for dir in committed_models() {
        let config = ModelConfig::load(&dir.join("config.json")).expect("config");
        let mut s = Session::load(&dir, None, None).expect("loads");
        let n = steady_state_allocations(&mut s);
        eprintln!(
            "{}: {n} allocations in 16 steps (no Engram rows)",
            dir.display()
        );
        assert_eq!(n, 0, "{}: decode allocated", dir.display());
        if let Some(e) = &config.engram {
            let table = tmp.path().join(dir.file_name().expect("name"));
            write_zero_table(
                &table,
                &e.addressing(),
                &config.tokenizer_sha256,
                e.head_dim as u32,
                &[],
            );
            let mut options = StoreOptions::default();
            options.backend.kind = Some(BackendKind::Memory);
            // Zero rows, not the model's: allowed explicitly.
            let source = EngramSource {
                table,
                options,
                allow_foreign_table: true,
            };
            let mut s = Session::load(&dir, None, Some(&source)).expect("loads with a table");
            let n = steady_state_allocations(&mut s);
            eprintln!(
                "{}: {n} allocations in 16 steps with Engram rows",
                dir.display()
            );
            assert_eq!(n, 0, "{}: decode with Engram allocated", dir.display());
        }
        checked += 1;
    }
    assert!(checked > 0, "no committed model");
}
