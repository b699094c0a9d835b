//! One module per `engram` subcommand.

pub mod bench;
pub mod bench_pattern;
pub mod hash;
pub mod inspect;
pub mod lookup;
pub mod mooncake;
pub mod probe;
pub mod read_args;
pub mod reload;
pub mod replay;
pub mod replica;
pub mod serve;
pub mod stats;
pub mod synth;
pub mod vectors;
