//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use engram_kernels::EngramConfig;
use engram_store::{BackendKind, BackendOptions, Manifest, RowLayout, Store, StoreOptions};
use engram_testbed::synth::{SynthSpec, synth_row, write_synth};

pub mod file_engine;
pub mod sys;

pub const ALL_BACKENDS: [BackendKind; 4] = [
    BackendKind::Memory,
    BackendKind::Mmap,
    BackendKind::Pread,
    BackendKind::Uring,
];

pub fn small_config(base: u64) -> EngramConfig {
    EngramConfig {
        max_ngram: 3,
        n_heads: 2,
        base_sizes: vec![base, base + 7],
        layer_ids: vec![1, 4],
        seed: 3,
        pad_id: 2,
    }
}

pub fn spec(layout: RowLayout, dim: u32, base: u64, seed: u64) -> SynthSpec {
    SynthSpec {
        config: small_config(base),
        row_layout: layout,
        dim,
        seed,
        block_bytes: None,
    }
}

/// Writes a synthetic table into `parent/name`.
pub fn make_table(parent: &Path, name: &str, s: &SynthSpec) -> (PathBuf, Manifest) {
    let dir = parent.join(name);
    let m = write_synth(&dir, s, false, |_, _, _| {}).expect("synth table");
    (dir, m)
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

/// True (after saying so on stderr) when `kind` is io_uring and this machine cannot run
/// it; fails instead when `ENGRAM_REQUIRE_URING` is set, so CI cannot skip it silently.
pub fn skip_uring(kind: BackendKind) -> bool {
    !engram_store::backend::runnable_here(kind).expect("backend required on this machine")
}

/// Opens `dir` on `kind`; `None` (said on stderr) when `kind` cannot run here.
pub fn try_store(dir: &Path, kind: BackendKind, cache_bytes: u64, qd: usize) -> Option<Store> {
    (!skip_uring(kind)).then(|| store(dir, kind, cache_bytes, qd))
}

pub fn store(dir: &Path, kind: BackendKind, cache_bytes: u64, qd: usize) -> Store {
    let opts = StoreOptions {
        backend: BackendOptions {
            kind: Some(kind),
            queue_depth: qd,
            pread_threads: 2,
            ..BackendOptions::default()
        },
        io_workers: 1,
        max_in_flight: 4,
        cache_bytes,
        ..StoreOptions::default()
    };
    Store::open(dir, &opts).expect("open store")
}

/// Versions of one small table, told apart by their seed, written with an extra file, for
/// the publication tests.
pub mod publish {
    use std::path::Path;

    use engram_store::{Error, Manifest, RowLayout, Table, TableWriter};
    use engram_testbed::synth::{SynthSpec, write_synth_rows};

    use super::{expected_rows, spec};

    pub fn version(seed: u64) -> SynthSpec {
        spec(RowLayout::Bf16, 16, 40, seed)
    }

    /// Writes version `seed` of the table at `dir` with an extra file `notes.txt` naming it.
    pub fn write(dir: &Path, seed: u64, force: bool) -> Result<Manifest, Error> {
        let s = version(seed);
        let mut w = TableWriter::create(dir, &s.manifest()?, force)?;
        write_synth_rows(&mut w, &s, |_, _, _| {})?;
        w.add_file("notes.txt", format!("seed {seed}").as_bytes())?;
        w.finish()
    }

    /// The seed of the complete table at `dir` (its rows, checksums and extra file agree).
    pub fn seed_of(dir: &Path) -> u64 {
        let t = Table::open(dir).expect("a complete table");
        let notes = std::fs::read_to_string(dir.join("notes.txt")).expect("notes.txt");
        let seed: u64 = notes
            .strip_prefix("seed ")
            .and_then(|s| s.parse().ok())
            .expect("notes.txt names the seed");
        assert_eq!(t.manifest().build.source, format!("synthetic seed={seed}"));
        for layer in 0..t.n_layers() {
            t.verify_layer(layer).expect("checksums hold");
            let last = t.rows(layer).expect("rows") - 1;
            let ids = [0, last / 2, last];
            let mut got = vec![0u8; ids.len() * t.row_bytes()];
            t.read_rows_simple(layer, &ids, &mut got).expect("reads");
            assert_eq!(
                got,
                expected_rows(&version(seed), layer, &ids, t.row_bytes())
            );
        }
        seed
    }
}
