//! `model.safetensors`: every tensor the config implies is loaded by name, its shape and
//! dtype checked, and converted to f32 once. A missing tensor, a wrong shape or a tensor
//! the config does not explain is an error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use engram_kernels::engram_module::EngramModuleWeights;
use half::bf16;
use safetensors::{Dtype, SafeTensors};

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Largest `model.safetensors` accepted (read whole, then widened to f32).
pub const MAX_WEIGHTS_BYTES: engram_files::file::Limit = engram_files::file::Limit {
    what: "model.safetensors",
    name: "MAX_WEIGHTS_BYTES",
    bytes: 64 << 30,
};

/// One SwiGLU expert: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct ExpertWeights {
    /// SwiGLU gate projection.
    pub gate: Vec<f32>, // (inter, d)
    /// SwiGLU up projection.
    pub up: Vec<f32>, // (inter, d)
    /// Down projection back to the model width.
    pub down: Vec<f32>, // (d, inter)
}

/// One decoder block.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// RMSNorm weight before attention.
    pub input_norm: Vec<f32>, // (d,)
    /// Query projection.
    pub wq: Vec<f32>, // (d, d)
    /// Key projection.
    pub wk: Vec<f32>, // (d, d)
    /// Value projection.
    pub wv: Vec<f32>, // (d, d)
    /// Attention output projection.
    pub wo: Vec<f32>, // (d, d)
    /// RMSNorm weight before the MoE block.
    pub post_norm: Vec<f32>, // (d,)
    /// Router logits projection.
    pub router: Vec<f32>, // (experts, d)
    /// Routed experts, by index.
    pub experts: Vec<ExpertWeights>,
    /// Shared experts (every token).
    pub shared: Vec<ExpertWeights>,
    /// The Engram module's gate and conv parameters (its table lives in the store).
    pub engram: Option<EngramModuleWeights>,
    /// Hyper-connections around attention and the MoE (with more than one stream).
    pub hc: Option<[HyperWeights; 2]>,
}

/// One hyper-connection mapping (`attn_hc` / `mlp_hc`, or the head's `hc_head`):
/// `fn (rows, M d)`, `base (rows)`, `scale` (3 around a sublayer, 1 at the head), where
/// `rows = (2 + M) M` around a sublayer and `M` at the head.
#[derive(Debug, Clone)]
pub struct HyperWeights {
    /// `(rows, M d)`: the flattened, normalised streams to the mapping's logits.
    pub fn_: Vec<f32>,
    /// `(rows,)`: bias of those logits.
    pub base: Vec<f32>,
    /// Scale of each group of logits: 3 around a sublayer (`pre`, `post`, `comb`), 1 at the head.
    pub scale: Vec<f32>,
}

/// All weights, f32.
#[derive(Debug, Clone)]
pub struct Weights {
    /// Token embeddings (reduced vocabulary).
    pub embed: Vec<f32>, // (vocab, d)
    /// Decoder layers in order.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm weight.
    pub norm: Vec<f32>, // (d,)
    /// Output projection to logits.
    pub lm_head: Vec<f32>, // (vocab, d)
    /// The stream weights before the final norm (with more than one stream).
    pub hc_head: Option<HyperWeights>,
}

struct Loader<'a> {
    path: PathBuf,
    st: SafeTensors<'a>,
    used: BTreeSet<String>,
}

impl Loader<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let view = self.st.tensor(name).map_err(|_| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_owned(),
        })?;
        if view.shape() != shape {
            return Err(Error::BadTensor {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: format!("shape {shape:?}"),
                found: format!("shape {:?}", view.shape()),
            });
        }
        let data = view.data();
        let mut out: Vec<f32> = Vec::new();
        let numel = shape.iter().product::<usize>();
        engram_kernels::alloc::try_reserve(&mut out, numel, "model weights (f32)")?;
        match view.dtype() {
            Dtype::F32 => out.extend(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Dtype::BF16 => out.extend(
                data.chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            other => {
                return Err(Error::BadTensor {
                    path: self.path.clone(),
                    name: name.to_owned(),
                    expected: "dtype F32 or BF16".into(),
                    found: format!("dtype {other:?}"),
                });
            }
        };
        if let Some(i) = out.iter().position(|x| !x.is_finite()) {
            return Err(Error::BadTensor {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: "finite values".into(),
                found: format!("{} at index {i}", out[i]),
            });
        }
        self.used.insert(name.to_owned());
        Ok(out)
    }

    fn hyper(
        &mut self,
        prefix: &str,
        rows: usize,
        cols: usize,
        scales: usize,
    ) -> Result<HyperWeights> {
        Ok(HyperWeights {
            fn_: self.get(&format!("{prefix}.fn"), &[rows, cols])?,
            base: self.get(&format!("{prefix}.base"), &[rows])?,
            scale: self.get(&format!("{prefix}.scale"), &[scales])?,
        })
    }

    fn expert(&mut self, prefix: &str, d: usize, inter: usize) -> Result<ExpertWeights> {
        Ok(ExpertWeights {
            gate: self.get(&format!("{prefix}.gate_proj.weight"), &[inter, d])?,
            up: self.get(&format!("{prefix}.up_proj.weight"), &[inter, d])?,
            down: self.get(&format!("{prefix}.down_proj.weight"), &[d, inter])?,
        })
    }
}

impl Weights {
    /// Loads `model.safetensors` for `config`, checked against the `SHA256SUMS` beside it.
    pub fn load(path: &Path, config: &ModelConfig) -> Result<Self> {
        let (bytes, _) = engram_files::file::read_checked(path, MAX_WEIGHTS_BYTES)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut l = Loader {
            path: path.to_path_buf(),
            st,
            used: BTreeSet::new(),
        };
        let (d, v, inter) = (
            config.hidden_size,
            config.vocab_size,
            config.moe_intermediate_size,
        );
        let m = config.streams();
        let embed = l.get("embed_tokens.weight", &[v, d])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("layers.{i}");
            let experts = (0..config.n_routed_experts)
                .map(|e| l.expert(&format!("{p}.mlp.experts.{e}"), d, inter))
                .collect::<Result<_>>()?;
            let shared = (0..config.n_shared_experts)
                .map(|e| l.expert(&format!("{p}.mlp.shared_experts.{e}"), d, inter))
                .collect::<Result<_>>()?;
            let engram = match (&config.engram, config.is_engram_layer(i)) {
                (Some(e), true) => {
                    let q = format!("{p}.engram");
                    let w = e.kernel_size;
                    let per_stream = |l: &mut Loader<'_>, name: &str, shape: &[usize]| {
                        (0..m)
                            .map(|s| l.get(&format!("{q}.{name}.{s}.weight"), shape))
                            .collect::<Result<Vec<_>>>()
                    };
                    let key_proj_w = per_stream(&mut l, "key_projs", &[d, e.d_mem])?;
                    let key_proj_b = (0..m)
                        .map(|s| l.get(&format!("{q}.key_projs.{s}.bias"), &[d]))
                        .collect::<Result<Vec<_>>>()?;
                    // Without the short convolution (kernel 0, V4.1) there are no
                    // short_conv tensors (any present are unexplained: an error).
                    let (conv_norm, conv_w) = if w == 0 {
                        (Vec::new(), Vec::new())
                    } else {
                        (
                            per_stream(&mut l, "short_conv.norms", &[d])?,
                            l.get(&format!("{q}.short_conv.conv.weight"), &[m * d, 1, w])?,
                        )
                    };
                    Some(EngramModuleWeights {
                        value_proj_w: l.get(&format!("{q}.value_proj.weight"), &[d, e.d_mem])?,
                        value_proj_b: l.get(&format!("{q}.value_proj.bias"), &[d])?,
                        key_proj_w,
                        key_proj_b,
                        norm1: per_stream(&mut l, "norm1", &[d])?,
                        norm2: per_stream(&mut l, "norm2", &[d])?,
                        conv_norm,
                        conv_w,
                    })
                }
                _ => None,
            };
            let hc = match config.hyper() {
                Some(_) => Some([
                    l.hyper(&format!("{p}.attn_hc"), (2 + m) * m, m * d, 3)?,
                    l.hyper(&format!("{p}.mlp_hc"), (2 + m) * m, m * d, 3)?,
                ]),
                None => None,
            };
            layers.push(LayerWeights {
                input_norm: l.get(&format!("{p}.input_layernorm.weight"), &[d])?,
                wq: l.get(&format!("{p}.self_attn.q_proj.weight"), &[d, d])?,
                wk: l.get(&format!("{p}.self_attn.k_proj.weight"), &[d, d])?,
                wv: l.get(&format!("{p}.self_attn.v_proj.weight"), &[d, d])?,
                wo: l.get(&format!("{p}.self_attn.o_proj.weight"), &[d, d])?,
                post_norm: l.get(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
                router: l.get(
                    &format!("{p}.mlp.gate.weight"),
                    &[config.n_routed_experts, d],
                )?,
                experts,
                shared,
                engram,
                hc,
            });
        }
        let hc_head = match config.hyper() {
            Some(_) => Some(l.hyper("hc_head", m, m * d, 1)?),
            None => None,
        };
        let norm = l.get("norm.weight", &[d])?;
        let lm_head = l.get("lm_head.weight", &[v, d])?;
        let unused: Vec<String> =
            l.st.names()
                .into_iter()
                .filter(|n| !l.used.contains(*n))
                .map(str::to_owned)
                .collect();
        if !unused.is_empty() {
            return Err(Error::BadTensor {
                path: path.to_path_buf(),
                name: unused.join(", "),
                expected: "no tensors beyond those config.json implies".into(),
                found: format!("{} unexplained tensors", unused.len()),
            });
        }
        Ok(Self {
            embed,
            layers,
            norm,
            lm_head,
            hc_head,
        })
    }
}
