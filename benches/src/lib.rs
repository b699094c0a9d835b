//! Shared helpers for the benchmarks and harnesses.
