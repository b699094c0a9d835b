#![no_main]
//! profile.bin: parse, validate, round trip.
engram_fuzz::target!(engram_store::fuzz::profile);
