#![no_main]
//! The store's request pipeline, simulated: seeded faults and engine breaks, random fetch /
//! speculate / cancel / seed / pump; every row equals the memory tier's.
engram_fuzz::target!(engram_store::fuzz::pipeline_sim);
