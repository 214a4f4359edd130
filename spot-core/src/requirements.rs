//! Label requirements (being written).
/// Operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// In.
    In,
}
/// A requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement;
/// Requirements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements;
