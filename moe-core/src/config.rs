//! `config.json` (HF-style, format `engram-moe-v1`, or `engram-moe-v2` = v1 plus the mHC
//! fields `hc_mult`, `hc_sinkhorn_iters`, `hc_eps`): every field is read and validated; an
//! unknown or missing field is an error. The Engram block's addressing is re-derived from its
//! config and must agree with the primes, offsets and multipliers the file records.

use std::collections::BTreeMap;
use std::path::Path;

use engram_files::file::Limit;
use engram_kernels::{EngramConfig, EngramLayout};
use serde::Deserialize;

use crate::error::{Result, config_err};

/// `format` of a `config.json` with a plain residual stream.
pub const CONFIG_FORMAT: &str = "engram-moe-v1";
/// Largest `config.json` accepted.
pub const MAX_CONFIG_BYTES: Limit = Limit {
    what: "config.json",
    name: "MAX_CONFIG_BYTES",
    bytes: 16 << 20,
};
/// Longest context accepted: the decode state holds `positions x hidden` keys and values per
/// layer and `positions^2` attention scores.
pub const MAX_POSITIONS: usize = 1 << 16;
/// `format` of a `config.json` with hyper-connections (ENGRAM-SPEC section 15).
pub const CONFIG_FORMAT_HC: &str = "engram-moe-v2";
/// Most residual streams a config may ask for.
pub const MAX_HC_MULT: usize = 16;
/// Most Sinkhorn-Knopp rounds a config may ask for.
pub const MAX_SINKHORN_ITERS: usize = 1000;
/// float32 machine epsilon, the key/query RMSNorm eps of the reference Engram module.
pub const F32_EPS: f64 = f32::EPSILON as f64;

/// The model's hyper-parameters, field for field as in `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// [`CONFIG_FORMAT`] (one residual stream) or [`CONFIG_FORMAT_HC`] (hyper-connections).
    pub format: String,
    /// Always `"engram_moe"`.
    pub model_type: String,
    /// The training code's class names (informational; not checked).
    pub architectures: Vec<String>,
    /// Dtype of the weights file: `"bfloat16"` or `"float32"` (computed in f32 either way).
    pub torch_dtype: String,
    /// Reduced vocabulary size, including the unknown id.
    pub vocab_size: usize,
    /// The unknown id (`vocab_size - 1`): never emitted.
    pub unk_token_id: usize,
    /// Reduced id of the beginning-of-sequence token.
    pub bos_token_id: usize,
    /// The tokenizer's full vocabulary size (Engram hashes raw ids).
    pub raw_vocab_size: usize,
    /// The tokenizer's (raw) id of the beginning-of-sequence token.
    pub raw_bos_token_id: u32,
    /// File in the model directory mapping reduced ids to raw tokenizer ids.
    pub vocab_file: String,
    /// SHA-256 (hex) of the `tokenizer.json` the model was trained with.
    pub tokenizer_sha256: String,
    /// Model width `d` (> 0; `head_dim * num_attention_heads`).
    pub hidden_size: usize,
    /// Decoder layers (> 0).
    pub num_hidden_layers: usize,
    /// Attention heads (> 0).
    pub num_attention_heads: usize,
    /// Key/value heads: must equal `num_attention_heads` (plain multi-head attention).
    pub num_key_value_heads: usize,
    /// Values per attention head (even, for RoPE).
    pub head_dim: usize,
    /// Must be false (no projection biases).
    pub attention_bias: bool,
    /// RoPE base (> 0).
    pub rope_theta: f64,
    /// Must be `"rotate_half"`.
    pub rope_style: String,
    /// Longest context in tokens (1..=[`MAX_POSITIONS`]).
    pub max_position_embeddings: usize,
    /// Eps of every RMSNorm in the decoder, in (0, 1).
    pub rms_norm_eps: f64,
    /// Must be `"silu"` (SwiGLU experts).
    pub hidden_act: String,
    /// Routed experts per MoE layer (1..=64).
    pub n_routed_experts: usize,
    /// Experts every token goes through, beside the routed ones.
    pub n_shared_experts: usize,
    /// Routed experts per token `k` (1..=`n_routed_experts`).
    pub num_experts_per_tok: usize,
    /// Hidden width of each expert (> 0).
    pub moe_intermediate_size: usize,
    /// Must be `"softmax"` (router scores).
    pub scoring_func: String,
    /// Whether the top-k router weights are renormalised to sum to 1.
    pub norm_topk_prob: bool,
    /// Must be 1.0.
    pub routed_scaling_factor: f64,
    /// Must be 0 (every layer is MoE).
    pub first_k_dense_replace: usize,
    /// Must be false (separate `lm_head`).
    pub tie_word_embeddings: bool,
    /// The Engram module, for a model with one.
    pub engram: Option<EngramModelConfig>,
    /// Residual streams `M` (format v2 only; v1 is one stream, a plain residual).
    #[serde(default)]
    pub hc_mult: Option<usize>,
    /// Sinkhorn-Knopp rounds of every `comb` (format v2 only).
    #[serde(default)]
    pub hc_sinkhorn_iters: Option<usize>,
    /// The eps of `pre`, `comb` and the head weights (format v2 only).
    #[serde(default)]
    pub hc_eps: Option<f64>,
}

/// Hyper-connection constants of a validated config (ENGRAM-SPEC section 15).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HyperConfig {
    /// Residual streams `M` (> 1).
    pub streams: usize,
    /// Sinkhorn-Knopp rounds.
    pub sinkhorn_iters: usize,
    /// Added to `pre`, to `comb` and its row/column sums, and to the head weights.
    pub eps: f32,
    /// The eps of the RMS normalisation of the flattened streams (`rms_norm_eps`).
    pub norm_eps: f32,
}

/// The `engram` block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngramModelConfig {
    /// Decoder layers (0-based, each < `num_hidden_layers`) with an Engram block.
    pub layer_ids: Vec<u64>,
    /// Largest n-gram order `N` (orders 2..=N).
    pub max_ngram: usize,
    /// Hash heads per order `K`.
    pub n_head_per_ngram: usize,
    /// Memory width per order (`K * head_dim`).
    pub n_embed_per_ngram: usize,
    /// Values per table row (`n_embed_per_ngram / n_head_per_ngram`).
    pub head_dim: usize,
    /// Hash heads in all, `(N - 1) * K`.
    pub n_hash_heads: usize,
    /// Width of the gathered memory, `(N - 1) * n_embed_per_ngram`.
    pub d_mem: usize,
    /// The prime rule's base per order (rows per head start at the next prime above it).
    pub base_sizes: Vec<u64>,
    /// Residual streams; must equal the model's (1 for format v1).
    pub hc_mult: usize,
    /// Short-convolution taps: 4, or 0 / absent for a module without it (DeepSeek-V4.1).
    #[serde(default)]
    pub kernel_size: usize,
    /// Its dilation (`max_ngram`); 0 / absent without the convolution.
    #[serde(default)]
    pub conv_dilation: usize,
    /// Seed of the hash multipliers.
    pub seed: u64,
    /// Raw tokenizer id used as padding before the first token.
    pub pad_id: i64,
    /// `pad_id` after tokenizer compression.
    pub compressed_pad_id: i64,
    /// Size of the compressed vocabulary `V'` (the multipliers depend on it).
    pub compressed_vocab_size: u64,
    /// File of the compression lookup (raw id -> compressed id).
    pub compression_table: String,
    /// SHA-256 (hex) of the lookup as little-endian i32s; checked against the tokenizer's.
    pub compression_lookup_sha256_i32le: String,
    /// Eps of the key RMSNorm: must be [`F32_EPS`].
    pub key_norm_eps: f64,
    /// Eps of the query RMSNorm: must be [`F32_EPS`].
    pub query_norm_eps: f64,
    /// Eps of the convolution's RMSNorm: must be 1e-5.
    #[serde(default = "default_conv_norm_eps")]
    pub conv_norm_eps: f64,
    /// Lower clamp of the gate score: must be 1e-6.
    pub score_clamp_min: f64,
    /// The gate's name as the training code wrote it (informational).
    pub gate: String,
    /// Per layer id: the primes (rows) of each order's heads; must equal the prime rule's.
    pub primes: BTreeMap<String, Vec<Vec<u64>>>,
    /// Per layer id: first row of each head in the layer's table.
    pub offsets: BTreeMap<String, Vec<u64>>,
    /// Per layer id: rows in the layer's table.
    pub total_rows: BTreeMap<String, u64>,
    /// Per layer id: the hash multipliers (from `seed` and `V'`).
    pub multipliers: BTreeMap<String, Vec<i64>>,
    /// The training checkpoint's table file (its SHA-256 ties an imported table to the model).
    pub table_file: String,
    /// Dtype the table was trained in (informational; rows come from the Engram table).
    pub table_dtype: String,
    /// Whether training started the convolution at zero (informational).
    #[serde(default)]
    pub conv_zero_init_in_training: bool,
}

/// The convolution RMSNorm's eps (the reference module's), when a config without the
/// convolution leaves it out.
fn default_conv_norm_eps() -> f64 {
    1e-5
}

impl EngramModelConfig {
    /// The addressing config for `engram-kernels`.
    pub fn addressing(&self) -> EngramConfig {
        EngramConfig {
            max_ngram: self.max_ngram,
            n_heads: self.n_head_per_ngram,
            base_sizes: self.base_sizes.clone(),
            layer_ids: self.layer_ids.clone(),
            seed: self.seed,
            pad_id: self.pad_id,
        }
    }
}

fn ensure(path: &Path, cond: bool, reason: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(config_err(path, reason()))
    }
}

impl ModelConfig {
    /// Reads `config.json` (checked against the `SHA256SUMS` beside it) and validates it.
    pub fn load(path: &Path) -> Result<Self> {
        let (bytes, _) = engram_files::file::read_checked(path, MAX_CONFIG_BYTES)?;
        Self::from_json(&bytes, path)
    }

    /// Parses and validates the bytes of `config.json` read from `path`.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        let c: ModelConfig =
            serde_json::from_slice(bytes).map_err(|e| config_err(path, e.to_string()))?;
        c.validate(path)?;
        Ok(c)
    }

    /// Checks every field and cross-field constraint this decoder relies on.
    pub fn validate(&self, p: &Path) -> Result<()> {
        self.validate_hc(p)?;
        ensure(p, self.model_type == "engram_moe", || {
            format!("model_type {:?}", self.model_type)
        })?;
        ensure(
            p,
            matches!(self.torch_dtype.as_str(), "bfloat16" | "float32"),
            || {
                format!(
                    "torch_dtype {:?}: expected bfloat16 or float32",
                    self.torch_dtype
                )
            },
        )?;
        ensure(
            p,
            self.vocab_size >= 2 && self.unk_token_id == self.vocab_size - 1,
            || "unk_token_id must be vocab_size - 1".into(),
        )?;
        ensure(p, self.bos_token_id < self.unk_token_id, || {
            "bos_token_id out of range".into()
        })?;
        ensure(p, self.vocab_size - 1 <= self.raw_vocab_size, || {
            "the reduced vocabulary is larger than the raw one".into()
        })?;
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("n_routed_experts", self.n_routed_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("moe_intermediate_size", self.moe_intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            ensure(p, v > 0, || format!("{name} must be > 0"))?;
        }
        ensure(p, self.max_position_embeddings <= MAX_POSITIONS, || {
            format!(
                "max_position_embeddings {} is above MAX_POSITIONS {MAX_POSITIONS} (the \
                 attention scores of a full context are positions^2 floats)",
                self.max_position_embeddings
            )
        })?;
        ensure(
            p,
            self.num_key_value_heads == self.num_attention_heads,
            || {
                "only plain multi-head attention is supported (num_key_value_heads = num_attention_heads)".into()
            },
        )?;
        ensure(
            p,
            self.head_dim * self.num_attention_heads == self.hidden_size
                && self.head_dim.is_multiple_of(2),
            || "head_dim * num_attention_heads must equal hidden_size, head_dim even".into(),
        )?;
        ensure(p, self.n_routed_experts <= 64, || {
            "at most 64 routed experts are supported".into()
        })?;
        ensure(p, self.num_experts_per_tok <= self.n_routed_experts, || {
            "num_experts_per_tok exceeds n_routed_experts".into()
        })?;
        ensure(
            p,
            !self.attention_bias
                && self.rope_style == "rotate_half"
                && self.hidden_act == "silu"
                && self.scoring_func == "softmax"
                && self.routed_scaling_factor == 1.0
                && self.first_k_dense_replace == 0
                && !self.tie_word_embeddings,
            || {
                "unsupported architecture variant (bias, rope style, activation, scoring, scaling, dense layers or tied embeddings)".into()
            },
        )?;
        ensure(
            p,
            self.rope_theta > 0.0 && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0,
            || "rope_theta must be > 0 and rms_norm_eps in (0, 1)".into(),
        )?;
        if let Some(e) = &self.engram {
            self.validate_engram(p, e)?;
        }
        Ok(())
    }

    /// The format and the mHC fields: all three in v2, none in v1.
    fn validate_hc(&self, p: &Path) -> Result<()> {
        let fields = [
            self.hc_mult.is_some(),
            self.hc_sinkhorn_iters.is_some(),
            self.hc_eps.is_some(),
        ];
        match self.format.as_str() {
            CONFIG_FORMAT => ensure(p, fields == [false; 3], || {
                format!("hc_mult, hc_sinkhorn_iters and hc_eps need format {CONFIG_FORMAT_HC:?}")
            }),
            CONFIG_FORMAT_HC => {
                let (Some(m), Some(iters), Some(eps)) =
                    (self.hc_mult, self.hc_sinkhorn_iters, self.hc_eps)
                else {
                    return Err(config_err(
                        p,
                        format!(
                            "format {CONFIG_FORMAT_HC:?} needs hc_mult, hc_sinkhorn_iters and hc_eps"
                        ),
                    ));
                };
                ensure(p, (1..=MAX_HC_MULT).contains(&m), || {
                    format!("hc_mult {m}: expected 1..={MAX_HC_MULT}")
                })?;
                ensure(p, (1..=MAX_SINKHORN_ITERS).contains(&iters), || {
                    format!("hc_sinkhorn_iters {iters}: expected 1..={MAX_SINKHORN_ITERS}")
                })?;
                ensure(p, eps > 0.0 && eps < 1.0, || {
                    format!("hc_eps {eps}: expected in (0, 1)")
                })
            }
            other => Err(config_err(
                p,
                format!("format {other:?}, expected {CONFIG_FORMAT:?} or {CONFIG_FORMAT_HC:?}"),
            )),
        }
    }

    /// Residual streams: 1 (a plain residual) unless the config has hyper-connections.
    pub fn streams(&self) -> usize {
        self.hc_mult.unwrap_or(1)
    }

    /// The hyper-connection settings when the residual has more than one stream.
    pub fn hyper(&self) -> Option<HyperConfig> {
        match (self.hc_mult, self.hc_sinkhorn_iters, self.hc_eps) {
            (Some(streams), Some(sinkhorn_iters), Some(eps)) if streams > 1 => Some(HyperConfig {
                streams,
                sinkhorn_iters,
                eps: eps as f32,
                norm_eps: self.rms_norm_eps as f32,
            }),
            _ => None,
        }
    }

    fn validate_engram(&self, p: &Path, e: &EngramModelConfig) -> Result<()> {
        let (n, k) = (e.max_ngram, e.n_head_per_ngram);
        ensure(p, n >= 2 && k >= 1, || {
            "engram: max_ngram >= 2 and n_head_per_ngram >= 1".into()
        })?;
        ensure(
            p,
            e.n_embed_per_ngram.is_multiple_of(k) && e.head_dim == e.n_embed_per_ngram / k,
            || "engram.head_dim must be n_embed_per_ngram / n_head_per_ngram".into(),
        )?;
        ensure(
            p,
            e.n_hash_heads == (n - 1) * k && e.d_mem == (n - 1) * e.n_embed_per_ngram,
            || "engram.n_hash_heads / d_mem disagree with max_ngram and heads".into(),
        )?;
        ensure(p, e.hc_mult == self.streams(), || {
            format!(
                "engram.hc_mult {} must equal the residual streams (hc_mult {})",
                e.hc_mult,
                self.streams()
            )
        })?;
        let no_conv = e.kernel_size == 0 && (e.conv_dilation == 0 || e.conv_dilation == n);
        ensure(
            p,
            (e.kernel_size == 4 && e.conv_dilation == n) || no_conv,
            || {
                "engram: conv kernel must be 4 with dilation max_ngram, or 0 / absent (no short \
             convolution, as in DeepSeek-V4.1)"
                    .into()
            },
        )?;
        ensure(
            p,
            e.key_norm_eps == F32_EPS
                && e.query_norm_eps == F32_EPS
                && e.conv_norm_eps == 1e-5
                && e.score_clamp_min == 1e-6,
            || "engram: eps constants differ from the reference module".into(),
        )?;
        ensure(
            p,
            !e.layer_ids.is_empty()
                && e.layer_ids
                    .iter()
                    .all(|&l| (l as usize) < self.num_hidden_layers),
            || {
                format!(
                    "engram.layer_ids {:?} must name existing layers",
                    e.layer_ids
                )
            },
        )?;
        let layout = EngramLayout::new(
            &e.addressing(),
            e.compressed_vocab_size,
            e.compressed_pad_id,
        )
        .map_err(|err| config_err(p, format!("engram addressing: {err}")))?;
        for l in &layout.layers {
            let key = l.layer_id.to_string();
            let primes: Vec<u64> = e.primes.get(&key).map(|v| v.concat()).unwrap_or_default();
            ensure(p, primes == l.primes, || {
                format!("engram.primes[{key}] disagree with the prime rule")
            })?;
            ensure(p, e.offsets.get(&key) == Some(&l.offsets), || {
                format!("engram.offsets[{key}] disagree with the primes")
            })?;
            ensure(p, e.total_rows.get(&key) == Some(&l.total_rows), || {
                format!("engram.total_rows[{key}] disagree with the primes")
            })?;
            ensure(p, e.multipliers.get(&key) == Some(&l.multipliers), || {
                format!("engram.multipliers[{key}] disagree with the seed and V'")
            })?;
        }
        Ok(())
    }

    /// Whether block `layer` carries an Engram module.
    pub fn is_engram_layer(&self, layer: usize) -> bool {
        self.engram
            .as_ref()
            .is_some_and(|e| e.layer_ids.contains(&(layer as u64)))
    }
}
