//! One module per `engram` subcommand.

// `bench` and `replay` are documented by their owners' branches (issue 24); until those
// merge, their items are let off `missing_docs`.
#[allow(missing_docs)]
pub mod bench;
pub mod bench_pattern;
pub mod hash;
pub mod inspect;
pub mod lookup;
pub mod mooncake;
pub mod probe;
pub mod read_args;
pub mod reload;
#[allow(missing_docs)]
pub mod replay;
pub mod replica;
pub mod serve;
pub mod stats;
pub mod synth;
pub mod vectors;
