//! `spot-nth`: a node termination handler for Kubernetes on EC2 Spot, a drop-in successor of
//! aws-node-termination-handler.
//!
//! - [`config`]: every NTH environment variable and flag.
//! - [`handler`]: the engine: events to cordon, taint, drain, webhook and acknowledgement, one
//!   drain per instance, progress recorded on the Node.
//! - [`webhook`], [`metrics`]: notifications and Prometheus metrics.

pub mod config;
pub mod handler;
pub mod metrics;
pub mod server;
pub mod webhook;

pub use spot_aws::config::install_crypto_provider;
