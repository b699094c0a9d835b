//! The two id streams: raw tokenizer ids (what Engram hashes) and the model's reduced ids
//! (`vocab.json`: reduced id -> raw id; every other raw id maps to the unknown id, which the
//! model never emits). Streaming detokenisation over the raw ids.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::error::{Error, Result, config_err};

/// Largest `vocab.json` accepted (a reduced id list of the full DeepSeek vocabulary is ~1 MB).
pub const MAX_VOCAB_BYTES: engram_files::file::Limit = engram_files::file::Limit {
    what: "vocab.json",
    name: "MAX_VOCAB_BYTES",
    bytes: 64 << 20,
};

/// `format` of a supported `vocab.json`.
pub const VOCAB_FORMAT: &str = "engram-moe-vocab-v1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabFile {
    format: String,
    vocab_size: usize,
    unk_id: usize,
    raw_vocab_size: usize,
    reduced_to_raw: Vec<u32>,
    #[allow(dead_code)]
    note: String,
}

/// The reduced vocabulary.
#[derive(Debug, Clone)]
pub struct Vocab {
    reduced_to_raw: Vec<u32>,
    raw_to_reduced: HashMap<u32, u32>,
    unk: u32,
}

impl Vocab {
    /// Reads `vocab.json` (checked against the `SHA256SUMS` beside it) and checks it against
    /// the config.
    pub fn load(path: &Path, config: &ModelConfig) -> Result<Self> {
        let (bytes, _) = engram_files::file::read_checked(path, MAX_VOCAB_BYTES)?;
        let v: VocabFile =
            serde_json::from_slice(&bytes).map_err(|e| config_err(path, e.to_string()))?;
        let bad = |r: &str| Err(config_err(path, r.to_owned()));
        if v.format != VOCAB_FORMAT {
            return bad("format is not engram-moe-vocab-v1");
        }
        if v.vocab_size != config.vocab_size || v.unk_id != config.unk_token_id {
            return bad("vocab_size / unk_id disagree with config.json");
        }
        if v.raw_vocab_size != config.raw_vocab_size {
            return bad("raw_vocab_size disagrees with config.json");
        }
        if v.reduced_to_raw.len() != v.vocab_size - 1 {
            return bad(
                "reduced_to_raw must list vocab_size - 1 raw ids (the unknown id has none)",
            );
        }
        if v.reduced_to_raw
            .iter()
            .any(|&r| r as usize >= v.raw_vocab_size)
        {
            return bad("reduced_to_raw holds a raw id outside the raw vocabulary");
        }
        if v.reduced_to_raw.windows(2).any(|w| w[0] >= w[1]) {
            return bad("reduced_to_raw must be strictly increasing");
        }
        if v.reduced_to_raw.get(config.bos_token_id) != Some(&config.raw_bos_token_id) {
            return bad("bos_token_id does not map to raw_bos_token_id");
        }
        let raw_to_reduced = v
            .reduced_to_raw
            .iter()
            .enumerate()
            .map(|(i, &r)| (r, i as u32))
            .collect();
        Ok(Self {
            reduced_to_raw: v.reduced_to_raw,
            raw_to_reduced,
            unk: v.unk_id as u32,
        })
    }

    /// The model's id for a raw id (the unknown id if it is not in the reduced vocabulary).
    pub fn reduce(&self, raw: u32) -> u32 {
        self.raw_to_reduced.get(&raw).copied().unwrap_or(self.unk)
    }

    /// The raw id of a reduced id; `None` for the unknown id.
    pub fn raw(&self, reduced: u32) -> Option<u32> {
        self.reduced_to_raw.get(reduced as usize).copied()
    }

    /// The unknown id.
    pub fn unk(&self) -> u32 {
        self.unk
    }
}

/// Emits text as tokens arrive, holding back incomplete UTF-8 sequences.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    /// Appends a raw id; returns the newly complete text, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, raw: u32) -> Result<String> {
        self.ids.push(raw);
        let text = tokenizer
            .decode(&self.ids, false)
            .map_err(|e| Error::Input(format!("detokenising: {e}")))?;
        if text.ends_with('\u{FFFD}') || text.len() < self.emitted {
            return Ok(String::new());
        }
        let new = text.get(self.emitted..).unwrap_or_default().to_owned();
        self.emitted = text.len();
        Ok(new)
    }
}
