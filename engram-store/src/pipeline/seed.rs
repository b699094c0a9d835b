//! Cache seeding: the rows a profile names are read once, sorted, through a driver of a
//! second backend whose reads merge across gaps, before the reactors start. An engine
//! failure while seeding is the same transition as in a reactor: counted, the engine
//! rebuilt (without the fault plan's engine failures), the read tried again once.

use std::sync::Arc;

use crate::backend::{self, Backend, BackendKind, BackendOptions, IoCounters};
use crate::cache::SeedOptions;
use crate::error::{Error, Result};
use crate::pipeline::Shared;
use crate::profile::Profile;
use crate::reads::Driver;
use crate::table::Table;

/// Seeding reads: longest merged read.
pub const SEED_MAX_READ_BYTES: u64 = 512 << 10;
/// Seeding reads: merge reads whose gap is at most this. Seeding reads a profile's rows
/// once, sorted by row: on a device that gives ~330 MB/s sequentially but ~5k random
/// 4 KiB reads/s (this project's VM), reading a 64 KiB gap costs less than one more read.
pub const SEED_COALESCE_GAP_BYTES: u64 = 64 << 10;
/// Seeding reads in flight (with [`SEED_MAX_READ_BYTES`]: 4 MiB of staging, within the
/// usual 8 MiB RLIMIT_MEMLOCK that io_uring's registered buffers count against).
pub const SEED_QUEUE_DEPTH: usize = 8;

/// A second backend for seeding the cache on device backends: the same engine, reads
/// coalesced across gaps ([`SEED_COALESCE_GAP_BYTES`]), no records. `None` (seed through
/// the store's own backend) for resident and external backends, or when it cannot open.
fn seed_backend(
    table: &Arc<Table>,
    options: &BackendOptions,
    kind: BackendKind,
) -> Option<Arc<dyn Backend>> {
    if options.engine.is_some() || !matches!(kind, BackendKind::Uring | BackendKind::Pread) {
        return None;
    }
    let mut o = options.clone();
    o.kind = Some(kind);
    o.records = None;
    o.queue_depth = o.queue_depth.min(SEED_QUEUE_DEPTH);
    o.pread_threads = o.pread_threads.min(SEED_QUEUE_DEPTH);
    o.coalesce_gap_bytes = o.coalesce_gap_bytes.max(SEED_COALESCE_GAP_BYTES);
    o.max_read_bytes = o.max_read_bytes.max(SEED_MAX_READ_BYTES);
    match backend::open_backend(table, &o) {
        Ok(opened) => Some(opened.backend),
        Err(e) => {
            tracing::info!(target: "engram_store", "seeding through the store's backend: {e}");
            None
        }
    }
}

/// Seeds the store's cache from `profile` (a no-op without a cache); returns the rows
/// seeded.
pub(crate) fn seed_cache(
    shared: &Shared,
    options: &BackendOptions,
    profile: &Profile,
    seed: &SeedOptions,
) -> Result<u64> {
    let Some(cache) = &shared.cache else {
        return Ok(0);
    };
    let second = seed_backend(&shared.table, options, shared.backend.kind());
    let source: &dyn Backend = match &second {
        Some(b) => &**b,
        None => &*shared.backend,
    };
    let mut driver = Some(source.driver(false)?);
    let layout = shared.table.layout();
    cache.seed(
        profile,
        seed,
        |lid| layout.layer_index(lid).ok(),
        |li, rows, out| read_retrying(shared, source, &mut driver, li, rows, out),
    )
}

/// One seeding read; after an engine failure, the engine is rebuilt and the read tried
/// once more.
pub(crate) fn read_retrying(
    shared: &Shared,
    source: &dyn Backend,
    driver: &mut Option<Driver>,
    layer: usize,
    rows: &[u64],
    out: &mut [u8],
) -> Result<()> {
    let mut failure = None;
    for _ in 0..2 {
        let d = match driver {
            Some(d) => d,
            None => {
                let d = source.driver(true)?;
                shared.metrics.record_engine_rebuild();
                driver.insert(d)
            }
        };
        match d.read_sync(layer, rows, &[], out, &mut IoCounters::default()) {
            Err(e @ Error::Engine { .. }) => {
                tracing::warn!(target: "engram_store", "seeding the cache: {e}");
                shared.metrics.record_engine_failure();
                *driver = None;
                failure = Some(e);
            }
            r => return r,
        }
    }
    Err(failure.unwrap_or(Error::Cancelled))
}
