//! Caller buffers by address, checked before any Rust reference to them exists: a C or
//! Python caller can pass an `ids` buffer and an `out` buffer that are the same memory
//! (`buf[:8*n].view(np.uint64)` as ids and `buf` as out), and a call that reads one while
//! it writes the other would read ids it has already overwritten with rows (undefined
//! behaviour in Rust the moment both references exist). Both bindings call [`disjoint`]
//! on every pair a call reads and writes, so overlapping buffers are an
//! `InvalidArgument` error at the boundary instead.

use crate::error::{Error, Result};

/// `bytes` bytes at address `addr`, named for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// What the range is (for errors): an argument name such as `"out"`.
    pub what: &'static str,
    /// First byte's address.
    pub addr: usize,
    /// Length in bytes.
    pub bytes: usize,
}

impl Extent {
    /// `len` elements of `T` at `p` (the pointer is only compared, never read).
    pub fn of<T>(p: *const T, len: usize, what: &'static str) -> Self {
        Self {
            what,
            addr: p as usize,
            bytes: len.saturating_mul(std::mem::size_of::<T>()),
        }
    }

    /// One past the last byte, without wrapping or saturating (an extent that reaches the
    /// top of the address space still has its last byte).
    fn end(&self) -> u128 {
        self.addr as u128 + self.bytes as u128
    }
}

/// An error when `a` and `b` share a byte (empty extents share none).
pub fn disjoint(a: Extent, b: Extent) -> Result<()> {
    if a.bytes == 0 || b.bytes == 0 || a.end() <= b.addr as u128 || b.end() <= a.addr as u128 {
        return Ok(());
    }
    Err(Error::Invalid {
        what: "buffers",
        reason: format!(
            "{} ({} bytes at {:#x}) and {} ({} bytes at {:#x}) overlap: the call would write \
             over what it reads; pass separate buffers (or copy one first)",
            a.what, a.bytes, a.addr, b.what, b.bytes, b.addr
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(addr: usize, bytes: usize) -> Extent {
        Extent {
            what: "x",
            addr,
            bytes,
        }
    }

    #[test]
    fn overlap_is_any_shared_byte() {
        assert!(disjoint(e(100, 8), e(108, 8)).is_ok());
        assert!(disjoint(e(108, 8), e(100, 8)).is_ok());
        assert!(disjoint(e(100, 9), e(108, 8)).is_err());
        assert!(disjoint(e(100, 64), e(120, 1)).is_err());
        assert!(disjoint(e(100, 0), e(100, 8)).is_ok());
        assert!(disjoint(e(usize::MAX - 4, 100), e(usize::MAX - 1, 1)).is_err());
        let buf = [0u64; 4];
        let err = disjoint(
            Extent::of(buf.as_ptr(), 2, "ids"),
            Extent::of(buf.as_ptr().cast::<u8>(), 32, "out"),
        )
        .expect_err("same memory");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("overlap"), "{err}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `disjoint` fails exactly when some byte address lies in both extents (checked
        /// against the definition, on windows small enough to enumerate).
        #[test]
        fn disjoint_is_no_shared_byte(a in 0usize..64, an in 0usize..32, b in 0usize..64, bn in 0usize..32) {
            let shared = (a..a + an).any(|x| (b..b + bn).contains(&x));
            let r = disjoint(
                Extent { what: "a", addr: a, bytes: an },
                Extent { what: "b", addr: b, bytes: bn },
            );
            prop_assert_eq!(r.is_err(), shared);
            if let Err(e) = r {
                prop_assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
            }
        }

        /// Near the top of the address space nothing wraps around.
        #[test]
        fn no_wrap_at_the_top(off in 0usize..64, n in 1usize..1024) {
            let top = Extent { what: "a", addr: usize::MAX - off, bytes: n };
            let low = Extent { what: "b", addr: 0, bytes: n };
            prop_assert!(disjoint(top, low).is_ok());
            prop_assert!(disjoint(top, top).is_err());
        }
    }
}
