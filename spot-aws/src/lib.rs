//! AWS backends for `spot-core`.
//!
//! - [`imds`]: the IMDSv2 client and IMDS interruption event source.
//! - [`imds_sim`]: `spot-imds-sim`, an IMDS simulator compatible with amazon-ec2-metadata-mock.
//!
//! This is the only crate of the workspace that depends on the AWS SDK.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod imds;
pub mod imds_sim;
