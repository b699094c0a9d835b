//! Engram tables on Mooncake Store (kvcache-ai/Mooncake): one physical copy of a table for
//! a fleet, read by every host through the same store API, bytes and checksums.
//!
//! - [`publish()`]: uploads a table as chunk objects keyed by table id and version
//!   ([`keys`]), resumable, verified by reading every chunk back, made visible by a
//!   descriptor written last; a name switches versions atomically; [`unpublish`] removes one.
//! - [`MooncakeFactory`]: the store's read engine on Mooncake, plugged into
//!   `engram_store` through `BackendOptions::engine`: the store's own driver plans, dedups
//!   and verifies; the engine turns each reap into one ranged get into registered staging.
//! - [`open_store`]: a store over a published table, falling back to the local table with
//!   the reason when the cluster cannot serve it; [`fetch_skeleton`] makes the local
//!   metadata a host needs when it has no copy of the rows.
//!
//! The client is the `mooncake-transfer-engine` wheel's Python module driven through an
//! embedded CPython (the wheel has no C API); it is behind the `python` feature, without
//! which every connection is [`Error::NotCompiled`]. `scripts/mooncake-local.sh` starts a
//! local cluster for tests.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod buffer;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod keys;
pub mod open;
pub mod publish;
pub mod skeleton;

pub use client::{Client, Replication};

/// Whether this build has the Mooncake client (the `python` feature).
pub const CLIENT_COMPILED: bool = cfg!(feature = "python");
pub use config::ClientConfig;
pub use engine::{BACKEND_NAME, MooncakeFactory};
pub use error::{Error, Result};
pub use keys::TableKeys;
pub use open::{OpenedStore, mooncake_store, open_store};
pub use publish::{PublishOptions, PublishReport, publish, resolve, unpublish};
pub use skeleton::{SKELETON_MARKER, fetch_skeleton, is_skeleton, local_read_refused};
