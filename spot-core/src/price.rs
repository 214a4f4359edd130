//! Prices (being written).
/// A price source.
pub trait PriceSource {}
