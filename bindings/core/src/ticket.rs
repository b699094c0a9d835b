//! Prefetch tickets for the bindings: the rows land in a page-aligned, page-locked buffer
//! that the ticket owns (taken from a per-store pool and given back when the ticket is
//! dropped), then either stay there for the caller to read in place or are copied into
//! the caller's memory on wait.
//!
//! Why not read straight into caller memory: the store's I/O workers (and io_uring with
//! registered buffers) write into an [`AlignedBuf`] they own until the batch completes. A
//! caller pointer would have to stay valid, unmoved and untouched until the ticket is
//! waited on or freed, a rule C and Python code can break silently (a freed numpy array,
//! a resized bytearray). Owning the buffer makes every misuse impossible; the price is one
//! `memcpy` per prefetch when the caller wants the rows elsewhere (`benches` measures it),
//! and nothing for callers that read them in place.

use std::sync::{Arc, Mutex};

use engram_store::{AlignedBuf, Ticket};

use crate::error::{Error, Result};

/// Spare prefetch buffers of one store (at most `max` kept).
#[derive(Debug)]
pub struct BufPool {
    bufs: Mutex<Vec<AlignedBuf>>,
    max: usize,
}

impl BufPool {
    /// A pool that keeps at most `max` spare buffers.
    pub fn new(max: usize) -> Self {
        Self {
            bufs: Mutex::new(Vec::with_capacity(max)),
            max,
        }
    }

    /// A buffer of at least `bytes` capacity: a spare one, or a new pinned one.
    pub fn take(&self, bytes: usize) -> Result<AlignedBuf> {
        if let Ok(mut spare) = self.bufs.lock()
            && let Some(i) = spare.iter().position(|b| b.capacity() >= bytes)
        {
            return Ok(spare.swap_remove(i));
        }
        Ok(AlignedBuf::new_pinned(bytes)?)
    }

    /// Gives a buffer back (dropped when the pool is full).
    pub fn put(&self, buf: AlignedBuf) {
        if let Ok(mut spare) = self.bufs.lock()
            && spare.len() < self.max
        {
            spare.push(buf);
        }
    }

    /// Spare buffers held now.
    pub fn spare(&self) -> usize {
        self.bufs.lock().map(|v| v.len()).unwrap_or(0)
    }
}

#[derive(Debug)]
enum State {
    InFlight(Ticket),
    Done { buf: AlignedBuf, result: Result<()> },
    Gone,
}

/// A prefetch in flight whose rows end in a buffer it owns.
#[derive(Debug)]
#[must_use = "a prefetch must be waited on to get its rows"]
pub struct PendingPrefetch {
    state: State,
    rows: usize,
    pool: Arc<BufPool>,
}

impl PendingPrefetch {
    pub(crate) fn new(ticket: Ticket, rows: usize, pool: Arc<BufPool>) -> Self {
        Self {
            state: State::InFlight(ticket),
            rows,
            pool,
        }
    }

    /// A prefetch whose outcome is already known.
    pub(crate) fn settled(
        buf: AlignedBuf,
        result: Result<()>,
        rows: usize,
        pool: Arc<BufPool>,
    ) -> Self {
        Self {
            state: State::Done { buf, result },
            rows,
            pool,
        }
    }

    /// Rows requested.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether [`PendingPrefetch::wait`] would return without blocking.
    pub fn is_ready(&self) -> bool {
        match &self.state {
            State::InFlight(t) => t.is_ready(),
            _ => true,
        }
    }

    /// Blocks until the rows are in; returns them (`rows * row_bytes` bytes, page-aligned,
    /// valid while `self` lives) or the prefetch's error. May be called again: it returns
    /// the same rows or the same error.
    pub fn wait(&mut self) -> Result<&[u8]> {
        if matches!(self.state, State::InFlight(_))
            && let State::InFlight(t) = std::mem::replace(&mut self.state, State::Gone)
        {
            let (buf, result) = t.wait();
            self.state = State::Done {
                buf,
                result: result.map_err(Error::from),
            };
        }
        match &self.state {
            State::Done {
                buf,
                result: Ok(()),
            } => Ok(buf.as_slice()),
            State::Done { result: Err(e), .. } => Err(e.recorded()),
            _ => Err(Error::Invalid {
                what: "ticket",
                reason: "its buffer was lost (a bug)".into(),
            }),
        }
    }

    /// [`PendingPrefetch::wait`], then copies the rows into `out` (exactly `rows * row_bytes`).
    pub fn wait_into(&mut self, out: &mut [u8]) -> Result<()> {
        let rows = self.wait()?;
        if out.len() != rows.len() {
            return Err(Error::Buffer {
                what: "output buffer (rows x row_bytes)",
                unit: "bytes",
                expected: rows.len(),
                found: out.len(),
            });
        }
        out.copy_from_slice(rows);
        Ok(())
    }
}

impl Drop for PendingPrefetch {
    fn drop(&mut self) {
        // Waiting here keeps the buffer owned until the I/O completes, then recycles it.
        match std::mem::replace(&mut self.state, State::Gone) {
            State::InFlight(t) => self.pool.put(t.wait().0),
            State::Done { buf, .. } => self.pool.put(buf),
            State::Gone => {}
        }
    }
}
