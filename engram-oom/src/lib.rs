//! Out-of-memory exits for the workspace's binaries (`engram`, `engram-build`,
//! `moe-core`).
//!
//! When an infallible allocation fails (under `ulimit -v`, or a cgroup without swap), the
//! standard library prints `memory allocation of N bytes failed` and calls `abort()`: the
//! process dies by SIGABRT (status 134, a core file), which looks like a crash. Stable Rust
//! has no hook to change that (`std::alloc::set_alloc_error_hook` is unstable), and a
//! global allocator that exits on a null pointer would also kill the fallible paths that
//! handle one (`try_reserve`, `AlignedBuf::new`, which return errors). So [`install`] takes
//! SIGABRT instead: after the standard library's line naming the size, the handler writes
//! one line of its own (what to do) and ends the process with status 2, the binaries' exit
//! status for an error. Nothing in this process aborts on purpose otherwise (panics unwind
//! to `main`), so a SIGABRT here is an allocation failure or a bug the same line covers.
//!
//! The one module with `unsafe` in this crate: `sigaction(2)` and an async-signal-safe
//! handler (`write(2)` of bytes prepared before, then `_exit(2)`).
#![allow(unsafe_code)]
#![deny(missing_docs)]

use std::sync::OnceLock;

/// The handler's line, prepared by [`install`] (a signal handler must not allocate).
static LINE: OnceLock<Vec<u8>> = OnceLock::new();

/// Exit status after an allocation failure (the binaries' status for an error).
pub const OOM_EXIT: i32 = 2;

extern "C" fn on_abort(_sig: libc::c_int) {
    if let Some(line) = LINE.get() {
        // SAFETY: write(2) and _exit(2) are async-signal-safe; `line` is a live, immutable
        // buffer (set once before the handler was installed).
        unsafe {
            libc::write(2, line.as_ptr().cast(), line.len());
        }
    }
    // SAFETY: ends the process at once, without running anything else.
    unsafe { libc::_exit(OOM_EXIT) }
}

/// The line written after an allocation failure.
pub fn message(program: &str) -> String {
    format!(
        "{program}: out of memory: the allocation named above failed; give the process more \
         memory or address space (`ulimit -v`, a cgroup's memory.max), or ask for less \
         (batch rows, --cache-bytes, --threads, --max-clients)\n"
    )
}

/// Turns SIGABRT (an allocation failure) into [`message`] and exit status 2. Call first
/// thing in `main`. Errors only when `sigaction` fails (then the default stays).
pub fn install(program: &str) -> std::io::Result<()> {
    let _ = LINE.set(message(program).into_bytes());
    // SAFETY: a zeroed sigaction is a valid value to fill in; the handler is an
    // `extern "C" fn(c_int)` (no SA_SIGINFO), its mask is emptied by sigemptyset, and the
    // old-action pointer may be null.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        libc::sigaction(libc::SIGABRT, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_message_says_what_to_do() {
        let m = super::message("engram");
        assert!(m.starts_with("engram: out of memory") && m.contains("ulimit -v"));
        assert!(m.ends_with('\n'));
    }
}
