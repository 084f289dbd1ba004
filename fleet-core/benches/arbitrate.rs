//! Benchmark of `arbitrate` (in progress).
fn main() {}
