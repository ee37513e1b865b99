//! Placeholder; the demo follows.
fn main() {}
