//! What `engram-build` reports: the typed summary `--json` prints as its `summary` line,
//! and the same numbers for people.

use engram_corpus::candidates::CandidateSummary;
use engram_corpus::count::CurvePoint;
use serde::Serialize;

use super::fp8_import::StreamSummary;
use super::{Estimate, PROFILE_FILE, human};

/// What one `engram-build` run did.
#[derive(Debug, Clone)]
pub enum BuildOutcome {
    /// `--print-config`: the resolved config was printed; nothing was built.
    PrintedConfig,
    /// `--dry-run`: the sizes a build would produce; nothing was written.
    DryRun(DryRunSummary),
    /// A table was published.
    Built(Box<BuildSummary>),
}

/// `--dry-run`'s summary.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunSummary {
    /// Always `true` (tells the two summaries apart in `--json`).
    pub dry_run: bool,
    /// The table directory that would be published.
    pub out: String,
    /// Sizes, known before any work.
    pub estimate: Estimate,
    /// A checkpoint directory's import: tensors, shards, bytes and a time estimate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import: Option<serde_json::Value>,
}

/// A published build's summary.
#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    /// The table directory.
    pub out: String,
    /// The manifest's table id.
    pub table_id: String,
    /// Rows of every layer.
    pub rows: u64,
    /// Bytes of the layer files.
    pub table_bytes: u64,
    /// Bytes per row.
    pub row_bytes: u64,
    /// Seconds from the first row written to publication.
    pub write_seconds: f64,
    /// The corpus counted (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corpus: Option<CorpusSummary>,
    /// The traffic profile written (absent without a corpus).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileSummary>,
    /// The n-gram records written (`--records-bytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<RecordsSummary>,
    /// A checkpoint directory's streamed import.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportSummary>,
    /// The next-token candidates written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<CandidateSummary>,
    /// Seconds of the whole build.
    pub seconds: f64,
}

/// What the counting pass read.
#[derive(Debug, Clone, Serialize)]
pub struct CorpusSummary {
    /// Sources (files, stdin) read.
    pub sources: u64,
    /// Documents counted.
    pub documents: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Tokens counted.
    pub tokens: u64,
    /// Files or records skipped (each reported as a warning).
    pub skipped: usize,
    /// Seconds of the counting pass.
    pub count_seconds: f64,
    /// Tokens counted per second.
    pub tokens_per_second: f64,
}

/// The profile file and each layer's traffic.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileSummary {
    /// The file name in the table directory.
    pub file: &'static str,
    /// One entry per layer, in table order.
    pub layers: Vec<LayerSummary>,
}

/// One layer's traffic in the corpus.
#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    /// The model's layer id.
    pub layer_id: u64,
    /// Rows of the layer.
    pub rows: u64,
    /// Rows hit at least once.
    pub rows_touched: usize,
    /// Row hits in all.
    pub hits: u64,
    /// Rows whose counter saturated at `u32::MAX`.
    pub saturated_rows: usize,
    /// Share of the hits the hottest rows take, at a few cache sizes.
    pub curve: Vec<CurvePoint>,
}

/// The n-gram records written.
#[derive(Debug, Clone, Serialize)]
pub struct RecordsSummary {
    /// `records.bin`, or `None` when no n-gram recurred enough.
    pub file: Option<&'static str>,
    /// `--records-bytes`.
    pub budget_bytes: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// Records per layer the budget buys.
    pub records_per_layer_budget: u64,
    /// Records written per layer.
    pub records_per_layer: Vec<u64>,
    /// Records written in all layers.
    pub records: u64,
    /// N-grams that recurred in the corpus (the candidates for records).
    pub recurring_ngrams: usize,
    /// `--records-skip-cached` in bytes.
    pub skip_cached_bytes: u64,
    /// Candidates passed over per layer because a seeded cache holds all their rows.
    pub skipped_cached: Vec<u64>,
    /// Seconds choosing the records.
    pub select_seconds: f64,
    /// Seconds writing them.
    pub write_seconds: f64,
}

/// A streamed checkpoint import and its rate.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    /// What the stream did.
    #[serde(flatten)]
    pub stream: StreamSummary,
    /// Table bytes written per second, in MB (10^6 bytes).
    pub mb_per_second: f64,
}

/// Prints `s` for people.
pub(crate) fn print(s: &BuildSummary) {
    crate::outln!(
        "published {} (table {}): {} rows x {} B = {}",
        s.out,
        s.table_id,
        s.rows,
        s.row_bytes,
        human(s.table_bytes)
    );
    if let Some(c) = &s.corpus {
        crate::outln!(
            "corpus: {} files, {} documents, {} tokens, {} skipped; {:.0} tokens/s",
            c.sources,
            c.documents,
            c.tokens,
            c.skipped,
            c.tokens_per_second
        );
    }
    if let Some(p) = &s.profile {
        for l in &p.layers {
            let curve: Vec<String> = l
                .curve
                .iter()
                .map(|p| {
                    format!(
                        "top {}% -> {:.1}%",
                        p.fraction_of_rows * 100.0,
                        p.hit_share * 100.0
                    )
                })
                .collect();
            crate::outln!(
                "layer {}: {} of {} rows touched, {} hits; hit share: {}",
                l.layer_id,
                l.rows_touched,
                l.rows,
                l.hits,
                curve.join(", ")
            );
        }
        crate::outln!("profile: {}", PROFILE_FILE);
    }
    if let Some(r) = &s.records {
        crate::outln!(
            "records: {} ({} records per layer, {} of a {} budget) from {} recurring n-grams",
            r.file.unwrap_or("none"),
            json(&r.records_per_layer),
            human(r.bytes),
            human(r.budget_bytes),
            r.recurring_ngrams
        );
    }
    if let Some(i) = &s.import {
        crate::outln!(
            "import: {} bytes read ({} reads) in {:.1} s, {:.0} MB/s of table written; shards {}",
            i.stream.bytes_read,
            json(&i.stream.read_mode).trim_matches('"'),
            i.stream.seconds,
            i.mb_per_second,
            json(&i.stream.shards)
        );
    }
    if let Some(c) = &s.candidates {
        crate::outln!(
            "candidates: {} of {} contexts x {} next tokens ({}), right for {:.1}% of the corpus's positions",
            c.contexts_kept,
            c.contexts_seen,
            c.k,
            human(c.bytes),
            c.in_sample_hit_share * 100.0
        );
    }
}

/// `v` as compact JSON (how lists print in the summary).
fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
