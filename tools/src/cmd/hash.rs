//! `engram hash`: tokenize a text and show its canonical ids and Engram row ids.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use engram_files::tokenizer;
use engram_kernels::hash::{HashOptions, HashOutput, NgramHasher};
use engram_kernels::{CompressionTable, EngramLayout};

use crate::addressing::AddressingArgs;
use crate::json_line;

/// Hash a text into Engram row ids.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  engram hash --text 'def main():'\n  \
    engram hash --text 'Hello world' --layers 1,15 --max-ngram 3 --heads 8 --json\n  \
    engram hash --preset v41 --text 'x = 1'\n\n\
    The tokenizer defaults to $ENGRAM_TOKENIZER, then the DeepSeek tokenizer cached by \
    scripts/fetch-tokenizer.sh.")]
/// Tokenize a text and print its canonical ids and the row ids of every Engram layer.
pub struct Args {
    /// Text to tokenize.
    #[arg(long)]
    pub text: String,
    /// tokenizer.json to use (default: $ENGRAM_TOKENIZER, then the cached DeepSeek file).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The addressing (preset, layers, orders, heads, bases).
    #[command(flatten)]
    pub addressing: AddressingArgs,
    /// Prepend this raw id (e.g. 0, the DeepSeek BOS) before the text's ids.
    #[arg(long, allow_negative_numbers = true)]
    pub bos: Option<i64>,
    /// Opt-in look-back barrier id: positions at or before it read as padding
    /// (our reading of the V4.1 reports; off by default, matching the reference).
    #[arg(long, allow_negative_numbers = true)]
    pub barrier: Option<i64>,
    /// Print head indices (before offsets) instead of row ids.
    #[arg(long)]
    pub head_indices: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let config = args.addressing.config()?;
    let path = tokenizer::resolve_path(args.tokenizer.as_deref())?;
    let loaded = tokenizer::load(&path)?;
    let table = CompressionTable::from_tokenizer(&loaded.tokenizer)
        .with_context(|| format!("building the compression table from {}", path.display()))?;
    let encoding = loaded
        .tokenizer
        .encode(args.text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing the text: {e}"))?;
    let mut raw: Vec<i64> = args.bos.into_iter().collect();
    raw.extend(encoding.get_ids().iter().map(|&i| i64::from(i)));
    anyhow::ensure!(!raw.is_empty(), "the text produced no tokens");
    let tokens: Vec<String> = raw
        .iter()
        .map(|&id| {
            u32::try_from(id)
                .ok()
                .and_then(|id| loaded.tokenizer.decode(&[id], false).ok())
                .unwrap_or_default()
        })
        .collect();
    let compressed = table.compress(&raw)?;
    let pad = table.compress_id(config.pad_id)?;
    let layout = EngramLayout::new(&config, table.compressed_vocab_size(), pad)?;
    let hasher = NgramHasher::new(
        &layout,
        HashOptions {
            barrier_id: args.barrier,
        },
    )?;
    let heads = hasher.n_hash_heads();
    let kind = if args.head_indices {
        HashOutput::HeadIndex
    } else {
        HashOutput::RowId
    };
    let mut per_layer = Vec::with_capacity(layout.layers.len());
    for li in 0..layout.layers.len() {
        let mut out = vec![0u64; raw.len() * heads];
        hasher.hash_into(li, &compressed, 1, raw.len(), kind, &mut out)?;
        per_layer.push(out);
    }
    let field = if args.head_indices {
        "head_indices"
    } else {
        "row_ids"
    };
    if args.json {
        let layers: Vec<_> = layout
            .layers
            .iter()
            .zip(&per_layer)
            .map(|(l, ids)| {
                serde_json::json!({
                    "layer_id": l.layer_id,
                    "total_rows": l.total_rows,
                    field: ids.chunks(heads).collect::<Vec<_>>(),
                })
            })
            .collect();
        json_line(
            "hash",
            &serde_json::json!({
                "tokenizer": crate::json_path(&path),
                "tokenizer_sha256": loaded.sha256,
                "config": config,
                "compressed_vocab_size": table.compressed_vocab_size(),
                "compressed_pad_id": pad,
                "tokens": tokens,
                "raw_ids": raw,
                "compressed_ids": compressed,
                "layers": layers,
            }),
        );
    } else {
        crate::outln!(
            "tokenizer {} (sha256 {}), V = {}, V' = {}",
            path.display(),
            &loaded.sha256[..16],
            table.vocab_size(),
            table.compressed_vocab_size()
        );
        crate::outln!("{:>4}  {:>7}  {:>7}  token", "pos", "raw", "canon");
        for (t, ((r, c), tok)) in raw.iter().zip(&compressed).zip(&tokens).enumerate() {
            crate::outln!("{t:>4}  {r:>7}  {c:>7}  {tok:?}");
        }
        for (l, ids) in layout.layers.iter().zip(&per_layer) {
            crate::outln!(
                "layer {} ({} rows, {} heads: orders 2..={} x {}), {field}:",
                l.layer_id,
                l.total_rows,
                heads,
                config.max_ngram,
                config.n_heads
            );
            for (t, row) in ids.chunks(heads).enumerate() {
                let list: Vec<String> = row.iter().map(u64::to_string).collect();
                crate::outln!("{t:>4}  {}", list.join(" "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
