//! Fallible allocation for buffers whose size comes from input (a file, a flag, a config):
//! when memory is short (`ulimit -v`, a cgroup, a huge number in a file) the caller gets an
//! error that names the buffer instead of the process aborting.

/// A buffer could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot allocate {bytes} bytes for {what} ({len} elements): not enough memory")]
pub struct AllocError {
    /// What the buffer holds.
    pub what: &'static str,
    /// Elements requested.
    pub len: usize,
    /// Bytes requested (saturated at `u64::MAX`).
    pub bytes: u64,
}

/// A `Vec` of `len` copies of `value`, or an error when the memory cannot be reserved.
pub fn try_vec<T: Clone>(len: usize, value: T, what: &'static str) -> Result<Vec<T>, AllocError> {
    let mut v = Vec::new();
    try_reserve(&mut v, len, what)?;
    v.resize(len, value);
    Ok(v)
}

/// A `Vec` of `dims.iter().product()` copies of `value`: the product is checked, and the
/// memory reserved fallibly.
pub fn try_vec_dims<T: Clone>(
    dims: &[usize],
    value: T,
    what: &'static str,
) -> Result<Vec<T>, AllocError> {
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or(AllocError {
            what,
            len: usize::MAX,
            bytes: u64::MAX,
        })?;
    try_vec(len, value, what)
}

/// Reserves room for `additional` more elements in `v`, fallibly.
pub fn try_reserve<T>(
    v: &mut Vec<T>,
    additional: usize,
    what: &'static str,
) -> Result<(), AllocError> {
    v.try_reserve_exact(additional).map_err(|_| AllocError {
        what,
        len: additional,
        bytes: (additional as u128 * std::mem::size_of::<T>() as u128).min(u128::from(u64::MAX))
            as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_sizes_are_errors() {
        let e = try_vec(usize::MAX / 2, 0u64, "test buffer").expect_err("too large");
        assert_eq!(e.what, "test buffer");
        assert!(e.to_string().contains("not enough memory"), "{e}");
        assert_eq!(try_vec(3, 7u8, "small").expect("fits"), [7, 7, 7]);
        assert!(try_vec_dims(&[usize::MAX, 2], 0u8, "overflow").is_err());
        assert_eq!(try_vec_dims(&[2, 3], 0u8, "small").expect("fits").len(), 6);
    }
}
