//! `Ec2Fleet` over the AWS SDK's own mocks (aws-smithy-mocks): what moto cannot show.
//! CreateFleet responses with per-override capacity errors, API failures reaching every
//! merged caller, the merge windows (idle 35 ms, max 1 s) under paused time, and the
//! terminate retry when EC2 does not know one of the ids.
//!
//! The client is configured by hand rather than with `mock_client!`, which needs the
//! `test-util` feature of aws-sdk-ec2 (a second build of the largest crate of the workspace).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::operation::create_fleet::{CreateFleetError as CreateFleetOpError, CreateFleetOutput};
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::operation::terminate_instances::{TerminateInstancesError, TerminateInstancesOutput};
use aws_sdk_ec2::types::{
    CreateFleetError, CreateFleetInstance, FleetLaunchTemplateOverrides, InstanceLifecycle,
    InstanceLifecycleType, InstanceState, InstanceStateName, InstanceType,
    LaunchTemplateAndOverridesResponse, Placement, Reservation, Tag,
};
use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, create_mock_http_client, mock};
use spot_aws::fleet::{BatchOptions, Ec2Fleet, Ec2FleetConfig, LaunchTemplate};
use spot_core::cloud::{AllocationStrategy, CloudProvider, FleetRequest, LaunchCandidate};
use spot_core::instance_type::CapacityType;
use spot_core::offerings::UnavailableOfferings;

fn client(rules: &[&Rule]) -> Client {
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for rule in rules {
        interceptor = interceptor.with_rule(rule);
    }
    Client::from_conf(
        aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
            .http_client(create_mock_http_client())
            .interceptor(interceptor)
            .build(),
    )
}

fn config(batch: Option<BatchOptions>) -> Ec2FleetConfig {
    let mut config = Ec2FleetConfig::new(
        LaunchTemplate::Name("workers".into()),
        BTreeMap::from([
            ("us-east-1a".to_owned(), "subnet-a".to_owned()),
            ("us-east-1b".to_owned(), "subnet-b".to_owned()),
        ]),
    );
    config.batch = batch;
    config
}

fn request(count: u32) -> FleetRequest {
    FleetRequest {
        capacity_type: CapacityType::Spot,
        candidates: vec![
            LaunchCandidate {
                instance_type: "c5.large".into(),
                zone: "us-east-1a".into(),
                price: 0.03,
            },
            LaunchCandidate {
                instance_type: "c5.large".into(),
                zone: "us-east-1b".into(),
                price: 0.035,
            },
            LaunchCandidate {
                instance_type: "m5.large".into(),
                zone: "us-east-1b".into(),
                price: 0.04,
            },
        ],
        count,
        strategy: AllocationStrategy::PriceCapacityOptimized,
        tags: BTreeMap::from([("spot/nodepool".to_owned(), "default".to_owned())]),
    }
}

fn ice(instance_type: InstanceType, subnet: &str) -> CreateFleetError {
    CreateFleetError::builder()
        .launch_template_and_overrides(
            LaunchTemplateAndOverridesResponse::builder()
                .overrides(
                    FleetLaunchTemplateOverrides::builder()
                        .instance_type(instance_type.clone())
                        .subnet_id(subnet)
                        .build(),
                )
                .build(),
        )
        .lifecycle(InstanceLifecycle::Spot)
        .error_code("InsufficientInstanceCapacity")
        .error_message(format!(
            "There is no Spot capacity available that matches your request ({}).",
            instance_type.as_str()
        ))
        .build()
}

fn launched(ids: &[&str], instance_type: InstanceType, zone: &str) -> CreateFleetInstance {
    let mut group = CreateFleetInstance::builder()
        .instance_type(instance_type)
        .lifecycle(InstanceLifecycle::Spot)
        .availability_zone(zone);
    for id in ids {
        group = group.instance_ids(*id);
    }
    group.build()
}

fn described(id: &str, instance_type: InstanceType, zone: &str) -> aws_sdk_ec2::types::Instance {
    aws_sdk_ec2::types::Instance::builder()
        .instance_id(id)
        .instance_type(instance_type)
        .placement(Placement::builder().availability_zone(zone).build())
        .state(InstanceState::builder().name(InstanceStateName::Running).build())
        .instance_lifecycle(InstanceLifecycleType::Spot)
        .private_dns_name(format!("ip-10-0-0-{}.ec2.internal", id.len()))
        .tags(Tag::builder().key("spot/nodepool").value("default").build())
        .launch_time(aws_sdk_ec2::primitives::DateTime::from_secs(1_767_225_600))
        .build()
}

#[tokio::test]
async fn capacity_errors_name_their_pools_and_feed_the_offerings_cache() {
    let create = mock!(Client::create_fleet)
        .match_requests(|r| {
            r.target_capacity_specification()
                .and_then(|t| t.total_target_capacity())
                == Some(2)
        })
        .then_output(|| {
            CreateFleetOutput::builder()
                .fleet_id("fleet-1")
                .errors(ice(InstanceType::C5Large, "subnet-a"))
                .errors(ice(InstanceType::C5Large, "subnet-b"))
                .instances(launched(&["i-0aaa"], InstanceType::M5Large, "us-east-1b"))
                .build()
        });
    let describe = mock!(Client::describe_instances).then_output(|| {
        DescribeInstancesOutput::builder()
            .reservations(
                Reservation::builder()
                    .instances(described("i-0aaa", InstanceType::M5Large, "us-east-1b"))
                    .build(),
            )
            .build()
    });
    let fleet = Ec2Fleet::new(client(&[&create, &describe]), config(None)).unwrap();
    let result = fleet.launch(&request(2)).await.unwrap();

    assert_eq!(result.instances.len(), 1, "{result:?}");
    let instance = &result.instances[0];
    assert_eq!(
        (
            instance.id.as_str(),
            instance.instance_type.as_str(),
            instance.zone.as_str(),
            instance.capacity_type
        ),
        ("i-0aaa", "m5.large", "us-east-1b", CapacityType::Spot)
    );
    assert_eq!(instance.private_dns_name, "ip-10-0-0-6.ec2.internal");
    assert_eq!(instance.state, "running");
    assert_eq!(
        instance.launch_time.map(|t| t.unix_timestamp()),
        Some(1_767_225_600)
    );
    let pools: Vec<(Option<&str>, Option<&str>, bool)> = result
        .errors
        .iter()
        .map(|e| {
            (
                e.instance_type.as_deref(),
                e.zone.as_deref(),
                e.is_insufficient_capacity(),
            )
        })
        .collect();
    assert_eq!(
        pools,
        [
            (Some("c5.large"), Some("us-east-1a"), true),
            (Some("c5.large"), Some("us-east-1b"), true),
        ]
    );
    assert!(result.errors[0].message.contains("no Spot capacity"));
    assert_eq!((create.num_calls(), describe.num_calls()), (1, 1));

    // What the provisioner does with it: the failed pools are skipped next time.
    let clock = std::sync::Arc::new(spot_core::clock::TokioClock::new());
    let cache = UnavailableOfferings::new(clock);
    cache.observe(CapacityType::Spot, &result);
    assert!(cache.is_unavailable("c5.large", "us-east-1a", CapacityType::Spot));
    assert!(cache.is_unavailable("c5.large", "us-east-1b", CapacityType::Spot));
    assert!(!cache.is_unavailable("m5.large", "us-east-1b", CapacityType::Spot));
}

#[tokio::test]
async fn instances_ec2_does_not_describe_yet_come_from_the_response() {
    let create = mock!(Client::create_fleet).then_output(|| {
        CreateFleetOutput::builder()
            .instances(launched(
                &["i-0bbb", "i-0ccc"],
                InstanceType::C5Large,
                "us-east-1a",
            ))
            .build()
    });
    // Eventual consistency: DescribeInstances does not show the new instances yet.
    let describe =
        mock!(Client::describe_instances).then_output(|| DescribeInstancesOutput::builder().build());
    let fleet = Ec2Fleet::new(client(&[&create, &describe]), config(None)).unwrap();
    let result = fleet.launch(&request(2)).await.unwrap();
    let ids: Vec<&str> = result.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["i-0bbb", "i-0ccc"]);
    for instance in &result.instances {
        assert_eq!(
            (
                instance.instance_type.as_str(),
                instance.zone.as_str(),
                instance.state.as_str()
            ),
            ("c5.large", "us-east-1a", "pending")
        );
        assert_eq!(
            instance.tags.get("spot/nodepool").map(String::as_str),
            Some("default")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn merged_callers_share_instances_and_errors() {
    let create = mock!(Client::create_fleet)
        .match_requests(|r| {
            r.target_capacity_specification()
                .and_then(|t| t.total_target_capacity())
                == Some(4)
        })
        .then_output(|| {
            CreateFleetOutput::builder()
                .errors(ice(InstanceType::C5Large, "subnet-a"))
                .instances(launched(
                    &["i-01", "i-02", "i-03"],
                    InstanceType::M5Large,
                    "us-east-1b",
                ))
                .build()
        });
    let mut options = config(Some(BatchOptions::default()));
    options.describe_after_launch = false;
    let fleet = Ec2Fleet::new(client(&[&create]), options).unwrap();
    let (two, one) = (request(2), request(1));
    let (a, b, c) = tokio::join!(fleet.launch(&two), fleet.launch(&one), fleet.launch(&one));
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let ids =
        |r: &spot_core::cloud::FleetResult| r.instances.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ["i-01", "i-02"]);
    assert_eq!(ids(&b), ["i-03"]);
    // The last caller got nothing: it learns why.
    assert!(c.instances.is_empty());
    assert_eq!(c.errors.len(), 1);
    assert_eq!(c.errors[0].zone.as_deref(), Some("us-east-1a"));
    // Every caller of the batch sees the errors.
    assert_eq!((a.errors.len(), b.errors.len()), (1, 1));
    assert_eq!(create.num_calls(), 1);
    assert_eq!(fleet.create_fleet_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_api_failure_reaches_every_merged_caller() {
    let create = mock!(Client::create_fleet).then_error(|| {
        CreateFleetOpError::generic(
            aws_sdk_ec2::error::ErrorMetadata::builder()
                .code("InvalidLaunchTemplateName.NotFoundException")
                .message("The specified launch template, with template name workers, does not exist.")
                .build(),
        )
    });
    let fleet = Ec2Fleet::new(client(&[&create]), config(Some(BatchOptions::default()))).unwrap();
    let one = request(1);
    let (a, b) = tokio::join!(fleet.launch(&one), fleet.launch(&one));
    for err in [a.unwrap_err(), b.unwrap_err()] {
        let text = err.to_string();
        assert!(
            text.starts_with("CreateFleet failed")
                && text.contains("InvalidLaunchTemplateName.NotFoundException"),
            "{text}"
        );
    }
    assert_eq!(create.num_calls(), 1);
}

/// A CreateFleet mock that launches as many instances as asked, with ids unique to the rule.
fn echo_fleet() -> Rule {
    let next = AtomicUsize::new(0);
    mock!(Client::create_fleet).then_compute_output(move |input| {
        let total = input
            .target_capacity_specification()
            .and_then(|t| t.total_target_capacity())
            .unwrap_or_default();
        let ids: Vec<String> = (0..total)
            .map(|_| format!("i-{:08x}", next.fetch_add(1, Ordering::Relaxed)))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        CreateFleetOutput::builder()
            .instances(launched(&ids, InstanceType::M5Large, "us-east-1a"))
            .build()
    })
}

/// Launches `n` single-instance requests `gap_ms` apart; checks each caller got its instance.
async fn staggered(fleet: &Ec2Fleet, gap_ms: u64, n: u64) {
    let launches = (0..n).map(|i| async move {
        tokio::time::sleep(Duration::from_millis(gap_ms * i)).await;
        fleet.launch(&request(1)).await.unwrap()
    });
    let results = futures::future::join_all(launches).await;
    let ids: BTreeSet<String> = results
        .iter()
        .map(|r| {
            assert_eq!(r.instances.len(), 1, "{r:?}");
            r.instances[0].id.clone()
        })
        .collect();
    assert_eq!(ids.len() as u64, n);
}

#[tokio::test(start_paused = true)]
async fn merge_windows_follow_karpenter() {
    let create = echo_fleet();
    let mut options = config(Some(BatchOptions::default()));
    options.describe_after_launch = false;
    let fleet = Ec2Fleet::new(client(&[&create]), options).unwrap();

    // Arrivals 30 ms apart keep one batch open (idle window 35 ms)...
    staggered(&fleet, 30, 5).await;
    assert_eq!(fleet.create_fleet_calls(), 1, "30 ms apart: one batch");

    // ... 40 ms apart does not.
    staggered(&fleet, 40, 3).await;
    assert_eq!(fleet.create_fleet_calls(), 4, "40 ms apart: one call each");

    // A steady stream is cut at 1 s after its first request: 50 arrivals 30 ms apart span
    // 1.47 s, so two calls.
    staggered(&fleet, 30, 50).await;
    assert_eq!(fleet.create_fleet_calls(), 6);

    // Different requests are never merged.
    let mut other = request(1);
    other.capacity_type = CapacityType::OnDemand;
    let spot = request(1);
    let (a, b) = tokio::join!(fleet.launch(&spot), fleet.launch(&other));
    assert_eq!((a.unwrap().instances.len(), b.unwrap().instances.len()), (1, 1));
    assert_eq!(fleet.create_fleet_calls(), 8);
    assert_eq!(create.num_calls(), 8);
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_is_sent_at_once() {
    let create = echo_fleet();
    let mut options = config(Some(BatchOptions {
        max_items: 3,
        ..BatchOptions::default()
    }));
    options.describe_after_launch = false;
    let fleet = Ec2Fleet::new(client(&[&create]), options).unwrap();
    let start = tokio::time::Instant::now();
    let one = request(1);
    let launches = (0..7).map(|_| fleet.launch(&one));
    for result in futures::future::join_all(launches).await {
        assert_eq!(result.unwrap().instances.len(), 1);
    }
    // 3 + 3 full batches, then 1 left waiting for its idle window.
    assert_eq!(fleet.create_fleet_calls(), 3);
    assert!(start.elapsed() >= Duration::from_millis(35));
    assert!(start.elapsed() < Duration::from_millis(100));
}

fn not_found(message: &'static str) -> TerminateInstancesError {
    TerminateInstancesError::generic(
        aws_sdk_ec2::error::ErrorMetadata::builder()
            .code("InvalidInstanceID.NotFound")
            .message(message)
            .build(),
    )
}

#[tokio::test]
async fn terminate_retries_without_the_ids_ec2_does_not_know() {
    // EC2 names the unknown ids: they are dropped, the rest retried, nothing described (a
    // fresh instance DescribeInstances does not show yet is still terminated).
    let refused = mock!(Client::terminate_instances)
        .match_requests(|r| r.instance_ids().len() == 3)
        .then_error(|| not_found("The instance IDs 'i-0dead, i-0gone' do not exist"));
    let known = mock!(Client::terminate_instances)
        .match_requests(|r| r.instance_ids() == ["i-0aaa"])
        .then_output(|| TerminateInstancesOutput::builder().build());
    let describe =
        mock!(Client::describe_instances).then_output(|| DescribeInstancesOutput::builder().build());
    let fleet = Ec2Fleet::new(client(&[&refused, &known, &describe]), config(None)).unwrap();
    fleet
        .terminate(&[
            "i-0dead".into(),
            "i-0aaa".into(),
            "junk".into(),
            "i-0gone".into(),
            "i-0aaa".into(),
        ])
        .await
        .unwrap();
    assert_eq!(
        (refused.num_calls(), known.num_calls(), describe.num_calls()),
        (1, 1, 0)
    );
    // Nothing to terminate: no call at all.
    fleet.terminate(&["junk".into()]).await.unwrap();
    fleet.terminate(&[]).await.unwrap();
    assert_eq!(refused.num_calls() + known.num_calls(), 2);
}

#[tokio::test]
async fn terminate_falls_back_to_describe_when_the_error_names_no_id() {
    let refused = mock!(Client::terminate_instances)
        .match_requests(|r| r.instance_ids().len() == 2)
        .then_error(|| not_found("Some instances do not exist"));
    let known = mock!(Client::terminate_instances)
        .match_requests(|r| r.instance_ids() == ["i-0aaa"])
        .then_output(|| TerminateInstancesOutput::builder().build());
    let describe = mock!(Client::describe_instances).then_output(|| {
        DescribeInstancesOutput::builder()
            .reservations(
                Reservation::builder()
                    .instances(described("i-0aaa", InstanceType::M5Large, "us-east-1b"))
                    .build(),
            )
            .build()
    });
    let fleet = Ec2Fleet::new(client(&[&refused, &known, &describe]), config(None)).unwrap();
    fleet
        .terminate(&["i-0aaa".into(), "i-0dead".into()])
        .await
        .unwrap();
    assert_eq!(
        (refused.num_calls(), describe.num_calls(), known.num_calls()),
        (1, 1, 1)
    );

    // A NotFound that persists after the describe is reported, not looped on.
    let stubborn = mock!(Client::terminate_instances).then_error(|| not_found("Some instances do not exist"));
    let describe = mock!(Client::describe_instances).then_output(|| {
        DescribeInstancesOutput::builder()
            .reservations(
                Reservation::builder()
                    .instances(described("i-0aaa", InstanceType::M5Large, "us-east-1b"))
                    .build(),
            )
            .build()
    });
    let fleet = Ec2Fleet::new(client(&[&stubborn, &describe]), config(None)).unwrap();
    let err = fleet.terminate(&["i-0aaa".into()]).await.unwrap_err();
    assert!(err.to_string().contains("InvalidInstanceID.NotFound"), "{err}");
    assert_eq!(stubborn.num_calls(), 2);

    // Other errors are reported.
    let denied = mock!(Client::terminate_instances).then_error(|| {
        TerminateInstancesError::generic(
            aws_sdk_ec2::error::ErrorMetadata::builder()
                .code("UnauthorizedOperation")
                .message("You are not authorized to perform this operation.")
                .build(),
        )
    });
    let fleet = Ec2Fleet::new(client(&[&denied]), config(None)).unwrap();
    let err = fleet.terminate(&["i-0aaa".into()]).await.unwrap_err();
    assert!(err.to_string().contains("UnauthorizedOperation"), "{err}");
}
