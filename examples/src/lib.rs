//! Support code of the examples: [`demo`] is the core of `cargo xtask demo`, a library so
//! that its integration test runs exactly what the command runs.

pub mod demo;
