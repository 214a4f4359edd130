//! The AWS SDK's own IMDS client (`aws_config::imds::client::Client`, IMDSv2 only) reads from
//! `spot-imds-sim`.

use std::time::Duration;

use anyhow::Result;
use aws_config::imds::client::Client;
use aws_config::imds::client::error::ImdsError;
use spot_aws::imds::parse::parse_instance_action;
use spot_aws::imds_sim::{ImdsSim, SimConfig};
use spot_core::event::SpotAction;

#[tokio::test]
async fn sdk_imds_client_reads_instance_id_and_spot_notice() -> Result<()> {
    let sim = ImdsSim::start(
        SimConfig::default().with_instance_id("i-0sdk"),
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let client = Client::builder()
        .endpoint(format!("{}/", sim.url()))
        .map_err(|e| anyhow::anyhow!("endpoint: {e}"))?
        .max_attempts(1)
        .build();

    let id = client.get("/latest/meta-data/instance-id").await?;
    assert_eq!(id.as_ref(), "i-0sdk");

    match client.get("/latest/meta-data/spot/instance-action").await {
        Err(ImdsError::ErrorResponse(response)) => assert_eq!(response.response().status().as_u16(), 404),
        other => panic!("expected 404 before the notice, got {other:?}"),
    }

    let notice = sim.trigger_spot_itn(SpotAction::Hibernate, Duration::from_secs(120));
    let body = client.get("/latest/meta-data/spot/instance-action").await?;
    let parsed = parse_instance_action(body.as_ref())?;
    assert_eq!((parsed.action, parsed.time), (SpotAction::Hibernate, notice.time));
    assert!(sim.snapshot().live_tokens >= 1, "the SDK used IMDSv2 tokens");
    sim.shutdown().await?;
    Ok(())
}
