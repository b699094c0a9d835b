//! One module per `engram` subcommand.

pub mod hash;
pub mod vectors;
