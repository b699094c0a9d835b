//! Released checkpoints as directories of safetensors shards (the Hugging Face layout:
//! `model-000NN-of-000MM.safetensors`, `model.safetensors.index.json`, `config.json`):
//! finding tensors through the index, reading the Engram keys of `config.json`, and writing
//! a faithful replica of DeepSeek-V4.1-Flash's layout for tests and measurements
//! ([`replica`]). Nothing here reads tensor data: `engram-build --import` streams it
//! (`build::fp8_import`).

pub mod replica;
pub mod safetensors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use engram_files::file::{Limit, read_regular};

use self::safetensors::{ShardHeader, TensorInfo};

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The model config beside it.
pub const CONFIG_FILE: &str = "config.json";

/// Largest index or config file read.
pub const MAX_CHECKPOINT_JSON_BYTES: Limit = Limit {
    what: "checkpoint index or config",
    name: "MAX_CHECKPOINT_JSON_BYTES",
    bytes: 64 << 20,
};

/// A checkpoint directory: its shards (through the index, or its only `.safetensors`
/// file) and its `config.json`.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    /// The directory.
    pub dir: PathBuf,
    /// The index file, when the checkpoint is sharded.
    pub index: Option<PathBuf>,
    /// Tensor name -> shard file name (relative to `dir`).
    pub weight_map: BTreeMap<String, String>,
    /// The Engram keys of `config.json` (None when the directory has none).
    pub config: Option<EngramJson>,
}

/// Whether `--import PATH` names a checkpoint directory or an index file (streamed) rather
/// than safetensors files (read whole and re-quantised).
pub fn is_checkpoint_dir(path: &Path) -> bool {
    path.is_dir() || path.extension().is_some_and(|e| e == "json")
}

impl CheckpointDir {
    /// Opens a directory (its index, else its single `.safetensors` file) or an index file.
    pub fn open(path: &Path) -> Result<Self> {
        let (dir, index) = if path.is_dir() {
            let index = path.join(INDEX_FILE);
            (path.to_path_buf(), index.is_file().then_some(index))
        } else {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            (dir, Some(path.to_path_buf()))
        };
        let weight_map = match &index {
            Some(index) => read_index(index)?,
            None => single_shard_map(&dir)?,
        };
        let config_path = dir.join(CONFIG_FILE);
        let config = if config_path.exists() {
            Some(EngramJson::read(&config_path)?)
        } else {
            None
        };
        Ok(Self {
            dir,
            index,
            weight_map,
            config,
        })
    }

    /// Where `name` lives: its shard's header and the tensor. Errors name the tensor and
    /// the index or shard.
    pub fn locate(
        &self,
        name: &str,
        headers: &mut BTreeMap<String, ShardHeader>,
    ) -> Result<TensorInfo> {
        let Some(file) = self.weight_map.get(name) else {
            let near: Vec<&str> = self
                .weight_map
                .keys()
                .filter(|k| k.contains("engram"))
                .take(8)
                .map(String::as_str)
                .collect();
            bail!(
                "tensor {name:?} is not in {} (Engram tensors there: {near:?}); \
                 --import-pattern / --import-scale-pattern name them",
                self.index.as_ref().map_or_else(
                    || self.dir.display().to_string(),
                    |p| p.display().to_string()
                )
            );
        };
        if !headers.contains_key(file) {
            let h = ShardHeader::read(&self.dir.join(file))
                .with_context(|| format!("shard {file} (holds tensor {name:?})"))?;
            headers.insert(file.clone(), h);
        }
        let h = &headers[file];
        h.tensors.get(name).cloned().with_context(|| {
            format!(
                "tensor {name:?}: the index lists it in {} but that shard's header does not \
                 have it",
                h.path.display()
            )
        })
    }
}

fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let bytes = read_regular(path, MAX_CHECKPOINT_JSON_BYTES)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let map: BTreeMap<String, String> = v
        .get("weight_map")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .with_context(|| {
            format!(
                "{} has no weight_map object of tensor name -> shard file",
                path.display()
            )
        })?;
    for f in map.values() {
        ensure!(
            !f.is_empty() && !f.contains('/') && f != ".." && f != ".",
            "{}: shard name {f:?} is not a plain file name",
            path.display()
        );
    }
    Ok(map)
}

fn single_shard_map(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut shards = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        if e.path().extension().is_some_and(|x| x == "safetensors") {
            shards.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    let [one] = shards.as_slice() else {
        bail!(
            "{} has no {INDEX_FILE} and {} .safetensors files: a sharded checkpoint needs \
             its index",
            dir.display(),
            shards.len()
        );
    };
    let h = ShardHeader::read(&dir.join(one))?;
    Ok(h.tensors.keys().map(|k| (k.clone(), one.clone())).collect())
}

/// A value of `config.json` and the key it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed<T> {
    /// The key, as spelled in `config.json`.
    pub key: &'static str,
    /// Its value.
    pub value: T,
}

/// The Engram keys of a checkpoint's `config.json` (ENGRAM-SPEC.md section 16; the names
/// are third-party reports, so several spellings are accepted for the orders and heads).
#[derive(Debug, Clone, Default)]
pub struct EngramJson {
    /// The `config.json` read.
    pub path: PathBuf,
    /// Engram layer ids (`engram_layer_ids`).
    pub layer_ids: Option<Keyed<Vec<u64>>>,
    /// Rows of each layer's table, in `layer_ids` order.
    pub num_embeddings: Option<Keyed<Vec<u64>>>,
    /// The prime rule's base: one number for every order, or one per order.
    pub vocab_sizes: Option<Keyed<Vec<u64>>>,
    /// Values per row (`engram_head_dim`).
    pub head_dim: Option<Keyed<u64>>,
    /// Largest n-gram order.
    pub max_ngram: Option<Keyed<usize>>,
    /// Hash heads per order.
    pub heads: Option<Keyed<usize>>,
    /// Raw tokenizer id used as padding.
    pub pad_id: Option<Keyed<i64>>,
    /// Seed of the hash multipliers.
    pub seed: Option<Keyed<u64>>,
    /// Short-convolution kernel size (0 or absent: none, as in V4.1).
    pub kernel_size: Option<Keyed<usize>>,
}

const MAX_NGRAM_KEYS: [&str; 3] = [
    "engram_max_ngram_size",
    "engram_max_ngram",
    "engram_ngram_orders",
];
const HEADS_KEYS: [&str; 3] = [
    "engram_n_head_per_ngram",
    "engram_num_heads",
    "engram_heads",
];

impl EngramJson {
    /// Reads the Engram keys of `config.json` (other keys are ignored).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = read_regular(path, MAX_CHECKPOINT_JSON_BYTES)?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Self::from_json(path, &v)
    }

    /// Reads the keys from parsed JSON.
    pub fn from_json(path: &Path, v: &serde_json::Value) -> Result<Self> {
        let bad = |key: &str, want: &str| {
            anyhow::anyhow!(
                "{}: key {key} = {} is not {want}",
                path.display(),
                v.get(key).map(ToString::to_string).unwrap_or_default()
            )
        };
        let u64s = |key: &'static str| -> Result<Option<Keyed<Vec<u64>>>> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => {
                    let value = match x.as_u64() {
                        Some(n) => vec![n],
                        None => serde_json::from_value(x.clone())
                            .map_err(|_| bad(key, "a non-negative integer or a list of them"))?,
                    };
                    Ok(Some(Keyed { key, value }))
                }
            }
        };
        let one = |key: &'static str| -> Result<Option<Keyed<u64>>> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => Ok(Some(Keyed {
                    key,
                    value: x
                        .as_u64()
                        .ok_or_else(|| bad(key, "a non-negative integer"))?,
                })),
            }
        };
        let first_of = |keys: &[&'static str]| -> Result<Option<Keyed<u64>>> {
            for &key in keys {
                if let Some(list) = u64s(key)? {
                    // A list of orders ([2, 3, 4]) gives the largest.
                    let value = list.value.iter().copied().max().unwrap_or(0);
                    return Ok(Some(Keyed { key, value }));
                }
            }
            Ok(None)
        };
        let as_usize = |k: Option<Keyed<u64>>| {
            k.map(|k| Keyed {
                key: k.key,
                value: k.value as usize,
            })
        };
        let pad_id = match v.get("engram_pad_id") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => Some(Keyed {
                key: "engram_pad_id",
                value: x
                    .as_i64()
                    .ok_or_else(|| bad("engram_pad_id", "an integer"))?,
            }),
        };
        Ok(Self {
            path: path.to_path_buf(),
            layer_ids: u64s("engram_layer_ids")?,
            num_embeddings: u64s("engram_num_embeddings")?,
            vocab_sizes: u64s("engram_vocab_size")?,
            head_dim: one("engram_head_dim")?,
            max_ngram: as_usize(first_of(&MAX_NGRAM_KEYS)?),
            heads: as_usize(first_of(&HEADS_KEYS)?),
            pad_id,
            seed: one("engram_seed")?,
            kernel_size: as_usize(one("engram_kernel_size")?),
        })
    }

    /// Whether the config names an Engram module at all.
    pub fn has_engram(&self) -> bool {
        self.layer_ids.is_some() || self.num_embeddings.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_in_their_spellings() {
        let v = serde_json::json!({
            "engram_layer_ids": [1, 14],
            "engram_num_embeddings": [384006168u64, 384016682u64],
            "engram_vocab_size": 16000000,
            "engram_head_dim": 256,
            "engram_ngram_orders": [2, 3, 4],
            "hidden_size": 4096,
        });
        let c = EngramJson::from_json(Path::new("config.json"), &v).expect("valid");
        assert_eq!(c.vocab_sizes.expect("set").value, [16_000_000]);
        assert_eq!(c.max_ngram.expect("set").value, 4);
        assert!(c.heads.is_none());
        let bad = serde_json::json!({ "engram_head_dim": "wide" });
        let e = EngramJson::from_json(Path::new("config.json"), &bad).expect_err("bad");
        assert!(format!("{e:#}").contains("engram_head_dim"), "{e:#}");
    }
}
