//! The certification suite of the packer: fixed, seeded workloads over two sets of bin
//! types, shared by the bound test (`spot-core/tests/packing_bound.rs`) and the benchmarks.
//!
//! Bin types are either Karpenter's benchmark types ([`karpenter_benchmark_types`]: type `i`
//! has `i + 1` vCPU, `2(i + 1)` GiB and `10(i + 1)` pods, priced $0.1 per vCPU plus $0.1 per
//! GiB), or the embedded catalog's types in a region ([`catalog_types`]: Karpenter's
//! allocatable, on-demand prices from the offline price model). Every workload has at least
//! 50 pods, so that the integrality gap of the LP bound stays small next to the packer's own
//! loss. Requests are drawn with a seeded splitmix64 generator, so every run sees the same
//! cases.

use crate::allocatable::AllocatableModel;
use crate::catalog::Catalog;
use crate::price::{OfflinePrices, PriceSource};
use crate::resources::{self, Resources};

use super::model::{BinType, Item};

const MI: i64 = 1 << 20;
const GI: i64 = 1 << 30;

/// The region whose catalog types the suite uses.
pub const SUITE_REGION: &str = "us-east-1";

/// One workload of the suite.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteCase {
    /// A short unique name, `types/workload` (`catalog/memory-heavy`).
    pub name: String,
    /// What the workload is and what it exercises.
    pub description: String,
    /// The items (pods) to pack.
    pub items: Vec<Item>,
    /// The bin types to pack them into.
    pub types: Vec<BinType>,
    /// The name of each bin type (instance type names, or `fake-N` for benchmark types).
    pub type_names: Vec<String>,
}

impl SuiteCase {
    /// Whether the items have more than one distinct request vector.
    pub fn is_heterogeneous(&self) -> bool {
        self.items.iter().any(|i| i.requests != self.items[0].requests)
    }
}

/// A tiny seeded generator (splitmix64): the suite's requests do not depend on any crate's
/// random-number algorithm.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with this seed.
    fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: i64, high: i64) -> i64 {
        let span = u64::try_from(high.saturating_sub(low)).unwrap_or(0);
        low.saturating_add(i64::try_from(self.below(span.saturating_add(1))).unwrap_or(0))
    }

    /// One element of a slice (every caller passes a non-empty literal).
    fn pick<T: Copy>(&mut self, values: &[T]) -> T {
        let index = usize::try_from(self.below(values.len() as u64)).unwrap_or(0);
        values[index.min(values.len().saturating_sub(1))]
    }
}

/// Karpenter's `fake.InstanceTypes(count)`: type `i` has `i + 1` vCPU, `2(i + 1)` GiB of
/// memory and `10(i + 1)` pods, and costs `0.1 × vCPU + 0.1 × GiB` per hour.
pub fn karpenter_benchmark_types(count: usize) -> Vec<(String, BinType)> {
    (1..=count as i64)
        .map(|n| {
            let capacity = Resources::new(n * 1000, 2 * n * GI).with_pods(10 * n);
            (
                format!("fake-{}", n - 1),
                BinType::new(capacity, 0.1 * n as f64 + 0.2 * n as f64),
            )
        })
        .collect()
}

/// The embedded catalog's types offered in `region` that have an on-demand price: capacity
/// is Karpenter's default allocatable ([`AllocatableModel::default`]), price the offline
/// on-demand price ([`OfflinePrices::embedded`]). In catalog order.
pub fn catalog_types(region: &str) -> Vec<(String, BinType)> {
    let catalog = Catalog::embedded();
    let prices = OfflinePrices::embedded();
    let model = AllocatableModel::default();
    catalog
        .types()
        .iter()
        .filter(|t| !catalog.offered_zones(region, &t.name).is_empty())
        .filter_map(|t| {
            let price = prices.on_demand(region, &t.name)?;
            Some((
                t.name.clone(),
                BinType::new(model.allocatable_resources(t), price),
            ))
        })
        .collect()
}

/// A pod's requests: CPU in millicores, memory in MiB, one pod.
fn pod(cpu_millis: i64, memory_mib: i64) -> Item {
    Item::new(Resources::new(cpu_millis, memory_mib * MI).with_pods(1))
}

/// Karpenter's benchmark requests (`makeDiversePods`): CPU from {100, 250, 500, 1000,
/// 1500}m and memory from {100, 256, 512, 1024, 2048, 4096}Mi, uniformly, with one pod each.
pub fn karpenter_benchmark_items(count: usize, seed: u64) -> Vec<Item> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|_| {
            pod(
                rng.pick(&[100, 250, 500, 1000, 1500]),
                rng.pick(&[100, 256, 512, 1024, 2048, 4096]),
            )
        })
        .collect()
}

/// Every workload of the suite, in a fixed order (see the module documentation).
pub fn certification_suite() -> Vec<SuiteCase> {
    let synthetic = karpenter_benchmark_types(400);
    let catalog = catalog_types(SUITE_REGION);
    let mut cases = Vec::new();
    let mut add = |types: &[(String, BinType)], name: &str, description: &str, items: Vec<Item>| {
        let prefix = if types.len() == synthetic.len() && types[0].0 == synthetic[0].0 {
            "synthetic"
        } else {
            "catalog"
        };
        cases.push(SuiteCase {
            name: format!("{prefix}/{name}"),
            description: description.to_owned(),
            items,
            types: types.iter().map(|(_, t)| t.clone()).collect(),
            type_names: types.iter().map(|(n, _)| n.clone()).collect(),
        });
    };

    // Karpenter's benchmark types.
    add(
        &synthetic,
        "homogeneous-small",
        "2,000 identical small pods (250m, 512Mi)",
        vec![pod(250, 512); 2000],
    );
    add(
        &synthetic,
        "homogeneous-large",
        "150 identical large pods (3.5 vCPU, 7Gi) that leave half a vCPU in 4-vCPU bins",
        vec![pod(3500, 7 * 1024); 150],
    );
    add(
        &synthetic,
        "karpenter-mix",
        "1,000 pods with Karpenter's benchmark requests (5 CPU x 6 memory sizes)",
        karpenter_benchmark_items(1000, 42),
    );
    add(
        &synthetic,
        "pods-bound",
        "3,000 tiny pods (10m, 16Mi): the pod count is the binding resource",
        vec![pod(10, 16); 3000],
    );
    add(&synthetic, "memory-heavy", "500 pods of 250-500m and 3-7Gi", {
        let mut rng = SplitMix64::new(7);
        (0..500)
            .map(|_| pod(rng.pick(&[250, 500]), rng.pick(&[3, 4, 5, 6, 7]) * 1024))
            .collect()
    });
    add(
        &synthetic,
        "huge-pods",
        "6 huge pods (150-350 vCPU) among 200 small ones",
        {
            let mut rng = SplitMix64::new(11);
            let mut items: Vec<Item> = (0..6)
                .map(|_| {
                    let cpu = rng.between(150, 350);
                    pod(cpu * 1000, cpu * 1024)
                })
                .collect();
            items.extend((0..200).map(|_| pod(rng.pick(&[250, 500, 1000]), rng.pick(&[512, 1024, 2048]))));
            items
        },
    );

    // The embedded catalog.
    add(
        &catalog,
        "homogeneous-small",
        "1,500 identical small pods (250m, 512Mi)",
        vec![pod(250, 512); 1500],
    );
    add(
        &catalog,
        "homogeneous-large",
        "150 identical large pods (3 vCPU, 6Gi) that do not divide instance sizes",
        vec![pod(3000, 6 * 1024); 150],
    );
    add(
        &catalog,
        "karpenter-mix",
        "1,000 pods with Karpenter's benchmark requests (5 CPU x 6 memory sizes)",
        karpenter_benchmark_items(1000, 42),
    );
    add(&catalog, "memory-heavy", "400 pods of 250m-1 vCPU and 4-24Gi", {
        let mut rng = SplitMix64::new(3);
        (0..400)
            .map(|_| pod(rng.pick(&[250, 500, 1000]), rng.pick(&[4, 8, 12, 16, 24]) * 1024))
            .collect()
    });
    add(&catalog, "cpu-heavy", "400 pods of 1-4 vCPU and 256Mi-1Gi", {
        let mut rng = SplitMix64::new(5);
        (0..400)
            .map(|_| pod(rng.pick(&[1000, 2000, 3000, 4000]), rng.pick(&[256, 512, 1024])))
            .collect()
    });
    add(
        &catalog,
        "complementary",
        "200 CPU-heavy pods (3.5 vCPU, 1Gi) and 200 memory-heavy ones (250m, 14Gi)",
        {
            let mut items = vec![pod(3500, 1024); 200];
            items.extend(vec![pod(250, 14 * 1024); 200]);
            items
        },
    );
    add(
        &catalog,
        "pods-bound",
        "2,500 tiny pods (10m, 32Mi): the 110-pod limit binds",
        vec![pod(10, 32); 2500],
    );
    add(
        &catalog,
        "huge-pods",
        "10 huge pods (40-90 vCPU, 4-8 GiB per vCPU) among 200 medium ones",
        {
            let mut rng = SplitMix64::new(13);
            let mut items: Vec<Item> = (0..10)
                .map(|_| {
                    let cpu = rng.between(40, 90);
                    pod(cpu * 1000, cpu * rng.pick(&[4, 6, 8]) * 1024)
                })
                .collect();
            items.extend((0..200).map(|_| pod(rng.pick(&[500, 1000, 2000]), rng.pick(&[1024, 2048, 4096]))));
            items
        },
    );
    add(
        &catalog,
        "gpu-mix",
        "40 single-GPU pods (4 vCPU, 16Gi, 1 nvidia.com/gpu) and 300 general pods",
        {
            let mut rng = SplitMix64::new(17);
            let gpu = Item::new(
                Resources::new(4000, 16 * GI)
                    .with_pods(1)
                    .with_extended(resources::NVIDIA_GPU, 1),
            );
            let mut items = vec![gpu; 40];
            items.extend((0..300).map(|_| pod(rng.pick(&[250, 500, 1000]), rng.pick(&[512, 1024, 2048]))));
            items
        },
    );
    add(
        &catalog,
        "microservices",
        "25 deployments of 2-60 replicas with mixed requests, some with ephemeral storage",
        {
            let mut rng = SplitMix64::new(19);
            let mut items = Vec::new();
            for _ in 0..25 {
                let replicas = rng.between(2, 60);
                let mut requests = Resources::new(
                    rng.pick(&[50, 100, 200, 250, 500, 750, 1000, 2000]),
                    rng.pick(&[64, 128, 256, 512, 768, 1024, 2048, 3072, 4096, 8192]) * MI,
                )
                .with_pods(1);
                if rng.below(3) == 0 {
                    requests = requests.with_ephemeral_storage(rng.pick(&[256, 512, 1024, 2048]) * MI);
                }
                items.extend((0..replicas).map(|_| Item::new(requests.clone())));
            }
            items
        },
    );
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_is_the_reference_sequence() {
        // The first outputs of splitmix64 seeded with 1234567 (from the reference C code).
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
        assert!((0..100).all(|_| (3..=5).contains(&rng.between(3, 5))));
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn suite_cases_are_named_sized_and_stable() {
        let suite = certification_suite();
        assert!(suite.len() >= 12);
        let mut names: Vec<&str> = suite.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), suite.len(), "unique names");
        for case in &suite {
            assert!(case.items.len() >= 50, "{}", case.name);
            assert_eq!(case.types.len(), case.type_names.len());
            assert!(!case.types.is_empty());
        }
        assert!(suite.iter().any(|c| c.name.starts_with("synthetic/")));
        assert!(suite.iter().any(|c| c.name.starts_with("catalog/")));
        assert!(suite.iter().filter(|c| c.is_heterogeneous()).count() >= 6);
        assert_eq!(suite, certification_suite(), "seeded: the same every time");
        let fake = karpenter_benchmark_types(400);
        assert_eq!(fake.len(), 400);
        assert_eq!(
            fake[399].1.capacity,
            Resources::new(400_000, 800 * GI).with_pods(4000)
        );
        assert!((fake[0].1.price - 0.3).abs() < 1e-12);
    }
}
