//! Doorbells: one Unix stream socket pair per direction that wakes the other side when a
//! ring gains entries, and the waits on them. A side that polls its ring (spinning) says
//! so in the region's flags and the other side skips the doorbell.
//!
//! Why sockets and not eventfds: file status flags (`O_NONBLOCK`) belong to the open file
//! description, and a descriptor passed with `SCM_RIGHTS` shares it. An eventfd the server
//! hands a client can be switched to blocking and filled to `0xfffffffffffffffe` by that
//! client, and the server's next `write(2)` on it blocks forever. The two ends of a socket
//! pair are two descriptions: the peer holds only its own end, and every send and receive
//! here passes `MSG_DONTWAIT`, which holds per call whatever any description says. A full
//! buffer means the doorbell already rang. So no wait on a doorbell is longer than the
//! caller's timeout, whatever the peer does.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use crate::error::{Result, io, violation};
use crate::protocol::FLAG_SPINNING;

/// Receives drained per wake-up (each up to [`DRAIN_BYTES`]): a peer that floods its
/// doorbell keeps its own thread busy, never one call longer than this.
const DRAIN_READS: usize = 64;
const DRAIN_BYTES: usize = 256;

/// This side's end of one doorbell.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A new doorbell: this side's end, and the peer's end to pass it.
    pub fn pair() -> Result<(Self, OwnedFd)> {
        let (mine, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| io("socketpair", Path::new("doorbell"), e.into()))?;
        Ok((Self { fd: mine }, theirs))
    }

    /// This side's end of a doorbell received from the peer: it must be a stream socket
    /// (the peer's end of a [`Doorbell::pair`]).
    pub fn from_fd(fd: OwnedFd, peer: &'static str) -> Result<Self> {
        match rustix::net::sockopt::socket_type(&fd) {
            Ok(SocketType::STREAM) => Ok(Self { fd }),
            Ok(t) => Err(violation(
                peer,
                "doorbell",
                "a stream socket",
                format!("{t:?}"),
            )),
            Err(e) => Err(violation(peer, "doorbell", "a stream socket", e)),
        }
    }

    /// The doorbell's descriptor (sent to the peer at attach).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Rings. Never blocks: a full buffer means it already rang, a closed peer end means
    /// nobody listens (the socket shows the hang-up).
    pub fn ring(&self) {
        let _ = rustix::net::send(&self.fd, &[1u8], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
    }

    /// Rings unless the other side says it is spinning. `flags` is the other side's
    /// flag word; the fence orders the caller's ring-index store before the flag load
    /// (the waiter does the mirror image in [`spin_then`]).
    pub fn ring_unless_spinning(&self, flags: &AtomicU32) {
        fence(Ordering::SeqCst);
        if flags.load(Ordering::Relaxed) & FLAG_SPINNING == 0 {
            self.ring();
        }
    }

    /// Consumes rings so far (never blocks; at most `DRAIN_READS` receives).
    pub fn clear(&self) {
        let mut b = [0u8; DRAIN_BYTES];
        for _ in 0..DRAIN_READS {
            match rustix::net::recv(&self.fd, &mut b, RecvFlags::DONTWAIT) {
                Ok((n, _)) if n == DRAIN_BYTES => continue,
                _ => return,
            }
        }
    }
}

/// Polls `ready` for up to `spin` with `my_flags` saying so, then clears the flag and
/// checks once more (the fence pairs with [`Doorbell::ring_unless_spinning`]). Returns
/// whether `ready` became true; false means the caller must sleep on its doorbell, which
/// the other side will ring.
pub fn spin_then(spin: Duration, my_flags: &AtomicU32, mut ready: impl FnMut() -> bool) -> bool {
    if !spin.is_zero() {
        my_flags.store(FLAG_SPINNING, Ordering::SeqCst);
        let t0 = Instant::now();
        let mut n = 0u32;
        loop {
            if ready() {
                my_flags.store(0, Ordering::SeqCst);
                return true;
            }
            std::hint::spin_loop();
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && t0.elapsed() >= spin {
                break;
            }
        }
    }
    my_flags.store(0, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    ready()
}

/// What a wait saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// The doorbell rang (or may have).
    Bell,
    /// The socket has a message.
    Message,
    /// The peer hung up.
    HangUp,
    /// Nothing before the timeout.
    Timeout,
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// Waits (client side) for `bell` or a hang-up of `sock`, up to `timeout`; consumes the
/// doorbell's count.
pub fn wait_client(bell: &Doorbell, sock: BorrowedFd<'_>, timeout: Duration) -> Result<Woke> {
    let mut fds = [
        PollFd::new(&bell.fd, PollFlags::IN),
        PollFd::from_borrowed_fd(sock, PollFlags::RDHUP),
    ];
    let t = timespec(timeout);
    match rustix::event::poll(&mut fds, Some(&t)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(io("poll", Path::new("doorbell"), e.into())),
    }
    let hang = PollFlags::HUP | PollFlags::ERR | PollFlags::RDHUP | PollFlags::NVAL;
    if fds[1].revents().intersects(hang) || fds[0].revents().intersects(hang) {
        return Ok(Woke::HangUp);
    }
    if fds[0].revents().contains(PollFlags::IN) {
        bell.clear();
        return Ok(Woke::Bell);
    }
    Ok(Woke::Timeout)
}

const EV_BELL: u64 = 1;
const EV_SOCK: u64 = 2;

/// The server's wait for one client: its submission doorbell (level-triggered; drained
/// with [`Doorbell::clear`], which never blocks) and its socket.
pub struct ServerWait {
    epoll: OwnedFd,
    events: Vec<epoll::Event>,
}

impl std::fmt::Debug for ServerWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerWait")
            .field("epoll", &self.epoll)
            .finish()
    }
}

impl ServerWait {
    /// Waits on the client's submission doorbell and its socket at once (one epoll set), so a
    /// hang-up ends the wait.
    pub fn new(bell: &Doorbell, sock: BorrowedFd<'_>) -> Result<Self> {
        let e = |err: rustix::io::Errno| io("epoll", Path::new("client"), err.into());
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(e)?;
        epoll::add(
            &epoll,
            &bell.fd,
            epoll::EventData::new_u64(EV_BELL),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
        .map_err(e)?;
        epoll::add(
            &epoll,
            sock,
            epoll::EventData::new_u64(EV_SOCK),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
        .map_err(e)?;
        Ok(Self {
            epoll,
            events: Vec::with_capacity(4),
        })
    }

    /// Waits up to `timeout`. A hang-up wins over a message, a message over the bell.
    pub fn wait(&mut self, timeout: Duration) -> Result<Woke> {
        self.events.clear();
        let t = timespec(timeout);
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut self.events),
            Some(&t),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io("epoll_wait", Path::new("client"), e.into())),
        }
        let mut woke = Woke::Timeout;
        let hang = epoll::EventFlags::HUP | epoll::EventFlags::ERR | epoll::EventFlags::RDHUP;
        for ev in &self.events {
            let flags = ev.flags;
            let data = ev.data.u64();
            // A closed doorbell end is a hang-up too (level-triggered, it would wake the
            // thread for ever).
            if flags.intersects(hang) {
                return Ok(Woke::HangUp);
            }
            if data == EV_SOCK {
                woke = Woke::Message;
            } else if woke == Woke::Timeout {
                woke = Woke::Bell;
            }
        }
        Ok(woke)
    }
}
