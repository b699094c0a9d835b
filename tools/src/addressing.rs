//! Command-line flags that describe an Engram addressing config, shared by every tool that
//! needs one (`engram hash`, `engram-build`, `engram synth`): a preset plus overrides.

use anyhow::Result;
use clap::Args;
use clap::builder::{PossibleValue, TypedValueParser};
use engram_kernels::EngramConfig;

pub use engram_kernels::Preset;

/// `--preset`'s parser: the names of [`Preset::ALL`], each with its line in `--help`.
fn preset_parser() -> impl TypedValueParser<Value = Preset> {
    let values = Preset::ALL.map(|p| PossibleValue::new(p.name()).help(p.description()));
    clap::builder::PossibleValuesParser::new(values).try_map(|s| s.parse::<Preset>())
}

/// A preset and per-field overrides; the overrides win.
#[derive(Debug, Clone, Args)]
pub struct AddressingArgs {
    /// Start from this published shape (default: demo).
    #[arg(long, value_parser = preset_parser())]
    pub preset: Option<Preset>,
    /// Largest n-gram order N (orders 2..=N are hashed).
    #[arg(long)]
    pub max_ngram: Option<usize>,
    /// Hash heads per order.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Base table size of every order (scales a preset down or up).
    #[arg(long)]
    pub base_size: Option<u64>,
    /// Base table size per order, comma-separated (orders 2..=N).
    #[arg(long, value_delimiter = ',', conflicts_with = "base_size")]
    pub base_sizes: Option<Vec<u64>>,
    /// Engram layer ids, comma-separated, in prime-assignment order.
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<u64>>,
    /// Hash seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Raw id used for left padding.
    #[arg(long, allow_negative_numbers = true)]
    pub pad_id: Option<i64>,
}

/// One base size per hashed order (2..=max_ngram). Sized before `validate` runs, so never
/// longer than a valid config allows: an oversized `max_ngram` (found by fuzzing: 6.7e16
/// asked for a 533 PB vector) is then rejected by `validate`, which checks it first.
fn per_order(base: u64, max_ngram: usize) -> Vec<u64> {
    vec![
        base;
        max_ngram
            .saturating_sub(1)
            .min(engram_kernels::layout::MAX_NGRAM_LIMIT)
    ]
}

impl AddressingArgs {
    /// The resulting config, validated.
    pub fn config(&self) -> Result<EngramConfig> {
        let mut c = self.preset.unwrap_or(Preset::Demo).config();
        if let Some(n) = self.max_ngram {
            c.max_ngram = n;
            // Keep one base size per order when only the order changes.
            let base = c.base_sizes.first().copied().unwrap_or(1);
            c.base_sizes = per_order(base, n);
        }
        if let Some(k) = self.heads {
            c.n_heads = k;
        }
        if let Some(s) = self.base_size {
            c.base_sizes = per_order(s, c.max_ngram);
        }
        if let Some(s) = &self.base_sizes {
            c.base_sizes = s.clone();
        }
        if let Some(l) = &self.layers {
            c.layer_ids = l.clone();
        }
        if let Some(s) = self.seed {
            c.seed = s;
        }
        if let Some(p) = self.pad_id {
            c.pad_id = p;
        }
        c.validate()?;
        Ok(c)
    }
}
