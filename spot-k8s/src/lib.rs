//! spot-k8s (being written).
