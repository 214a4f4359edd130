//! Kubernetes backends for `spot-core`.
//!
//! - [`actions`]: [`actions::KubeNodeActions`], the kube-rs implementation of
//!   [`spot_core::node::NodeActions`] (cordon, conflict-safe taints, labels, annotations, and
//!   drains through the policy/v1 Eviction API), with a shared client-side
//!   [`ratelimit::RateLimiter`] and Kubernetes Events.
//! - [`nodes`]: finding a node by instance id through `spec.providerID`.
//! - [`convert`]: k8s-openapi pods and nodes to the scheduling view of `spot-core`
//!   ([`spot_core::pod::PodSpec`], [`spot_core::scheduling::ExistingNode`]), and which pending
//!   pods are provisionable.
//! - [`lease`]: leader election on a coordination.k8s.io Lease ([`lease::LeaseElector`]).
//! - [`sim`] (feature `sim`): `spot-kube-sim`, an in-process Kubernetes API simulator that
//!   kube-rs and `kubectl` talk to over HTTP.
//!
//! This crate does not pick a Kubernetes version: enable one `k8s-openapi` version feature in
//! the final binary (or dev-dependencies), as k8s-openapi requires.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod actions;
pub mod convert;
pub mod lease;
pub mod nodes;
pub mod ratelimit;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;

pub use actions::KubeNodeActions;
pub use ratelimit::RateLimiter;
