//! Backends whose read engine lives outside this crate: a distributed store such as
//! Mooncake (the `engram-mooncake` crate) plugs in here without forking the driver.
//!
//! The caller puts an [`EngineFactory`] in [`BackendOptions::engine`]; every reactor of the
//! store is then the one batch driver (the crate-internal `reads::Driver`) over an engine the
//! factory builds, so read planning, verification of every block against the table's checksums,
//! scatter, hedged reads, fault injection and latency accounting are exactly those of the
//! local device tier. The engine only moves bytes of a layer-file range into a staging
//! lease (see [`crate::reads::engine`] for its contract, [`crate::reads::staging`] for where it
//! may write). The backend reports as [`BackendKind::External`] with the factory's name.

use std::fmt;
use std::sync::Arc;

use super::{Backend, BackendKind, BackendOptions};
use crate::error::Result;
use crate::metrics::SharedHist;
use crate::reads::{Driver, Engine, Staging};
use crate::table::Table;

/// Builds the read engine of each reader of an external backend.
pub trait EngineFactory: Send + Sync + fmt::Debug {
    /// The backend's name in stats, logs and [`BackendKind::External`] (`mooncake`).
    fn name(&self) -> &'static str;

    /// An engine for one reactor of `table`, reading into `staging` (called again to
    /// replace an engine that failed): its memory is one
    /// allocation, [`Staging::iovec`] (register it with the transport here). Engine file
    /// index `l < table.n_layers()` is layer file `l` (offsets are file offsets); index
    /// `n_layers` is the records file, read only when `BackendOptions::records` is set.
    fn engine(&self, table: &Arc<Table>, staging: &Staging) -> Result<Box<dyn Engine>>;
}

/// A backend over engines from an [`EngineFactory`].
#[derive(Debug)]
pub struct ExternalBackend {
    table: Arc<Table>,
    options: BackendOptions,
    factory: Arc<dyn EngineFactory>,
    latency: SharedHist,
}

impl ExternalBackend {
    /// A backend reading through engines that `factory` builds, one per reader.
    pub fn new(
        table: &Arc<Table>,
        options: &BackendOptions,
        factory: Arc<dyn EngineFactory>,
    ) -> Self {
        Self {
            table: Arc::clone(table),
            options: options.clone(),
            factory,
            latency: SharedHist::default(),
        }
    }
}

impl Backend for ExternalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::External(self.factory.name())
    }

    fn driver(&self, rebuilt: bool) -> Result<Driver> {
        Driver::new(
            &self.table,
            &self.options.for_engine(rebuilt),
            self.latency.clone(),
            |staging| self.factory.engine(&self.table, staging),
        )
    }

    fn device_latency(&self) -> Option<&SharedHist> {
        Some(&self.latency)
    }
}
