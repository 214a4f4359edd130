//! Helpers shared by the integration tests of `spot-aws`.
#![allow(dead_code)]

use aws_config::SdkConfig;

/// The environment variable `cargo xtask test` sets to the moto server it started.
pub const MOTO_ENV: &str = "SPOT_TEST_MOTO_ENDPOINT";

/// The moto endpoint. Panics with instructions when the harness did not provide one: a test
/// that needs moto never skips silently.
pub fn moto_endpoint() -> String {
    match std::env::var(MOTO_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{MOTO_ENV} is not set: this test needs a moto server. Run it through `cargo xtask test`, \
             which starts moto_server, or start `moto_server -H 127.0.0.1 -p 5077` and set \
             {MOTO_ENV}=http://127.0.0.1:5077"
        ),
    }
}

/// SDK configuration pointing at moto in `region`.
pub async fn moto_config(region: &str) -> SdkConfig {
    spot_aws::config::local(&moto_endpoint(), region).await
}

/// A name unique to this test process, so tests in one group can share a moto server.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
