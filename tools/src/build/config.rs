//! `engram-build` configuration: a TOML file and flags (flags win), resolved into one
//! validated [`BuildPlan`]. Unknown TOML keys are errors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use engram_files::file::{Limit, read_regular_string};
use engram_kernels::EngramConfig;
use engram_store::format::RowLayout;
use serde::{Deserialize, Serialize};

use super::corpus::CorpusOptions;
use super::records::MAX_RECORDS_BYTES;
use crate::addressing::{AddressingArgs, Preset};

/// Largest `--config` TOML file read.
pub const MAX_BUILD_CONFIG_BYTES: Limit = Limit {
    what: "build config",
    name: "MAX_BUILD_CONFIG_BYTES",
    bytes: 1 << 20,
};

/// The TOML file: every key optional, unknown keys rejected.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `tokenizer.json` (default: as every CLI finds it).
    pub tokenizer: Option<PathBuf>,
    /// Addressing preset (`demo`, `v41`) the other keys override.
    pub preset: Option<Preset>,
    /// Largest n-gram order (orders 2..=N).
    pub max_ngram: Option<usize>,
    /// Hash heads per order.
    pub heads: Option<usize>,
    /// The prime rule's base for every order.
    pub base_size: Option<u64>,
    /// The prime rule's base per order (2, 3, ...).
    pub base_sizes: Option<Vec<u64>>,
    /// Engram layer ids.
    pub layers: Option<Vec<u64>>,
    /// Seed of the hash multipliers.
    pub seed: Option<u64>,
    /// Raw tokenizer id used as padding before the first token.
    pub pad_id: Option<i64>,
    /// Row format (`bf16`, `f32`, `fp8:B`, ...), as `--row-layout` takes it.
    pub row_layout: Option<String>,
    /// Values per row.
    pub dim: Option<u32>,
    /// Row values: `zeros`, `normal:STD`, or an import, as `--init` takes it.
    pub init: Option<String>,
    /// Corpus globs to read (`**/*.py`).
    pub include: Option<Vec<String>>,
    /// Corpus globs to skip.
    pub exclude: Option<Vec<String>>,
    /// Field of each JSON Lines record that holds its text.
    pub jsonl_field: Option<String>,
    /// Worker threads (0: one per core).
    pub threads: Option<usize>,
    /// Values tensor of each layer in a checkpoint (`{layer}` = layer id).
    pub import_pattern: Option<String>,
    /// Scales tensor of each layer in a checkpoint directory (`{layer}` = layer id).
    pub import_scale_pattern: Option<String>,
    /// Byte budget of `records.bin` (`--records-bytes`), e.g. "64M"; absent or 0: none.
    pub records_bytes: Option<String>,
    /// Skip records of n-grams a hot-row cache of this many bytes would hold
    /// (`--records-skip-cached`); absent or 0: skip none.
    pub records_skip_cached: Option<String>,
}

impl FileConfig {
    /// Reads and parses a TOML config file (a regular file of at most
    /// [`MAX_BUILD_CONFIG_BYTES`]).
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_regular_string(path, MAX_BUILD_CONFIG_BYTES)?;
        Self::from_toml(&text, path)
    }

    /// Parses the text of a TOML config file read from `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).with_context(|| format!("config {} is invalid", path.display()))
    }

    /// Fills every field that `over` sets (flags win over the file).
    pub fn overlay(mut self, over: FileConfig) -> Self {
        let (size_flag, sizes_flag) = (over.base_size.is_some(), over.base_sizes.is_some());
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            tokenizer,
            preset,
            max_ngram,
            heads,
            base_size,
            base_sizes,
            layers,
            seed,
            pad_id,
            row_layout,
            dim,
            init,
            include,
            exclude,
            jsonl_field,
            threads,
            import_pattern,
            import_scale_pattern,
            records_bytes,
            records_skip_cached
        );
        // One way of giving base sizes replaces the other.
        if size_flag {
            self.base_sizes = None;
        } else if sizes_flag {
            self.base_size = None;
        }
        self
    }
}

/// How row values are produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// N(0, std^2), deterministic per (seed, layer id, row): any row can be regenerated.
    Normal {
        /// Standard deviation (> 0).
        std: f32,
    },
    /// All zeros.
    Zeros,
    /// Rows from safetensors checkpoints; `pattern` names each layer's tensor with
    /// `{layer}` standing for the layer id.
    Import {
        /// The `.safetensors` files.
        files: Vec<PathBuf>,
        /// Tensor name pattern.
        pattern: String,
    },
    /// FP8 rows streamed from a checkpoint directory (or its index file), copied bit-exact
    /// (`build::fp8_import`): each layer's values and scales tensors.
    Checkpoint {
        /// The directory or its `model.safetensors.index.json`.
        path: PathBuf,
        /// Values tensor name pattern (`{layer}` = layer id).
        values_pattern: String,
        /// Scales tensor name pattern.
        scales_pattern: String,
    },
}

impl Init {
    /// Parses `normal:STD` or `zeros`.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "zeros" {
            return Ok(Init::Zeros);
        }
        if let Some(std) = s.strip_prefix("normal:") {
            let std: f32 = std
                .parse()
                .with_context(|| format!("--init {s:?}: the standard deviation is not a number"))?;
            if !(std.is_finite() && std >= 0.0) {
                bail!("--init {s:?}: the standard deviation must be finite and >= 0");
            }
            return Ok(Init::Normal { std });
        }
        bail!("--init {s:?}: expected normal:STD or zeros")
    }
}

/// The addressing a checkpoint directory's `config.json` declares, over the V4.1 preset:
/// keys it does not name (orders and heads, in the reports of V4.1's config) keep V4.1's
/// values (orders 2-4, 8 heads, seed 0, pad id 2).
pub fn from_checkpoint_json(c: Option<&crate::checkpoint::EngramJson>) -> FileConfig {
    let mut f = FileConfig {
        preset: Some(Preset::V41),
        ..FileConfig::default()
    };
    let Some(c) = c else { return f };
    f.layers = c.layer_ids.as_ref().map(|k| k.value.clone());
    match c.vocab_sizes.as_ref().map(|k| k.value.as_slice()) {
        Some([one]) => f.base_size = Some(*one),
        Some(list) => f.base_sizes = Some(list.to_vec()),
        None => {}
    }
    f.max_ngram = c.max_ngram.as_ref().map(|k| k.value);
    f.heads = c.heads.as_ref().map(|k| k.value);
    f.pad_id = c.pad_id.as_ref().map(|k| k.value);
    f.seed = c.seed.as_ref().map(|k| k.value);
    f.dim = c
        .head_dim
        .as_ref()
        .and_then(|k| u32::try_from(k.value).ok());
    f
}

/// Default checkpoint tensor name, `{layer}` replaced by the layer id.
pub const DEFAULT_IMPORT_PATTERN: &str = "layers.{layer}.engram.embedding.weight";

/// Everything a build needs, validated.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// The addressing (layers, orders, heads, bases, seed, pad id).
    pub engram: EngramConfig,
    /// The preset the addressing started from.
    pub preset: Preset,
    /// `tokenizer.json`, when given (else as every CLI finds it).
    pub tokenizer: Option<PathBuf>,
    /// Row format of the table.
    pub row_layout: RowLayout,
    /// Values per row.
    pub dim: u32,
    /// Where the row values come from.
    pub init: Init,
    /// Which corpus files and records are read.
    pub corpus: CorpusOptions,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Byte budget of the n-gram records (0: none).
    pub records_bytes: u64,
    /// Records skip n-grams that a profile-seeded cache of this many bytes holds (0: none).
    pub records_skip_cached: u64,
}

/// Parses a `--records-*` size (`64M`, `1G`, ...) of at most [`MAX_RECORDS_BYTES`].
fn records_size(flag: &str, value: Option<&str>) -> Result<u64> {
    let Some(v) = value else { return Ok(0) };
    let bytes = engram_store::size::parse_bytes(v).with_context(|| format!("{flag} {v:?}"))?;
    if bytes > MAX_RECORDS_BYTES {
        bail!("{flag} {v:?}: at most {MAX_RECORDS_BYTES} bytes (MAX_RECORDS_BYTES)");
    }
    Ok(bytes)
}

impl FileConfig {
    /// Resolves into a plan; `imports` are the `--import` files (empty: use `init`).
    pub fn resolve(&self, imports: &[PathBuf]) -> Result<BuildPlan> {
        let preset = self.preset.unwrap_or(Preset::Demo);
        let addressing = AddressingArgs {
            preset: Some(preset),
            max_ngram: self.max_ngram,
            heads: self.heads,
            base_size: self.base_size,
            base_sizes: self.base_sizes.clone(),
            layers: self.layers.clone(),
            seed: self.seed,
            pad_id: self.pad_id,
        };
        let engram = addressing.config()?;
        let (default_layout, default_dim) = preset.row_format();
        let row_layout = match &self.row_layout {
            Some(s) => RowLayout::parse(s)?,
            None => default_layout,
        };
        let dim = self.dim.unwrap_or(default_dim);
        engram_store::format::row_bytes(row_layout, dim)?;
        let init = if imports.is_empty() {
            Init::parse(self.init.as_deref().unwrap_or("normal:1"))?
        } else if imports
            .iter()
            .any(|p| crate::checkpoint::is_checkpoint_dir(p))
        {
            if self.init.is_some() {
                bail!("--init and --import are exclusive: imported rows are the values");
            }
            let [path] = imports else {
                bail!(
                    "--import takes one checkpoint directory (or index file), or safetensors \
                     files, not both or several directories"
                );
            };
            let values_pattern = self
                .import_pattern
                .clone()
                .unwrap_or_else(|| super::fp8_import::DEFAULT_VALUES_PATTERN.into());
            let scales_pattern = self
                .import_scale_pattern
                .clone()
                .unwrap_or_else(|| super::fp8_import::DEFAULT_SCALES_PATTERN.into());
            for (flag, p) in [
                ("--import-pattern", &values_pattern),
                ("--import-scale-pattern", &scales_pattern),
            ] {
                if !p.contains("{layer}") {
                    bail!("{flag} {p:?} must contain {{layer}}");
                }
            }
            Init::Checkpoint {
                path: path.clone(),
                values_pattern,
                scales_pattern,
            }
        } else {
            if self.init.is_some() {
                bail!("--init and --import are exclusive: imported rows are the values");
            }
            if self.import_scale_pattern.is_some() {
                bail!(
                    "--import-scale-pattern applies to a checkpoint directory (FP8 values + scales)"
                );
            }
            let pattern = self
                .import_pattern
                .clone()
                .unwrap_or_else(|| DEFAULT_IMPORT_PATTERN.into());
            if !pattern.contains("{layer}") {
                bail!("--import-pattern {pattern:?} must contain {{layer}}");
            }
            Init::Import {
                files: imports.to_vec(),
                pattern,
            }
        };
        let threads = self.threads.unwrap_or(0);
        if threads > crate::MAX_THREADS {
            bail!(
                "threads = {threads}: at most {} (MAX_THREADS; 0 means all cores)",
                crate::MAX_THREADS
            );
        }
        let records_bytes = records_size("--records-bytes", self.records_bytes.as_deref())?;
        let records_skip_cached =
            records_size("--records-skip-cached", self.records_skip_cached.as_deref())?;
        if records_skip_cached > 0 && records_bytes == 0 {
            bail!(
                "--records-skip-cached needs --records-bytes: it shapes which records are written"
            );
        }
        Ok(BuildPlan {
            engram,
            preset,
            tokenizer: self.tokenizer.clone(),
            row_layout,
            dim,
            init,
            corpus: CorpusOptions {
                include: self.include.clone().unwrap_or_default(),
                exclude: self.exclude.clone().unwrap_or_default(),
                jsonl_field: self.jsonl_field.clone().unwrap_or_else(|| "text".into()),
                stdin_jsonl: false,
            },
            threads,
            records_bytes,
            records_skip_cached,
        })
    }
}

impl BuildPlan {
    /// The plan as TOML (for `--print-config`): a file that reproduces this build.
    pub fn to_toml(&self) -> Result<String> {
        let file = FileConfig {
            tokenizer: self.tokenizer.clone(),
            preset: Some(self.preset),
            max_ngram: Some(self.engram.max_ngram),
            heads: Some(self.engram.n_heads),
            base_size: None,
            base_sizes: Some(self.engram.base_sizes.clone()),
            layers: Some(self.engram.layer_ids.clone()),
            seed: Some(self.engram.seed),
            pad_id: Some(self.engram.pad_id),
            row_layout: Some(row_layout_name(self.row_layout)),
            dim: Some(self.dim),
            init: match &self.init {
                Init::Normal { std } => Some(format!("normal:{std}")),
                Init::Zeros => Some("zeros".into()),
                Init::Import { .. } | Init::Checkpoint { .. } => None,
            },
            include: Some(self.corpus.include.clone()),
            exclude: Some(self.corpus.exclude.clone()),
            jsonl_field: Some(self.corpus.jsonl_field.clone()),
            threads: (self.threads > 0).then_some(self.threads),
            import_pattern: match &self.init {
                Init::Import { pattern, .. } => Some(pattern.clone()),
                Init::Checkpoint { values_pattern, .. } => Some(values_pattern.clone()),
                _ => None,
            },
            import_scale_pattern: match &self.init {
                Init::Checkpoint { scales_pattern, .. } => Some(scales_pattern.clone()),
                _ => None,
            },
            records_bytes: (self.records_bytes > 0).then(|| self.records_bytes.to_string()),
            records_skip_cached: (self.records_skip_cached > 0)
                .then(|| self.records_skip_cached.to_string()),
        };
        Ok(toml::to_string_pretty(&file)?)
    }
}

/// The `--row-layout` spelling of a layout.
pub fn row_layout_name(layout: RowLayout) -> String {
    match layout {
        RowLayout::Bf16 => "bf16".into(),
        RowLayout::F16 => "f16".into(),
        RowLayout::F32 => "f32".into(),
        RowLayout::Fp8E4m3E8m0 { scale_block: 32 } => "fp8".into(),
        RowLayout::Fp8E4m3E8m0 { scale_block } => format!("fp8:{scale_block}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_unknown_keys_fail() {
        let file: FileConfig =
            toml::from_str("preset = \"v41\"\nheads = 4\nbase_size = 1000\n").expect("valid");
        let flags = FileConfig {
            heads: Some(2),
            ..FileConfig::default()
        };
        let plan = file.overlay(flags).resolve(&[]).expect("valid");
        assert_eq!(plan.engram.n_heads, 2);
        assert_eq!(plan.engram.base_sizes, [1000, 1000, 1000]);
        assert_eq!(plan.dim, 256);
        assert!(toml::from_str::<FileConfig>("hedas = 3\n").is_err());
    }

    #[test]
    fn an_oversized_max_ngram_is_an_error_not_an_allocation() {
        // Found by fuzzing (fuzz/regressions/build_config/max-ngram-huge): the per-order base
        // sizes were allocated from max_ngram before it was validated.
        for text in [
            "preset = \"v41\"\nmax_ngram = 66666666666666666\n",
            "max_ngram = 66666666666666666\nbase_size = 5\n",
        ] {
            let file = FileConfig::from_toml(text, Path::new("c.toml")).expect("parses");
            let e = file.resolve(&[]).expect_err(text);
            assert!(format!("{e:#}").contains("max_ngram"), "{e:#}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        let bad = [
            FileConfig {
                heads: Some(0),
                ..FileConfig::default()
            },
            FileConfig {
                max_ngram: Some(1),
                ..FileConfig::default()
            },
            FileConfig {
                dim: Some(0),
                ..FileConfig::default()
            },
            FileConfig {
                row_layout: Some("int4".into()),
                ..FileConfig::default()
            },
            FileConfig {
                row_layout: Some("fp8".into()),
                dim: Some(40),
                ..FileConfig::default()
            },
            FileConfig {
                init: Some("normal:-1".into()),
                ..FileConfig::default()
            },
            FileConfig {
                init: Some("uniform".into()),
                ..FileConfig::default()
            },
            FileConfig {
                threads: Some(crate::MAX_THREADS + 1),
                ..FileConfig::default()
            },
            FileConfig {
                records_bytes: Some("2T".into()),
                ..FileConfig::default()
            },
            FileConfig {
                records_bytes: Some("lots".into()),
                ..FileConfig::default()
            },
            FileConfig {
                records_skip_cached: Some("1M".into()),
                ..FileConfig::default()
            },
        ];
        for c in bad {
            assert!(c.resolve(&[]).is_err(), "{c:?} should be rejected");
        }
    }

    #[test]
    fn every_preset_has_rows() {
        for p in Preset::ALL {
            let (layout, dim) = p.row_format();
            assert!(
                engram_store::format::row_bytes(layout, dim).is_ok(),
                "{p:?}"
            );
        }
        assert_eq!(
            engram_store::format::row_bytes(Preset::V41.row_format().0, 256).ok(),
            Some(264)
        );
    }

    #[test]
    fn print_config_round_trips() {
        let plan = FileConfig {
            preset: Some(Preset::V41),
            records_bytes: Some("64M".into()),
            records_skip_cached: Some("256K".into()),
            ..FileConfig::default()
        }
        .resolve(&[])
        .expect("valid");
        let text = plan.to_toml().expect("serialises");
        let again: FileConfig = toml::from_str(&text).expect("parses");
        let plan2 = again.resolve(&[]).expect("valid");
        assert_eq!(plan.engram, plan2.engram);
        assert_eq!(plan.row_layout, plan2.row_layout);
        assert_eq!(plan2.records_bytes, 64 << 20);
        assert_eq!(plan2.records_skip_cached, 256 << 10);
    }
}
