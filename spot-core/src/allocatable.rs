//! Allocatable model (being written).
/// The model.
#[derive(Debug, Clone, Default)]
pub struct AllocatableModel;
