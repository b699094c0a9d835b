//! The mmap tier: layer files mapped read-only; each checksum block is verified the first
//! time a row in it is read (a bitmap records verified blocks).
//!
//! Contract: the mapped files were validated at open (sizes match their headers) and must
//! not be truncated while mapped; a file shrunk underneath a live mapping would fault
//! (SIGBUS) on access, as with any mmap reader. Mappings are read-only and private.
#![allow(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use memmap2::{Advice, Mmap, MmapOptions};

use super::{Backend, BackendKind, IoCounters, RowReader};
use crate::error::{Error, Result, io};
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
    table: Arc<Table>,
    verify: bool,
    layers: Arc<Vec<MappedLayer>>,
}

impl MmapBackend {
    /// Maps every layer file of `table`; with `verify`, each checksum block is checked on first use.
    pub fn open(table: &Arc<Table>, verify: bool) -> Result<Self> {
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
            table: Arc::clone(table),
            verify,
            layers: Arc::new(layers),
        })
    }
}

impl Backend for MmapBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Mmap
    }
    fn reader(&self) -> Result<Box<dyn RowReader>> {
        Ok(Box::new(MmapReader {
            table: Arc::clone(&self.table),
            verify: self.verify,
            layers: Arc::clone(&self.layers),
        }))
    }
}

#[derive(Debug)]
struct MmapReader {
    table: Arc<Table>,
    verify: bool,
    layers: Arc<Vec<MappedLayer>>,
}

impl RowReader for MmapReader {
    fn read_rows(
        &mut self,
        layer: usize,
        ids: &[u64],
        slots: &[u32],
        out: &mut [u8],
        counters: &mut IoCounters,
    ) -> Result<()> {
        let t = Instant::now();
        let ml = self.layers.get(layer).ok_or(Error::LayerOutOfRange {
            layer,
            n_layers: self.layers.len(),
        })?;
        let m = self.table.manifest();
        let geo = m.geometry();
        let data_offset = m.data_offset as usize;
        let data = &ml.map[data_offset..];
        if self.verify {
            let bb = m.block_bytes;
            for &row in ids {
                let b = geo.row_offset(row) / bb;
                let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
                if ml.verified[w].load(Ordering::Relaxed) & bit == 0 {
                    let (off, len) = self.table.block_range(layer, b)?;
                    let bytes = &ml.map[off as usize..(off + len) as usize];
                    self.table.verify_block(layer, b, bytes)?;
                    ml.verified[w].fetch_or(bit, Ordering::Relaxed);
                    counters.device_bytes += len;
                }
            }
        }
        super::memory::gather(&geo, data, ids, slots, out);
        counters.rows_unique += ids.len() as u64;
        counters.device_bytes += ids.len() as u64 * geo.row_bytes;
        counters.scatter_ns += t.elapsed().as_nanos() as u64;
        Ok(())
    }
}
