//! The mmap tier: layer files mapped read-only; each checksum block is verified the first
//! time a row in it is read (a bitmap records verified blocks).
//!
//! Contract: the mapped files were validated at open (sizes match their headers) and must
//! not be truncated while mapped; a file shrunk underneath a live mapping would fault
//! (SIGBUS) on access, as with any mmap reader. Mappings are read-only and private.
#![allow(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{Advice, Mmap, MmapOptions};

use super::{Backend, BackendKind, BackendOptions, IoCounters};
use crate::error::{Error, Result, io};
use crate::format::Geometry;
use crate::metrics::SharedHist;
use crate::reads::{Driver, ResidentRows};
use crate::table::Table;

#[derive(Debug)]
struct MappedLayer {
    map: Mmap,
    // one bit per checksum block: verified
    verified: Vec<AtomicU64>,
}

/// Memory-mapped layers.
#[derive(Debug)]
pub struct MmapBackend {
    options: BackendOptions,
    rows: Arc<MappedRows>,
}

/// The mappings, shared by the backend and its drivers.
#[derive(Debug)]
struct MappedRows {
    table: Arc<Table>,
    verify: bool,
    layers: Vec<MappedLayer>,
}

impl MmapBackend {
    /// Maps every layer file of `table`; with `verify`, each checksum block is checked on first use.
    pub fn open(table: &Arc<Table>, verify: bool) -> Result<Self> {
        Self::open_with(
            table,
            &BackendOptions {
                verify,
                ..BackendOptions::default()
            },
        )
    }

    /// [`MmapBackend::open`] with the store's backend options (verification, faults).
    pub fn open_with(table: &Arc<Table>, options: &BackendOptions) -> Result<Self> {
        let mut layers = Vec::with_capacity(table.n_layers());
        for li in 0..table.n_layers() {
            let lf = table.layer(li)?;
            // SAFETY: read-only private mapping of a file validated at open; see the module
            // contract about truncation.
            let map =
                unsafe { MmapOptions::new().map(&lf.file) }.map_err(|e| io("mmap", &lf.path, e))?;
            // Random access: readahead would only add read amplification.
            let _ = map.advise(Advice::Random);
            let words = usize::try_from(lf.header.n_blocks.div_ceil(64)).unwrap_or(0);
            let verified = (0..words).map(|_| AtomicU64::new(0)).collect();
            layers.push(MappedLayer { map, verified });
        }
        Ok(Self {
            options: options.clone(),
            rows: Arc::new(MappedRows {
                table: Arc::clone(table),
                verify: options.verify,
                layers,
            }),
        })
    }
}

impl Backend for MmapBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Mmap
    }
    fn driver(&self, rebuilt: bool) -> Result<Driver> {
        let rows: Arc<dyn ResidentRows> = self.rows.clone();
        let options = self.options.for_engine(rebuilt);
        Driver::resident(&self.rows.table, &options, SharedHist::default(), rows)
    }
    /// None under a fault plan: every batch then goes through the fault engine.
    fn resident(&self) -> Option<&dyn ResidentRows> {
        let rows: &dyn ResidentRows = &*self.rows;
        self.options.faults.is_none().then_some(rows)
    }
}

impl MappedRows {
    /// Verifies the checksum block of each row not verified yet.
    fn verify_rows(
        &self,
        layer: usize,
        ml: &MappedLayer,
        ids: &[u64],
        counters: &mut IoCounters,
    ) -> Result<()> {
        let m = self.table.manifest();
        let geo = m.geometry();
        let bb = m.block_bytes;
        for &row in ids {
            let b = geo.row_offset(row) / bb;
            let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            let word = ml.verified.get(w).ok_or_else(|| Error::Invalid {
                what: "row",
                reason: format!("row {row} of layer {layer} is past the last checksum block"),
            })?;
            if word.load(Ordering::Relaxed) & bit == 0 {
                let (off, len) = self.table.block_range(layer, b)?;
                let bytes = ml
                    .map
                    .get(off as usize..(off + len) as usize)
                    .ok_or_else(|| Error::Invalid {
                        what: "mapped block",
                        reason: format!("block {b} of layer {layer} is outside the mapping"),
                    })?;
                self.table.verify_block(layer, b, bytes)?;
                word.fetch_or(bit, Ordering::Relaxed);
                counters.device_bytes += len;
            }
        }
        Ok(())
    }
}

impl ResidentRows for MappedRows {
    fn name(&self) -> &'static str {
        "mmap"
    }

    fn geometry(&self) -> Geometry {
        self.table.geometry()
    }

    fn region(&self, layer: usize) -> Result<(&[u8], u64)> {
        let ml = self.layers.get(layer).ok_or(Error::LayerOutOfRange {
            layer,
            n_layers: self.layers.len(),
        })?;
        let start = self.table.manifest().data_offset;
        Ok((ml.map.get(start as usize..).unwrap_or_default(), start))
    }

    fn verify(&self, layer: usize, ids: &[u64], counters: &mut IoCounters) -> Result<()> {
        match self.layers.get(layer) {
            Some(ml) if self.verify => self.verify_rows(layer, ml, ids, counters),
            _ => Ok(()),
        }
    }
}
