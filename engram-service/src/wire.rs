//! Control frames over the Unix socket: a little-endian u32 length, then JSON; file
//! descriptors ride on a frame's first bytes (`SCM_RIGHTS`).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, ServiceError, io, violation};
use crate::protocol::MAX_FRAME_BYTES;

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

/// Sends one frame, with `fds` attached.
pub fn send(
    sock: &UnixStream,
    path: &Path,
    msg: &impl Serialize,
    fds: &[BorrowedFd<'_>],
) -> Result<()> {
    let frame = encode(msg)?;
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
        sent = rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&frame)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(|e| io("send", path, e.into()))?;
    }
    let mut w = sock;
    w.write_all(&frame[sent..]).map_err(|e| io("send", path, e))
}

/// Receives one frame and the descriptors attached to it (at most [`MAX_FDS`]; more are
/// closed by the kernel).
pub fn recv<T: DeserializeOwned>(
    sock: &UnixStream,
    path: &Path,
    peer: &'static str,
) -> Result<(T, Vec<OwnedFd>)> {
    let mut len = [0u8; 4];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut len)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io("receive", path, e.into())),
        }
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = msg {
            fds.extend(it);
        }
    }
    if got == 0 {
        return Err(ServiceError::Disconnected {
            socket: path.to_path_buf(),
            reason: format!("the {peer} closed the connection"),
        });
    }
    let mut r = sock;
    r.read_exact(&mut len[got..])
        .map_err(|e| io("receive", path, e))?;
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME_BYTES {
        return Err(violation(
            peer,
            "control frame bytes",
            format!("at most {MAX_FRAME_BYTES}"),
            n,
        ));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)
        .map_err(|e| io("receive", path, e))?;
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
