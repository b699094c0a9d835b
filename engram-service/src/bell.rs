//! Doorbells: eventfds that wake the other side when a ring gains entries, and the waits
//! on them. A side that polls its ring (spinning) says so in the region's flags and the
//! other side skips the doorbell.
//!
//! The server never reads a doorbell's counter: it waits for the edge (`EPOLLET`), so a
//! client that drains or reconfigures the shared eventfd can delay only itself.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

use crate::error::{Result, io};
use crate::protocol::FLAG_SPINNING;

/// One eventfd.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A new, silent doorbell (non-blocking).
    pub fn new() -> Result<Self> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| io("eventfd", Path::new("doorbell"), e.into()))?;
        Ok(Self { fd })
    }

    /// A doorbell received from the peer.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Rings (a full counter means it already rang: nothing to do).
    pub fn ring(&self) {
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
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

    /// Consumes rings so far (non-blocking).
    pub fn clear(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut b);
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
    if fds[1].revents().intersects(hang) {
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

/// The server's wait for one client: its submission doorbell (edge-triggered, never read)
/// and its socket.
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
    pub fn new(bell: &Doorbell, sock: BorrowedFd<'_>) -> Result<Self> {
        let e = |err: rustix::io::Errno| io("epoll", Path::new("client"), err.into());
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(e)?;
        epoll::add(
            &epoll,
            &bell.fd,
            epoll::EventData::new_u64(EV_BELL),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
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
        for ev in &self.events {
            let flags = ev.flags;
            let data = ev.data.u64();
            if data == EV_SOCK {
                if flags.intersects(
                    epoll::EventFlags::HUP | epoll::EventFlags::ERR | epoll::EventFlags::RDHUP,
                ) {
                    return Ok(Woke::HangUp);
                }
                woke = Woke::Message;
            } else if woke == Woke::Timeout {
                woke = Woke::Bell;
            }
        }
        Ok(woke)
    }
}
