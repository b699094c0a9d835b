//! The Engram side of the decoder: canonical-id history, hashing, row prefetch from the
//! store, and the per-layer module (gate + short conv) with its decode state.
//!
//! Rows are requested the moment their token ids are known: the whole prompt's rows before
//! layer 0 runs (or, in a chunked prefill, each chunk's rows while the chunk before it
//! computes: [`crate::session::PrefillPlan`]), then each new token's rows right after it is
//! sampled. The layer waits on
//! its ticket only when it needs the rows, so I/O overlaps the blocks before it. Rows of
//! the likely next tokens can be warmed one step earlier still ([`EngramMemory::speculate`]).

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use engram_kernels::conv::ConvState;
use engram_kernels::engram_module::{DecodeScratch, EngramModule, EngramModuleConfig};
use engram_kernels::gather::memory_vectors;
use engram_kernels::hash::{HashOptions, HashOutput, NgramHasher};
use engram_kernels::quant::RowLayout;
use engram_kernels::{CompressionTable, EngramLayout};
use std::sync::Arc;

use engram_store::{AlignedBuf, RowSource, Speculation, Ticket};

use crate::config::{EngramModelConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::weights::Weights;

/// One Engram block's runtime state.
#[derive(Debug)]
struct LayerRt {
    /// Block index in the decoder.
    block: usize,
    /// Index of the layer in the table (and hasher).
    table_layer: usize,
    module: EngramModule,
    conv: ConvState,
    scratch: DecodeScratch,
    /// Tickets for the rows of the positions requested and not yet computed, in order
    /// (during a pipelined prefill: this chunk's, then the next chunk's).
    pending: VecDeque<Ticket>,
    /// Spare row buffers, reused across steps.
    spare: Vec<AlignedBuf>,
}

/// Wall time the decoder spent blocked on the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct StallStats {
    /// Lookups that had to wait for their rows.
    pub waits: u64,
    /// Time spent waiting for rows.
    pub stall: Duration,
}

/// Engram memory for one sequence.
#[derive(Debug)]
pub struct EngramMemory {
    /// The rows: an in-process store or a client of the storage service.
    store: Arc<dyn RowSource>,
    /// The table's directory (or the path a service serves it by), named in messages.
    table: std::path::PathBuf,
    compression: CompressionTable,
    hasher: NgramHasher,
    dtype: RowLayout,
    width: usize,
    heads: usize,
    max_ngram: usize,
    layers: Vec<LayerRt>,
    /// The last `N - 1` canonical ids (the hash's look-back).
    history: Vec<i64>,
    compressed: Vec<i64>,
    row_ids: Vec<u64>,
    e: Vec<f32>, // (max_t, d_mem)
    stall: StallStats,
    /// The last call's speculative prefetches, one per layer; the next call cancels them.
    speculations: Vec<Speculation>,
    /// (candidates * heads,) one layer's speculative row ids
    spec_ids: Vec<u64>,
    /// The look-back context followed by one candidate.
    spec_window: Vec<i64>,
    /// Canonical ids of the candidates.
    spec_canonical: Vec<i64>,
}

fn mismatch(table: &Path, reason: String) -> Error {
    Error::TableMismatch {
        table: table.to_path_buf(),
        reason,
    }
}

impl EngramMemory {
    /// Ties the model's Engram blocks to an open table, checking that the table was built
    /// for this model: same tokenizer, addressing and row width.
    pub fn new(
        config: &ModelConfig,
        weights: &Weights,
        compression: CompressionTable,
        store: Arc<dyn RowSource>,
        table_dir: &Path,
        max_t: usize,
    ) -> Result<Self> {
        let e: &EngramModelConfig = config
            .engram
            .as_ref()
            .ok_or_else(|| mismatch(table_dir, "the model has no Engram layers".into()))?;
        let manifest = store.manifest();
        if !manifest
            .tokenizer_sha256
            .eq_ignore_ascii_case(&config.tokenizer_sha256)
        {
            return Err(mismatch(
                table_dir,
                format!(
                    "built for tokenizer {}, the model uses {}",
                    manifest.tokenizer_sha256, config.tokenizer_sha256
                ),
            ));
        }
        if manifest.config != e.addressing() {
            return Err(mismatch(
                table_dir,
                format!(
                    "addressing {:?} differs from the model's {:?}",
                    manifest.config,
                    e.addressing()
                ),
            ));
        }
        if manifest.compressed_vocab_size != compression.compressed_vocab_size() {
            return Err(mismatch(
                table_dir,
                "compressed vocabulary size differs".into(),
            ));
        }
        if manifest.dim as usize != e.head_dim {
            return Err(mismatch(
                table_dir,
                format!(
                    "rows of {} values, the model's heads need {}",
                    manifest.dim, e.head_dim
                ),
            ));
        }
        let layout: EngramLayout = store.layout().clone();
        let hasher = NgramHasher::new(&layout, HashOptions::default())?;
        let mut layers = Vec::new();
        for (block, lw) in weights.layers.iter().enumerate() {
            let Some(w) = &lw.engram else { continue };
            let table_layer = layout.layer_index(block as u64)?;
            let mut mcfg =
                EngramModuleConfig::new(config.hidden_size, e.hc_mult, e.d_mem, e.max_ngram);
            mcfg.kernel_size = e.kernel_size;
            let module = EngramModule::new(mcfg, w.clone())?;
            layers.push(LayerRt {
                block,
                table_layer,
                conv: module.new_state()?,
                scratch: module.decode_scratch(1),
                module,
                pending: VecDeque::new(),
                spare: Vec::new(),
            });
        }
        let layers_len = layers.len();
        Ok(Self {
            dtype: manifest.row_layout,
            width: e.head_dim,
            heads: e.n_hash_heads,
            max_ngram: e.max_ngram,
            store,
            table: table_dir.to_path_buf(),
            compression,
            hasher,
            layers,
            history: Vec::with_capacity(e.max_ngram),
            compressed: Vec::with_capacity(max_t),
            row_ids: Vec::with_capacity(max_t * e.n_hash_heads),
            e: vec![0.0; max_t * e.d_mem],
            stall: StallStats::default(),
            speculations: Vec::with_capacity(layers_len),
            spec_ids: Vec::new(),
            spec_window: Vec::with_capacity(e.max_ngram),
            spec_canonical: Vec::new(),
        })
    }

    /// Sizes the buffers for chunks of up to `max_t` positions (a context longer than the
    /// one [`EngramMemory::new`] was given); an error, leaving them as they were, when the
    /// memory cannot be had.
    pub fn set_max_positions(&mut self, max_t: usize) -> Result<()> {
        let d_mem = self.heads * self.width;
        self.e = engram_kernels::alloc::try_vec_dims(&[max_t, d_mem], 0.0, "Engram row vectors")?;
        Ok(())
    }

    /// The source serving the rows.
    pub fn store(&self) -> &Arc<dyn RowSource> {
        &self.store
    }

    /// The table's directory (or the path a service serves it by).
    pub fn table(&self) -> &Path {
        &self.table
    }

    /// Time spent waiting for rows so far.
    pub fn stall(&self) -> StallStats {
        self.stall
    }

    /// The canonical ids of the last `N - 1` positions requested, oldest first: the context
    /// a next-token predictor such as a candidate table conditions on.
    pub fn history(&self) -> &[i64] {
        &self.history
    }

    /// Starts a new sequence: clears the hash history and every conv state, and cancels
    /// any speculation.
    pub fn reset(&mut self) {
        self.cancel_speculation();
        self.history.clear();
        for l in &mut self.layers {
            l.conv.reset();
            l.pending.clear();
        }
    }

    /// Requests the rows of new positions with raw ids `raw` (the prompt at the start of a
    /// sequence, then one token per step). Returns at once; I/O proceeds in the background.
    pub fn request(&mut self, raw: &[i64]) -> Result<()> {
        // The look-back context: the previous N - 1 canonical ids, then the new ones.
        self.compressed.clear();
        self.compressed.extend_from_slice(&self.history);
        let hist = self.history.len();
        for &id in raw {
            self.compressed.push(self.compression.compress_id(id)?);
        }
        let heads = self.heads;
        let n = raw.len();
        let max_rows = (self.store.max_batch_rows() / heads).max(1) * heads;
        let row_bytes = self.store.row_bytes();
        for l in &mut self.layers {
            self.row_ids.resize(n * heads, 0);
            for (i, out) in self.row_ids.chunks_exact_mut(heads).enumerate() {
                let window = &self.compressed[..hist + i + 1];
                self.hasher
                    .hash_last_into(l.table_layer, window, HashOutput::RowId, out)?;
            }
            for chunk in self.row_ids.chunks(max_rows) {
                let buf = match l.spare.pop() {
                    Some(b) if b.capacity() >= chunk.len() * row_bytes => b,
                    _ => self.store.alloc_rows(max_rows)?,
                };
                l.pending
                    .push_back(self.store.prefetch(l.table_layer, chunk, buf));
            }
        }
        let keep = self.max_ngram - 1;
        let all = &self.compressed[self.compressed.len().saturating_sub(keep)..];
        self.history.clear();
        self.history.extend_from_slice(all);
        Ok(())
    }

    /// Warms the store's cache with the rows the next position would need if its token were
    /// any of `candidates` (raw ids, most likely first, from any predictor: a candidate
    /// table, a draft model, MTP heads), at low priority so demand reads never wait behind
    /// them. Call it after [`EngramMemory::request`] for the current position; it cancels
    /// the previous call's speculation (its reads not yet issued never are). Candidates
    /// beyond what one store batch holds are ignored. Never blocks on I/O and never
    /// changes the rows any layer receives. Returns the rows offered to the store.
    pub fn speculate(&mut self, candidates: &[i64]) -> Result<usize> {
        self.cancel_speculation();
        let heads = self.heads;
        let n = candidates.len().min(self.store.max_batch_rows() / heads);
        if n == 0 {
            return Ok(0);
        }
        self.spec_canonical.clear();
        for &id in &candidates[..n] {
            self.spec_canonical.push(self.compression.compress_id(id)?);
        }
        let mut offered = 0;
        for l in &self.layers {
            self.spec_ids.resize(n * heads, 0);
            for (&c, out) in self
                .spec_canonical
                .iter()
                .zip(self.spec_ids.chunks_exact_mut(heads))
            {
                self.spec_window.clear();
                self.spec_window.extend_from_slice(&self.history);
                self.spec_window.push(c);
                self.hasher.hash_last_into(
                    l.table_layer,
                    &self.spec_window,
                    HashOutput::RowId,
                    out,
                )?;
            }
            let s = self.store.speculate(l.table_layer, &self.spec_ids)?;
            if s.accepted() {
                offered += self.spec_ids.len();
            }
            self.speculations.push(s);
        }
        Ok(offered)
    }

    /// Cancels the outstanding speculation, if any (rows already read stay in the cache).
    pub fn cancel_speculation(&mut self) {
        for s in self.speculations.drain(..) {
            s.cancel();
        }
    }

    /// Whether block `block` is an Engram block.
    pub fn slot_of(&self, block: usize) -> Option<usize> {
        self.layers.iter().position(|l| l.block == block)
    }

    /// Runs Engram block `slot` on the next `t` positions: waits for their rows (the oldest
    /// requests; later ones stay pending), builds the memory vectors and adds the module's
    /// output to `h` (`(t, d)`). `prefill` starts the sequence (conv state set from these
    /// positions); otherwise the positions continue it (a later prompt chunk, or one
    /// decoded token), each advancing the conv state.
    pub fn apply(
        &mut self,
        slot: usize,
        h: &mut [f32],
        t: usize,
        prefill: bool,
        y: &mut [f32],
    ) -> Result<()> {
        let l = &mut self.layers[slot];
        let d_mem = self.heads * self.width;
        let mut pos = 0usize;
        while pos < t {
            let Some(ticket) = l.pending.pop_front() else {
                break;
            };
            let t0 = Instant::now();
            let (buf, r) = ticket.wait();
            self.stall.stall += t0.elapsed();
            self.stall.waits += 1;
            r?;
            let n = buf.len() / (self.store.row_bytes() * self.heads);
            memory_vectors(
                self.dtype,
                self.width,
                self.heads,
                &buf,
                &mut self.e[pos * d_mem..(pos + n) * d_mem],
            )?;
            pos += n;
            l.spare.push(buf);
        }
        if pos != t {
            return Err(Error::Input(format!(
                "Engram block {}: rows for {pos} positions were requested, the layer runs {t}",
                l.block
            )));
        }
        let e = &self.e[..t * d_mem];
        let y = &mut y[..h.len()];
        if prefill {
            l.module
                .forward_prefill(e, h, 1, t, y, Some(std::slice::from_mut(&mut l.conv)))?;
        } else {
            let md = h.len() / t;
            for (i, (h, y)) in h.chunks_exact(md).zip(y.chunks_exact_mut(md)).enumerate() {
                l.module.forward_decode(
                    &e[i * d_mem..(i + 1) * d_mem],
                    h,
                    std::slice::from_mut(&mut l.conv),
                    y,
                    &mut l.scratch,
                )?;
            }
        }
        for (a, &b) in h.iter_mut().zip(y.iter()) {
            *a += b;
        }
        Ok(())
    }
}
