//! `spot-provisioner run` end to end against moto and spot-kube-sim: the binary reads its
//! catalog live from EC2 (types, zonal offerings, spot prices) and refreshes it, elects itself
//! leader, turns
//! pending pods into a NodeClaim and launches it with EC2 CreateFleet.
//!
//! Needs a moto server (`SPOT_TEST_MOTO_ENDPOINT`, set by `cargo xtask test`).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use aws_sdk_ec2::types::{InstanceType, RequestLaunchTemplateData};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use serde_json::json;
use spot_provisioner::api::{NodeClaim, NodePool};

use common::{apply, claims, default_pool, deployment, wait_for};

const MOTO_ENV: &str = "SPOT_TEST_MOTO_ENDPOINT";
const REGION: &str = "us-east-1";

fn moto_endpoint() -> String {
    match std::env::var(MOTO_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{MOTO_ENV} is not set: this test needs a moto server. Run it through `cargo xtask test`, \
             which starts moto_server, or start `moto_server -H 127.0.0.1 -p 5077` and set \
             {MOTO_ENV}=http://127.0.0.1:5077"
        ),
    }
}

/// A VPC with a subnet in each of `zones` and a launch template; returns the subnets
/// (`zone=subnet-id`) and the template's name.
async fn ec2_setup(ec2: &aws_sdk_ec2::Client, zones: &[&str]) -> (Vec<String>, String) {
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.1.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .and_then(|v| v.vpc_id())
        .unwrap()
        .to_owned();
    let mut subnets = Vec::new();
    for (i, zone) in zones.iter().enumerate() {
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.1.{}.0/24", i + 1))
            .availability_zone(*zone)
            .send()
            .await
            .unwrap()
            .subnet()
            .and_then(|s| s.subnet_id())
            .unwrap()
            .to_owned();
        subnets.push(format!("{zone}={subnet}"));
    }
    let template = format!("provisioner-run-{}", std::process::id());
    ec2.create_launch_template()
        .launch_template_name(&template)
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id("ami-12c6146b")
                .instance_type(InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .unwrap();
    (subnets, template)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reads_the_ec2_catalog_and_launches_pending_pods_with_create_fleet() {
    let endpoint = moto_endpoint();
    let sdk = spot_aws::config::local(&endpoint, REGION).await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let zones = ["us-east-1a", "us-east-1b"];
    let (subnets, template) = ec2_setup(&ec2, &zones).await;

    let (running, client) = common::cluster(&zones).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    running.write_kubeconfig(&kubeconfig).unwrap();
    apply::<NodePool>(
        &client,
        json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
               "spec": default_pool()}),
    )
    .await;

    let log = dir.path().join("provisioner.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_spot-provisioner"))
        .args([
            "run",
            "--launch-template",
            &template,
            "--region",
            REGION,
            "--aws-endpoint",
            &endpoint,
        ])
        .args(["--subnets", &subnets.join(",")])
        .args(["--batch-idle-duration", "200ms", "--batch-max-duration", "1s"])
        .args(["--catalog-refresh-interval", "1s"])
        .env("KUBECONFIG", &kubeconfig)
        .env("NAMESPACE", "default")
        .env("POD_NAME", "moto-run")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env_remove("INTERRUPTION_QUEUE")
        .env_remove("CATALOG")
        .env_remove("LAUNCH_TEMPLATE")
        .env_remove("SUBNETS")
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start spot-provisioner run");

    apply::<Deployment>(&client, deployment("web", 2, "500m", "512Mi", json!({}))).await;
    let launched = |c: &NodeClaim| {
        c.status.as_ref().is_some_and(|s| {
            s.is_true("Launched") && s.provider_id.as_deref().is_some_and(|p| p.starts_with("aws:///"))
        })
    };
    let probe = client.clone();
    let log_path = log.clone();
    wait_for(
        "a NodeClaim launched through CreateFleet",
        Duration::from_secs(150),
        || {
            let client = probe.clone();
            let log_path = log_path.clone();
            async move {
                let done = claims(&client).await.iter().any(launched);
                if !done {
                    // A binary that exited fails the test now, with its log.
                    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                    assert!(!text.contains("spot-provisioner: "), "the binary failed:\n{text}");
                }
                done
            }
        },
    )
    .await;
    // Read at start, then again at every refresh.
    let log_path = log.clone();
    wait_for("the EC2 catalog to be refreshed", Duration::from_secs(60), || {
        let log_path = log_path.clone();
        async move {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            text.matches("EC2 catalog read").count() >= 2
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("using the embedded one"), "{text}");

    let claim = claims(&client).await.into_iter().find(launched).unwrap();
    let labels = claim.labels();
    // moto prices every spot offering far below on-demand: the launch is spot.
    assert_eq!(
        labels.get("karpenter.sh/capacity-type").map(String::as_str),
        Some("spot"),
        "{claim:?}"
    );
    let zone = labels
        .get("topology.kubernetes.io/zone")
        .cloned()
        .unwrap_or_default();
    assert!(zones.contains(&zone.as_str()), "{zone}");
    let id = claim
        .status
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(|p| p.rsplit('/').next())
        .unwrap()
        .to_owned();
    let described = ec2.describe_instances().instance_ids(&id).send().await.unwrap();
    let instance = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .expect("the instance exists in EC2");
    assert_eq!(
        instance.instance_type().map(|t| t.as_str().to_owned()),
        labels.get("node.kubernetes.io/instance-type").cloned()
    );
}
