//! The demo's summary, computed from the cluster, the cloud and the recorded watches.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use spot_core::event::EventKind;
use spot_core::instance_type::CapacityType;
use spot_core::price::PriceSource;
use tokio::time::Instant;

use super::recorder::Recorder;
use super::world::{World, lock};
use super::{Kind, Options, Victim, clock_label, observe, workload};

/// Running nodes of one instance type and capacity type.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeGroup {
    /// Instance type.
    pub instance_type: String,
    /// `spot` or `on-demand`.
    pub capacity_type: String,
    /// How many.
    pub count: usize,
    /// What they pay, USD per hour.
    pub cost_per_hour: f64,
    /// What they would pay on demand, USD per hour.
    pub on_demand_per_hour: f64,
}

/// One scripted disruption and how it was handled.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The node.
    pub victim: Victim,
    /// Its offering: instance type and zone.
    pub offering: String,
    /// Its NodeClaim was drained and deleted.
    pub replaced: bool,
    /// The replacements: NodeClaim, instance type, capacity type, zone.
    pub replacements: Vec<String>,
    /// Whether every replacement was initialized before the first eviction (`None`: no pod
    /// was evicted, or no replacement was needed).
    pub ready_before_first_eviction: Option<bool>,
    /// Pods evicted from the node.
    pub evicted: usize,
    /// Pods still on the node when EC2 reclaimed it (lost).
    pub lost: usize,
    /// Whether spot-nth, hearing it from IMDS, tainted and cordoned the node.
    pub nth: bool,
}

/// What the demo did.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The options.
    pub options: Options,
    /// Real time from the start.
    pub wall: Duration,
    /// Simulated time from the start.
    pub simulated: Duration,
    /// Per Deployment: (name, wanted, running).
    pub apps: Vec<(String, usize, usize)>,
    /// Running nodes by type and capacity type.
    pub nodes: Vec<NodeGroup>,
    /// What the running nodes pay, USD per hour.
    pub cost_per_hour: f64,
    /// What the same nodes would pay on demand, USD per hour.
    pub on_demand_per_hour: f64,
    /// The scripted disruptions.
    pub handled: Vec<Handled>,
    /// Interruption events published to the queue (and served by IMDS).
    pub published: usize,
    /// Messages left in the queue or unacknowledged.
    pub queue_left: usize,
    /// The longest time a pod waited for a node during the scale-up.
    pub longest_pending_scale_up: Duration,
    /// The longest time a pod waited for a node after the scale-up (interruptions).
    pub longest_pending_interruptions: Duration,
    /// Pods lost: Deployments short of running pods, and pods left on nodes that went
    /// away.
    pub pods_lost: usize,
    /// What was lost, in words.
    pub lost: Vec<String>,
    /// Nodes whose agent (IMDS, spot-nth) failed to start.
    pub agent_failures: Vec<String>,
}

impl Summary {
    /// Pods wanted.
    pub fn pods(&self) -> usize {
        self.apps.iter().map(|(_, w, _)| w).sum()
    }

    /// Pods running.
    pub fn running(&self) -> usize {
        self.apps.iter().map(|(_, _, r)| r).sum()
    }

    /// Disruptions the provisioner handled: the node was drained and removed, no pod left
    /// on it.
    pub fn handled_count(&self) -> usize {
        self.handled.iter().filter(|h| h.replaced && h.lost == 0).count()
    }

    /// Disruptions spot-nth acted on through IMDS (a node drained and terminated before the
    /// handler's next poll of IMDS is not: that is not a failure).
    pub fn nth_count(&self) -> usize {
        self.handled.iter().filter(|h| h.nth).count()
    }

    /// What went wrong; empty on success.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.pods_lost > 0 {
            out.push(format!("{} pods lost: {}", self.pods_lost, self.lost.join("; ")));
        }
        if self.handled_count() < self.handled.len() {
            out.push(format!(
                "{} of {} disrupted nodes were not drained and replaced in time",
                self.handled.len() - self.handled_count(),
                self.handled.len()
            ));
        }
        if self.queue_left > 0 {
            out.push(format!("{} queue messages not acknowledged", self.queue_left));
        }
        if !self.agent_failures.is_empty() {
            out.push(format!("node agents failed: {}", self.agent_failures.join("; ")));
        }
        out
    }

    /// The summary as text.
    pub fn render(&self) -> String {
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Summary (seed {}, scale {}, speed ×{}): {:.1} s wall, {} simulated",
            o.seed,
            o.scale,
            o.speed,
            self.wall.as_secs_f64(),
            clock_label(self.simulated).trim_start_matches("T+")
        );
        let apps: Vec<String> = self.apps.iter().map(|(n, w, r)| format!("{n} {r}/{w}")).collect();
        let _ = writeln!(
            s,
            "  pods           {} of {} running ({})",
            self.running(),
            self.pods(),
            apps.join(", ")
        );
        let count: usize = self.nodes.iter().map(|g| g.count).sum();
        let _ = writeln!(s, "  nodes          {count}");
        for g in &self.nodes {
            let _ = writeln!(
                s,
                "    {:>2} × {:<18} {:<10} ${:>7.4}/h  (on-demand ${:.4}/h)",
                g.count, g.instance_type, g.capacity_type, g.cost_per_hour, g.on_demand_per_hour
            );
        }
        let saved = if self.on_demand_per_hour > 0.0 {
            100.0 * (1.0 - self.cost_per_hour / self.on_demand_per_hour)
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "  cost           ${:.3}/h vs ${:.3}/h for the same nodes on demand ({saved:.1} % saved)",
            self.cost_per_hour, self.on_demand_per_hour
        );
        let notices = self
            .handled
            .iter()
            .filter(|h| h.victim.kind == Kind::Notice)
            .count();
        let _ = writeln!(
            s,
            "  interruptions  {} of {} handled without loss ({notices} spot notices, {} rebalance recommendation)",
            self.handled_count(),
            self.handled.len(),
            self.handled.len() - notices
        );
        for h in &self.handled {
            let what = match h.victim.kind {
                Kind::Notice => "spot notice",
                Kind::Rebalance => "rebalance  ",
            };
            let order = match h.ready_before_first_eviction {
                Some(true) => "replacement Ready before the first eviction",
                Some(false) => "drained BEFORE every replacement was Ready",
                None if h.evicted == 0 => "no pod to move",
                None => "pods fit on other nodes, no replacement needed",
            };
            let lost = if h.lost > 0 {
                format!(
                    "; {} LOST: EC2 reclaimed the node before the drain",
                    plural(h.lost, "pod")
                )
            } else {
                String::new()
            };
            let to = if h.replacements.is_empty() {
                String::new()
            } else {
                format!(" → {}", h.replacements.join(", "))
            };
            let _ = writeln!(
                s,
                "    {what} {} ({}): {} moved{to}; {order}{lost}{}",
                h.victim.instance,
                h.offering,
                plural(h.evicted, "pod"),
                if h.nth {
                    "; spot-nth cordoned it from IMDS"
                } else {
                    "; the node was gone before spot-nth's next IMDS poll"
                }
            );
        }
        let _ = writeln!(
            s,
            "  queue          {} messages, {} left unacknowledged",
            self.published, self.queue_left
        );
        let _ = writeln!(
            s,
            "  longest pending {:.1} s during the scale-up, {:.1} s during the interruptions (real time)",
            self.longest_pending_scale_up.as_secs_f64(),
            self.longest_pending_interruptions.as_secs_f64()
        );
        let _ = writeln!(s, "  pods lost      {}", self.pods_lost);
        for l in &self.lost {
            let _ = writeln!(s, "    {l}");
        }
        s
    }
}

/// `n thing` or `n things`.
pub fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// Computes the summary.
pub async fn compute(
    options: &Options,
    world: &World,
    recorder: &Recorder,
    apps: &[workload::App],
    victims: &[Victim],
    origin: Instant,
    scaled_up: Instant,
) -> Result<Summary> {
    let observed = observe(&world.client, apps).await?;
    let mut lost = Vec::new();
    let mut pods_lost = 0;
    for (name, (want, running)) in &observed.apps {
        if running < want {
            pods_lost += want - running;
            lost.push(format!("{name}: {running} of {want} running"));
        }
    }
    if !observed.on_missing_nodes.is_empty() {
        lost.push(format!(
            "left on nodes that went away: {}",
            observed.on_missing_nodes.join(", ")
        ));
    }

    // Nodes and cost.
    let mut groups: BTreeMap<(String, String), NodeGroup> = BTreeMap::new();
    for i in world
        .cloud
        .instances()
        .iter()
        .filter(|i| i.terminated_at.is_none())
    {
        let t = &i.instance.instance_type;
        let on_demand = world
            .cloud
            .on_demand("us-east-1", t)
            .unwrap_or(match i.instance.capacity_type {
                CapacityType::OnDemand => i.price,
                CapacityType::Spot => f64::NAN,
            });
        let g = groups
            .entry((t.clone(), i.instance.capacity_type.as_str().to_owned()))
            .or_insert_with(|| NodeGroup {
                instance_type: t.clone(),
                capacity_type: i.instance.capacity_type.as_str().to_owned(),
                count: 0,
                cost_per_hour: 0.0,
                on_demand_per_hour: 0.0,
            });
        g.count += 1;
        g.cost_per_hour += i.price;
        g.on_demand_per_hour += on_demand;
    }
    let nodes: Vec<NodeGroup> = groups.into_values().collect();

    // Disruptions.
    let handled = recorder.with(|r| {
        victims
            .iter()
            .map(|v| {
                let claim = r.claims.get(&v.claim).cloned().unwrap_or_default();
                let replacements = r.replacements_of(&v.claim);
                // Every replacement must be up: the last one initialized.
                let all_ready = replacements
                    .iter()
                    .map(|(_, c)| c.initialized_rv)
                    .collect::<Option<Vec<u64>>>()
                    .and_then(|rvs| rvs.into_iter().max());
                let first_eviction = r.first_eviction(&v.node);
                let ready_before_first_eviction = match (first_eviction, replacements.is_empty()) {
                    (None, _) | (Some(_), true) => None,
                    (Some(evicted), false) => Some(all_ready.is_some_and(|ready| ready < evicted)),
                };
                Handled {
                    victim: v.clone(),
                    offering: claim
                        .offering
                        .as_ref()
                        .map(|(t, _, z)| format!("{t} {z}"))
                        .unwrap_or_default(),
                    replaced: claim.gone && claim.disrupted.is_some(),
                    replacements: replacements
                        .iter()
                        .map(|(name, c)| match &c.offering {
                            Some((t, ct, z)) => format!("{name} ({t} {ct} {z})"),
                            None => (*name).clone(),
                        })
                        .collect(),
                    ready_before_first_eviction,
                    evicted: r.evicted_from(&v.node),
                    lost: observed
                        .on_missing_nodes
                        .iter()
                        .filter(|p| p.ends_with(&format!(" on {}", v.node)))
                        .count(),
                    nth: r.nth.contains_key(&v.node),
                }
            })
            .collect::<Vec<_>>()
    });

    // Pending times.
    let now = Instant::now();
    let (scale_up, interruptions) = recorder.with(|r| {
        let mut before = Duration::ZERO;
        let mut after = Duration::ZERO;
        for p in r.pods.values() {
            let waited = p.bound.as_ref().map_or(now, |(at, _)| *at) - p.first_seen;
            if p.first_seen < scaled_up {
                before = before.max(waited);
            } else {
                after = after.max(waited);
            }
        }
        (before, after)
    });

    let published = lock(&world.published)
        .iter()
        .filter(|p| {
            matches!(
                p.event.kind,
                EventKind::SpotInterruption { .. } | EventKind::RebalanceRecommendation
            )
        })
        .count();
    let queue_left = world.queue.pending().await + world.queue.unacknowledged().await.len();
    Ok(Summary {
        options: options.clone(),
        wall: origin.elapsed(),
        simulated: world.cloud.elapsed(),
        apps: observed
            .apps
            .iter()
            .map(|(n, (w, r))| (n.clone(), *w, *r))
            .collect(),
        cost_per_hour: nodes.iter().map(|g| g.cost_per_hour).sum(),
        on_demand_per_hour: nodes.iter().map(|g| g.on_demand_per_hour).sum(),
        nodes,
        handled,
        published,
        queue_left,
        longest_pending_scale_up: scale_up,
        longest_pending_interruptions: interruptions,
        pods_lost: pods_lost.max(observed.on_missing_nodes.len()),
        lost,
        agent_failures: world.agents.failures(),
    })
}
