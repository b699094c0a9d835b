//! What a table build reads from a corpus: the documents ([`corpus`]: files, directories
//! with include/exclude globs, JSON Lines, stdin, each file size-limited) and what it
//! counts in them ([`count`]: row hits per Engram layer with exact counters, which become
//! the traffic profile; [`candidates`]: next-token continuations per context, which become
//! `candidates.bin`).
//!
//! `engram-build` (in `engram-tools`) drives these; `engram replay` reads held-out text
//! with [`corpus`]; the build-throughput bench measures [`count`] directly.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod candidates;
pub mod corpus;
pub mod count;
