//! The live path against a fake EC2 endpoint that paginates (moto returns everything in one
//! page): every `NextToken` is followed, the latest spot price per (zone, type) wins, and the
//! binary's `--live --endpoint-url` selects from what the endpoint returned.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;
use spot_aws::select::live::LiveCatalog;
use spot_core::select::ZoneAvailability;

type Requests = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn instance_type(name: &str, vcpus: u32, mib: u64, arch: &str) -> String {
    format!(
        "<item><instanceType>{name}</instanceType><currentGeneration>true</currentGeneration>\
         <supportedUsageClasses><item>on-demand</item><item>spot</item></supportedUsageClasses>\
         <bareMetal>false</bareMetal><hypervisor>nitro</hypervisor>\
         <processorInfo><supportedArchitectures><item>{arch}</item></supportedArchitectures>\
         <manufacturer>Intel</manufacturer></processorInfo>\
         <vCpuInfo><defaultVCpus>{vcpus}</defaultVCpus></vCpuInfo>\
         <memoryInfo><sizeInMiB>{mib}</sizeInMiB></memoryInfo>\
         <burstablePerformanceSupported>false</burstablePerformanceSupported></item>"
    )
}

fn offering(name: &str, zone: &str) -> String {
    format!(
        "<item><instanceType>{name}</instanceType><locationType>availability-zone</locationType>\
         <location>{zone}</location></item>"
    )
}

fn spot(name: &str, zone: &str, price: &str, at: &str) -> String {
    format!(
        "<item><instanceType>{name}</instanceType><productDescription>Linux/UNIX</productDescription>\
         <spotPrice>{price}</spotPrice><timestamp>{at}</timestamp><availabilityZone>{zone}</availabilityZone></item>"
    )
}

fn page(action: &str, set: &str, items: &[String], next: Option<&str>) -> String {
    let next = next
        .map(|t| format!("<nextToken>{t}</nextToken>"))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>req</requestId><{set}>{}</{set}>{next}</{action}Response>",
        items.concat()
    )
}

async fn handler(
    State(requests): State<Requests>,
    body: String,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let params: BTreeMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let action = params.get("Action").cloned().unwrap_or_default();
    let token = params.get("NextToken").map(String::as_str);
    requests.lock().unwrap().push(params.clone());
    let xml = match (action.as_str(), token) {
        ("DescribeInstanceTypes", None) => page(
            &action,
            "instanceTypeSet",
            &[instance_type("c5.large", 2, 4096, "x86_64")],
            Some("types-2"),
        ),
        ("DescribeInstanceTypes", Some("types-2")) => page(
            &action,
            "instanceTypeSet",
            &[instance_type("m6g.large", 2, 8192, "arm64")],
            Some("types-3"),
        ),
        ("DescribeInstanceTypes", Some("types-3")) => page(
            &action,
            "instanceTypeSet",
            &[instance_type("m5.large", 2, 8192, "x86_64")],
            None,
        ),
        ("DescribeInstanceTypeOfferings", None) => page(
            &action,
            "instanceTypeOfferingSet",
            &[
                offering("c5.large", "us-east-1a"),
                offering("m5.large", "us-east-1a"),
            ],
            Some("offerings-2"),
        ),
        ("DescribeInstanceTypeOfferings", Some("offerings-2")) => page(
            &action,
            "instanceTypeOfferingSet",
            &[
                offering("c5.large", "us-east-1b"),
                offering("m6g.large", "us-east-1b"),
            ],
            None,
        ),
        ("DescribeSpotPriceHistory", None) => page(
            &action,
            "spotPriceHistorySet",
            &[
                spot("c5.large", "us-east-1a", "0.030000", "2026-11-22T01:00:00.000Z"),
                spot("m5.large", "us-east-1a", "0.050000", "2026-11-22T01:00:00.000Z"),
            ],
            Some("spot-2"),
        ),
        ("DescribeSpotPriceHistory", Some("spot-2")) => page(
            &action,
            "spotPriceHistorySet",
            &[
                // Older than the 0.03 of page one: must not replace it.
                spot("c5.large", "us-east-1a", "0.020000", "2026-11-21T01:00:00.000Z"),
                spot("c5.large", "us-east-1b", "0.025000", "2026-11-22T01:00:00.000Z"),
                spot(
                    "m6g.large",
                    "us-east-1b",
                    "not-a-price",
                    "2026-11-22T01:00:00.000Z",
                ),
            ],
            None,
        ),
        other => panic!("unexpected request {other:?}: {params:?}"),
    };
    ([(CONTENT_TYPE, "text/xml;charset=UTF-8")], xml)
}

async fn fake_ec2() -> (String, Requests) {
    let requests: Requests = Arc::default();
    let app = axum::Router::new()
        .route("/", post(handler))
        .with_state(requests.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, requests)
}

fn calls<'a>(requests: &'a [BTreeMap<String, String>], action: &str) -> Vec<&'a BTreeMap<String, String>> {
    requests
        .iter()
        .filter(|r| r.get("Action").map(String::as_str) == Some(action))
        .collect()
}

#[tokio::test]
async fn follows_every_page_and_keeps_the_latest_spot_price() {
    let (url, requests) = fake_ec2().await;
    let config = spot_aws::config::local(&url, "us-east-1").await;
    let client = aws_sdk_ec2::Client::new(&config);
    let live = LiveCatalog::fetch(&client, "us-east-1").await.unwrap();

    let names: Vec<&str> = live.types.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["c5.large", "m5.large", "m6g.large"]);
    assert_eq!(live.offerings.zones("us-east-1"), ["us-east-1a", "us-east-1b"]);
    assert_eq!(
        live.offerings.offered_zones("us-east-1", "c5.large"),
        ["us-east-1a", "us-east-1b"]
    );
    assert_eq!(
        live.offerings.offered_zones("us-east-1", "m6g.large"),
        ["us-east-1b"]
    );
    let price = |zone: &str, t: &str| live.spot_prices.get(&(zone.to_owned(), t.to_owned())).copied();
    assert_eq!(price("us-east-1a", "c5.large"), Some(0.03));
    assert_eq!(price("us-east-1b", "c5.large"), Some(0.025));
    assert_eq!(price("us-east-1a", "m5.large"), Some(0.05));
    assert_eq!(
        price("us-east-1b", "m6g.large"),
        None,
        "unparsable prices are skipped"
    );

    let requests = requests.lock().unwrap();
    let tokens = |action| {
        calls(&requests, action)
            .iter()
            .map(|r| r.get("NextToken").cloned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tokens("DescribeInstanceTypes"),
        [None, Some("types-2".into()), Some("types-3".into())]
    );
    assert_eq!(
        tokens("DescribeInstanceTypeOfferings"),
        [None, Some("offerings-2".into())]
    );
    assert_eq!(tokens("DescribeSpotPriceHistory"), [None, Some("spot-2".into())]);
    for r in calls(&requests, "DescribeInstanceTypeOfferings") {
        assert_eq!(
            r.get("LocationType").map(String::as_str),
            Some("availability-zone")
        );
    }
    for r in calls(&requests, "DescribeSpotPriceHistory") {
        assert_eq!(
            r.get("ProductDescription.1").map(String::as_str),
            Some("Linux/UNIX")
        );
        assert_eq!(
            r.get("ProductDescription.2").map(String::as_str),
            Some("Linux/UNIX (Amazon VPC)")
        );
        assert!(r.contains_key("StartTime"), "{r:?}");
    }
}

#[tokio::test]
async fn binary_selects_from_the_endpoint() {
    let (url, _requests) = fake_ec2().await;
    let args = [
        "--live",
        "--endpoint-url",
        &url,
        "--region",
        "us-east-1",
        "-a",
        "x86_64",
        "-o",
        "json",
    ]
    .map(str::to_owned);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_spot-select"))
            .args(args)
            .env_remove("AWS_PROFILE")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let items: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<(&str, Option<f64>)> = items
        .iter()
        .map(|v| (v["instance_type"].as_str().unwrap(), v["spot_price_usd"].as_f64()))
        .collect();
    assert_eq!(got, [("c5.large", Some(0.025)), ("m5.large", Some(0.05))]);
    assert_eq!(items[0]["zones"], serde_json::json!(["us-east-1a", "us-east-1b"]));
}
