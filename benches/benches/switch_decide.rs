//! Placeholder; the switch helper writes the real benchmark.
fn main() {}
