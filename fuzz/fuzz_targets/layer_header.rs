#![no_main]
//! A layer file's 4096-byte header: decode, encode round trip.
engram_fuzz::target!(engram_store::fuzz::layer_header);
