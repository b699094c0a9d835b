//! The memory tier: every layer's row region resident in RAM, verified block by block at
//! load. The reference for every other backend.

use std::sync::Arc;
use std::time::Instant;

use super::{Backend, BackendKind, IoCounters, RowReader};
use crate::buffer::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::Geometry;
use crate::table::Table;

/// Resident rows.
#[derive(Debug)]
pub struct MemoryBackend {
    geo: Geometry,
    // one (data_bytes,) buffer per layer
    layers: Arc<Vec<AlignedBuf>>,
}

impl MemoryBackend {
    /// Reads (and, with `verify`, checks) every layer into RAM.
    pub fn load(table: &Arc<Table>, verify: bool) -> Result<Self> {
        let mut layers = Vec::with_capacity(table.n_layers());
        for li in 0..table.n_layers() {
            let lf = table.layer(li)?;
            let len = usize::try_from(lf.header.data_bytes).map_err(|_| Error::Unavailable {
                what: "memory backend",
                reason: "layer does not fit the address space".into(),
            })?;
            let mut buf = AlignedBuf::new(len, crate::buffer::IO_ALIGN)?;
            let bb = table.manifest().block_bytes as usize;
            for (b, chunk) in buf.as_mut_slice().chunks_mut(bb).enumerate() {
                let (off, _) = table.block_range(li, b as u64)?;
                super::pread_exact(&lf.file, &lf.path, chunk, off)?;
                if verify {
                    table.verify_block(li, b as u64, chunk)?;
                }
            }
            layers.push(buf);
        }
        Ok(Self {
            geo: table.geometry(),
            layers: Arc::new(layers),
        })
    }

    /// The resident row region of layer `layer` (for DRAM-tier baselines).
    pub fn layer_bytes(&self, layer: usize) -> Option<&[u8]> {
        self.layers.get(layer).map(|b| b.as_slice())
    }
}

impl Backend for MemoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Memory
    }
    fn reader(&self) -> Result<Box<dyn RowReader>> {
        Ok(Box::new(MemoryReader {
            geo: self.geo,
            layers: Arc::clone(&self.layers),
        }))
    }
}

#[derive(Debug)]
struct MemoryReader {
    geo: Geometry,
    layers: Arc<Vec<AlignedBuf>>,
}

/// Copies rows from a resident region: the plain gather loop.
pub(crate) fn gather(geo: &Geometry, data: &[u8], ids: &[u64], slots: &[u32], out: &mut [u8]) {
    let rb = geo.row_bytes as usize;
    for (k, &row) in ids.iter().enumerate() {
        let src = geo.row_offset(row) as usize;
        let dst = if slots.is_empty() {
            k
        } else {
            slots[k] as usize
        } * rb;
        out[dst..dst + rb].copy_from_slice(&data[src..src + rb]);
    }
}

impl RowReader for MemoryReader {
    fn read_rows(
        &mut self,
        layer: usize,
        ids: &[u64],
        slots: &[u32],
        out: &mut [u8],
        counters: &mut IoCounters,
    ) -> Result<()> {
        let t = Instant::now();
        let data = self.layers.get(layer).ok_or(Error::LayerOutOfRange {
            layer,
            n_layers: self.layers.len(),
        })?;
        gather(&self.geo, data, ids, slots, out);
        counters.rows_unique += ids.len() as u64;
        counters.device_bytes += ids.len() as u64 * self.geo.row_bytes;
        counters.scatter_ns += t.elapsed().as_nanos() as u64;
        Ok(())
    }
}
