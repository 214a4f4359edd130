//! Cost-minimising bin packing of pods into instance types.
//!
//! Given items (pods, by their requests) and bin types (instance types, by what pods can use
//! on them and their price), choose how many bins of which types to open and which items go
//! where, so that every item fits and the total price is as low as possible. Every resource
//! counts: CPU, memory, pods, ephemeral storage and extended resources.
//!
//! - [`pack`] (`pack.rs`, `search.rs`): the packer, a greedy construction by cost efficiency
//!   followed by local search. The scheduler calls it for groups of pods without
//!   constraints.
//! - [`first_fit_decreasing`] (`ffd.rs`): the Karpenter-like baseline it is measured against.
//! - `lower_bound` (`bound.rs`, feature `lp`): the LP relaxation that bounds every packing's
//!   cost from below, to certify how far from optimal [`pack`] is.
//! - [`suite`]: the certification workloads shared by the tests and the benchmarks.
//! - `model.rs`: [`Item`], [`BinType`], [`Bin`], [`Packing`], [`Error`] and the dense form
//!   the algorithms share.

#[cfg(feature = "lp")]
mod bound;
mod ffd;
mod model;
mod pack;
mod search;
pub mod suite;

#[cfg(feature = "lp")]
#[cfg_attr(docsrs, doc(cfg(feature = "lp")))]
pub use bound::lower_bound;
pub use ffd::first_fit_decreasing;
pub use model::{Bin, BinType, Error, Item, Packing};
pub use pack::pack;
pub use suite::{SuiteCase, certification_suite};
