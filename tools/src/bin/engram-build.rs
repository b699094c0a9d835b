//! `engram-build`: corpus or checkpoint -> a published Engram table and its traffic profile.
//!
//! Exit codes: 0 success; 2 bad input or an error (nothing is published on error).

use std::process::ExitCode;

use clap::Parser;
use engram_tools::build::{BuildArgs, run};

#[derive(Debug, Parser)]
#[command(
    name = "engram-build",
    version,
    about = "Build an Engram table (and its traffic profile) from a corpus or a checkpoint",
    after_help = "Examples:\n  \
      engram-build ./src --include '**/*.py' --out table --preset demo --base-size 10000\n  \
      engram-build corpus.jsonl --jsonl-field text --out table --preset v41 --dry-run\n  \
      engram-build ./train --import model/engram.safetensors --out table --config build.toml\n  \
      engram-build --import /models/DeepSeek-V4.1-Flash --out /data/v41 --dry-run\n\n\
      A checkpoint directory (or its model.safetensors.index.json) with FP8 Engram tensors \
      (DeepSeek-V4.1) is streamed shard by shard and copied bit-exact, its addressing taken \
      from its config.json: docs/deepseek-v41.md.\n\n\
      The table directory holds manifest.json, one data file per layer and profile.bin \
      (rows ranked by hits in the corpus; `engram bench --profile` and the decoder use it \
      to seed the hot-row cache). Publication is atomic: an interrupted build leaves no \
      table and keeps any older one."
)]
struct Cli {
    #[command(flatten)]
    args: BuildArgs,
}

fn main() -> ExitCode {
    // An allocation failure exits with a message and status 2, not SIGABRT.
    let _ = engram_oom::install("engram-build");
    engram_tools::init_logging();
    let cli = Cli::parse();
    match run(&cli.args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(engram_tools::EXIT_ERROR)
        }
    }
}
