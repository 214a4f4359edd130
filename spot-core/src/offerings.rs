//! The unavailable-offerings cache: which (instance type, zone, capacity type) pools failed
//! to launch recently, so that the next provisioning loop skips them.
//!
//! Karpenter marks an offering unavailable for 3 minutes after an insufficient-capacity error
//! and re-marks it with the same TTL on every further error. We start the same way, then back
//! off exponentially: an offering that fails again while marked, or within a window after its
//! mark expired, is marked for twice as long as last time, up to a cap (30 minutes by default).
//! A successful launch of the offering forgets its history. Errors that arrive within a short
//! debounce of the previous mark (launches that were already in flight when the first error
//! came back) count as the same incident and do not double the back-off.
//!
//! Capacity-type-wide marks cover account-level failures (for example spot without the spot
//! service-linked role): every offering of that capacity type is unavailable for the initial
//! TTL.
//!
//! [`UnavailableOfferings`] uses interior mutability and takes its time from a
//! [`Clock`], so one instance is shared (`Arc`) by the launcher, the interruption handler and
//! the scheduler's offering view, and tests drive it with a manual clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use time::OffsetDateTime;

use crate::clock::Clock;
use crate::cloud::FleetResult;
use crate::instance_type::{CapacityType, Offering};

/// Karpenter's `UnavailableOfferingsTTL`: how long the first error marks an offering.
pub const DEFAULT_INITIAL: Duration = Duration::from_secs(3 * 60);
/// The longest an offering stays marked after repeated errors.
pub const DEFAULT_MAX: Duration = Duration::from_secs(30 * 60);
/// How long after a mark expires a new error still doubles the back-off.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 60);
/// Errors this close to the previous mark of the same offering are the same incident.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(10);

/// The error code EC2 returns when spot cannot be used because the account may not create the
/// spot service-linked role; it marks spot unavailable account-wide.
pub const SPOT_ROLE_ERROR: &str = "AuthFailure.ServiceLinkedRoleCreationNotPermitted";

/// Errors of the offerings cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The initial back-off is zero.
    #[error("back-off initial duration must be positive, got {0:?}")]
    ZeroInitial(Duration),
    /// The cap is below the initial back-off.
    #[error("back-off max {max:?} is below the initial duration {initial:?}")]
    MaxBelowInitial {
        /// The initial duration.
        initial: Duration,
        /// The cap.
        max: Duration,
    },
    /// The debounce is not shorter than the initial back-off (a repeated error could never
    /// escalate).
    #[error("back-off debounce {debounce:?} must be shorter than the initial duration {initial:?}")]
    DebounceTooLong {
        /// The initial duration.
        initial: Duration,
        /// The debounce.
        debounce: Duration,
    },
}

/// How long marks last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    initial: Duration,
    max: Duration,
    window: Duration,
    debounce: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: DEFAULT_INITIAL,
            max: DEFAULT_MAX,
            window: DEFAULT_WINDOW,
            debounce: DEFAULT_DEBOUNCE,
        }
    }
}

impl BackoffPolicy {
    /// A policy: first mark `initial`, doubling up to `max` on errors while marked or within
    /// `window` after expiry; errors within `debounce` of the previous mark do not double.
    pub fn new(
        initial: Duration,
        max: Duration,
        window: Duration,
        debounce: Duration,
    ) -> Result<Self, Error> {
        if initial.is_zero() {
            return Err(Error::ZeroInitial(initial));
        }
        if max < initial {
            return Err(Error::MaxBelowInitial { initial, max });
        }
        if debounce >= initial {
            return Err(Error::DebounceTooLong { initial, debounce });
        }
        Ok(BackoffPolicy {
            initial,
            max,
            window,
            debounce,
        })
    }

    /// How long the first error marks an offering (and how long capacity-type-wide marks last).
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest mark.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// How long after expiry a new error still doubles the back-off.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Errors this close to the previous mark do not double the back-off.
    pub fn debounce(&self) -> Duration {
        self.debounce
    }
}

/// One offering currently marked unavailable, as reported by [`UnavailableOfferings::entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnavailableOffering {
    /// Instance type name.
    pub instance_type: String,
    /// Availability zone.
    pub zone: String,
    /// Spot or on-demand.
    pub capacity_type: CapacityType,
    /// How long the current mark lasts in total.
    pub backoff: Duration,
    /// How much of it remains.
    pub remaining: Duration,
}

#[derive(Debug, Clone)]
struct Entry {
    zone: String,
    capacity_type: CapacityType,
    until: OffsetDateTime,
    backoff: Duration,
    last_mark: OffsetDateTime,
}

#[derive(Debug, Default)]
struct State {
    /// Per instance type: its marked (zone, capacity type) pools.
    offerings: HashMap<String, Vec<Entry>>,
    /// Capacity-type-wide marks: until when.
    capacity_types: HashMap<CapacityType, OffsetDateTime>,
}

/// The unavailable-offerings cache with per-offering exponential back-off.
pub struct UnavailableOfferings {
    clock: Arc<dyn Clock>,
    policy: BackoffPolicy,
    state: Mutex<State>,
}

impl std::fmt::Debug for UnavailableOfferings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnavailableOfferings")
            .field("policy", &self.policy)
            .field("state", &*self.lock())
            .finish()
    }
}

/// The remaining time from `now` until `until`, if positive.
fn remaining(now: OffsetDateTime, until: OffsetDateTime) -> Option<Duration> {
    Duration::try_from(until - now).ok().filter(|d| !d.is_zero())
}

impl UnavailableOfferings {
    /// An empty cache with the default policy (3 minutes doubling up to 30).
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_policy(clock, BackoffPolicy::default())
    }

    /// An empty cache with `policy`.
    pub fn with_policy(clock: Arc<dyn Clock>, policy: BackoffPolicy) -> Self {
        UnavailableOfferings {
            clock,
            policy,
            state: Mutex::new(State::default()),
        }
    }

    /// The policy.
    pub fn policy(&self) -> BackoffPolicy {
        self.policy
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an insufficient-capacity error of the offering and returns how long it is now
    /// marked unavailable: the initial duration the first time, doubled (up to the cap) when it
    /// was still marked or had expired less than the window ago.
    pub fn mark(&self, instance_type: &str, zone: &str, capacity_type: CapacityType) -> Duration {
        let now = self.clock.now();
        let policy = self.policy;
        let mut state = self.lock();
        prune_locked(&mut state, now, policy.window);
        let entries = state.offerings.entry(instance_type.to_owned()).or_default();
        match entries
            .iter_mut()
            .find(|e| e.zone == zone && e.capacity_type == capacity_type)
        {
            Some(entry) => {
                // prune_locked dropped entries past their window: this one is marked or recent.
                let since_last = Duration::try_from(now - entry.last_mark).unwrap_or(Duration::ZERO);
                if since_last >= policy.debounce {
                    entry.backoff = entry.backoff.saturating_mul(2).min(policy.max);
                }
                entry.until = entry.until.max(now + entry.backoff);
                entry.last_mark = now;
                entry.backoff
            }
            None => {
                entries.push(Entry {
                    zone: zone.to_owned(),
                    capacity_type,
                    until: now + policy.initial,
                    backoff: policy.initial,
                    last_mark: now,
                });
                policy.initial
            }
        }
    }

    /// Marks every offering of `capacity_type` unavailable for the initial duration (each call
    /// restarts it), such as spot when the account cannot use spot.
    pub fn mark_capacity_type(&self, capacity_type: CapacityType) {
        let until = self.clock.now() + self.policy.initial;
        let mut state = self.lock();
        let slot = state.capacity_types.entry(capacity_type).or_insert(until);
        *slot = (*slot).max(until);
    }

    /// Records a successful launch of the offering: its mark and back-off history are
    /// forgotten.
    pub fn succeeded(&self, instance_type: &str, zone: &str, capacity_type: CapacityType) {
        let mut state = self.lock();
        if let Some(entries) = state.offerings.get_mut(instance_type) {
            entries.retain(|e| !(e.zone == zone && e.capacity_type == capacity_type));
            if entries.is_empty() {
                state.offerings.remove(instance_type);
            }
        }
    }

    /// Records what a launch of `capacity_type` produced: every insufficient-capacity error
    /// naming its instance type and zone marks that offering, [`SPOT_ROLE_ERROR`] marks spot
    /// account-wide, and every launched instance resets its offering. Errors without an
    /// instance type or zone are left to the caller.
    pub fn observe(&self, capacity_type: CapacityType, result: &FleetResult) {
        for error in &result.errors {
            if error.code == SPOT_ROLE_ERROR {
                self.mark_capacity_type(CapacityType::Spot);
            } else if error.is_insufficient_capacity()
                && let (Some(instance_type), Some(zone)) = (&error.instance_type, &error.zone)
            {
                self.mark(instance_type, zone, capacity_type);
            }
        }
        for instance in &result.instances {
            self.succeeded(&instance.instance_type, &instance.zone, instance.capacity_type);
        }
    }

    /// How long the offering remains unavailable (its own mark or a capacity-type-wide one,
    /// whichever lasts longer); `None` when it is available.
    pub fn until(&self, instance_type: &str, zone: &str, capacity_type: CapacityType) -> Option<Duration> {
        let now = self.clock.now();
        let state = self.lock();
        let own = state
            .offerings
            .get(instance_type)
            .and_then(|entries| {
                entries
                    .iter()
                    .find(|e| e.zone == zone && e.capacity_type == capacity_type)
            })
            .and_then(|e| remaining(now, e.until));
        let wide = state
            .capacity_types
            .get(&capacity_type)
            .and_then(|until| remaining(now, *until));
        own.max(wide)
    }

    /// Whether the offering is marked unavailable now.
    pub fn is_unavailable(&self, instance_type: &str, zone: &str, capacity_type: CapacityType) -> bool {
        self.until(instance_type, zone, capacity_type).is_some()
    }

    /// Whether every offering of `capacity_type` is marked unavailable now.
    pub fn is_capacity_type_unavailable(&self, capacity_type: CapacityType) -> bool {
        let now = self.clock.now();
        self.lock()
            .capacity_types
            .get(&capacity_type)
            .is_some_and(|until| remaining(now, *until).is_some())
    }

    /// Sets `available = false` on every offering of `instance_type` that is marked now; other
    /// offerings are left as they are (they may be unavailable for other reasons).
    pub fn apply(&self, instance_type: &str, offerings: &mut [Offering]) {
        let now = self.clock.now();
        let state = self.lock();
        let entries = state.offerings.get(instance_type);
        for offering in offerings.iter_mut() {
            let wide = state
                .capacity_types
                .get(&offering.capacity_type)
                .is_some_and(|until| remaining(now, *until).is_some());
            let own = entries.is_some_and(|entries| {
                entries.iter().any(|e| {
                    e.zone == offering.zone
                        && e.capacity_type == offering.capacity_type
                        && remaining(now, e.until).is_some()
                })
            });
            if wide || own {
                offering.available = false;
            }
        }
    }

    /// How many offerings are marked unavailable now (capacity-type-wide marks not counted).
    pub fn len(&self) -> usize {
        let now = self.clock.now();
        self.lock()
            .offerings
            .values()
            .flatten()
            .filter(|e| remaining(now, e.until).is_some())
            .count()
    }

    /// Whether no offering is marked unavailable now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The offerings marked unavailable now, sorted by instance type, zone and capacity type.
    pub fn entries(&self) -> Vec<UnavailableOffering> {
        let now = self.clock.now();
        let state = self.lock();
        let mut out: Vec<UnavailableOffering> = state
            .offerings
            .iter()
            .flat_map(|(instance_type, entries)| {
                entries.iter().filter_map(move |e| {
                    Some(UnavailableOffering {
                        instance_type: instance_type.clone(),
                        zone: e.zone.clone(),
                        capacity_type: e.capacity_type,
                        backoff: e.backoff,
                        remaining: remaining(now, e.until)?,
                    })
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.instance_type, &a.zone, a.capacity_type).cmp(&(&b.instance_type, &b.zone, b.capacity_type))
        });
        out
    }

    /// Forgets offerings whose mark expired more than the window ago (their back-off starts
    /// over) and expired capacity-type-wide marks; returns how many entries were removed.
    /// [`mark`](Self::mark) prunes too, so the cache does not grow without bound.
    pub fn prune(&self) -> usize {
        let now = self.clock.now();
        let window = self.policy.window;
        prune_locked(&mut self.lock(), now, window)
    }

    /// How many entries the cache holds, including expired ones still remembered for the
    /// back-off window.
    pub fn tracked(&self) -> usize {
        self.lock().offerings.values().map(Vec::len).sum()
    }
}

fn prune_locked(state: &mut State, now: OffsetDateTime, window: Duration) -> usize {
    let mut removed = 0;
    state.offerings.retain(|_, entries| {
        let before = entries.len();
        entries.retain(|e| e.until + window > now);
        removed += before - entries.len();
        !entries.is_empty()
    });
    let before = state.capacity_types.len();
    state.capacity_types.retain(|_, until| *until > now);
    removed + before - state.capacity_types.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Instance, LaunchError};
    use std::collections::BTreeMap;
    use time::macros::datetime;

    /// A clock the test moves by hand.
    struct ManualClock(Mutex<OffsetDateTime>);

    impl ManualClock {
        fn advance(&self, by: Duration) {
            let mut now = self.0.lock().unwrap();
            *now += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> OffsetDateTime {
            *self.0.lock().unwrap()
        }
    }

    const MIN: Duration = Duration::from_secs(60);
    const SPOT: CapacityType = CapacityType::Spot;
    const OD: CapacityType = CapacityType::OnDemand;

    fn cache() -> (Arc<ManualClock>, UnavailableOfferings) {
        let clock = Arc::new(ManualClock(Mutex::new(datetime!(2026-01-01 00:00:00 UTC))));
        let cache = UnavailableOfferings::new(clock.clone());
        (clock, cache)
    }

    fn offering(zone: &str, capacity_type: CapacityType) -> Offering {
        Offering {
            zone: zone.into(),
            capacity_type,
            price: 0.1,
            available: true,
        }
    }

    #[test]
    fn first_mark_lasts_three_minutes_and_expires() {
        let (clock, cache) = cache();
        assert!(cache.is_empty());
        assert_eq!(cache.mark("m5.large", "us-east-1a", SPOT), 3 * MIN);
        assert!(cache.is_unavailable("m5.large", "us-east-1a", SPOT));
        assert_eq!(cache.until("m5.large", "us-east-1a", SPOT), Some(3 * MIN));
        // Other zone, capacity type and type are untouched.
        assert!(!cache.is_unavailable("m5.large", "us-east-1b", SPOT));
        assert!(!cache.is_unavailable("m5.large", "us-east-1a", OD));
        assert!(!cache.is_unavailable("m5.xlarge", "us-east-1a", SPOT));
        assert_eq!(cache.len(), 1);
        clock.advance(2 * MIN + Duration::from_secs(59));
        assert_eq!(
            cache.until("m5.large", "us-east-1a", SPOT),
            Some(Duration::from_secs(1))
        );
        clock.advance(Duration::from_secs(1));
        assert!(!cache.is_unavailable("m5.large", "us-east-1a", SPOT));
        assert_eq!(cache.until("m5.large", "us-east-1a", SPOT), None);
        assert_eq!(cache.len(), 0);
        // Expired but remembered for the back-off window.
        assert_eq!(cache.tracked(), 1);
    }

    #[test]
    fn repeated_errors_double_up_to_the_cap() {
        let (clock, cache) = cache();
        let mut marks = Vec::new();
        for _ in 0..6 {
            marks.push(cache.mark("c5.xlarge", "us-east-1a", SPOT));
            // Retry right after the mark expires: the offering fails again.
            clock.advance(*marks.last().unwrap());
            assert!(!cache.is_unavailable("c5.xlarge", "us-east-1a", SPOT));
        }
        assert_eq!(marks, [3 * MIN, 6 * MIN, 12 * MIN, 24 * MIN, 30 * MIN, 30 * MIN]);
    }

    #[test]
    fn an_error_while_marked_doubles_and_extends() {
        let (clock, cache) = cache();
        cache.mark("c5.xlarge", "us-east-1a", SPOT);
        clock.advance(MIN);
        assert_eq!(cache.mark("c5.xlarge", "us-east-1a", SPOT), 6 * MIN);
        assert_eq!(cache.until("c5.xlarge", "us-east-1a", SPOT), Some(6 * MIN));
    }

    #[test]
    fn errors_of_one_incident_do_not_escalate() {
        let (clock, cache) = cache();
        assert_eq!(cache.mark("c5.xlarge", "us-east-1a", SPOT), 3 * MIN);
        // Launches already in flight fail a few seconds later: same incident.
        for _ in 0..5 {
            clock.advance(Duration::from_secs(1));
            assert_eq!(cache.mark("c5.xlarge", "us-east-1a", SPOT), 3 * MIN);
        }
        // The mark is refreshed from the last error.
        assert_eq!(cache.until("c5.xlarge", "us-east-1a", SPOT), Some(3 * MIN));
        clock.advance(DEFAULT_DEBOUNCE);
        assert_eq!(cache.mark("c5.xlarge", "us-east-1a", SPOT), 6 * MIN);
    }

    #[test]
    fn history_is_forgotten_after_the_window() {
        let (clock, cache) = cache();
        cache.mark("c5.xlarge", "us-east-1a", SPOT);
        clock.advance(3 * MIN);
        assert_eq!(cache.mark("c5.xlarge", "us-east-1a", SPOT), 6 * MIN);
        // Inside the window after expiry: still escalates.
        clock.advance(6 * MIN + DEFAULT_WINDOW - Duration::from_secs(1));
        assert_eq!(cache.mark("c5.xlarge", "us-east-1a", SPOT), 12 * MIN);
        // Past the window: starts over.
        clock.advance(12 * MIN + DEFAULT_WINDOW);
        assert_eq!(cache.prune(), 1);
        assert_eq!(cache.tracked(), 0);
        assert_eq!(cache.mark("c5.xlarge", "us-east-1a", SPOT), 3 * MIN);
    }

    #[test]
    fn success_resets_the_backoff() {
        let (clock, cache) = cache();
        cache.mark("c5.xlarge", "us-east-1a", SPOT);
        clock.advance(3 * MIN);
        assert_eq!(cache.mark("c5.xlarge", "us-east-1a", SPOT), 6 * MIN);
        clock.advance(6 * MIN);
        // Another zone's success does not reset this one.
        cache.succeeded("c5.xlarge", "us-east-1b", SPOT);
        cache.succeeded("c5.xlarge", "us-east-1a", OD);
        assert_eq!(cache.tracked(), 1);
        cache.succeeded("c5.xlarge", "us-east-1a", SPOT);
        assert_eq!(cache.tracked(), 0);
        assert_eq!(cache.mark("c5.xlarge", "us-east-1a", SPOT), 3 * MIN);
        // A success while marked lifts the mark at once.
        cache.succeeded("c5.xlarge", "us-east-1a", SPOT);
        assert!(!cache.is_unavailable("c5.xlarge", "us-east-1a", SPOT));
    }

    #[test]
    fn capacity_type_wide_marks() {
        let (clock, cache) = cache();
        cache.mark_capacity_type(SPOT);
        assert!(cache.is_capacity_type_unavailable(SPOT));
        assert!(!cache.is_capacity_type_unavailable(OD));
        assert!(cache.is_unavailable("anything.large", "eu-west-1c", SPOT));
        assert!(!cache.is_unavailable("anything.large", "eu-west-1c", OD));
        assert_eq!(cache.until("m5.large", "us-east-1a", SPOT), Some(3 * MIN));
        // Not counted as an offering.
        assert_eq!(cache.len(), 0);
        // A longer own mark wins in `until`.
        clock.advance(MIN);
        cache.mark("m5.large", "us-east-1a", SPOT);
        clock.advance(MIN);
        assert_eq!(cache.mark("m5.large", "us-east-1a", SPOT), 6 * MIN);
        assert_eq!(cache.until("m5.large", "us-east-1a", SPOT), Some(6 * MIN));
        assert_eq!(cache.until("m5.large", "us-east-1b", SPOT), Some(MIN));
        clock.advance(MIN);
        assert!(!cache.is_capacity_type_unavailable(SPOT));
        assert!(!cache.is_unavailable("m5.large", "us-east-1b", SPOT));
        assert_eq!(cache.prune(), 1);
    }

    #[test]
    fn apply_only_clears_marked_offerings() {
        let (clock, cache) = cache();
        cache.mark("m5.large", "us-east-1a", SPOT);
        let mut offerings = vec![
            offering("us-east-1a", SPOT),
            offering("us-east-1a", OD),
            offering("us-east-1b", SPOT),
        ];
        offerings[2].available = false; // unavailable for another reason: stays so
        cache.apply("m5.large", &mut offerings);
        let available: Vec<bool> = offerings.iter().map(|o| o.available).collect();
        assert_eq!(available, [false, true, false]);
        let mut other = vec![offering("us-east-1a", SPOT)];
        cache.apply("m5.xlarge", &mut other);
        assert!(other[0].available);

        cache.mark_capacity_type(OD);
        let mut offerings = vec![offering("us-east-1c", OD), offering("us-east-1c", SPOT)];
        cache.apply("r5.large", &mut offerings);
        assert_eq!((offerings[0].available, offerings[1].available), (false, true));

        clock.advance(3 * MIN);
        let mut offerings = vec![offering("us-east-1a", SPOT), offering("us-east-1c", OD)];
        cache.apply("m5.large", &mut offerings);
        assert!(offerings.iter().all(|o| o.available));
    }

    #[test]
    fn entries_report_marks_sorted() {
        let (clock, cache) = cache();
        cache.mark("m5.large", "us-east-1b", SPOT);
        cache.mark("c5.large", "us-east-1a", OD);
        clock.advance(MIN);
        let entries = cache.entries();
        let keys: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.instance_type.as_str(), e.zone.as_str()))
            .collect();
        assert_eq!(keys, [("c5.large", "us-east-1a"), ("m5.large", "us-east-1b")]);
        assert_eq!(entries[0].capacity_type, OD);
        assert_eq!((entries[0].backoff, entries[0].remaining), (3 * MIN, 2 * MIN));
    }

    #[test]
    fn observe_marks_errors_and_resets_launched_offerings() {
        let (clock, cache) = cache();
        cache.mark("m5.large", "us-east-1a", SPOT);
        clock.advance(3 * MIN);
        let error = |instance_type: Option<&str>, zone: Option<&str>, code: &str| LaunchError {
            instance_type: instance_type.map(str::to_owned),
            zone: zone.map(str::to_owned),
            code: code.into(),
            message: String::new(),
        };
        let result = FleetResult {
            instances: vec![Instance {
                id: "i-1".into(),
                instance_type: "m5.large".into(),
                zone: "us-east-1a".into(),
                capacity_type: SPOT,
                private_dns_name: String::new(),
                state: "pending".into(),
                tags: BTreeMap::new(),
                launch_time: None,
            }],
            errors: vec![
                error(
                    Some("c5.large"),
                    Some("us-east-1b"),
                    "InsufficientInstanceCapacity",
                ),
                error(Some("r5.large"), Some("us-east-1b"), "InvalidParameterValue"),
                error(None, None, "InsufficientInstanceCapacity"),
            ],
        };
        cache.observe(SPOT, &result);
        assert!(cache.is_unavailable("c5.large", "us-east-1b", SPOT));
        assert!(!cache.is_unavailable("r5.large", "us-east-1b", SPOT));
        assert_eq!(cache.len(), 1);
        // m5.large's history was reset by the launch: its next error starts at 3 minutes.
        assert_eq!(cache.mark("m5.large", "us-east-1a", SPOT), 3 * MIN);

        let role = FleetResult {
            instances: vec![],
            errors: vec![error(None, None, SPOT_ROLE_ERROR)],
        };
        cache.observe(SPOT, &role);
        assert!(cache.is_capacity_type_unavailable(SPOT));
    }

    #[test]
    fn policy_validation_and_custom_policy() {
        assert_eq!(
            BackoffPolicy::new(Duration::ZERO, MIN, MIN, Duration::ZERO),
            Err(Error::ZeroInitial(Duration::ZERO))
        );
        let err = BackoffPolicy::new(3 * MIN, MIN, MIN, Duration::ZERO).unwrap_err();
        assert_eq!(
            err.to_string(),
            "back-off max 60s is below the initial duration 180s"
        );
        assert!(matches!(
            BackoffPolicy::new(MIN, MIN, MIN, MIN),
            Err(Error::DebounceTooLong { .. })
        ));
        let policy = BackoffPolicy::new(MIN, 5 * MIN, Duration::ZERO, Duration::ZERO).unwrap();
        assert_eq!(
            (policy.initial(), policy.max(), policy.window(), policy.debounce()),
            (MIN, 5 * MIN, Duration::ZERO, Duration::ZERO)
        );
        let clock = Arc::new(ManualClock(Mutex::new(datetime!(2026-01-01 00:00:00 UTC))));
        let cache = UnavailableOfferings::with_policy(clock.clone(), policy);
        assert_eq!(cache.policy(), policy);
        assert_eq!(cache.mark("a.large", "z", SPOT), MIN);
        // No debounce: an immediate repeat doubles.
        assert_eq!(cache.mark("a.large", "z", SPOT), 2 * MIN);
        assert_eq!(cache.mark("a.large", "z", SPOT), 4 * MIN);
        assert_eq!(cache.mark("a.large", "z", SPOT), 5 * MIN);
        // No window: after expiry it starts over.
        clock.advance(5 * MIN);
        assert_eq!(cache.mark("a.large", "z", SPOT), MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn shared_through_arc_with_tokio_clock() {
        let clock = Arc::new(crate::clock::TokioClock::starting_at(
            datetime!(2026-01-01 00:00:00 UTC),
        ));
        let cache = Arc::new(UnavailableOfferings::new(clock));
        let other = Arc::clone(&cache);
        tokio::spawn(async move { other.mark("m5.large", "us-east-1a", SPOT) })
            .await
            .unwrap();
        assert!(cache.is_unavailable("m5.large", "us-east-1a", SPOT));
        tokio::time::advance(3 * MIN).await;
        assert!(!cache.is_unavailable("m5.large", "us-east-1a", SPOT));
        assert!(format!("{cache:?}").contains("UnavailableOfferings"));
    }
}
