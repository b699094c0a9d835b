//! The Engram module forward pass (`ENGRAM-SPEC.md` section 8; the `engram-forward-v1`
//! conformance README is normative): fused value + key projections, the per-branch
//! context-aware gate, RMSNorm, the dilated depthwise causal convolution, SiLU, residual.
//!
//! Shapes (row-major): `e (B, T, d_mem)`, `hidden (B, T, M, d)`, `y (B, T, M, d)`.
//! Prefill takes whole sequences (every sequence starts from zeros, as the reference does)
//! and can hand back each sequence's [`ConvState`]; decode takes one new position per
//! sequence and continues from that state, so step-by-step decode equals prefill.
//!
//! Fast path: the value projection and the M key projections are one `[(1+M) d, d_mem]`
//! weight, so `e` is read once per token (one GEMM for prefill, a register-tiled
//! small-batch kernel for decode, both threaded with rayon); the key/query RMSNorms and the
//! dot product collapse into one pass (`s = sum(k h g1 g2) * r_k r_h / sqrt(d)`); the
//! convolution RMSNorm of `u = alpha v` reuses `sum(v^2)`.

use rayon::prelude::*;

use crate::conv::ConvState;
use crate::cpu;
use crate::error::{Error, Result, check_len};
use crate::gate::{CONV_NORM_EPS, KEY_NORM_EPS_F32, gate_logit, rms_inv, sigmoid, silu};

/// Largest supported width of any dimension (keeps products far from overflow).
pub const MAX_DIM: usize = 1 << 20;

/// Sizes and constants of one Engram module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngramModuleConfig {
    /// Backbone width `d`.
    pub hidden_size: usize,
    /// Hyper-connection branches `M` (1 allowed).
    pub hc_mult: usize,
    /// Memory vector width `d_mem = (N - 1) * K * D_h`.
    pub d_mem: usize,
    /// Convolution taps `w` (4 in the paper's configurations); 0: no short convolution
    /// (DeepSeek-V4.1 removed it), so `y = alpha v` and the conv weights are empty.
    pub kernel_size: usize,
    /// Convolution dilation (the largest n-gram order `N`).
    pub dilation: usize,
    /// Eps of the key and query RMSNorms (2^-23 for float32 weights).
    pub key_norm_eps: f32,
    /// Eps of the convolution RMSNorm (1e-5).
    pub conv_norm_eps: f32,
}

impl EngramModuleConfig {
    /// A config with the reference's constants (kernel 4, dilation `max_ngram`, float32 eps).
    pub fn new(hidden_size: usize, hc_mult: usize, d_mem: usize, max_ngram: usize) -> Self {
        Self {
            hidden_size,
            hc_mult,
            d_mem,
            kernel_size: 4,
            dilation: max_ngram,
            key_norm_eps: KEY_NORM_EPS_F32,
            conv_norm_eps: CONV_NORM_EPS,
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.kernel_size > MAX_DIM {
            return Err(Error::InvalidConfig {
                field: "kernel_size",
                value: self.kernel_size.to_string(),
                reason: "must be in 0..=2^20 (0: no short convolution)",
            });
        }
        let dims = [
            ("hidden_size", self.hidden_size),
            ("hc_mult", self.hc_mult),
            ("d_mem", self.d_mem),
            ("dilation", self.dilation),
        ];
        for (field, v) in dims {
            if v == 0 || v > MAX_DIM {
                return Err(Error::InvalidConfig {
                    field,
                    value: v.to_string(),
                    reason: "must be in 1..=2^20",
                });
            }
        }
        for (field, v) in [
            ("key_norm_eps", self.key_norm_eps),
            ("conv_norm_eps", self.conv_norm_eps),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::InvalidConfig {
                    field,
                    value: v.to_string(),
                    reason: "must be finite and non-negative",
                });
            }
        }
        Ok(())
    }

    /// Convolution channels `M * d`.
    pub fn channels(&self) -> usize {
        self.hc_mult * self.hidden_size
    }

    /// Whether the module has its short convolution (`kernel_size > 0`).
    pub fn has_conv(&self) -> bool {
        self.kernel_size > 0
    }

    /// Positions of history a decode state keeps: `(w - 1) * dilation` (0 without a
    /// convolution).
    pub fn conv_history(&self) -> usize {
        self.kernel_size.saturating_sub(1) * self.dilation
    }
}

/// The module's parameters, named and laid out as in the reference (`[out, in]` weights).
/// An empty bias vector means "no bias".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngramModuleWeights {
    /// `value_proj.weight`, `(d, d_mem)`.
    pub value_proj_w: Vec<f32>,
    /// `value_proj.bias`, `(d)` or empty.
    pub value_proj_b: Vec<f32>,
    /// `key_projs.{m}.weight`, M x `(d, d_mem)`.
    pub key_proj_w: Vec<Vec<f32>>,
    /// `key_projs.{m}.bias`, M x (`(d)` or empty).
    pub key_proj_b: Vec<Vec<f32>>,
    /// `norm1.{m}.weight` (key RMSNorm gain), M x `(d)`.
    pub norm1: Vec<Vec<f32>>,
    /// `norm2.{m}.weight` (query RMSNorm gain), M x `(d)`.
    pub norm2: Vec<Vec<f32>>,
    /// `short_conv.norms.{m}.weight`, M x `(d)`; empty without a convolution.
    pub conv_norm: Vec<Vec<f32>>,
    /// `short_conv.conv.weight`, `(M * d, w)`: channel `c = m * d + i`, tap `j`.
    pub conv_w: Vec<f32>,
}

fn check_finite(what: &'static str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::InvalidValue {
            what,
            reason: format!("value {} at index {i} is not finite", v[i]),
        }),
    }
}

impl EngramModuleWeights {
    /// Checks every shape against `config` and that every value is finite.
    pub fn validate(&self, config: &EngramModuleConfig) -> Result<()> {
        config.validate()?;
        let (d, m, dm) = (config.hidden_size, config.hc_mult, config.d_mem);
        check_len(
            "value_proj.weight (d * d_mem)",
            d * dm,
            self.value_proj_w.len(),
        )?;
        check_finite("value_proj.weight", &self.value_proj_w)?;
        if !self.value_proj_b.is_empty() {
            check_len("value_proj.bias (d)", d, self.value_proj_b.len())?;
            check_finite("value_proj.bias", &self.value_proj_b)?;
        }
        let conv_branches = if config.has_conv() { m } else { 0 };
        for (what, v, want) in [
            ("key_projs.weight (one per branch)", &self.key_proj_w, m),
            ("key_projs.bias (one per branch)", &self.key_proj_b, m),
            ("norm1 (one per branch)", &self.norm1, m),
            ("norm2 (one per branch)", &self.norm2, m),
            (
                "short_conv.norms (one per branch; none when kernel_size is 0)",
                &self.conv_norm,
                conv_branches,
            ),
        ] {
            check_len(what, want, v.len())?;
        }
        for b in 0..m {
            check_len(
                "key_projs.weight (d * d_mem)",
                d * dm,
                self.key_proj_w[b].len(),
            )?;
            check_finite("key_projs.weight", &self.key_proj_w[b])?;
            if !self.key_proj_b[b].is_empty() {
                check_len("key_projs.bias (d)", d, self.key_proj_b[b].len())?;
                check_finite("key_projs.bias", &self.key_proj_b[b])?;
            }
            let conv_norm = self.conv_norm.get(b).into_iter();
            for (what, v) in [
                ("norm1.weight (d)", &self.norm1[b]),
                ("norm2.weight (d)", &self.norm2[b]),
            ]
            .into_iter()
            .chain(conv_norm.map(|v| ("short_conv.norms.weight (d)", v)))
            {
                check_len(what, d, v.len())?;
                check_finite(what, v)?;
            }
        }
        check_len(
            "short_conv.conv.weight (M * d * w; empty when kernel_size is 0)",
            m * d * config.kernel_size,
            self.conv_w.len(),
        )?;
        check_finite("short_conv.conv.weight", &self.conv_w)?;
        Ok(())
    }
}

/// Every intermediate of a forward pass, shaped as in the conformance files.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ForwardTrace {
    /// `(B, T, d)`
    pub v: Vec<f32>,
    /// `(B, T, M, d)`
    pub k: Vec<f32>,
    /// `(B, T, M, d)`
    pub k_normed: Vec<f32>,
    /// `(B, T, M, d)`
    pub q_normed: Vec<f32>,
    /// `(B, T, M)`
    pub s: Vec<f32>,
    /// `(B, T, M)`
    pub gate_logit: Vec<f32>,
    /// `(B, T, M)`
    pub alpha: Vec<f32>,
    /// `(B, T, M, d)`
    pub u: Vec<f32>,
    /// `(B, T, M, d)`
    pub conv_in_normed: Vec<f32>,
    /// `(B, T, M, d)`
    pub conv_pre_act: Vec<f32>,
    /// `(B, T, M, d)`
    pub conv_out: Vec<f32>,
    /// `(B, T, M, d)`
    pub y: Vec<f32>,
}

/// A validated module, its weights rearranged for the fast path.
#[derive(Debug, Clone)]
pub struct EngramModule {
    config: EngramModuleConfig,
    weights: EngramModuleWeights,
    // ((1 + M) * d, d_mem): value rows, then branch 0 key rows, ...
    w_all: Vec<f32>,
    // ((1 + M) * d)
    b_all: Vec<f32>,
    // (M * d) each
    g_key: Vec<f32>,
    g_query: Vec<f32>,
    g_kq: Vec<f32>,
    g_conv: Vec<f32>,
    // (w, M * d): tap-major so the inner loop runs over channels
    conv_wt: Vec<f32>,
}

/// Per-call buffers of [`EngramModule::forward_decode`], allocated once for up to
/// `max_batch` sequences.
#[derive(Debug, Clone)]
pub struct DecodeScratch {
    max_batch: usize,
    // (d, M, d_mem) of the module it was made for
    dims: (usize, usize, usize),
    // (N, max_batch) then (max_batch, N), N = (1 + M) d
    proj_t: Vec<f32>,
    proj: Vec<f32>,
    // (max_batch, M)
    s: Vec<f32>,
    alpha: Vec<f32>,
    // (max_batch, M * d)
    x: Vec<f32>,
}

/// Reusable buffers of [`EngramModule::forward_prefill_with`]; they grow on demand.
#[derive(Debug, Clone, Default)]
pub struct PrefillScratch {
    // (tokens, (1 + M) d)
    proj: Vec<f32>,
    // (tokens, M)
    s: Vec<f32>,
    alpha: Vec<f32>,
    // (tokens, M d)
    x: Vec<f32>,
}

/// Output columns per rayon task in the decode projection.
const DECODE_COLS_PER_TASK: usize = 64;

impl EngramModule {
    /// Validates `weights` against `config` and prepares the fused layouts.
    pub fn new(config: EngramModuleConfig, weights: EngramModuleWeights) -> Result<Self> {
        weights.validate(&config)?;
        let (d, m, dm, w) = (
            config.hidden_size,
            config.hc_mult,
            config.d_mem,
            config.kernel_size,
        );
        let mut w_all = Vec::with_capacity((1 + m) * d * dm);
        w_all.extend_from_slice(&weights.value_proj_w);
        for k in &weights.key_proj_w {
            w_all.extend_from_slice(k);
        }
        let mut b_all = vec![0f32; (1 + m) * d];
        if !weights.value_proj_b.is_empty() {
            b_all[..d].copy_from_slice(&weights.value_proj_b);
        }
        for (b, kb) in weights.key_proj_b.iter().enumerate() {
            if !kb.is_empty() {
                b_all[(1 + b) * d..(2 + b) * d].copy_from_slice(kb);
            }
        }
        let g_key: Vec<f32> = weights.norm1.concat();
        let g_query: Vec<f32> = weights.norm2.concat();
        let g_kq = g_key.iter().zip(&g_query).map(|(a, b)| a * b).collect();
        let g_conv = weights.conv_norm.concat();
        let ch = m * d;
        let mut conv_wt = vec![0f32; w * ch];
        for c in 0..ch {
            for j in 0..w {
                conv_wt[j * ch + c] = weights.conv_w[c * w + j];
            }
        }
        Ok(Self {
            config,
            weights,
            w_all,
            b_all,
            g_key,
            g_query,
            g_kq,
            g_conv,
            conv_wt,
        })
    }

    /// The config.
    pub fn config(&self) -> &EngramModuleConfig {
        &self.config
    }

    /// The weights as given.
    pub fn weights(&self) -> &EngramModuleWeights {
        &self.weights
    }

    /// A fresh decode state for one sequence.
    pub fn new_state(&self) -> Result<ConvState> {
        ConvState::new(
            self.config.channels(),
            self.config.kernel_size,
            self.config.dilation,
        )
    }

    /// Decode buffers for up to `max_batch` sequences per step.
    pub fn decode_scratch(&self, max_batch: usize) -> DecodeScratch {
        let n = self.proj_width();
        let ch = self.config.channels();
        let m = self.config.hc_mult;
        DecodeScratch {
            max_batch,
            dims: (self.config.hidden_size, m, self.config.d_mem),
            proj_t: vec![0.0; n * max_batch],
            proj: vec![0.0; n * max_batch],
            s: vec![0.0; m * max_batch],
            alpha: vec![0.0; m * max_batch],
            x: vec![0.0; ch * max_batch],
        }
    }

    /// The fused layouts the backends consume: `(w_all ((1+M) d, d_mem), b_all ((1+M) d),
    /// g_kq (M d), g_conv (M d), conv_w (M d, w))`.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    #[allow(clippy::type_complexity)]
    pub(crate) fn fused(&self) -> (&[f32], &[f32], &[f32], &[f32], &[f32]) {
        (
            &self.w_all,
            &self.b_all,
            &self.g_kq,
            &self.g_conv,
            &self.weights.conv_w,
        )
    }

    /// Inputs check shared with the other backends; returns `batch * seq_len`.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn check_prefill(
        &self,
        e: &[f32],
        hidden: &[f32],
        batch: usize,
        seq_len: usize,
        out_y: &[f32],
    ) -> Result<usize> {
        let tokens = self.check_inputs(e, hidden, batch, seq_len)?;
        check_len(
            "y (B, T, M, d)",
            tokens * self.config.channels(),
            out_y.len(),
        )?;
        Ok(tokens)
    }

    fn proj_width(&self) -> usize {
        (1 + self.config.hc_mult) * self.config.hidden_size
    }

    fn check_inputs(
        &self,
        e: &[f32],
        hidden: &[f32],
        batch: usize,
        seq_len: usize,
    ) -> Result<usize> {
        if batch == 0 || seq_len == 0 {
            return Err(Error::EmptyBatch {
                what: "the Engram forward needs at least one sequence and one position",
            });
        }
        let tokens = batch.checked_mul(seq_len).ok_or(Error::Overflow {
            what: "batch * seq_len",
        })?;
        let dm = self.config.d_mem;
        let ch = self.config.channels();
        let e_len = tokens
            .checked_mul(dm)
            .ok_or(Error::Overflow { what: "e length" })?;
        let h_len = tokens.checked_mul(ch).ok_or(Error::Overflow {
            what: "hidden length",
        })?;
        if e.len() != e_len {
            if e.len().is_multiple_of(tokens) {
                return Err(Error::WidthMismatch {
                    what: "e width vs the module's d_mem",
                    left: e.len() / tokens,
                    right: dm,
                });
            }
            check_len("e (B, T, d_mem)", e_len, e.len())?;
        }
        if hidden.len() != h_len {
            if hidden.len().is_multiple_of(tokens) {
                return Err(Error::WidthMismatch {
                    what: "hidden width vs the module's M * d",
                    left: hidden.len() / tokens,
                    right: ch,
                });
            }
            check_len("hidden (B, T, M, d)", h_len, hidden.len())?;
        }
        Ok(tokens)
    }

    /// Prefill: `y = Engram(e, hidden)` for `batch` whole sequences of `seq_len` positions.
    /// When `states` is given (one per sequence) each is set so that decode continues the
    /// sequence.
    pub fn forward_prefill(
        &self,
        e: &[f32],
        hidden: &[f32],
        batch: usize,
        seq_len: usize,
        out_y: &mut [f32],
        states: Option<&mut [ConvState]>,
    ) -> Result<()> {
        let mut scratch = PrefillScratch::default();
        self.forward_prefill_with(e, hidden, batch, seq_len, out_y, states, &mut scratch)
    }

    /// [`Self::forward_prefill`] with caller-kept buffers: `scratch` grows to the largest
    /// batch seen and is reused, so repeated prefills do not allocate or page-fault.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_prefill_with(
        &self,
        e: &[f32],
        hidden: &[f32],
        batch: usize,
        seq_len: usize,
        out_y: &mut [f32],
        states: Option<&mut [ConvState]>,
        scratch: &mut PrefillScratch,
    ) -> Result<()> {
        let tokens = self.check_inputs(e, hidden, batch, seq_len)?;
        let ch = self.config.channels();
        check_len("y (B, T, M, d)", tokens * ch, out_y.len())?;
        if let Some(st) = states.as_deref() {
            self.check_states(st, batch)?;
        }
        let n = self.proj_width();
        let m = self.config.hc_mult;
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        grow(&mut scratch.proj, tokens * n);
        grow(&mut scratch.s, tokens * m);
        grow(&mut scratch.alpha, tokens * m);
        grow(&mut scratch.x, tokens * ch);
        let proj = &mut scratch.proj[..tokens * n];
        let s = &mut scratch.s[..tokens * m];
        let alpha = &mut scratch.alpha[..tokens * m];
        let x = &mut scratch.x[..tokens * ch];
        self.project_prefill(e, tokens, proj);
        self.gate_stage(proj, hidden, s, alpha, x, true);
        let (proj, alpha, x) = (&*proj, &*alpha, &*x);
        out_y
            .par_chunks_mut(ch)
            .enumerate()
            .with_min_len(8)
            .for_each(|(tok, y)| {
                let (b, t) = (tok / seq_len, tok % seq_len);
                let xs = &x[b * seq_len * ch..(b + 1) * seq_len * ch];
                self.conv_token_prefill(xs, t, y);
                self.finish_token(&proj[tok * n..tok * n + n], &alpha[tok * m..tok * m + m], y);
            });
        if let Some(st) = states {
            for (b, state) in st.iter_mut().enumerate() {
                state.load_from_prefill(&x[b * seq_len * ch..(b + 1) * seq_len * ch], ch, seq_len);
            }
        }
        Ok(())
    }

    /// Prefill returning every intermediate (tests and conformance checks; allocates).
    pub fn forward_prefill_traced(
        &self,
        e: &[f32],
        hidden: &[f32],
        batch: usize,
        seq_len: usize,
    ) -> Result<ForwardTrace> {
        let tokens = self.check_inputs(e, hidden, batch, seq_len)?;
        let (d, m) = (self.config.hidden_size, self.config.hc_mult);
        let ch = m * d;
        let n = self.proj_width();
        let mut proj = vec![0f32; tokens * n];
        self.project_prefill(e, tokens, &mut proj);
        let mut tr = ForwardTrace {
            s: vec![0.0; tokens * m],
            alpha: vec![0.0; tokens * m],
            conv_in_normed: vec![0.0; tokens * ch],
            ..ForwardTrace::default()
        };
        self.gate_stage(
            &proj,
            hidden,
            &mut tr.s,
            &mut tr.alpha,
            &mut tr.conv_in_normed,
            true,
        );
        tr.gate_logit = tr.s.iter().map(|&s| gate_logit(s)).collect();
        let eps = self.config.key_norm_eps;
        for tok in 0..tokens {
            let p = &proj[tok * n..(tok + 1) * n];
            tr.v.extend_from_slice(&p[..d]);
            for b in 0..m {
                let k = &p[(1 + b) * d..(2 + b) * d];
                tr.k.extend_from_slice(k);
                let rk = rms_inv(cpu::sumsq(k), d, eps);
                let g = &self.g_key[b * d..(b + 1) * d];
                tr.k_normed.extend(k.iter().zip(g).map(|(x, g)| x * rk * g));
                let h = &hidden[tok * ch + b * d..tok * ch + (b + 1) * d];
                let rh = rms_inv(cpu::sumsq(h), d, eps);
                let g = &self.g_query[b * d..(b + 1) * d];
                tr.q_normed.extend(h.iter().zip(g).map(|(x, g)| x * rh * g));
                let a = tr.alpha[tok * m + b];
                tr.u.extend(p[..d].iter().map(|v| a * v));
            }
        }
        tr.conv_pre_act = vec![0.0; tokens * ch];
        for tok in 0..tokens {
            let (b, t) = (tok / seq_len, tok % seq_len);
            let xs = &tr.conv_in_normed[b * seq_len * ch..(b + 1) * seq_len * ch];
            self.conv_token_prefill(xs, t, &mut tr.conv_pre_act[tok * ch..(tok + 1) * ch]);
        }
        tr.conv_out = tr.conv_pre_act.iter().map(|&z| silu(z)).collect();
        tr.y = tr.u.iter().zip(&tr.conv_out).map(|(u, c)| u + c).collect();
        Ok(tr)
    }

    fn check_states(&self, states: &[ConvState], batch: usize) -> Result<()> {
        check_len("conv states (one per sequence)", batch, states.len())?;
        let want = self.config.conv_history();
        for st in states {
            if st.channels() != self.config.channels() {
                return Err(Error::WidthMismatch {
                    what: "conv state channels vs the module's M * d",
                    left: st.channels(),
                    right: self.config.channels(),
                });
            }
            if st.history() != want {
                return Err(Error::WidthMismatch {
                    what: "conv state history vs the module's (w - 1) * dilation",
                    left: st.history(),
                    right: want,
                });
            }
        }
        Ok(())
    }

    /// Decode: one new position for each of `batch` sequences. `e (B, d_mem)`,
    /// `hidden (B, M, d)`, `out_y (B, M, d)`; `states[b]` is read and advanced. No
    /// allocation: every buffer is in `scratch`. Runs on all cores of the rayon pool when
    /// called from inside it (run the decode loop under `pool.install`), on the calling
    /// thread otherwise.
    pub fn forward_decode(
        &self,
        e: &[f32],
        hidden: &[f32],
        states: &mut [ConvState],
        out_y: &mut [f32],
        scratch: &mut DecodeScratch,
    ) -> Result<()> {
        let batch = states.len();
        let tokens = self.check_inputs(e, hidden, batch, 1)?;
        let ch = self.config.channels();
        check_len("y (B, M, d)", tokens * ch, out_y.len())?;
        self.check_states(states, batch)?;
        let dims = (
            self.config.hidden_size,
            self.config.hc_mult,
            self.config.d_mem,
        );
        if scratch.dims != dims {
            return Err(Error::InvalidConfig {
                field: "decode scratch",
                value: format!("made for (d, M, d_mem) = {:?}", scratch.dims),
                reason: "belongs to a module of another shape",
            });
        }
        if batch > scratch.max_batch {
            return Err(Error::WidthMismatch {
                what: "decode batch vs the scratch's max batch",
                left: batch,
                right: scratch.max_batch,
            });
        }
        let n = self.proj_width();
        let (m, dm) = (self.config.hc_mult, self.config.d_mem);
        let proj_t = &mut scratch.proj_t[..n * batch];
        let level = cpu::level();
        let task = |(task, ct): (usize, &mut [f32])| {
            let j0 = task * DECODE_COLS_PER_TASK;
            let cols = ct.len() / batch;
            let w = &self.w_all[j0 * dm..(j0 + cols) * dm];
            cpu::gemm_nt_t_at(level, e, batch, w, cols, dm, ct);
        };
        // Inside a rayon worker, fork-join is allocation-free; entering the pool from an
        // outside thread goes through rayon's injector queue, which allocates now and then.
        // So: parallel when called from the pool (`pool.install(|| decode loop)`), serial
        // otherwise; either way no allocation per call.
        if rayon::current_thread_index().is_some() {
            proj_t
                .par_chunks_mut(DECODE_COLS_PER_TASK * batch)
                .enumerate()
                .for_each(task);
        } else {
            proj_t
                .chunks_mut(DECODE_COLS_PER_TASK * batch)
                .enumerate()
                .for_each(task);
        }
        let proj = &mut scratch.proj[..n * batch];
        for (b, row) in proj.chunks_exact_mut(n).enumerate() {
            for (j, (p, bias)) in row.iter_mut().zip(&self.b_all).enumerate() {
                *p = proj_t[j * batch + b] + bias;
            }
        }
        let s = &mut scratch.s[..m * batch];
        let alpha = &mut scratch.alpha[..m * batch];
        let x = &mut scratch.x[..ch * batch];
        self.gate_stage(proj, hidden, s, alpha, x, false);
        for (b, state) in states.iter_mut().enumerate() {
            let y = &mut out_y[b * ch..(b + 1) * ch];
            let xb = &x[b * ch..(b + 1) * ch];
            self.conv_token_decode(state, xb, y);
            self.finish_token(&proj[b * n..(b + 1) * n], &alpha[b * m..(b + 1) * m], y);
            state.push(xb);
        }
        Ok(())
    }

    /// `proj (tokens, (1+M) d) = e W_all^T + b_all`, threaded over token blocks.
    fn project_prefill(&self, e: &[f32], tokens: usize, proj: &mut [f32]) {
        let n = self.proj_width();
        let dm = self.config.d_mem;
        let threads = rayon::current_num_threads().max(1);
        let rows = tokens.div_ceil(threads).max(32);
        proj.par_chunks_mut(rows * n)
            .zip(e.par_chunks(rows * dm))
            .for_each(|(c, a)| {
                let r = a.len() / dm;
                cpu::gemm::sgemm_nt(a, r, &self.w_all, n, dm, c);
                for row in c.chunks_exact_mut(n) {
                    for (p, b) in row.iter_mut().zip(&self.b_all) {
                        *p += b;
                    }
                }
            });
    }

    /// Per token: scores `s (tokens, M)`, gates `alpha (tokens, M)` and the convolution
    /// input `x = RMSNorm(alpha v) (tokens, M * d)`.
    fn gate_stage(
        &self,
        proj: &[f32],
        hidden: &[f32],
        s: &mut [f32],
        alpha: &mut [f32],
        x: &mut [f32],
        parallel: bool,
    ) {
        let (d, m) = (self.config.hidden_size, self.config.hc_mult);
        let n = self.proj_width();
        let ch = m * d;
        if parallel {
            proj.par_chunks(n)
                .zip(hidden.par_chunks(ch))
                .zip(s.par_chunks_mut(m))
                .zip(alpha.par_chunks_mut(m))
                .zip(x.par_chunks_mut(ch))
                .with_min_len(16)
                .for_each(|((((p, h), s), a), x)| self.gate_token(p, h, s, a, x));
        } else {
            proj.chunks(n)
                .zip(hidden.chunks(ch))
                .zip(s.chunks_mut(m))
                .zip(alpha.chunks_mut(m))
                .zip(x.chunks_mut(ch))
                .for_each(|((((p, h), s), a), x)| self.gate_token(p, h, s, a, x));
        }
    }

    #[inline]
    fn gate_token(&self, p: &[f32], h: &[f32], s: &mut [f32], a: &mut [f32], x: &mut [f32]) {
        let d = self.config.hidden_size;
        let eps = self.config.key_norm_eps;
        let inv_sqrt_d = 1.0 / (d as f32).sqrt();
        let v = &p[..d];
        let v_sumsq = cpu::sumsq(v);
        for b in 0..self.config.hc_mult {
            let k = &p[(1 + b) * d..(2 + b) * d];
            let hb = &h[b * d..(b + 1) * d];
            let rk = rms_inv(cpu::sumsq(k), d, eps);
            let rh = rms_inv(cpu::sumsq(hb), d, eps);
            let g = &self.g_kq[b * d..(b + 1) * d];
            let score = cpu::dot3(k, hb, g) * rk * rh * inv_sqrt_d;
            let al = sigmoid(gate_logit(score));
            s[b] = score;
            a[b] = al;
            if !self.config.has_conv() {
                // No convolution: x is unused (y = alpha v).
                continue;
            }
            // RMSNorm(alpha v) with mean((alpha v)^2) = alpha^2 mean(v^2).
            let ru = rms_inv(al * al * v_sumsq, d, self.config.conv_norm_eps);
            let scale = al * ru;
            let gc = &self.g_conv[b * d..(b + 1) * d];
            for ((xo, vi), g) in x[b * d..(b + 1) * d].iter_mut().zip(v).zip(gc) {
                *xo = vi * scale * g;
            }
        }
    }

    /// Pre-activation of the convolution at position `t` of one sequence whose inputs are
    /// `xs (T, M * d)`.
    #[inline]
    fn conv_token_prefill(&self, xs: &[f32], t: usize, out: &mut [f32]) {
        let ch = self.config.channels();
        let w = self.config.kernel_size;
        let dil = self.config.dilation;
        out.fill(0.0);
        for j in 0..w {
            let lag = (w - 1 - j) * dil;
            if lag > t {
                continue;
            }
            let xr = &xs[(t - lag) * ch..(t - lag + 1) * ch];
            let wr = &self.conv_wt[j * ch..(j + 1) * ch];
            for ((o, x), wt) in out.iter_mut().zip(xr).zip(wr) {
                *o += wt * x;
            }
        }
    }

    #[inline]
    fn conv_token_decode(&self, state: &ConvState, x: &[f32], out: &mut [f32]) {
        let ch = self.config.channels();
        let w = self.config.kernel_size;
        let dil = self.config.dilation;
        out.fill(0.0);
        for j in 0..w {
            let lag = (w - 1 - j) * dil;
            let xr = if lag == 0 { x } else { state.lagged(lag) };
            let wr = &self.conv_wt[j * ch..(j + 1) * ch];
            for ((o, x), wt) in out.iter_mut().zip(xr).zip(wr) {
                *o += wt * x;
            }
        }
    }

    /// `y = alpha v + SiLU(pre)` in place over the pre-activations `y (M * d)`.
    #[inline]
    fn finish_token(&self, p: &[f32], alpha: &[f32], y: &mut [f32]) {
        let d = self.config.hidden_size;
        let v = &p[..d];
        for (b, yb) in y.chunks_exact_mut(d).enumerate() {
            cpu::silu_residual(yb, alpha[b], v);
        }
    }
}
