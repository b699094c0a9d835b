//! Tokenizer compression: the surjection `P: raw id -> canonical id` (`ENGRAM-SPEC.md` s. 2).
//!
//! Built from a `tokenizer.json` with the `tokenizers` crate's own decoder and normalizers,
//! so it reproduces the reference table bit for bit (checked by SHA-256 in the tests).

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tokenizers::normalizers::{Lowercase, NFD, NFKC, Replace, Sequence, Strip, StripAccents};
use tokenizers::{NormalizedString, Normalizer, NormalizerWrapper, Tokenizer};

use crate::error::{Error, Result};

/// The raw-id -> canonical-id table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionTable {
    // (V,) canonical id of every raw id
    lookup: Vec<u32>,
    compressed_vocab_size: u64,
}

/// Private-use code point that protects a lone space from the strip step.
const SPACE_SENTINEL: &str = "\u{E000}";

fn normalizer() -> Result<Sequence> {
    let replace = |pattern: &str, content: &str, regex: bool| -> Result<NormalizerWrapper> {
        let pattern = if regex {
            tokenizers::normalizers::replace::ReplacePattern::Regex(pattern.to_owned())
        } else {
            tokenizers::normalizers::replace::ReplacePattern::String(pattern.to_owned())
        };
        Ok(Replace::new(pattern, content)
            .map_err(|e| Error::TokenizerContents(format!("normalizer regex: {e}")))?
            .into())
    };
    Ok(Sequence::new(vec![
        NFKC.into(),
        NFD.into(),
        StripAccents.into(),
        Lowercase.into(),
        replace(r"[ \t\r\n]+", " ", true)?,
        replace(r"^ $", SPACE_SENTINEL, true)?,
        Strip::new(true, true).into(),
        replace(SPACE_SENTINEL, " ", false)?,
    ]))
}

impl CompressionTable {
    /// A table given as data: `lookup[raw] = canonical`, every value `< compressed_vocab_size`.
    pub fn from_lookup(lookup: &[i64], compressed_vocab_size: u64) -> Result<Self> {
        if lookup.is_empty() {
            return Err(Error::CompressionTable("the lookup table is empty".into()));
        }
        if compressed_vocab_size == 0 || compressed_vocab_size > u64::from(u32::MAX) {
            return Err(Error::CompressionTable(format!(
                "compressed vocabulary size {compressed_vocab_size} is not in 1..2^32"
            )));
        }
        let lookup = lookup
            .iter()
            .enumerate()
            .map(|(raw, &c)| {
                u32::try_from(c)
                    .ok()
                    .filter(|&c| u64::from(c) < compressed_vocab_size)
                    .ok_or_else(|| {
                        Error::CompressionTable(format!(
                            "raw id {raw} maps to {c}, outside 0..{compressed_vocab_size}"
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            lookup,
            compressed_vocab_size,
        })
    }

    /// The identity table over `vocab_size` ids.
    pub fn identity(vocab_size: u32) -> Self {
        Self {
            lookup: (0..vocab_size).collect(),
            compressed_vocab_size: u64::from(vocab_size),
        }
    }

    /// Builds the table from a loaded tokenizer: decode each id alone (special tokens kept),
    /// keep the raw vocabulary string for undecodable fragments, otherwise normalise;
    /// first-seen numbering of the keys.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Self> {
        let vocab_size = raw_vocab_size(tokenizer)?;
        let norm = normalizer()?;
        let mut keys: HashMap<String, u32> = HashMap::with_capacity(vocab_size as usize);
        let mut lookup = Vec::with_capacity(vocab_size as usize);
        for id in 0..vocab_size {
            let text = tokenizer
                .decode(&[id], false)
                .map_err(|e| Error::TokenizerContents(format!("cannot decode id {id}: {e}")))?;
            let key = if text.contains('\u{FFFD}') {
                tokenizer.id_to_token(id).ok_or_else(|| {
                    Error::TokenizerContents(format!("id {id} has no vocabulary string"))
                })?
            } else {
                let mut normalized = NormalizedString::from(text.as_str());
                norm.normalize(&mut normalized)
                    .map_err(|e| Error::TokenizerContents(format!("normalising id {id}: {e}")))?;
                let key = normalized.get();
                if key.is_empty() { text } else { key.to_owned() }
            };
            let next = keys.len() as u32;
            lookup.push(*keys.entry(key).or_insert(next));
        }
        Ok(Self {
            lookup,
            compressed_vocab_size: keys.len() as u64,
        })
    }

    /// `V`, the number of raw ids.
    pub fn vocab_size(&self) -> usize {
        self.lookup.len()
    }

    /// `V'`, the number of canonical ids.
    pub fn compressed_vocab_size(&self) -> u64 {
        self.compressed_vocab_size
    }

    /// The table itself.
    pub fn lookup(&self) -> &[u32] {
        &self.lookup
    }

    /// One id: negative ids pass through, ids `>= V` are an error.
    #[inline]
    pub fn compress_id(&self, raw: i64) -> Result<i64> {
        self.compress_at(raw, 0)
    }

    #[inline]
    fn compress_at(&self, raw: i64, index: usize) -> Result<i64> {
        if raw < 0 {
            return Ok(raw);
        }
        usize::try_from(raw)
            .ok()
            .and_then(|i| self.lookup.get(i))
            .map(|&c| i64::from(c))
            .ok_or(Error::IdOutOfRange {
                id: raw,
                index,
                vocab_size: self.lookup.len(),
            })
    }

    /// Compresses a batch into `out` (same length).
    pub fn compress_into(&self, raw: &[i64], out: &mut [i64]) -> Result<()> {
        if raw.len() != out.len() {
            return Err(Error::Shape {
                what: "compressed ids",
                expected: raw.len(),
                found: out.len(),
            });
        }
        for (i, (o, &x)) in out.iter_mut().zip(raw).enumerate() {
            *o = self.compress_at(x, i)?;
        }
        Ok(())
    }

    /// Compresses a batch into a new vector.
    pub fn compress(&self, raw: &[i64]) -> Result<Vec<i64>> {
        let mut out = vec![0; raw.len()];
        self.compress_into(raw, &mut out)?;
        Ok(out)
    }

    /// SHA-256 (hex) of the table written as little-endian int32, as in the conformance README.
    pub fn sha256_i32le(&self) -> String {
        let mut h = Sha256::new();
        for &c in &self.lookup {
            h.update(c.to_le_bytes());
        }
        hex(&h.finalize())
    }
}

/// `V`: one past the largest id of the vocabulary including added tokens; every id below it
/// must exist (the reference iterates `0..len(tokenizer)`).
pub fn raw_vocab_size(tokenizer: &Tokenizer) -> Result<u32> {
    let vocab = tokenizer.get_vocab(true);
    let max = vocab
        .values()
        .copied()
        .max()
        .ok_or_else(|| Error::TokenizerContents("the vocabulary is empty".into()))?;
    let size = max
        .checked_add(1)
        .ok_or_else(|| Error::TokenizerContents("token id u32::MAX".into()))?;
    let mut present = vec![false; size as usize];
    for &id in vocab.values() {
        present[id as usize] = true;
    }
    if let Some(hole) = present.iter().position(|&p| !p) {
        return Err(Error::TokenizerContents(format!(
            "ids are not dense: id {hole} is missing below the largest id {max}"
        )));
    }
    Ok(size)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_out_of_range_are_errors() {
        let t = CompressionTable::identity(10);
        assert_eq!(t.compress(&[-5, 0, 9]).expect("valid"), [-5, 0, 9]);
        let err = t.compress(&[1, 10]).expect_err("10 is out of range");
        assert!(matches!(
            err,
            Error::IdOutOfRange {
                id: 10,
                index: 1,
                vocab_size: 10
            }
        ));
        assert!(t.compress_id(i64::MAX).is_err());
    }

    #[test]
    fn bad_tables_are_errors() {
        assert!(CompressionTable::from_lookup(&[], 1).is_err());
        assert!(CompressionTable::from_lookup(&[0, 3], 3).is_err());
        assert!(CompressionTable::from_lookup(&[0, -1], 3).is_err());
        assert!(CompressionTable::from_lookup(&[0, 1], 0).is_err());
    }

    #[test]
    fn normalizer_follows_the_spec() {
        let norm = normalizer().expect("regexes compile");
        let cases = [
            (" Apple", "apple"),
            ("\t\n ", " "),
            (" ", " "),
            ("\u{00C4}", "a"),
            ("\u{FB01}", "fi"),
            ("a \t b", "a b"),
            ("\u{3000}x", "x"),
        ];
        for (input, want) in cases {
            let mut n = NormalizedString::from(input);
            norm.normalize(&mut n).expect("normalises");
            assert_eq!(n.get(), want, "input {input:?}");
        }
    }
}
