//! Catalog (being written).
/// The catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog;
