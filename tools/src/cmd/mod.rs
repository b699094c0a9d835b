//! One module per `engram` subcommand.

pub mod bench;
pub mod hash;
pub mod inspect;
pub mod lookup;
pub mod mooncake;
pub mod probe;
pub mod read_args;
pub mod replay;
pub mod synth;
pub mod vectors;
