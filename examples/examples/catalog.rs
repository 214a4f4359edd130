//! Prints a few catalog entries.
fn main() {}
