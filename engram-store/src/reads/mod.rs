//! Row reads from every tier: the batch driver, the staging slots it reads into, the engine
//! trait the pread pool, io_uring, external engines and the resident tiers implement, and
//! the fault-injecting engine for tests. (Named `reads`, not `io`, so that it never shadows
//! `std::io`.)
//!
//! ```text
//! Store -> Reactor (one per I/O thread) -> Driver { plans, Staging, Box<dyn Engine> | resident rows }
//!            Engine: PreadEngine | UringEngine | external | ResidentEngine | FaultyEngine(inner)
//! ```
//!
//! The buffer-extent contract (where the device may write) lives in `staging.rs` alone;
//! engines only ever see [`staging::Lease`]s.

pub(crate) mod driver;
pub mod engine;
pub mod faulty;
pub(crate) mod resident;
pub mod staging;

pub(crate) use driver::{BatchId, Driver, Finished, MAX_ACTIVE_BATCHES, Outputs, Priority};
pub use engine::{Completion, Engine, EngineError, ReadReq};
pub use faulty::{Fault, FaultPlan, IO_FAULTS_ENV};
pub(crate) use resident::ResidentRows;
pub use staging::{Lease, MAX_STAGING_BYTES, Staging};
