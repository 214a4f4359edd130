//! What runs on each simulated node: its instance metadata service (`spot-imds-sim`) and
//! `spot-nth` in metadata mode (the handler library, as the DaemonSet pod would run it),
//! started when the cloud launches the instance and stopped when it goes away.
//!
//! The handler runs with NTH's `CORDON_ONLY` and `TAINT_NODE`: on a spot notice it taints
//! the node `aws-node-termination-handler/spot-itn` and cordons it within a poll of IMDS,
//! while the provisioner, which heard the same interruption from the queue, drains the node
//! only once the replacement capacity is up. A handler that drained as well would evict the
//! pods before their new node exists.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use spot_aws::imds::{ImdsConfig, ImdsSource};
use spot_aws::imds_sim::{ImdsSim, SimConfig};
use spot_core::clock::TokioClock;
use spot_core::cloud::Instance;
use spot_core::event::SpotAction;
use spot_core::instance_type::{CapacityType, InstanceType};
use spot_core::node::Taint;
use spot_k8s::actions::KubeNodeActions;
use spot_nth::config::RebalancePolicy;
use spot_nth::handler::{Deps, Handler, HandlerConfig, ThisNode};
use spot_nth::metrics::Metrics;
use spot_sim::InstanceObserver;
use tokio::task::JoinHandle;

/// One node's IMDS and handler.
struct Agent {
    imds: ImdsSim,
    task: JoinHandle<()>,
}

/// The node agents of every running instance; an [`InstanceObserver`] of the cloud.
pub struct Agents {
    client: kube::Client,
    poll_interval: Duration,
    metrics: Arc<Metrics>,
    agents: Mutex<HashMap<String, Agent>>,
    failures: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The handler settings of the demo: spot notices taint and cordon (the provisioner
/// drains), rebalance recommendations taint and cordon, no automatic uncordon (the
/// provisioner replaces the node).
pub fn handler_config() -> HandlerConfig {
    HandlerConfig {
        cordon_only: true,
        taint_node: true,
        rebalance: RebalancePolicy::Cordon,
        rebalance_uncordon_after: Duration::ZERO,
        workers: 2,
        ..HandlerConfig::default()
    }
}

impl Agents {
    /// Agents acting through `client`, polling IMDS every `poll_interval`; every handler
    /// counts into `metrics`.
    pub fn new(client: kube::Client, poll_interval: Duration, metrics: Arc<Metrics>) -> Agents {
        Agents {
            client,
            poll_interval,
            metrics,
            agents: Mutex::new(HashMap::new()),
            failures: Mutex::new(Vec::new()),
        }
    }

    /// The handlers' metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// How many nodes have an agent.
    pub fn len(&self) -> usize {
        lock(&self.agents).len()
    }

    /// Whether no node has an agent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Agents that failed to start.
    pub fn failures(&self) -> Vec<String> {
        lock(&self.failures).clone()
    }

    /// Serves a spot interruption notice on the instance's IMDS, due `notice` from now;
    /// whether the instance has an agent.
    pub fn spot_notice(&self, instance_id: &str, notice: Duration) -> bool {
        let agents = lock(&self.agents);
        let Some(agent) = agents.get(instance_id) else {
            return false;
        };
        agent.imds.trigger_spot_itn(SpotAction::Terminate, notice);
        true
    }

    /// Serves a rebalance recommendation on the instance's IMDS; whether it has an agent.
    pub fn rebalance(&self, instance_id: &str) -> bool {
        let agents = lock(&self.agents);
        let Some(agent) = agents.get(instance_id) else {
            return false;
        };
        agent.imds.trigger_rebalance();
        true
    }

    /// Stops every agent.
    pub fn stop(&self) {
        for (_, agent) in lock(&self.agents).drain() {
            agent.task.abort();
        }
    }

    async fn start(&self, instance: &Instance, instance_type: &InstanceType) -> Result<Agent, String> {
        let node = instance.private_dns_name.clone();
        let config = SimConfig {
            instance_id: instance.id.clone(),
            instance_type: instance_type.name.clone(),
            availability_zone: instance.zone.clone(),
            local_hostname: node.clone(),
            instance_life_cycle: match instance.capacity_type {
                CapacityType::Spot => "spot".into(),
                CapacityType::OnDemand => "on-demand".into(),
            },
            ..SimConfig::default()
        };
        let running = ImdsSim::start(config, ([127, 0, 0, 1], 0).into())
            .await
            .map_err(|e| format!("IMDS simulator of {}: {e}", instance.id))?;
        let source = ImdsSource::new(&ImdsConfig {
            endpoint: running.url(),
            poll_interval: self.poll_interval,
            ..ImdsConfig::default()
        })
        .map_err(|e| format!("IMDS client of {}: {e}", instance.id))?;
        let handler = Handler::new(
            handler_config(),
            Deps {
                source: Arc::new(source),
                nodes: Arc::new(KubeNodeActions::new(self.client.clone())),
                lookup: Arc::new(ThisNode(node)),
                lifecycle: None,
                webhook: None,
                metrics: self.metrics.clone(),
                clock: Arc::new(TokioClock::new()),
            },
        );
        let imds = running.sim().clone();
        let task = tokio::spawn(async move {
            // The simulator serves as long as this task holds it.
            let _running = running;
            handler.run(std::future::pending()).await;
        });
        Ok(Agent { imds, task })
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait]
impl InstanceObserver for Agents {
    async fn launched(
        &self,
        instance: &Instance,
        instance_type: &InstanceType,
        _labels: &BTreeMap<String, String>,
        _taints: &[Taint],
    ) {
        match self.start(instance, instance_type).await {
            Ok(agent) => {
                lock(&self.agents).insert(instance.id.clone(), agent);
            }
            Err(e) => lock(&self.failures).push(e),
        }
    }

    async fn terminated(&self, instance_id: &str) {
        if let Some(agent) = lock(&self.agents).remove(instance_id) {
            agent.task.abort();
        }
    }
}
