//! Helpers shared by the service's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use engram_kernels::EngramConfig;
use engram_server::{Server, ServerOptions, TableSpec};
use engram_store::{BackendKind, BackendOptions, RowLayout, StoreOptions};
use engram_testbed::synth::{SynthSpec, synth_row, write_synth};

pub const ALL_BACKENDS: [BackendKind; 4] = [
    BackendKind::Memory,
    BackendKind::Mmap,
    BackendKind::Pread,
    BackendKind::Uring,
];

pub fn spec(base: u64, seed: u64) -> SynthSpec {
    SynthSpec {
        config: EngramConfig {
            max_ngram: 3,
            n_heads: 2,
            base_sizes: vec![base, base + 7],
            layer_ids: vec![1, 4],
            seed: 3,
            pad_id: 2,
        },
        row_layout: RowLayout::Fp8E4m3E8m0 { scale_block: 32 },
        dim: 256,
        seed,
        block_bytes: None,
    }
}

/// Writes a synthetic table into `parent/name` (replacing one there).
pub fn make_table(parent: &Path, name: &str, s: &SynthSpec) -> PathBuf {
    let dir = parent.join(name);
    write_synth(&dir, s, true, |_, _, _| {}).expect("synth table");
    dir
}

pub fn expected_rows(s: &SynthSpec, layer: usize, ids: &[u64], row_bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; ids.len() * row_bytes];
    for (k, &r) in ids.iter().enumerate() {
        synth_row(
            s.seed,
            layer,
            r,
            &mut out[k * row_bytes..(k + 1) * row_bytes],
        );
    }
    out
}

pub fn store_options(kind: BackendKind, cache_bytes: u64) -> StoreOptions {
    StoreOptions {
        backend: BackendOptions {
            kind: Some(kind),
            queue_depth: 8,
            pread_threads: 2,
            ..BackendOptions::default()
        },
        io_workers: 1,
        max_in_flight: 16,
        max_batch_rows: 4096,
        cache_bytes,
        ..StoreOptions::default()
    }
}

/// Whether `kind` runs here (io_uring may not; said on stderr, an error under
/// `ENGRAM_REQUIRE_URING`).
pub fn runnable(kind: BackendKind) -> bool {
    engram_store::backend::runnable_here(kind).expect("backend required on this machine")
}

/// A server for `tables` on a socket in `dir`.
pub fn serve(dir: &Path, tables: &[(&str, &Path)], store: StoreOptions) -> Server {
    let mut o = ServerOptions::new(
        dir.join("engram.sock"),
        tables
            .iter()
            .map(|(n, p)| TableSpec {
                name: n.to_string(),
                path: p.to_path_buf(),
            })
            .collect(),
    );
    o.store = store;
    o.max_clients = 8;
    Server::start(o).expect("server")
}

/// Deterministic ids (with repeats) below `rows`.
pub fn ids(n: usize, rows: u64, seed: u64) -> Vec<u64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % rows
        })
        .collect()
}

/// Descriptors open in this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Polls `cond` for up to 10 s.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
