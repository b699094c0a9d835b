//! Rows resident in this process (the memory tier, the mmap tier) as a source for the
//! driver: the gather fast path ([`ResidentRows::gather`], rows copied straight into the
//! output) and, for fault injection and the simulation, the same bytes as an engine
//! ([`ResidentEngine`]) that completes file-range reads into staging leases.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use super::engine::{Completion, Engine, EngineError, ReadReq};
use super::staging::Lease;
use crate::backend::IoCounters;
use crate::error::{Error, Result};
use crate::format::Geometry;

/// Rows held in this process's memory. Shared by every reactor (`&self`, `Sync`). A tier
/// names its row regions ([`ResidentRows::region`]) and what it checks on use
/// ([`ResidentRows::verify`]); the gather and the file ranges are the same for every tier.
pub trait ResidentRows: Send + Sync + fmt::Debug {
    /// The tier's name as an engine (`memory`, `mmap`).
    fn name(&self) -> &'static str;

    /// The table's row geometry.
    fn geometry(&self) -> Geometry;

    /// The row region of layer `layer` (row offset 0 at its first byte) and the layer
    /// file offset where it starts; [`Error::LayerOutOfRange`] past the last layer.
    fn region(&self, layer: usize) -> Result<(&[u8], u64)>;

    /// Checks rows `ids` of layer `layer` before they are copied (what this tier verifies
    /// on use; nothing by default).
    fn verify(&self, _layer: usize, _ids: &[u64], _counters: &mut IoCounters) -> Result<()> {
        Ok(())
    }

    /// Copies rows `ids` of layer `layer` into `out`, row `k` at slot `slots[k]` (or `k`
    /// when `slots` is empty), verifying what this tier verifies on use. Ids are rows of
    /// the layer (the store checks them).
    fn gather(
        &self,
        layer: usize,
        ids: &[u64],
        slots: &[u32],
        out: &mut [u8],
        counters: &mut IoCounters,
    ) -> Result<()> {
        let (data, _) = self.region(layer)?;
        self.verify(layer, ids, counters)?;
        let geo = self.geometry();
        gather_rows(&geo, data, ids, slots, out)?;
        counters.rows_unique += ids.len() as u64;
        counters.device_bytes += ids.len() as u64 * geo.row_bytes;
        Ok(())
    }

    /// Up to `len` bytes of layer file `file` at file offset `offset` (fewer at the end
    /// of what the tier holds; `None` outside its row region).
    fn file_range(&self, file: usize, offset: u64, len: usize) -> Option<&[u8]> {
        let (data, start) = self.region(file).ok()?;
        let at = usize::try_from(offset.checked_sub(start)?).ok()?;
        let bytes = data.get(at..)?;
        Some(&bytes[..len.min(bytes.len())])
    }
}

/// Copies rows from a resident row region: the plain gather loop. Returns an error
/// instead of panicking when a row or slot falls outside `data` or `out`.
fn gather_rows(
    geo: &Geometry,
    data: &[u8],
    ids: &[u64],
    slots: &[u32],
    out: &mut [u8],
) -> Result<()> {
    let rb = geo.row_bytes as usize;
    for (k, &row) in ids.iter().enumerate() {
        let src = geo.row_offset(row) as usize;
        let dst = slots.get(k).map_or(k, |&s| s as usize) * rb;
        match (data.get(src..src + rb), out.get_mut(dst..dst + rb)) {
            (Some(from), Some(to)) => to.copy_from_slice(from),
            _ => {
                return Err(Error::Invalid {
                    what: "gather",
                    reason: format!("row {row} or output slot {dst} is outside its region"),
                });
            }
        }
    }
    Ok(())
}

/// Resident rows as an engine: each read is completed at the next reap by copying the
/// file range into its lease.
#[derive(Debug)]
pub struct ResidentEngine {
    rows: Arc<dyn ResidentRows>,
    queued: VecDeque<(ReadReq, Lease)>,
}

impl ResidentEngine {
    /// An engine over `rows`.
    pub fn new(rows: Arc<dyn ResidentRows>) -> Self {
        Self {
            rows,
            queued: VecDeque::new(),
        }
    }
}

impl Engine for ResidentEngine {
    fn name(&self) -> &'static str {
        self.rows.name()
    }

    fn submit(&mut self, req: ReadReq, lease: Lease) -> Result<(), (Lease, EngineError)> {
        self.queued.push_back((req, lease));
        Ok(())
    }

    fn reap(
        &mut self,
        _min_complete: usize,
        _timeout: Option<std::time::Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), EngineError> {
        while let Some((req, mut lease)) = self.queued.pop_front() {
            let want = lease.len();
            let result = match self.rows.file_range(req.file as usize, req.offset, want) {
                Some(bytes) => {
                    let n = bytes.len().min(want);
                    lease.bytes_mut()[..n].copy_from_slice(&bytes[..n]);
                    Ok(n)
                }
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("no resident bytes of file {} at {}", req.file, req.offset),
                )),
            };
            out.push(Completion {
                tag: req.tag,
                lease,
                result,
            });
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.queued.len()
    }
}
