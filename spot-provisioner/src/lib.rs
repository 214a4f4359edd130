//! An embeddable Karpenter-style provisioner.
//!
//! **Not implemented yet**: this crate only reserves its place in the workspace. See the
//! README for what it will hold and which `spot-core` and `spot-k8s` pieces it builds on.
