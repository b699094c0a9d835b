//! Fuzz entry points of this crate's parsers, shared by the libFuzzer targets in `fuzz/`
//! and the regression test over their corpora (`tests/tests/fuzz_corpora.rs`). Each returns
//! normally on any input; a panic, including a failed invariant assertion, is a bug.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::path::Path;

use crate::file::Sha256Sums;

/// `SHA256SUMS`: text that parses renders to text that parses back to the same list.
pub fn sha256sums(data: &[u8]) {
    // Read as `read_regular_string` does: bytes that are not UTF-8 are an error there.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz/SHA256SUMS");
    let Ok(sums) = Sha256Sums::parse(text, path) else {
        return;
    };
    let again = sums.to_text();
    let back = Sha256Sums::parse(&again, path).expect("a rendered list parses");
    assert_eq!(back, sums, "SHA256SUMS round trip");
}
