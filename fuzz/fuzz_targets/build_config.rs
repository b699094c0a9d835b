#![no_main]
//! engram-build --config TOML: parse, resolve, round trips.
engram_fuzz::target!(engram_tools::fuzz::build_config);
