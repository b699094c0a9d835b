//! The row-source trait: what a decoder, a CLI or a binding needs from a table's rows,
//! implemented by the in-process [`Store`](crate::Store) and by clients of a storage
//! service (`engram-client`'s `RemoteStore`), so callers take either
//! (`Arc<dyn RowSource>`).
//!
//! A source hands out the same [`Ticket`] and [`Speculation`] types as the store; a source
//! whose work completes elsewhere builds them from [`PendingRows`] and
//! [`PendingSpeculation`].

use engram_kernels::EngramLayout;

use crate::buffer::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::Manifest;
use crate::metrics::StatsSnapshot;
use crate::store::{Speculation, Ticket};

/// A table's rows, wherever they are served from. Object safe.
pub trait RowSource: Send + Sync + std::fmt::Debug {
    /// The table's manifest (addressing constants, row layout, layers).
    fn manifest(&self) -> &Manifest;

    /// The addressing layout derived (and checked) from the manifest.
    fn layout(&self) -> &EngramLayout;

    /// Bytes per row.
    fn row_bytes(&self) -> usize;

    /// Largest batch (rows per lookup, prefetch or speculation).
    fn max_batch_rows(&self) -> usize;

    /// The backend that serves the rows, for reports (`uring`, `service(uring)`).
    fn backend_name(&self) -> String;

    /// Reads rows `ids` of layer index `layer` into `out` (`ids.len() * row_bytes`).
    fn lookup_into(&self, layer: usize, ids: &[u64], out: &mut [u8]) -> Result<()>;

    /// An output buffer for up to `rows` rows.
    fn alloc_rows(&self, rows: usize) -> Result<AlignedBuf>;

    /// Starts reading rows `ids` of layer index `layer` into `out`; blocks while the
    /// source's prefetch bound is reached. Errors surface in [`Ticket::wait`].
    fn prefetch(&self, layer: usize, ids: &[u64], out: AlignedBuf) -> Ticket;

    /// Warms rows expected soon, at low priority, never blocking.
    fn speculate(&self, layer: usize, ids: &[u64]) -> Result<Speculation>;

    /// Counters and latencies (a remote source asks its server, which can fail).
    fn stats(&self) -> Result<StatsSnapshot>;

    /// Starts counters and latencies afresh (e.g. after a warm-up).
    fn reset_stats(&self) -> Result<()>;

    /// Layers in the table.
    fn n_layers(&self) -> usize {
        self.manifest().layers.len()
    }

    /// Rows of layer index `layer`.
    fn rows(&self, layer: usize) -> Result<u64> {
        let layers = &self.manifest().layers;
        layers
            .get(layer)
            .map(|l| l.rows)
            .ok_or(Error::LayerOutOfRange {
                layer,
                n_layers: layers.len(),
            })
    }

    /// Errors unless `ids` fits one batch and every id is a row of layer `layer`, with
    /// the errors the in-process store gives.
    fn check_batch(&self, layer: usize, ids: &[u64]) -> Result<()> {
        if ids.len() > self.max_batch_rows() {
            return Err(Error::Limit {
                what: "batch rows",
                name: "max_batch_rows",
                limit: self.max_batch_rows(),
                found: ids.len(),
            });
        }
        crate::table::check_row_ids(layer, ids, self.rows(layer)?)
    }
}

/// A prefetch that completes outside the in-process store (e.g. in a service).
pub trait PendingRows: Send + std::fmt::Debug {
    /// Whether [`PendingRows::wait`] would not block.
    fn is_ready(&self) -> bool;
    /// Blocks until the rows are in the buffer; returns it with the outcome.
    fn wait(self: Box<Self>) -> (AlignedBuf, Result<()>);
}

/// A speculation running outside the in-process store.
pub trait PendingSpeculation: Send + std::fmt::Debug {
    /// Stops the speculation (best effort: reads already issued finish).
    fn cancel(self: Box<Self>);
}
