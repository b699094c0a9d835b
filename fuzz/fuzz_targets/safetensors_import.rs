#![no_main]
//! engram-build --import: the checkpoint read as the build reads it.
engram_fuzz::target!(engram_tools::fuzz::safetensors_import);
