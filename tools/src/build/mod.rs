//! `engram-build`: corpus (or checkpoint) -> published table + traffic profile.
//!
//! Phases: resolve config -> load tokenizer and compression table -> (dry run stops here)
//! -> discover inputs -> count row hits (read, tokenize in parallel, compress, hash, count)
//! -> rank the profile, choose the next-token candidates -> stream rows through
//! `engram-store`'s writer, add the profile and the candidates to the table directory ->
//! publish them all at once (atomic; `engram_store::publish`).

pub mod config;
pub mod fp8_import;
pub mod records;
pub mod report;
pub mod seq_read;
pub mod summary;
pub mod values;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use engram_files::tokenizer;
use engram_kernels::hash::{HashOptions, NgramHasher};
use engram_kernels::{CompressionTable, EngramLayout};
use engram_store::candidates::CANDIDATES_FILE;
use engram_store::format::{BuildInfo, LayerHeader, Manifest};
use engram_store::profile::{LayerProfile, Profile};
use engram_store::records::RecordShape;
use engram_store::table::TableWriter;

use config::{BuildPlan, FileConfig, Init};
use engram_corpus::candidates::CandidateSummary;
use report::{Mode, Phase};
pub use summary::{
    BuildOutcome, BuildSummary, CorpusSummary, DryRunSummary, ImportSummary, LayerSummary,
    ProfileSummary, RecordsSummary,
};

use crate::addressing::AddressingArgs;
use crate::json_line;

/// File name of the traffic profile inside a table directory.
use engram_corpus::{candidates, corpus, count};
pub use engram_store::profile::PROFILE_FILE;

/// Free space required beyond the table's own size (temporary files, the profile, and room
/// for the rest of the system) before a build starts.
pub const FREE_SPACE_HEADROOM_BYTES: u64 = 64 << 20;

/// `engram-build` flags. Every addressing and row flag can also come from `--config`.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Corpus inputs: files, directories (recursive), `.jsonl` files, or `-` for stdin.
    pub paths: Vec<PathBuf>,
    /// Table directory to publish (required except with --print-config).
    // Empty when not given (clap's PathBuf parser would refuse the empty default): `run`
    // requires it after --print-config has had its chance.
    #[arg(
        long,
        short,
        default_value_os = "",
        hide_default_value = true,
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    pub out: PathBuf,
    /// TOML config file; flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// N-gram orders, heads, table sizes and the tokenizer: how rows are addressed.
    #[command(flatten)]
    pub addressing: AddressingArgs,
    /// Row layout: bf16, f16, f32, fp8 (E4M3 + E8M0 scale per 32 values) or fp8:BLOCK.
    #[arg(long)]
    pub row_layout: Option<String>,
    /// Values per row (per head).
    #[arg(long)]
    pub dim: Option<u32>,
    /// Row values: normal:STD (deterministic per row) or zeros. Default normal:1.
    #[arg(long)]
    pub init: Option<String>,
    /// Import rows instead of --init: a checkpoint directory (or its
    /// model.safetensors.index.json) with FP8 E4M3 values + E8M0 scales (DeepSeek-V4.1:
    /// streamed, copied bit-exact, addressing from its config.json), or safetensors files
    /// with F32/BF16/F16 tables (read whole, re-quantised).
    #[arg(long, num_args = 1..)]
    pub import: Vec<PathBuf>,
    /// Tensor name of each layer's table (values) in the checkpoint; {layer} is the layer
    /// id. Default: layers.{layer}.engram.embed.weight for a checkpoint directory,
    /// layers.{layer}.engram.embedding.weight for safetensors files.
    #[arg(long)]
    pub import_pattern: Option<String>,
    /// Tensor name of each layer's E8M0 scales in a checkpoint directory. Default:
    /// layers.{layer}.engram.embed.scale.
    #[arg(long)]
    pub import_scale_pattern: Option<String>,
    /// How a checkpoint directory's shards are read: direct (O_DIRECT: measured as fast
    /// as fadvise with less system CPU, and it leaves the page cache alone; falls back to
    /// fadvise where the file system refuses it) or fadvise (page cache, sequential
    /// advice, each range dropped once read).
    #[arg(long, value_enum, default_value = "direct")]
    pub import_read: seq_read::ReadMode,
    /// tokenizer.json (default: $ENGRAM_TOKENIZER, then the cached DeepSeek tokenizer).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Only files matching these globs (repeatable).
    #[arg(long)]
    pub include: Vec<String>,
    /// Skip files and directories matching these globs (repeatable).
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Text field of JSON Lines records.
    #[arg(long)]
    pub jsonl_field: Option<String>,
    /// Read stdin (`-`) as JSON Lines instead of one document.
    #[arg(long)]
    pub stdin_jsonl: bool,
    /// Worker threads (default: all cores; at most MAX_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the resolved config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Print the table's size, rows and RAM needed, then exit without work.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace an existing table at --out.
    #[arg(long)]
    pub force: bool,
    /// Byte budget of n-gram records (records.bin), e.g. 64M: packed copies of the rows of
    /// all heads of the corpus's most frequent n-grams, one read per miss instead of one
    /// per head. 0 or absent: none. At most the table's size.
    #[arg(long, value_name = "SIZE")]
    pub records_bytes: Option<String>,
    /// Give no record to n-grams whose rows a cache of SIZE bytes seeded from this build's
    /// profile would all pin (they rarely miss). 0 or absent: skip none.
    #[arg(long, value_name = "SIZE")]
    pub records_skip_cached: Option<String>,
    /// JSON Lines events on stdout (begin / progress / warning / summary).
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(long)]
    pub quiet: bool,
    /// Byte budget of the next-token candidate table (candidates.bin, for speculative
    /// prefetch), e.g. 16M; 0 writes none. Counting holds up to 16 M distinct
    /// (context, next token) pairs in memory (about 700 MB).
    #[arg(long, default_value = "16M")]
    pub candidates_bytes: String,
    /// Next-token candidates kept per context (1..=64).
    #[arg(long, default_value_t = candidates::DEFAULT_K)]
    pub candidates_k: usize,
}

impl BuildArgs {
    fn flag_config(&self) -> FileConfig {
        FileConfig {
            tokenizer: self.tokenizer.clone(),
            preset: self.addressing.preset,
            max_ngram: self.addressing.max_ngram,
            heads: self.addressing.heads,
            base_size: self.addressing.base_size,
            base_sizes: self.addressing.base_sizes.clone(),
            layers: self.addressing.layers.clone(),
            seed: self.addressing.seed,
            pad_id: self.addressing.pad_id,
            row_layout: self.row_layout.clone(),
            dim: self.dim,
            init: self.init.clone(),
            include: (!self.include.is_empty()).then(|| self.include.clone()),
            exclude: (!self.exclude.is_empty()).then(|| self.exclude.clone()),
            jsonl_field: self.jsonl_field.clone(),
            threads: self.threads,
            import_pattern: self.import_pattern.clone(),
            import_scale_pattern: self.import_scale_pattern.clone(),
            records_bytes: self.records_bytes.clone(),
            records_skip_cached: self.records_skip_cached.clone(),
        }
    }
}

/// The estimate's allowance for the tokenizer, the pipeline's buffers and the binary.
const FIXED_RAM_BYTES: u64 = 256 << 20;

/// Sizes a build will produce, known before any work.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Estimate {
    /// Rows of each Engram layer (sum over heads of the prime-sized tables), in layer order.
    pub rows_per_layer: Vec<u64>,
    /// Rows of all layers together.
    pub rows: u64,
    /// Bytes of one stored row (values and scales).
    pub row_bytes: u64,
    /// Bytes the table's layer files take on disk (rows, block checksums, headers).
    pub table_bytes: u64,
    /// Bytes of the n-gram counters while counting (0 for an import).
    pub counter_bytes: u64,
    /// At most this much for choosing n-gram records (0 without `--records-bytes`).
    pub records_ram_bytes: u64,
    /// Peak memory the build is expected to need: counters, profile, records, tokenizer and
    /// per-thread buffers.
    pub ram_bytes: u64,
}

/// Bytes the layer files of `manifest` will occupy.
pub(crate) fn table_bytes(manifest: &Manifest) -> Result<u64> {
    let mut total = 0u64;
    for (i, l) in manifest.layers.iter().enumerate() {
        let file = LayerHeader::expected(manifest, i as u32, l.layer_id, l.rows)?.file_bytes;
        total = total
            .checked_add(file)
            .context("the table's size overflows u64")?;
    }
    Ok(total)
}

fn estimate(
    manifest: &Manifest,
    layout: &EngramLayout,
    threads: usize,
    records: bool,
) -> Result<Estimate> {
    let table_bytes = table_bytes(manifest)?;
    let rows_per_layer: Vec<u64> = layout.layers.iter().map(|l| l.total_rows).collect();
    let counter_bytes = count::Counters::bytes(layout);
    let rows: u64 = rows_per_layer.iter().sum();
    // Counters, plus the profile of touched rows (16 B each, at most every row of the
    // largest layer while it is ranked), plus the tokenizer and buffers (~256 MiB), plus
    // each counting thread's buffers.
    let max_layer = rows_per_layer.iter().copied().max().unwrap_or(0);
    let records_ram_bytes = if records {
        records::ram_bytes(layout.config.max_ngram)
    } else {
        0
    };
    let ram_bytes = counter_bytes
        .saturating_add(max_layer.saturating_mul(16))
        .saturating_add(records_ram_bytes)
        .saturating_add(FIXED_RAM_BYTES)
        .saturating_add(count::WORKER_BYTES.saturating_mul(threads as u64));
    Ok(Estimate {
        rows_per_layer,
        rows,
        row_bytes: manifest.row_bytes,
        table_bytes,
        counter_bytes,
        records_ram_bytes,
        ram_bytes,
    })
}

/// Free bytes on the file system that will hold `out` (its nearest existing ancestor).
pub(crate) fn free_bytes(out: &Path) -> Result<u64> {
    let mut dir = out.parent().unwrap_or(Path::new("."));
    while !dir.as_os_str().is_empty() && !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("."));
    }
    if dir.as_os_str().is_empty() {
        dir = Path::new(".");
    }
    let st = rustix::fs::statvfs(dir)
        .with_context(|| format!("checking free space on {}", dir.display()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Seconds since the epoch to record as the build time: `SOURCE_DATE_EPOCH` if set, else 0,
/// so that the same inputs give a byte-identical table.
fn build_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Runs a build. Returns the summary JSON (also printed per the output mode).
/// The plan every later phase works from: the config file, a checkpoint's declared
/// addressing and the flags resolved into one, and what the build imports.
struct Resolved {
    plan: BuildPlan,
    /// `--import` safetensors files (values converted into the table's rows).
    checkpoints: Option<values::Checkpoints>,
    /// `--import` of a checkpoint directory (FP8 rows copied bit-exact, streamed).
    import_plan: Option<fp8_import::ImportPlan>,
}

/// Everything known before any work: the tokenizer, the layout, the manifest and the sizes.
struct Prepared {
    tok_path: PathBuf,
    tok: tokenizer::LoadedTokenizer,
    table: CompressionTable,
    layout: EngramLayout,
    manifest: Manifest,
    est: Estimate,
    /// The records' shape and records per layer (`--records-bytes`).
    record_plan: Option<(RecordShape, u64)>,
    candidates_bytes: u64,
}

/// What the counting pass produced.
struct Counted {
    summary: count::CountSummary,
    secs: f64,
    profiles: Vec<LayerProfile>,
    /// The records chosen, the recurring n-grams they were chosen from, and the seconds.
    chosen: Option<(records::Chosen, usize, f64)>,
    continuations: Option<candidates::CandidateCounter>,
}

/// Builds a table as `args` say: resolve the plan, prepare (tokenizer, layout, sizes),
/// then either stop (`--print-config`, `--dry-run`) or open the writer, count the corpus,
/// write the rows, the records, the profile and the candidates, and publish.
pub fn run(args: &BuildArgs) -> Result<BuildOutcome> {
    let resolved = resolve_plan(args)?;
    if args.print_config {
        crate::out_line(format_args!("{}", resolved.plan.to_toml()?.trim_end()));
        return Ok(BuildOutcome::PrintedConfig);
    }
    if args.out.as_os_str().is_empty() {
        bail!("--out DIR is required: the table directory to publish");
    }
    let mode = Mode::choose(args.json, args.quiet);
    let started = Instant::now();
    let prep = prepare(args, &resolved)?;
    if args.dry_run {
        return Ok(BuildOutcome::DryRun(dry_run(args, &resolved, &prep, mode)?));
    }
    let mut writer = open_writer(args, &resolved, &prep, mode)?;
    let Resolved {
        plan,
        checkpoints,
        import_plan,
    } = &resolved;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(plan.threads)
        .build()
        .context("starting worker threads")?;
    let hasher = NgramHasher::new(&prep.layout, HashOptions::default())?;
    let counted = if args.paths.is_empty() {
        None
    } else {
        Some(count_corpus(args, plan, &prep, &pool, &hasher, mode)?)
    };

    // Write the table.
    let mut phase = Phase::start(
        if import_plan.is_some() {
            Mode::Quiet
        } else {
            mode
        },
        "write",
        "rows",
        prep.est.rows,
    );
    let (done, import_summary) = match import_plan {
        Some(ip) => {
            let s = fp8_import::stream(ip, &mut writer, args.import_read, mode)?;
            writer.set_checkpoint_sha256(s.shards.iter().map(|(_, h)| h.clone()).collect())?;
            (s.rows, Some(s))
        }
        None => (
            write_rows(
                plan,
                checkpoints.as_ref(),
                &prep,
                &pool,
                &mut writer,
                &mut phase,
            )?,
            None,
        ),
    };
    // Records, the profile and the candidates join the table before publication: all are
    // published or none.
    let table_id = writer.manifest().table_id_u64().unwrap_or(0);
    let records = match (&counted, prep.record_plan) {
        (
            Some(Counted {
                chosen: Some(c), ..
            }),
            Some(rp),
        ) => Some(write_records(
            plan,
            checkpoints.as_ref(),
            &prep,
            &mut writer,
            c,
            rp,
            mode,
        )?),
        _ => None,
    };
    let (counted, profile, continuations) = match counted {
        Some(c) => (
            Some((c.summary, c.secs)),
            Some(Profile {
                table_id,
                layers: c.profiles,
            }),
            c.continuations,
        ),
        None => (None, None, None),
    };
    if let Some(p) = &profile {
        writer.add_file(PROFILE_FILE, &p.to_bytes())?;
    }
    let candidates = match continuations {
        Some(c) => add_candidates(args, c, table_id, prep.candidates_bytes, &mut writer, mode)?,
        None => None,
    };
    let manifest = writer.finish()?;
    let write_secs = phase.finish(done, "published");

    let summary = summarise(
        args,
        &prep,
        &manifest,
        write_secs,
        counted.zip(profile),
        records,
        import_summary,
        candidates,
        started,
    );
    match mode {
        Mode::Json => json_line("summary", &serde_json::to_value(&summary)?),
        Mode::Quiet => {}
        Mode::Bars | Mode::Log => summary::print(&summary),
    }
    Ok(BuildOutcome::Built(Box::new(summary)))
}

/// Phase 1: the config file, a checkpoint's declared addressing and the flags, resolved
/// into one plan; a checkpoint directory's tensors located.
fn resolve_plan(args: &BuildArgs) -> Result<Resolved> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    // An imported checkpoint's declared addressing sits between the file and the flags;
    // anything that contradicts it is an error below.
    // A checkpoint directory (FP8, streamed) declares its addressing in config.json;
    // flags override it (the keys are third-party reports), and the row counts are then
    // checked against the tensors.
    let ckpt_dir = match args.import.as_slice() {
        [p] if crate::checkpoint::is_checkpoint_dir(p) => {
            Some(crate::checkpoint::CheckpointDir::open(p)?)
        }
        _ => None,
    };
    let checkpoints = if args.import.is_empty() || ckpt_dir.is_some() {
        None
    } else if args
        .import
        .iter()
        .any(|p| crate::checkpoint::is_checkpoint_dir(p))
    {
        bail!("--import takes one checkpoint directory (or index file), or safetensors files");
    } else {
        Some(values::Checkpoints::open(&args.import)?)
    };
    let declared = match (&checkpoints, &ckpt_dir) {
        (Some(c), _) => values::declared_config(c)?,
        (None, Some(d)) => Some(config::from_checkpoint_json(d.config.as_ref())),
        _ => None,
    };
    let base = match &declared {
        Some(d) => file.overlay(d.clone()),
        None => file,
    };
    let mut plan = base.overlay(args.flag_config()).resolve(&args.import)?;
    if let (Some(d), None) = (&declared, &ckpt_dir) {
        values::check_checkpoint_config(d, &plan.engram, plan.dim)?;
    }
    let import_plan = match (&plan.init, ckpt_dir) {
        (
            Init::Checkpoint {
                values_pattern,
                scales_pattern,
                ..
            },
            Some(dir),
        ) => {
            let ip = fp8_import::ImportPlan::locate(
                dir,
                &plan.engram.layer_ids,
                values_pattern,
                scales_pattern,
            )?;
            let layout_flag = args.row_layout.is_some() || args.dim.is_some();
            if layout_flag && (plan.row_layout != ip.row_layout() || plan.dim != ip.dim) {
                bail!(
                    "--row-layout / --dim give {} x {}, but the checkpoint's tensors are {} \
                     values with one E8M0 scale per {} (fp8:{}): imported rows are copied, \
                     not converted",
                    config::row_layout_name(plan.row_layout),
                    plan.dim,
                    ip.dim,
                    ip.scale_block,
                    ip.scale_block
                );
            }
            plan.row_layout = ip.row_layout();
            plan.dim = ip.dim;
            if plan.records_bytes > 0 {
                bail!(
                    "--records-bytes is not supported with a checkpoint directory yet: records \
                     copy rows at random, and the importer reads the shards sequentially"
                );
            }
            Some(ip)
        }
        _ => None,
    };
    plan.corpus.stdin_jsonl = args.stdin_jsonl;
    Ok(Resolved {
        plan,
        checkpoints,
        import_plan,
    })
}

/// Phase 2: the tokenizer, the layout, the manifest, the sizes and the records' budget,
/// all checked before any work.
fn prepare(args: &BuildArgs, resolved: &Resolved) -> Result<Prepared> {
    let Resolved {
        plan,
        checkpoints,
        import_plan,
    } = resolved;
    let candidates_bytes =
        engram_store::size::parse_bytes(&args.candidates_bytes).context("--candidates-bytes")?;
    anyhow::ensure!(
        (1..=engram_store::candidates::MAX_CANDIDATES_K).contains(&args.candidates_k),
        "--candidates-k {}: expected 1..={}",
        args.candidates_k,
        engram_store::candidates::MAX_CANDIDATES_K
    );

    let tok_path = tokenizer::resolve_path(plan.tokenizer.as_deref())?;
    let tok = tokenizer::load(&tok_path)?;
    let table = CompressionTable::from_tokenizer(&tok.tokenizer)
        .with_context(|| format!("building the compression table from {}", tok_path.display()))?;
    let pad = table.compress_id(plan.engram.pad_id)?;
    let layout = EngramLayout::new(&plan.engram, table.compressed_vocab_size(), pad)?;
    if let Some(ip) = &import_plan {
        ip.check_rows(&layout)?;
    }
    let source = match &plan.init {
        Init::Checkpoint { path, .. } => format!("import {}", path.display()),
        Init::Import { files, .. } => format!(
            "import {}",
            files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Init::Normal { std } => format!("init normal:{std} seed={}", plan.engram.seed),
        Init::Zeros => "init zeros".into(),
    };
    let build = BuildInfo {
        tool: format!("engram-build {}", env!("CARGO_PKG_VERSION")),
        created_unix: build_time(),
        source,
        notes: String::new(),
        checkpoint_sha256: checkpoints
            .as_ref()
            .map(|c| c.sha256().to_vec())
            .unwrap_or_default(),
    };
    let manifest = Manifest::new(&layout, &tok.sha256, plan.row_layout, plan.dim, None, build)?;
    // 0 threads: rayon's default, one per core.
    let threads = match plan.threads {
        0 => rayon::current_num_threads(),
        n => n,
    };
    let mut est = estimate(&manifest, &layout, threads, plan.records_bytes > 0)?;
    if import_plan.is_some() && args.paths.is_empty() {
        // No corpus: nothing is counted; the import's buffers are fixed.
        est.counter_bytes = 0;
        est.ram_bytes = FIXED_RAM_BYTES + fp8_import::buffer_bytes();
    }
    // The records' shape and how many records per layer the budget buys, checked before
    // any work.
    let record_plan = plan_records(args, plan, &layout, &manifest, &est)?;
    Ok(Prepared {
        tok_path,
        tok,
        table,
        layout,
        manifest,
        est,
        record_plan,
        candidates_bytes,
    })
}

/// `--dry-run`: the sizes (and a checkpoint directory's import plan), printed.
fn dry_run(
    args: &BuildArgs,
    resolved: &Resolved,
    prep: &Prepared,
    mode: Mode,
) -> Result<DryRunSummary> {
    let est = &prep.est;
    let import = match &resolved.import_plan {
        Some(ip) => Some(import_dry_run(ip, est, &args.out, args.import_read, mode)?),
        None => None,
    };
    let summary = DryRunSummary {
        dry_run: true,
        out: args.out.to_string_lossy().into_owned(),
        estimate: est.clone(),
        import,
    };
    if mode == Mode::Json {
        json_line("summary", &serde_json::to_value(&summary)?);
    } else {
        crate::outln!(
            "dry run: {} rows ({} per layer), {} B per row; table on disk {}; RAM needed about {} (hit counters {})",
            est.rows,
            est.rows_per_layer
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" + "),
            est.row_bytes,
            human(est.table_bytes),
            human(est.ram_bytes),
            human(est.counter_bytes)
        );
    }
    Ok(summary)
}

/// Phase 3: the checks that need the machine (address-space limit, the output path, free
/// space), then the writer, which locks the path so a second writer fails before any work.
fn open_writer(
    args: &BuildArgs,
    resolved: &Resolved,
    prep: &Prepared,
    mode: Mode,
) -> Result<TableWriter> {
    let Resolved {
        plan,
        checkpoints,
        import_plan,
    } = resolved;
    let Prepared {
        tok_path,
        tok,
        manifest,
        est,
        ..
    } = prep;
    // Fail before any work when the hit counters (allocated whole when counting starts)
    // and the ranked profile of the largest layer cannot fit the address-space limit.
    let counting_bytes = est.ram_bytes.saturating_sub(FIXED_RAM_BYTES);
    if let Some(limit) = crate::address_space_limit()
        && !args.paths.is_empty()
        && counting_bytes > limit
    {
        bail!(
            "counting needs {} of memory ({} of hit counters), above the process's \
             address-space limit of {} (ulimit -v): raise the limit or use a smaller --base-size",
            human(counting_bytes),
            human(est.counter_bytes),
            human(limit)
        );
    }
    if args.out.exists() && !args.force {
        bail!(
            "{} already exists: pass --force to replace it",
            args.out.display()
        );
    }
    let free = free_bytes(&args.out)?;
    let disk_bytes = est.table_bytes.saturating_add(plan.records_bytes);
    if free < disk_bytes.saturating_add(FREE_SPACE_HEADROOM_BYTES) {
        bail!(
            "not enough free space for {}: the table (with records) needs {} plus {} of \
             headroom (FREE_SPACE_HEADROOM_BYTES), the file system has {}",
            args.out.display(),
            human(disk_bytes),
            human(FREE_SPACE_HEADROOM_BYTES),
            human(free)
        );
    }
    // Locks the path now, so a second writer fails before doing any work.
    let writer = TableWriter::create(&args.out, manifest, args.force)?;
    if let Some(c) = &checkpoints {
        values::check_checkpoint_tokenizer(c, &tok.sha256)?;
    }
    if args.paths.is_empty() && checkpoints.is_none() && import_plan.is_none() {
        bail!("no corpus given: pass files or directories (or - for stdin) to profile");
    }
    if mode == Mode::Json {
        json_line(
            "begin",
            &serde_json::json!({
                "out": crate::json_path(&args.out), "tokenizer": crate::json_path(tok_path), "tokenizer_sha256": tok.sha256,
                "config": plan.engram, "row_layout": config::row_layout_name(plan.row_layout),
                "dim": plan.dim, "estimate": est,
            }),
        );
    }
    Ok(writer)
}

/// Phase 4: reads, tokenizes and counts the corpus (row hits per layer, the records'
/// contexts, the candidates' continuations), then ranks the profile and chooses records.
fn count_corpus(
    args: &BuildArgs,
    plan: &BuildPlan,
    prep: &Prepared,
    pool: &rayon::ThreadPool,
    hasher: &NgramHasher,
    mode: Mode,
) -> Result<Counted> {
    let Prepared {
        tok,
        table,
        layout,
        manifest,
        record_plan,
        candidates_bytes,
        ..
    } = prep;
    let (record_plan, candidates_bytes) = (*record_plan, *candidates_bytes);
    let sources = corpus::discover(&args.paths, &plan.corpus)?;
    let total_bytes: u64 = sources
        .iter()
        .map(|s| match s {
            corpus::Input::Text(p) | corpus::Input::JsonLines(p) => {
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
            }
            corpus::Input::Stdin => 0,
        })
        .sum();
    let counters = count::Counters::new(layout)?;
    let keys = match record_plan {
        Some(_) => Some(count::ContextKeys::new(
            layout,
            hasher,
            records::MAX_RECORD_TOKENS,
        )?),
        None => None,
    };
    let continuations = (candidates_bytes > 0).then(candidates::CandidateCounter::default);
    let progress = count::Progress::default();
    let mut phase = Phase::start(mode, "count", "bytes", total_bytes);
    let t0 = Instant::now();
    let summary = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            pool.install(|| {
                count::count(
                    count::Strategy::for_layout(layout),
                    &sources,
                    &plan.corpus,
                    &tok.tokenizer,
                    table,
                    layout,
                    hasher,
                    &counters,
                    continuations.as_ref(),
                    &progress,
                    keys.as_ref(),
                )
            })
        });
        while !worker.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let tokens = progress.tokens.load(Ordering::Relaxed);
            let rate = tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            phase.update(
                progress.bytes.load(Ordering::Relaxed),
                &format!("{tokens} tokens, {rate:.0} tok/s"),
            );
        }
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("the counting thread panicked"))?
    })?;
    let tokens = summary.tokens;
    let secs = phase.finish(
        summary.bytes,
        &format!("{tokens} tokens in {} documents", summary.documents),
    );
    for (what, why) in &summary.skipped {
        report::warning(mode, what, why);
    }
    if summary.tokens == 0 {
        bail!(
            "the corpus has no tokens ({} files read, {} skipped): nothing to profile",
            summary.sources,
            summary.skipped.len()
        );
    }
    let profiles: Vec<LayerProfile> = layout
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| count::profile_layer(&counters, i, l.layer_id))
        .collect();
    let chosen = match (keys, record_plan) {
        (Some(keys), Some((_, per_layer))) => Some(choose_records(
            plan, layout, manifest, pool, hasher, keys, per_layer, &profiles, mode,
        )?),
        _ => None,
    };
    Ok(Counted {
        summary,
        secs,
        profiles,
        chosen,
        continuations,
    })
}

/// Phase 5: every layer's rows, generated or converted in parallel and written in order.
/// Returns the rows written.
fn write_rows(
    plan: &BuildPlan,
    checkpoints: Option<&values::Checkpoints>,
    prep: &Prepared,
    pool: &rayon::ThreadPool,
    writer: &mut TableWriter,
    phase: &mut Phase,
) -> Result<u64> {
    let dim = plan.dim as usize;
    let row_bytes = prep.manifest.row_bytes as usize;
    let mut done = 0u64;
    // One chunk per worker per round: rows are generated and encoded in parallel (each row
    // is keyed on its own, so the bytes do not depend on the thread count), then written
    // in order.
    let group = pool.current_num_threads().max(1);
    let mut byte_buf = vec![0u8; group * values::CHUNK_ROWS as usize * row_bytes];
    for (li, l) in prep.layout.layers.iter().enumerate() {
        let source = values::RowValues::for_layer(
            &plan.init,
            checkpoints,
            plan.engram.seed,
            l.layer_id,
            l.total_rows,
            plan.dim,
        )?;
        let mut first = 0u64;
        while first < l.total_rows {
            let n = (group as u64 * values::CHUNK_ROWS).min(l.total_rows - first) as usize;
            let bytes = &mut byte_buf[..n * row_bytes];
            pool.install(|| source.encode_rows(first, dim, plan.row_layout, bytes))?;
            writer.write_layer_rows(li, bytes)?;
            first += n as u64;
            done += n as u64;
            phase.update(done, &format!("layer {}", l.layer_id));
        }
    }
    Ok(done)
}

/// Phase 6: `records.bin` with the chosen records' rows.
fn write_records(
    plan: &BuildPlan,
    checkpoints: Option<&values::Checkpoints>,
    prep: &Prepared,
    writer: &mut TableWriter,
    (chosen, recurring, select_secs): &(records::Chosen, usize, f64),
    (shape, per_layer): (RecordShape, u64),
    mode: Mode,
) -> Result<RecordsSummary> {
    let layout = &prep.layout;
    let dim = plan.dim as usize;
    let total: u64 = chosen.rows.iter().map(|r| r.len() as u64).sum();
    let mut phase = Phase::start(mode, "records", "rows", total);
    let sources = layout
        .layers
        .iter()
        .map(|l| {
            values::RowValues::for_layer(
                &plan.init,
                checkpoints,
                plan.engram.seed,
                l.layer_id,
                l.total_rows,
                plan.dim,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut vals = vec![0f32; dim];
    let mut written = 0u64;
    let file_bytes = records::write(writer, shape, chosen, |li, row, out| {
        sources[li].fill(row, dim, &mut vals)?;
        values::encode(plan.row_layout, dim, &vals, out)?;
        written += 1;
        phase.update(written, &format!("layer index {li}"));
        Ok(())
    })?;
    let write_secs = phase.finish(written, "written");
    if file_bytes.is_none() {
        report::warning(
            mode,
            "records",
            "no n-gram of the corpus recurs enough for a record: no records.bin",
        );
    }
    let k = layout.config.n_heads as u64;
    Ok(RecordsSummary {
        file: file_bytes.map(|_| engram_store::records::RECORDS_FILE),
        budget_bytes: plan.records_bytes,
        bytes: file_bytes.unwrap_or(0),
        records_per_layer_budget: per_layer,
        records_per_layer: chosen.rows.iter().map(|r| r.len() as u64 / k).collect(),
        records: total / k,
        recurring_ngrams: *recurring,
        skip_cached_bytes: plan.records_skip_cached,
        skipped_cached: chosen.skipped_cached.clone(),
        select_seconds: *select_secs,
        write_seconds: write_secs,
    })
}

/// Phase 7: `candidates.bin`, when some context fits the budget.
fn add_candidates(
    args: &BuildArgs,
    continuations: candidates::CandidateCounter,
    table_id: u64,
    candidates_bytes: u64,
    writer: &mut TableWriter,
    mode: Mode,
) -> Result<Option<CandidateSummary>> {
    match continuations.finish(table_id, args.candidates_k, candidates_bytes)? {
        Some((table, s)) => {
            writer.add_file(CANDIDATES_FILE, &table.to_bytes())?;
            Ok(Some(s))
        }
        None => {
            report::warning(
                mode,
                "candidates",
                "no context fits the budget or repeats often enough: no candidates.bin",
            );
            Ok(None)
        }
    }
}

/// The records' shape and how many records per layer `--records-bytes` buys, checked
/// before any work (`None` without a budget).
fn plan_records(
    args: &BuildArgs,
    plan: &BuildPlan,
    layout: &EngramLayout,
    manifest: &Manifest,
    est: &Estimate,
) -> Result<Option<(RecordShape, u64)>> {
    if plan.records_bytes == 0 {
        return Ok(None);
    }
    let shape = RecordShape::new(
        u32::try_from(layout.config.n_heads).context("heads overflow u32")?,
        u32::try_from(manifest.row_bytes).context("row bytes overflow u32")?,
    )?;
    let n_layers = layout.layers.len() as u64;
    let per_layer = records::records_per_layer(&shape, n_layers, plan.records_bytes);
    if per_layer == 0 {
        bail!(
            "--records-bytes {}: too small for one record per layer; the smallest \
             records file for this table is {} bytes",
            plan.records_bytes,
            shape.file_bytes(n_layers, 1).unwrap_or(u64::MAX)
        );
    }
    if plan.records_bytes > est.table_bytes {
        bail!(
            "--records-bytes {}: more than the table's {} bytes; records copy rows, \
             so a budget above the table holds nothing more",
            plan.records_bytes,
            est.table_bytes
        );
    }
    if args.paths.is_empty() {
        bail!("--records-bytes needs a corpus: records go to the n-grams it shows most");
    }
    Ok(Some((shape, per_layer)))
}

/// Chooses the records from the contexts the counting pass kept, passing over n-grams a
/// seeded cache would hold (`--records-skip-cached`). Returns the records, the recurring
/// n-grams they were chosen from, and the seconds it took.
#[allow(clippy::too_many_arguments)]
fn choose_records(
    plan: &BuildPlan,
    layout: &EngramLayout,
    manifest: &Manifest,
    pool: &rayon::ThreadPool,
    hasher: &NgramHasher,
    keys: count::ContextKeys,
    per_layer: u64,
    profiles: &[LayerProfile],
    mode: Mode,
) -> Result<(records::Chosen, usize, f64)> {
    let phase = Phase::start(mode, "select", "layers", layout.layers.len() as u64);
    let cached = (plan.records_skip_cached > 0)
        .then(|| records::cached_rows(profiles, plan.records_skip_cached, manifest.row_bytes));
    let (chosen, recurring) =
        pool.install(|| records::select(keys, hasher, per_layer, cached.as_deref()))?;
    let picked: usize = chosen.rows.iter().map(Vec::len).sum();
    let secs = phase.finish(
        layout.layers.len() as u64,
        &format!(
            "{} records chosen from {recurring} recurring n-grams",
            picked / layout.config.n_heads
        ),
    );
    Ok((chosen, recurring, secs))
}

/// The published build's summary.
#[allow(clippy::too_many_arguments)]
fn summarise(
    args: &BuildArgs,
    prep: &Prepared,
    manifest: &Manifest,
    write_secs: f64,
    counted: Option<((count::CountSummary, f64), Profile)>,
    records: Option<RecordsSummary>,
    import: Option<fp8_import::StreamSummary>,
    candidates: Option<CandidateSummary>,
    started: Instant,
) -> BuildSummary {
    let (corpus, profile) = match counted {
        Some(((counts, count_secs), profile)) => (
            Some(corpus_summary(&counts, count_secs)),
            Some(profile_summary(&profile, &prep.layout)),
        ),
        None => (None, None),
    };
    BuildSummary {
        out: args.out.to_string_lossy().into_owned(),
        table_id: manifest.table_id.clone(),
        rows: prep.est.rows,
        table_bytes: prep.est.table_bytes,
        row_bytes: prep.est.row_bytes,
        write_seconds: write_secs,
        corpus,
        profile,
        records,
        import: import.map(|stream| ImportSummary {
            mb_per_second: prep.est.table_bytes as f64 / stream.seconds.max(1e-9) / 1e6,
            stream,
        }),
        candidates,
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn corpus_summary(counts: &count::CountSummary, count_secs: f64) -> CorpusSummary {
    CorpusSummary {
        sources: counts.sources,
        documents: counts.documents,
        bytes: counts.bytes,
        tokens: counts.tokens,
        skipped: counts.skipped.len(),
        count_seconds: count_secs,
        tokens_per_second: counts.tokens as f64 / count_secs.max(1e-9),
    }
}

fn profile_summary(profile: &Profile, layout: &EngramLayout) -> ProfileSummary {
    let layers = profile
        .layers
        .iter()
        .zip(&layout.layers)
        .map(|(p, l)| LayerSummary {
            layer_id: l.layer_id,
            rows: l.total_rows,
            rows_touched: p.entries.len(),
            hits: p.total_hits,
            saturated_rows: p
                .entries
                .iter()
                .filter(|&&(_, c)| c == u64::from(u32::MAX))
                .count(),
            curve: count::curve(p, l.total_rows, &count::CURVE_FRACTIONS),
        })
        .collect();
    ProfileSummary {
        file: PROFILE_FILE,
        layers,
    }
}

/// The import part of `--dry-run`: the tensors, shards and offsets found, the bytes to
/// read and write, and a time estimate from a sample read of the first values tensor.
fn import_dry_run(
    ip: &fp8_import::ImportPlan,
    est: &Estimate,
    out: &Path,
    read_mode: seq_read::ReadMode,
    mode: Mode,
) -> Result<serde_json::Value> {
    let (rate, used) = ip.sample_read_rate(read_mode)?;
    let free = free_bytes(out)?;
    // Reads and writes share the disk when the checkpoint and the table are on one.
    let seconds = (ip.read_bytes() + est.table_bytes) as f64 / rate.max(1.0);
    let mut j = ip.to_json();
    j["sample_read_bytes_per_second"] = serde_json::json!(rate);
    j["read_mode"] = serde_json::to_value(used)?;
    j["free_bytes"] = serde_json::json!(free);
    j["estimate_seconds"] = serde_json::json!(seconds);
    if mode != Mode::Json {
        ip.print();
        crate::outln!(
            "  read {} ({:?} reads, sampled {:.0} MB/s); write {} to {} ({} free); about {:.0} s \
             if reads and writes share that rate",
            human(ip.read_bytes()),
            used,
            rate / 1e6,
            human(est.table_bytes),
            out.display(),
            human(free),
            seconds
        );
    }
    Ok(j)
}
