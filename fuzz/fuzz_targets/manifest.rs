#![no_main]
//! manifest.json: parse, validate, derive the layout, round trip.
engram_fuzz::target!(engram_store::fuzz::manifest);
