//! Control frames over the Unix socket: a little-endian u32 length, then JSON; file
//! descriptors ride on a frame's first bytes (`SCM_RIGHTS`).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, ServiceError, io, violation};
use crate::protocol::{MAX_FRAME_BYTES, MAX_REQUEST_BYTES};

/// Most descriptors one frame carries.
pub const MAX_FDS: usize = 4;

fn encode(msg: &impl Serialize) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(msg).map_err(|e| ServiceError::Invalid {
        what: "control message",
        reason: e.to_string(),
    })?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(ServiceError::Limit {
            what: "control frame bytes",
            name: "MAX_FRAME_BYTES",
            limit: MAX_FRAME_BYTES as u64,
            found: body.len() as u64,
        });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// How long one frame may take to cross, whatever the peer does (a peer that sends or
/// reads one byte a second does not stretch it), and a flag that ends the wait early (the
/// server stopping).
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    /// When the frame must have crossed.
    pub deadline: Instant,
    /// Set when the waiting side should give up early (the server stopping).
    pub stop: Option<&'a AtomicBool>,
}

/// How often a bounded wait looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

impl<'a> Bound<'a> {
    /// `timeout` from now.
    pub fn within(timeout: Duration) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            stop: None,
        }
    }

    /// Also ends when `stop` is set.
    pub fn or_stop(self, stop: &'a AtomicBool) -> Self {
        Self {
            stop: Some(stop),
            ..self
        }
    }

    /// Waits until `sock` is ready for `what`, the deadline passes or the stop flag is set.
    fn wait(
        &self,
        sock: &UnixStream,
        what: PollFlags,
        op: &'static str,
        path: &Path,
    ) -> Result<()> {
        loop {
            if self.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Err(io(
                    op,
                    path,
                    std::io::Error::new(std::io::ErrorKind::Interrupted, "the server is stopping"),
                ));
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io(
                    op,
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the peer did not finish a control frame in time",
                    ),
                ));
            }
            let slice = if self.stop.is_some() {
                left.min(STOP_POLL)
            } else {
                left
            };
            let t = Timespec {
                tv_sec: slice.as_secs() as i64,
                tv_nsec: i64::from(slice.subsec_nanos()),
            };
            let mut fds = [PollFd::new(sock, what)];
            match rustix::event::poll(&mut fds, Some(&t)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io(op, path, e.into())),
            }
            if !fds[0].revents().is_empty() {
                return Ok(());
            }
        }
    }
}

/// Sends one frame, with `fds` attached, within `bound`. Every send is non-blocking
/// (`MSG_DONTWAIT`), so neither the peer nor the socket's flags can make it wait longer.
pub fn send(
    sock: &UnixStream,
    path: &Path,
    msg: &impl Serialize,
    fds: &[BorrowedFd<'_>],
    bound: Bound<'_>,
) -> Result<()> {
    let frame = encode(msg)?;
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    let mut sent = 0;
    if !fds.is_empty() {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(ServiceError::Limit {
                what: "descriptors per frame",
                name: "MAX_FDS",
                limit: MAX_FDS as u64,
                found: fds.len() as u64,
            });
        }
        sent = loop {
            match rustix::net::sendmsg(sock, &[IoSlice::new(&frame)], &mut control, flags) {
                Ok(n) => break n,
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                    bound.wait(sock, PollFlags::OUT, "send", path)?
                }
                Err(e) => return Err(io("send", path, e.into())),
            }
        };
    }
    while sent < frame.len() {
        match rustix::net::send(sock, &frame[sent..], flags) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                bound.wait(sock, PollFlags::OUT, "send", path)?
            }
            Err(e) => return Err(io("send", path, e.into())),
        }
    }
    Ok(())
}

/// Fills `buf` from `sock` within `bound`; `Ok(false)` when the peer closed first.
fn recv_exact(sock: &UnixStream, path: &Path, buf: &mut [u8], bound: Bound<'_>) -> Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::net::recv(sock, &mut buf[got..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Ok(false),
            Ok((n, _)) => got += n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                bound.wait(sock, PollFlags::IN, "receive", path)?
            }
            Err(e) => return Err(io("receive", path, e.into())),
        }
    }
    Ok(true)
}

/// Receives one frame and the descriptors attached to it (at most [`MAX_FDS`]; more are
/// closed by the kernel) within `bound`.
pub fn recv<T: DeserializeOwned>(
    sock: &UnixStream,
    path: &Path,
    peer: &'static str,
    bound: Bound<'_>,
) -> Result<(T, Vec<OwnedFd>)> {
    let mut len = [0u8; 4];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut len)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Ok(m) => break m.bytes,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                bound.wait(sock, PollFlags::IN, "receive", path)?
            }
            Err(e) => return Err(io("receive", path, e.into())),
        }
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = msg {
            fds.extend(it);
        }
    }
    let closed = || ServiceError::Disconnected {
        socket: path.to_path_buf(),
        reason: format!("the {peer} closed the connection"),
    };
    if got == 0 || !recv_exact(sock, path, &mut len[got..], bound)? {
        return Err(closed());
    }
    let n = u32::from_le_bytes(len) as usize;
    // A client sends requests only (a hello is a few hundred bytes): its frames are held
    // to the smaller bound, so a connection that has not said hello yet cannot make the
    // server allocate a welcome's worth.
    let max = if peer == "client" {
        MAX_REQUEST_BYTES
    } else {
        MAX_FRAME_BYTES
    };
    if n > max {
        return Err(violation(
            peer,
            "control frame bytes",
            format!("at most {max}"),
            n,
        ));
    }
    let mut body = vec![0u8; n];
    if !recv_exact(sock, path, &mut body, bound)? {
        return Err(closed());
    }
    let msg = serde_json::from_slice(&body).map_err(|e| {
        violation(
            peer,
            "control message",
            "a message of this protocol version",
            e,
        )
    })?;
    Ok((msg, fds))
}
