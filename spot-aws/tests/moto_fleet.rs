//! `Ec2Fleet` against moto: spot and on-demand instant fleets launch from a launch template
//! into the subnet of each candidate's zone with the requested tags; describe leaves unknown
//! ids out; terminate tolerates unknown and terminated instances; identical concurrent
//! requests share one CreateFleet call (counted by an SDK interceptor, not by our code).
//!
//! moto ignores allocation strategies (it launches the first override) and never reports
//! capacity errors: `fleet_mocks.rs` covers the error mapping.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use aws_sdk_ec2::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept};
use aws_sdk_ec2::error::BoxError;
use aws_sdk_ec2::operation::create_fleet::CreateFleetInput;
use aws_sdk_ec2::types::{InstanceType, RequestLaunchTemplateData};
use spot_aws::fleet::{Ec2Fleet, Ec2FleetConfig, LaunchTemplate};
use spot_core::cloud::{AllocationStrategy, CloudProvider, FleetRequest, Instance, LaunchCandidate};
use spot_core::instance_type::CapacityType;

const REGION: &str = "us-east-1";
const ZONE_A: &str = "us-east-1a";
const ZONE_B: &str = "us-east-1b";

/// Records the TotalTargetCapacity of every CreateFleet the SDK client executes.
#[derive(Debug, Clone, Default)]
struct CreateFleetSpy(Arc<Mutex<Vec<i32>>>);

impl CreateFleetSpy {
    fn calls(&self) -> Vec<i32> {
        self.0.lock().unwrap().clone()
    }
}

impl Intercept for CreateFleetSpy {
    fn name(&self) -> &'static str {
        "CreateFleetSpy"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(input) = context.input().downcast_ref::<CreateFleetInput>() {
            let total = input
                .target_capacity_specification()
                .and_then(|t| t.total_target_capacity())
                .unwrap_or_default();
            self.0.lock().unwrap().push(total);
        }
        Ok(())
    }
}

/// A VPC with one subnet per zone, a launch template, and a fleet launcher over a client
/// whose CreateFleet calls are recorded.
struct Setup {
    ec2: aws_sdk_ec2::Client,
    fleet: Ec2Fleet,
    spy: CreateFleetSpy,
    subnets: BTreeMap<String, String>,
    cluster: String,
}

async fn setup() -> Result<Setup> {
    let sdk = common::moto_config(REGION).await;
    let spy = CreateFleetSpy::default();
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&sdk)
            .interceptor(spy.clone())
            .build(),
    );
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await?
        .vpc()
        .and_then(|v| v.vpc_id())
        .context("no VPC id")?
        .to_owned();
    let mut subnets = BTreeMap::new();
    for (zone, cidr) in [(ZONE_A, "10.0.1.0/24"), (ZONE_B, "10.0.2.0/24")] {
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(cidr)
            .availability_zone(zone)
            .send()
            .await?
            .subnet()
            .and_then(|s| s.subnet_id())
            .context("no subnet id")?
            .to_owned();
        subnets.insert(zone.to_owned(), subnet);
    }
    let images = ec2.describe_images().send().await?;
    let image = images
        .images()
        .first()
        .and_then(|i| i.image_id())
        .unwrap_or("ami-12c6146b")
        .to_owned();
    let template = common::unique("workers");
    ec2.create_launch_template()
        .launch_template_name(&template)
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(image)
                .instance_type(InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await?;
    let cluster = common::unique("cluster");
    let mut config = Ec2FleetConfig::new(LaunchTemplate::Name(template), subnets.clone());
    config.tags.insert("spot/cluster".into(), cluster.clone());
    let fleet = Ec2Fleet::new(ec2.clone(), config)?;
    Ok(Setup {
        ec2,
        fleet,
        spy,
        subnets,
        cluster,
    })
}

fn candidate(instance_type: &str, zone: &str, price: f64) -> LaunchCandidate {
    LaunchCandidate {
        instance_type: instance_type.into(),
        zone: zone.into(),
        price,
    }
}

fn request(
    capacity_type: CapacityType,
    candidates: Vec<LaunchCandidate>,
    count: u32,
    claim: &str,
) -> FleetRequest {
    FleetRequest {
        capacity_type,
        candidates,
        count,
        strategy: match capacity_type {
            CapacityType::Spot => AllocationStrategy::PriceCapacityOptimized,
            CapacityType::OnDemand => AllocationStrategy::LowestPrice,
        },
        tags: BTreeMap::from([("spot/nodeclaim".to_owned(), claim.to_owned())]),
    }
}

/// Checks a launched instance against the request and against what EC2 describes.
fn check_launched(
    setup: &Setup,
    request: &FleetRequest,
    instance: &Instance,
    described: &Instance,
) -> Result<()> {
    let pools: BTreeSet<(&str, &str)> = request
        .candidates
        .iter()
        .filter(|c| setup.subnets.contains_key(&c.zone))
        .map(|c| (c.instance_type.as_str(), c.zone.as_str()))
        .collect();
    ensure!(
        pools.contains(&(instance.instance_type.as_str(), instance.zone.as_str())),
        "{} launched as {} in {}, not one of the candidates {pools:?}",
        instance.id,
        instance.instance_type,
        instance.zone
    );
    ensure!(
        instance.capacity_type == request.capacity_type,
        "{} is {}",
        instance.id,
        instance.capacity_type
    );
    ensure!(
        instance.tags.get("spot/cluster") == Some(&setup.cluster),
        "cluster tag: {:?}",
        instance.tags
    );
    ensure!(
        instance.tags.get("spot/nodeclaim") == request.tags.get("spot/nodeclaim"),
        "request tag: {:?}",
        instance.tags
    );
    ensure!(
        instance.private_dns_name.starts_with("ip-"),
        "DNS name {:?}",
        instance.private_dns_name
    );
    ensure!(
        ["pending", "running"].contains(&instance.state.as_str()),
        "state {}",
        instance.state
    );
    ensure!(instance.launch_time.is_some(), "no launch time");
    ensure!(
        instance.provider_id() == format!("aws:///{}/{}", instance.zone, instance.id),
        "provider id"
    );
    ensure!(
        instance == described,
        "launch reported {instance:?}, describe {described:?}"
    );
    Ok(())
}

async fn launch_and_check(setup: &Setup, request: &FleetRequest) -> Result<Vec<Instance>> {
    let result = setup.fleet.launch(request).await?;
    ensure!(result.errors.is_empty(), "errors: {:?}", result.errors);
    ensure!(
        result.instances.len() == request.count as usize,
        "asked {}, got {:?}",
        request.count,
        result.instances
    );
    let ids: Vec<String> = result.instances.iter().map(|i| i.id.clone()).collect();
    let described = setup.fleet.describe(&ids).await?;
    ensure!(described.len() == ids.len(), "described {described:?}");
    for (instance, described) in result.instances.iter().zip(&described) {
        check_launched(setup, request, instance, described)?;
    }
    Ok(result.instances)
}

#[tokio::test]
async fn spot_fleet_launches_in_the_candidate_pools() -> Result<()> {
    let setup = setup().await?;
    let request = request(
        CapacityType::Spot,
        vec![
            candidate("m5.large", ZONE_B, 0.04),
            candidate("m5.large", "us-east-1c", 0.03), // no subnet there: dropped
            candidate("c5.large", ZONE_A, 0.05),
        ],
        2,
        &common::unique("claim"),
    );
    let instances = launch_and_check(&setup, &request).await?;
    assert_eq!(setup.spy.calls(), [2]);
    assert_eq!(setup.fleet.create_fleet_calls(), 1);
    // The instances really are in the subnet of their zone.
    let described = setup
        .ec2
        .describe_instances()
        .set_instance_ids(Some(instances.iter().map(|i| i.id.clone()).collect()))
        .send()
        .await?;
    for ec2 in described.reservations().iter().flat_map(|r| r.instances()) {
        let zone = ec2
            .placement()
            .and_then(|p| p.availability_zone())
            .context("no zone")?;
        assert_eq!(ec2.subnet_id(), setup.subnets.get(zone).map(String::as_str));
    }
    Ok(())
}

#[tokio::test]
async fn on_demand_fleet_launches() -> Result<()> {
    let setup = setup().await?;
    let request = request(
        CapacityType::OnDemand,
        vec![candidate("c5.xlarge", ZONE_A, 0.17)],
        1,
        &common::unique("claim"),
    );
    let instances = launch_and_check(&setup, &request).await?;
    assert_eq!(
        (instances[0].instance_type.as_str(), instances[0].zone.as_str()),
        ("c5.xlarge", ZONE_A)
    );
    Ok(())
}

#[tokio::test]
async fn describe_leaves_unknown_ids_out_and_terminate_is_idempotent() -> Result<()> {
    let setup = setup().await?;
    let request = request(
        CapacityType::OnDemand,
        vec![candidate("m5.large", ZONE_B, 0.096)],
        2,
        &common::unique("claim"),
    );
    let instances = launch_and_check(&setup, &request).await?;
    let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();

    let unknown = "i-0000000000000000f".to_owned();
    let mut asked = vec![
        unknown.clone(),
        ids[1].clone(),
        "not-an-id".into(),
        ids[0].clone(),
    ];
    asked.push(ids[1].clone());
    let described = setup.fleet.describe(&asked).await?;
    let described_ids: Vec<&str> = described.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(described_ids, [ids[1].as_str(), ids[0].as_str()]);
    assert!(
        setup
            .fleet
            .describe(std::slice::from_ref(&unknown))
            .await?
            .is_empty()
    );
    assert!(setup.fleet.describe(&[]).await?.is_empty());

    // An unknown id among known ones: the known ones are still terminated.
    setup
        .fleet
        .terminate(&[unknown.clone(), ids[0].clone(), "not-an-id".into()])
        .await?;
    let after = setup.fleet.describe(&ids).await?;
    let states: BTreeMap<&str, &str> = after.iter().map(|i| (i.id.as_str(), i.state.as_str())).collect();
    ensure!(
        ["shutting-down", "terminated"].contains(&states[ids[0].as_str()]),
        "states {states:?}"
    );
    ensure!(states[ids[1].as_str()] == "running", "states {states:?}");
    // Twice, with the other instance: no error.
    setup.fleet.terminate(&ids).await?;
    setup.fleet.terminate(&ids).await?;
    setup.fleet.terminate(&[unknown]).await?;
    for instance in setup.fleet.describe(&ids).await? {
        ensure!(
            ["shutting-down", "terminated"].contains(&instance.state.as_str()),
            "{instance:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_identical_requests_share_one_create_fleet() -> Result<()> {
    let setup = setup().await?;
    let claim = common::unique("claim");
    let shared = request(
        CapacityType::Spot,
        vec![
            candidate("m5.large", ZONE_A, 0.04),
            candidate("m5.xlarge", ZONE_B, 0.08),
        ],
        1,
        &claim,
    );
    let mut other = shared.clone();
    other.tags.insert("spot/nodepool".into(), "other".into());
    other.count = 2;

    let launches = (0..5).map(|_| setup.fleet.launch(&shared));
    let (results, other_result) =
        tokio::join!(futures::future::join_all(launches), setup.fleet.launch(&other));

    let mut ids = BTreeSet::new();
    for result in results {
        let result = result?;
        ensure!(result.instances.len() == 1, "caller got {:?}", result.instances);
        ensure!(result.errors.is_empty(), "errors {:?}", result.errors);
        ids.insert(result.instances[0].id.clone());
    }
    assert_eq!(ids.len(), 5, "every caller gets its own instance: {ids:?}");
    let other_result = other_result?;
    assert_eq!(other_result.instances.len(), 2);
    for instance in &other_result.instances {
        assert_eq!(
            instance.tags.get("spot/nodepool").map(String::as_str),
            Some("other")
        );
        assert!(!ids.contains(&instance.id));
    }
    // One call for the five identical requests, one for the different one.
    let mut calls = setup.spy.calls();
    calls.sort();
    assert_eq!(calls, [2, 5]);
    assert_eq!(setup.fleet.create_fleet_calls(), 2);

    // The merged fleet's instances are real and carry the shared request's tags.
    let described = setup
        .fleet
        .describe(&ids.iter().cloned().collect::<Vec<_>>())
        .await?;
    assert_eq!(described.len(), 5);
    for instance in &described {
        assert_eq!(instance.tags.get("spot/nodeclaim"), Some(&claim));
        assert!(!instance.tags.contains_key("spot/nodepool"));
    }
    Ok(())
}

#[tokio::test]
async fn invalid_requests_send_nothing() -> Result<()> {
    let setup = setup().await?;
    let mut zero = request(
        CapacityType::Spot,
        vec![candidate("m5.large", ZONE_A, 0.04)],
        0,
        "claim",
    );
    let err = setup.fleet.launch(&zero).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid launch request: count is 0: nothing to launch"
    );
    zero.count = 1;
    zero.candidates = vec![candidate("m5.large", "us-west-2a", 0.04)];
    let err = setup.fleet.launch(&zero).await.unwrap_err();
    assert!(
        err.to_string().contains("no candidate zone has a subnet"),
        "{err}"
    );
    assert!(setup.spy.calls().is_empty());
    Ok(())
}
