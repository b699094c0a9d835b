//! Turning the pointers a C caller passes into Rust references, with every check that can
//! be made: NULL, alignment, and a length whose byte size fits `isize`.
//!
//! Contract (the one thing these functions cannot check, stated in `engram.h`): a non-NULL
//! pointer passed with a length `n` points to `n` initialised elements that stay valid
//! and are not written by anyone else for the duration of the call, and an output pointer
//! to `n` writable elements that nothing else reads or writes during the call.
//!
//! So every function here that turns a pointer into a reference is an `unsafe fn`: its
//! `# Safety` is that contract, and the lifetime `'a` it returns is the caller's promise
//! too: the reference lives no longer than the exported call that received the pointer
//! (the exports use the results only inside their body).
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char};

use engram_bindings::{Error, Result};

fn check<T>(p: *const T, len: usize, what: &'static str) -> Result<()> {
    if p.is_null() {
        return Err(Error::Null { what });
    }
    if !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Error::Invalid {
            what,
            reason: format!(
                "pointer {p:p} is not aligned to {} bytes",
                std::mem::align_of::<T>()
            ),
        });
    }
    let bytes = len.checked_mul(std::mem::size_of::<T>());
    if bytes.is_none_or(|b| b > isize::MAX as usize) {
        return Err(Error::Invalid {
            what,
            reason: format!("length {len} is larger than the address space"),
        });
    }
    Ok(())
}

/// `len` elements at `p` (any pointer, even NULL, when `len` is 0).
///
/// # Safety
/// A non-NULL `p` points to `len` initialised elements that stay valid and unwritten for
/// `'a`, which ends with the exported call.
pub(crate) unsafe fn slice<'a, T>(p: *const T, len: usize, what: &'static str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    check(p, len, what)?;
    // SAFETY: p is non-NULL and aligned, len * size_of::<T>() <= isize::MAX (checked above);
    // the caller guarantees (module contract) that all len elements are initialised and
    // not written during the call, which covers the whole extent [p, p + len).
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// `len` writable elements at `p` (any pointer, even NULL, when `len` is 0).
///
/// # Safety
/// A non-NULL `p` points to `len` elements that nothing else reads or writes for `'a`,
/// which ends with the exported call.
pub(crate) unsafe fn slice_mut<'a, T>(
    p: *mut T,
    len: usize,
    what: &'static str,
) -> Result<&'a mut [T]> {
    if len == 0 {
        return Ok(&mut []);
    }
    check(p.cast_const(), len, what)?;
    // SAFETY: as in `slice`, plus the caller guarantees exclusive access to the whole
    // extent [p, p + len) during the call (module contract).
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// An input of `n` elements at `src` and an output of `m` elements at `dst` for one call:
/// refused when they share a byte (checked on the addresses, before either reference
/// exists), then as [`slice`] and [`slice_mut`].
///
/// # Safety
/// As [`slice`] for `src` and [`slice_mut`] for `dst`.
pub(crate) unsafe fn in_out<'a, S, D>(
    src: *const S,
    n: usize,
    src_what: &'static str,
    dst: *mut D,
    m: usize,
    dst_what: &'static str,
) -> Result<(&'a [S], &'a mut [D])> {
    engram_bindings::disjoint(
        engram_bindings::Extent::of(src, n, src_what),
        engram_bindings::Extent::of(dst.cast_const(), m, dst_what),
    )?;
    // SAFETY: the caller's contract (this function's), and the extents are disjoint.
    unsafe { Ok((slice(src, n, src_what)?, slice_mut(dst, m, dst_what)?)) }
}

/// A reference to one object the caller owns (NULL is an error).
///
/// # Safety
/// A non-NULL `p` points to a live `T` (made by this library, or an options struct the
/// caller initialised) that nothing writes for `'a`, which ends with the exported call.
pub(crate) unsafe fn obj<'a, T>(p: *const T, what: &'static str) -> Result<&'a T> {
    check(p, 1, what)?;
    // SAFETY: non-NULL and aligned (checked); the caller guarantees it points to a live T
    // created by this library (or, for option structs, initialised by the caller).
    Ok(unsafe { &*p })
}

/// A mutable reference to one object the caller owns (NULL is an error).
///
/// # Safety
/// As [`obj`], and nothing else reads or writes `*p` for `'a`.
pub(crate) unsafe fn obj_mut<'a, T>(p: *mut T, what: &'static str) -> Result<&'a mut T> {
    check(p.cast_const(), 1, what)?;
    // SAFETY: as in `obj`, plus exclusive access during the call (documented per function).
    Ok(unsafe { &mut *p })
}

/// A NUL-terminated UTF-8 string (NULL is an error).
///
/// # Safety
/// A non-NULL `p` points to a NUL-terminated string that stays valid and unwritten for
/// `'a`, which ends with the exported call.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &'static str) -> Result<&'a str> {
    if p.is_null() {
        return Err(Error::Null { what });
    }
    // SAFETY: non-NULL; the caller guarantees a NUL-terminated string that stays valid for
    // the call.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| Error::Invalid {
        what,
        reason: format!("not UTF-8: {e}"),
    })
}

/// Like [`str_arg`], but NULL or "" is `None`.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, what: &'static str) -> Result<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: this function's contract.
    let s = unsafe { str_arg(p, what)? };
    Ok((!s.is_empty()).then_some(s))
}

/// Moves `value` to the heap and stores the pointer in `*out`.
///
/// # Safety
/// As [`obj_mut`] for `out`.
pub(crate) unsafe fn give<T>(out: *mut *mut T, value: T) -> Result<()> {
    // SAFETY: this function's contract.
    let slot = unsafe { obj_mut(out, "out")? };
    *slot = Box::into_raw(Box::new(value));
    Ok(())
}

/// Takes back a pointer made by [`give`] (NULL: nothing).
///
/// # Safety
/// `p` is NULL or came from [`give`] and has not been taken back yet.
pub(crate) unsafe fn take<T>(p: *mut T) -> Option<Box<T>> {
    // SAFETY: per the function contract, p came from Box::into_raw and is taken once.
    (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
}
