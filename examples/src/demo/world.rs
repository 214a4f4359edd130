//! The simulated world, all in process on 127.0.0.1: spot-kube-sim (API server, scheduler,
//! kubelet, ReplicaSet controller), the simulated EC2 Spot cloud registering its instances
//! as Nodes, one IMDS and `spot-nth` per node, the interruption queue between the cloud and
//! the provisioner, and the provisioner with its interruption controller.
//!
//! Every duration of the simulated world is the real one divided by the speed: the cloud's
//! virtual clock runs `speed` times faster than tokio's, node boot and API latency are
//! shortened as much, and the provisioner reads the cloud's clock. A two-minute spot notice
//! lasts 12 s at the default speed of 10.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, Config};
use spot_core::event::{EventKind, InterruptionEvent};
use spot_core::node::DrainOptions;
use spot_core::source::MemorySource;
use spot_k8s::sim::{RunningSim, Sim, SimConfig};
use spot_provisioner::batcher::BatchWindow;
use spot_provisioner::interruption::{Interruption, InterruptionSettings};
use spot_provisioner::{InstanceCatalog, Provisioner, Settings};
use spot_sim::cloud::SimClock;
use spot_sim::register::RegistrarConfig;
use spot_sim::{KubeRegistrar, MarketConfig, SimCloud, SimCloudConfig};
use tokio::task::JoinHandle;

use super::agents::Agents;
use super::{Options, Timeline};

/// How often the event bridge moves the cloud's interruption events (real time).
const BRIDGE_INTERVAL: Duration = Duration::from_millis(50);

/// One interruption event the cloud published, as the bridge delivered it.
#[derive(Debug, Clone)]
pub struct Published {
    /// The event (SQS shape).
    pub event: InterruptionEvent,
    /// Whether the instance's IMDS served it too.
    pub imds: bool,
    /// Whether the reclaim at the notice's deadline was reported.
    pub reclaimed: bool,
}

/// The running world; dropping it stops everything.
pub struct World {
    /// The API server simulator.
    pub kube: RunningSim,
    /// A client of it.
    pub client: Client,
    /// The simulated cloud.
    pub cloud: Arc<SimCloud>,
    /// The provisioner.
    pub provisioner: Arc<Provisioner>,
    /// The interruption queue (EventBridge to SQS, in memory).
    pub queue: Arc<MemorySource>,
    /// The node agents (IMDS and spot-nth).
    pub agents: Arc<Agents>,
    /// The timeline.
    pub timeline: Timeline,
    /// What the cloud published, in order.
    pub published: Arc<Mutex<Vec<Published>>>,
    /// The registrar.
    pub registrar: KubeRegistrar,
    speed: f64,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for World {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.agents.stop();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `d` of simulated time in real time at `speed`, at least 10 ms.
pub fn real(d: Duration, speed: f64) -> Duration {
    d.div_f64(speed).max(Duration::from_millis(10))
}

impl World {
    /// Starts everything but the workload; the NodePool and node class are applied.
    pub async fn start(options: &Options, timeline: impl FnOnce(Arc<SimCloud>) -> Timeline) -> Result<World> {
        let speed = options.speed;
        let at = |d: Duration| real(d, speed);

        // The cluster.
        let kube = Sim::new(SimConfig {
            kubelet: true,
            scheduler: true,
            replicaset_controller: true,
            ..SimConfig::default()
        })
        .start(([127, 0, 0, 1], 0).into())
        .await
        .context("starting spot-kube-sim")?;
        let mut config = Config::new(kube.url().parse().context("the simulator's URL")?);
        config.default_retry = false;
        let client = Client::try_from(config).context("a client of spot-kube-sim")?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for (_, crd) in spot_provisioner::api::crds() {
            crds.create(&PostParams::default(), &crd)
                .await
                .context("creating the provisioner's CRDs")?;
        }
        super::workload::apply_pool(&client).await?;

        // The cloud: scripted interruptions only (no drawn ones), virtual time from now.
        let now = time::OffsetDateTime::now_utc();
        let cloud = Arc::new(
            SimCloud::offline(
                SimCloudConfig {
                    api_latency: at(Duration::from_secs(1)),
                    clock: SimClock::Tokio { speed },
                    ..SimCloudConfig::default()
                },
                MarketConfig {
                    seed: options.seed,
                    start: now.replace_nanosecond(0).unwrap_or(now),
                    band_monthly_rates: [0.0; 5],
                    ..MarketConfig::default()
                },
            )
            .context("the simulated cloud")?,
        );
        let timeline = timeline(cloud.clone());
        let registrar = KubeRegistrar::new(
            client.clone(),
            RegistrarConfig {
                registration_delay: at(Duration::from_secs(20)),
                ready_delay: at(Duration::from_secs(5)),
                clock: cloud.clone(),
                ..RegistrarConfig::default()
            },
        )
        .context("the node registrar")?;
        cloud.add_observer(Arc::new(registrar.clone()));
        let agents = Arc::new(Agents::new(
            client.clone(),
            Duration::from_millis(500),
            Arc::new(spot_nth::metrics::Metrics::new()),
        ));
        cloud.add_observer(agents.clone());

        // The provisioner, on the cloud's clock, and its interruption controller on the queue.
        let catalog = Arc::new(
            InstanceCatalog::with_prices("us-east-1", cloud.clone()).context("the instance catalog")?,
        );
        let provisioner = Arc::new(
            Provisioner::builder(client.clone(), cloud.clone(), catalog)
                .clock(cloud.clone())
                .settings(Settings {
                    batch: BatchWindow {
                        idle: at(Duration::from_secs(1)).max(Duration::from_millis(100)),
                        max: at(Duration::from_secs(10)).max(Duration::from_secs(1)),
                    },
                    resync: at(Duration::from_secs(2)).max(Duration::from_millis(100)),
                    drain: DrainOptions {
                        timeout: Duration::from_secs(60),
                        eviction_retry: Duration::from_millis(200),
                        ..DrainOptions::default()
                    },
                    ..Settings::default()
                })
                .build()
                .context("the provisioner")?,
        );
        let queue = Arc::new(MemorySource::new());
        let interruption =
            Interruption::new(provisioner.clone(), queue.clone()).settings(InterruptionSettings {
                // The notice (2 min) less this reserve: the longest wait for the replacement.
                drain_reserve: Duration::from_secs(30),
                replacement_wait: at(Duration::from_secs(90)),
                resync: at(Duration::from_secs(5)).max(Duration::from_millis(100)),
                retry: Duration::from_millis(200),
                ..InterruptionSettings::default()
            });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn({
            let p = provisioner.clone();
            let t = timeline.clone();
            async move {
                if let Err(e) = p.run(std::future::pending()).await {
                    t.event(&format!("provisioner stopped: {e}"));
                }
            }
        }));
        tasks.push(tokio::spawn({
            let t = timeline.clone();
            async move {
                if let Err(e) = interruption.run(std::future::pending()).await {
                    t.event(&format!("interruption controller stopped: {e}"));
                }
            }
        }));
        let published = Arc::new(Mutex::new(Vec::new()));
        tasks.push(tokio::spawn(bridge(
            cloud.clone(),
            queue.clone(),
            agents.clone(),
            timeline.clone(),
            published.clone(),
            speed,
        )));
        Ok(World {
            kube,
            client,
            cloud,
            provisioner,
            queue,
            agents,
            timeline,
            published,
            registrar,
            speed,
            tasks,
        })
    }

    /// `d` of simulated time in real time.
    pub fn real(&self, d: Duration) -> Duration {
        real(d, self.speed)
    }

    /// The speed.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// A kubeconfig for the API server.
    pub fn kubeconfig(&self) -> String {
        Sim::kubeconfig(self.kube.addr())
    }
}

/// The node name (private DNS name) of an instance, or its id.
fn describe(cloud: &SimCloud, instance_id: &str) -> String {
    match cloud.instance(instance_id) {
        Some(i) => format!(
            "{} ({} {} {}, node {})",
            instance_id,
            i.instance.instance_type,
            i.instance.capacity_type.as_str(),
            i.instance.zone,
            i.instance.private_dns_name
        ),
        None => instance_id.to_owned(),
    }
}

/// EventBridge: moves the cloud's interruption events to the queue (one message each) and
/// to the instance's IMDS, and reports reclaims.
async fn bridge(
    cloud: Arc<SimCloud>,
    queue: Arc<MemorySource>,
    agents: Arc<Agents>,
    timeline: Timeline,
    published: Arc<Mutex<Vec<Published>>>,
    speed: f64,
) {
    loop {
        tokio::time::sleep(BRIDGE_INTERVAL).await;
        for event in cloud.interruptions().await {
            let who = describe(&cloud, &event.instance_id);
            let imds = match &event.kind {
                EventKind::SpotInterruption { deadline, .. } => {
                    let left = (*deadline - spot_core::clock::Clock::now(&*cloud)).unsigned_abs();
                    let text = format!(
                        "EC2: spot interruption notice for {who}, reclaim at {} → queue + IMDS",
                        timeline.virtual_label(cloud.elapsed() + left)
                    );
                    timeline.event(&text);
                    agents.spot_notice(&event.instance_id, real(left, speed).max(Duration::from_secs(1)))
                }
                EventKind::RebalanceRecommendation => {
                    timeline.event(&format!("EC2: rebalance recommendation for {who} → queue + IMDS"));
                    agents.rebalance(&event.instance_id)
                }
                other => {
                    timeline.event(&format!("EC2: {} for {who} → queue", other.name()));
                    false
                }
            };
            queue.push(vec![event.clone()]).await;
            lock(&published).push(Published {
                event,
                imds,
                reclaimed: false,
            });
        }
        // The deadlines that passed.
        let now = spot_core::clock::Clock::now(&*cloud);
        let due: Vec<(usize, String, time::OffsetDateTime)> = lock(&published)
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.reclaimed)
            .filter_map(|(i, p)| match p.event.kind {
                EventKind::SpotInterruption { deadline, .. } if deadline <= now => {
                    Some((i, p.event.instance_id.clone(), deadline))
                }
                _ => None,
            })
            .collect();
        for (i, id, deadline) in due {
            let Some(instance) = cloud.instance(&id) else {
                continue;
            };
            let text = match instance.terminated_at {
                _ if instance.interrupted => format!("EC2: reclaimed {id} at the deadline"),
                Some(ended) => format!(
                    "EC2: deadline of {id}: already terminated by the provisioner {:.0} s before",
                    (deadline - ended).as_seconds_f64().max(0.0)
                ),
                None => format!("EC2: deadline of {id} passed and it still runs"),
            };
            timeline.event(&text);
            if let Some(p) = lock(&published).get_mut(i) {
                p.reclaimed = true;
            }
        }
    }
}
