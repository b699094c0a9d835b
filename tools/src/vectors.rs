//! Conformance vector checking: `engram-hash-v1` JSON files here, `engram-forward-v1`
//! safetensors files in [`crate::vectors_forward`]. Every expected field is recomputed
//! from the case's inputs and compared exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use engram_files::file::{Limit, open_regular, read_regular, read_regular_string};
use engram_kernels::hash::{HashOptions, HashOutput, NgramHasher, mixes};
use engram_kernels::{CompressionTable, EngramConfig, EngramLayout};
use serde::Deserialize;

/// The outcome of checking one or more vector files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VectorReport {
    /// Cases checked.
    pub cases: usize,
    /// Hash indices (hash vectors) or float values (forward vectors) compared.
    pub checked: u64,
    /// What `checked` counts: "indices" or "values".
    pub unit: &'static str,
    /// The first mismatches, each naming case, field and position, got and expected.
    pub mismatches: Vec<String>,
    /// All mismatches, including those not kept in `mismatches`.
    pub mismatch_count: u64,
}

/// Largest conformance file read (JSON vectors or a forward case's safetensors).
pub const MAX_VECTOR_FILE_BYTES: Limit = Limit {
    what: "conformance vector file",
    name: "MAX_VECTOR_FILE_BYTES",
    bytes: 1 << 30,
};

/// How many mismatches a report keeps in full.
pub const MAX_REPORTED_MISMATCHES: usize = 20;

impl VectorReport {
    fn new(unit: &'static str) -> Self {
        Self {
            unit,
            ..Self::default()
        }
    }

    /// Records one mismatch; the message is built only if it will be kept.
    pub fn mismatch(&mut self, describe: impl FnOnce() -> String) {
        self.mismatch_count += 1;
        if self.mismatches.len() < MAX_REPORTED_MISMATCHES {
            self.mismatches.push(describe());
        }
    }

    /// Compares two values, recording a mismatch named by `what`.
    pub fn expect_eq<T: PartialEq + std::fmt::Debug>(
        &mut self,
        got: &T,
        expected: &T,
        what: impl FnOnce() -> String,
    ) {
        if got != expected {
            self.mismatch(|| format!("{}: got {got:?}, expected {expected:?}", what()));
        }
    }

    /// Adds another report of the same unit.
    pub fn merge(&mut self, other: VectorReport) {
        debug_assert!(self.unit == other.unit || self.cases == 0);
        self.unit = other.unit;
        self.cases += other.cases;
        self.checked += other.checked;
        self.mismatch_count += other.mismatch_count;
        for m in other.mismatches {
            if self.mismatches.len() < MAX_REPORTED_MISMATCHES {
                self.mismatches.push(m);
            }
        }
    }

    /// The one-line summary `vectors: C cases, I <unit>, all match` (or the mismatch count).
    pub fn summary(&self) -> String {
        if self.mismatch_count == 0 {
            format!(
                "vectors: {} cases, {} {}, all match",
                self.cases, self.checked, self.unit
            )
        } else {
            format!(
                "vectors: {} cases, {} {}, {} mismatches",
                self.cases, self.checked, self.unit, self.mismatch_count
            )
        }
    }
}

/// Options for hash-vector checking.
#[derive(Debug, Clone, Default)]
pub struct HashCheckOptions {
    /// Also build every named compression table whose `tokenizer_json_sha256` matches this
    /// tokenizer file from the tokenizer itself, and compare it with the file's table.
    pub tokenizer: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct HashFile {
    format: String,
    #[serde(default)]
    compression_tables: BTreeMap<String, NamedTable>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct NamedTable {
    #[serde(default)]
    tokenizer_json_sha256: Option<String>,
    raw_vocab_size: usize,
    compressed_vocab_size: u64,
    #[serde(default)]
    lookup_sha256_i32le: Option<String>,
    encoding: String,
    merged: Vec<(i64, i64)>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    config: EngramConfig,
    compression: Compression,
    input_ids: Vec<Vec<i64>>,
    expected: Expected,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Compression {
    Named {
        table: String,
    },
    Inline {
        lookup: Vec<i64>,
        compressed_vocab_size: u64,
    },
}

#[derive(Debug, Deserialize)]
struct Expected {
    compressed_ids: Vec<Vec<i64>>,
    compressed_pad_id: i64,
    half_bound: u64,
    layers: Vec<ExpectedLayer>,
}

#[derive(Debug, Deserialize)]
struct ExpectedLayer {
    layer_id: u64,
    rng_seed: u128,
    multipliers: Vec<i64>,
    primes: Vec<Vec<u64>>,
    offsets: Vec<u64>,
    total_rows: u64,
    head_indices: Vec<Vec<Vec<u64>>>,
    #[serde(default)]
    mix: Option<Vec<Vec<Vec<i64>>>>,
}

/// Rebuilds a `merged_only` table: ids not listed get fresh canonical ids in order.
fn rebuild_named(name: &str, t: &NamedTable) -> Result<CompressionTable> {
    ensure!(
        t.encoding == "merged_only",
        "compression table {name:?}: unsupported encoding {:?} (expected \"merged_only\")",
        t.encoding
    );
    let merged: BTreeMap<i64, i64> = t.merged.iter().copied().collect();
    let mut lookup = Vec::with_capacity(t.raw_vocab_size);
    let mut fresh = 0i64;
    for raw in 0..t.raw_vocab_size as i64 {
        match merged.get(&raw) {
            Some(&c) => lookup.push(c),
            None => {
                lookup.push(fresh);
                fresh += 1;
            }
        }
    }
    ensure!(
        fresh as u64 == t.compressed_vocab_size,
        "compression table {name:?}: {fresh} fresh ids but compressed_vocab_size is {}",
        t.compressed_vocab_size
    );
    let table = CompressionTable::from_lookup(&lookup, t.compressed_vocab_size)
        .with_context(|| format!("compression table {name:?}"))?;
    if let Some(want) = &t.lookup_sha256_i32le {
        let got = table.sha256_i32le();
        ensure!(
            &got == want,
            "compression table {name:?}: rebuilt table has SHA-256 {got}, the file says {want}"
        );
    }
    Ok(table)
}

fn rectangular<T>(rows: &[Vec<T>], what: &str) -> Result<(usize, usize)> {
    let b = rows.len();
    let t = rows.first().map_or(0, Vec::len);
    ensure!(b > 0 && t > 0, "{what} is empty");
    ensure!(
        rows.iter().all(|r| r.len() == t),
        "{what} is ragged: rows differ in length"
    );
    Ok((b, t))
}

/// Checks one `engram-hash-v1` file.
pub fn check_hash_file(path: &Path, options: &HashCheckOptions) -> Result<VectorReport> {
    let text = read_regular_string(path, MAX_VECTOR_FILE_BYTES)?;
    check_hash_text(&text, path, options)
}

/// Checks the text of an `engram-hash-v1` file read from `path`.
pub fn check_hash_text(
    text: &str,
    path: &Path,
    options: &HashCheckOptions,
) -> Result<VectorReport> {
    let file: HashFile = serde_json::from_str(text)
        .with_context(|| format!("{} is not an engram-hash-v1 file", path.display()))?;
    ensure!(
        file.format == "engram-hash-v1",
        "{}: format is {:?}, expected \"engram-hash-v1\"",
        path.display(),
        file.format
    );
    let mut report = VectorReport::new("indices");
    let mut tables = BTreeMap::new();
    for (name, named) in &file.compression_tables {
        let table = rebuild_named(name, named).with_context(|| path.display().to_string())?;
        if let Some(tok) = &options.tokenizer {
            check_against_tokenizer(name, named, &table, tok, &mut report)?;
        }
        tables.insert(name.clone(), table);
    }
    for case in &file.cases {
        check_case(case, &tables, &mut report)
            .with_context(|| format!("{}: case {:?}", path.display(), case.name))?;
        report.cases += 1;
    }
    Ok(report)
}

fn check_against_tokenizer(
    name: &str,
    named: &NamedTable,
    table: &CompressionTable,
    tokenizer: &Path,
    report: &mut VectorReport,
) -> Result<()> {
    let loaded = engram_files::tokenizer::load(tokenizer)?;
    if named.tokenizer_json_sha256.as_deref() != Some(loaded.sha256.as_str()) {
        tracing::info!(
            table = name,
            "tokenizer fingerprint differs; table not rebuilt"
        );
        return Ok(());
    }
    let built = CompressionTable::from_tokenizer(&loaded.tokenizer)?;
    report.expect_eq(
        &built.compressed_vocab_size(),
        &table.compressed_vocab_size(),
        || format!("compression table {name:?} built from the tokenizer: compressed_vocab_size"),
    );
    report.expect_eq(&built.sha256_i32le(), &table.sha256_i32le(), || {
        format!("compression table {name:?} built from the tokenizer: SHA-256")
    });
    Ok(())
}

fn check_case(
    case: &Case,
    tables: &BTreeMap<String, CompressionTable>,
    report: &mut VectorReport,
) -> Result<()> {
    let inline;
    let table = match &case.compression {
        Compression::Named { table } => tables
            .get(table)
            .with_context(|| format!("unknown compression table {table:?}"))?,
        Compression::Inline {
            lookup,
            compressed_vocab_size,
        } => {
            inline = CompressionTable::from_lookup(lookup, *compressed_vocab_size)?;
            &inline
        }
    };
    let name = &case.name;
    let (batch, seq) = rectangular(&case.input_ids, "input_ids")?;
    let raw: Vec<i64> = case.input_ids.concat();
    let compressed = table.compress(&raw)?;
    let exp = &case.expected;
    let (eb, et) = rectangular(&exp.compressed_ids, "expected.compressed_ids")?;
    ensure!(
        (eb, et) == (batch, seq),
        "expected.compressed_ids is {eb}x{et}, input_ids {batch}x{seq}"
    );
    for (i, (g, e)) in compressed
        .iter()
        .zip(exp.compressed_ids.concat())
        .enumerate()
    {
        report.expect_eq(g, &e, || {
            format!("case {name} compressed_ids b={} t={}", i / seq, i % seq)
        });
    }
    let pad = table.compress_id(case.config.pad_id)?;
    report.expect_eq(&pad, &exp.compressed_pad_id, || {
        format!("case {name} compressed_pad_id")
    });

    let layout = EngramLayout::new(&case.config, table.compressed_vocab_size(), pad)?;
    report.expect_eq(&layout.half_bound, &exp.half_bound, || {
        format!("case {name} half_bound")
    });
    ensure!(
        exp.layers.len() == layout.layers.len(),
        "expected.layers has {} entries, config.layer_ids {}",
        exp.layers.len(),
        layout.layers.len()
    );
    let hasher = NgramHasher::new(&layout, HashOptions::default())?;
    let heads = hasher.n_hash_heads();
    let k = case.config.n_heads;
    let mut indices = vec![0u64; batch * seq * heads];
    for (li, (got, want)) in layout.layers.iter().zip(&exp.layers).enumerate() {
        let l = got.layer_id;
        report.expect_eq(&got.layer_id, &want.layer_id, || {
            format!("case {name} layer #{li} layer_id")
        });
        report.expect_eq(&got.rng_seed, &want.rng_seed, || {
            format!("case {name} layer {l} rng_seed")
        });
        report.expect_eq(&got.multipliers, &want.multipliers, || {
            format!("case {name} layer {l} multipliers")
        });
        let got_primes: Vec<Vec<u64>> = got.primes.chunks(k).map(<[u64]>::to_vec).collect();
        report.expect_eq(&got_primes, &want.primes, || {
            format!("case {name} layer {l} primes")
        });
        report.expect_eq(&got.offsets, &want.offsets, || {
            format!("case {name} layer {l} offsets")
        });
        report.expect_eq(&got.total_rows, &want.total_rows, || {
            format!("case {name} layer {l} total_rows")
        });

        hasher.hash_into(
            li,
            &compressed,
            batch,
            seq,
            HashOutput::HeadIndex,
            &mut indices,
        )?;
        let (hb, ht) = rectangular(&want.head_indices, "expected head_indices")?;
        ensure!(
            (hb, ht) == (batch, seq),
            "layer {l}: head_indices is {hb}x{ht}, input_ids {batch}x{seq}"
        );
        for (b, rows) in want.head_indices.iter().enumerate() {
            for (t, expected) in rows.iter().enumerate() {
                ensure!(
                    expected.len() == heads,
                    "layer {l}: head_indices[{b}][{t}] has {} heads, expected {heads}",
                    expected.len()
                );
                let base = (b * seq + t) * heads;
                for (h, e) in expected.iter().enumerate() {
                    report.checked += 1;
                    let g = indices[base + h];
                    if g != *e {
                        report.mismatch(|| {
                            format!(
                                "case {name} layer {l} b={b} t={t} head {h}: got {g}, expected {e}"
                            )
                        });
                    }
                }
            }
        }
        if let Some(want_mix) = &want.mix {
            let got_mix = mixes(
                got,
                case.config.max_ngram,
                pad,
                HashOptions::default(),
                &compressed,
                seq,
            );
            let flat: Vec<i64> = want_mix.iter().flatten().flatten().copied().collect();
            ensure!(
                flat.len() == got_mix.len(),
                "layer {l}: mix has {} values, expected {}",
                flat.len(),
                got_mix.len()
            );
            let orders = case.config.max_ngram - 1;
            for (i, (g, e)) in got_mix.iter().zip(&flat).enumerate() {
                report.expect_eq(g, e, || {
                    let (pos, o) = (i / orders, i % orders);
                    format!(
                        "case {name} layer {l} mix b={} t={} n={}",
                        pos / seq,
                        pos % seq,
                        o + 2
                    )
                });
            }
        }
    }
    Ok(())
}

/// Kinds of vector files, recognised by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorKind {
    /// `engram-hash-v1` JSON.
    Hash,
    /// `engram-forward-v1` JSON index naming its safetensors case files.
    ForwardIndex,
    /// `engram-forward-v1` safetensors.
    Forward,
}

#[derive(Debug, Deserialize)]
struct FormatOnly {
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ForwardIndex {
    cases: Vec<ForwardIndexCase>,
}

#[derive(Debug, Deserialize)]
struct ForwardIndexCase {
    name: String,
    file: String,
    #[serde(default)]
    sha256: Option<String>,
}

/// Checks every case file an `engram-forward-v1` JSON index names (resolved beside it),
/// after checking each file's SHA-256 against the index.
pub fn check_forward_index(path: &Path) -> Result<VectorReport> {
    use sha2::{Digest, Sha256};
    let text = read_regular_string(path, MAX_VECTOR_FILE_BYTES)?;
    let index: ForwardIndex = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an engram-forward-v1 index", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut total = VectorReport::new("values");
    for case in &index.cases {
        let file = dir.join(&case.file);
        let bytes = read_regular(&file, MAX_VECTOR_FILE_BYTES)
            .with_context(|| format!("case {:?}", case.name))?;
        if let Some(want) = &case.sha256 {
            let got: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            ensure!(
                got.eq_ignore_ascii_case(want),
                "case {:?}: {} has SHA-256 {got}, the index says {want}",
                case.name,
                file.display()
            );
        }
        total.merge(crate::vectors_forward::check_forward_file(&file)?);
    }
    Ok(total)
}

/// Recognises a vector file by its first bytes: JSON starts with `{`, safetensors with an
/// 8-byte little-endian header length.
pub fn detect_kind(path: &Path) -> Result<VectorKind> {
    use std::io::Read;
    let mut head = [0u8; 16];
    // A regular file only: opening a FIFO would block, reading a device never ends.
    let (mut f, _) = open_regular(path)?;
    let n = f
        .read(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    let first = head[..n].iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let text = read_regular_string(path, MAX_VECTOR_FILE_BYTES)?;
        let format = serde_json::from_str::<FormatOnly>(&text)
            .ok()
            .and_then(|f| f.format);
        return Ok(match format.as_deref() {
            Some("engram-forward-v1") => VectorKind::ForwardIndex,
            _ => VectorKind::Hash,
        });
    }
    if n >= 9 && head[8] == b'{' {
        return Ok(VectorKind::Forward);
    }
    bail!(
        "{} is neither an engram-hash-v1 JSON file nor an engram-forward-v1 safetensors file",
        path.display()
    )
}
