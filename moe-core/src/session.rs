//! A loaded model directory ready to generate or evaluate: config, weights, vocabulary,
//! tokenizer (checked against the model's fingerprint) and, optionally, its Engram table
//! served by `engram-store`, with speculative prefetch driven by a next-token candidate
//! table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_files::file::{SHA256SUMS_FILE, Sha256Sums};
use engram_files::tokenizer;
use engram_kernels::CompressionTable;
use engram_store::{Candidates, RowSource, Store, StoreOptions};
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::context::ContextExtension;
use crate::error::{Error, Result};
use crate::model::engram::{EngramMemory, StallStats};
use crate::model::{DecodeState, Logits, Model};
use crate::sampler::{Sampler, SamplerConfig};
use crate::vocab::{StreamDecoder, Vocab};
use crate::weights::Weights;

/// Where the Engram rows come from.
#[derive(Debug, Clone)]
pub struct EngramSource {
    /// The table directory (built by `engram-build --import` from the model's tables).
    pub table: PathBuf,
    /// Backend, cache and profile settings.
    pub options: StoreOptions,
    /// Accept a table whose rows were not imported from this model's checkpoint (random
    /// or corpus-initialised rows, another training run): for experiments only, the output
    /// is not the model's.
    pub allow_foreign_table: bool,
}

/// Open rows for a model's Engram blocks: an in-process [`Store`] or a client of the
/// storage service.
#[derive(Debug, Clone)]
pub struct EngramRows<'a> {
    /// The table (its directory, or the path a service serves it by), named in messages.
    pub table: &'a Path,
    /// Where the rows are read.
    pub rows: Arc<dyn RowSource>,
    /// As [`EngramSource::allow_foreign_table`].
    pub allow_foreign_table: bool,
}

/// A model ready to run.
#[derive(Debug)]
pub struct Session {
    /// The decoder and its weights.
    pub model: Model,
    /// Maps between the tokenizer's raw ids and the model's reduced vocabulary.
    pub vocab: Vocab,
    /// The tokenizer whose fingerprint the model recorded.
    pub tokenizer: Tokenizer,
    /// The Engram table's rows and their store, for a model with Engram layers.
    pub memory: Option<EngramMemory>,
    /// KV cache, conv history and position of the sequence being decoded.
    pub state: DecodeState,
    speculator: Option<Speculator>,
    prefill_plan: PrefillPlan,
}

/// How [`Session::prefill`] runs a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillPlan {
    /// Positions per chunk; 0 runs the prompt in one pass (its rows all requested first).
    pub chunk: usize,
    /// Request chunk k + 1's Engram rows before chunk k computes (one request per chunk),
    /// so the reads overlap compute; otherwise each chunk requests its rows when it starts.
    pub pipeline: bool,
}

impl Default for PrefillPlan {
    fn default() -> Self {
        Self {
            chunk: 0,
            pipeline: true,
        }
    }
}

/// Speculative prefetch from a candidate table ([`Session::enable_speculation`]).
#[derive(Debug)]
struct Speculator {
    candidates: Candidates,
    k: usize,
    // (<= k,) raw ids predicted for the next position
    predicted: Vec<u32>,
    // the same as i64, for the store
    predicted_i64: Vec<i64>,
    stats: SpeculationStats,
}

/// What speculative prefetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeculationStats {
    /// Decode positions whose token was known after a prediction was made for it.
    pub positions: u64,
    /// Positions with at least one candidate.
    pub predicted: u64,
    /// Positions whose token was among the candidates.
    pub hits: u64,
    /// Rows offered to the store for speculative reads.
    pub rows_offered: u64,
}

impl SpeculationStats {
    fn since(self, before: Self) -> Self {
        Self {
            positions: self.positions - before.positions,
            predicted: self.predicted - before.predicted,
            hits: self.hits - before.hits,
            rows_offered: self.rows_offered - before.rows_offered,
        }
    }
}

/// What one generation did.
#[derive(Debug, Clone, Default)]
pub struct GenerateStats {
    /// Tokens of the prompt (after tokenization).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Wall time of the prompt's forward pass.
    pub prefill: Duration,
    /// Wall time from the start of the prefill to the first sampled token.
    pub time_to_first_token: Duration,
    /// Wall time of the decode steps after the first token.
    pub decode: Duration,
    /// Time decode steps waited for Engram rows, and how many steps waited.
    pub stall: StallStats,
    /// Time the prefill waited for Engram rows.
    pub prefill_stall: Duration,
    /// Speculative prefetch, when enabled.
    pub speculation: Option<SpeculationStats>,
    /// Raw ids of the generated tokens.
    pub raw_ids: Vec<u32>,
    /// Reduced ids of the generated tokens.
    pub ids: Vec<u32>,
}

/// Refuses a table whose rows were not imported from the model's own checkpoint: the table
/// must record (`build.checkpoint_sha256`) exactly the SHA-256 that the model directory's
/// `SHA256SUMS` lists for `table_file`. Addressing checks cannot catch this: a table of
/// random rows with the right shape addresses perfectly and decodes garbage.
fn check_table_source(
    manifest: &engram_store::Manifest,
    model_dir: &Path,
    table_file: &str,
    src: &EngramRows<'_>,
) -> Result<()> {
    let sums = Sha256Sums::read(&model_dir.join(SHA256SUMS_FILE))?;
    let expected = sums.get(table_file);
    let recorded = &manifest.build.checkpoint_sha256;
    if let Some(expected) = expected
        && recorded.len() == 1
        && recorded[0].eq_ignore_ascii_case(expected)
    {
        return Ok(());
    }
    let reason = match (expected, recorded.as_slice()) {
        (None, _) => format!(
            "{} does not list {table_file}, so the table cannot be tied to this model's checkpoint",
            sums.path().display()
        ),
        (Some(want), []) => format!(
            "it records no checkpoint SHA-256 (source {:?}: rows not imported, or imported \
             before engram-build recorded the checkpoint's sum); the model's {table_file} has \
             SHA-256 {want}",
            manifest.build.source
        ),
        (Some(want), got) => format!(
            "its rows were imported from checkpoint SHA-256 {}, the model's {table_file} has \
             {want}",
            got.join(", ")
        ),
    };
    if src.allow_foreign_table {
        tracing::warn!(
            table = %src.table.display(),
            "{reason}; decoding anyway (allow_foreign_table): the output is not this model's"
        );
        return Ok(());
    }
    Err(Error::TableMismatch {
        table: src.table.to_path_buf(),
        reason: format!(
            "{reason}: rebuild it with engram-build --import {} --out {} --force, or pass \
             --allow-foreign-table to decode with foreign rows anyway",
            model_dir.join(table_file).display(),
            src.table.display()
        ),
    })
}

impl Session {
    /// Loads `model_dir` (`config.json`, `vocab.json`, `model.safetensors`, each checked
    /// against the directory's `SHA256SUMS`), the tokenizer (`tokenizer_path`, else
    /// `$ENGRAM_TOKENIZER`, else the cached DeepSeek file) and, with `engram`, opens its
    /// table, which must have been imported from the model's checkpoint (see
    /// [`EngramSource::allow_foreign_table`]). Without `engram` the Engram blocks are
    /// skipped.
    pub fn load(
        model_dir: &Path,
        tokenizer_path: Option<&Path>,
        engram: Option<&EngramSource>,
    ) -> Result<Self> {
        let rows = match engram {
            Some(src) => Some(EngramRows {
                table: &src.table,
                rows: Arc::new(Store::open(&src.table, &src.options)?),
                allow_foreign_table: src.allow_foreign_table,
            }),
            None => None,
        };
        Self::load_with_rows(model_dir, tokenizer_path, rows)
    }

    /// [`Session::load`] with the Engram rows from a store already open on `src.table` (a
    /// store over another backend, e.g. Mooncake through `engram-mooncake`;
    /// `src.options` is not used). The table must match the model as for [`Session::load`].
    pub fn load_with_store(
        model_dir: &Path,
        tokenizer_path: Option<&Path>,
        src: &EngramSource,
        store: Store,
    ) -> Result<Self> {
        let rows = EngramRows {
            table: &src.table,
            rows: Arc::new(store),
            allow_foreign_table: src.allow_foreign_table,
        };
        Self::load_with_rows(model_dir, tokenizer_path, Some(rows))
    }

    /// [`Session::load`] with rows from an open source: an in-process store, or a client
    /// of the storage service (`engram serve`).
    pub fn load_with_rows(
        model_dir: &Path,
        tokenizer_path: Option<&Path>,
        engram: Option<EngramRows<'_>>,
    ) -> Result<Self> {
        if !model_dir.is_dir() {
            return Err(Error::Input(format!(
                "model directory {} does not exist",
                model_dir.display()
            )));
        }
        let config = ModelConfig::load(&model_dir.join("config.json"))?;
        let vocab = Vocab::load(&model_dir.join(&config.vocab_file), &config)?;
        let weights = Weights::load(&model_dir.join("model.safetensors"), &config)?;
        let tok_path = tokenizer::resolve_path(tokenizer_path)?;
        let tok = tokenizer::load(&tok_path)?;
        if !tok.sha256.eq_ignore_ascii_case(&config.tokenizer_sha256) {
            return Err(Error::TokenizerMismatch {
                path: tok_path,
                expected: config.tokenizer_sha256.clone(),
                found: tok.sha256,
            });
        }
        let max_t = config.max_position_embeddings;
        let memory = match (engram, &config.engram) {
            (Some(src), Some(e)) => {
                let compression = CompressionTable::from_tokenizer(&tok.tokenizer)?;
                if compression.sha256_i32le() != e.compression_lookup_sha256_i32le {
                    return Err(Error::TableMismatch {
                        table: src.table.to_path_buf(),
                        reason: "the tokenizer's compression table differs from the model's".into(),
                    });
                }
                check_table_source(src.rows.manifest(), model_dir, &e.table_file, &src)?;
                Some(EngramMemory::new(
                    &config,
                    &weights,
                    compression,
                    src.rows,
                    src.table,
                    max_t,
                )?)
            }
            (Some(src), None) => {
                return Err(Error::TableMismatch {
                    table: src.table.to_path_buf(),
                    reason: "the model has no Engram layers".into(),
                });
            }
            (None, _) => None,
        };
        let model = Model::new(config, weights);
        let state = model.new_state(max_t)?;
        Ok(Self {
            model,
            vocab,
            tokenizer: tok.tokenizer,
            memory,
            state,
            speculator: None,
            prefill_plan: PrefillPlan::default(),
        })
    }

    /// Turns on speculative prefetch: after each position's rows are requested, the rows of
    /// the `k` (1..=64) next tokens `candidates` ranks most likely are read into the store's
    /// cache at low priority, a step before they can be needed. Rows and output are
    /// unchanged. Errors without an Engram table, or when `candidates` was built for
    /// another table.
    pub fn enable_speculation(&mut self, candidates: Candidates, k: usize) -> Result<()> {
        let m = self.memory.as_ref().ok_or_else(|| {
            Error::Input("speculative prefetch needs the model's Engram table".into())
        })?;
        let id = m.store().manifest().table_id_u64().unwrap_or(0);
        if candidates.table_id != 0 && candidates.table_id != id {
            return Err(Error::TableMismatch {
                table: m.table().to_path_buf(),
                reason: format!(
                    "the candidate table was built for table_id {:016x}, this table is {id:016x}",
                    candidates.table_id
                ),
            });
        }
        if !(1..=engram_store::candidates::MAX_CANDIDATES_K).contains(&k) {
            return Err(Error::Input(format!(
                "speculate {k} candidates: expected 1..={}",
                engram_store::candidates::MAX_CANDIDATES_K
            )));
        }
        self.speculator = Some(Speculator {
            candidates,
            k,
            predicted: Vec::with_capacity(k),
            predicted_i64: Vec::with_capacity(k),
            stats: SpeculationStats::default(),
        });
        Ok(())
    }

    /// Lets a sequence hold `positions` tokens, past the model's trained context
    /// (`max_position_embeddings`), to time long prompts: the decode state (and the Engram
    /// memory's buffers) are made for that many positions. RoPE extrapolates past the
    /// trained context, so the logits there are not what the model learned. Errors, leaving
    /// the session as it was, for fewer positions than the trained context, more than
    /// [`crate::config::MAX_POSITIONS`], or a state larger than the memory available.
    pub fn extend_context(&mut self, positions: usize) -> Result<ContextExtension> {
        let plan = ContextExtension::plan(&self.model, positions)?;
        let old = self.model.context();
        self.model.set_context(positions)?;
        let made = self.model.new_state(positions).and_then(|state| {
            if let Some(m) = &mut self.memory {
                m.set_max_positions(positions)?;
            }
            Ok(state)
        });
        match made {
            Ok(state) => {
                self.state = state;
                Ok(plan)
            }
            Err(e) => {
                // Neither the state nor the Engram buffers were replaced.
                self.model.set_context(old)?;
                Err(e)
            }
        }
    }

    /// Totals of speculative prefetch since it was enabled.
    pub fn speculation_stats(&self) -> Option<SpeculationStats> {
        self.speculator.as_ref().map(|s| s.stats)
    }

    /// Speculates on the position after the one just requested.
    fn speculate_next(&mut self) -> Result<()> {
        let (Some(m), Some(sp)) = (&mut self.memory, &mut self.speculator) else {
            return Ok(());
        };
        sp.candidates
            .predict_into(m.history(), sp.k, &mut sp.predicted);
        sp.predicted_i64.clear();
        sp.predicted_i64
            .extend(sp.predicted.iter().map(|&r| i64::from(r)));
        sp.stats.rows_offered += m.speculate(&sp.predicted_i64)? as u64;
        Ok(())
    }

    /// Scores the last prediction against the token that came (raw id `raw`).
    fn score_prediction(&mut self, raw: u32) {
        if let Some(sp) = &mut self.speculator {
            sp.stats.positions += 1;
            if !sp.predicted.is_empty() {
                sp.stats.predicted += 1;
            }
            if sp.predicted.contains(&raw) {
                sp.stats.hits += 1;
            }
        }
    }

    /// Raw ids of a text: BOS, then the tokenizer's ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Input(format!("tokenizing: {e}")))?;
        let mut raw = Vec::with_capacity(enc.len() + 1);
        raw.push(self.model.config.raw_bos_token_id);
        raw.extend_from_slice(enc.get_ids());
        Ok(raw)
    }

    fn start(&mut self, raw: &[u32]) -> Result<Vec<u32>> {
        self.state.reset();
        let reduced: Vec<u32> = raw.iter().map(|&r| self.vocab.reduce(r)).collect();
        if let Some(m) = &mut self.memory {
            m.reset();
            let ids: Vec<i64> = raw.iter().map(|&r| i64::from(r)).collect();
            m.request(&ids)?;
        }
        self.speculate_next()?;
        Ok(reduced)
    }

    /// Runs the prompt `raw` (raw ids, BOS included) and returns its last logits.
    pub fn prefill(&mut self, raw: &[u32]) -> Result<&[f32]> {
        self.run_prompt(raw, Logits::Last)?;
        Ok(self.model.logits(&self.state, 0))
    }

    /// Runs the prompt `raw` keeping the logits of every position
    /// (`self.model.logits(&self.state, i)` for position `i`).
    pub fn prefill_all(&mut self, raw: &[u32]) -> Result<()> {
        self.run_prompt(raw, Logits::All)
    }

    /// Sets how [`Session::prefill`] runs prompts (one pass by default). `prefill_all`
    /// always runs one pass: it keeps every position's logits.
    pub fn set_prefill_plan(&mut self, plan: PrefillPlan) {
        self.prefill_plan = plan;
    }

    /// How [`Session::prefill`] runs prompts.
    pub fn prefill_plan(&self) -> PrefillPlan {
        self.prefill_plan
    }

    fn run_prompt(&mut self, raw: &[u32], which: Logits) -> Result<()> {
        if raw.is_empty() {
            return Err(Error::Input("empty prompt".into()));
        }
        // Refused before any row is requested or chunk computed.
        if raw.len() > self.model.context() {
            return Err(Error::ContextFull {
                len: raw.len(),
                max: self.model.context(),
            });
        }
        let chunk = self.prefill_plan.chunk;
        if chunk == 0 || raw.len() <= chunk || which == Logits::All {
            let reduced = self.start(raw)?;
            return self
                .model
                .forward(&reduced, &mut self.state, self.memory.as_mut(), which);
        }
        self.run_chunked(raw, chunk)
    }

    /// The prompt in chunks of `chunk` positions; with the pipeline, chunk k + 1's rows are
    /// requested (one request per chunk) before chunk k computes.
    fn run_chunked(&mut self, raw: &[u32], chunk: usize) -> Result<()> {
        let pipeline = self.prefill_plan.pipeline;
        self.state.reset();
        let reduced: Vec<u32> = raw.iter().map(|&r| self.vocab.reduce(r)).collect();
        let ids: Vec<i64> = raw.iter().map(|&r| i64::from(r)).collect();
        let chunks: Vec<std::ops::Range<usize>> = (0..raw.len())
            .step_by(chunk)
            .map(|s| s..(s + chunk).min(raw.len()))
            .collect();
        let last = chunks.len() - 1;
        if let Some(m) = &mut self.memory {
            m.reset();
            m.request(&ids[chunks[0].clone()])?;
        }
        for (k, r) in chunks.iter().enumerate() {
            let request = match (pipeline, k) {
                (true, _) if k < last => Some(&chunks[k + 1]),
                (false, 1..) => Some(r),
                _ => None,
            };
            if let Some(next) = request {
                if let Some(m) = &mut self.memory {
                    m.request(&ids[next.clone()])?;
                }
                if next.end == raw.len() {
                    // Every position is requested: warm the one after the prompt.
                    self.speculate_next()?;
                }
            }
            self.model.forward(
                &reduced[r.clone()],
                &mut self.state,
                self.memory.as_mut(),
                Logits::Last,
            )?;
        }
        Ok(())
    }

    /// Appends one token (reduced id) and returns its logits.
    pub fn step(&mut self, id: u32) -> Result<&[f32]> {
        let raw = self
            .vocab
            .raw(id)
            .ok_or_else(|| Error::Input(format!("id {id} has no raw token (the unknown id)")))?;
        self.score_prediction(raw);
        if let Some(m) = &mut self.memory {
            m.request(&[i64::from(raw)])?;
        }
        self.speculate_next()?;
        self.model
            .forward(&[id], &mut self.state, self.memory.as_mut(), Logits::Last)?;
        Ok(self.model.logits(&self.state, 0))
    }

    /// Generates up to `max_new` tokens after `prompt`, streaming text to `on_text`.
    pub fn generate(
        &mut self,
        prompt: &str,
        max_new: usize,
        sampler: SamplerConfig,
        on_text: impl FnMut(&str),
    ) -> Result<GenerateStats> {
        let raw = self.encode(prompt)?;
        self.generate_ids(&raw, max_new, sampler, on_text)
    }

    /// [`Session::generate`] after a prompt already tokenized: `raw` ids, BOS first (as
    /// [`Session::encode`] gives them). Stops early when the context is full.
    pub fn generate_ids(
        &mut self,
        raw: &[u32],
        max_new: usize,
        sampler: SamplerConfig,
        mut on_text: impl FnMut(&str),
    ) -> Result<GenerateStats> {
        let mut sampler = Sampler::new(sampler, self.vocab.unk(), self.model.config.vocab_size)?;
        let stall0 = self
            .memory
            .as_ref()
            .map(EngramMemory::stall)
            .unwrap_or_default();
        let spec0 = self.speculation_stats();
        let t0 = Instant::now();
        let mut next = sampler.sample(self.prefill(raw)?);
        let prefill_stall = self
            .memory
            .as_ref()
            .map(|m| m.stall().stall.saturating_sub(stall0.stall))
            .unwrap_or_default();
        let mut stats = GenerateStats {
            prompt_tokens: raw.len(),
            prefill: t0.elapsed(),
            time_to_first_token: t0.elapsed(),
            prefill_stall,
            ..GenerateStats::default()
        };
        let mut stream = StreamDecoder::default();
        let t1 = Instant::now();
        let context = self.model.context();
        while stats.new_tokens < max_new {
            let raw_id = self
                .vocab
                .raw(next)
                .ok_or_else(|| Error::Input("the sampler returned the unknown id".into()))?;
            stats.ids.push(next);
            stats.raw_ids.push(raw_id);
            stats.new_tokens += 1;
            on_text(&stream.push(&self.tokenizer, raw_id)?);
            if stats.new_tokens == max_new || self.state.pos >= context {
                break;
            }
            next = sampler.sample(self.step(next)?);
        }
        stats.decode = t1.elapsed();
        stats.speculation = self
            .speculation_stats()
            .zip(spec0)
            .map(|(now, before)| now.since(before));
        if let Some(m) = &self.memory {
            let s = m.stall();
            stats.stall = StallStats {
                waits: s.waits - stall0.waits,
                stall: s.stall - stall0.stall,
            };
        }
        Ok(stats)
    }

    /// Cross-entropy (nats, summed) and the number of predicted tokens of a raw-id stream,
    /// in windows of `seq_len + 1` ids overlapping by one (as the trainer evaluates).
    pub fn loss(&mut self, stream: &[u32], seq_len: usize) -> Result<(f64, u64)> {
        let seq_len = seq_len.min(self.model.context());
        if seq_len == 0 {
            return Err(Error::Input("seq_len must be at least 1".into()));
        }
        let (mut total, mut count) = (0f64, 0u64);
        let windows = stream.len().saturating_sub(1) / seq_len;
        for w in 0..windows {
            let chunk = &stream[w * seq_len..w * seq_len + seq_len + 1];
            let reduced = self.start(&chunk[..seq_len])?;
            self.model
                .forward(&reduced, &mut self.state, self.memory.as_mut(), Logits::All)?;
            for i in 0..seq_len {
                let logits = self.model.logits(&self.state, i);
                let target = self.vocab.reduce(chunk[i + 1]) as usize;
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = logits
                    .iter()
                    .map(|&l| f64::from(l - max).exp())
                    .sum::<f64>()
                    .ln()
                    + f64::from(max);
                total += lse - f64::from(logits[target]);
                count += 1;
            }
        }
        Ok((total, count))
    }
}
