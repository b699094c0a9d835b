//! Running a model past its trained context, to time long prompts: what a longer context
//! costs in memory, whether this machine has it, and the one line that says the output is
//! not the model's (see [`crate::session::Session::extend_context`]).

use crate::config::MAX_POSITIONS;
use crate::error::{Error, Result};
use crate::model::Model;

/// A context set past (or at) the model's trained one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextExtension {
    /// The context the model was trained with (`max_position_embeddings`).
    pub trained: usize,
    /// Positions a sequence may now hold.
    pub positions: usize,
    /// Bytes of the decode state for that many positions ([`Model::state_bytes`]).
    pub state_bytes: u64,
}

impl ContextExtension {
    /// Checks `positions` for `model`: at least its trained context, at most
    /// [`MAX_POSITIONS`], and a decode state no larger than half the memory this machine
    /// has available (`MemAvailable`, when `/proc/meminfo` gives it), leaving the rest to
    /// the weights, the row cache and everything else running.
    pub fn plan(model: &Model, positions: usize) -> Result<Self> {
        Self::plan_within(model, positions, available_memory())
    }

    /// [`ContextExtension::plan`] against `available` bytes of memory (`None`: unknown, not
    /// checked): the state may take half of them.
    pub fn plan_within(model: &Model, positions: usize, available: Option<u64>) -> Result<Self> {
        let trained = model.config.max_position_embeddings;
        if positions < trained {
            return Err(Error::Input(format!(
                "context length {positions} is shorter than the model's trained context of \
                 {trained} positions (it only extends it)"
            )));
        }
        if positions > MAX_POSITIONS {
            return Err(Error::Input(format!(
                "context length {positions} is above MAX_POSITIONS {MAX_POSITIONS} (the \
                 attention scores of a full context are positions^2 floats)"
            )));
        }
        let state_bytes = model.state_bytes(positions, positions);
        if let Some(available) = available
            && state_bytes > available / 2
        {
            return Err(Error::Input(format!(
                "context length {positions}: the decode state needs {} (positions x hidden keys \
                 and values per layer, positions^2 attention scores, positions x vocabulary \
                 logits), above half of the {} this machine has available",
                mib(state_bytes),
                mib(available)
            )));
        }
        Ok(Self {
            trained,
            positions,
            state_bytes,
        })
    }

    /// Whether sequences may run past the trained context.
    pub fn extended(&self) -> bool {
        self.positions > self.trained
    }

    /// One line for stderr: how far the context goes past the trained one and what that
    /// means for the output.
    pub fn warning(&self) -> String {
        format!(
            "warning: context extended from the trained {} positions to {}: RoPE positions \
             {}..{} extrapolate, so the output from there on is not what the model learned \
             (for timing long prompts); the decode state takes {}",
            self.trained,
            self.positions,
            self.trained,
            self.positions - 1,
            mib(self.state_bytes)
        )
    }
}

/// `bytes` as MiB, for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// `MemAvailable` from `/proc/meminfo`, in bytes; `None` where it cannot be read (the
/// allocation itself is still fallible).
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   12345 kB\n";
        assert_eq!(parse_mem_available(text), Some(12345 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots\n"), None);
    }
}
