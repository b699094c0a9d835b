//! A client attached by hand, skipping the client library's checks and bookkeeping: what
//! a hostile or broken peer can do, for tests and the protocol fuzz target.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::bell::Doorbell;
use crate::error::{Result, ServiceError, violation};
use crate::protocol::{H_SQ_TAIL, PROTOCOL_VERSION, RegionLayout, Reply, Request, Sqe};
use crate::shm::Region;
use crate::wire;

/// An attached client's socket, region and doorbell ends, as the welcome gave them.
#[derive(Debug)]
pub struct RawClient {
    pub sock: UnixStream,
    pub region: Region,
    pub layout: RegionLayout,
    pub sq_bell: Doorbell,
    pub cq_bell: Doorbell,
}

impl RawClient {
    /// Says hello for `slots` x `slot_rows` (rows of `row_bytes`) on the table the server
    /// serves alone; a refusal is [`ServiceError::Refused`].
    pub fn attach(socket: &Path, slots: u32, slot_rows: u32, row_bytes: u32) -> Result<Self> {
        let sock = UnixStream::connect(socket).map_err(|e| ServiceError::Connect {
            socket: socket.to_path_buf(),
            reason: e.to_string(),
        })?;
        let bound = wire::Bound::within(Duration::from_secs(10));
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            table: None,
            slots,
            slot_rows,
            server_spin_us: 0,
        };
        wire::send(&sock, socket, &hello, &[], bound)?;
        let (reply, fds) = wire::recv::<Reply>(&sock, socket, "server", bound)?;
        let (slots, slot_rows) = match reply {
            Reply::Welcome {
                slots, slot_rows, ..
            } => (slots, slot_rows),
            Reply::Refused { reason } | Reply::Error { reason } => {
                return Err(ServiceError::Refused {
                    socket: socket.to_path_buf(),
                    reason,
                });
            }
            other => {
                return Err(violation(
                    "server",
                    "reply",
                    "welcome",
                    format!("{other:?}"),
                ));
            }
        };
        let layout = RegionLayout::new(slots, slot_rows, row_bytes)?;
        let mut fds = fds.into_iter();
        let (Some(r), Some(s), Some(c)) = (fds.next(), fds.next(), fds.next()) else {
            return Err(violation("server", "descriptors", 3, "fewer"));
        };
        Ok(Self {
            sock,
            region: Region::attach(r, layout.bytes)?,
            layout,
            sq_bell: Doorbell::from_fd(s, "server")?,
            cq_bell: Doorbell::from_fd(c, "server")?,
        })
    }

    /// Writes `sqe` at ring position `index`, publishes `index + 1` as the tail and rings.
    pub fn submit(&self, index: u32, sqe: Sqe) -> Result<()> {
        self.region.write(self.layout.sqe(index), &sqe.encode())?;
        self.region
            .atomic_u32(H_SQ_TAIL)
            .store(index.wrapping_add(1), Ordering::Release);
        self.sq_bell.ring();
        Ok(())
    }
}
