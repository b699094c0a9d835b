//! Signals for a server process: `SIGHUP` reloads the tables, `SIGINT` / `SIGTERM` stop
//! it. The signals are blocked in the calling thread before any other thread starts (so
//! every thread inherits the mask) and taken synchronously by one thread with
//! `sigwait`: no handler runs in an arbitrary thread, nothing async-signal-unsafe.
#![allow(unsafe_code)]

use std::path::Path;

use engram_client::error::{Result, io};

/// A signal the server acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reopen the tables.
    Reload,
    /// SIGTERM or SIGINT: stop.
    Stop,
}

/// The blocked signal set.
#[derive(Debug)]
pub struct Signals {
    set: libc::sigset_t,
}

// SAFETY: a sigset_t is a plain bit set with no pointers.
unsafe impl Send for Signals {}

impl Signals {
    /// Blocks `SIGHUP`, `SIGINT` and `SIGTERM` in this thread (and so in the threads it
    /// starts afterwards). Call before starting the server.
    pub fn block() -> Result<Self> {
        // SAFETY: sigset_t is plain data; an all-zero value is a valid (if unspecified)
        // set that sigemptyset then initialises.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t for each call; the
        // signal numbers are valid constants; the old-mask pointer may be null.
        let rc = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io(
                "pthread_sigmask",
                Path::new("signals"),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(Self { set })
    }

    /// Waits for the next of the blocked signals.
    pub fn wait(&self) -> Result<Signal> {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `self.set` is an initialised sigset_t and `sig` a valid out pointer,
            // both alive for the call.
            let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
            if rc != 0 {
                return Err(io(
                    "sigwait",
                    Path::new("signals"),
                    std::io::Error::from_raw_os_error(rc),
                ));
            }
            match sig {
                libc::SIGHUP => return Ok(Signal::Reload),
                libc::SIGINT | libc::SIGTERM => return Ok(Signal::Stop),
                _ => continue,
            }
        }
    }
}
