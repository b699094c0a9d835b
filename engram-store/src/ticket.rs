//! The handles a row request returns: [`Ticket`] (rows on their way into a buffer) and
//! [`Speculation`] (rows on their way into the cache). Each is one of a few states, an
//! enum: known already, in flight in this process's store, or pending in another
//! [`crate::RowSource`] (a storage service).

use std::sync::Arc;

use crate::buffer::AlignedBuf;
use crate::error::{Error, Result};
use crate::source::{PendingRows, PendingSpeculation};
use crate::store::Handle;

/// A prefetch in flight. [`Ticket::wait`] returns the buffer and the outcome; dropping a
/// ticket waits for its request and drops the buffer.
#[derive(Debug)]
#[must_use = "a ticket must be waited on to get its rows"]
pub struct Ticket {
    state: TicketState,
}

#[derive(Debug)]
enum TicketState {
    /// The outcome is known (served inline, or refused before it started).
    Ready(AlignedBuf, Result<()>),
    /// A reactor of this process's store completes it into slot `slot`.
    InFlight { handle: Arc<Handle>, slot: usize },
    /// Rows being read outside this process's store.
    Pending(Box<dyn PendingRows>),
    /// Waited for already (a ticket is consumed by `wait`).
    Taken,
}

impl Ticket {
    /// A ticket whose outcome is already known.
    pub fn ready(out: AlignedBuf, result: Result<()>) -> Self {
        Self {
            state: TicketState::Ready(out, result),
        }
    }

    /// A ticket for rows being read elsewhere (another [`crate::RowSource`]).
    pub fn from_pending(pending: Box<dyn PendingRows>) -> Self {
        Self {
            state: TicketState::Pending(pending),
        }
    }

    pub(crate) fn in_flight(handle: Arc<Handle>, slot: usize) -> Self {
        Self {
            state: TicketState::InFlight { handle, slot },
        }
    }

    /// A ticket with nothing to return (an internal error path).
    pub(crate) fn gone() -> Self {
        Self {
            state: TicketState::Taken,
        }
    }

    /// Whether the rows are ready (`wait` would not block).
    pub fn is_ready(&self) -> bool {
        match &self.state {
            TicketState::Ready(..) | TicketState::Taken => true,
            TicketState::InFlight { handle, slot } => handle.shared.slots.is_done(*slot),
            TicketState::Pending(p) => p.is_ready(),
        }
    }

    /// Blocks until the rows are in the buffer; returns it with the outcome.
    pub fn wait(mut self) -> (AlignedBuf, Result<()>) {
        match self.take() {
            Some(r) => r,
            None => {
                let e = Error::ShutDown("ticket already consumed");
                match AlignedBuf::new(0, crate::buffer::IO_ALIGN) {
                    Ok(b) => (b, Err(e)),
                    Err(alloc) => unreachable!("a one-page allocation failed: {alloc}"),
                }
            }
        }
    }

    fn take(&mut self) -> Option<(AlignedBuf, Result<()>)> {
        match std::mem::replace(&mut self.state, TicketState::Taken) {
            TicketState::Ready(out, r) => Some((out, r)),
            TicketState::InFlight { handle, slot } => {
                let slots = &handle.shared.slots;
                let done = slots.wait(slot);
                slots.release(slot);
                Some(done)
            }
            TicketState::Pending(p) => Some(p.wait()),
            TicketState::Taken => None,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if matches!(
            self.state,
            TicketState::InFlight { .. } | TicketState::Pending(_)
        ) {
            let _ = self.take();
        }
    }
}

/// A speculative prefetch ([`crate::Store::speculate`]).
#[derive(Debug)]
pub struct Speculation {
    state: SpeculationState,
}

#[derive(Debug)]
enum SpeculationState {
    /// The source did not take it (no cache, a resident backend, too many pending).
    NotTaken,
    /// Speculation number `spec` of this process's store.
    Local { handle: Arc<Handle>, spec: u64 },
    /// A speculation running outside this process's store.
    Pending(Box<dyn PendingSpeculation>),
}

impl Speculation {
    /// A speculation the source did not take.
    pub fn not_taken() -> Self {
        Self {
            state: SpeculationState::NotTaken,
        }
    }

    /// A speculation running elsewhere (another [`crate::RowSource`]).
    pub fn from_pending(pending: Box<dyn PendingSpeculation>) -> Self {
        Self {
            state: SpeculationState::Pending(pending),
        }
    }

    pub(crate) fn local(handle: Arc<Handle>, spec: u64) -> Self {
        Self {
            state: SpeculationState::Local { handle, spec },
        }
    }

    /// Whether the source took the speculation (false: no cache, a resident backend, or
    /// too many pending).
    pub fn accepted(&self) -> bool {
        !matches!(self.state, SpeculationState::NotTaken)
    }

    /// Stops the speculation: reads not yet issued never are; rows already read still
    /// enter the cache.
    pub fn cancel(self) {
        match self.state {
            SpeculationState::NotTaken => {}
            SpeculationState::Local { handle, spec } => handle.shared.specs.cancel(spec),
            SpeculationState::Pending(p) => p.cancel(),
        }
    }
}
