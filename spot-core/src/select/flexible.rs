//! `--flexible`: a diversified set of general-purpose types around a size, and the kOps way
//! of splitting a selection into several instance groups by vCPU-to-memory ratio.
//!
//! [`apply`] fills **only the criteria the user left unset**:
//!
//! | Criterion | Value |
//! |---|---|
//! | `cpu_architecture` | `x86_64` |
//! | `bare_metal` | `false` |
//! | `burst_support` | `false` (no T family) |
//! | `instance_generation` | `5` or later, the current generation of the C, M and R families (EC2's own `CurrentGeneration` flag is unreliable in the offline data: `m5.large` is marked previous-generation there) |
//! | `allow_list` | `[cmr][3-9][agi]?\..*`: compute-, general- and memory-optimized families, ec2-instance-selector v3's flexible list without its burstable `t` part |
//! | `vcpus` | exactly 4, only when neither `vcpus` nor `memory_mib` is set |
//! | `vcpus_to_memory_ratio` | from 1:2 to 1:8, so the C (1:2), M (1:4) and R (1:8) sizes all qualify |
//!
//! The result is diversified across families and sizes of the same shape, which is what
//! spot capacity pools want.

use super::filters::{Criteria, NameRegex};
use super::ranges::Range;
use crate::instance_type::Architecture;

/// The allow-list `--flexible` sets (anchored, like every allow-list).
pub const ALLOW_LIST: &str = r"[cmr][3-9][agi]?\..*";
/// The vCPUs `--flexible` asks for when neither vCPUs nor memory is given.
pub const DEFAULT_VCPUS: u32 = 4;
/// The lowest generation `--flexible` keeps.
pub const MIN_GENERATION: u32 = 5;
/// The vCPU-to-memory ratios (GiB per vCPU) `--flexible` keeps.
pub const RATIO_RANGE: (f64, f64) = (2.0, 8.0);
/// The first ratio (GiB per vCPU) of [`split_by_ratio`] when the criteria have none.
pub const FIRST_GROUP_RATIO: f64 = 2.0;

/// Fills the criteria the user left unset with the `--flexible` defaults (see the module
/// documentation).
pub fn apply(criteria: &mut Criteria) {
    criteria.cpu_architecture.get_or_insert(Architecture::X86_64);
    criteria.bare_metal.get_or_insert(false);
    criteria.burst_support.get_or_insert(false);
    criteria
        .instance_generation
        .get_or_insert(Range::at_least(MIN_GENERATION));
    if criteria.allow_list.is_none() {
        criteria.allow_list = NameRegex::new(ALLOW_LIST).ok();
    }
    if criteria.vcpus.is_none() && criteria.memory_mib.is_none() {
        criteria.vcpus = Some(Range::exact(DEFAULT_VCPUS));
    }
    criteria
        .vcpus_to_memory_ratio
        .get_or_insert(Range::between(RATIO_RANGE.0, RATIO_RANGE.1));
}

/// Splits `criteria` into `groups` criteria the way `kops toolbox instance-selector
/// --ig-count` does: group `i` (from 0) gets the exact ratio `start × 2^i`, where `start` is
/// the criteria's exact ratio (its minimum when it is a range) or 1:2, so three groups are
/// 1:2, 1:4 and 1:8. One group (or zero) returns the criteria unchanged.
pub fn split_by_ratio(criteria: &Criteria, groups: usize) -> Vec<Criteria> {
    if groups <= 1 {
        return vec![criteria.clone()];
    }
    let start = criteria
        .vcpus_to_memory_ratio
        .and_then(|r| r.min)
        .unwrap_or(FIRST_GROUP_RATIO);
    let mut ratio = start;
    (0..groups)
        .map(|_| {
            let group = Criteria {
                vcpus_to_memory_ratio: Some(Range::exact(ratio)),
                ..criteria.clone()
            };
            ratio *= 2.0;
            group
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance_type::CapacityType;

    #[test]
    fn apply_fills_only_unset_criteria() {
        let mut c = Criteria::default();
        apply(&mut c);
        assert_eq!(c.cpu_architecture, Some(Architecture::X86_64));
        assert_eq!((c.bare_metal, c.burst_support), (Some(false), Some(false)));
        assert_eq!(c.vcpus, Some(Range::exact(4)));
        assert_eq!(c.vcpus_to_memory_ratio, Some(Range::between(2.0, 8.0)));
        assert_eq!(c.instance_generation, Some(Range::at_least(5)));
        assert_eq!(c.allow_list.as_ref().map(NameRegex::pattern), Some(ALLOW_LIST));

        let mut c = Criteria {
            cpu_architecture: Some(Architecture::Arm64),
            memory_mib: Some(Range::exact(8192.0)),
            burst_support: Some(true),
            usage_class: Some(CapacityType::Spot),
            ..Criteria::default()
        };
        apply(&mut c);
        assert_eq!(c.cpu_architecture, Some(Architecture::Arm64));
        assert_eq!(c.vcpus, None, "memory given: no default vCPUs");
        assert_eq!(c.burst_support, Some(true));
        assert_eq!(c.usage_class, Some(CapacityType::Spot));
    }

    #[test]
    fn flexible_allow_list_shape() {
        let re = NameRegex::new(ALLOW_LIST).unwrap();
        for yes in [
            "c5.xlarge",
            "m6i.xlarge",
            "r7g.xlarge",
            "m5a.large",
            "c7i.2xlarge",
        ] {
            assert!(re.is_match(yes), "{yes}");
        }
        for no in [
            "t3.xlarge",
            "m5dn.xlarge",
            "p3.2xlarge",
            "c1.medium",
            "x2idn.large",
        ] {
            assert!(!re.is_match(no), "{no}");
        }
    }

    #[test]
    fn split_doubles_the_ratio() {
        let groups = split_by_ratio(&Criteria::default(), 3);
        let ratios: Vec<_> = groups.iter().map(|c| c.vcpus_to_memory_ratio).collect();
        assert_eq!(
            ratios,
            [
                Some(Range::exact(2.0)),
                Some(Range::exact(4.0)),
                Some(Range::exact(8.0))
            ]
        );
        let c = Criteria {
            vcpus_to_memory_ratio: Some(Range::exact(4.0)),
            ..Criteria::default()
        };
        let groups = split_by_ratio(&c, 2);
        assert_eq!(groups[1].vcpus_to_memory_ratio, Some(Range::exact(8.0)));
        assert_eq!(split_by_ratio(&c, 1), vec![c.clone()]);
    }
}
