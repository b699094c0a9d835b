//! A minimal DeepSeekMoE-style decoder with Engram layers, in the spirit of llama2.c:
//! `ModelConfig` / `Weights` / `DecodeState`, every buffer allocated once, the forward pass
//! in the order data flows. Engram rows come from `engram-store`; the gate and short conv
//! from `engram-kernels`.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
pub mod context;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod golden;
pub mod model;
pub mod sampler;
pub mod session;
pub mod vocab;
pub mod weights;

pub use config::ModelConfig;
pub use error::{Error, Result};
pub use model::{DecodeState, Model};
pub use weights::Weights;
