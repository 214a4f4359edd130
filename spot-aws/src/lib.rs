//! spot-aws (being written).
