//! Kubernetes quantities (being written).
/// A Kubernetes quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity;
