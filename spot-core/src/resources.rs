//! Resources (being written).
/// A resource vector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources;
