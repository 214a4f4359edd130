//! Offline tests of the `spot-select` binary: every filter, every output format, the error
//! exits. Expectations are computed from the embedded catalog and prices directly.

use std::process::{Command, Output};

use serde_json::Value;
use spot_core::catalog::Catalog;
use spot_core::instance_type::{Architecture, InstanceType};
use spot_core::price::{OfflinePrices, PriceSource};

const REGION: &str = "us-east-1";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spot-select"))
        .args(args)
        .output()
        .expect("spot-select runs")
}

fn stdout(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let text = stdout(&all);
    if text.is_empty() {
        return Vec::new();
    }
    serde_json::from_str::<Vec<Value>>(&text).unwrap()
}

fn names(args: &[&str]) -> Vec<String> {
    stdout(args).lines().map(str::to_owned).collect()
}

/// The names of the catalog's types offered in us-east-1 that satisfy `keep`, sorted.
fn expected(keep: impl Fn(&InstanceType) -> bool) -> Vec<String> {
    let catalog = Catalog::embedded();
    let mut out: Vec<String> = catalog
        .types()
        .iter()
        .filter(|t| !catalog.offered_zones(REGION, &t.name).is_empty() && keep(t))
        .map(|t| t.name.clone())
        .collect();
    out.sort();
    out
}

fn assert_selects(args: &[&str], keep: impl Fn(&InstanceType) -> bool) {
    let want = expected(keep);
    assert!(
        !want.is_empty(),
        "the expectation for {args:?} is empty: the test would prove nothing"
    );
    assert_eq!(names(args), want, "{args:?}");
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

fn f64_of(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn acceptance_two_vcpus_four_gib_x86_64_json() {
    let items = json(&["--vcpus", "2", "--memory", "4", "--cpu-architecture", "x86_64"]);
    let got: Vec<&str> = items
        .iter()
        .map(|v| v["instance_type"].as_str().unwrap())
        .collect();
    let want = expected(|t| t.vcpus == 2 && t.memory_mib == 4096 && t.supports(Architecture::X86_64));
    assert_eq!(got, want);
    assert!(got.contains(&"c5.large"));
    let prices = OfflinePrices::embedded();
    for v in &items {
        for key in [
            "instance_type",
            "vcpus",
            "memory_gib",
            "architectures",
            "gpus",
            "gpu_memory_gib",
            "hypervisor",
            "burstable",
            "bare_metal",
            "network_gbps",
            "ondemand_price_usd",
            "spot_price_usd",
            "zones",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!((u64_of(v, "vcpus"), f64_of(v, "memory_gib")), (2, 4.0));
        let name = v["instance_type"].as_str().unwrap();
        let od = f64_of(v, "ondemand_price_usd");
        let spot = f64_of(v, "spot_price_usd");
        assert!((od - prices.on_demand(REGION, name).unwrap()).abs() < 1e-6, "{v}");
        assert!(spot > 0.0 && spot < od, "{v}");
        let zones: Vec<&str> = v["zones"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| z.as_str().unwrap())
            .collect();
        assert_eq!(zones, Catalog::embedded().offered_zones(REGION, name));
    }
}

#[test]
fn vcpu_and_memory_ranges_and_units() {
    assert_selects(&["--vcpus-min", "64", "--vcpus-max", "72"], |t| {
        (64..=72).contains(&t.vcpus)
    });
    assert_selects(&["-c", "96"], |t| t.vcpus == 96);
    assert_selects(&["--memory-max", "512mb"], |t| t.memory_mib <= 512);
    assert_selects(&["--memory", "4GiB", "--vcpus", "1"], |t| {
        t.memory_mib == 4096 && t.vcpus == 1
    });
    assert_selects(&["--memory-min", "1tb"], |t| t.memory_mib >= 1024 * 1024);
    assert_selects(&["--memory-min", "3.5gb", "--memory-max", "3.75gb"], |t| {
        (3584..=3840).contains(&t.memory_mib)
    });
}

#[test]
fn ratio_filter() {
    let ratio = |t: &InstanceType| t.memory_mib as f64 / 1024.0 / f64::from(t.vcpus);
    assert_selects(&["--vcpus-to-memory-ratio", "1:8", "--vcpus", "2"], |t| {
        t.vcpus == 2 && (ratio(t) - 8.0).abs() <= 0.08
    });
    assert_selects(&["--vcpus-to-memory-ratio-min", "1:16"], |t| {
        ratio(t) >= 16.0 * 0.99
    });
}

#[test]
fn gpu_filters_and_the_zero_rule() {
    assert_selects(&["--gpus-min", "1"], |t| t.gpus >= 1);
    assert_selects(&["--gpus", "8"], |t| t.gpus == 8);
    // A -max that allows zero keeps the types without GPU (ec2-instance-selector drops them).
    let with_max = names(&["--gpus-max", "1"]);
    assert!(with_max.contains(&"c5.large".to_owned()));
    assert_eq!(with_max, expected(|t| t.gpus <= 1));
    assert_selects(&["--gpu-memory-total-min", "80gb"], |t| {
        t.gpu_memory_mib >= 80 * 1024
    });
    assert_selects(&["--gpu-memory-total-max", "0"], |t| t.gpu_memory_mib == 0);
    assert_selects(&["--gpu-manufacturer", "nvidia"], |t| {
        t.gpu_manufacturer.eq_ignore_ascii_case("NVIDIA")
    });
    assert_selects(&["--gpu-model", "t4"], |t| t.gpu_model.eq_ignore_ascii_case("T4"));
}

#[test]
fn cpu_filters() {
    assert_selects(&["--cpu-architecture", "arm64", "--vcpus", "2"], |t| {
        t.vcpus == 2 && t.supports(Architecture::Arm64)
    });
    assert_eq!(
        names(&["-a", "amd64", "--vcpus", "2", "--memory", "4"]),
        names(&["-a", "x86_64", "--vcpus", "2", "--memory", "4"])
    );
    assert_selects(&["--cpu-manufacturer", "amd", "--vcpus", "4"], |t| {
        t.vcpus == 4 && t.cpu_manufacturer == "AMD"
    });
    assert_selects(&["--cpu-manufacturer", "AWS", "-c", "8"], |t| {
        t.vcpus == 8 && t.cpu_manufacturer == "AWS"
    });
}

#[test]
fn flag_filters() {
    assert_selects(&["--usage-class", "on-demand", "--vcpus", "192"], |t| {
        t.vcpus == 192 && t.on_demand_supported
    });
    assert_selects(&["-u", "spot", "--vcpus", "192"], |t| {
        t.vcpus == 192 && t.spot_supported
    });
    assert_selects(&["--burst-support"], |t| t.burstable);
    assert_selects(&["--burst-support=false", "--vcpus", "2", "--memory", "4"], |t| {
        !t.burstable && t.vcpus == 2 && t.memory_mib == 4096
    });
    assert_selects(&["--hypervisor", "xen"], |t| t.hypervisor == "xen");
    assert_selects(&["--bare-metal"], |t| t.bare_metal);
    assert_selects(&["--baremetal=false", "--vcpus", "96"], |t| {
        !t.bare_metal && t.vcpus == 96
    });
    assert_selects(&["--current-generation=false", "--vcpus", "2"], |t| {
        !t.current_generation && t.vcpus == 2
    });
    assert_selects(&["--current-generation", "--vcpus", "2"], |t| {
        t.current_generation && t.vcpus == 2
    });
}

#[test]
fn network_and_storage_filters() {
    assert_selects(&["--network-performance-min", "100"], |t| t.network_gbps >= 100.0);
    assert_selects(&["--network-performance", "25", "--vcpus", "48"], |t| {
        t.network_gbps == 25.0 && t.vcpus == 48
    });
    assert_selects(&["--network-interfaces-min", "15"], |t| t.max_enis >= 15);
    assert_selects(&["--instance-storage-min", "10tb"], |t| {
        t.instance_storage_gb as f64 * 1024.0 >= 10.0 * 1024.0 * 1024.0
    });
    assert_selects(
        &["--instance-storage-max", "0", "--vcpus", "2", "--memory", "4"],
        |t| t.instance_storage_gb == 0 && t.vcpus == 2 && t.memory_mib == 4096,
    );
}

#[test]
fn price_filters() {
    let prices = OfflinePrices::embedded();
    let items = json(&["--price-per-hour-max", "0.01"]);
    assert!(!items.is_empty());
    for v in &items {
        assert!(f64_of(v, "ondemand_price_usd") <= 0.01, "{v}");
    }
    let want = expected(|t| prices.on_demand(REGION, &t.name).is_some_and(|p| p <= 0.01));
    let got: Vec<&str> = items
        .iter()
        .map(|v| v["instance_type"].as_str().unwrap())
        .collect();
    assert_eq!(got, want);

    let spot = json(&["--usage-class", "spot", "--price-per-hour-max", "0.005"]);
    assert!(!spot.is_empty());
    assert!(
        spot.len() > items.len(),
        "spot prices are lower, so more types qualify"
    );
    for v in &spot {
        assert!(f64_of(v, "spot_price_usd") <= 0.005, "{v}");
    }
    let ranged = json(&["--price-per-hour-min", "1", "--price-per-hour-max", "1.1"]);
    assert!(!ranged.is_empty());
    assert!(
        ranged
            .iter()
            .all(|v| (1.0..=1.1).contains(&f64_of(v, "ondemand_price_usd")))
    );
}

#[test]
fn name_filters() {
    // Anchored: `m5.*` matches the m5 families, `large` matches nothing.
    assert_selects(&["--allow-list", "m5.*"], |t| t.name.starts_with("m5"));
    let out = run(&["--allow-list", "large"]);
    assert!(out.status.success() && out.stdout.is_empty());
    assert_selects(
        &["--vcpus", "2", "--memory", "4", "--deny-list", "c.*|t.*"],
        |t| t.vcpus == 2 && t.memory_mib == 4096 && !t.name.starts_with('c') && !t.name.starts_with('t'),
    );
    assert_selects(&["--instance-family", "m5,c5"], |t| {
        t.family == "m5" || t.family == "c5"
    });
    assert_selects(&["--instance-category", "r", "--instance-category", "x"], |t| {
        t.category == "r" || t.category == "x"
    });
    assert_selects(&["--instance-generation", "8", "--vcpus", "2"], |t| {
        t.generation == 8 && t.vcpus == 2
    });
    assert_selects(&["--instance-generation-max", "2"], |t| t.generation <= 2);
    assert_eq!(
        names(&["--instance-types", "m5.large,c5.large,nope.large"]),
        ["c5.large", "m5.large"]
    );
}

#[test]
fn region_and_zones() {
    let catalog = Catalog::embedded();
    let eu: Vec<String> = {
        let mut v: Vec<String> = catalog
            .types()
            .iter()
            .filter(|t| {
                t.vcpus == 2
                    && t.memory_mib == 4096
                    && !catalog.offered_zones("eu-west-1", &t.name).is_empty()
            })
            .map(|t| t.name.clone())
            .collect();
        v.sort();
        v
    };
    assert!(!eu.is_empty());
    assert_eq!(
        names(&["--region", "eu-west-1", "--vcpus", "2", "--memory", "4"]),
        eu
    );

    let zones = catalog.zones(REGION).unwrap();
    let (a, b) = (zones[0], zones[1]);
    let both = format!("{a},{b}");
    let items = json(&["-z", &both, "--vcpus", "2"]);
    assert!(!items.is_empty());
    let got: Vec<&str> = items
        .iter()
        .map(|v| v["instance_type"].as_str().unwrap())
        .collect();
    let want = expected(|t| t.vcpus == 2 && catalog.is_offered(a, &t.name) && catalog.is_offered(b, &t.name));
    assert_eq!(got, want);
    for v in &items {
        assert_eq!(v["zones"], serde_json::json!([a, b]));
    }
}

#[test]
fn sorting_and_truncation() {
    let items = json(&["--vcpus", "2", "--memory", "4", "--sort-by", "price"]);
    let prices: Vec<f64> = items.iter().map(|v| f64_of(v, "ondemand_price_usd")).collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}");
    let items = json(&[
        "--vcpus",
        "2",
        "--sort-by",
        "spot-price",
        "--sort-direction",
        "desc",
    ]);
    let prices: Vec<f64> = items.iter().map(|v| f64_of(v, "spot_price_usd")).collect();
    assert!(prices.windows(2).all(|w| w[0] >= w[1]), "{prices:?}");
    let items = json(&[
        "--gpus-min",
        "1",
        "--sort-by",
        "memory",
        "--sort-direction",
        "descending",
    ]);
    let mem: Vec<f64> = items.iter().map(|v| f64_of(v, "memory_gib")).collect();
    assert!(mem.windows(2).all(|w| w[0] >= w[1]), "{mem:?}");

    let all = names(&["--vcpus", "2"]);
    let out = run(&["--vcpus", "2", "--max-results", "3"]);
    let top: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(top, all[..3]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("{} entries were truncated", all.len() - 3)),
        "{stderr}"
    );
    assert_eq!(
        names(&["--vcpus", "2", "--sort-by", "name", "--sort-direction", "desc"])[0],
        *all.last().unwrap()
    );
}

#[test]
fn flexible_is_diversified_and_documented() {
    let items = json(&["--flexible"]);
    let got: Vec<&str> = items
        .iter()
        .map(|v| v["instance_type"].as_str().unwrap())
        .collect();
    assert!(
        got.contains(&"c5.xlarge") && got.contains(&"m5.xlarge") && got.contains(&"r5.xlarge"),
        "{got:?}"
    );
    for v in &items {
        assert_eq!(u64_of(v, "vcpus"), 4, "{v}");
        assert_eq!(v["architectures"], serde_json::json!(["x86_64"]), "{v}");
        assert_eq!(
            (v["burstable"].as_bool(), v["bare_metal"].as_bool()),
            (Some(false), Some(false))
        );
        let ratio = f64_of(v, "memory_gib") / 4.0;
        assert!((2.0 * 0.99..=8.0 * 1.01).contains(&ratio), "{v}");
        let name = v["instance_type"].as_str().unwrap();
        assert!(name.starts_with(['c', 'm', 'r']), "{name}");
    }
    let with_vcpus = json(&["--flexible", "--vcpus", "8"]);
    assert!(!with_vcpus.is_empty() && with_vcpus.iter().all(|v| u64_of(v, "vcpus") == 8));
    let help = stdout(&["--help"]);
    assert!(
        help.contains("--flexible") && help.contains("1:2 to 1:8"),
        "{help}"
    );
}

#[test]
fn plain_outputs() {
    let args = ["--instance-types", "c5.large,m5.xlarge"];
    assert_eq!(stdout(&args), "c5.large\nm5.xlarge\n");
    assert_eq!(
        stdout(&[&args[..], &["-o", "simple"]].concat()),
        "c5.large\nm5.xlarge\n"
    );
    assert_eq!(
        stdout(&[&args[..], &["-o", "one-line"]].concat()),
        "c5.large,m5.xlarge\n"
    );
    let table = stdout(&[&args[..], &["-o", "table"]].concat());
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("Instance Type") && lines[0].contains("VCPUs") && lines[0].contains("Mem (GiB)")
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["c5.large", "2", "4"]
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["m5.xlarge", "4", "16"]
    );
    let wide = stdout(&[&args[..], &["-o", "table-wide"]].concat());
    let lines: Vec<&str> = wide.lines().collect();
    assert!(
        lines[0].contains("On-Demand Price/Hr")
            && lines[0].contains("Spot Price/Hr")
            && lines[0].contains("GPUs")
    );
    assert!(
        lines[2].starts_with("c5.large") && lines[2].contains("nitro") && lines[2].contains('$'),
        "{wide}"
    );
}

#[test]
fn nodepool_yaml() {
    let yaml = stdout(&[
        "--vcpus", "2", "--memory", "4", "-a", "x86_64", "-o", "nodepool", "--name", "web",
    ]);
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(v["apiVersion"].as_str(), Some("karpenter.sh/v1"));
    assert_eq!(v["kind"].as_str(), Some("NodePool"));
    assert_eq!(v["metadata"]["name"].as_str(), Some("web"));
    let spec = &v["spec"]["template"]["spec"];
    assert_eq!(spec["nodeClassRef"]["kind"].as_str(), Some("EC2NodeClass"));
    assert_eq!(spec["nodeClassRef"]["name"].as_str(), Some("default"));
    assert_eq!(spec["nodeClassRef"]["group"].as_str(), Some("karpenter.k8s.aws"));
    let reqs = spec["requirements"].as_sequence().unwrap();
    let find = |key: &str| {
        let r = reqs
            .iter()
            .find(|r| r["key"].as_str() == Some(key))
            .unwrap_or_else(|| panic!("{key} in {yaml}"));
        assert_eq!(r["operator"].as_str(), Some("In"));
        r["values"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        find("node.kubernetes.io/instance-type"),
        names(&["--vcpus", "2", "--memory", "4", "-a", "x86_64"])
    );
    assert_eq!(find("karpenter.sh/capacity-type"), ["spot"]);
    assert_eq!(find("kubernetes.io/arch"), ["amd64"]);

    let yaml = stdout(&[
        "--vcpus",
        "2",
        "-u",
        "on-demand",
        "-z",
        "us-east-1a",
        "-o",
        "nodepool",
    ]);
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let reqs = v["spec"]["template"]["spec"]["requirements"]
        .as_sequence()
        .unwrap();
    let values = |key: &str| {
        reqs.iter()
            .find(|r| r["key"].as_str() == Some(key))
            .map(|r| r["values"].clone())
    };
    assert_eq!(
        values("karpenter.sh/capacity-type"),
        Some(serde_yaml::to_value(["on-demand"]).unwrap())
    );
    assert_eq!(
        values("topology.kubernetes.io/zone"),
        Some(serde_yaml::to_value(["us-east-1a"]).unwrap())
    );
    assert_eq!(
        values("kubernetes.io/arch"),
        Some(serde_yaml::to_value(["amd64", "arm64"]).unwrap())
    );
}

fn documents(yaml: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect()
}

#[test]
fn instancegroup_yaml_split_by_ratio() {
    let yaml = stdout(&[
        "-o",
        "instancegroup",
        "--flexible",
        "--ig-count",
        "3",
        "--name",
        "nodes",
        "--min-size",
        "2",
        "--max-size",
        "7",
        "--cluster-name",
        "k.example.com",
    ]);
    let docs = documents(&yaml);
    assert_eq!(docs.len(), 3, "{yaml}");
    for (i, (doc, ratio)) in docs.iter().zip([2.0, 4.0, 8.0]).enumerate() {
        assert_eq!(doc["apiVersion"].as_str(), Some("kops.k8s.io/v1alpha2"));
        assert_eq!(doc["kind"].as_str(), Some("InstanceGroup"));
        let name = format!("nodes{}", i + 1);
        assert_eq!(doc["metadata"]["name"].as_str(), Some(name.as_str()));
        assert_eq!(
            doc["metadata"]["labels"]["kops.k8s.io/cluster"].as_str(),
            Some("k.example.com")
        );
        let spec = &doc["spec"];
        assert_eq!(spec["role"].as_str(), Some("Node"));
        assert_eq!(
            (spec["minSize"].as_u64(), spec["maxSize"].as_u64()),
            (Some(2), Some(7))
        );
        assert_eq!(
            spec["nodeLabels"]["kops.k8s.io/instancegroup"].as_str(),
            Some(name.as_str())
        );
        let policy = &spec["mixedInstancesPolicy"];
        assert_eq!(policy["onDemandBase"].as_u64(), Some(0));
        assert_eq!(policy["onDemandAboveBase"].as_u64(), Some(0));
        assert_eq!(
            policy["spotAllocationStrategy"].as_str(),
            Some("price-capacity-optimized")
        );
        let instances: Vec<&str> = policy["instances"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(!instances.is_empty());
        assert_eq!(spec["machineType"].as_str(), Some(instances[0]));
        let catalog = Catalog::embedded();
        for name in &instances {
            let t = catalog.get(name).unwrap();
            let r = t.memory_mib as f64 / 1024.0 / f64::from(t.vcpus);
            assert!(
                (r - ratio).abs() <= ratio * 0.01,
                "{name} in group {i} has ratio {r}"
            );
        }
    }

    let yaml = stdout(&[
        "-o",
        "instancegroup",
        "--instance-types",
        "c5.large,m5.large",
        "--spot-allocation-strategy",
        "capacity-optimized",
    ]);
    let docs = documents(&yaml);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["metadata"]["name"].as_str(), Some("spot"));
    assert_eq!(
        docs[0]["spec"]["mixedInstancesPolicy"]["spotAllocationStrategy"].as_str(),
        Some("capacity-optimized")
    );
    assert_eq!(docs[0]["spec"]["machineType"].as_str(), Some("c5.large"));
}

#[test]
fn prices_from_a_csv_file() {
    let path = std::env::temp_dir().join(format!("spot-select-prices-{}.csv", std::process::id()));
    std::fs::write(&path, "instance_type,usd_per_hour\nc5.large,0.5\nm5.large,0.25\n").unwrap();
    let p = path.to_str().unwrap();
    let items = json(&[
        "--instance-types",
        "c5.large,m5.large,r5.large",
        "--prices",
        p,
        "--sort-by",
        "price",
    ]);
    let got: Vec<(&str, Option<f64>)> = items
        .iter()
        .map(|v| {
            (
                v["instance_type"].as_str().unwrap(),
                v["ondemand_price_usd"].as_f64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("m5.large", Some(0.25)),
            ("c5.large", Some(0.5)),
            ("r5.large", None)
        ]
    );
    assert!(items[0]["spot_price_usd"].as_f64().is_some_and(|s| s < 0.25));
    assert!(items[2]["spot_price_usd"].is_null());
    std::fs::write(&path, "instance_type,usd_per_hour\nc5.large,cheap\n").unwrap();
    let out = run(&["--prices", p]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prices"));
    std::fs::remove_file(&path).unwrap();
}

fn assert_usage_error(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}");
    for needle in needles {
        assert!(stderr.contains(needle), "{args:?}: {needle:?} not in {stderr}");
    }
}

#[test]
fn bad_input_exits_2_naming_flag_and_value() {
    assert_usage_error(&["--colour", "blue"], &["--colour"]);
    assert_usage_error(&["--vcpus", "two"], &["--vcpus", "two"]);
    assert_usage_error(&["--memory", "4xb"], &["--memory", "4xb"]);
    assert_usage_error(
        &["--vcpus-to-memory-ratio", "1-4"],
        &["--vcpus-to-memory-ratio", "1-4"],
    );
    assert_usage_error(&["--price-per-hour-max", "NaN"], &["--price-per-hour-max", "NaN"]);
    assert_usage_error(&["--cpu-architecture", "sparc"], &["--cpu-architecture", "sparc"]);
    assert_usage_error(&["--usage-class", "reserved"], &["--usage-class", "reserved"]);
    assert_usage_error(&["--allow-list", "m5("], &["--allow-list", "m5("]);
    assert_usage_error(&["--sort-by", "colour"], &["--sort-by", "colour"]);
    assert_usage_error(&["--sort-direction", "up"], &["--sort-direction", "up"]);
    assert_usage_error(&["-o", "xml"], &["xml"]);
    assert_usage_error(&["--burst-support=maybe"], &["--burst-support", "maybe"]);
    assert_usage_error(&["--ig-count", "0"], &["--ig-count", "0"]);
    assert_usage_error(&["--spot-allocation-strategy", "lowest-price"], &["lowest-price"]);
    assert_usage_error(&["--vcpus", "2", "--vcpus-min", "1"], &["--vcpus", "--vcpus-min"]);
    assert_usage_error(&["--endpoint-url", "http://127.0.0.1:1"], &["--live"]);
}

#[test]
fn contradictions_and_unknown_places_exit_2() {
    assert_usage_error(
        &["--vcpus-min", "8", "--vcpus-max", "2"],
        &["--vcpus-min 8 is greater than --vcpus-max 2"],
    );
    assert_usage_error(
        &["--memory-min", "8", "--memory-max", "4096mb"],
        &["--memory-min 8GiB is greater than --memory-max 4GiB"],
    );
    assert_usage_error(
        &[
            "--vcpus-to-memory-ratio-min",
            "1:8",
            "--vcpus-to-memory-ratio-max",
            "2:4",
        ],
        &["--vcpus-to-memory-ratio-min 1:8 is greater than --vcpus-to-memory-ratio-max 1:2"],
    );
    assert_usage_error(&["--gpus-min", "4", "--gpus-max", "1"], &["--gpus-min"]);
    assert_usage_error(
        &["--price-per-hour-min", "2", "--price-per-hour-max", "1"],
        &["--price-per-hour-min"],
    );
    assert_usage_error(
        &["--instance-generation-min", "7", "--instance-generation-max", "5"],
        &["--instance-generation-min"],
    );
    assert_usage_error(
        &["--min-size", "5", "--max-size", "2", "-o", "instancegroup"],
        &["--min-size 5"],
    );
    assert_usage_error(&["--region", "mars-east-1"], &["mars-east-1"]);
    assert_usage_error(&["-z", "eu-west-1a"], &["eu-west-1a", "us-east-1"]);
}

#[test]
fn no_match_prints_nothing_and_explains() {
    for format in ["simple", "json", "nodepool", "instancegroup", "table"] {
        let out = run(&["--vcpus", "3", "--gpus", "9", "-o", format]);
        assert_eq!(out.status.code(), Some(0), "{format}");
        assert!(
            out.stdout.is_empty(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no instance type matched"), "{stderr}");
        assert!(
            stderr.contains("--vcpus keeps") && stderr.contains("--gpus keeps 0"),
            "{stderr}"
        );
    }
}
