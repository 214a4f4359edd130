//! An embeddable Karpenter-style provisioner.
//!
//! - [`api`]: the custom resources (`NodePool`, `NodeClaim` in `karpenter.sh/v1`,
//!   `SpotNodeClass` in `spot.dev/v1`) and their CRDs.
//!
//! This crate does not pick a Kubernetes version: enable one `k8s-openapi` version feature in
//! the final binary (or dev-dependencies), as k8s-openapi requires.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod api;
