#![no_main]
//! engram vectors on an engram-hash-v1 JSON file.
engram_fuzz::target!(engram_tools::fuzz::vectors_hash);
