//! Instance-to-node resolution against moto: instances started with RunInstances resolve to
//! their node names, provider ids, tags and lifecycles; batches, pages and the cache behave.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use aws_sdk_ec2::types::{
    InstanceMarketOptionsRequest, InstanceType, MarketType, Placement, ResourceType, Tag, TagSpecification,
};
use spot_aws::instances::{ASG_NAME_TAG, InstanceResolver, ManagedTag};
use spot_core::instance_type::CapacityType;

const REGION: &str = "us-east-1";
const ZONE: &str = "us-east-1b";

async fn client() -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&common::moto_config(REGION).await)
}

async fn image(ec2: &aws_sdk_ec2::Client) -> Result<String> {
    let images = ec2.describe_images().send().await?;
    Ok(images
        .images()
        .first()
        .and_then(|i| i.image_id())
        .unwrap_or("ami-12c6146b")
        .to_owned())
}

/// Starts `count` instances tagged with `tags`, spot when `spot`; returns their ids.
async fn run(
    ec2: &aws_sdk_ec2::Client,
    count: i32,
    spot: bool,
    tags: &[(&str, &str)],
) -> Result<Vec<String>> {
    let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
    for (k, v) in tags {
        spec = spec.tags(Tag::builder().key(*k).value(*v).build());
    }
    let mut request = ec2
        .run_instances()
        .image_id(image(ec2).await?)
        .instance_type(InstanceType::M5Large)
        .min_count(count)
        .max_count(count)
        .placement(Placement::builder().availability_zone(ZONE).build());
    if !tags.is_empty() {
        request = request.tag_specifications(spec.build());
    }
    if spot {
        request = request.instance_market_options(
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .build(),
        );
    }
    let out = request.send().await?;
    let ids: Vec<String> = out
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    ensure!(ids.len() == count as usize, "RunInstances started {ids:?}");
    Ok(ids)
}

#[tokio::test]
async fn instances_resolve_to_nodes() -> Result<()> {
    let ec2 = client().await;
    let cluster = common::unique("cluster");
    let managed = run(
        &ec2,
        2,
        false,
        &[("spot/cluster", &cluster), (ASG_NAME_TAG, "workers")],
    )
    .await?;
    let foreign = run(&ec2, 1, true, &[("spot/cluster", "someone-else")]).await?;
    let resolver =
        InstanceResolver::new(ec2.clone()).with_managed_tag(ManagedTag::key_value("spot/cluster", &cluster));
    let mut ids = managed.clone();
    ids.extend(foreign.clone());
    ids.push("i-0000000000000000f".into());
    ids.push("not-an-instance".into());
    let resolution = resolver.resolve(&ids).await?;

    assert_eq!(resolution.found.len(), 3);
    assert_eq!(resolution.missing, ["i-0000000000000000f", "not-an-instance"]);
    for id in &managed {
        let info = resolution.get(id).context("managed instance not found")?;
        let dns = info.node_name.as_deref().context("no node name")?;
        ensure!(
            dns.ends_with(".ec2.internal") && dns.starts_with("ip-"),
            "node name {dns}"
        );
        assert_eq!(info.provider_id, format!("aws:///{ZONE}/{id}"));
        assert_eq!(info.zone, ZONE);
        assert_eq!(info.instance_type, "m5.large");
        assert_eq!(info.state, "running");
        assert_eq!(info.capacity_type, CapacityType::OnDemand);
        assert_eq!(info.asg_name(), Some("workers"));
        assert!(info.managed);
    }
    let spot = resolution.get(&foreign[0]).context("spot instance not found")?;
    assert_eq!(spot.capacity_type, CapacityType::Spot);
    assert!(!spot.managed, "instance of another cluster reported as managed");
    assert_eq!(
        spot.tags.get("spot/cluster").map(String::as_str),
        Some("someone-else")
    );
    assert_eq!(
        resolver.resolve_one(&managed[0]).await?.map(|i| i.instance_id),
        Some(managed[0].clone())
    );
    Ok(())
}

#[tokio::test]
async fn lookups_are_batched_by_100_and_follow_pages() -> Result<()> {
    let ec2 = client().await;
    // Seven reservations (moto pages by reservation).
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.extend(run(&ec2, 1, false, &[]).await?);
    }

    // 7 instances, 5 per page: two pages.
    let paged = InstanceResolver::new(ec2.clone()).with_page_size(5)?;
    let resolution = paged.resolve(&ids).await?;
    assert_eq!(resolution.found.len(), 7);
    assert_eq!(paged.describe_calls(), 2);

    // 150 ids (143 unknown): two batches, one page each.
    let mut many = ids.clone();
    many.extend((0..143).map(|n| format!("i-{n:017x}")));
    let batched = InstanceResolver::new(ec2.clone());
    let resolution = batched.resolve(&many).await?;
    assert_eq!(resolution.found.len(), 7);
    assert_eq!(resolution.missing.len(), 143);
    assert_eq!(batched.describe_calls(), 2);
    assert!(InstanceResolver::new(ec2).with_page_size(4).is_err());
    Ok(())
}

#[tokio::test]
async fn the_cache_serves_repeated_lookups_within_its_ttl() -> Result<()> {
    let ec2 = client().await;
    let ids = run(&ec2, 1, true, &[]).await?;
    let resolver = InstanceResolver::new(ec2.clone()).with_ttl(Duration::from_secs(2));
    assert_eq!(
        resolver.resolve_one(&ids[0]).await?.context("not found")?.state,
        "running"
    );
    assert_eq!(resolver.describe_calls(), 1);

    ec2.terminate_instances().instance_ids(&ids[0]).send().await?;
    // Within the TTL: served from the cache, as it was, without calling EC2.
    assert_eq!(
        resolver.resolve_one(&ids[0]).await?.context("not found")?.state,
        "running"
    );
    assert_eq!(resolver.describe_calls(), 1);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let info = resolver
        .resolve_one(&ids[0])
        .await?
        .context("terminated instance not listed")?;
    assert_eq!(info.state, "terminated");
    assert_eq!(resolver.describe_calls(), 2);

    // Without a cache every lookup asks EC2.
    let uncached = InstanceResolver::new(ec2).with_ttl(Duration::ZERO);
    uncached.resolve_one(&ids[0]).await?;
    uncached.resolve_one(&ids[0]).await?;
    assert_eq!(uncached.describe_calls(), 2);
    // Unknown instances are not cached: each lookup asks again.
    let unknown = "i-0ffffffffffffffff".to_owned();
    let cached = InstanceResolver::new(client().await);
    assert!(cached.resolve_one(&unknown).await?.is_none());
    assert!(cached.resolve_one(&unknown).await?.is_none());
    assert_eq!(cached.describe_calls(), 2);
    Ok(())
}
