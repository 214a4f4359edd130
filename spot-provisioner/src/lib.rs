//! spot-provisioner (being written).
