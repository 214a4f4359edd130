//! Loading AWS SDK configuration.
//!
//! Library code takes an [`aws_config::SdkConfig`] (or ready clients) from its caller; this
//! module only offers the one way the binaries and tests build one.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Where to send AWS requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Region, when not taken from the environment.
    pub region: Option<String>,
    /// Endpoint override such as `http://127.0.0.1:5000` (moto), when not real AWS.
    pub url: Option<String>,
}

/// Loads configuration through the standard AWS chain (environment, profile, IRSA, EKS Pod
/// Identity, instance role), with the region and endpoint overrides applied.
///
/// With an endpoint override and no credentials in the environment, static test credentials
/// are used so that local emulators work out of the box.
pub async fn load(endpoint: &Endpoint) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &endpoint.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &endpoint.url {
        loader = loader.endpoint_url(url.clone());
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.test_credentials();
        }
    }
    loader.load().await
}

/// Configuration for a local emulator: fixed region, test credentials, and none of the host's
/// AWS environment (tests must not reach a real account by accident).
pub async fn local(url: &str, region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .empty_test_environment()
        .region(Region::new(region.to_owned()))
        .endpoint_url(url)
        .test_credentials()
        .load()
        .await
}

/// Installs aws-lc-rs (the provider the AWS SDK and kube use) as rustls' process-wide crypto
/// provider, unless one is installed already. HTTP clients built without an explicit provider
/// (reqwest with a `*-no-provider` TLS feature, which feature unification can switch on for
/// every reqwest client in a binary) need it; calling it more than once is harmless.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
