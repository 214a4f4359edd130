//! AWS backends for `spot-core`.
//!
//! - [`config`]: loading an `SdkConfig` with an optional endpoint override (moto, LocalStack).
//! - [`sqs`]: the SQS/EventBridge interruption event source and its message parsers.
//! - [`imds`]: the IMDSv2 client and IMDS interruption event source.
//! - [`imds_sim`]: `spot-imds-sim`, an IMDS simulator compatible with amazon-ec2-metadata-mock.
//! - [`instances`]: EC2 instance-to-node resolution with a short-lived cache.
//! - [`fleet`]: launching, describing and terminating instances with EC2 CreateFleet (the
//!   `CloudProvider` of the provisioner), with Karpenter's request merging.
//! - [`autoscaling`]: completing and heartbeating Auto Scaling lifecycle actions.
//! - [`select`]: the live EC2 catalog and the output formats of `spot-select`.
//! - [`catalog`]: the provisioner's catalog read live from EC2 (types, zones, spot prices).
//!
//! This is the only crate of the workspace that depends on the AWS SDK.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod autoscaling;
pub mod catalog;
pub mod config;
pub mod fleet;
pub mod imds;
pub mod imds_sim;
pub mod instances;
pub mod select;
pub mod sqs;
