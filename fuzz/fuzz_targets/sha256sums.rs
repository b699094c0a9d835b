#![no_main]
//! SHA256SUMS: parse, round trip.
engram_fuzz::target!(engram_files::fuzz::sha256sums);
