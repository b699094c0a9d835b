//! Opening a store whose rows come from Mooncake, falling back to the local table (with
//! the reason) when the cluster cannot serve it.

use std::path::Path;
use std::sync::Arc;

use engram_store::{Store, StoreOptions, Table};

use crate::client::Client;
use crate::config::ClientConfig;
use crate::engine::MooncakeFactory;
use crate::error::{Error, Result};
use crate::skeleton::is_skeleton;

/// A store and, when the cluster was not used, why.
#[derive(Debug)]
pub struct OpenedStore {
    /// The store: on the Mooncake engine, or on the local table when `fallback` is set.
    pub store: Store,
    /// Why the cluster was not used (`None` when the store reads from Mooncake).
    pub fallback: Option<String>,
}

/// A store over the Mooncake publication of an open table (`options.backend.engine` is
/// replaced; n-gram records are not read: they are not published).
pub fn mooncake_store(
    client: Arc<Client>,
    table: Arc<Table>,
    options: &StoreOptions,
) -> Result<Store> {
    let factory = MooncakeFactory::new(client, &table)?;
    let mut opts = options.clone();
    opts.backend.engine = Some(Arc::new(factory));
    opts.records = false;
    Ok(Store::from_table(table, &opts)?)
}

/// Opens the table at `dir` (a full table or a skeleton) with its rows read from the
/// Mooncake cluster `config` names. When the cluster is unreachable or this version is
/// not published there, a full local table is opened
/// with `options` instead and the reason returned in [`OpenedStore::fallback`] (and logged);
/// a skeleton has no local rows, so that is an error.
pub fn open_store(
    dir: &Path,
    options: &StoreOptions,
    config: &ClientConfig,
) -> Result<OpenedStore> {
    let table = Arc::new(Table::open_with(dir, &options.open)?);
    let attempt = Client::connect(config)
        .and_then(|c| mooncake_store(Arc::new(c), Arc::clone(&table), options));
    match attempt {
        Ok(store) => Ok(OpenedStore {
            store,
            fallback: None,
        }),
        Err(e @ (Error::Unavailable { .. } | Error::NotPublished { .. })) => {
            if is_skeleton(dir) {
                return Err(match e {
                    Error::Unavailable { master, reason } => Error::Unavailable {
                        master,
                        reason: format!(
                            "{reason}; {} is a skeleton, its rows live only on Mooncake",
                            dir.display()
                        ),
                    },
                    other => other,
                });
            }
            let store = Store::from_table(table, options)?;
            let reason = format!(
                "{e}; reading the local table {} with the {} backend instead",
                dir.display(),
                store.backend_kind()
            );
            tracing::warn!(target: "engram_mooncake", "{reason}");
            Ok(OpenedStore {
                store,
                fallback: Some(reason),
            })
        }
        Err(e) => Err(e),
    }
}
