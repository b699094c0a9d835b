//! Fuzz entry point of the model config parser, shared by the libFuzzer target in `fuzz/`
//! and the regression test over its corpus (`tests/tests/fuzz_corpora.rs`). It returns
//! normally on any input; a panic is a bug.

use std::path::Path;

use crate::config::ModelConfig;

/// `config.json`: parse and validate, then ask the validated config what the decoder asks.
pub fn model_config(data: &[u8]) {
    let Ok(c) = ModelConfig::from_json(data, Path::new("fuzz/config.json")) else {
        return;
    };
    let _ = (c.streams(), c.hyper());
    if let Some(e) = &c.engram {
        let _ = e.addressing();
    }
    // The layer count is bounded by the weights file, not the config: ask about a few.
    for layer in 0..c.num_hidden_layers.min(1024) {
        let _ = c.is_engram_layer(layer);
    }
}
