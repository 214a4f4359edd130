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

/// Installs aws-lc-rs as rustls' process-wide crypto provider (the one the AWS SDK and kube
/// use), so HTTPS clients built without an explicit provider work. Idempotent.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
