//! An embeddable Karpenter-style provisioner.
//!
//! - [`api`]: the custom resources (`NodePool`, `NodeClaim` in `karpenter.sh/v1`,
//!   `SpotNodeClass` in `spot.dev/v1`) and their CRDs.
//! - [`manifests`]: workloads, NodePools and nodes read from YAML files (controllers
//!   expanded into their pods), to plan without a cluster.
//! - [`plan`]: offline planning (`spot-provisioner plan`): the same scheduling and packing
//!   on manifests and a price table, with the LP lower bound.
//! - [`provisioner`]: the controller ([`Provisioner`], built with [`Provisioner::builder`]):
//!   pending pods to NodeClaims to launches, and the NodeClaim lifecycle.
//! - [`disruption`]: the disruption controller ([`disruption::Disruption`]): consolidation,
//!   drift, expiration and `terminationGracePeriod`, within budgets and PodDisruptionBudgets;
//!   [`interruption`]: the interruption controller ([`interruption::Interruption`]): spot
//!   interruptions and other terminal events replaced before the drain, rebalance policies.
//! - [`batcher`]: the 1 s idle / 10 s max batch window; [`cluster`]: one loop's read of the
//!   cluster; [`template`]: what can be launched, per NodePool; [`launch`]: candidate
//!   ordering, truncation and same-call fallback; [`metrics`]: Prometheus metrics;
//!   [`events`]: Kubernetes Events on pods and NodeClaims.
//!
//! This crate does not pick a Kubernetes version: enable one `k8s-openapi` version feature in
//! the final binary (or dev-dependencies), as k8s-openapi requires.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod api;
pub mod batcher;
pub mod cluster;
pub mod disruption;
pub mod events;
pub mod interruption;
pub mod launch;
pub mod manifests;
pub mod metrics;
pub mod plan;
pub mod provisioner;
pub mod template;

pub use provisioner::{Provisioner, ProvisionerBuilder, Settings};
pub use template::InstanceCatalog;
