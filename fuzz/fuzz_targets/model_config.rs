#![no_main]
//! moe-core config.json: parse and validate.
engram_fuzz::target!(moe_core::fuzz::model_config);
