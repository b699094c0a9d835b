//! The short convolution's per-sequence state for decode (`ENGRAM-SPEC.md` section 8).
//!
//! The convolution is depthwise and causal: output channel `c` at time `t` reads the
//! normalised inputs `x[t - (w-1-j) * dilation][c]`, `j = 0..w`, zero before the start. A
//! decode step therefore needs the last `(w - 1) * dilation` inputs of every channel; they
//! live in a ring buffer indexed by absolute position, so a slot that was never written
//! reads as zero and decode equals prefill exactly.

use crate::error::{Error, Result};

/// Decode state of one sequence: the last `(kernel - 1) * dilation` convolution inputs of
/// its `channels = M * d` channels.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvState {
    channels: usize,
    history: usize,
    /// Positions consumed so far (the next position's time index).
    pos: u64,
    // (history, channels): slot `tau % history` holds x[tau]
    ring: Vec<f32>,
}

impl ConvState {
    /// An empty state (sequence start) for `channels` channels and a kernel of `kernel` taps
    /// with `dilation`. `kernel` 0 (a module without the convolution) keeps no history.
    pub fn new(channels: usize, kernel: usize, dilation: usize) -> Result<Self> {
        if channels == 0 || dilation == 0 {
            return Err(Error::InvalidConfig {
                field: "conv state",
                value: format!("channels {channels}, kernel {kernel}, dilation {dilation}"),
                reason: "channels and dilation must be at least 1",
            });
        }
        let history = kernel
            .saturating_sub(1)
            .checked_mul(dilation)
            .ok_or(Error::Overflow {
                what: "conv history",
            })?;
        let len = history.checked_mul(channels).ok_or(Error::Overflow {
            what: "conv state size",
        })?;
        Ok(Self {
            channels,
            history,
            pos: 0,
            ring: vec![0.0; len],
        })
    }

    /// Back to the sequence start, keeping the allocation.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.ring.fill(0.0);
    }

    /// Channels (`M * d`).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Positions consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The stored input at `lag` positions before the next one (`1..=history`), zeros before
    /// the sequence start.
    #[inline]
    pub(crate) fn lagged(&self, lag: usize) -> &[f32] {
        let h = self.history as u64;
        // pos + h - lag >= 0 because lag <= h; slots of times < 0 were never written.
        let slot = ((self.pos + h - lag as u64) % h) as usize;
        &self.ring[slot * self.channels..(slot + 1) * self.channels]
    }

    /// Appends the current position's inputs and advances.
    #[inline]
    pub(crate) fn push(&mut self, x: &[f32]) {
        if self.history > 0 {
            let slot = (self.pos % self.history as u64) as usize;
            self.ring[slot * self.channels..(slot + 1) * self.channels].copy_from_slice(x);
        }
        self.pos += 1;
    }

    /// Sets the state after a prefill of `t_len` positions whose inputs are `x`
    /// (`(t_len, channels)` with row stride `stride` >= channels, starting at offset 0).
    pub(crate) fn load_from_prefill(&mut self, x: &[f32], stride: usize, t_len: usize) {
        self.reset();
        let first = t_len.saturating_sub(self.history);
        self.pos = first as u64;
        for t in first..t_len {
            let row = &x[t * stride..t * stride + self.channels];
            self.push(row);
        }
    }

    /// History length `(kernel - 1) * dilation`.
    pub fn history(&self) -> usize {
        self.history
    }
}
