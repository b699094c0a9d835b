//! `moe-core`: generate text with (or without) Engram memory served from a table, and
//! evaluate validation loss.
//!
//! Exit codes: 0 success; 2 bad input or an error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use engram_files::file::{Limit, read_regular_string};
use engram_store::candidates::CANDIDATES_FILE;
use engram_store::size::parse_bytes;
use engram_store::{BackendKind, Candidates, Profile, RowSource, StoreOptions};
use moe_core::ModelConfig;
use moe_core::config::MAX_POSITIONS;
use moe_core::sampler::SamplerConfig;
use moe_core::session::{EngramRows, EngramSource, PrefillPlan, Session};

/// The committed model, relative to the repository root.
const DEFAULT_MODEL: &str = "models/stdlib-moe-engram-b";
/// Where `scripts/build-table.sh MODEL_DIR` builds a model's table: one directory per model,
/// named as the model's directory, relative to the repository root.
const TABLES_DIR: &str = "target/engram-tables";
/// The file that marks a Mooncake skeleton (`engram_mooncake::SKELETON_MARKER`; that crate
/// is a dependency only with `--features mooncake`).
const SKELETON_MARKER: &str = "mooncake.json";

#[derive(Debug, Parser)]
#[command(
    name = "moe-core",
    version,
    about = "A small DeepSeekMoE + Engram decoder whose Engram rows come from engram-store",
    after_help = "Examples:\n  \
      moe-core generate --prompt 'def fibonacci(n):'\n  \
      moe-core generate --prompt 'import os' --engram-backend uring --cache-bytes 0\n  \
      moe-core generate --prompt 'class Stack:' --no-engram\n  \
      moe-core generate --engram-backend uring --cache-bytes 256K --speculate 4\n  \
      moe-core generate --engram-backend uring --cache-bytes 256K --prefill-chunk 64 --json\n  \
      moe-core generate --prompt-file long.py --prompt-tokens 4096 --context-length 4096 \
      --max-new-tokens 1 --prefill-chunk 512 --json   # timing only: past 256 positions the \
      output is not the model's\n  \
      moe-core generate --model models/stdlib-moe-a\n  \
      moe-core eval $(python3 -c 'import os; print(os.__file__)')"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream a completion of a prompt.
    Generate(GenerateArgs),
    /// Validation loss (nats/token) of files, with and without Engram.
    Eval(EvalArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    Memory,
    Mmap,
    Pread,
    Uring,
    /// Rows from a Mooncake Store cluster (--mooncake; build with --features mooncake).
    Mooncake,
}

#[derive(Debug, Args)]
struct ModelArgs {
    /// Model directory (config.json, vocab.json, model.safetensors).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Engram table directory [default: target/engram-tables/<model directory name>, where
    /// `scripts/build-table.sh MODEL` builds it]. Models without Engram need none.
    #[arg(long)]
    engram: Option<PathBuf>,
    /// Store backend (default: $ENGRAM_IO_BACKEND, else io_uring with fallback to pread).
    /// `mooncake` reads the rows from the cluster --mooncake names, falling back to the
    /// local table with the reason when the cluster cannot serve it.
    #[arg(long, value_enum)]
    engram_backend: Option<Backend>,
    /// Mooncake master, HOST:PORT (with --engram-backend mooncake).
    #[arg(long)]
    mooncake: Option<String>,
    /// Hot-row cache budget: bytes or a size (256K, 64M, 1G; 0 = none), seeded from the
    /// table's profile.bin when present.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    cache_bytes: u64,
    /// Run a model's Engram blocks with their output zeroed, for comparison.
    #[arg(long)]
    no_engram: bool,
    /// Read the rows through the storage service at this socket (`engram serve`); --engram
    /// then names a table the service serves, by its path (or name).
    #[arg(long, conflicts_with_all = ["no_engram", "engram_backend"])]
    service: Option<PathBuf>,
    /// Accept a table whose rows were not imported from this model's engram.safetensors
    /// (experiments only: the output is not the model's).
    #[arg(long)]
    allow_foreign_table: bool,
    /// tokenizer.json (default: $ENGRAM_TOKENIZER, then the cached DeepSeek tokenizer).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long, default_value = "import os\nimport sys\n\n\ndef main():\n")]
    prompt: String,
    /// Read the prompt from this UTF-8 text file (a regular file of at most 16 MiB)
    /// instead of --prompt.
    #[arg(long, conflicts_with = "prompt")]
    prompt_file: Option<PathBuf>,
    /// Run only the prompt's first N tokens (BOS included), for prompts of an exact length;
    /// an error when it has fewer.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    prompt_tokens: Option<u64>,
    /// Let the sequence hold N positions, past the model's trained context
    /// (`max_position_embeddings`: 256 for the committed models), to time long prompts.
    /// FOR TIMING ONLY: RoPE positions past the trained context extrapolate to angles the
    /// model never saw, so the output from there on is not what it learned. The decode
    /// state grows with N (layers x N x hidden keys and values, N^2 attention scores, N x
    /// vocabulary logits: about 225 MiB at 4096 and 580 MiB at 8192 for the committed
    /// models); a context whose state exceeds half the memory available is refused. A
    /// warning on stderr and `context_extended` in --json say when it is in effect.
    #[arg(long, value_parser = parse_context_length)]
    context_length: Option<usize>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature, finite and >= 0; 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches this, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// After each token, read the rows of the K most likely next tokens (by the table's
    /// candidates.bin, written by engram-build) into the cache at low priority, one step
    /// before they can be needed (0: off). The output is unchanged.
    #[arg(long, default_value_t = 0)]
    speculate: usize,
    /// Prefill the prompt in chunks of N positions, each chunk's Engram rows requested
    /// while the chunk before it computes (one request per chunk); 0 runs the prompt in one
    /// pass with every row requested first. The logits are the one pass's (within 1e-5:
    /// larger chunks go through the packed GEMM).
    #[arg(long, default_value_t = 0)]
    prefill_chunk: usize,
    /// With --prefill-chunk: request each chunk's rows when it starts (no overlap with the
    /// chunk before), for comparison.
    #[arg(long, requires = "prefill_chunk")]
    no_prefill_pipeline: bool,
    /// One JSON summary instead of streamed text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text files; each becomes BOS + its tokens, concatenated in order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Window length, as in training.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    #[arg(long)]
    json: bool,
}

/// `--context-length`: 1..=MAX_POSITIONS (the model's trained context is checked once it
/// loads).
fn parse_context_length(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number of positions: {e}"))?;
    if !(1..=MAX_POSITIONS).contains(&n) {
        return Err(format!(
            "{n} positions: expected 1..={MAX_POSITIONS} (MAX_POSITIONS: the attention scores \
             of a full context are positions^2 floats)"
        ));
    }
    Ok(n)
}

/// Largest `--prompt-file`: far above any context (MAX_POSITIONS tokens are ~300 KB of
/// code), small enough to tokenize at once.
const MAX_PROMPT_FILE_BYTES: Limit = Limit {
    what: "prompt file",
    name: "MAX_PROMPT_FILE_BYTES",
    bytes: 16 << 20,
};

/// The prompt's raw ids (BOS first), cut to `--prompt-tokens`, and the text they hold;
/// an error naming `--context-length` when they do not fit the session's context.
fn prompt_ids(s: &Session, a: &GenerateArgs, text: String) -> Result<(Vec<u32>, String)> {
    let mut raw = s.encode(&text)?;
    let mut text = text;
    if let Some(n) = a.prompt_tokens {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        anyhow::ensure!(
            raw.len() >= n,
            "--prompt-tokens {n}: the prompt has only {} tokens (BOS included)",
            raw.len()
        );
        if raw.len() > n {
            raw.truncate(n);
            text = s
                .tokenizer
                .decode(&raw[1..], false)
                .map_err(|e| anyhow::anyhow!("decoding the first {n} prompt tokens: {e}"))?;
        }
    }
    let (context, trained) = (s.model.context(), s.model.config.max_position_embeddings);
    if raw.len() > context {
        // The prompt, then a position for every new token but the last.
        let needed = (raw.len() + a.max_new_tokens.saturating_sub(1)).min(MAX_POSITIONS);
        let how = if a.context_length.is_some() {
            format!("raise --context-length {context} to at least {needed}")
        } else {
            format!(
                "pass --context-length {needed} (the prompt and --max-new-tokens) to run it \
                 past the trained context for timing: RoPE extrapolates there, so the output \
                 is not what the model learned"
            )
        };
        anyhow::bail!(
            "the prompt is {} tokens (BOS included), above the context of {context} positions \
             (trained: {trained}): {how}; or cut it with --prompt-tokens N",
            raw.len()
        );
    }
    Ok((raw, text))
}

/// `--cache-bytes`: the size syntax every engram command accepts.
fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s).map_err(|e| e.to_string())
}

/// `print!` through [`out`].
macro_rules! out {
    ($($arg:tt)*) => { out(format_args!($($arg)*)) };
}

/// `println!` through [`out`].
macro_rules! outln {
    () => { out(format_args!("\n")) };
    ($($arg:tt)*) => {{
        out(format_args!($($arg)*));
        out(format_args!("\n"));
    }};
}

fn store_options(a: &ModelArgs, table: &Path) -> Result<StoreOptions> {
    let mut o = StoreOptions::default();
    o.backend.kind = a.engram_backend.and_then(|b| match b {
        Backend::Memory => Some(BackendKind::Memory),
        Backend::Mmap => Some(BackendKind::Mmap),
        Backend::Pread => Some(BackendKind::Pread),
        Backend::Uring => Some(BackendKind::Uring),
        // The local fallback chooses as auto does.
        Backend::Mooncake => None,
    });
    o.cache_bytes = a.cache_bytes;
    let profile = table.join(engram_store::profile::PROFILE_FILE);
    if a.cache_bytes > 0 && profile.exists() {
        o.profile = Some(Profile::read(&profile)?);
    }
    Ok(o)
}

/// What a run does with the model's Engram blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EngramUse {
    /// Rows served from the table.
    On,
    /// The model has Engram blocks; their output is zeroed (`--no-engram`).
    Zeroed,
    /// The model has no Engram blocks.
    Absent,
}

impl EngramUse {
    fn label(self) -> &'static str {
        match self {
            EngramUse::On => "with Engram",
            EngramUse::Zeroed => "Engram zeroed",
            EngramUse::Absent => "no Engram (the model has none)",
        }
    }

    fn name(self) -> &'static str {
        match self {
            EngramUse::On => "on",
            EngramUse::Zeroed => "zeroed",
            EngramUse::Absent => "absent",
        }
    }
}

/// The model's table: `--engram`, else `target/engram-tables/<model directory name>`.
fn table_dir(a: &ModelArgs) -> Result<PathBuf> {
    if let Some(t) = &a.engram {
        return Ok(t.clone());
    }
    let name = match a.model.file_name() {
        Some(n) => n.to_owned(),
        None => std::fs::canonicalize(&a.model)
            .with_context(|| format!("resolving {}", a.model.display()))?
            .file_name()
            .map(ToOwned::to_owned)
            .with_context(|| format!("{} has no directory name", a.model.display()))?,
    };
    Ok(Path::new(TABLES_DIR).join(name))
}

/// How the model's Engram blocks run: from its table (found by default, or an error that
/// gives the command that builds it), zeroed, or not at all for a model without Engram.
fn engram_plan(a: &ModelArgs) -> Result<(EngramUse, Option<EngramSource>)> {
    let config = ModelConfig::load(&a.model.join("config.json"))
        .with_context(|| format!("loading {}", a.model.display()))?;
    if config.engram.is_none() {
        if let Some(t) = &a.engram {
            anyhow::bail!(
                "{} has no Engram layers: it needs no table (drop --engram {})",
                a.model.display(),
                t.display()
            );
        }
        return Ok((EngramUse::Absent, None));
    }
    if a.no_engram {
        return Ok((EngramUse::Zeroed, None));
    }
    let table = table_dir(a)?;
    if !table.join("manifest.json").exists() {
        anyhow::bail!(
            "no Engram table at {table}: build it with `scripts/build-table.sh {model}` (from the \
             repository root; it runs engram-build --import {model}/engram.safetensors --out \
             {table} with the training corpus as the profile), pass --engram DIR, or run with \
             the Engram output zeroed (--no-engram)",
            table = table.display(),
            model = a.model.display(),
        );
    }
    if table.join(SKELETON_MARKER).exists() && !matches!(a.engram_backend, Some(Backend::Mooncake))
    {
        anyhow::bail!(
            "{} is a Mooncake skeleton ({SKELETON_MARKER}): its rows live only on the cluster; \
             read it with --engram-backend mooncake --mooncake HOST:PORT, or pass --engram with \
             a full copy of the table",
            table.display()
        );
    }
    let options = store_options(a, &table)?;
    Ok((
        EngramUse::On,
        Some(EngramSource {
            table,
            options,
            allow_foreign_table: a.allow_foreign_table,
        }),
    ))
}

/// Errors, naming the directory, when the model directory does not exist (before any file
/// in it is looked for).
fn check_model_dir(model: &Path) -> Result<()> {
    if model.is_dir() {
        return Ok(());
    }
    let relative = if model == Path::new(DEFAULT_MODEL) {
        " (the default, relative to the repository root: run moe-core from there, or pass --model DIR)"
    } else {
        ""
    };
    anyhow::bail!(
        "the model directory {} does not exist{relative}; the committed models are in the repository's models/",
        model.display()
    )
}

fn open(a: &ModelArgs) -> Result<(Session, EngramUse)> {
    check_model_dir(&a.model)?;
    if let Some(socket) = &a.service {
        return Ok((open_service(a, socket)?, EngramUse::On));
    }
    let (using, source) = engram_plan(a)?;
    if let (Some(src), Some(Backend::Mooncake)) = (&source, a.engram_backend) {
        return Ok((open_mooncake(a, src)?, using));
    }
    if a.mooncake.is_some() {
        anyhow::bail!("--mooncake is used with --engram-backend mooncake");
    }
    let s = Session::load(&a.model, a.tokenizer.as_deref(), source.as_ref())
        .with_context(|| format!("loading {}", a.model.display()))?;
    Ok((s, using))
}

#[cfg(feature = "mooncake")]
fn open_mooncake(a: &ModelArgs, src: &EngramSource) -> Result<Session> {
    let master = a
        .mooncake
        .as_deref()
        .context("--engram-backend mooncake needs --mooncake HOST:PORT (the master)")?;
    let config = engram_mooncake::ClientConfig::new(master)?;
    // A fallback to the local table is logged with its reason by engram-mooncake.
    let opened = engram_mooncake::open_store(&src.table, &src.options, &config)
        .with_context(|| format!("opening {} on Mooncake", src.table.display()))?;
    Session::load_with_store(&a.model, a.tokenizer.as_deref(), src, opened.store)
        .with_context(|| format!("loading {}", a.model.display()))
}

/// Turns on speculative prefetch of `k` candidates from the table's candidate file.
fn enable_speculation(s: &mut Session, a: &ModelArgs, k: usize) -> Result<()> {
    if s.memory.is_none() {
        anyhow::bail!("--speculate needs the model's Engram table (drop --no-engram)");
    }
    // The table's directory: read in place, also when a service serves it on this host.
    let table = table_dir(a)?;
    let path = table.join(CANDIDATES_FILE);
    if !path.exists() {
        anyhow::bail!(
            "--speculate {k}: the table {} has no {CANDIDATES_FILE}; rebuild it with engram-build \
             over a corpus (--candidates-bytes, on by default)",
            table.display()
        );
    }
    let candidates = Candidates::read(&path)?;
    s.enable_speculation(candidates, k)
        .with_context(|| format!("speculating from {}", path.display()))?;
    Ok(())
}

#[cfg(not(feature = "mooncake"))]
fn open_mooncake(_a: &ModelArgs, _src: &EngramSource) -> Result<Session> {
    anyhow::bail!(
        "moe-core was built without Mooncake: rebuild it with `scripts/install.sh --mooncake` \
         (cargo: `--features mooncake`)"
    )
}

/// A session whose rows come from the storage service at `socket`, which serves the
/// model's table (`--engram`, or the default table path, names it).
fn open_service(a: &ModelArgs, socket: &Path) -> Result<Session> {
    let table = table_dir(a)?;
    let target = engram_client::ServiceAddress {
        socket: socket.to_path_buf(),
        table: Some(table.display().to_string()),
    };
    let remote =
        engram_client::RemoteStore::open(&target, &engram_client::ClientOptions::default())
            .with_context(|| format!("attaching to the service at {}", socket.display()))?;
    // The table's counters count from here, so the totals printed at the end are this
    // run's, not the server's since it started.
    remote.reset_stats()?;
    let rows = EngramRows {
        table: &table,
        rows: std::sync::Arc::new(remote),
        allow_foreign_table: a.allow_foreign_table,
    };
    Session::load_with_rows(&a.model, a.tokenizer.as_deref(), Some(rows))
        .with_context(|| format!("loading {}", a.model.display()))
}

fn generate(a: GenerateArgs) -> Result<()> {
    let sampler = SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    // Bad flags and prompt files fail before the model loads.
    sampler.validate()?;
    let prompt = match &a.prompt_file {
        Some(path) => read_regular_string(path, MAX_PROMPT_FILE_BYTES)?,
        None => a.prompt.clone(),
    };
    let (mut s, using) = open(&a.model)?;
    let extension = match a.context_length {
        Some(n) => {
            let e = s
                .extend_context(n)
                .with_context(|| format!("--context-length {n}"))?;
            if e.extended() {
                eprintln!("moe-core: {}", e.warning());
            }
            Some(e)
        }
        None => None,
    };
    let (raw, prompt) = prompt_ids(&s, &a, prompt)?;
    s.set_prefill_plan(PrefillPlan {
        chunk: a.prefill_chunk,
        pipeline: !a.no_prefill_pipeline,
    });
    if a.speculate > 0 {
        enable_speculation(&mut s, &a.model, a.speculate)?;
    }
    if !a.json {
        out!("{prompt}");
    }
    let mut text = String::new();
    let stats = s.generate_ids(&raw, a.max_new_tokens, sampler, |piece| {
        text.push_str(piece);
        if !a.json {
            out!("{piece}");
        }
    })?;
    let decode_tps =
        stats.new_tokens.saturating_sub(1) as f64 / stats.decode.as_secs_f64().max(1e-9);
    let store = s.memory.as_ref().and_then(|m| m.store().stats().ok());
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"type": "generate", "data": {
                "prompt": prompt, "completion": text,
                "prompt_file": a.prompt_file.as_ref().map(|p| p.display().to_string()),
                "context_length": s.model.context(),
                "trained_context": s.model.config.max_position_embeddings,
                "context_extended": extension.is_some_and(|e| e.extended()), "ids": stats.ids, "raw_ids": stats.raw_ids,
                "prompt_tokens": stats.prompt_tokens, "new_tokens": stats.new_tokens,
                "prefill_seconds": stats.prefill.as_secs_f64(),
                "prefill_tokens_per_second": stats.prompt_tokens as f64 / stats.prefill.as_secs_f64().max(1e-9),
                "time_to_first_token_seconds": stats.time_to_first_token.as_secs_f64(),
                "prefill_chunk": a.prefill_chunk,
                "prefill_pipeline": a.prefill_chunk > 0 && !a.no_prefill_pipeline,
                "prefill_stall_seconds": stats.prefill_stall.as_secs_f64(),
                "decode_tokens_per_second": decode_tps,
                "engram": using == EngramUse::On,
                "engram_use": using.name(),
                "stall_seconds": stats.stall.stall.as_secs_f64(),
                "stall_us_per_token": stats.stall.stall.as_secs_f64() * 1e6 / stats.new_tokens.max(1) as f64,
                "store": store.as_ref().map(|st| serde_json::json!({
                    "backend": st.backend, "rows_requested": st.rows_requested,
                    "rows_read": st.rows_unique, "cache_hit_rate": st.cache_hit_rate,
                    "device_bytes": st.device_bytes, "device_reads": st.device_reads,
                    "record_reads": st.record_reads, "record_rows": st.record_rows,
                    "speculative_rows_read": st.spec_rows_read,
                    "speculations_dropped": st.spec_dropped,
                })),
                "speculation": stats.speculation.map(|sp| serde_json::json!({
                    "k": a.speculate, "positions": sp.positions, "predicted": sp.predicted,
                    "hits": sp.hits,
                    "accuracy": sp.hits as f64 / sp.positions.max(1) as f64,
                    "rows_offered": sp.rows_offered,
                })),
            }})
        );
    } else {
        outln!();
        eprintln!(
            "\n{} prompt tokens, {} new; prefill {:.1} ms, first token {:.1} ms, decode {:.1} tokens/s",
            stats.prompt_tokens,
            stats.new_tokens,
            stats.prefill.as_secs_f64() * 1e3,
            stats.time_to_first_token.as_secs_f64() * 1e3,
            decode_tps
        );
        let stall_us = stats.stall.stall.as_secs_f64() * 1e6 / stats.new_tokens.max(1) as f64;
        match (&store, &a.model.service) {
            (Some(st), Some(socket)) => eprintln!(
                "engram: through the service at {}: this client requested {} rows in {} batches, \
                 stall {stall_us:.1} us/token; the table's server-side counters over this run \
                 (all clients): {} rows read, cache hit rate {:.1}%",
                socket.display(),
                st.rows_requested,
                st.batches,
                st.rows_unique,
                st.cache_hit_rate * 100.0,
            ),
            (Some(st), None) => eprintln!(
                "engram: {} backend, {} rows requested, {} read, cache hit rate {:.1}%, stall {stall_us:.1} us/token",
                st.backend,
                st.rows_requested,
                st.rows_unique,
                st.cache_hit_rate * 100.0,
            ),
            (None, _) => eprintln!("engram: {}", using.label()),
        }
        if let (Some(sp), Some(st)) = (&stats.speculation, &store) {
            eprintln!(
                "speculation: next token among the {} candidates {:.1}% of the time; {} rows offered, {} read ahead",
                a.speculate,
                sp.hits as f64 * 100.0 / sp.positions.max(1) as f64,
                sp.rows_offered,
                st.spec_rows_read
            );
        }
    }
    Ok(())
}

/// Largest text file `eval` reads (each is tokenized whole).
const MAX_EVAL_FILE_BYTES: Limit = Limit {
    what: "eval text file",
    name: "MAX_EVAL_FILE_BYTES",
    bytes: 1 << 30,
};

fn stream_of(s: &Session, files: &[PathBuf]) -> Result<Vec<u32>> {
    let mut stream = Vec::new();
    for f in files {
        let text = read_regular_string(f, MAX_EVAL_FILE_BYTES)?;
        stream.extend(s.encode(&text)?);
    }
    Ok(stream)
}

fn eval(a: EvalArgs) -> Result<()> {
    let mut results = Vec::new();
    let (first, using) = open(&a.model)?;
    // A model with Engram is measured with its rows and with them zeroed; one without, once.
    let mut runs = vec![(first, using)];
    if using == EngramUse::On {
        let zeroed = Session::load(&a.model.model, a.model.tokenizer.as_deref(), None)
            .with_context(|| format!("loading {}", a.model.model.display()))?;
        runs.push((zeroed, EngramUse::Zeroed));
    }
    for (mut s, using) in runs {
        let stream = stream_of(&s, &a.files)?;
        let (nats, n) = s.loss(&stream, a.seq_len)?;
        anyhow::ensure!(
            n > 0,
            "the files hold fewer than seq_len + 1 = {} tokens",
            a.seq_len + 1
        );
        results.push((using, nats / n as f64, n));
    }
    for (using, loss, n) in &results {
        if a.json {
            outln!(
                "{}",
                serde_json::json!({"type": "eval", "data": {
                    "engram": *using == EngramUse::On, "engram_use": using.name(),
                    "loss_nats_per_token": loss, "tokens": n, "seq_len": a.seq_len}})
            );
        } else {
            outln!(
                "{:<31}: {loss:.4} nats/token over {n} tokens",
                using.label()
            );
        }
    }
    Ok(())
}

/// Writes to stdout and flushes; a closed pipe (`moe-core generate | head`) ends the
/// process quietly with status 0, any other write error with a message and status 2.
fn out(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(2);
    }
}

fn main() -> ExitCode {
    let _ = engram_oom::install("moe-core");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: no escape codes in logs written to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Eval(a) => eval(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
