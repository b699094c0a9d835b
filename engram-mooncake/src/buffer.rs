//! A Rust-owned buffer registered with a Mooncake client for the length of its life.

use crate::client::Client;
use crate::error::Result;

/// `len` zeroed bytes registered with `client`; unregistered before they are freed.
#[derive(Debug)]
pub(crate) struct Registered<'a> {
    client: &'a Client,
    buf: Vec<u8>,
}

impl<'a> Registered<'a> {
    pub(crate) fn new(client: &'a Client, len: usize) -> Result<Self> {
        let mut buf = vec![0u8; len];
        // SAFETY: `buf` is this struct's own allocation of `len` bytes; it is unregistered
        // in `Drop` before it is freed and never reallocated (no push, no resize).
        #[allow(unsafe_code)]
        unsafe {
            client.register(buf.as_mut_ptr() as usize, len)?;
        }
        Ok(Self { client, buf })
    }

    /// The address a call may read or write `[base, base + len)` at. No reference into
    /// the buffer is live while such a call runs (calls are synchronous and take `&self`
    /// of the client only).
    pub(crate) fn base(&mut self) -> usize {
        self.buf.as_mut_ptr() as usize
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        // SAFETY: the buffer was registered when this guard was made, and the guard's
        // borrow ends every transfer into it before it drops.
        #[allow(unsafe_code)]
        let r = unsafe { self.client.unregister(self.buf.as_mut_ptr() as usize) };
        if let Err(e) = r {
            tracing::debug!(target: "engram_mooncake", "unregister: {e}");
        }
    }
}
