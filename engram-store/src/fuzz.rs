//! Fuzz entry points: one function per parser of this crate, shared by the libFuzzer
//! targets in `fuzz/` and the regression test over their corpora (`tests/tests/
//! fuzz_corpora.rs`), so the two cannot drift. Each returns normally on any input; a panic,
//! including a failed invariant assertion below, is a bug.
//!
//! Parsers behind a checksum are also fed a copy with the checksum made right, so the
//! fuzzer reaches the field checks behind it instead of stopping at the mismatch.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use crate::format::{HEADER_BYTES, LayerHeader, Manifest, header_checksum};
use crate::profile::Profile;
use crate::records::{RecordsBinding, RecordsIndex};

/// `manifest.json`: parse and validate, derive the layout and every layer's expected
/// header; a parsed manifest serializes and parses back to itself (sealed).
pub fn manifest(data: &[u8]) {
    let path = Path::new("fuzz/manifest.json");
    let Ok(m) = Manifest::from_json(data, path) else {
        return;
    };
    if m.derive_layout(path).is_ok() {
        for (i, l) in m.layers.iter().enumerate() {
            let _ = LayerHeader::expected(&m, i as u32, l.layer_id, l.rows);
        }
    }
    let json = m.to_json().expect("a parsed manifest serializes");
    let back = Manifest::from_json(&json, path).expect("a serialized manifest parses");
    let mut sealed = m.clone();
    sealed.seal().expect("a parsed manifest seals");
    assert_eq!(back, sealed, "manifest round trip");
}

/// A layer file's 4096-byte header: a decoded header encodes back to the same bytes.
pub fn layer_header(data: &[u8]) {
    check_layer_header(data);
    let n = HEADER_BYTES as usize;
    if data.len() >= n {
        let mut b = data[..n].to_vec();
        let sum = header_checksum(&b[..n - 8]);
        b[n - 8..].copy_from_slice(&sum.to_le_bytes());
        check_layer_header(&b);
    }
}

fn check_layer_header(b: &[u8]) {
    let Ok((h, sum)) = LayerHeader::decode(b, Path::new("fuzz/layer.bin"), 0) else {
        return;
    };
    let n = HEADER_BYTES as usize;
    assert_eq!(h.encode(), b[..n], "layer header round trip");
    assert_eq!(sum, header_checksum(&b[..n - 8]));
}

/// `profile.bin`: a parsed profile serializes to the same bytes.
pub fn profile(data: &[u8]) {
    check_profile(data);
    if data.len() >= 8 {
        let mut b = data.to_vec();
        let body = b.len() - 8;
        let sum = xxh3_64(&b[..body]);
        b[body..].copy_from_slice(&sum.to_le_bytes());
        check_profile(&b);
    }
}

fn check_profile(b: &[u8]) {
    if let Ok(p) = Profile::from_bytes(b, Path::new("fuzz/profile.bin")) {
        assert_eq!(p.to_bytes(), b, "profile round trip");
    }
}

/// The table every fuzzed `records.bin` is bound to: 2 heads of 16-byte rows, layers of
/// 1000 and 300 rows (ids 1 and 4), table id 0x0123456789abcdef. The seeds are written for
/// it (`fuzz/seeds.py`).
pub fn records_binding() -> RecordsBinding {
    RecordsBinding {
        table_id: 0x0123_4567_89ab_cdef,
        row_bytes: 16,
        n_heads: 2,
        layers: vec![(1, 1000), (4, 300)],
    }
}

/// `records.bin` against [`records_binding`]; a copy gets its header checksum and each
/// layer's index and checksum-table checksums made right.
pub fn records(data: &[u8]) {
    let path = Path::new("fuzz/records.bin");
    let binding = records_binding();
    let _ = RecordsIndex::from_bytes(data, path, &binding);
    if data.len() >= 4096 {
        let mut b = data.to_vec();
        crate::records::fix_checksums(&mut b);
        let _ = RecordsIndex::from_bytes(&b, path, &binding);
    }
}

/// `candidates.bin`: parse and validate (and a copy with its trailing checksum made
/// right); a parsed file serializes back to the same bytes, and predicting from it never
/// panics.
pub fn candidates(data: &[u8]) {
    check_candidates(data);
    if data.len() >= 8 {
        let mut fixed = data.to_vec();
        let n = fixed.len() - 8;
        let sum = xxh3_64(&fixed[..n]);
        fixed[n..].copy_from_slice(&sum.to_le_bytes());
        check_candidates(&fixed);
    }
}

fn check_candidates(data: &[u8]) {
    let Ok(c) = crate::candidates::Candidates::from_bytes(data, Path::new("fuzz/candidates.bin"))
    else {
        return;
    };
    assert_eq!(c.to_bytes(), data, "candidates round trip");
    let mut out = Vec::new();
    for context in [&[][..], &[5][..], &[1, 2][..], &[-1, 7, 9][..]] {
        c.predict_into(context, c.k(), &mut out);
        assert!(out.len() <= c.k());
    }
}

/// The request pipeline's simulation (the crate's `sim` module): the first 8 bytes seed the faults
/// and store shape, the rest are operations. A broken invariant (a wrong row, a request
/// that never completes, a staging slot not free at rest, counters that do not add up)
/// panics with what broke.
pub fn pipeline_sim(data: &[u8]) {
    let table = sim_table();
    let (seed, ops) = match data.split_first_chunk::<8>() {
        Some((s, rest)) => (u64::from_le_bytes(*s), rest),
        None => (0, data),
    };
    if let Err(e) = crate::sim::run(table, seed, ops) {
        panic!("pipeline simulation, seed {seed}: {e}");
    }
}

/// Writes a small table of pseudo-random rows to `dir` (replacing what is there): two
/// layers (ids 1 and 4), orders 2-3 x 2 heads over base sizes 300 and 307, bf16 rows of 64
/// values, row bytes drawn from SplitMix64 keyed by (layer index, row). For the fuzz
/// targets of this crate and of the service, which cannot reach the test bed's synthetic
/// tables (`engram-testbed` depends on this crate).
pub fn write_small_table(dir: &Path) -> crate::Result<Manifest> {
    let config = engram_kernels::EngramConfig {
        max_ngram: 3,
        n_heads: 2,
        base_sizes: vec![300, 307],
        layer_ids: vec![1, 4],
        seed: 3,
        pad_id: 2,
    };
    let layout = engram_kernels::EngramLayout::new(&config, 99_092, 2).map_err(|e| {
        crate::Error::Invalid {
            what: "config",
            reason: e.to_string(),
        }
    })?;
    let tokenizer = "0".repeat(64);
    let build = crate::format::BuildInfo::default();
    let m = Manifest::new(&layout, &tokenizer, crate::RowLayout::Bf16, 64, None, build)?;
    let mut w = crate::table::TableWriter::create(dir, &m, true)?;
    let rb = m.row_bytes as usize;
    for (li, layer) in m.layers.iter().enumerate() {
        let mut rows = vec![0u8; layer.rows as usize * rb];
        for (row, bytes) in rows.chunks_exact_mut(rb).enumerate() {
            let mut rng = engram_kernels::rng::SplitMix64::keyed(&[li as u64, row as u64]);
            for b in bytes.chunks_mut(8) {
                b.copy_from_slice(&rng.next_u64().to_le_bytes()[..b.len()]);
            }
        }
        w.write_layer_rows(li, &rows)?;
    }
    w.finish()
}

/// The small table of [`write_small_table`] for the simulation, written once per process
/// into a temporary directory that is removed again at once (the open table keeps its
/// files open).
pub(crate) fn sim_table() -> &'static std::sync::Arc<crate::table::Table> {
    static TABLE: std::sync::OnceLock<std::sync::Arc<crate::table::Table>> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("engram-sim-{}", std::process::id()));
        write_small_table(&dir).expect("simulation table");
        let table = crate::table::Table::open(&dir).expect("simulation table opens");
        let _ = std::fs::remove_dir_all(&dir);
        std::sync::Arc::new(table)
    })
}
