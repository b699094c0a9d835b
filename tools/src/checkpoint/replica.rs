//! A faithful replica of DeepSeek-V4.1-Flash's checkpoint layout (ENGRAM-SPEC.md section
//! 16) at any scale, for tests and measurements: sharded safetensors files named as Hugging
//! Face names them, `model.safetensors.index.json`, a `config.json` with the Engram keys,
//! and for each Engram layer `layers.{L}.engram.embed.weight` (F8_E4M3 `[rows, dim]`) and
//! `layers.{L}.engram.embed.scale` (F8_E8M0 `[rows, dim / B]`) as separate regions of one
//! shard, with unrelated tensors before, between and after them. Row counts follow the
//! prime rule for the chosen base, so the replica's rows are addressed as a real table's.
//!
//! Every byte is a function of `(seed, tensor name, offset)` ([`tensor_bytes`]), so a test
//! can regenerate any row without reading the replica; files are streamed in fixed chunks
//! (memory does not grow with the scale) and their SHA-256 is written to `SHA256SUMS`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use engram_kernels::rng::SplitMix64;
use engram_kernels::{EngramConfig, EngramLayout};
use sha2::{Digest, Sha256};

use super::safetensors::{TensorSpec, encode_header};
use super::{CONFIG_FILE, INDEX_FILE};
use crate::build::report::{Mode, Phase};

/// Bytes generated and written per step.
const CHUNK_BYTES: usize = 8 << 20;

/// What to write.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    /// Engram layer ids (`engram_layer_ids`), one shard each.
    pub layer_ids: Vec<u64>,
    /// `engram_vocab_size`: the prime rule's base for every order.
    pub vocab_size: u64,
    /// Largest n-gram order (orders 2..=N).
    pub max_ngram: usize,
    /// Hash heads per order.
    pub heads: usize,
    /// Values per row (`engram_head_dim`).
    pub head_dim: u64,
    /// Values per E8M0 scale.
    pub scale_block: u64,
    /// Seed of the bytes ([`tensor_bytes`]).
    pub seed: u64,
    /// Leave the orders and heads out of `config.json` (the importer then assumes V4.1's).
    pub omit_orders_heads: bool,
    /// Write `SHA256SUMS` beside the shards.
    pub sha256sums: bool,
}

impl ReplicaSpec {
    /// V4.1's shape (two layers, orders 2-4, 8 heads, 256 values, B = 32) at base
    /// `vocab_size` (16,000,000 is full scale).
    pub fn v41(vocab_size: u64) -> Self {
        let c = EngramConfig::v41();
        Self {
            layer_ids: c.layer_ids,
            vocab_size,
            max_ngram: c.max_ngram,
            heads: c.n_heads,
            head_dim: 256,
            scale_block: 32,
            seed: 0,
            omit_orders_heads: false,
            sha256sums: true,
        }
    }

    /// Rows of each layer under the prime rule.
    pub fn rows(&self) -> Result<Vec<u64>> {
        let config = EngramConfig {
            max_ngram: self.max_ngram,
            n_heads: self.heads,
            base_sizes: vec![self.vocab_size; self.max_ngram.saturating_sub(1)],
            layer_ids: self.layer_ids.clone(),
            seed: 0,
            pad_id: 2,
        };
        // The primes depend on the bases only; any vocabulary gives the same row counts.
        let layout = EngramLayout::new(&config, 99_092, 2)?;
        Ok(layout.layers.iter().map(|l| l.total_rows).collect())
    }

    /// The shard files, each with its tensors in file order.
    pub fn shards(&self) -> Result<Vec<(String, Vec<TensorSpec>)>> {
        ensure!(
            self.scale_block > 0 && self.head_dim.is_multiple_of(self.scale_block),
            "--head-dim {} is not a multiple of --scale-block {}",
            self.head_dim,
            self.scale_block
        );
        let rows = self.rows()?;
        let t = |name: String, dtype, shape: Vec<u64>| TensorSpec { name, dtype, shape };
        let n = self.layer_ids.len() + 2;
        let name = |i: usize| format!("model-{i:05}-of-{n:05}.safetensors");
        let mut shards = vec![(
            name(1),
            vec![
                t("embed.weight".into(), "BF16", vec![1024, 64]),
                t("layers.0.attn_norm.weight".into(), "BF16", vec![64]),
            ],
        )];
        for (i, (&l, &r)) in self.layer_ids.iter().zip(&rows).enumerate() {
            shards.push((
                name(i + 2),
                vec![
                    t(format!("layers.{l}.attn_norm.weight"), "BF16", vec![64]),
                    t(
                        format!("layers.{l}.engram.embed.weight"),
                        "F8_E4M3",
                        vec![r, self.head_dim],
                    ),
                    t(
                        format!("layers.{l}.engram.wkv.weight"),
                        "F8_E4M3",
                        vec![96, 64],
                    ),
                    t(
                        format!("layers.{l}.engram.embed.scale"),
                        "F8_E8M0",
                        vec![r, self.head_dim / self.scale_block],
                    ),
                    t(format!("layers.{l}.engram.q_weight"), "BF16", vec![4, 64]),
                ],
            ));
        }
        shards.push((
            name(n),
            vec![
                t("norm.weight".into(), "BF16", vec![64]),
                t("head.weight".into(), "BF16", vec![256, 64]),
            ],
        ));
        Ok(shards)
    }

    /// `config.json`.
    pub fn config_json(&self) -> Result<serde_json::Value> {
        let mut c = serde_json::json!({
            "model_type": "deepseek_v41_engram_replica",
            "replica_note": "written by `engram replica-checkpoint`: V4.1-Flash's layout, synthetic bytes",
            "engram_layer_ids": self.layer_ids,
            "engram_num_embeddings": self.rows()?,
            "engram_vocab_size": self.vocab_size,
            "engram_head_dim": self.head_dim,
        });
        if !self.omit_orders_heads {
            c["engram_max_ngram_size"] = self.max_ngram.into();
            c["engram_n_head_per_ngram"] = self.heads.into();
        }
        Ok(c)
    }
}

/// FNV-1a of a tensor name (keys its byte stream).
fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Bytes `offset..offset + out.len()` of tensor `name` (`dtype`) of a replica written with
/// `seed`. FP8 E4M3 values avoid the NaN codes (0x7f, 0xff); E8M0 scales lie in
/// 2^-8..2^7; BF16 values are finite.
pub fn tensor_bytes(seed: u64, name: &str, dtype: &str, offset: u64, out: &mut [u8]) {
    let base = SplitMix64::keyed(&[seed, name_key(name)]).0;
    let mut pos = 0usize;
    let mut word = offset / 8;
    let mut skip = (offset % 8) as usize;
    while pos < out.len() {
        let w = SplitMix64(base.wrapping_add(word.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .next_u64()
            .to_le_bytes();
        let take = (8 - skip).min(out.len() - pos);
        out[pos..pos + take].copy_from_slice(&w[skip..skip + take]);
        pos += take;
        skip = 0;
        word += 1;
    }
    match dtype {
        "F8_E4M3" => out.iter_mut().for_each(|b| {
            if *b & 0x7f == 0x7f {
                *b ^= 1;
            }
        }),
        "F8_E8M0" => out.iter_mut().for_each(|b| *b = 119 + (*b & 15)),
        "BF16" => {
            // The high byte of each little-endian pair: sign, exponent near 1.0.
            let first_high = usize::from(offset.is_multiple_of(2));
            out.iter_mut()
                .skip(first_high)
                .step_by(2)
                .for_each(|b| *b = (*b & 0x80) | 0x3c | (*b & 0x01));
        }
        _ => {}
    }
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaSummary {
    /// The checkpoint directory written.
    pub dir: PathBuf,
    /// Shard file names, in order.
    pub shards: Vec<String>,
    /// Rows of each layer, in `layer_ids` order.
    pub rows: Vec<u64>,
    /// Bytes written, all shards.
    pub bytes: u64,
    /// SHA-256 (hex) of each shard, by file name.
    pub sha256: BTreeMap<String, String>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Writes the replica into `dir` (created; it must not exist or be empty).
pub fn write(dir: &Path, spec: &ReplicaSpec, mode: Mode) -> Result<ReplicaSummary> {
    let shards = spec.shards()?;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .next()
            .is_none();
        ensure!(empty, "{} exists and is not empty", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut plans = Vec::new();
    let mut total = 0u64;
    for (file, tensors) in &shards {
        let (header, offsets) = encode_header(tensors, &BTreeMap::new())?;
        total += offsets.last().map_or(header.len() as u64, |&(_, e)| e);
        plans.push((file, tensors, header));
    }
    let mut phase = Phase::start(mode, "replica", "bytes", total);
    let mut done = 0u64;
    let mut sums = BTreeMap::new();
    let mut weight_map = BTreeMap::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    for (file, tensors, header) in plans {
        let path = dir.join(file);
        let mut f =
            File::create_new(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut sha = Sha256::new();
        let mut put = |f: &mut File, bytes: &[u8]| -> Result<()> {
            sha.update(bytes);
            f.write_all(bytes)
                .with_context(|| format!("writing {}", path.display()))
        };
        put(&mut f, &header)?;
        done += header.len() as u64;
        for t in tensors {
            let len = t.bytes()?;
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(CHUNK_BYTES as u64) as usize;
                tensor_bytes(spec.seed, &t.name, t.dtype, off, &mut buf[..n]);
                put(&mut f, &buf[..n])?;
                off += n as u64;
                done += n as u64;
                phase.update(done, file);
            }
            weight_map.insert(t.name.clone(), file.clone());
        }
        f.sync_all()
            .with_context(|| format!("fsync {}", path.display()))?;
        sums.insert(file.clone(), hex(&sha.finalize()));
    }
    let index =
        serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    std::fs::write(dir.join(INDEX_FILE), serde_json::to_vec_pretty(&index)?)?;
    std::fs::write(
        dir.join(CONFIG_FILE),
        serde_json::to_vec_pretty(&spec.config_json()?)?,
    )?;
    if spec.sha256sums {
        let text: String = sums.iter().map(|(f, s)| format!("{s}  {f}\n")).collect();
        std::fs::write(dir.join("SHA256SUMS"), text)?;
    }
    let seconds = phase.finish(done, "written");
    Ok(ReplicaSummary {
        dir: dir.to_path_buf(),
        shards: shards.into_iter().map(|(f, _)| f).collect(),
        rows: spec.rows()?,
        bytes: total,
        sha256: sums,
        seconds,
    })
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_a_function_of_the_offset() {
        let mut whole = vec![0u8; 100];
        tensor_bytes(7, "t", "F8_E4M3", 0, &mut whole);
        let mut part = vec![0u8; 37];
        tensor_bytes(7, "t", "F8_E4M3", 13, &mut part);
        assert_eq!(&whole[13..50], &part[..]);
        assert!(whole.iter().all(|b| b & 0x7f != 0x7f));
        let mut s = vec![0u8; 64];
        tensor_bytes(7, "s", "F8_E8M0", 3, &mut s);
        assert!(s.iter().all(|&b| (119..=134).contains(&b)));
    }

    #[test]
    fn row_counts_follow_the_prime_rule() {
        // Full scale is V4.1's reported table (ENGRAM-SPEC.md section 16).
        let rows = ReplicaSpec::v41(16_000_000).rows().expect("valid");
        assert_eq!(rows, [384_006_168, 384_016_682]);
    }
}
