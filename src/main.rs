//! The roxyd daemon.

fn main() {}
