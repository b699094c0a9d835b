//! [`Handle`]: what a C `engram_store *` and a Python `engram.Store` hold: a row source,
//! either an in-process [`Store`] (a table directory) or a client of the storage service
//! (`unix:PATH`, or `unix:PATH#TABLE` when the service serves several tables; see
//! `engram serve`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use engram_kernels::hash::{HashOptions, HashOutput, NgramHasher};
use engram_kernels::{CompressionTable, dequantize_rows};
use engram_store::{
    BackendKind, BackendOptions, Profile, RowLayout, RowSource, StatsSnapshot, Store, StoreOptions,
};

use crate::error::{Error, Result};
use crate::ticket::{BufPool, PendingPrefetch};

/// Prefix of a service address.
pub const SERVICE_PREFIX: &str = "unix:";
/// Requests a service client keeps in flight (its prefetch bound).
pub const SERVICE_SLOTS: u32 = 16;
/// Prefetch tickets one service client may hold before waiting on or freeing one: the
/// next prefetch (or lookup) is then a `Limit` error, never a hang (`engram.h`:
/// `ENGRAM_SERVICE_MAX_TICKETS`; Python: `engram.SERVICE_MAX_TICKETS`).
pub const SERVICE_MAX_TICKETS: usize = SERVICE_SLOTS as usize;
/// The same for an in-process store (its prefetch slots, `StoreOptions::max_in_flight`;
/// `ENGRAM_LOCAL_MAX_TICKETS`, `engram.LOCAL_MAX_TICKETS`).
pub const LOCAL_MAX_TICKETS: usize = engram_store::store::DEFAULT_MAX_IN_FLIGHT;
/// Largest token sequence hashed in one call (`batch * seq_len`).
pub const MAX_HASH_TOKENS: usize = 1 << 24;
/// Largest I/O worker count accepted.
pub const MAX_IO_WORKERS: usize = 256;

/// How to open a store. `None` fields take the store's defaults.
#[derive(Debug, Clone, Default)]
pub struct OpenConfig {
    /// `memory`, `mmap`, `pread`, `uring` or `auto` (`None`: `$ENGRAM_IO_BACKEND`, then auto).
    pub backend: Option<BackendKind>,
    /// Hot-row cache budget in bytes (0: no cache).
    pub cache_bytes: u64,
    /// A traffic profile (`profile.bin`) that seeds the cache.
    pub profile: Option<PathBuf>,
    /// Reads in flight per reader.
    pub queue_depth: Option<usize>,
    /// I/O worker threads serving prefetches.
    pub io_workers: Option<usize>,
    /// Check every device read against its block checksum (default on).
    pub verify: Option<bool>,
    /// Largest batch (rows per lookup or prefetch).
    pub max_batch_rows: Option<usize>,
    /// The `tokenizer.json` the table was built with: enables hashing of raw token ids.
    pub tokenizer: Option<PathBuf>,
    /// Without `tokenizer`: find it as the CLIs do (`$ENGRAM_TOKENIZER`, then the cache
    /// `scripts/fetch-tokenizer.sh` writes) the first time raw ids are hashed.
    pub default_tokenizer: bool,
}

/// Token ids given to [`Handle::row_ids`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenIds {
    /// Tokenizer ids; compressed with the table's tokenizer (negative ids pass unchanged).
    Raw,
    /// Canonical ids (already compressed).
    Canonical,
}

/// How a row's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowInfo {
    /// How each row's bytes encode its values.
    pub layout: RowLayout,
    /// Values per row.
    pub dim: usize,
    /// Bytes per row.
    pub row_bytes: usize,
}

impl RowInfo {
    /// `bf16`, `f16`, `f32` or `fp8_e4m3_e8m0`.
    pub fn layout_name(&self) -> &'static str {
        match self.layout {
            RowLayout::Bf16 => "bf16",
            RowLayout::F16 => "f16",
            RowLayout::F32 => "f32",
            RowLayout::Fp8E4m3E8m0 { .. } => "fp8_e4m3_e8m0",
        }
    }

    /// Values per E8M0 scale (FP8 rows), else 0.
    pub fn scale_block(&self) -> usize {
        match self.layout {
            RowLayout::Fp8E4m3E8m0 { scale_block } => scale_block as usize,
            _ => 0,
        }
    }
}

#[derive(Debug)]
struct Addressing {
    compression: Option<CompressionTable>,
    /// Found and loaded on first use ([`OpenConfig::default_tokenizer`]).
    default: Option<Box<DefaultTokenizer>>,
    /// Canonical (compressed) ids are below this.
    compressed_vocab: u64,
    hasher: NgramHasher,
}

impl Addressing {
    /// The compression of raw ids: the tokenizer given at open, else the default one
    /// (loaded once), else [`Error::NoTokenizer`].
    fn compression(&self) -> Result<&CompressionTable> {
        if let Some(c) = &self.compression {
            return Ok(c);
        }
        let d = self.default.as_ref().ok_or(Error::NoTokenizer)?;
        d.loaded
            .get_or_init(|| {
                let path = engram_files::tokenizer::resolve_path(None)?;
                d.expected.load(&path)
            })
            .as_ref()
            .map_err(Error::recorded)
    }
}

/// What the table says its tokenizer is.
#[derive(Debug)]
struct TableTokenizer {
    table: PathBuf,
    sha256: String,
    compressed_vocab_size: u64,
}

impl TableTokenizer {
    /// The compression table of the tokenizer at `path`, which must be the table's.
    fn load(&self, path: &Path) -> Result<CompressionTable> {
        let c = load_compression(path, &self.table, &self.sha256)?;
        if c.compressed_vocab_size() != self.compressed_vocab_size {
            return Err(Error::Invalid {
                what: "tokenizer",
                reason: format!(
                    "its compressed vocabulary has {} ids, the table's {}",
                    c.compressed_vocab_size(),
                    self.compressed_vocab_size
                ),
            });
        }
        Ok(c)
    }
}

#[derive(Debug)]
struct DefaultTokenizer {
    expected: TableTokenizer,
    loaded: OnceLock<Result<CompressionTable>>,
}

/// An open table with everything the bindings need. Cheap to share (`Send + Sync`).
#[derive(Debug)]
pub struct Handle {
    store: Arc<dyn RowSource>,
    /// Why the backend asked for was not used (in-process stores only).
    fallback: Option<String>,
    addressing: Addressing,
    rows: RowInfo,
    layer_ids: Vec<u64>,
    pool: Arc<BufPool>,
}

/// A backend name as the bindings accept it (`None` for `auto`).
pub fn parse_backend(name: &str) -> Result<Option<BackendKind>> {
    Ok(BackendKind::parse(name)?)
}

impl Handle {
    /// Opens `address`: a table directory, or `unix:PATH[#TABLE]`, a table served by
    /// `engram serve` (whose backend, cache and read options are the server's).
    pub fn open(address: &str, config: &OpenConfig) -> Result<Self> {
        if address.is_empty() {
            return Err(Error::Invalid {
                what: "table path",
                reason: "empty".into(),
            });
        }
        let dir = Path::new(address);
        let (store, fallback, max_in_flight): (Arc<dyn RowSource>, _, _) =
            if address.starts_with(SERVICE_PREFIX) {
                (
                    Arc::new(open_service(address, config)?),
                    None,
                    SERVICE_SLOTS as usize,
                )
            } else {
                let options = store_options(config)?;
                let store = Store::open(dir, &options)?;
                let why = store.fallback_reason().map(str::to_owned);
                (Arc::new(store), why, options.max_in_flight)
            };
        let manifest = store.manifest();
        let expected = TableTokenizer {
            table: dir.to_path_buf(),
            sha256: manifest.tokenizer_sha256.clone(),
            compressed_vocab_size: manifest.compressed_vocab_size,
        };
        let compression = match &config.tokenizer {
            Some(path) => Some(expected.load(path)?),
            None => None,
        };
        let default = (config.tokenizer.is_none() && config.default_tokenizer).then(|| {
            Box::new(DefaultTokenizer {
                expected,
                loaded: OnceLock::new(),
            })
        });
        let hasher = NgramHasher::new(store.layout(), HashOptions::default())?;
        let rows = RowInfo {
            layout: manifest.row_layout,
            dim: manifest.dim as usize,
            row_bytes: store.row_bytes(),
        };
        let layer_ids = manifest.layers.iter().map(|l| l.layer_id).collect();
        let compressed_vocab = manifest.compressed_vocab_size;
        let pool = Arc::new(BufPool::new(max_in_flight));
        Ok(Self {
            store,
            fallback,
            addressing: Addressing {
                compression,
                default,
                compressed_vocab,
                hasher,
            },
            rows,
            layer_ids,
            pool,
        })
    }

    /// The underlying row source (for Rust callers and benchmarks).
    pub fn store(&self) -> &Arc<dyn RowSource> {
        &self.store
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.rows.row_bytes
    }

    /// The row layout.
    pub fn row_info(&self) -> RowInfo {
        self.rows
    }

    /// Engram layer ids, in table order.
    pub fn layer_ids(&self) -> &[u64] {
        &self.layer_ids
    }

    /// Hash heads per position, `(N - 1) * K`: row ids per token per layer.
    pub fn n_hash_heads(&self) -> usize {
        self.addressing.hasher.n_hash_heads()
    }

    /// Largest n-gram order `N`.
    pub fn max_ngram(&self) -> usize {
        self.addressing.hasher.max_ngram()
    }

    /// Whether raw token ids can be hashed (a tokenizer was given at open, or the default
    /// one is looked for on first use).
    pub fn has_tokenizer(&self) -> bool {
        self.addressing.compression.is_some() || self.addressing.default.is_some()
    }

    /// Largest batch (rows per lookup or prefetch).
    pub fn max_batch_rows(&self) -> usize {
        self.store.max_batch_rows()
    }

    /// The backend in use (after any fallback): `memory`, `mmap`, `pread`, `uring`, or
    /// one of them as `service(...)` for a service client.
    pub fn backend_name(&self) -> &'static str {
        const NAMES: [&str; 8] = [
            "memory",
            "mmap",
            "pread",
            "uring",
            "service(memory)",
            "service(mmap)",
            "service(pread)",
            "service(uring)",
        ];
        let name = self.store.backend_name();
        NAMES.into_iter().find(|n| *n == name).unwrap_or("unknown")
    }

    /// Index of `layer_id` in the table.
    pub fn layer_index(&self, layer_id: u64) -> Result<usize> {
        self.layer_ids
            .iter()
            .position(|&l| l == layer_id)
            .ok_or_else(|| {
                Error::Kernels(engram_kernels::Error::UnknownLayer {
                    layer_id,
                    known: self.layer_ids.clone(),
                })
            })
    }

    /// Rows of layer `layer_id`.
    pub fn layer_rows(&self, layer_id: u64) -> Result<u64> {
        let li = self.layer_index(layer_id)?;
        Ok(self.store.rows(li)?)
    }

    /// Reads rows `ids` of layer `layer_id` into `out` (`ids.len() * row_bytes` bytes) on
    /// this thread.
    pub fn lookup_into(&self, layer_id: u64, ids: &[u64], out: &mut [u8]) -> Result<()> {
        let li = self.layer_index(layer_id)?;
        Ok(self.store.lookup_into(li, ids, out)?)
    }

    /// Starts reading rows `ids` of layer `layer_id` into a pinned buffer the returned
    /// [`PendingPrefetch`] owns (from a pool, returned when it is dropped). Row-id errors
    /// surface when it is waited on; an unknown layer is an error now, and so is a
    /// `Limit` error when the caller holds every ticket the store has
    /// ([`SERVICE_MAX_TICKETS`], [`LOCAL_MAX_TICKETS`]).
    pub fn prefetch(&self, layer_id: u64, ids: &[u64]) -> Result<PendingPrefetch> {
        let li = self.layer_index(layer_id)?;
        let need = ids
            .len()
            .checked_mul(self.rows.row_bytes)
            .ok_or_else(|| Error::Invalid {
                what: "prefetch size",
                reason: format!("{} rows overflow the address space", ids.len()),
            })?;
        let buf = self.pool.take(need)?;
        let ticket = self.store.prefetch(li, ids, buf);
        let pool = Arc::clone(&self.pool);
        if !ticket.is_ready() {
            return Ok(PendingPrefetch::new(ticket, ids.len(), pool));
        }
        // A prefetch refused for want of a slot (the caller holds every ticket) fails
        // now, not at its wait: the caller is about to ask for more.
        let (buf, result) = ticket.wait();
        match result.map_err(Error::from) {
            Err(e) if e.kind() == crate::ErrorKind::Limit => {
                pool.put(buf);
                Err(e)
            }
            result => Ok(PendingPrefetch::settled(buf, result, ids.len(), pool)),
        }
    }

    /// Row ids of `batch` sequences of `seq_len` token ids each (`ids`, row-major) for
    /// layer `layer_id`, into `out` (`[batch][seq_len][n_hash_heads]`). Position `t` hashes
    /// the n-grams ending at `t` within its own sequence (earlier positions read as padding).
    pub fn row_ids(
        &self,
        layer_id: u64,
        ids: &[i64],
        batch: usize,
        seq_len: usize,
        kind: TokenIds,
        out: &mut [u64],
    ) -> Result<()> {
        let li = self.layer_index(layer_id)?;
        let tokens = batch.checked_mul(seq_len).ok_or(Error::Invalid {
            what: "token count",
            reason: "batch * seq_len overflows".into(),
        })?;
        if tokens > MAX_HASH_TOKENS {
            return Err(Error::Store(engram_store::Error::Limit {
                what: "tokens per hashing call",
                name: "MAX_HASH_TOKENS",
                limit: MAX_HASH_TOKENS,
                found: tokens,
            }));
        }
        let hasher = &self.addressing.hasher;
        match kind {
            TokenIds::Canonical => {
                check_canonical(ids, self.addressing.compressed_vocab)?;
                hasher.hash_into(li, ids, batch, seq_len, HashOutput::RowId, out)?;
            }
            TokenIds::Raw => {
                let compression = self.addressing.compression()?;
                if ids.len() != tokens {
                    return Err(Error::Buffer {
                        what: "token ids [batch][seq_len]",
                        unit: "ids",
                        expected: tokens,
                        found: ids.len(),
                    });
                }
                let mut canonical = vec![0i64; ids.len()];
                compression.compress_into(ids, &mut canonical)?;
                hasher.hash_into(li, &canonical, batch, seq_len, HashOutput::RowId, out)?;
            }
        }
        Ok(())
    }

    /// Dequantises whole rows (`rows.len()` a multiple of `row_bytes`) to float32
    /// (`out`: `rows * dim` values).
    pub fn dequantize(&self, rows: &[u8], out: &mut [f32]) -> Result<()> {
        let rb = self.rows.row_bytes;
        if !rows.len().is_multiple_of(rb) {
            return Err(Error::Buffer {
                what: "rows (a multiple of row_bytes)",
                unit: "bytes",
                expected: rows.len().div_ceil(rb) * rb,
                found: rows.len(),
            });
        }
        let want = rows.len() / rb * self.rows.dim;
        if out.len() != want {
            return Err(Error::Buffer {
                what: "dequantised values (rows x dim)",
                unit: "floats",
                expected: want,
                found: out.len(),
            });
        }
        Ok(dequantize_rows(self.rows.layout, self.rows.dim, rows, out)?)
    }

    /// Counters and latencies (a service client asks its server).
    pub fn stats(&self) -> Result<StatsSnapshot> {
        Ok(self.store.stats()?)
    }

    /// The stats as one JSON object, with the fallback reason when the backend asked for
    /// was not used.
    pub fn stats_json(&self) -> Result<String> {
        let mut v = serde_json::to_value(self.stats()?).map_err(|e| Error::Invalid {
            what: "stats",
            reason: e.to_string(),
        })?;
        if let serde_json::Value::Object(m) = &mut v {
            m.insert(
                "fallback_reason".into(),
                self.fallback
                    .as_deref()
                    .map_or(serde_json::Value::Null, |r| {
                        serde_json::Value::String(r.to_owned())
                    }),
            );
        }
        Ok(v.to_string())
    }

    /// Resets counters and histograms (e.g. after warm-up).
    pub fn reset_stats(&self) -> Result<()> {
        Ok(self.store.reset_stats()?)
    }
}

/// Canonical ids are compressed ids: below the table's compressed vocabulary (negative ids
/// are padding and pass, as they do through compression).
fn check_canonical(ids: &[i64], vocab: u64) -> Result<()> {
    match ids
        .iter()
        .position(|&t| u64::try_from(t).is_ok_and(|t| t >= vocab))
    {
        None => Ok(()),
        Some(index) => Err(Error::Kernels(engram_kernels::Error::IdOutOfRange {
            id: ids[index],
            index,
            vocab_size: usize::try_from(vocab).unwrap_or(usize::MAX),
        })),
    }
}

/// A client of the service at `address`; the options that belong to the server (backend,
/// cache, profile, read options) are refused rather than silently ignored.
fn open_service(address: &str, c: &OpenConfig) -> Result<engram_client::RemoteStore> {
    let set = [
        ("backend", c.backend.is_some()),
        ("cache_bytes", c.cache_bytes > 0),
        ("profile", c.profile.is_some()),
        ("queue_depth", c.queue_depth.is_some()),
        ("io_workers", c.io_workers.is_some()),
        ("verify", c.verify == Some(false)),
    ];
    if let Some((name, _)) = set.iter().find(|(_, on)| *on) {
        return Err(Error::Invalid {
            what: "option for a service address",
            reason: format!(
                "{name} is chosen by the server (engram serve flags); a client of {address} \
                 cannot set it"
            ),
        });
    }
    let options = engram_client::ClientOptions {
        slots: SERVICE_SLOTS,
        slot_rows: c
            .max_batch_rows
            .map_or(engram_client::client::DEFAULT_SLOT_ROWS, |r| {
                u32::try_from(r).unwrap_or(u32::MAX)
            }),
        ..engram_client::ClientOptions::default()
    };
    engram_client::RemoteStore::connect(address, &options)
        .map_err(|e| Error::Store(engram_store::Error::from(e)))
}

fn store_options(c: &OpenConfig) -> Result<StoreOptions> {
    let mut o = StoreOptions {
        backend: BackendOptions {
            kind: c.backend,
            ..BackendOptions::default()
        },
        cache_bytes: c.cache_bytes,
        ..StoreOptions::default()
    };
    if let Some(q) = c.queue_depth {
        o.backend.queue_depth = q;
    }
    if let Some(v) = c.verify {
        o.backend.verify = v;
    }
    if let Some(w) = c.io_workers {
        if w == 0 || w > MAX_IO_WORKERS {
            return Err(Error::Store(engram_store::Error::Limit {
                what: "I/O workers",
                name: "MAX_IO_WORKERS",
                limit: MAX_IO_WORKERS,
                found: w,
            }));
        }
        o.io_workers = w;
    }
    if let Some(b) = c.max_batch_rows {
        o.max_batch_rows = b;
    }
    if let Some(p) = &c.profile {
        o.profile = Some(Profile::read(p)?);
    }
    Ok(o)
}

fn load_compression(path: &Path, table: &Path, table_sha: &str) -> Result<CompressionTable> {
    let tok = engram_files::tokenizer::load(path)?;
    if !tok.sha256.eq_ignore_ascii_case(table_sha) {
        return Err(Error::TokenizerMismatch {
            path: path.display().to_string(),
            table: table.display().to_string(),
            expected: table_sha.to_owned(),
            found: tok.sha256,
        });
    }
    Ok(CompressionTable::from_tokenizer(&tok.tokenizer)?)
}

#[cfg(test)]
mod properties {
    use super::check_canonical;
    use proptest::prelude::*;

    proptest! {
        /// Canonical ids pass exactly when each is negative (padding) or below the
        /// vocabulary; the error names the first one that is not, as OUT_OF_RANGE.
        #[test]
        fn canonical_ids_are_checked_against_the_vocabulary(
            ids in proptest::collection::vec(any::<i64>(), 0..40),
            vocab in 1u64..200_000,
        ) {
            let first_bad = ids.iter().position(|&t| t >= 0 && t as u64 >= vocab);
            match check_canonical(&ids, vocab) {
                Ok(()) => prop_assert!(first_bad.is_none()),
                Err(e) => {
                    prop_assert_eq!(e.kind(), crate::ErrorKind::OutOfRange);
                    let i = first_bad.expect("an id out of range");
                    let want = format!("at index {i} ");
                    prop_assert!(e.to_string().contains(&want), "{}", e);
                }
            }
        }
    }
}
