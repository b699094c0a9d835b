//! `engram vectors FILE...`: recompute every expected field of conformance vector files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args as ClapArgs;

use crate::vectors::{HashCheckOptions, VectorKind, VectorReport, check_hash_file, detect_kind};
use crate::{EXIT_MISMATCH, json_line};

/// Check conformance vector files.
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "Examples:\n  engram vectors tests/data/conformance/engram-hash-v1.json\n  \
    engram vectors tests/data/conformance/*.json tests/data/conformance/*.safetensors\n\n\
    Prints `vectors: C cases, I indices, all match` and exits 0, or the first mismatches \
    (case, layer, position, head) and exits 1. Unreadable or malformed files, and files \
    with no cases, exit 2."
)]
/// Check conformance vector files (engram-hash-v1 JSON, engram-forward-v1 safetensors).
pub struct Args {
    /// engram-hash-v1 JSON or engram-forward-v1 safetensors files (recognised by content).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Also rebuild named compression tables from this tokenizer.json (when its SHA-256
    /// matches the table's) and compare them with the file's tables.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Checks every file; one merged report per kind of vector (hash indices, forward values).
pub fn check_files(args: &Args) -> Result<Vec<VectorReport>> {
    let options = HashCheckOptions {
        tokenizer: args.tokenizer.clone(),
    };
    let mut totals: Vec<VectorReport> = Vec::new();
    for path in &args.files {
        let report = match detect_kind(path)? {
            VectorKind::Hash => check_hash_file(path, &options)?,
            VectorKind::ForwardIndex => crate::vectors::check_forward_index(path)?,
            VectorKind::Forward => crate::vectors_forward::check_forward_file(path)?,
        };
        // "all match" over nothing would be a pass that tested nothing.
        anyhow::ensure!(
            report.cases > 0 && report.checked > 0,
            "{}: {} cases, {} {} compared: the file checks nothing",
            path.display(),
            report.cases,
            report.checked,
            report.unit
        );
        match totals.iter_mut().find(|t| t.unit == report.unit) {
            Some(t) => t.merge(report),
            None => totals.push(report),
        }
    }
    Ok(totals)
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let reports = check_files(&args)?;
    let mut all_match = true;
    for report in &reports {
        all_match &= report.mismatch_count == 0;
        print_report(report, args.json);
    }
    Ok(if all_match {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_MISMATCH)
    })
}

fn print_report(report: &VectorReport, json: bool) {
    if json {
        json_line(
            "vectors",
            &serde_json::json!({
                "cases": report.cases,
                "checked": report.checked,
                "unit": report.unit,
                "mismatch_count": report.mismatch_count,
                "mismatches": report.mismatches,
            }),
        );
    } else {
        for m in &report.mismatches {
            crate::outln!("mismatch: {m}");
        }
        if report.mismatch_count > report.mismatches.len() as u64 {
            crate::outln!(
                "... and {} more mismatches",
                report.mismatch_count - report.mismatches.len() as u64
            );
        }
        crate::outln!("{}", report.summary());
    }
}
