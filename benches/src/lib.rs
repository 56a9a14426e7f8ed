//! Benchmarks live in `benches/`; this library is empty by design.
#![forbid(unsafe_code)]
