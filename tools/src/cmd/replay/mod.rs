//! `engram replay TABLE --text FILE...`: a trace-driven decode simulator on the real store.
//!
//! Held-out text goes through the table's tokenizer, compression and hashing into the row
//! ids a decoder would look up, B sequences at a time; each decode step takes a modelled
//! compute time, and the rows of the token sampled at the end of a step are needed a
//! modelled lead time into the next one. The reads are real: the store's cache, I/O
//! workers and device. What is measured is how long each Engram layer waits for its rows
//! beyond its deadline (the stall), and what that costs against a table resident in DRAM.
//! With `--prefill TOKENS` it replays prompts as chunked prefill instead (`prefill.rs`);
//! with `--fio-baseline` it measures the disk with fio in the same run and reports the
//! floor next to every slowdown (`floor.rs`). The decode loop is in `decode.rs`.

mod decode;
mod floor;
mod prefill;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Args as ClapArgs;
use engram_files::tokenizer;
use engram_kernels::CompressionTable;
use engram_kernels::hash::{HashOptions, NgramHasher};
use engram_store::candidates::{CANDIDATES_FILE, MAX_CANDIDATES_K};
use engram_store::records::RECORDS_FILE;
use engram_store::size::parse_bytes;
use engram_store::{Candidates, Profile, Store, StoreOptions, Table};
use rayon::prelude::*;

use crate::build::PROFILE_FILE;
use crate::json_line;
use engram_corpus::corpus::{self, CorpusOptions};

/// DeepSeek-V4-Flash decoder layers (NVIDIA NeMo AutoModel and Vultr model pages).
pub const V4_FLASH_LAYERS: u64 = 43;
/// Default step at batch 1: 1 / 210 tokens/s, V4-Flash single-stream decode with vLLM on
/// 2x RTX Pro 6000 (ovidiudan.com, 2026-06-20).
pub const DEFAULT_STEP_US_SINGLE: u64 = 4_760;
/// Default step above batch 1: 20 ms mean inter-token latency at 32 concurrent requests,
/// V4-Flash on SGLang with EAGLE on HGX B200 (lambda.ai DeepSeek-V4-Flash page).
pub const DEFAULT_STEP_US_BATCHED: u64 = 20_000;
/// The replay thread sleeps until this close to a deadline, then spins (sleep overshoots
/// by tens of microseconds).
const SPIN_US: u64 = 200;
/// Largest batch (sequences decoded together).
pub const MAX_BATCH: usize = 4096;
/// Longest modelled step (10 s).
pub const MAX_STEP_US: u64 = 10_000_000;
/// Largest held-out stream, in tokens.
pub const MAX_STREAM_TOKENS: usize = 1 << 28;

/// Replay held-out text as decode traffic against a table.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    engram replay /data/v41 --text ~/.local/lib/python3.12/site-packages/numpy --include '**/*.py' \\\n    \
      --batch 1 --cache-bytes 10% --speculate 4 --json\n  \
    engram replay /data/v41 --text held-out.txt --batch 32 --step-us 20000 --cache-bytes 2G\n  \
    engram replay /data/v41 --text ./repo --include '**/*.py' --prefill 32768 --chunk 16384 \\\n    \
      --cache-bytes 10% --fio-baseline --json\n\n\
    The model: each decode step takes --step-us of compute; a token is sampled at the end of \
    a step; Engram layer j (the table's layer ids) needs that token's rows at \
    lead + (j - first layer id) x step / --model-layers into the next step, where lead is \
    --lead-us. Stall is how long a layer waits for its rows beyond that; it delays the rest \
    of the step. slowdown = sum of stalls / (steps x step): the tokens/s lost against the \
    same run with the table resident in DRAM, where every row is ready by its deadline \
    (a DRAM gather of a step's rows takes microseconds).\n\n\
    Defaults, from published DeepSeek-V4-Flash decode figures: 43 layers (NVIDIA NeMo \
    AutoModel and Vultr model pages); step 4,760 us at batch 1 (210 tokens/s single \
    stream, vLLM on 2x RTX Pro 6000, ovidiudan.com 2026-06-20) and 20,000 us above it \
    (20 ms mean inter-token latency at 32 concurrent requests, SGLang + EAGLE on HGX B200, \
    lambda.ai); lead = step x (first Engram layer id) / 43, i.e. 111 us for layer 1 at \
    batch 1: one layer of compute between sampling a token and its first Engram layer.\n\n\
    Time: real. I/O is the store's real reads on this device; compute is simulated by \
    sleeping (then spinning the last 200 us) until each deadline on the replay thread, so \
    a run takes steps x (step + stall) of wall time. Time is not compressed: that would \
    raise the IOPS the device must deliver. `late_us` reports how late the replay thread \
    reached its deadlines (its own fidelity).\n\n\
    Sequences: the held-out documents (files, in path order) form one stream, cut into \
    --batch equal slices decoded side by side; each document starts a fresh n-gram history. \
    Each step prefetches the B tokens' rows per layer as one batch: the first Engram \
    layer's when the token is sampled, each later layer's once the layer before it has its \
    rows (--prefetch-at-once: all at sampling); with --speculate K, the \
    rows of the K next tokens that the table's candidates.bin ranks most likely are read \
    into the cache at low priority one step ahead (cancelled when the next step starts); \
    --predictor mtp:P models an MTP head instead of (or before) the table's candidates.\n\n\
    Misses: cold_miss_share counts first touches of rows the cache did not hold (no policy \
    avoids them at this size and seeding), compulsory_miss_floor those of rows the profile \
    never saw (no cache avoids them); cold_steps_by_layer is the share of steps in which a \
    layer needs such a row: with a device read slower than the layer's lead, each stalls.\n\n\
    Prefill (--prefill TOKENS): each prompt is cut into --chunk chunks; a chunk's rows (every \
    position, every Engram layer) are hashed, deduplicated per layer and requested as one \
    ticket per layer, read at the store's full --queue-depth; chunk k+1's are requested when \
    chunk k starts computing (--no-pipeline: when it starts itself). A chunk computes for \
    tokens / --prefill-rate; Engram layer j needs its rows (layer id / --model-layers) of the \
    way in. TTFT ends with the last chunk; the resident run is the compute alone. Default \
    rate 73,700 tokens/s: DeepSeek-V3/R1 inference system overview (DeepSeek Open Infra, \
    2025-03-01), input tokens/s per H800 node during prefill; no V4.1 prefill figure is \
    published. Default chunk 16,384: the V4.1 prefill chunk of real traffic in \
    ENGRAM-SPEC.md section 16. JSON: `prefill` carries ttft_us, ttft_resident_us, \
    device_reads (the store's counter over the prefill), the unique-row shares per order \
    and `chunks` (tokens, unique rows and misses per layer, compute, stall, read times), so \
    the floor can be recomputed from any fio figure.\n\n\
    Floor (--fio-baseline): decode: the larger of (share of steps with a cold row x how far \
    the mean time fio takes to complete a burst of the first layer's reads after the \
    step's idle time (fio's latency with the submission included, the store's clock) \
    exceeds each layer's deadline) and (a step's reads at fio's \
    IOPS, layer by layer, less the deadlines); prefill: the chunks' misses (x the run's \
    device reads per miss) read at fio's IOPS at the same queue depth in request order, the \
    TTFT this gives less the resident one. Both are what an I/O path with no overhead would lose on this disk; \
    measured_over_floor is the measured slowdown over it.")]
pub struct Args {
    /// Table directory (on the SSD tier: the reads go through the backend's device path).
    pub table: PathBuf,
    /// Held-out text: files or directories (recursive), not part of the build corpus.
    #[arg(long, required = true, num_args = 1..)]
    pub text: Vec<PathBuf>,
    /// Only files matching these globs (repeatable).
    #[arg(long)]
    pub include: Vec<String>,
    /// Skip files and directories matching these globs (repeatable).
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Sequences decoded together (1..=4096).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Compute per decode step in microseconds [default: 4760 at batch 1, else 20000].
    #[arg(long)]
    pub step_us: Option<u64>,
    /// Compute between a token being sampled and its first Engram layer, in microseconds
    /// [default: step x first Engram layer id / --model-layers].
    #[arg(long)]
    pub lead_us: Option<u64>,
    /// Decoder layers the step's compute is spread over (places the later Engram layers).
    #[arg(long, default_value_t = V4_FLASH_LAYERS)]
    pub model_layers: u64,
    /// Hot-row cache: bytes (512M, 2G) or a share of the table's row bytes (10%).
    #[arg(long, default_value = "0")]
    pub cache_bytes: String,
    /// Seed the cache from this profile [default: TABLE/profile.bin when present].
    #[arg(long, conflicts_with = "no_profile")]
    pub profile: Option<PathBuf>,
    /// Do not seed the cache (the compulsory-miss floor then counts every first touch).
    #[arg(long)]
    pub no_profile: bool,
    /// Read cache misses that share an n-gram record from TABLE/records.bin (one read
    /// instead of several); without it the records are not used even when present.
    #[arg(long)]
    pub records: bool,
    /// Prefetch the rows of the K most likely next tokens one step ahead (0: off; needs
    /// TABLE/candidates.bin unless --predictor is mtp).
    #[arg(long, default_value_t = 0)]
    pub speculate: usize,
    /// Who names the next tokens for --speculate: `table` (TABLE/candidates.bin) or
    /// `mtp:P`, a modelled multi-token-prediction head whose first guess is the true next
    /// token with probability P (seeded per position), the other K - 1 places from the
    /// table's candidates when present. DeepSeek-V3 reports 85-90% acceptance of its MTP
    /// head's second-token prediction (technical report, section 5.4.3).
    #[arg(long, default_value = "table")]
    pub predictor: String,
    /// Request every Engram layer's rows when the token is sampled. Default: a later
    /// Engram layer's rows are requested once the earlier layer's rows are in (or its
    /// deadline passed), so the later layer's reads never queue in the device ahead of
    /// the earlier layer's, whose lead is the shortest (on a disk whose latency grows with
    /// the reads in flight, a burst of both layers' reads takes about twice one layer's).
    #[arg(long, conflicts_with = "prefill")]
    pub prefetch_at_once: bool,
    /// Sleep while a layer waits for its rows. Default: poll, as a decode loop's host
    /// thread spins on its inputs (the replay already spins out the last 200 us before
    /// each deadline); sleeping adds a thread wake-up (tens of microseconds on a VM) to
    /// every stall.
    #[arg(long, conflicts_with = "prefill")]
    pub sleep_on_rows: bool,
    /// Decode steps to replay (each sequence advances one token per step).
    #[arg(long, default_value_t = 2000)]
    pub max_steps: usize,
    /// I/O worker threads of the store.
    #[arg(long, default_value_t = 2)]
    pub io_workers: usize,
    /// Backend, cache and I/O options of the store being replayed against.
    #[command(flatten)]
    pub read: super::read_args::ReadArgs,
    /// tokenizer.json (default: $ENGRAM_TOKENIZER, then the cached DeepSeek tokenizer); its
    /// SHA-256 must be the table's.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Replay prompts of this many tokens as chunked prefill instead of decode (consecutive
    /// slices of the held-out stream; 1..=4194304).
    #[arg(long, conflicts_with_all = ["step_us", "lead_us", "batch", "max_steps"])]
    pub prefill: Option<usize>,
    /// Prefill chunk in tokens [default: 16384, the V4.1 prefill chunk ENGRAM-SPEC.md
    /// section 16 reports; at most --prefill].
    #[arg(long, requires = "prefill")]
    pub chunk: Option<usize>,
    /// Simulated prefill compute in tokens/s [default: 73700, DeepSeek-V3/R1's published
    /// input throughput per H800 node during prefill; no V4.1 figure is published].
    #[arg(long, requires = "prefill")]
    pub prefill_rate: Option<f64>,
    /// Prompts to prefill one after another (the cache carries over).
    #[arg(long, default_value_t = 1, requires = "prefill")]
    pub prompts: usize,
    /// Request each chunk's rows when it starts instead of while the previous one computes.
    #[arg(long, requires = "prefill")]
    pub no_pipeline: bool,
    /// Run fio (io_uring, O_DIRECT, 4 KiB random reads) on the table's first layer file in
    /// the same run: at --queue-depth before and after the replay, and (decode) in the
    /// replay's burst-after-idle pattern after it; report the floor and measured / floor.
    #[arg(long)]
    pub fio_baseline: bool,
    /// Seconds of each fio run.
    #[arg(long, default_value_t = 5.0, requires = "fio_baseline")]
    pub fio_seconds: f64,
    /// Print one JSON Lines record (`{"type": "replay", "data": ...}`).
    #[arg(long)]
    pub json: bool,
}

/// Seed of the modelled MTP head's hits.
const MTP_SEED: u64 = 0x6d74_705f_6865_6164;

/// Who names the next tokens speculated on.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Predictor {
    /// The table's candidates.bin.
    Table,
    /// A modelled head whose first guess is the true next token with this probability.
    Mtp(f64),
}

impl Predictor {
    fn parse(spec: &str) -> Result<Self> {
        if spec == "table" {
            return Ok(Self::Table);
        }
        let p = spec
            .strip_prefix("mtp:")
            .and_then(|p| p.parse::<f64>().ok())
            .filter(|p| (0.0..=1.0).contains(p))
            .with_context(|| {
                format!("--predictor {spec:?}: expected `table` or `mtp:P` with P in 0..=1")
            })?;
        Ok(Self::Mtp(p))
    }

    fn name(self) -> String {
        match self {
            Self::Table => "table".into(),
            Self::Mtp(p) => format!("mtp:{p}"),
        }
    }
}

/// The held-out stream: canonical and raw ids of every document, back to back.
#[derive(Debug, Default)]
struct Stream {
    raw: Vec<u32>,
    canonical: Vec<i64>,
    /// Whether a position starts a document (a fresh n-gram history).
    doc_start: Vec<bool>,
    documents: usize,
    files: usize,
    skipped: usize,
}

fn load_stream(
    args: &Args,
    tok: &tokenizers::Tokenizer,
    compression: &CompressionTable,
) -> Result<Stream> {
    let options = CorpusOptions {
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        ..CorpusOptions::default()
    };
    let sources = corpus::discover(&args.text, &options)?;
    let per_source: Vec<Result<(Vec<Vec<u32>>, usize)>> = sources
        .par_iter()
        .map(|s| {
            let docs = corpus::read(s, &options);
            let mut out = Vec::with_capacity(docs.texts.len());
            for text in &docs.texts {
                let enc = tok
                    .encode(text.as_str(), false)
                    .map_err(|e| anyhow::anyhow!("tokenizing {s:?}: {e}"))?;
                if !enc.get_ids().is_empty() {
                    out.push(enc.get_ids().to_vec());
                }
            }
            Ok((out, docs.skipped.len()))
        })
        .collect();
    let mut stream = Stream {
        files: sources.len(),
        ..Stream::default()
    };
    for r in per_source {
        let (docs, skipped) = r?;
        stream.skipped += skipped;
        for ids in docs {
            ensure!(
                stream.raw.len() + ids.len() <= MAX_STREAM_TOKENS,
                "the held-out text has more than {MAX_STREAM_TOKENS} tokens (MAX_STREAM_TOKENS)"
            );
            stream.documents += 1;
            for (i, &id) in ids.iter().enumerate() {
                stream.raw.push(id);
                stream.canonical.push(
                    compression
                        .compress_id(i64::from(id))
                        .with_context(|| format!("token id {id} outside the tokenizer"))?,
                );
                stream.doc_start.push(i == 0);
            }
        }
    }
    Ok(stream)
}

/// One bit per row of every layer.
#[derive(Debug)]
struct RowSet {
    // (layers,) each (rows / 64 rounded up,)
    words: Vec<Vec<u64>>,
}

impl RowSet {
    fn new(table: &Table) -> Result<Self> {
        let words = (0..table.n_layers())
            .map(|li| {
                let rows = table.rows(li)?;
                Ok(vec![0u64; usize::try_from(rows.div_ceil(64))?])
            })
            .collect::<Result<_>>()?;
        Ok(Self { words })
    }

    /// Sets the bit of `row`; returns whether it was already set.
    fn insert(&mut self, layer: usize, row: u64) -> bool {
        let (w, bit) = ((row / 64) as usize, 1u64 << (row % 64));
        let word = &mut self.words[layer][w];
        let had = *word & bit != 0;
        *word |= bit;
        had
    }

    fn contains(&self, layer: usize, row: u64) -> bool {
        self.words[layer][(row / 64) as usize] & (1u64 << (row % 64)) != 0
    }
}

/// Sleeps, then spins, until `t`.
fn wait_until(t: Instant) {
    let spin = Duration::from_micros(SPIN_US);
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        let left = t - now;
        if left > spin {
            std::thread::sleep(left - spin);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Mean and quantiles of a sample, in the sample's unit.
pub(crate) fn quantiles(v: &mut [f64]) -> serde_json::Value {
    if v.is_empty() {
        return serde_json::json!({"mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0});
    }
    v.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    serde_json::json!({
        "mean": v.iter().sum::<f64>() / v.len() as f64,
        "p50": at(0.5), "p99": at(0.99), "max": v[v.len() - 1],
    })
}

/// `--cache-bytes`: bytes, or a percentage of the table's row bytes.
fn cache_bytes(spec: &str, table_row_bytes: u64) -> Result<u64> {
    match spec.trim().strip_suffix('%') {
        Some(p) => {
            let pct: f64 = p
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && (0.0..=100.0).contains(v))
                .with_context(|| format!("--cache-bytes {spec:?}: expected 0% to 100%"))?;
            Ok((table_row_bytes as f64 * pct / 100.0) as u64)
        }
        None => Ok(parse_bytes(spec)?),
    }
}

/// The modelled times of one run.
#[derive(Debug, Clone)]
struct Timing {
    step: Duration,
    /// (layers,) deadline of each table layer after the step starts, in table order
    deadlines: Vec<Duration>,
}

fn timing(args: &Args, layer_ids: &[u64]) -> Result<Timing> {
    let step_us = args.step_us.unwrap_or(if args.batch == 1 {
        DEFAULT_STEP_US_SINGLE
    } else {
        DEFAULT_STEP_US_BATCHED
    });
    ensure!(
        (1..=MAX_STEP_US).contains(&step_us),
        "--step-us {step_us}: expected 1..={MAX_STEP_US}"
    );
    let first = layer_ids.iter().copied().min().unwrap_or(0);
    let last = layer_ids.iter().copied().max().unwrap_or(0);
    ensure!(
        args.model_layers > last,
        "--model-layers {} does not reach the table's Engram layer {last}",
        args.model_layers
    );
    let per_layer_us = step_us as f64 / args.model_layers as f64;
    let lead_us = args
        .lead_us
        .unwrap_or((per_layer_us * first as f64).round() as u64);
    let deadlines: Vec<Duration> = layer_ids
        .iter()
        .map(|&id| {
            let us = lead_us as f64 + (id - first) as f64 * per_layer_us;
            Duration::from_nanos((us * 1e3) as u64)
        })
        .collect();
    let step = Duration::from_micros(step_us);
    ensure!(
        deadlines.iter().all(|d| *d < step),
        "--lead-us {lead_us}: the Engram layers' deadlines must fall inside the {step_us} us step"
    );
    Ok(Timing { step, deadlines })
}

/// What a run reads before it starts: the table and its addressing, the held-out stream,
/// the profile and the candidates.
struct Inputs {
    table: Arc<Table>,
    compression: CompressionTable,
    hasher: NgramHasher,
    stream: Stream,
    tokenize_secs: f64,
    profile_path: Option<PathBuf>,
    profile: Option<Profile>,
    candidates: Option<Candidates>,
    predictor: Predictor,
}

/// Checks the flags that need no file; returns the parsed `--predictor`.
fn check_args(args: &Args) -> Result<Predictor> {
    ensure!(
        (1..=MAX_BATCH).contains(&args.batch),
        "--batch {}: expected 1..={MAX_BATCH}",
        args.batch
    );
    ensure!(
        args.speculate <= MAX_CANDIDATES_K,
        "--speculate {}: expected 0..={MAX_CANDIDATES_K}",
        args.speculate
    );
    ensure!(args.max_steps > 0, "--max-steps must be at least 1");
    ensure!(
        args.fio_seconds.is_finite() && (0.1..=3600.0).contains(&args.fio_seconds),
        "--fio-seconds {}: expected 0.1..=3600",
        args.fio_seconds
    );
    let predictor = Predictor::parse(&args.predictor)?;
    ensure!(
        predictor == Predictor::Table || args.speculate > 0,
        "--predictor {}: speculation is off; give --speculate K",
        args.predictor
    );
    if args.records {
        let p = args.table.join(RECORDS_FILE);
        ensure!(
            p.exists(),
            "--records: {} has no {RECORDS_FILE} (engram-build --records-bytes writes it)",
            args.table.display()
        );
    }
    Ok(predictor)
}

fn open_inputs(args: &Args, table: Arc<Table>, predictor: Predictor) -> Result<Inputs> {
    let manifest = table.manifest();
    let tok_path = tokenizer::resolve_path(args.tokenizer.as_deref())?;
    let tok = tokenizer::load(&tok_path)?;
    table.check_tokenizer(&tok.sha256)?;
    let compression = CompressionTable::from_tokenizer(&tok.tokenizer)?;
    ensure!(
        compression.compressed_vocab_size() == manifest.compressed_vocab_size,
        "the tokenizer compresses to {} ids, the table was built for {}",
        compression.compressed_vocab_size(),
        manifest.compressed_vocab_size
    );
    let hasher = NgramHasher::new(table.layout(), HashOptions::default())?;
    let t = Instant::now();
    let stream = load_stream(args, &tok.tokenizer, &compression)?;
    ensure!(
        stream.raw.len() >= args.batch,
        "the held-out text has {} tokens, fewer than --batch {}",
        stream.raw.len(),
        args.batch
    );
    let tokenize_secs = t.elapsed().as_secs_f64();
    let profile_path = match (&args.profile, args.no_profile) {
        (_, true) => None,
        (Some(p), false) => Some(p.clone()),
        (None, false) => Some(args.table.join(PROFILE_FILE)).filter(|p| p.exists()),
    };
    let profile = match &profile_path {
        Some(p) => Some(Profile::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let candidates_path = args.table.join(CANDIDATES_FILE);
    let candidates = if args.speculate > 0
        && (predictor == Predictor::Table || candidates_path.exists())
    {
        let p = candidates_path;
        ensure!(
            p.exists(),
            "--speculate {}: {} has no {CANDIDATES_FILE} (engram-build writes it when it counts \
             a corpus, --candidates-bytes)",
            args.speculate,
            args.table.display()
        );
        let c = Candidates::read(&p)?;
        let id = manifest.table_id_u64().unwrap_or(0);
        ensure!(
            c.table_id == 0 || c.table_id == id,
            "{} was built for table_id {:016x}, this table is {id:016x}",
            p.display(),
            c.table_id
        );
        Some(c)
    } else {
        None
    };
    Ok(Inputs {
        table,
        compression,
        hasher,
        stream,
        tokenize_secs,
        profile_path,
        profile,
        candidates,
        predictor,
    })
}

/// The rows every layer's profile lists.
fn profiled_rows(table: &Table, profile: Option<&Profile>) -> Result<RowSet> {
    let mut set = RowSet::new(table)?;
    for l in profile.map(|p| &p.layers[..]).unwrap_or(&[]) {
        if let Ok(li) = table.layout().layer_index(l.layer_id) {
            let rows = table.rows(li)?;
            for &(row, _) in l.entries.iter().filter(|e| e.0 < rows) {
                set.insert(li, row);
            }
        }
    }
    Ok(set)
}

/// The number at JSON pointer `p` of `v`, 0 when absent (for the text reports).
fn number(v: &serde_json::Value, p: &str) -> f64 {
    v.pointer(p)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0)
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let predictor = check_args(&args)?;
    let prefill = prefill::Plan::from_args(&args)?;
    let table = Arc::new(
        Table::open(&args.table).with_context(|| format!("opening {}", args.table.display()))?,
    );
    let layer_ids: Vec<u64> = table.layout().layers.iter().map(|l| l.layer_id).collect();
    let timing = timing(&args, &layer_ids)?;
    let rows_total: u64 = (0..table.n_layers())
        .map(|li| table.rows(li))
        .sum::<Result<_, _>>()?;
    let table_row_bytes = rows_total * table.manifest().row_bytes;
    let cache = cache_bytes(&args.cache_bytes, table_row_bytes)?;
    let inputs = open_inputs(&args, Arc::clone(&table), predictor)?;
    let heads = inputs.hasher.n_hash_heads();
    let opts = StoreOptions {
        backend: args.read.backend_options()?,
        io_workers: args.io_workers.max(1),
        max_batch_rows: (args.batch * heads * args.speculate.max(1))
            .max(prefill.map_or(0, |p| p.max_batch_rows(heads)))
            .max(engram_store::store::DEFAULT_MAX_BATCH_ROWS),
        cache_bytes: cache,
        profile: inputs.profile.clone(),
        records: args.records,
        ..StoreOptions::default()
    };
    let t_open = Instant::now();
    let store = Store::from_table(Arc::clone(&table), &opts)
        .with_context(|| format!("opening the store on {}", args.table.display()))?;
    let open_secs = t_open.elapsed().as_secs_f64();
    let seeded_rows = store.stats().cache_rows;
    store.reset_stats();

    let results = match prefill {
        Some(plan) => serde_json::json!({"prefill": prefill::run(&args, &store, &inputs, plan)?}),
        None => decode::run(&args, &store, &inputs, &timing)?,
    };
    let st = store.stats();
    let manifest = table.manifest();
    let stream = &inputs.stream;
    let mut data = serde_json::json!({
        "table": args.table, "table_id": manifest.table_id, "rows": rows_total,
        "row_bytes": manifest.row_bytes, "table_row_bytes": table_row_bytes,
        "backend": st.backend, "fallback": store.fallback_reason(),
        "text": {
            "files": stream.files, "documents": stream.documents, "skipped": stream.skipped,
            "tokens": stream.raw.len(), "tokenize_seconds": inputs.tokenize_secs,
        },
        "model_layers": args.model_layers,
        "layer_ids": layer_ids,
        "queue_depth": args.read.queue_depth,
        "cache_bytes": cache, "cache_fraction": cache as f64 / table_row_bytes.max(1) as f64,
        "cache_capacity_rows": st.cache_capacity_rows, "seeded_rows": seeded_rows,
        "profile": inputs.profile_path, "records": args.records,
        "open_seconds": open_secs,
    });
    if let (Some(d), serde_json::Value::Object(r)) = (data.as_object_mut(), results) {
        d.extend(r);
    }
    if args.json {
        json_line("replay", &data);
    } else if prefill.is_some() {
        prefill::print_summary(&data);
    } else {
        decode::print_summary(&data);
    }
    Ok(ExitCode::SUCCESS)
}
