//! Checking a session against a model's `golden.json` (format `engram-moe-golden-v1`):
//! PyTorch's logits at recorded positions and its greedy continuation of each prompt.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::sampler::{Sampler, SamplerConfig};
use crate::session::Session;

/// Largest |rust - torch| accepted on a logit (both f32 from the same bf16-widened weights).
pub const LOGIT_TOLERANCE: f32 = 1e-5;

/// Largest |decode - prefill| accepted on a logit: the same arithmetic, except that
/// prefill-sized linear layers go through the packed GEMM (another summation order).
pub const DECODE_PREFILL_TOLERANCE: f32 = 1e-5;

#[derive(Debug, Deserialize)]
struct GoldenFile {
    format: String,
    prompts: Vec<GoldenPrompt>,
}

#[derive(Debug, Deserialize)]
struct GoldenPrompt {
    name: String,
    raw_ids: Vec<u32>,
    logit_positions: Vec<usize>,
    logits: Vec<Vec<f32>>,
    greedy_reduced_ids: Vec<u32>,
}

/// How one prompt compared.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptReport {
    /// The prompt's name in the golden file.
    pub name: String,
    /// Max |logit error| over every recorded position.
    pub max_logit_error: f32,
    /// Greedy tokens compared.
    pub tokens: usize,
    /// Index of the first greedy token that differs, if any.
    pub first_divergence: Option<usize>,
}

impl PromptReport {
    /// Within the tolerance and the same greedy tokens.
    pub fn passed(&self) -> bool {
        self.max_logit_error <= LOGIT_TOLERANCE && self.first_divergence.is_none()
    }
}

/// Runs every prompt of `golden_json` through `session` (Engram on or off as loaded).
pub fn check(session: &mut Session, golden_json: &[u8]) -> Result<Vec<PromptReport>> {
    let g: GoldenFile = serde_json::from_slice(golden_json)
        .map_err(|e| Error::Input(format!("golden file: {e}")))?;
    if g.format != "engram-moe-golden-v1" {
        return Err(Error::Input(format!("golden file format {:?}", g.format)));
    }
    let mut reports = Vec::with_capacity(g.prompts.len());
    for p in g.prompts {
        session.prefill_all(&p.raw_ids)?;
        let mut worst = 0f32;
        for (pos, want) in p.logit_positions.iter().zip(&p.logits) {
            if *pos >= p.raw_ids.len() {
                return Err(Error::Input(format!(
                    "{}: logit position {pos} past the prompt",
                    p.name
                )));
            }
            let got = session.model.logits(&session.state, *pos);
            if got.len() != want.len() {
                return Err(Error::Input(format!(
                    "{}: logits of width {}",
                    p.name,
                    want.len()
                )));
            }
            worst = got
                .iter()
                .zip(want)
                .fold(worst, |m, (a, b)| m.max((a - b).abs()));
        }
        let mut sampler = Sampler::new(
            SamplerConfig::default(),
            session.vocab.unk(),
            session.model.config.vocab_size,
        )?;
        let last = p.raw_ids.len() - 1;
        let mut next = sampler.sample(session.model.logits(&session.state, last));
        let mut first_divergence = None;
        for (i, &want) in p.greedy_reduced_ids.iter().enumerate() {
            if next != want {
                first_divergence = Some(i);
                break;
            }
            if i + 1 < p.greedy_reduced_ids.len() {
                next = sampler.sample(session.step(next)?);
            }
        }
        reports.push(PromptReport {
            name: p.name,
            max_logit_error: worst,
            tokens: p.greedy_reduced_ids.len(),
            first_divergence,
        });
    }
    Ok(reports)
}

/// Max |logit difference| between decoding `continuation` (reduced ids) one token at a time
/// after a prefill of `prompt` (raw ids) and one prefill of the whole sequence, over every
/// position from the prompt's last on.
pub fn decode_prefill_gap(
    session: &mut Session,
    prompt: &[u32],
    continuation: &[u32],
) -> Result<f32> {
    if prompt.is_empty() {
        return Err(Error::Input("empty prompt".into()));
    }
    let mut full = prompt.to_vec();
    for &id in continuation {
        full.push(
            session
                .vocab
                .raw(id)
                .ok_or_else(|| Error::Input(format!("continuation id {id} has no raw token")))?,
        );
    }
    let vocab = session.model.config.vocab_size;
    session.prefill_all(&full)?;
    let want = session.state.logits[..full.len() * vocab].to_vec();
    let gap = |got: &[f32], pos: usize, worst: f32| {
        got.iter()
            .zip(&want[pos * vocab..(pos + 1) * vocab])
            .fold(worst, |m, (a, b)| m.max((a - b).abs()))
    };
    let mut worst = gap(session.prefill(prompt)?, prompt.len() - 1, 0.0);
    for (i, &id) in continuation.iter().enumerate() {
        worst = gap(session.step(id)?, prompt.len() + i, worst);
    }
    Ok(worst)
}
