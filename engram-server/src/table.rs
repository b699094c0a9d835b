//! A served table: the store behind it, swapped whole by a reload while requests already
//! running finish on the store they started on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use engram_store::{Store, StoreOptions};

use crate::metrics::Counters;
use engram_client::error::{Result, ServiceError};
use engram_client::protocol::{ReloadOutcome, incompatible};

/// `NAME=PATH` or `PATH` (the name is then the directory's last component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// The name clients attach by.
    pub name: String,
    /// The table's directory.
    pub path: PathBuf,
}

impl TableSpec {
    /// Parses `NAME=PATH` or `PATH`.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, path) = match s.split_once('=') {
            Some((n, p)) if !n.is_empty() && !n.contains('/') => (n.to_string(), PathBuf::from(p)),
            _ => {
                let p = PathBuf::from(s);
                let n = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| ServiceError::Invalid {
                        what: "table",
                        reason: format!("{s:?} has no directory name; give NAME=PATH"),
                    })?;
                (n, p)
            }
        };
        Ok(Self { name, path })
    }
}

/// One version of a served table.
#[derive(Debug)]
pub struct TableState {
    /// The table's store.
    pub store: Store,
    /// Clients attached under another epoch get "table changed" (the shape differs).
    pub epoch: u64,
    /// The manifest as JSON, sent to every client that attaches.
    pub manifest_json: String,
}

/// A table the server serves.
#[derive(Debug)]
pub struct Served {
    /// The name clients attach by.
    pub name: String,
    /// The directory it was opened from.
    pub path: PathBuf,
    canonical: Option<PathBuf>,
    state: RwLock<Arc<TableState>>,
    /// Requests served from it.
    pub counters: Counters,
    /// Clients attached to it now.
    pub clients: std::sync::atomic::AtomicU64,
}

fn open_state(path: &Path, options: &StoreOptions, epoch: u64) -> Result<TableState> {
    let store = Store::open(path, options)?;
    let manifest_json =
        serde_json::to_string(store.table().manifest()).map_err(|e| ServiceError::Invalid {
            what: "manifest",
            reason: e.to_string(),
        })?;
    Ok(TableState {
        store,
        epoch,
        manifest_json,
    })
}

impl Served {
    /// Opens the table read-only.
    pub fn open(spec: &TableSpec, options: &StoreOptions) -> Result<Self> {
        let state = open_state(&spec.path, options, 0)?;
        Ok(Self {
            name: spec.name.clone(),
            path: spec.path.clone(),
            canonical: std::fs::canonicalize(&spec.path).ok(),
            state: RwLock::new(Arc::new(state)),
            counters: Counters::default(),
            clients: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Whether a client naming `want` (a name or a path) means this table.
    pub fn matches(&self, want: &str) -> bool {
        want == self.name
            || Path::new(want) == self.path
            || (self.canonical.is_some() && std::fs::canonicalize(want).ok() == self.canonical)
    }

    /// The version new requests use.
    pub fn current(&self) -> Arc<TableState> {
        match self.state.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Opens the table again; on success new requests use the new version while running
    /// ones finish on the old. A failed open keeps the old version.
    pub fn reload(&self, options: &StoreOptions) -> ReloadOutcome {
        let old = self.current();
        let outcome = match open_state(&self.path, options, old.epoch) {
            Ok(mut new) => {
                let why = incompatible(old.store.table().manifest(), new.store.table().manifest());
                if why.is_some() {
                    new.epoch = old.epoch + 1;
                }
                match self.state.write() {
                    Ok(mut g) => *g = Arc::new(new),
                    Err(p) => *p.into_inner() = Arc::new(new),
                }
                match why {
                    None => "reloaded".to_string(),
                    Some(w) => {
                        format!("reloaded (new shape: {w}; attached clients must reconnect)")
                    }
                }
            }
            Err(e) => format!("failed: {e} (still serving the table opened before)"),
        };
        tracing::info!(target: "engram_service", table = %self.name, %outcome, "reload");
        ReloadOutcome {
            table: self.name.clone(),
            outcome,
        }
    }
}
