//! The decoder: embedding -> blocks (Engram? -> attention -> MoE) -> norm -> LM head.
//!
//! The residual is one stream, or `M` streams with hyper-connections (`hyper`): then the
//! embedding is copied into every stream, Engram reads and writes each stream, attention
//! and the MoE read a weighted sum of the streams and write back through a doubly
//! stochastic mix, and the head mixes the streams before the final norm.
//!
//! `Model::forward` runs a chunk of `t` new positions starting at the state's position: the
//! whole prompt at once (prefill), then one token per step (decode). Every buffer lives in
//! [`DecodeState`], allocated once for the model's context length (its trained
//! `max_position_embeddings`, or a longer one set with [`Model::set_context`]).

pub mod attention;
pub mod engram;
pub mod hyper_connections;
pub mod moe;
pub mod ops;

use attention::{AttnScratch, attention};
use engram::EngramMemory;
use hyper_connections::HyperScratch;
use moe::{MoeScratch, moe};
use ops::{Rope, linear, rms_norm};

use crate::config::{MAX_POSITIONS, ModelConfig};
use crate::error::{Error, Result};
use crate::weights::Weights;

/// A zeroed f32 buffer of `dims` (sizes from `config.json`), allocated fallibly.
pub(crate) fn zeros(dims: &[usize], what: &'static str) -> Result<Vec<f32>> {
    Ok(engram_kernels::alloc::try_vec_dims(dims, 0.0, what)?)
}

/// Which positions of a chunk get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position (evaluation, golden checks).
    All,
}

/// A loaded model.
#[derive(Debug)]
pub struct Model {
    /// The validated config.
    pub config: ModelConfig,
    /// The weights, in f32.
    pub weights: Weights,
    rope: Rope,
    // Positions a sequence may hold: the trained context unless `set_context` changed it.
    context: usize,
}

/// Per-sequence state: KV cache, position, and every scratch buffer.
#[derive(Debug)]
pub struct DecodeState {
    /// Tokens in the KV cache (the next token's position).
    pub pos: usize,
    max_t: usize,
    k_cache: Vec<f32>, // (layers, max_pos, d)
    v_cache: Vec<f32>, // (layers, max_pos, d)
    h: Vec<f32>,       // (max_t, M, d) the residual streams
    xb: Vec<f32>,      // (max_t, d)
    xb2: Vec<f32>,     // (max_t, d)
    y: Vec<f32>,       // (max_t, M, d) Engram output
    attn: AttnScratch,
    moe: MoeScratch,
    hc: HyperScratch,
    /// Logits of every position of the last chunk, `(t, vocab)`.
    pub logits: Vec<f32>,
}

impl Model {
    /// Wraps validated config and weights.
    pub fn new(config: ModelConfig, weights: Weights) -> Self {
        let context = config.max_position_embeddings;
        let rope = Rope::new(config.head_dim, config.rope_theta, context);
        Self {
            config,
            weights,
            rope,
            context,
        }
    }

    /// Positions a sequence may hold: the trained context (`max_position_embeddings`)
    /// unless [`Model::set_context`] changed it.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Lets sequences hold `positions` tokens (1..=[`MAX_POSITIONS`]), computing RoPE for
    /// them. Past the trained context (`max_position_embeddings`) the rotary angles
    /// extrapolate to positions the model never saw: the logits there are not what it
    /// learned (for timing long prompts). States made before this call keep their old
    /// size; make new ones with [`Model::new_state`].
    pub fn set_context(&mut self, positions: usize) -> Result<()> {
        if !(1..=MAX_POSITIONS).contains(&positions) {
            return Err(Error::Input(format!(
                "context of {positions} positions: expected 1..={MAX_POSITIONS} (MAX_POSITIONS)"
            )));
        }
        let c = &self.config;
        self.rope = Rope::new(c.head_dim, c.rope_theta, positions);
        self.context = positions;
        Ok(())
    }

    /// Bytes of the f32 buffers [`Model::new_state`] allocates for a context of
    /// `positions` processed in chunks of up to `max_t` (small index buffers aside):
    /// `layers x positions x hidden` keys and values, `max_t x positions` attention
    /// scores, `max_t x vocab` logits, and per-position activations (with the Engram
    /// memory's row vectors, which [`EngramMemory`] holds).
    pub fn state_bytes(&self, max_t: usize, positions: usize) -> u64 {
        let c = &self.config;
        let (d, m, hd) = (c.hidden_size, c.streams(), c.head_dim);
        let positions = positions.max(1);
        let (t, p) = (max_t.clamp(1, positions) as u128, positions as u128);
        let per_position = 2 * c.num_hidden_layers * d; // keys and values
        let per_query = 2 * m * d // residual streams and Engram output
            + 2 * d // hidden scratch
            + 4 * d + 2 * hd // attention q, k, v, o and one head's queries and output
            + c.n_routed_experts + 2 * d + 2 * c.moe_intermediate_size // MoE
            + if m > 1 { (2 * m + 4) * m + d } else { 0 } // hyper-connections
            + c.engram.as_ref().map_or(0, |e| e.d_mem) // Engram rows' vectors
            + c.vocab_size; // logits
        let floats = p * per_position as u128
            + t * p // attention scores
            + 2 * p * hd as u128 // one head's keys and values
            + t * per_query as u128;
        u64::try_from(floats * 4).unwrap_or(u64::MAX)
    }

    /// A fresh state for one sequence of up to [`Model::context`] tokens, processed in
    /// chunks of at most `max_t` positions.
    pub fn new_state(&self, max_t: usize) -> Result<DecodeState> {
        let c = &self.config;
        let (d, mp, layers, m) = (
            c.hidden_size,
            self.context,
            c.num_hidden_layers,
            c.streams(),
        );
        let max_t = max_t.clamp(1, mp);
        Ok(DecodeState {
            pos: 0,
            max_t,
            k_cache: zeros(&[layers, mp, d], "key cache")?,
            v_cache: zeros(&[layers, mp, d], "value cache")?,
            h: zeros(&[max_t, m, d], "hidden states")?,
            xb: zeros(&[max_t, d], "hidden scratch")?,
            xb2: zeros(&[max_t, d], "hidden scratch")?,
            y: zeros(&[max_t, m, d], "Engram output")?,
            attn: AttnScratch::new(max_t, mp, d, c.head_dim)?,
            moe: MoeScratch::new(
                max_t,
                d,
                c.moe_intermediate_size,
                c.n_routed_experts,
                c.num_experts_per_tok,
            )?,
            hc: HyperScratch::new(if m > 1 { max_t } else { 0 }, m, d),
            logits: zeros(&[max_t, c.vocab_size], "logits")?,
        })
    }

    /// Runs `tokens` (reduced ids) as the next positions of the sequence in `s`. With
    /// `memory`, the Engram blocks use rows already requested for these positions (see
    /// [`EngramMemory::request`]); without it they are skipped (Engram zeroed). Logits land
    /// in `s.logits`: for every position with `Logits::All` (`(t, vocab)`), else for the
    /// last one only (row 0).
    pub fn forward(
        &self,
        tokens: &[u32],
        s: &mut DecodeState,
        mut memory: Option<&mut EngramMemory>,
        which: Logits,
    ) -> Result<()> {
        let c = &self.config;
        let (d, v, t) = (c.hidden_size, c.vocab_size, tokens.len());
        if t == 0 {
            return Err(Error::Input("no tokens to run".into()));
        }
        if t > s.max_t {
            return Err(Error::Input(format!(
                "chunk of {t} positions exceeds the state's {}",
                s.max_t
            )));
        }
        let mp = self.context;
        if s.k_cache.len() != c.num_hidden_layers * mp * c.hidden_size {
            return Err(Error::Input(format!(
                "the state holds {} positions, the model's context is {mp}: make it with \
                 Model::new_state after Model::set_context",
                s.k_cache.len() / (c.num_hidden_layers * c.hidden_size)
            )));
        }
        if s.pos + t > mp {
            return Err(Error::ContextFull {
                len: s.pos + t,
                max: mp,
            });
        }
        // Position 0 starts the sequence; later chunks (a prompt's next chunk, a decoded
        // token) continue it.
        let prefill = s.pos == 0;
        let w = &self.weights;
        let eps = c.rms_norm_eps as f32;
        let hyper = c.hyper();
        let m = c.streams();
        let md = m * d;
        for (i, &tok) in tokens.iter().enumerate() {
            let tok = tok as usize;
            if tok >= v {
                return Err(Error::Input(format!(
                    "token id {tok} is outside the vocabulary of {v}"
                )));
            }
            for stream in s.h[i * md..(i + 1) * md].chunks_exact_mut(d) {
                stream.copy_from_slice(&w.embed[tok * d..(tok + 1) * d]);
            }
        }
        for (li, lw) in w.layers.iter().enumerate() {
            let h = &mut s.h[..t * md];
            if let Some(mem) = memory.as_deref_mut()
                && let Some(slot) = mem.slot_of(li)
            {
                mem.apply(slot, h, t, prefill, &mut s.y[..t * md])?;
            }
            let hc = hyper.zip(lw.hc.as_ref());
            let layer_cache = li * mp * d..(li + 1) * mp * d;
            let input: &[f32] = match hc {
                Some((hc, hw)) => hyper_connections::enter(&hw[0], &hc, h, t, d, &mut s.hc),
                None => h,
            };
            rms_norm(&mut s.xb[..t * d], input, &lw.input_norm, eps);
            attention(
                lw,
                &self.rope,
                c.num_attention_heads,
                &s.xb[..t * d],
                t,
                s.pos,
                &mut s.k_cache[layer_cache.clone()],
                &mut s.v_cache[layer_cache],
                &mut s.attn,
                &mut s.xb2[..t * d],
            );
            residual_add(h, &s.xb2[..t * d], hc.is_some(), m, d, &mut s.hc);
            let input: &[f32] = match hc {
                Some((hc, hw)) => hyper_connections::enter(&hw[1], &hc, h, t, d, &mut s.hc),
                None => h,
            };
            rms_norm(&mut s.xb[..t * d], input, &lw.post_norm, eps);
            moe(
                lw,
                c.num_experts_per_tok,
                c.norm_topk_prob,
                &s.xb[..t * d],
                t,
                &mut s.moe,
                &mut s.xb2[..t * d],
            );
            residual_add(h, &s.xb2[..t * d], hc.is_some(), m, d, &mut s.hc);
        }
        let (first, rows) = match which {
            Logits::All => (0, t),
            Logits::Last => (t - 1, 1),
        };
        let streams = &s.h[first * md..t * md];
        let hs: &[f32] = match hyper.zip(w.hc_head.as_ref()) {
            Some((hc, hw)) => hyper_connections::head(hw, &hc, streams, rows, d, &mut s.hc),
            None => streams,
        };
        rms_norm(&mut s.xb[..rows * d], hs, &w.norm, eps);
        linear(
            &mut s.logits[..rows * v],
            &s.xb[..rows * d],
            &w.lm_head,
            rows,
            d,
            v,
        );
        s.pos += t;
        Ok(())
    }

    /// Logits row `i` of the last chunk (position `i` after `Logits::All`; 0 is the last
    /// position after `Logits::Last`).
    pub fn logits<'a>(&self, s: &'a DecodeState, i: usize) -> &'a [f32] {
        let v = self.config.vocab_size;
        &s.logits[i * v..(i + 1) * v]
    }
}

/// Adds a sublayer's output `f (t, d)` to the residual `h (t, M, d)`: through the
/// coefficients [`hyper_connections::enter`] left in `hc` with hyper-connections, else `h += f`.
fn residual_add(h: &mut [f32], f: &[f32], hyper: bool, m: usize, d: usize, hc: &mut HyperScratch) {
    if hyper {
        hyper_connections::leave(h, f, m, d, hc);
    } else {
        for (a, &b) in h.iter_mut().zip(f) {
            *a += b;
        }
    }
}

impl DecodeState {
    /// Starts a new sequence (the KV cache is overwritten as positions are reused).
    pub fn reset(&mut self) {
        self.pos = 0;
    }
}
