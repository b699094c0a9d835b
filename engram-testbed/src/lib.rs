//! What benches, tests and the tools' `bench`, `synth` and `probe` commands drive the store
//! with, kept out of the store library (which serves rows and nothing else):
//!
//! - [`synth`]: synthetic tables (real manifests and checksums, deterministic rows);
//! - [`workload`]: request streams (uniform and Zipfian row ids), the closed-loop bench
//!   runner ([`workload::run_bench`]) and process CPU time;
//! - [`probe`]: random O_DIRECT reads through the store's own io_uring engine, the
//!   device's limit measured the way the store reads.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod fio;
pub mod probe;
pub mod synth;
pub mod workload;
