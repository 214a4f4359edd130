//! The hot path's small data structures: a fast hasher, bit sets, dense resource vectors and
//! the interned requirement table with its compatibility and intersection caches.
//!
//! Requirements are interned once per solve and referred to by [`ReqId`]; every
//! intersection and compatibility check is computed once per pair and then looked up, so
//! placing a pod never clones a [`Requirements`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::requirements::{IncompatibleError, Requirement, Requirements};
use crate::resources::Resources;

/// A fast non-cryptographic hasher (the `FxHash` mixing step) for the scheduler's caches,
/// whose keys are small integers and short strings.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` with [`FxHasher`].
pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The hash of a value with [`FxHasher`].
pub(crate) fn fx_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = FxHasher::default();
    value.hash(&mut hasher);
    hasher.finish()
}

/// A fixed-width bit set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Bits {
    words: Vec<u64>,
}

impl Bits {
    /// `len` cleared bits.
    pub(crate) fn empty(len: usize) -> Bits {
        Bits {
            words: vec![0; len.div_ceil(64)],
        }
    }

    /// `len` set bits.
    pub(crate) fn full(len: usize) -> Bits {
        let mut bits = Bits {
            words: vec![u64::MAX; len.div_ceil(64)],
        };
        if !len.is_multiple_of(64)
            && let Some(last) = bits.words.last_mut()
        {
            *last = (1u64 << (len % 64)) - 1;
        }
        bits
    }

    /// A set with only `index` (of `len`).
    pub(crate) fn single(len: usize, index: usize) -> Bits {
        let mut bits = Bits::empty(len);
        bits.set(index);
        bits
    }

    #[inline]
    pub(crate) fn get(&self, index: usize) -> bool {
        self.words
            .get(index / 64)
            .is_some_and(|w| w & (1u64 << (index % 64)) != 0)
    }

    #[inline]
    pub(crate) fn set(&mut self, index: usize) {
        if let Some(w) = self.words.get_mut(index / 64) {
            *w |= 1u64 << (index % 64);
        }
    }

    #[inline]
    pub(crate) fn clear(&mut self, index: usize) {
        if let Some(w) = self.words.get_mut(index / 64) {
            *w &= !(1u64 << (index % 64));
        }
    }

    pub(crate) fn and_with(&mut self, other: &Bits) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    pub(crate) fn or_with(&mut self, other: &Bits) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The lowest set bit.
    #[cfg(test)]
    pub(crate) fn first(&self) -> Option<usize> {
        self.words
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }

    /// Whether exactly one bit is set.
    pub(crate) fn count_is_one(&self) -> bool {
        let mut seen = false;
        for w in &self.words {
            match w.count_ones() {
                0 => {}
                1 if !seen => seen = true,
                _ => return false,
            }
        }
        seen
    }

    /// Whether every bit of `self` is set in `other`.
    pub(crate) fn is_subset_of(&self, other: &Bits) -> bool {
        self.words.iter().zip(&other.words).all(|(a, b)| a & !b == 0)
            && self.words.iter().skip(other.words.len()).all(|w| *w == 0)
    }

    /// Whether the two sets share a bit.
    pub(crate) fn intersects(&self, other: &Bits) -> bool {
        self.words.iter().zip(&other.words).any(|(a, b)| a & b != 0)
    }

    /// The set bits, ascending.
    pub(crate) fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut word = w;
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let bit = word.trailing_zeros() as usize;
                word &= word - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

/// The resource dimensions of a solve: cpu, memory, pods, ephemeral storage, then the
/// extended resources any node, instance type or DaemonSet offers or asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dims {
    extended: Vec<String>,
}

/// The number of core dimensions before the extended ones.
const CORE: usize = 4;

impl Dims {
    /// Dimensions covering every extended resource in `resources`.
    pub(crate) fn collect<'a>(resources: impl IntoIterator<Item = &'a Resources>) -> Dims {
        let mut names: Vec<String> = Vec::new();
        for r in resources {
            for name in r.extended.keys() {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names.sort();
        Dims { extended: names }
    }

    /// The width of a dense vector.
    pub(crate) fn width(&self) -> usize {
        CORE + self.extended.len()
    }

    /// The dense vector of `r`; `Err` names an extended resource outside the dimensions.
    #[cfg(test)]
    pub(crate) fn dense(&self, r: &Resources) -> Result<Vec<i64>, String> {
        let mut out = vec![0; self.width()];
        self.dense_into(r, &mut out)?;
        Ok(out)
    }

    /// Writes the dense vector of `r` into `out` (of [`Dims::width`]).
    pub(crate) fn dense_into(&self, r: &Resources, out: &mut [i64]) -> Result<(), String> {
        out[0] = r.cpu_millis;
        out[1] = r.memory_bytes;
        out[2] = r.pods;
        out[3] = r.ephemeral_storage_bytes;
        for slot in &mut out[CORE..] {
            *slot = 0;
        }
        for (name, amount) in &r.extended {
            match self.extended.binary_search(name) {
                Ok(i) => out[CORE + i] = *amount,
                Err(_) => return Err(name.clone()),
            }
        }
        Ok(())
    }

    /// The dense vector of `r`, ignoring extended resources outside the dimensions (what a
    /// node offers beyond anything asked is irrelevant).
    pub(crate) fn dense_lossy(&self, r: &Resources) -> Vec<i64> {
        let mut out = vec![0; self.width()];
        out[0] = r.cpu_millis;
        out[1] = r.memory_bytes;
        out[2] = r.pods;
        out[3] = r.ephemeral_storage_bytes;
        for (name, amount) in &r.extended {
            if let Ok(i) = self.extended.binary_search(name) {
                out[CORE + i] = *amount;
            }
        }
        out
    }

    /// Back to [`Resources`] (zero and negative amounts dropped).
    pub(crate) fn resources(&self, v: &[i64]) -> Resources {
        let mut r = Resources {
            cpu_millis: v[0].max(0),
            memory_bytes: v[1].max(0),
            pods: v[2].max(0),
            ephemeral_storage_bytes: v[3].max(0),
            ..Resources::default()
        };
        for (i, name) in self.extended.iter().enumerate() {
            if v[CORE + i] > 0 {
                r.extended.insert(name.clone(), v[CORE + i]);
            }
        }
        r
    }
}

/// Whether every dimension of `a` is at most the same dimension of `b`.
#[inline]
pub(crate) fn fits(a: &[i64], b: &[i64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x <= y)
}

/// Whether `a + b ≤ c` in every dimension.
#[inline]
pub(crate) fn sum_fits(a: &[i64], b: &[i64], c: &[i64]) -> bool {
    a.iter()
        .zip(b)
        .zip(c)
        .all(|((x, y), z)| x.saturating_add(*y) <= *z)
}

/// `a += b`.
#[inline]
pub(crate) fn add_into(a: &mut [i64], b: &[i64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.saturating_add(*y);
    }
}

/// `a = max(a, b)`.
#[inline]
pub(crate) fn max_into(a: &mut [i64], b: &[i64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = (*x).max(*y);
    }
}

/// An interned [`Requirements`].
pub(crate) type ReqId = u32;

/// The id of the empty requirements.
pub(crate) const NO_REQS: ReqId = 0;

/// How requirements of a pod are checked against those of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Mode {
    /// Karpenter's `Compatible` with undefined well-known labels allowed: the node is a
    /// NodeClaim whose labels are not all known yet.
    Lenient,
    /// A registered node: every key the pod needs present must be a label of the node.
    Strict,
}

/// Interned requirements with cached intersections.
#[derive(Debug, Default)]
pub(crate) struct ReqTable {
    list: Vec<Requirements>,
    min_values: Vec<bool>,
    by_hash: FxMap<u64, Vec<ReqId>>,
    combine: FxMap<(ReqId, ReqId, Mode), Result<ReqId, u32>>,
    plain: FxMap<(ReqId, ReqId), ReqId>,
    checked: FxMap<(ReqId, ReqId, Mode), Result<(), u32>>,
    errors: Vec<IncompatibleError>,
}

/// The hash of requirements (their requirements in key order).
fn requirements_hash(r: &Requirements) -> u64 {
    let mut hasher = FxHasher::default();
    for requirement in r.iter() {
        requirement.hash(&mut hasher);
    }
    hasher.finish()
}

impl ReqTable {
    /// A table holding the empty requirements as [`NO_REQS`].
    pub(crate) fn new() -> ReqTable {
        let mut table = ReqTable::default();
        table.intern(Requirements::new());
        table
    }

    /// The id of `r`, interning it if new.
    pub(crate) fn intern(&mut self, r: Requirements) -> ReqId {
        let hash = requirements_hash(&r);
        if let Some(ids) = self.by_hash.get(&hash) {
            for &id in ids {
                if self.list[id as usize] == r {
                    return id;
                }
            }
        }
        let id = self.list.len() as ReqId;
        self.min_values.push(r.iter().any(|q| q.min_values().is_some()));
        self.list.push(r);
        self.by_hash.entry(hash).or_default().push(id);
        id
    }

    /// The requirements of an id.
    pub(crate) fn get(&self, id: ReqId) -> &Requirements {
        &self.list[id as usize]
    }

    /// Whether some requirement of `id` carries `minValues`.
    pub(crate) fn has_min_values(&self, id: ReqId) -> bool {
        self.min_values[id as usize]
    }

    /// A recorded incompatibility.
    pub(crate) fn error(&self, index: u32) -> &IncompatibleError {
        &self.errors[index as usize]
    }

    /// Checks that a pod's requirements `pod` are compatible with a node's `node` and
    /// returns their intersection (`Err`: the index of the [`IncompatibleError`]).
    pub(crate) fn combine(&mut self, node: ReqId, pod: ReqId, mode: Mode) -> Result<ReqId, u32> {
        if pod == NO_REQS || pod == node {
            return Ok(node);
        }
        if let Some(result) = self.combine.get(&(node, pod, mode)) {
            return *result;
        }
        let n = &self.list[node as usize];
        let p = &self.list[pod as usize];
        let check = match mode {
            Mode::Lenient => n.compatible(p),
            Mode::Strict => strictly_compatible(n, p),
        };
        let result = match check {
            Ok(()) => {
                let both = n.intersect(p);
                Ok(self.intern(both))
            }
            Err(e) => {
                self.errors.push(e);
                Err((self.errors.len() - 1) as u32)
            }
        };
        self.combine.insert((node, pod, mode), result);
        result
    }

    /// Checks compatibility only, without interning the intersection (for registered nodes,
    /// whose requirements never narrow).
    pub(crate) fn check(&mut self, node: ReqId, pod: ReqId, mode: Mode) -> Result<(), u32> {
        if pod == NO_REQS || pod == node {
            return Ok(());
        }
        if let Some(result) = self.combine.get(&(node, pod, mode)) {
            return result.map(|_| ());
        }
        if let Some(result) = self.checked.get(&(node, pod, mode)) {
            return *result;
        }
        let n = &self.list[node as usize];
        let p = &self.list[pod as usize];
        let check = match mode {
            Mode::Lenient => n.compatible(p),
            Mode::Strict => strictly_compatible(n, p),
        };
        let result = check.map_err(|e| {
            self.errors.push(e);
            (self.errors.len() - 1) as u32
        });
        self.checked.insert((node, pod, mode), result);
        result
    }

    /// The plain intersection of two requirement sets (no compatibility check).
    pub(crate) fn intersect(&mut self, a: ReqId, b: ReqId) -> ReqId {
        if a == b || b == NO_REQS {
            return a;
        }
        if a == NO_REQS {
            return b;
        }
        if let Some(id) = self.plain.get(&(a, b)) {
            return *id;
        }
        let both = self.list[a as usize].intersect(&self.list[b as usize]);
        let id = self.intern(both);
        self.plain.insert((a, b), id);
        id
    }

    /// `base` with one more requirement added (intersected).
    pub(crate) fn with(&mut self, base: ReqId, requirement: Requirement) -> ReqId {
        let one = self.intern(Requirements::new().with(requirement));
        self.intersect(base, one)
    }
}

/// Karpenter's `Compatible` without the allowance for undefined well-known labels: what a
/// registered node (whose requirements are its labels) checks.
pub(crate) fn strictly_compatible(node: &Requirements, pod: &Requirements) -> Result<(), IncompatibleError> {
    for incoming in pod.iter() {
        if node.get(incoming.key()).is_none() && !incoming.allows_absent() {
            return Err(IncompatibleError::Undefined {
                key: incoming.key().to_owned(),
                incoming: incoming.to_string(),
            });
        }
    }
    node.intersects(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels;
    use crate::requirements::Operator;

    #[test]
    fn bits() {
        let mut b = Bits::empty(130);
        assert!(b.is_empty());
        b.set(0);
        b.set(64);
        b.set(129);
        assert_eq!(b.ones().collect::<Vec<_>>(), vec![0, 64, 129]);
        assert_eq!(b.count(), 3);
        assert_eq!(b.first(), Some(0));
        b.clear(0);
        assert_eq!(b.first(), Some(64));
        let full = Bits::full(130);
        assert_eq!(full.count(), 130);
        assert!(full.get(129) && !full.get(130));
        let mut c = full.clone();
        c.and_with(&b);
        assert_eq!(c, b);
        assert!(b.intersects(&full));
        assert!(!b.intersects(&Bits::single(130, 3)));
        let mut d = Bits::single(130, 3);
        d.or_with(&b);
        assert_eq!(d.count(), 3);
        assert_eq!(Bits::full(64).count(), 64);
    }

    #[test]
    fn dims_round_trip() {
        let gpu = Resources::new(1000, 1 << 30)
            .with_pods(1)
            .with_extended("nvidia.com/gpu", 2);
        let dims = Dims::collect([&gpu]);
        assert_eq!(dims.width(), 5);
        let dense = dims.dense(&gpu).unwrap();
        assert_eq!(dense, vec![1000, 1 << 30, 1, 0, 2]);
        assert_eq!(dims.resources(&dense), gpu);
        let other = Resources::new(1, 1).with_extended("example.com/fpga", 1);
        assert_eq!(dims.dense(&other), Err("example.com/fpga".to_owned()));
        assert_eq!(dims.dense_lossy(&other), vec![1, 1, 0, 0, 0]);
        assert!(fits(&[1, 2], &[1, 3]) && !fits(&[2, 2], &[1, 3]));
        assert!(sum_fits(&[1, 1], &[1, 2], &[2, 3]) && !sum_fits(&[1, 1], &[2, 2], &[2, 3]));
        let mut a = vec![1, 5];
        add_into(&mut a, &[2, 2]);
        max_into(&mut a, &[4, 1]);
        assert_eq!(a, vec![4, 7]);
    }

    #[test]
    fn table_interns_and_caches() {
        let mut table = ReqTable::new();
        let arch =
            |v: &str| Requirements::new().with(Requirement::new(labels::ARCH, Operator::In, [v]).unwrap());
        let a = table.intern(arch("amd64"));
        assert_eq!(table.intern(arch("amd64")), a);
        let b = table.intern(arch("arm64"));
        assert_ne!(a, b);
        assert!(table.combine(a, b, Mode::Lenient).is_err());
        let err = table.combine(a, b, Mode::Lenient).unwrap_err();
        assert!(table.error(err).to_string().contains("kubernetes.io/arch"));
        assert_eq!(table.combine(a, NO_REQS, Mode::Strict), Ok(a));
        let team = table.intern(Requirements::new().with(Requirement::exists("team")));
        assert!(
            table.combine(a, team, Mode::Lenient).is_err(),
            "custom keys must be defined"
        );
        let zone = table
            .intern(Requirements::new().with(Requirement::new(labels::ZONE, Operator::In, ["z1"]).unwrap()));
        assert!(
            table.combine(a, zone, Mode::Lenient).is_ok(),
            "well-known keys may be undefined"
        );
        assert!(
            table.combine(a, zone, Mode::Strict).is_err(),
            "not on a registered node"
        );
        let both = table.intersect(a, zone);
        assert_eq!(table.get(both).len(), 2);
        assert_eq!(table.intersect(a, zone), both);
        assert!(!table.has_min_values(both));
        let mv = table.intern(
            Requirements::new().with(
                Requirement::new(labels::INSTANCE_FAMILY, Operator::In, ["m5", "c5"])
                    .unwrap()
                    .with_min_values(2),
            ),
        );
        assert!(table.has_min_values(mv));
        let mut h = FxHasher::default();
        h.write(b"abcdefghij");
        assert_ne!(h.finish(), 0);
        assert_eq!(fx_hash("x"), fx_hash("x"));
    }
}
