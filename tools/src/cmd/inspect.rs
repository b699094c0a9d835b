//! `engram inspect TABLE [--verify] [--json]`: the manifest, file sizes and checksums.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use engram_store::profile::PROFILE_FILE;
use engram_store::records::{RECORDS_FILE, Records};
use engram_store::{Error as StoreError, Profile, Table};

use crate::{EXIT_MISMATCH, json_line};

/// Show a table's manifest, sizes and checksums; with --verify, check every data block, the
/// profile and the n-gram records.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  engram inspect /data/v41-table\n  \
    engram inspect /data/v41-table --verify --json\n\n\
    Exit codes: 0 valid; 1 --verify found a corrupted block, profile or records file; 2 the table does \
    not open (the error names the file and offset; a manifest edited after the table was \
    written fails its manifest_xxh3).")]
/// Show a table's manifest, sizes and checksums (--verify checks every block).
pub struct Args {
    /// Table directory.
    pub table: PathBuf,
    /// Read every data block and check its xxh3 checksum; check profile.bin and
    /// records.bin (every unit's checksum, every record row equal to the table's) if present.
    #[arg(long)]
    pub verify: bool,
    /// Print JSON Lines records (`{"type": ..., "data": ...}`) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Checks the table's `profile.bin`, when there is one: a regular file with a valid
/// checksum and ranking, measured for this table (id, layers, row range). Returns whether
/// it passed (or is absent).
fn verify_profile(table: &Table, json: bool) -> bool {
    let path = table.dir().join(PROFILE_FILE);
    // symlink_metadata: a dangling link or a FIFO named profile.bin is reported, not skipped.
    if std::fs::symlink_metadata(&path).is_err() {
        return true;
    }
    let result = Profile::read(&path).and_then(|p| {
        p.check_table(table.manifest(), &path)?;
        Ok(p)
    });
    match result {
        Ok(p) => {
            let rows: usize = p.layers.iter().map(|l| l.entries.len()).sum();
            if json {
                json_line(
                    "verify_profile",
                    &serde_json::json!({"ok": true, "layers": p.layers.len(), "rows": rows}),
                );
            } else {
                crate::outln!(
                    "verify profile: {} layers, {rows} ranked rows, checksum and table match",
                    p.layers.len()
                );
            }
            true
        }
        Err(e) => {
            if json {
                json_line(
                    "verify_profile",
                    &serde_json::json!({"ok": false, "error": e.to_string()}),
                );
            } else {
                crate::outln!("verify profile: FAILED: {e}");
            }
            false
        }
    }
}

/// What a valid records file holds.
struct RecordsReport {
    layers: usize,
    records: u64,
    rows: u64,
}

/// Opens `path` against `table` (header, directory, index and checksum tables), checks
/// every unit's checksum, and compares every record row with the table's own row: records
/// are copies, so any difference is corruption.
fn check_records(table: &Table, path: &Path) -> Result<RecordsReport> {
    let recs = Records::open(path, table)?;
    let ub = recs.shape.unit_bytes as usize;
    let rb = table.row_bytes();
    let mut unit = vec![0u8; ub];
    let (mut got, mut want) = (vec![0u8; rb], vec![0u8; rb]);
    let mut report = RecordsReport {
        layers: 0,
        records: 0,
        rows: 0,
    };
    for (li, l) in recs.layers.iter().enumerate() {
        let Some(l) = l else { continue };
        report.layers += 1;
        report.records += l.n_records;
        for u in 0..l.data_bytes / ub as u64 {
            let at = l.data_offset + u * ub as u64;
            recs.file
                .read_exact_at(&mut unit, at)
                .with_context(|| format!("reading {} at offset {at}", path.display()))?;
            recs.verify_read(li, at, &unit)?;
            recs.verify_unit_padding(li, u, &unit)?;
        }
        let mut entries: Vec<(u64, (u32, u8))> = l.entries().collect();
        entries.sort_unstable();
        for (row, (rec, pos)) in entries {
            let at = l.data_offset + recs.shape.row_offset(u64::from(rec), u32::from(pos));
            recs.file
                .read_exact_at(&mut got, at)
                .with_context(|| format!("reading {} at offset {at}", path.display()))?;
            table.read_rows_simple(li, &[row], &mut want)?;
            anyhow::ensure!(
                got == want,
                "{} offset {at}: record {rec} of layer {} holds row {row} (head {pos}) with \
                 bytes that differ from the table's",
                path.display(),
                l.layer_id
            );
            report.rows += 1;
        }
    }
    Ok(report)
}

/// Checks the table's `records.bin`, when there is one (see [`check_records`]). Returns
/// whether it passed (or is absent).
fn verify_records(table: &Table, json: bool) -> bool {
    let path = table.dir().join(RECORDS_FILE);
    // symlink_metadata: a dangling link named records.bin is reported, not skipped.
    if std::fs::symlink_metadata(&path).is_err() {
        return true;
    }
    match check_records(table, &path) {
        Ok(r) => {
            if json {
                json_line(
                    "verify_records",
                    &serde_json::json!({"ok": true, "layers": r.layers, "records": r.records, "rows": r.rows}),
                );
            } else {
                crate::outln!(
                    "verify records: {} layers, {} records covering {} rows, checksums and rows match",
                    r.layers,
                    r.records,
                    r.rows
                );
            }
            true
        }
        Err(e) => {
            if json {
                json_line(
                    "verify_records",
                    &serde_json::json!({"ok": false, "error": format!("{e:#}")}),
                );
            } else {
                crate::outln!("verify records: FAILED: {e:#}");
            }
            false
        }
    }
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let table = Table::open(&args.table)
        .with_context(|| format!("opening table {}", args.table.display()))?;
    let m = table.manifest();
    let total_bytes: u64 = m.layers.iter().map(|l| l.file_bytes).sum();
    let total_rows: u64 = m.layers.iter().map(|l| l.rows).sum();
    if args.json {
        json_line(
            "manifest",
            &serde_json::json!({
                "table": crate::json_path(&args.table),
                "manifest": m,
                "total_rows": total_rows,
                "total_file_bytes": total_bytes,
                "layers": (0..table.n_layers()).map(|i| {
                    let lf = table.layer(i).ok();
                    serde_json::json!({
                        "index": i,
                        "path": lf.map(|l| crate::json_path(&l.path)),
                        "n_blocks": lf.map(|l| l.header.n_blocks),
                        "data_bytes": lf.map(|l| l.header.data_bytes),
                    })
                }).collect::<Vec<_>>(),
            }),
        );
    } else {
        crate::outln!("table {}", args.table.display());
        crate::outln!(
            "  format {} v{}, table_id {}, built by {:?} from {:?}",
            m.format,
            m.format_version,
            m.table_id,
            m.build.tool,
            m.build.source
        );
        crate::outln!("  tokenizer sha256 {}", m.tokenizer_sha256);
        crate::outln!(
            "  V' = {}, pad' = {}, orders 2..={}, {} heads/order, base sizes {:?}, layer ids {:?}, seed {}, pad id {}",
            m.compressed_vocab_size,
            m.compressed_pad_id,
            m.config.max_ngram,
            m.config.n_heads,
            m.config.base_sizes,
            m.config.layer_ids,
            m.config.seed,
            m.config.pad_id
        );
        crate::outln!(
            "  rows: {:?} x {} values = {} B; {} rows per {} B unit; checksum block {} B",
            m.row_layout,
            m.dim,
            m.row_bytes,
            m.rows_per_unit,
            m.unit_bytes,
            m.block_bytes
        );
        for (i, l) in m.layers.iter().enumerate() {
            let n_blocks = table.layer(i).map(|f| f.header.n_blocks).unwrap_or(0);
            crate::outln!(
                "  layer {} (index {}): {} rows, {} ({} bytes, {} blocks), header xxh3 {}, checksum table xxh3 {}",
                l.layer_id,
                l.index,
                l.rows,
                l.file,
                l.file_bytes,
                n_blocks,
                l.header_xxh3,
                l.checksums_xxh3
            );
            crate::outln!("    primes {:?}", l.primes);
            crate::outln!("    multipliers {:?}", l.multipliers);
        }
        crate::outln!(
            "  total {} rows, {} bytes ({:.2} GB)",
            total_rows,
            total_bytes,
            total_bytes as f64 / 1e9
        );
    }
    if !args.verify {
        return Ok(ExitCode::SUCCESS);
    }
    let mut bad = false;
    for i in 0..table.n_layers() {
        let layer_id = m.layers[i].layer_id;
        match table.verify_layer(i) {
            Ok(rep) => {
                if args.json {
                    json_line(
                        "verify",
                        &serde_json::json!({"layer_id": layer_id, "ok": true, "blocks": rep.blocks, "bytes": rep.bytes}),
                    );
                } else {
                    crate::outln!(
                        "verify layer {layer_id}: {} blocks, {} bytes, all checksums match",
                        rep.blocks,
                        rep.bytes
                    );
                }
            }
            Err(e @ StoreError::Checksum { .. }) => {
                bad = true;
                if args.json {
                    json_line(
                        "verify",
                        &serde_json::json!({"layer_id": layer_id, "ok": false, "error": e.to_string()}),
                    );
                } else {
                    crate::outln!("verify layer {layer_id}: FAILED: {e}");
                }
            }
            Err(e) => return Err(e).context("verifying"),
        }
    }
    bad |= !verify_profile(&table, args.json);
    bad |= !verify_records(&table, args.json);
    Ok(if bad {
        ExitCode::from(EXIT_MISMATCH)
    } else {
        ExitCode::SUCCESS
    })
}
