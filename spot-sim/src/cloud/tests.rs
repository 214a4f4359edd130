use std::sync::Mutex as StdMutex;

use spot_core::catalog::synthetic_type;
use spot_core::cloud::LaunchCandidate;
use spot_core::event::EventId;
use spot_core::node::TaintEffect;
use spot_core::source::EventSource;

use super::*;
use crate::market::PoolParams;

/// Three types in us-east-1a/b/c, m5.large also in us-west-2a.
fn catalog() -> Arc<Catalog> {
    let types = ["m5.large", "c5.large", "r5.large"];
    let mut b = Catalog::builder().version("test");
    for (i, t) in types.iter().enumerate() {
        b = b.instance_type(synthetic_type(t, 2, 4096 << i).unwrap());
    }
    for z in ["us-east-1a", "us-east-1b", "us-east-1c"] {
        b = b.zone_offering_all("us-east-1", z);
    }
    Arc::new(b.zone("us-west-2", "us-west-2a", ["m5.large"]).build().unwrap())
}

fn flat_market(seed: u64) -> MarketConfig {
    MarketConfig {
        seed,
        price_volatility: 0.0,
        band_monthly_rates: [0.0; 5],
        ..MarketConfig::default()
    }
}

fn cloud_with(config: SimCloudConfig, market: MarketConfig) -> SimCloud {
    SimCloud::new(config, Market::offline(market).unwrap(), catalog()).unwrap()
}

fn manual() -> SimCloudConfig {
    SimCloudConfig {
        api_latency: Duration::ZERO,
        clock: SimClock::Manual,
        ..SimCloudConfig::default()
    }
}

fn pool(t: &str, z: &str) -> PoolKey {
    PoolKey::new(t, z)
}

/// The crafted market of the strategy tests (prices are exact: no volatility).
///
/// | pool | spot | capacity |
/// |---|---|---|
/// | A m5.large/us-east-1a | 0.030 | 5 |
/// | B m5.large/us-east-1b | 0.040 | 100 |
/// | C m5.large/us-east-1c | 0.050 | 120 |
/// | D c5.large/us-east-1a | 0.045 | 40 |
fn crafted(cloud: &SimCloud) {
    cloud.market(|m| {
        for (key, mean_spot, capacity, on_demand) in [
            (pool("m5.large", "us-east-1a"), 0.030, 5, 0.096),
            (pool("m5.large", "us-east-1b"), 0.040, 100, 0.096),
            (pool("m5.large", "us-east-1c"), 0.050, 120, 0.096),
            (pool("c5.large", "us-east-1a"), 0.045, 40, 0.085),
        ] {
            let params = PoolParams {
                on_demand,
                mean_spot,
                band: 0,
                capacity,
            };
            m.set_pool(key, params).unwrap();
        }
    });
}

fn candidates() -> Vec<LaunchCandidate> {
    [
        ("m5.large", "us-east-1a"),
        ("m5.large", "us-east-1b"),
        ("m5.large", "us-east-1c"),
        ("c5.large", "us-east-1a"),
    ]
    .iter()
    .map(|(t, z)| LaunchCandidate {
        instance_type: (*t).to_owned(),
        zone: (*z).to_owned(),
        price: 0.05,
    })
    .collect()
}

fn request(capacity_type: CapacityType, strategy: AllocationStrategy, count: u32) -> FleetRequest {
    FleetRequest {
        capacity_type,
        candidates: candidates(),
        count,
        strategy,
        tags: BTreeMap::new(),
    }
}

fn pools_of(result: &FleetResult) -> Vec<String> {
    result
        .instances
        .iter()
        .map(|i| format!("{}/{}", i.instance_type, i.zone))
        .collect()
}

fn errors_of(result: &FleetResult) -> Vec<String> {
    result
        .errors
        .iter()
        .map(|e| {
            format!(
                "{}/{} {}",
                e.instance_type.as_deref().unwrap_or("-"),
                e.zone.as_deref().unwrap_or("-"),
                e.code
            )
        })
        .collect()
}

#[derive(Default)]
struct Recorder {
    seen: StdMutex<Vec<String>>,
}

impl Recorder {
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl InstanceObserver for Recorder {
    async fn launched(
        &self,
        instance: &Instance,
        instance_type: &InstanceType,
        labels: &BTreeMap<String, String>,
        taints: &[Taint],
    ) {
        let taints: Vec<String> = taints
            .iter()
            .map(|t| format!("{}={}:{}", t.key, t.value.as_deref().unwrap_or(""), t.effect))
            .collect();
        self.seen.lock().unwrap().push(format!(
            "launched {} {} {labels:?} {taints:?}",
            instance.id, instance_type.name
        ));
    }

    async fn terminated(&self, instance_id: &str) {
        self.seen
            .lock()
            .unwrap()
            .push(format!("terminated {instance_id}"));
    }
}

#[test]
fn choose_follows_the_documented_rules() {
    let v = |price: f64, available: u32| View { price, available };
    let views = [v(0.03, 5), v(0.04, 100), v(0.05, 120), v(0.045, 40)];
    let pick = |s, cursor| choose(s, &views, cursor, 0.5);
    assert_eq!(pick(AllocationStrategy::PriceCapacityOptimized, 0), Some(1));
    assert_eq!(pick(AllocationStrategy::CapacityOptimized, 0), Some(2));
    assert_eq!(pick(AllocationStrategy::LowestPrice, 0), Some(0));
    assert_eq!(pick(AllocationStrategy::Diversified, 6), Some(2));
    // A lower threshold lets the cheap shallow pools compete.
    assert_eq!(
        choose(AllocationStrategy::PriceCapacityOptimized, &views, 0, 0.04),
        Some(0)
    );
    // Ties: capacity-optimized prefers the cheaper, price ties go to more capacity, then to
    // request order.
    let tied = [v(0.05, 10), v(0.04, 10), v(0.04, 20), v(0.04, 20)];
    assert_eq!(
        choose(AllocationStrategy::CapacityOptimized, &tied, 0, 0.5),
        Some(2)
    );
    assert_eq!(
        choose(AllocationStrategy::PriceCapacityOptimized, &tied, 0, 0.5),
        Some(2)
    );
    assert_eq!(choose(AllocationStrategy::LowestPrice, &tied, 0, 0.5), Some(1));
    // Nothing with capacity: capacity-aware strategies pick nothing, the blind ones pick.
    let empty = [v(0.03, 0), v(0.04, 0)];
    for s in [
        AllocationStrategy::PriceCapacityOptimized,
        AllocationStrategy::CapacityOptimized,
    ] {
        assert_eq!(choose(s, &empty, 0, 0.5), None);
    }
    assert_eq!(choose(AllocationStrategy::LowestPrice, &empty, 0, 0.5), Some(0));
    assert_eq!(choose(AllocationStrategy::Diversified, &[], 0, 0.5), None);
}

#[tokio::test(start_paused = true)]
async fn each_strategy_picks_its_pool_on_a_crafted_market() {
    let cloud = cloud_with(manual(), flat_market(1));
    crafted(&cloud);
    let one = |s| request(CapacityType::Spot, s, 1);
    let r = cloud
        .launch(&one(AllocationStrategy::PriceCapacityOptimized))
        .await
        .unwrap();
    assert_eq!(
        (pools_of(&r), r.errors.len()),
        (vec!["m5.large/us-east-1b".to_owned()], 0)
    );
    let r = cloud
        .launch(&one(AllocationStrategy::CapacityOptimized))
        .await
        .unwrap();
    assert_eq!(pools_of(&r), ["m5.large/us-east-1c"]);
    let r = cloud.launch(&one(AllocationStrategy::LowestPrice)).await.unwrap();
    assert_eq!(pools_of(&r), ["m5.large/us-east-1a"]);
    let r = cloud
        .launch(&request(CapacityType::Spot, AllocationStrategy::Diversified, 5))
        .await
        .unwrap();
    assert_eq!(
        pools_of(&r),
        [
            "m5.large/us-east-1a",
            "m5.large/us-east-1b",
            "m5.large/us-east-1c",
            "c5.large/us-east-1a",
            "m5.large/us-east-1a"
        ]
    );
    // The spot price charged is the market's at launch.
    let charged: Vec<f64> = cloud.instances().iter().map(|i| i.price).collect();
    assert_eq!(charged, [0.04, 0.05, 0.03, 0.03, 0.04, 0.05, 0.045, 0.03]);

    // A big price-capacity-optimized request stays in the deep pools: B until it falls
    // below half of C's capacity, then both.
    let r = cloud
        .launch(&request(
            CapacityType::Spot,
            AllocationStrategy::PriceCapacityOptimized,
            50,
        ))
        .await
        .unwrap();
    let pools = pools_of(&r);
    let b = pools.iter().filter(|p| *p == "m5.large/us-east-1b").count();
    let c = pools.iter().filter(|p| *p == "m5.large/us-east-1c").count();
    assert_eq!(b + c, 50, "{pools:?}");
    assert!(b > 40 && c >= 1, "{b} in B, {c} in C");
    assert!(pools[..b.min(40)].iter().all(|p| p == "m5.large/us-east-1b"));

    // On-demand: lowest price is the cheapest on-demand price; capacity is unlimited.
    let r = cloud
        .launch(&request(
            CapacityType::OnDemand,
            AllocationStrategy::LowestPrice,
            3,
        ))
        .await
        .unwrap();
    assert_eq!(pools_of(&r), ["c5.large/us-east-1a"; 3]);
    assert!(
        cloud.instances()[cloud.instances().len() - 1].price == 0.085,
        "on-demand price from the pool"
    );
}

#[tokio::test(start_paused = true)]
async fn empty_pools_give_insufficient_capacity() {
    let cloud = cloud_with(manual(), flat_market(1));
    crafted(&cloud);
    cloud.market(|m| m.set_available(&pool("m5.large", "us-east-1a"), 0).unwrap());
    // Lowest price tries the cheapest pool, gets ICE, and falls to the next cheapest.
    let r = cloud
        .launch(&request(CapacityType::Spot, AllocationStrategy::LowestPrice, 1))
        .await
        .unwrap();
    assert_eq!(pools_of(&r), ["m5.large/us-east-1b"]);
    assert_eq!(
        errors_of(&r),
        ["m5.large/us-east-1a InsufficientInstanceCapacity"]
    );
    assert!(r.errors[0].is_insufficient_capacity());
    // Price-capacity-optimized never picks an empty pool: no error.
    let r = cloud
        .launch(&request(
            CapacityType::Spot,
            AllocationStrategy::PriceCapacityOptimized,
            1,
        ))
        .await
        .unwrap();
    assert_eq!((pools_of(&r).len(), r.errors.len()), (1, 0));
    // Every pool empty: each is reported, nothing launches.
    cloud.market(|m| {
        for k in m.pools() {
            m.set_available(&k, 0).unwrap();
        }
    });
    for s in [
        AllocationStrategy::PriceCapacityOptimized,
        AllocationStrategy::CapacityOptimized,
        AllocationStrategy::LowestPrice,
        AllocationStrategy::Diversified,
    ] {
        let r = cloud.launch(&request(CapacityType::Spot, s, 2)).await.unwrap();
        assert!(r.instances.is_empty(), "{s:?}");
        assert_eq!(r.errors.len(), 4, "{s:?}: {:?}", errors_of(&r));
        assert!(r.errors.iter().all(LaunchError::is_insufficient_capacity));
    }
    // Capacity regenerates: 10 % of 100 per hour in B.
    cloud.advance(Duration::from_secs(3600)).await;
    let r = cloud
        .launch(&request(
            CapacityType::Spot,
            AllocationStrategy::CapacityOptimized,
            1,
        ))
        .await
        .unwrap();
    assert_eq!(pools_of(&r), ["m5.large/us-east-1c"]);
    assert_eq!(cloud.stats().launch_errors["InsufficientInstanceCapacity"], 17);
}

#[tokio::test(start_paused = true)]
async fn injected_errors_name_the_code_and_the_pool() {
    let cloud = cloud_with(manual(), flat_market(1));
    crafted(&cloud);
    cloud.inject(
        "m5.large",
        "us-east-1b",
        CapacityType::Spot,
        INSUFFICIENT_CAPACITY,
        1,
    );
    let pco = request(CapacityType::Spot, AllocationStrategy::PriceCapacityOptimized, 1);
    let r = cloud.launch(&pco).await.unwrap();
    assert_eq!(pools_of(&r), ["m5.large/us-east-1c"]);
    assert_eq!(
        r.errors,
        [LaunchError {
            instance_type: Some("m5.large".into()),
            zone: Some("us-east-1b".into()),
            code: "InsufficientInstanceCapacity".into(),
            message: "Injected by the simulation: InsufficientInstanceCapacity for \
                      m5.large/us-east-1b (spot)."
                .into(),
        }]
    );
    // Used up: the next launch gets B.
    let r = cloud.launch(&pco).await.unwrap();
    assert_eq!(
        (pools_of(&r), r.errors.len()),
        (vec!["m5.large/us-east-1b".to_owned()], 0)
    );

    // The spot limit ends the whole request.
    cloud.inject("*", "*", CapacityType::Spot, SPOT_LIMIT, 1);
    let r = cloud
        .launch(&request(CapacityType::Spot, AllocationStrategy::LowestPrice, 3))
        .await
        .unwrap();
    assert!(r.instances.is_empty());
    assert_eq!(
        errors_of(&r),
        ["m5.large/us-east-1a MaxSpotInstanceCountExceeded"]
    );
    assert!(r.errors[0].is_spot_limit());

    // Injections are per capacity type.
    cloud.inject(
        "c5.large",
        "*",
        CapacityType::OnDemand,
        "InsufficientInstanceCapacity",
        5,
    );
    let r = cloud
        .launch(&request(CapacityType::Spot, AllocationStrategy::LowestPrice, 1))
        .await
        .unwrap();
    assert_eq!((r.instances.len(), r.errors.len()), (1, 0));
    let r = cloud
        .launch(&request(
            CapacityType::OnDemand,
            AllocationStrategy::LowestPrice,
            2,
        ))
        .await
        .unwrap();
    assert_eq!(pools_of(&r), ["m5.large/us-east-1a"; 2]);
    assert_eq!(
        errors_of(&r),
        ["c5.large/us-east-1a InsufficientInstanceCapacity"]
    );
    cloud.clear_injections();
    let r = cloud
        .launch(&request(
            CapacityType::OnDemand,
            AllocationStrategy::LowestPrice,
            1,
        ))
        .await
        .unwrap();
    assert_eq!(pools_of(&r), ["c5.large/us-east-1a"]);
}

#[tokio::test(start_paused = true)]
async fn unsupported_pools_bad_requests_and_the_vcpu_limit() {
    let cloud = cloud_with(
        SimCloudConfig {
            spot_vcpu_limit: Some(5),
            ..manual()
        },
        flat_market(1),
    );
    let mut req = request(CapacityType::Spot, AllocationStrategy::LowestPrice, 3);
    req.candidates = vec![
        LaunchCandidate {
            instance_type: "m99.huge".into(),
            zone: "us-east-1a".into(),
            price: 1.0,
        },
        LaunchCandidate {
            instance_type: "c5.large".into(),
            zone: "us-west-2a".into(),
            price: 1.0,
        },
        LaunchCandidate {
            instance_type: "m5.large".into(),
            zone: "us-west-2a".into(),
            price: 1.0,
        },
        LaunchCandidate {
            instance_type: "m5.large".into(),
            zone: "us-west-2a".into(),
            price: 1.0,
        },
    ];
    let r = cloud.launch(&req).await.unwrap();
    // 2 vCPUs each: two fit under the limit of 5, the third does not.
    assert_eq!(pools_of(&r), ["m5.large/us-west-2a"; 2]);
    assert_eq!(
        errors_of(&r),
        [
            "m99.huge/us-east-1a Unsupported",
            "c5.large/us-west-2a Unsupported",
            "m5.large/us-west-2a MaxSpotInstanceCountExceeded",
        ]
    );
    assert!(r.errors[1].message.contains("us-west-2a"), "{:?}", r.errors[1]);
    assert!(
        r.instances[0]
            .private_dns_name
            .ends_with(".us-west-2.compute.internal")
    );
    // Terminating gives the vCPUs back.
    cloud.terminate(&[r.instances[0].id.clone()]).await.unwrap();
    let r = cloud.launch(&req).await.unwrap();
    assert_eq!(r.instances.len(), 1);

    for (bad, expect) in [
        (
            FleetRequest {
                count: 0,
                ..req.clone()
            },
            "count",
        ),
        (
            FleetRequest {
                candidates: vec![],
                ..req.clone()
            },
            "candidates",
        ),
        (
            FleetRequest {
                tags: BTreeMap::from([(TAG_NODE_TAINTS.to_owned(), "[{\"key\": 1}]".to_owned())]),
                ..req.clone()
            },
            TAG_NODE_TAINTS,
        ),
        (
            FleetRequest {
                tags: BTreeMap::from([(TAG_NODE_LABELS.to_owned(), "[]".to_owned())]),
                ..req.clone()
            },
            TAG_NODE_LABELS,
        ),
    ] {
        let err = cloud.launch(&bad).await.unwrap_err();
        assert!(
            matches!(&err, CloudError::InvalidRequest(m) if m.contains(expect)),
            "{err}"
        );
    }
    // Configuration errors name the field.
    let err = SimCloud::new(
        SimCloudConfig {
            pco_capacity_fraction: 0.0,
            ..manual()
        },
        Market::offline(flat_market(1)).unwrap(),
        catalog(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("pco_capacity_fraction"), "{err}");
    let err = SimCloud::offline(
        SimCloudConfig {
            clock: SimClock::Tokio { speed: -1.0 },
            ..manual()
        },
        flat_market(1),
    )
    .unwrap_err();
    assert!(err.to_string().contains("clock.speed"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn terminate_and_describe() {
    let cloud = cloud_with(
        SimCloudConfig {
            api_latency: Duration::from_secs(2),
            ..SimCloudConfig::default()
        },
        flat_market(9),
    );
    let recorder = Arc::new(Recorder::default());
    cloud.add_observer(recorder.clone());
    let started = tokio::time::Instant::now();
    let r = cloud
        .launch(&request(CapacityType::Spot, AllocationStrategy::Diversified, 3))
        .await
        .unwrap();
    // The launch took the configured API latency (paused time: instantly).
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(r.instances.len(), 3);
    let ids: Vec<String> = r.instances.iter().map(|i| i.id.clone()).collect();
    for i in &r.instances {
        assert_eq!(i.state, "pending");
        assert!(
            i.id.len() == 19 && i.id.starts_with("i-0") && i.id[2..].chars().all(|c| c.is_ascii_hexdigit()),
            "{}",
            i.id
        );
        let host = i.private_dns_name.strip_suffix(".ec2.internal").unwrap();
        let octets: Vec<&str> = host.strip_prefix("ip-10-").unwrap().split('-').collect();
        assert!(
            octets.len() == 3 && octets.iter().all(|o| o.parse::<u8>().is_ok()),
            "{host}"
        );
        assert_eq!(
            i.launch_time,
            Some(MarketConfig::default().start + Duration::from_secs(2))
        );
        assert_eq!(i.provider_id(), format!("aws:///{}/{}", i.zone, i.id));
    }
    let dns: HashSet<&str> = r.instances.iter().map(|i| i.private_dns_name.as_str()).collect();
    assert_eq!(dns.len(), 3);

    // Describe: requested order, unknown ids left out, duplicates once.
    let asked = vec![
        ids[2].clone(),
        "i-0000000000000dead".to_owned(),
        ids[0].clone(),
        ids[2].clone(),
    ];
    let d = cloud.describe(&asked).await.unwrap();
    assert_eq!(
        d.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [ids[2].as_str(), ids[0].as_str()]
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    let d = cloud.describe(&ids).await.unwrap();
    assert!(d.iter().all(|i| i.state == "running"), "{d:?}");

    // Terminate: unknown ids are fine; shutting-down, then terminated, still describable.
    let available = cloud.market(|m| m.available(&pool("m5.large", "us-east-1a")).unwrap());
    cloud
        .terminate(&[ids[0].clone(), "i-0000000000000dead".to_owned()])
        .await
        .unwrap();
    assert_eq!(
        cloud.market(|m| m.available(&pool("m5.large", "us-east-1a")).unwrap()),
        available + 1,
        "the unit goes back to the pool"
    );
    let state = |d: Vec<Instance>| d.into_iter().map(|i| i.state).collect::<Vec<_>>();
    assert_eq!(
        state(cloud.describe(&ids).await.unwrap()),
        ["shutting-down", "running", "running"]
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        state(cloud.describe(&ids).await.unwrap()),
        ["terminated", "running", "running"]
    );
    cloud.terminate(&ids[..1]).await.unwrap();
    let stats = cloud.stats();
    assert_eq!((stats.launched, stats.terminated), (3, 1));
    let seen = recorder.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[0].starts_with(&format!("launched {} m5.large", ids[0])));
    assert_eq!(seen[3], format!("terminated {}", ids[0]));
    let snapshot = cloud.instance(&ids[0]).unwrap();
    assert_eq!(
        snapshot.terminated_at,
        Some(MarketConfig::default().start + Duration::from_secs(12))
    );
    assert!(!snapshot.interrupted);
}

#[tokio::test(start_paused = true)]
async fn cost_accounting_follows_paused_tokio_time() {
    let cloud = cloud_with(
        SimCloudConfig {
            api_latency: Duration::ZERO,
            ..SimCloudConfig::default()
        },
        MarketConfig {
            band_monthly_rates: [0.0; 5],
            price_volatility: 0.05,
            ..MarketConfig::default()
        },
    );
    let od = cloud
        .launch(&request(
            CapacityType::OnDemand,
            AllocationStrategy::LowestPrice,
            1,
        ))
        .await
        .unwrap()
        .instances
        .remove(0);
    let spot = cloud
        .launch(&request(CapacityType::Spot, AllocationStrategy::LowestPrice, 1))
        .await
        .unwrap()
        .instances
        .remove(0);
    let (p_od, p_spot) = (
        cloud.instance(&od.id).unwrap().price,
        cloud.instance(&spot.id).unwrap().price,
    );
    // The spot price charged is the pool's market price at launch.
    let market_now = cloud.market(|m| m.spot_price(&pool(&spot.instance_type, &spot.zone)).unwrap());
    assert_eq!(p_spot, market_now);
    assert_eq!(cloud.accumulated_cost(), 0.0);
    assert!((cloud.running_cost_per_hour() - (p_od + p_spot)).abs() < 1e-12);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!((cloud.accumulated_cost() - (p_od + p_spot)).abs() < 1e-9);
    cloud.terminate(std::slice::from_ref(&od.id)).await.unwrap();
    tokio::time::advance(Duration::from_secs(7200)).await;
    // The spot price moved, the instance keeps paying its launch price.
    assert!((cloud.accumulated_cost() - (p_od + 3.0 * p_spot)).abs() < 1e-9);
    assert!((cloud.running_cost_per_hour() - p_spot).abs() < 1e-12);
    // Manual advances add to tokio's time.
    cloud.advance(Duration::from_secs(3600)).await;
    assert!((cloud.accumulated_cost() - (p_od + 4.0 * p_spot)).abs() < 1e-9);
    assert_eq!(cloud.elapsed(), Duration::from_secs(4 * 3600));
    assert_eq!(
        Clock::now(&cloud),
        MarketConfig::default().start + Duration::from_secs(4 * 3600)
    );

    // A manual clock ignores tokio time.
    let manual_cloud = cloud_with(manual(), flat_market(1));
    manual_cloud
        .launch(&request(
            CapacityType::OnDemand,
            AllocationStrategy::LowestPrice,
            1,
        ))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(manual_cloud.accumulated_cost(), 0.0);
    manual_cloud.advance(Duration::from_secs(1800)).await;
    let price = manual_cloud.instances()[0].price;
    assert!((manual_cloud.accumulated_cost() - price / 2.0).abs() < 1e-12);
}

/// Launches `n` spot instances in one band-4 pool with a rebalance before every notice.
async fn interrupted_fleet(origin: EventOrigin, n: u32) -> (SimCloud, Arc<Recorder>, Vec<String>) {
    let cloud = cloud_with(
        SimCloudConfig {
            event_origin: origin,
            ..manual()
        },
        MarketConfig {
            seed: 21,
            rebalance_probability: 1.0,
            capacity_regen_per_hour: 0.0,
            ..MarketConfig::default()
        },
    );
    let recorder = Arc::new(Recorder::default());
    cloud.add_observer(recorder.clone());
    cloud.market(|m| {
        m.set_pool(
            pool("m5.large", "us-east-1a"),
            PoolParams {
                on_demand: 0.096,
                mean_spot: 0.03,
                band: 4,
                capacity: n,
            },
        )
        .unwrap();
    });
    let mut req = request(CapacityType::Spot, AllocationStrategy::LowestPrice, n);
    req.candidates.truncate(1);
    let r = cloud.launch(&req).await.unwrap();
    assert_eq!(r.instances.len() as u32, n);
    let ids = r.instances.into_iter().map(|i| i.id).collect();
    (cloud, recorder, ids)
}

#[tokio::test(start_paused = true)]
async fn interruptions_follow_the_band_with_notice_rebalance_and_reclaim() {
    let n = 400;
    let (cloud, recorder, ids) = interrupted_fleet(EventOrigin::Queue, n).await;
    let start = MarketConfig::default().start;
    let mut events = Vec::new();
    for _ in 0..90 {
        cloud.advance(Duration::from_secs(86_400)).await;
        events.extend(cloud.interruptions().await);
    }
    assert!(
        cloud.interruptions().await.is_empty(),
        "each event is handed out once"
    );
    let instances = cloud.instances();
    let interrupted: Vec<&SimInstance> = instances.iter().filter(|i| i.interrupted).collect();
    // Band 4 (25 %/month) over three months: 1 − 0.75³ ≈ 0.578 of the fleet.
    let share = interrupted.len() as f64 / f64::from(n);
    let expected = 1.0 - 0.75f64.powi(3);
    let sd = (expected * (1.0 - expected) / f64::from(n)).sqrt();
    assert!((share - expected).abs() < 4.0 * sd, "{share} vs {expected}");
    // Per interrupted instance: rebalance (15 min ahead, not before launch), notice with a
    // two-minute deadline, reclaim at the deadline, observer told.
    let seen = recorder.seen();
    for i in &interrupted {
        let id = &i.instance.id;
        let mine: Vec<&InterruptionEvent> = events.iter().filter(|e| &e.instance_id == id).collect();
        assert_eq!(mine.len(), 2, "{id}: {mine:?}");
        assert_eq!(mine[0].kind, EventKind::RebalanceRecommendation);
        let notice_at = i.notice_at.unwrap();
        assert_eq!(mine[1].observed_at, notice_at);
        assert_eq!(
            mine[1].kind,
            EventKind::SpotInterruption {
                action: SpotAction::Terminate,
                deadline: notice_at + Duration::from_secs(120)
            }
        );
        let lead = notice_at - mine[0].observed_at;
        assert!(
            lead == time::Duration::minutes(15) || mine[0].observed_at == start,
            "{lead}"
        );
        assert_eq!(i.terminated_at, Some(notice_at + Duration::from_secs(120)));
        assert_eq!(i.instance.state, "terminated");
        assert!(seen.contains(&format!("terminated {id}")));
        // The SQS shape: identity = the EventBridge id.
        let Origin::Queue {
            upstream_id: Some(upstream),
            message_id,
        } = &mine[1].origin
        else {
            panic!("{:?}", mine[1].origin)
        };
        assert_eq!(mine[1].id, EventId::derive(&["spot-interruption", id, upstream]));
        assert_ne!(message_id, upstream);
    }
    assert!(events.windows(2).all(|w| w[0].observed_at <= w[1].observed_at));
    let stats = cloud.stats();
    assert_eq!(stats.interrupted as usize, interrupted.len());
    assert_eq!(stats.interruption_notices as usize, interrupted.len());
    assert_eq!(stats.rebalance_recommendations as usize, interrupted.len());
    // Instances still running have their notice in the future (or none).
    let now = Clock::now(&cloud);
    for i in instances.iter().filter(|i| !i.interrupted) {
        assert!(i.notice_at.is_none_or(|t| t > now - Duration::from_secs(120)));
        assert!(ids.contains(&i.instance.id));
    }
    // Reclaimed capacity is not returned to the pool (no regeneration in this market).
    assert_eq!(
        cloud.market(|m| m.available(&pool("m5.large", "us-east-1a")).unwrap()),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn interruptions_in_the_imds_shape_delivered_to_a_memory_source() {
    let (cloud, _, ids) = interrupted_fleet(EventOrigin::Imds, 40).await;
    // Jump from due event to due event.
    let mut notices = 0;
    let source = MemorySource::new();
    while let Some(next) = cloud.next_due() {
        let wait = next - Clock::now(&cloud);
        cloud.advance(wait.unsigned_abs()).await;
        notices += cloud.deliver_interruptions(&source).await;
        if Clock::now(&cloud) - MarketConfig::default().start > time::Duration::days(400) {
            break;
        }
    }
    assert!(notices > 0);
    let deliveries = source.receive().await.unwrap();
    assert_eq!(deliveries.len(), notices);
    for d in &deliveries {
        let e = &d.events[0];
        assert_eq!(e.origin, Origin::Imds);
        let identity = match &e.kind {
            EventKind::SpotInterruption { deadline, .. } => format!("terminate:{}", imds_time(*deadline)),
            _ => imds_time(e.observed_at),
        };
        assert_eq!(e.id, EventId::derive(&[e.kind.name(), &e.instance_id, &identity]));
        assert!(ids.contains(&e.instance_id));
    }
}

#[tokio::test(start_paused = true)]
async fn terminated_instances_get_no_more_events() {
    let (cloud, _, ids) = interrupted_fleet(EventOrigin::Queue, 30).await;
    cloud.terminate(&ids).await.unwrap();
    // The customer's terminations give the capacity back.
    assert_eq!(
        cloud.market(|m| m.available(&pool("m5.large", "us-east-1a")).unwrap()),
        30
    );
    cloud.advance(Duration::from_secs(400 * 86_400)).await;
    assert!(cloud.interruptions().await.is_empty());
    assert_eq!(cloud.next_due(), None);
    assert_eq!(cloud.stats().interrupted, 0);
}

#[tokio::test(start_paused = true)]
async fn deterministic_given_the_seed() {
    async fn run(seed: u64) -> Vec<(String, String, String, Option<OffsetDateTime>)> {
        let cloud = cloud_with(
            manual(),
            MarketConfig {
                seed,
                ..MarketConfig::default()
            },
        );
        for s in [
            AllocationStrategy::PriceCapacityOptimized,
            AllocationStrategy::Diversified,
        ] {
            cloud.launch(&request(CapacityType::Spot, s, 4)).await.unwrap();
            cloud.advance(Duration::from_secs(3 * 3600)).await;
        }
        cloud
            .instances()
            .into_iter()
            .map(|i| {
                (
                    i.instance.id,
                    i.instance.private_dns_name,
                    format!("{}/{}", i.instance.zone, i.price),
                    i.notice_at,
                )
            })
            .collect()
    }
    let a = run(5).await;
    assert_eq!(a.len(), 8);
    assert_eq!(a, run(5).await);
    let b = run(6).await;
    assert!(a.iter().zip(&b).all(|(x, y)| x.0 != y.0));
}

#[tokio::test(start_paused = true)]
async fn node_tags_reach_the_observer() {
    let cloud = cloud_with(manual(), flat_market(1));
    let recorder = Arc::new(Recorder::default());
    cloud.add_observer(recorder.clone());
    let template = NodeTemplate {
        labels: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
        taints: vec![Taint::new("dedicated", "gpu", TaintEffect::NoSchedule)],
        startup_taints: vec![
            Taint::new("node.cilium.io/agent-not-ready", "true", TaintEffect::NoExecute),
            Taint::new("dedicated", "other", TaintEffect::NoSchedule),
        ],
    };
    let mut tags = template.to_tags();
    assert_eq!(tags.len(), 3);
    assert_eq!(NodeTemplate::from_tags(&tags).unwrap(), template, "round trip");
    tags.insert(TAG_NODEPOOL.to_owned(), "default".to_owned());
    tags.insert(TAG_NODECLAIM.to_owned(), "default-abcde".to_owned());
    let mut req = request(CapacityType::Spot, AllocationStrategy::LowestPrice, 1);
    req.tags = tags.clone();
    let r = cloud.launch(&req).await.unwrap();
    assert_eq!(r.instances[0].tags, tags);
    let seen = recorder.seen();
    assert_eq!(
        seen,
        [format!(
            "launched {} m5.large {{\"karpenter.sh/nodepool\": \"default\", \"team\": \"a\"}} \
             [\"dedicated=gpu:NoSchedule\", \"node.cilium.io/agent-not-ready=true:NoExecute\"]",
            r.instances[0].id
        )]
    );
    assert_eq!(NodeTemplate::default().to_tags(), BTreeMap::new());
}

#[tokio::test(start_paused = true)]
async fn prices_as_a_price_source() {
    let cloud = cloud_with(
        manual(),
        MarketConfig {
            price_volatility: 0.1,
            ..MarketConfig::default()
        },
    );
    crafted(&cloud);
    let source: &dyn PriceSource = &cloud;
    assert_eq!(source.on_demand("us-east-1", "c5.large"), Some(0.085));
    assert_eq!(source.interruption_band("us-east-1", "m5.large"), Some(0));
    let before = source.spot("us-east-1b", "m5.large").unwrap();
    cloud.advance(Duration::from_secs(86_400)).await;
    let after = source.spot("us-east-1b", "m5.large").unwrap();
    assert_ne!(before, after, "spot prices move with virtual time");
    assert_eq!(
        after,
        cloud.market(|m| m.spot_price(&pool("m5.large", "us-east-1b")).unwrap())
    );
    // Pools not crafted come from the offline prices.
    assert_eq!(
        source.on_demand("us-west-2", "m5.large"),
        spot_core::price::OfflinePrices::embedded().on_demand("us-west-2", "m5.large")
    );
    assert_eq!(source.spot("nowhere", "m5.large"), None);
}

#[tokio::test(start_paused = true)]
async fn scripted_interruptions_and_rebalance_recommendations() {
    let cloud = cloud_with(manual(), flat_market(5));
    let recorder = Arc::new(Recorder::default());
    cloud.add_observer(recorder.clone());
    let r = cloud
        .launch(&request(CapacityType::Spot, AllocationStrategy::LowestPrice, 3))
        .await
        .unwrap();
    let ids: Vec<String> = r.instances.iter().map(|i| i.id.clone()).collect();
    let od = cloud
        .launch(&request(
            CapacityType::OnDemand,
            AllocationStrategy::LowestPrice,
            1,
        ))
        .await
        .unwrap();
    cloud.advance(Duration::from_secs(60)).await;
    let start = Clock::now(&cloud);

    // A notice now, reclaim two minutes later.
    let plan = cloud.interrupt(&ids[0], None).await.unwrap();
    assert_eq!(plan.notice_at, cloud.elapsed());
    assert_eq!(plan.terminate_at, plan.notice_at + Duration::from_secs(120));
    // A recommendation now, the notice 30 s later.
    let plan = cloud
        .interrupt(&ids[1], Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(plan.rebalance_at, Some(cloud.elapsed()));
    // A recommendation alone.
    cloud.recommend_rebalance(&ids[2]).await.unwrap();
    let events = cloud.interruptions().await;
    let kinds: Vec<(String, &str)> = events
        .iter()
        .map(|e| (e.instance_id.clone(), e.kind.name()))
        .collect();
    assert_eq!(
        kinds,
        [
            (ids[0].clone(), "spot-interruption"),
            (ids[1].clone(), "rebalance-recommendation"),
            (ids[2].clone(), "rebalance-recommendation"),
        ]
    );
    assert_eq!(
        events[0].kind,
        EventKind::SpotInterruption {
            action: SpotAction::Terminate,
            deadline: start + Duration::from_secs(120)
        }
    );
    cloud.advance(Duration::from_secs(30)).await;
    let later = cloud.interruptions().await;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].instance_id, ids[1]);
    cloud.advance(Duration::from_secs(200)).await;
    let by_id = |id: &str| cloud.instance(id).unwrap();
    assert!(by_id(&ids[0]).interrupted && by_id(&ids[1]).interrupted);
    assert_eq!(
        by_id(&ids[0]).terminated_at,
        Some(start + Duration::from_secs(120))
    );
    assert!(!by_id(&ids[2]).interrupted && by_id(&ids[2]).terminated_at.is_none());
    assert!(recorder.seen().contains(&format!("terminated {}", ids[0])));
    let stats = cloud.stats();
    assert_eq!(
        (
            stats.interruption_notices,
            stats.rebalance_recommendations,
            stats.interrupted
        ),
        (2, 2, 2)
    );

    // Only running spot instances.
    let err = |e: Error| e.to_string();
    assert_eq!(
        err(cloud.interrupt(&ids[0], None).await.unwrap_err()),
        format!("instance {}: the instance is terminated", ids[0])
    );
    assert_eq!(
        err(cloud.recommend_rebalance(&od.instances[0].id).await.unwrap_err()),
        format!(
            "instance {}: only spot instances are interrupted",
            od.instances[0].id
        )
    );
    assert_eq!(
        err(cloud.interrupt("i-0nope", None).await.unwrap_err()),
        "instance i-0nope: no such instance"
    );
}
