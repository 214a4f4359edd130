//! A simulated EC2 Spot cloud for scenario tests, benchmarks, the demo and the
//! discrete-event simulator.
//!
//! - [`market`]: a seeded spot market per pool (instance type × zone): spot prices as a
//!   mean-reverting random walk around the advisor's savings, interruptions as Poisson
//!   processes whose rates follow the Spot Instance Advisor bands (with rebalance
//!   recommendations ahead of some), and finite, regenerating capacity; all on virtual time.
//! - [`cloud`]: [`cloud::SimCloud`], a [`spot_core::cloud::CloudProvider`] over the market with
//!   launch latency, injectable errors, the four allocation strategies implemented for real,
//!   cost accounting and interruption events in the shapes the SQS and IMDS parsers produce.
//! - [`register`] (feature `kube`): [`register::KubeRegistrar`], an observer of the cloud that
//!   makes launched instances Ready Nodes in a Kubernetes API (spot-kube-sim in practice).
//! - [`des`]: the discrete-event simulation of days of cluster life (workload traces, the
//!   real scheduler and consolidation, this cloud on a virtual clock) that compares
//!   allocation strategies; the `spot-sim` binary runs it.
//! - [`rng`]: the small seeded generator behind it all, deterministic on every platform.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cloud;
pub mod des;
pub mod market;
#[cfg(feature = "kube")]
#[cfg_attr(docsrs, doc(cfg(feature = "kube")))]
pub mod register;
pub mod rng;

pub use cloud::{InstanceObserver, NodeTemplate, SimCloud, SimCloudConfig};
pub use market::{Market, MarketConfig, PoolKey, PoolParams};
#[cfg(feature = "kube")]
pub use register::KubeRegistrar;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
