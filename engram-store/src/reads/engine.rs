//! The engine trait: the small surface a device-read mechanism implements (submit a read of
//! a file range into a staging lease, reap completions). Engines know nothing of rows,
//! plans, checksums or outputs: the driver owns those.

use std::fmt;

use super::staging::Lease;

/// One read for an engine: `lease.len()` bytes of layer file `file` at byte `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReq {
    /// Layer index (the engine's file table is indexed by it).
    pub file: u32,
    /// Byte offset in the file, aligned for O_DIRECT.
    pub offset: u64,
    /// Opaque to the engine; comes back in the completion.
    pub tag: u64,
}

/// A finished read: the lease is back with the bytes the device wrote.
#[derive(Debug)]
pub struct Completion {
    /// The request's tag.
    pub tag: u64,
    /// The staging slot, back from the engine with the bytes read.
    pub lease: Lease,
    /// Bytes read, or the OS error.
    pub result: std::io::Result<usize>,
}

/// Why an engine could not take or finish reads.
#[derive(Debug)]
pub enum EngineError {
    /// The engine is unusable (a ring that failed, a pool that stopped); every read still
    /// in flight has been reaped or deliberately leaked.
    Broken(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Broken(why) => f.write_str(why),
        }
    }
}

/// A device-read mechanism. At most `staging depth` reads are in flight (one per lease),
/// which every engine must accept without blocking in `submit` (the driver keeps fewer:
/// its queue depth; the other slots hold reads reaped and not yet verified).
pub trait Engine: Send + fmt::Debug {
    /// Short name for logs (`uring`, `pread`, an external engine's name).
    fn name(&self) -> &'static str;

    /// Queues a read. The engine keeps `lease` until the read has completed and returns it
    /// in a [`Completion`]; on error it returns the lease with the reason.
    fn submit(&mut self, req: ReadReq, lease: Lease) -> Result<(), (Lease, EngineError)>;

    /// Hands every read queued by [`Engine::submit`] to the device now. Engines that queue
    /// entries (io_uring: one system call for all of them) start them here; engines that
    /// start each read in `submit` need do nothing. A failure to start them may be left to
    /// the next [`Engine::reap`], which reports it.
    fn flush(&mut self) -> Result<(), EngineError> {
        Ok(())
    }

    /// Starts every queued read and appends finished ones to `out`, waiting until at least
    /// `min_complete` have finished (0: do not wait) or, with a `timeout`, until it
    /// passes (a timed-out wait is not an error). Interrupted waits are retried.
    fn reap(
        &mut self,
        min_complete: usize,
        timeout: Option<std::time::Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), EngineError>;

    /// Reads submitted and not yet returned by `reap`.
    fn in_flight(&self) -> usize;
}
