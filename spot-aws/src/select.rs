//! The AWS side of instance-type selection (the `spot-select` binary).
//!
//! - [`live`]: the selector's data read from EC2 (types, offerings, spot prices).
//! - [`output`]: renderers: lists, tables, JSON, Karpenter `NodePool` and kOps
//!   `InstanceGroup` YAML.
//!
//! The selection itself is [`spot_core::select::select`].

pub mod live;
pub mod output;
