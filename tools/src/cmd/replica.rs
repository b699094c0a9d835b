//! `engram replica-checkpoint DIR`: a synthetic checkpoint directory in DeepSeek-V4.1-Flash's
//! layout (`checkpoint::replica`), the input `engram-build --import DIR` is tested and
//! measured on.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args as ClapArgs;

use crate::build::report::Mode;
use crate::checkpoint::replica::{ReplicaSpec, write};
use crate::json_line;

/// Write a V4.1-shaped checkpoint (safetensors shards, index, config.json) at any scale.
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "What it writes (ENGRAM-SPEC.md section 16, third-party reports of the \
released checkpoint):\n  \
  DIR/model-0000N-of-0000M.safetensors   shard 1 and M hold unrelated tensors; shard 1+i holds\n  \
                                         Engram layer i: layers.{L}.engram.embed.weight\n  \
                                         F8_E4M3 [rows, 256], then an unrelated tensor, then\n  \
                                         layers.{L}.engram.embed.scale F8_E8M0 [rows, 8]\n  \
  DIR/model.safetensors.index.json       weight_map: tensor -> shard\n  \
  DIR/config.json                        engram_layer_ids, engram_num_embeddings,\n  \
                                         engram_vocab_size, engram_head_dim (+ orders, heads)\n  \
  DIR/SHA256SUMS                         SHA-256 of every shard\n\n\
Rows per layer follow the prime rule for --vocab-size (engram_vocab_size), so the replica is \
addressed exactly as a real table. Bytes are a function of (seed, tensor, offset) \
(checkpoint::replica::tensor_bytes); FP8 values avoid NaN codes.\n\n\
Sizes: one layer is about 24 x vocab-size rows of 264 bytes; full scale (16000000) is \
384,006,168 + 384,016,682 rows = 202.8 GB.\n\n\
Examples:\n  \
  engram replica-checkpoint /tmp/v41-small --vocab-size 5000          # 2 layers, ~63 MB\n  \
  engram replica-checkpoint /data/v41-q --vocab-size 4000000 --layers 1   # ~25 GB\n  \
  engram-build --import /data/v41-q --out /data/v41-q-table"
)]
/// Write a synthetic checkpoint in DeepSeek-V4.1-Flash's layout (import tests).
pub struct Args {
    /// Output directory (created; must not exist or be empty).
    pub dir: PathBuf,
    /// engram_vocab_size: the prime rule's base for every order (16000000 = full scale).
    #[arg(long, default_value_t = 16_000_000)]
    pub vocab_size: u64,
    /// Engram layer ids (engram_layer_ids).
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 14])]
    pub layers: Vec<u64>,
    /// Largest n-gram order (orders 2..=N).
    #[arg(long, default_value_t = 4)]
    pub max_ngram: usize,
    /// Hash heads per order.
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    /// Values per row (engram_head_dim).
    #[arg(long, default_value_t = 256)]
    pub head_dim: u64,
    /// Values per E8M0 scale.
    #[arg(long, default_value_t = 32)]
    pub scale_block: u64,
    /// Seed of the bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Leave the orders and heads out of config.json (the importer assumes V4.1's 2-4, 8).
    #[arg(long)]
    pub omit_orders_heads: bool,
    /// Do not write SHA256SUMS (as a checkpoint without checksums).
    #[arg(long)]
    pub no_sha256sums: bool,
    /// JSON Lines progress and summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let spec = ReplicaSpec {
        layer_ids: args.layers,
        vocab_size: args.vocab_size,
        max_ngram: args.max_ngram,
        heads: args.heads,
        head_dim: args.head_dim,
        scale_block: args.scale_block,
        seed: args.seed,
        omit_orders_heads: args.omit_orders_heads,
        sha256sums: !args.no_sha256sums,
    };
    let rows = spec.rows()?;
    let need: u64 =
        rows.iter().sum::<u64>() * (spec.head_dim + spec.head_dim / spec.scale_block.max(1));
    let free = crate::build::free_bytes(&args.dir.join("x"))?;
    anyhow::ensure!(
        need <= free,
        "the replica needs about {need} bytes; the file system holding {} has {free} free \
         (check --vocab-size)",
        args.dir.display()
    );
    let summary = write(&args.dir, &spec, Mode::choose(args.json, false))?;
    if args.json {
        json_line("summary", &serde_json::to_value(&summary)?);
    } else {
        crate::outln!(
            "wrote {} ({} shards, {} bytes, rows per layer {:?}) in {:.1} s",
            summary.dir.display(),
            summary.shards.len(),
            summary.bytes,
            summary.rows,
            summary.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
