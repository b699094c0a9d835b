#![no_main]
//! records.bin against a fixed table binding.
engram_fuzz::target!(engram_store::fuzz::records);
