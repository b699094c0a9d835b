//! Helpers for the tests that need a Mooncake cluster (`scripts/mooncake-local.sh start`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_kernels::EngramConfig;
use engram_mooncake::{Client, ClientConfig, PublishOptions, Replication};
use engram_store::{BackendKind, BackendOptions, RowLayout, Store, StoreOptions};
use engram_testbed::synth::{SynthSpec, synth_row, write_synth};

/// Set to `1` to make a missing cluster a failure instead of a skip (CI's Mooncake job).
pub const REQUIRE_ENV: &str = "ENGRAM_REQUIRE_MOONCAKE";
/// The master address `scripts/mooncake-local.sh start` printed.
pub const MASTER_ENV: &str = "ENGRAM_MOONCAKE_MASTER";

/// The project's venv with the wheel, unless `ENGRAM_MOONCAKE_VENV` names another.
pub fn venv() -> PathBuf {
    std::env::var_os(engram_mooncake::config::VENV_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mooncake/venv"))
}

/// The cluster's client settings, or `None` (said on stderr) when no cluster is given;
/// a failure instead under `ENGRAM_REQUIRE_MOONCAKE=1`.
#[allow(clippy::panic)]
pub fn cluster(test: &str) -> Option<ClientConfig> {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
    let master = std::env::var(MASTER_ENV).ok().filter(|m| !m.is_empty());
    if !engram_mooncake::CLIENT_COMPILED {
        if required {
            panic!("{REQUIRE_ENV}=1 but the Mooncake client is not compiled in (feature python)");
        }
        engram_kernels::skip::skipped(&format!(
            "{test}: the Mooncake client is not compiled in (--features python)"
        ));
        return None;
    }
    let Some(master) = master else {
        if required {
            panic!("{REQUIRE_ENV}=1 but {MASTER_ENV} is not set (scripts/mooncake-local.sh start)");
        }
        engram_kernels::skip::skipped(&format!(
            "{test}: no Mooncake cluster ({MASTER_ENV} unset; scripts/mooncake-local.sh start)"
        ));
        return None;
    };
    let mut c = ClientConfig::new(&master).expect("master address");
    c.venv = Some(venv());
    Some(c)
}

pub fn connect(c: &ClientConfig) -> Arc<Client> {
    Arc::new(Client::connect(c).expect("connect to the Mooncake cluster"))
}

/// A small two-layer table: 128-byte rows, a few hundred KiB per layer.
pub fn spec(seed: u64) -> SynthSpec {
    SynthSpec {
        config: EngramConfig {
            max_ngram: 3,
            n_heads: 2,
            base_sizes: vec![700, 707],
            layer_ids: vec![1, 4],
            seed: 3,
            pad_id: 2,
        },
        row_layout: RowLayout::Bf16,
        dim: 64,
        seed,
        block_bytes: None,
    }
}

pub fn make_table(parent: &Path, name: &str, s: &SynthSpec) -> PathBuf {
    let dir = parent.join(name);
    write_synth(&dir, s, false, |_, _, _| {}).expect("synth table");
    dir
}

pub fn expected_rows(s: &SynthSpec, layer: usize, ids: &[u64], rb: usize) -> Vec<u8> {
    let mut out = vec![0u8; ids.len() * rb];
    for (k, &r) in ids.iter().enumerate() {
        synth_row(s.seed, layer, r, &mut out[k * rb..(k + 1) * rb]);
    }
    out
}

/// Small chunks so that reads cross chunk boundaries.
pub fn small_chunks() -> PublishOptions {
    PublishOptions {
        chunk_bytes: 8192,
        batch_bytes: 64 << 10,
        replication: Replication::default(),
        ..PublishOptions::default()
    }
}

/// Store options for reads over Mooncake: merged reads up to 16 KiB (crossing chunks).
pub fn options(cache_bytes: u64) -> StoreOptions {
    StoreOptions {
        backend: BackendOptions {
            queue_depth: 16,
            coalesce_gap_bytes: 4096,
            max_read_bytes: 16 << 10,
            ..BackendOptions::default()
        },
        io_workers: 1,
        max_in_flight: 4,
        cache_bytes,
        ..StoreOptions::default()
    }
}

pub fn memory_store(dir: &Path) -> Store {
    let mut o = options(0);
    o.backend.kind = Some(BackendKind::Memory);
    Store::open(dir, &o).expect("memory store")
}

/// Id patterns: sequential, strided, random, duplicates, both ends, a full unit run.
pub fn id_patterns(rows: u64, seed: u64) -> Vec<Vec<u64>> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % rows
    };
    vec![
        (0..48).collect(),
        (0..200).map(|k| (k * 97) % rows).collect(),
        (0..1536).map(|_| rnd()).collect(),
        vec![5, 5, 5, rows - 1, 0, 5, rows - 1],
        (rows - 64..rows).rev().collect(),
        vec![rows / 2],
    ]
}

/// A synthetic table written to a temporary directory, opened, with its keys on the
/// cluster (any earlier publication of that version removed).
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub spec: SynthSpec,
    pub dir: PathBuf,
    pub table: Arc<engram_store::Table>,
    pub client: Arc<Client>,
    pub keys: engram_mooncake::TableKeys,
}

pub fn fixture(cfg: &ClientConfig, seed: u64) -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let spec = spec(seed);
    let dir = make_table(tmp.path(), "t", &spec);
    let table = Arc::new(engram_store::Table::open(&dir).expect("table"));
    let client = connect(cfg);
    let keys = engram_mooncake::TableKeys::of(table.manifest()).expect("keys");
    let _ = engram_mooncake::unpublish(&client, &keys, None);
    Fixture {
        tmp,
        spec,
        dir,
        table,
        client,
        keys,
    }
}
