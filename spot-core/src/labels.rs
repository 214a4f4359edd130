//! Well-known labels (being written).
