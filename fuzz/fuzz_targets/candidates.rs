#![no_main]
//! candidates.bin (engram-build --candidates-bytes).
engram_fuzz::target!(engram_store::fuzz::candidates);
