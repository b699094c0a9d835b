//! The memory tier: every layer's row region resident in RAM, verified block by block at
//! load. The reference for every other backend.

use std::sync::Arc;

use super::{Backend, BackendKind, BackendOptions};
use crate::buffer::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::Geometry;
use crate::metrics::SharedHist;
use crate::reads::{Driver, ResidentRows};
use crate::table::Table;

/// Resident rows.
#[derive(Debug)]
pub struct MemoryBackend {
    table: Arc<Table>,
    options: BackendOptions,
    rows: Arc<MemoryRows>,
}

/// The resident row regions, shared by the backend and its drivers.
#[derive(Debug)]
struct MemoryRows {
    geo: Geometry,
    data_offset: u64,
    // one (data_bytes,) buffer per layer
    layers: Vec<AlignedBuf>,
}

impl MemoryBackend {
    /// Reads (and, with `verify`, checks) every layer into RAM.
    pub fn load(table: &Arc<Table>, verify: bool) -> Result<Self> {
        Self::load_with(
            table,
            &BackendOptions {
                verify,
                ..BackendOptions::default()
            },
        )
    }

    /// [`MemoryBackend::load`] with the store's backend options (verification, faults).
    pub fn load_with(table: &Arc<Table>, options: &BackendOptions) -> Result<Self> {
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
                if options.verify {
                    table.verify_block(li, b as u64, chunk)?;
                }
            }
            layers.push(buf);
        }
        Ok(Self {
            table: Arc::clone(table),
            options: options.clone(),
            rows: Arc::new(MemoryRows {
                geo: table.geometry(),
                data_offset: table.manifest().data_offset,
                layers,
            }),
        })
    }

    /// The rows as the driver's resident source.
    pub(crate) fn resident_rows(&self) -> Arc<dyn ResidentRows> {
        self.rows.clone()
    }

    /// The resident row region of layer `layer` (for DRAM-tier baselines).
    pub fn layer_bytes(&self, layer: usize) -> Option<&[u8]> {
        self.rows.layers.get(layer).map(|b| b.as_slice())
    }
}

impl Backend for MemoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Memory
    }
    fn driver(&self, rebuilt: bool) -> Result<Driver> {
        let options = self.options.for_engine(rebuilt);
        Driver::resident(
            &self.table,
            &options,
            SharedHist::default(),
            self.resident_rows(),
        )
    }
    /// None under a fault plan: every batch then goes through the fault engine.
    fn resident(&self) -> Option<&dyn ResidentRows> {
        let rows: &dyn ResidentRows = &*self.rows;
        self.options.faults.is_none().then_some(rows)
    }
}

impl ResidentRows for MemoryRows {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn region(&self, layer: usize) -> Result<(&[u8], u64)> {
        let data = self.layers.get(layer).ok_or(Error::LayerOutOfRange {
            layer,
            n_layers: self.layers.len(),
        })?;
        Ok((data.as_slice(), self.data_offset))
    }
}
