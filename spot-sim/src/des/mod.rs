//! A discrete-event simulation of days of cluster life on EC2 Spot, to compare how capacity
//! is bought: on-demand only, or spot with `lowest-price`, `capacity-optimized`,
//! `price-capacity-optimized` or `diversified` allocation, each with or without
//! consolidation and rebalance replacement.
//!
//! Everything runs in memory on a virtual clock: a workload trace ([`trace`]) drives pods,
//! the real `spot-core` [`Scheduler`](spot_core::scheduling::Scheduler) places them and asks
//! for NodeClaims, the claims are launched into a [`SimCloud`](crate::SimCloud) with the
//! scenario's allocation ([`strategy`]), the real consolidation
//! ([`spot_core::disruption`]) removes and replaces nodes, and the seeded market prices the
//! instances and interrupts them ([`sim`]). [`report`] renders the comparison (table, CSV,
//! JSON) and [`chart`] draws the time series as SVG.
//!
//! [`run_all`] runs scenarios side by side on threads, each on its own single-threaded
//! runtime; every scenario sees the same seed, so the same workload and the same market.

use std::sync::Arc;
use std::time::Duration;

use crate::market::MarketConfig;

pub mod chart;
pub mod report;
pub mod sim;
pub mod strategy;
pub mod trace;

pub use report::Report;
pub use sim::{Sample, ScenarioResult, Simulation, Summary};
pub use strategy::{Allocation, Scenario};
pub use trace::{Scale, TraceConfig, TraceKind, Workload};

/// Errors of the simulation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration field with an invalid value.
    #[error("simulation config: {field} = {value}: {message}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        message: &'static str,
    },
    /// No instance type of the configured families and sizes is sold in the zones.
    #[error(
        "no instance type of families {families} and sizes {sizes} is offered and priced in zones {zones}"
    )]
    NoInstanceTypes {
        /// The families.
        families: String,
        /// The sizes.
        sizes: String,
        /// The zones.
        zones: String,
    },
    /// The workload trace.
    #[error(transparent)]
    Trace(#[from] trace::Error),
    /// The market.
    #[error(transparent)]
    Market(#[from] crate::market::Error),
    /// The simulated cloud.
    #[error(transparent)]
    Cloud(#[from] crate::cloud::Error),
    /// A scenario's thread or runtime failed.
    #[error("scenario {scenario}: {message}")]
    Runtime {
        /// The scenario.
        scenario: String,
        /// What failed.
        message: String,
    },
    /// Writing an output file.
    #[error("writing {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's or the renderer's error.
        message: String,
    },
}

/// What every scenario of a comparison shares. [`Default`] gives the values documented on
/// each field.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The seed of the workload, the market and the instances (default 1).
    pub seed: u64,
    /// How long to simulate (default 7 days).
    pub duration: Duration,
    /// The workload's shape (default diurnal).
    pub trace: TraceKind,
    /// The workload's size at its peak (default about 200 nodes).
    pub scale: Scale,
    /// The availability zones (default us-east-1a, b and c).
    pub zones: Vec<String>,
    /// The instance families the NodePool allows (default c, m and r of generations 5 and 6,
    /// Intel and AMD).
    pub families: Vec<String>,
    /// The sizes it allows (default large, xlarge and 2xlarge).
    pub sizes: Vec<String>,
    /// Provisioning runs this long after pods become pending (default 10 s).
    pub batch_delay: Duration,
    /// From launch to a ready node (default 60 s).
    pub node_startup: Duration,
    /// How often consolidation looks for work (default 1 minute).
    pub consolidation_interval: Duration,
    /// How many non-empty candidates a consolidation round weighs, best savings ratio first
    /// (default 100: multi-node consolidation's limit).
    pub consolidation_candidates: usize,
    /// The NodePool's `consolidateAfter` (default 0 s, Karpenter's).
    pub consolidate_after: Duration,
    /// The interval of the time series (default 10 minutes).
    pub sample_interval: Duration,
    /// Whether an interruption notice launches replacement capacity at once (default true,
    /// Karpenter with its interruption queue); otherwise pods wait for the reclaim.
    pub replace_on_notice: bool,
    /// The market (its seed is replaced by [`SimConfig::seed`]; default
    /// [`MarketConfig::default`] with [`SimConfig::pool_capacity`]).
    pub market: MarketConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        let families = [
            "c5", "c5a", "c6i", "c6a", "m5", "m5a", "m6i", "m6a", "r5", "r5a", "r6i", "r6a",
        ];
        SimConfig {
            seed: 1,
            duration: Duration::from_secs(7 * 86_400),
            trace: TraceKind::Diurnal,
            scale: Scale::Nodes(200),
            zones: ["us-east-1a", "us-east-1b", "us-east-1c"]
                .map(str::to_owned)
                .to_vec(),
            families: families.map(str::to_owned).to_vec(),
            sizes: ["large", "xlarge", "2xlarge"].map(str::to_owned).to_vec(),
            batch_delay: Duration::from_secs(10),
            node_startup: Duration::from_secs(60),
            consolidation_interval: Duration::from_secs(60),
            consolidation_candidates: 100,
            consolidate_after: Duration::ZERO,
            sample_interval: Duration::from_secs(600),
            replace_on_notice: true,
            market: MarketConfig {
                capacity: SimConfig::pool_capacity(200),
                ..MarketConfig::default()
            },
        }
    }
}

impl SimConfig {
    /// The base spare capacity per spot pool for a cluster of about `nodes` nodes: 200, or
    /// a tenth of the nodes when that is more (36 types × 3 zones hold several times the
    /// cluster, but a strategy that piles into few pools still runs them dry).
    pub fn pool_capacity(nodes: u64) -> u32 {
        u32::try_from(nodes / 10).unwrap_or(u32::MAX).max(200)
    }

    /// The defaults for a workload of about `nodes` nodes at its peak: the market's pool
    /// capacity ([`SimConfig::pool_capacity`]) and the consolidation interval
    /// ([`SimConfig::consolidation_interval_for`]) follow the size.
    pub fn for_nodes(nodes: u64) -> SimConfig {
        let mut config = SimConfig {
            scale: Scale::Nodes(nodes),
            consolidation_interval: SimConfig::consolidation_interval_for(nodes),
            ..SimConfig::default()
        };
        config.market.capacity = SimConfig::pool_capacity(nodes);
        config
    }

    /// The consolidation interval for a cluster of about `nodes` nodes: a minute up to 2,000
    /// nodes, then proportionally longer (5 minutes at 10,000). Karpenter's rounds take
    /// longer on big clusters (its single-node round times out after 3 minutes); this also
    /// keeps big simulations fast.
    pub fn consolidation_interval_for(nodes: u64) -> Duration {
        Duration::from_secs((nodes.saturating_mul(60) / 2_000).max(60))
    }

    /// The workload configuration of this simulation.
    pub fn trace_config(&self) -> TraceConfig {
        TraceConfig::new(self.trace, self.scale, self.seed, self.duration)
    }

    /// Checks the fields; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), Error> {
        let positive = [
            ("duration", self.duration),
            ("node_startup", self.node_startup),
            ("consolidation_interval", self.consolidation_interval),
            ("sample_interval", self.sample_interval),
            ("batch_delay", self.batch_delay),
        ];
        if let Some((field, value)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(Error::Config {
                field,
                value: format!("{value:?}"),
                message: "must be positive",
            });
        }
        for (field, list) in [
            ("zones", &self.zones),
            ("families", &self.families),
            ("sizes", &self.sizes),
        ] {
            if list.is_empty() {
                return Err(Error::Config {
                    field,
                    value: "[]".to_owned(),
                    message: "must not be empty",
                });
            }
        }
        self.market.validate()?;
        Ok(())
    }
}

/// Runs the scenarios on up to `jobs` threads (at least 1), each on its own single-threaded
/// runtime; results come back in the order of `scenarios`.
pub fn run_all(
    config: &SimConfig,
    scenarios: &[Scenario],
    jobs: usize,
) -> Result<Vec<ScenarioResult>, Error> {
    config.validate()?;
    let workload = Arc::new(Workload::generate(&config.trace_config())?);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Result<ScenarioResult, Error>>>> =
        std::sync::Mutex::new((0..scenarios.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, scenarios.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(scenario) = scenarios.get(i) else { break };
                    let result = run_one(config, *scenario, workload.clone());
                    results.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(result);
                }
            });
        }
    });
    let results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    results
        .into_iter()
        .zip(scenarios)
        .map(|(r, s)| {
            r.unwrap_or_else(|| {
                Err(Error::Runtime {
                    scenario: s.to_string(),
                    message: "the scenario's thread stopped before finishing".to_owned(),
                })
            })
        })
        .collect()
}

/// Runs one scenario on a fresh single-threaded runtime.
pub fn run_one(
    config: &SimConfig,
    scenario: Scenario,
    workload: Arc<Workload>,
) -> Result<ScenarioResult, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| Error::Runtime {
            scenario: scenario.to_string(),
            message: e.to_string(),
        })?;
    runtime.block_on(async { Simulation::new(config, scenario, workload)?.run().await })
}
