#![no_main]
//! The service protocol against a live in-process server: control frames before and after
//! the hello, ring entries and ids (see engram_server::fuzz).
engram_fuzz::target!(engram_server::fuzz::protocol);
