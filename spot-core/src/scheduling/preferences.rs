//! Preference relaxation, after Karpenter's `Preferences.Relax`: when a pod does not fit,
//! its soft constraints are dropped one at a time, in a fixed order, and it is tried again.

use super::PreferencePolicy;

/// How many relaxable constraints a pod has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Required node-affinity terms (ORed; all but the last can be dropped).
    pub(crate) terms: usize,
    /// Preferred node-affinity terms.
    pub(crate) preferred_node: usize,
    /// Preferred pod-affinity terms.
    pub(crate) preferred_affinity: usize,
    /// Preferred pod-anti-affinity terms.
    pub(crate) preferred_anti: usize,
    /// `ScheduleAnyway` topology spread constraints.
    pub(crate) schedule_anyway: usize,
    /// Whether the pod already tolerates every PreferNoSchedule taint.
    pub(crate) tolerates_prefer_no_schedule: bool,
}

/// How far a pod's constraints are relaxed: counts of dropped constraints of each kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Relax {
    /// The index of the required node-affinity term in use.
    pub(crate) term: usize,
    /// Preferred node-affinity terms dropped (heaviest first).
    pub(crate) preferred_node: usize,
    /// Preferred pod-affinity terms dropped (heaviest first).
    pub(crate) preferred_affinity: usize,
    /// Preferred pod-anti-affinity terms dropped (heaviest first).
    pub(crate) preferred_anti: usize,
    /// `ScheduleAnyway` spread constraints dropped (in order).
    pub(crate) schedule_anyway: usize,
    /// Whether a toleration of every PreferNoSchedule taint was added.
    pub(crate) prefer_no_schedule: bool,
}

impl Relax {
    /// The starting point: nothing relaxed, or with [`PreferencePolicy::Ignore`] every
    /// preference dropped up front.
    pub(crate) fn initial(policy: PreferencePolicy, shape: &Shape) -> Relax {
        match policy {
            PreferencePolicy::Respect => Relax::default(),
            PreferencePolicy::Ignore => Relax {
                preferred_node: shape.preferred_node,
                preferred_affinity: shape.preferred_affinity,
                preferred_anti: shape.preferred_anti,
                schedule_anyway: shape.schedule_anyway,
                ..Relax::default()
            },
        }
    }

    /// Relaxes one more constraint, in Karpenter's order: (1) the first required
    /// node-affinity term, if another remains; (2) the heaviest preferred pod-affinity term;
    /// (3) the heaviest preferred pod-anti-affinity term; (4) the heaviest preferred
    /// node-affinity term; (5) a `ScheduleAnyway` spread constraint; (6) tolerate
    /// PreferNoSchedule taints, only when some NodePool has one. False when nothing is
    /// left.
    pub(crate) fn next(&mut self, shape: &Shape, tolerate_prefer_no_schedule: bool) -> bool {
        if self.term + 1 < shape.terms {
            self.term += 1;
        } else if self.preferred_affinity < shape.preferred_affinity {
            self.preferred_affinity += 1;
        } else if self.preferred_anti < shape.preferred_anti {
            self.preferred_anti += 1;
        } else if self.preferred_node < shape.preferred_node {
            self.preferred_node += 1;
        } else if self.schedule_anyway < shape.schedule_anyway {
            self.schedule_anyway += 1;
        } else if tolerate_prefer_no_schedule
            && !self.prefer_no_schedule
            && !shape.tolerates_prefer_no_schedule
        {
            self.prefer_no_schedule = true;
        } else {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn karpenter_order() {
        let shape = Shape {
            terms: 2,
            preferred_node: 1,
            preferred_affinity: 1,
            preferred_anti: 1,
            schedule_anyway: 1,
            tolerates_prefer_no_schedule: false,
        };
        let mut r = Relax::initial(PreferencePolicy::Respect, &shape);
        let mut steps = Vec::new();
        while r.next(&shape, true) {
            steps.push(r);
        }
        let kinds: Vec<&str> = steps
            .windows(2)
            .map(|w| {
                let (a, b) = (w[0], w[1]);
                if b.preferred_affinity > a.preferred_affinity {
                    "pod-affinity"
                } else if b.preferred_anti > a.preferred_anti {
                    "pod-anti-affinity"
                } else if b.preferred_node > a.preferred_node {
                    "node-affinity"
                } else if b.schedule_anyway > a.schedule_anyway {
                    "schedule-anyway"
                } else {
                    "prefer-no-schedule"
                }
            })
            .collect();
        assert_eq!(steps[0].term, 1, "the first required term goes first");
        assert_eq!(
            kinds,
            vec![
                "pod-affinity",
                "pod-anti-affinity",
                "node-affinity",
                "schedule-anyway",
                "prefer-no-schedule"
            ]
        );
        let mut no_pns = Relax::initial(PreferencePolicy::Respect, &Shape::default());
        assert!(!no_pns.next(&Shape::default(), false), "nothing to relax");
    }

    #[test]
    fn ignore_drops_preferences_up_front() {
        let shape = Shape {
            terms: 1,
            preferred_node: 2,
            preferred_affinity: 1,
            preferred_anti: 0,
            schedule_anyway: 3,
            tolerates_prefer_no_schedule: true,
        };
        let mut r = Relax::initial(PreferencePolicy::Ignore, &shape);
        assert_eq!(
            (r.preferred_node, r.preferred_affinity, r.schedule_anyway),
            (2, 1, 3)
        );
        assert!(!r.next(&shape, true), "already tolerated");
    }
}
