//! The Rust side of the bindings' overhead benchmark (`benches/bindings/run.py` runs it
//! interleaved with the C and Python harnesses over the same ids): `Store::lookup_into`
//! through the Rust API, nanoseconds per call.
//!
//! Usage: lookup_overhead TABLE BACKEND CACHE_BYTES LAYER_ID IDS_FILE ROWS CALLS
//! (IDS_FILE: little-endian u64 row ids, consumed ROWS at a time, cyclically). Prints one
//! JSON line: {"ns_per_call": ...}.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use engram_store::{BackendKind, BackendOptions, Store, StoreOptions};

const USAGE: &str = "\
Usage: lookup_overhead TABLE BACKEND CACHE_BYTES LAYER_ID IDS_FILE ROWS CALLS

Store::lookup_into through the Rust API, nanoseconds per call: CALLS lookups of ROWS row
ids each from IDS_FILE (little-endian u64 row ids, consumed ROWS at a time, cyclically)
in layer LAYER_ID of TABLE, on BACKEND (memory|mmap|pread|uring) with a CACHE_BYTES cache.
Prints one JSON line: {\"ns_per_call\": ...}. benches/bindings/run.py runs it interleaved
with the C and Python harnesses over the same ids.";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    engram_benches::exit_on_help(&args, USAGE);
    let [table, backend, cache, layer_id, ids_file, rows, calls] = args.as_slice() else {
        engram_benches::exit_usage(&format!("expected 7 arguments, got {}", args.len()), USAGE);
    };
    let rows: usize = rows.parse().context("ROWS")?;
    let calls: usize = calls.parse().context("CALLS")?;
    let bytes = std::fs::read(ids_file).with_context(|| format!("reading {ids_file}"))?;
    let ids: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    if rows == 0 || ids.len() < rows {
        bail!(
            "{ids_file} holds {} ids, fewer than one batch of {rows}",
            ids.len()
        );
    }
    let batches = ids.len() / rows;
    let opts = StoreOptions {
        backend: BackendOptions {
            kind: BackendKind::parse(backend)?,
            ..BackendOptions::default()
        },
        cache_bytes: cache.parse().context("CACHE_BYTES")?,
        ..StoreOptions::default()
    };
    let store = Store::open(&PathBuf::from(table), &opts)?;
    let layer = store.table().layout().layer_index(layer_id.parse()?)?;
    let mut out = vec![0u8; rows * store.row_bytes()];
    // One warm-up pass over every batch (fills the cache the same way in every harness).
    for b in 0..batches {
        store.lookup_into(layer, &ids[b * rows..(b + 1) * rows], &mut out)?;
    }
    let t0 = Instant::now();
    for k in 0..calls {
        let b = k % batches;
        store.lookup_into(layer, &ids[b * rows..(b + 1) * rows], &mut out)?;
    }
    let ns = t0.elapsed().as_nanos() as f64 / calls as f64;
    println!(
        "{}",
        serde_json::json!({"harness": "rust", "backend": store.backend_kind().name(), "ns_per_call": ns})
    );
    Ok(())
}
