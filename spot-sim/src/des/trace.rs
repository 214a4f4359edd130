//! Workload traces: Deployments whose replica counts follow a seeded trace over virtual time.
//!
//! A [`Workload`] is a list of [`Deployment`]s, each with a pod shape (CPU and memory
//! requests) and a replica count that is a pure function of time, [`Workload::replicas`]:
//!
//! - **steady**: the base count, with a ±5 % wobble that changes every hour;
//! - **diurnal**: `base × (1 + a·cos(2π(t − peak)/24 h))`, the amplitude `a` in `[0.3, 0.7]`
//!   and the peak hour around 14:00 (± 3 h) per Deployment, so the cluster breathes daily;
//! - **bursty**: the base count, multiplied during spikes: cluster-wide bursts (about two a
//!   day, each hitting a random 30 % of the Deployments ×1.5–3 for 10–45 minutes) and each
//!   Deployment's own spikes (about one a day, ×1.5–4 for 5–30 minutes).
//!
//! [`Workload::generate`] draws the Deployments from the seed and scales the base counts so
//! that the peak of the trace requests about [`Scale::Nodes`] × [`NODE_MILLICORES`] of CPU, or
//! holds [`Scale::Pods`] pods. Everything is deterministic on every platform: draws come
//! from [`crate::rng::SimRng`] streams and the cosine is computed with basic IEEE operations.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rng::SimRng;

/// The CPU one node holds in the scaling rule of [`Scale::Nodes`], in millicores: an
/// 8-vCPU node (the largest size of the default NodePool) less DaemonSets and kubelet
/// reservations, about 85 % packed.
pub const NODE_MILLICORES: i64 = 6_500;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A trace name that is not `steady`, `diurnal` or `bursty`.
    #[error("trace {0:?}: expected steady, diurnal or bursty")]
    Kind(String),
    /// A scale of zero.
    #[error("trace scale {field} = {value}: must be at least 1")]
    Scale {
        /// `nodes` or `pods`.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// A step that is zero or a horizon shorter than a step.
    #[error("trace {field} = {value:?}: {message}")]
    Time {
        /// `step` or `horizon`.
        field: &'static str,
        /// The value.
        value: Duration,
        /// What is expected.
        message: &'static str,
    },
}

/// The shape of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceKind {
    /// Constant load with a small hourly wobble.
    Steady,
    /// A daily sine.
    Diurnal,
    /// A base load with cluster-wide and per-Deployment spikes.
    Bursty,
}

impl TraceKind {
    /// The name: `steady`, `diurnal` or `bursty`.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceKind::Steady => "steady",
            TraceKind::Diurnal => "diurnal",
            TraceKind::Bursty => "bursty",
        }
    }
}

impl fmt::Display for TraceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TraceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<TraceKind, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "steady" => Ok(TraceKind::Steady),
            "diurnal" => Ok(TraceKind::Diurnal),
            "bursty" => Ok(TraceKind::Bursty),
            _ => Err(Error::Kind(s.to_owned())),
        }
    }
}

/// How big the workload is at its peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scale {
    /// About this many nodes: the peak requests `nodes × NODE_MILLICORES` of CPU.
    Nodes(u64),
    /// This many pods at the peak.
    Pods(u64),
}

/// What [`Workload::generate`] draws from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceConfig {
    /// The shape.
    pub kind: TraceKind,
    /// The size at the peak.
    pub scale: Scale,
    /// The seed of every draw.
    pub seed: u64,
    /// How long the trace runs (spikes are drawn over it; the peak is measured over it).
    pub horizon: Duration,
    /// How often Deployments are rescaled (default 5 minutes, as an autoscaler would).
    pub step: Duration,
}

impl TraceConfig {
    /// A trace of `kind` at `scale` over `horizon`, rescaled every 5 minutes.
    pub fn new(kind: TraceKind, scale: Scale, seed: u64, horizon: Duration) -> TraceConfig {
        TraceConfig {
            kind,
            scale,
            seed,
            horizon,
            step: Duration::from_secs(300),
        }
    }
}

/// A period during which a Deployment runs more replicas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spike {
    /// When it starts.
    pub start: Duration,
    /// How long it lasts.
    pub duration: Duration,
    /// The replica multiplier.
    pub factor: f64,
}

/// One Deployment of the trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Its name (`app-0042`), also the pods' `app` label.
    pub name: String,
    /// CPU request of each pod, millicores.
    pub cpu_millis: i64,
    /// Memory request of each pod, bytes.
    pub memory_bytes: i64,
    /// Replicas before the trace's modulation.
    pub base: f64,
    /// Diurnal amplitude (0 for other traces).
    pub amplitude: f64,
    /// Diurnal peak, hours after midnight of day 0.
    pub peak_hour: f64,
    /// Spikes, in time order (bursty traces).
    pub spikes: Vec<Spike>,
}

/// A generated workload; see the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// What it was generated from.
    pub config: TraceConfig,
    /// The Deployments.
    pub deployments: Vec<Deployment>,
}

const GIB: i64 = 1 << 30;
const HOUR: f64 = 3600.0;

/// Pod CPU requests (millicores) and their weights.
const CPU_SHAPES: [(i64, u64); 6] = [(250, 2), (500, 4), (1000, 5), (1500, 3), (2000, 3), (3000, 1)];
/// Memory per vCPU (GiB) and their weights: compute-, general- and memory-shaped pods.
const MEMORY_PER_CPU: [(i64, u64); 3] = [(2, 3), (4, 5), (8, 2)];

fn weighted<T: Copy>(rng: &mut SimRng, choices: &[(T, u64)]) -> T {
    let total: u64 = choices.iter().map(|c| c.1).sum();
    let mut pick = rng.below(total);
    for (value, weight) in choices {
        if pick < *weight {
            return *value;
        }
        pick -= weight;
    }
    choices[choices.len() - 1].0
}

fn uniform(rng: &mut SimRng, low: f64, high: f64) -> f64 {
    low + (high - low) * rng.next_f64()
}

/// `cos(x)` with IEEE basic operations only (deterministic on every platform): reduction to
/// `[−π, π]`, then to `[0, π/2]` by symmetry, then a Taylor polynomial (error below 1e-12).
pub fn cos(x: f64) -> f64 {
    const TAU: f64 = std::f64::consts::TAU;
    const PI: f64 = std::f64::consts::PI;
    const HALF_PI: f64 = std::f64::consts::FRAC_PI_2;
    if !x.is_finite() {
        return f64::NAN;
    }
    let mut r = x - TAU * (x / TAU).round();
    r = r.abs();
    let (r, sign) = if r > HALF_PI { (PI - r, -1.0) } else { (r, 1.0) };
    let r2 = r * r;
    // cos r = Σ (−1)^k r^{2k} / (2k)!, k ≤ 10 (r ≤ π/2).
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..=10u32 {
        let k = f64::from(k);
        term *= -r2 / ((2.0 * k - 1.0) * (2.0 * k));
        sum += term;
    }
    sign * sum
}

/// A uniform draw in `[−1, 1]` fixed by the seed, the Deployment and the hour.
fn wobble(seed: u64, deployment: usize, hour: u64) -> f64 {
    let mut rng = SimRng::new(crate::rng::splitmix64(
        seed ^ crate::rng::splitmix64(deployment as u64) ^ hour.wrapping_mul(0x9e37_79b9),
    ));
    2.0 * rng.next_f64() - 1.0
}

impl Workload {
    /// Draws the Deployments and scales them to the configured peak.
    pub fn generate(config: &TraceConfig) -> Result<Workload, Error> {
        if config.step.is_zero() {
            return Err(Error::Time {
                field: "step",
                value: config.step,
                message: "must be positive",
            });
        }
        if config.horizon < config.step {
            return Err(Error::Time {
                field: "horizon",
                value: config.horizon,
                message: "must be at least one step",
            });
        }
        let target_pods = match config.scale {
            Scale::Nodes(0) => {
                return Err(Error::Scale {
                    field: "nodes",
                    value: 0,
                });
            }
            Scale::Pods(0) => {
                return Err(Error::Scale {
                    field: "pods",
                    value: 0,
                });
            }
            // About 4.5 pods per 8-vCPU node with the default shapes.
            Scale::Nodes(n) => n.saturating_mul(NODE_MILLICORES as u64) / 1_400,
            Scale::Pods(p) => p,
        };
        // About 50 replicas per Deployment at the peak, at least 4 Deployments.
        let count = (target_pods / 50).clamp(4, 5_000) as usize;
        let mut rng = SimRng::stream(config.seed, &format!("trace/{}", config.kind));
        let horizon = config.horizon.as_secs_f64();
        let mut deployments: Vec<Deployment> = (0..count)
            .map(|i| {
                let cpu = weighted(&mut rng, &CPU_SHAPES);
                let per_cpu = weighted(&mut rng, &MEMORY_PER_CPU);
                // 0.8 × the ratio: pods leave room for the node's own reservations.
                let memory = cpu * per_cpu * GIB / 1000 * 4 / 5;
                let (amplitude, peak_hour) = match config.kind {
                    TraceKind::Diurnal => (uniform(&mut rng, 0.3, 0.7), uniform(&mut rng, 11.0, 17.0)),
                    _ => (0.0, 0.0),
                };
                let mut spikes = Vec::new();
                if config.kind == TraceKind::Bursty {
                    let mut t = rng.exponential(1.0 / (24.0 * HOUR));
                    while t < horizon {
                        spikes.push(Spike {
                            start: Duration::from_secs_f64(t),
                            duration: Duration::from_secs_f64(uniform(&mut rng, 300.0, 1800.0)),
                            factor: uniform(&mut rng, 1.5, 4.0),
                        });
                        t += rng.exponential(1.0 / (24.0 * HOUR));
                    }
                }
                Deployment {
                    name: format!("app-{i:04}"),
                    cpu_millis: cpu,
                    memory_bytes: memory,
                    base: 1.0 + rng.below(100) as f64,
                    amplitude,
                    peak_hour,
                    spikes,
                }
            })
            .collect();
        if config.kind == TraceKind::Bursty {
            // Cluster-wide bursts: about two a day.
            let mut t = rng.exponential(1.0 / (12.0 * HOUR));
            while t < horizon {
                let duration = Duration::from_secs_f64(uniform(&mut rng, 600.0, 2700.0));
                let factor = uniform(&mut rng, 1.5, 3.0);
                for d in &mut deployments {
                    if rng.chance(0.3) {
                        d.spikes.push(Spike {
                            start: Duration::from_secs_f64(t),
                            duration,
                            factor,
                        });
                    }
                }
                t += rng.exponential(1.0 / (12.0 * HOUR));
            }
            for d in &mut deployments {
                d.spikes.sort_by_key(|s| s.start);
            }
        }
        let mut workload = Workload {
            config: config.clone(),
            deployments,
        };
        // Scale the bases so that the peak matches the target (twice: rounding moves it).
        for _ in 0..2 {
            let (peak_pods, peak_cpu) = workload.peak();
            let factor = match config.scale {
                Scale::Nodes(n) => (n as f64 * NODE_MILLICORES as f64) / peak_cpu.max(1) as f64,
                Scale::Pods(p) => p as f64 / peak_pods.max(1) as f64,
            };
            for d in &mut workload.deployments {
                d.base = (d.base * factor).max(0.5);
            }
        }
        Ok(workload)
    }

    /// The replica count of Deployment `index` at virtual time `t` (0 for an unknown index).
    pub fn replicas(&self, index: usize, t: Duration) -> u32 {
        let Some(d) = self.deployments.get(index) else {
            return 0;
        };
        let hours = t.as_secs_f64() / HOUR;
        let level = match self.config.kind {
            TraceKind::Steady => d.base * (1.0 + 0.05 * wobble(self.config.seed, index, hours as u64)),
            TraceKind::Diurnal => {
                let phase = std::f64::consts::TAU * (hours - d.peak_hour) / 24.0;
                d.base * (1.0 + d.amplitude * cos(phase))
            }
            TraceKind::Bursty => {
                let factor = d
                    .spikes
                    .iter()
                    .take_while(|s| s.start <= t)
                    .filter(|s| t < s.start + s.duration)
                    .map(|s| s.factor)
                    .fold(1.0, f64::max);
                d.base * factor
            }
        };
        level.round().max(0.0) as u32
    }

    /// The times the replica counts are evaluated at: every step from 0 to the horizon.
    pub fn steps(&self) -> impl Iterator<Item = Duration> + '_ {
        let step = self.config.step;
        let n = (self.config.horizon.as_nanos() / step.as_nanos()) as u32;
        (0..=n).map(move |i| step * i)
    }

    /// Pods and requested CPU (millicores) at `t`.
    pub fn load(&self, t: Duration) -> (u64, i64) {
        (0..self.deployments.len()).fold((0, 0), |(pods, cpu), i| {
            let r = self.replicas(i, t);
            (
                pods + u64::from(r),
                cpu + i64::from(r) * self.deployments[i].cpu_millis,
            )
        })
    }

    /// The largest pod count and the largest requested CPU over the steps (each at its own
    /// step).
    pub fn peak(&self) -> (u64, i64) {
        self.steps()
            .map(|t| self.load(t))
            .fold((0, 0), |(p, c), (pods, cpu)| (p.max(pods), c.max(cpu)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEEK: Duration = Duration::from_secs(7 * 86_400);

    fn workload(kind: TraceKind, scale: Scale, seed: u64) -> Workload {
        Workload::generate(&TraceConfig::new(kind, scale, seed, WEEK)).unwrap()
    }

    #[test]
    fn cosine_matches_the_library_one() {
        for i in -2000..2000 {
            let x = f64::from(i) * 0.0137;
            assert!((cos(x) - x.cos()).abs() < 1e-12, "{x}");
        }
        assert!(cos(f64::INFINITY).is_nan());
    }

    #[test]
    fn traces_are_deterministic_and_scaled_to_the_peak() {
        for kind in [TraceKind::Steady, TraceKind::Diurnal, TraceKind::Bursty] {
            let a = workload(kind, Scale::Nodes(200), 7);
            assert_eq!(a, workload(kind, Scale::Nodes(200), 7), "{kind}");
            assert_ne!(a, workload(kind, Scale::Nodes(200), 8), "{kind}");
            let (_, cpu) = a.peak();
            let target = 200 * NODE_MILLICORES;
            assert!(
                (cpu - target).abs() * 100 < target * 3,
                "{kind}: peak {cpu} m vs {target} m"
            );
            let pods = workload(kind, Scale::Pods(5_000), 7).peak().0;
            assert!(pods.abs_diff(5_000) < 150, "{kind}: {pods} pods at the peak");
        }
    }

    #[test]
    fn shapes_follow_the_kind() {
        let hour = |h: u64| Duration::from_secs(h * 3600);
        // Steady: within ±5 % (and rounding) of the base, at all times.
        let steady = workload(TraceKind::Steady, Scale::Pods(2_000), 3);
        for d in 0..steady.deployments.len() {
            let base = steady.deployments[d].base;
            for h in 0..(7 * 24) {
                let r = f64::from(steady.replicas(d, hour(h)));
                assert!(
                    (r - base).abs() <= 0.05 * base + 0.5,
                    "{d} at {h} h: {r} vs {base}"
                );
            }
        }
        // Diurnal: the afternoon is busier than the night, every day.
        let diurnal = workload(TraceKind::Diurnal, Scale::Pods(2_000), 3);
        for day in 0..7 {
            let (night, _) = diurnal.load(hour(day * 24 + 2));
            let (afternoon, _) = diurnal.load(hour(day * 24 + 14));
            assert!(
                afternoon as f64 > 1.5 * night as f64,
                "day {day}: {afternoon} vs {night}"
            );
        }
        // Bursty: spikes lift the load well above the base for a while, and it comes back.
        let bursty = workload(TraceKind::Bursty, Scale::Pods(2_000), 3);
        let loads: Vec<u64> = bursty.steps().map(|t| bursty.load(t).0).collect();
        let min = *loads.iter().min().unwrap();
        let max = *loads.iter().max().unwrap();
        assert!(max as f64 > 1.3 * min as f64, "{min}..{max}");
        let base: f64 = bursty.deployments.iter().map(|d| d.base.round()).sum();
        assert!((min as f64) <= base * 1.01, "{min} vs base {base}");
        assert!(bursty.deployments.iter().any(|d| !d.spikes.is_empty()));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!("weekly".parse::<TraceKind>(), Err(Error::Kind("weekly".into())));
        assert_eq!(" Diurnal".parse::<TraceKind>(), Ok(TraceKind::Diurnal));
        let err =
            Workload::generate(&TraceConfig::new(TraceKind::Steady, Scale::Nodes(0), 1, WEEK)).unwrap_err();
        assert_eq!(err.to_string(), "trace scale nodes = 0: must be at least 1");
        let mut config = TraceConfig::new(TraceKind::Steady, Scale::Pods(10), 1, WEEK);
        config.step = Duration::ZERO;
        assert!(
            Workload::generate(&config)
                .unwrap_err()
                .to_string()
                .contains("step")
        );
        // Unknown Deployments have no replicas.
        let w = workload(TraceKind::Steady, Scale::Pods(100), 1);
        assert_eq!(w.replicas(10_000, Duration::ZERO), 0);
    }
}
