//! A small, seeded, platform-independent random number generator and the few
//! transcendental functions the simulation needs.
//!
//! The generator is splitmix64 (Steele, Lea and Flood, 2014): one 64-bit state, one
//! multiply-xorshift output function, a period of 2^64. Streams are derived from a seed and a
//! key (`price/m5.large/us-east-1a`) through FNV-1a, so every pool and every instance has its
//! own stream and the draws of one never depend on how often another was consulted.
//!
//! `f64::ln` and `f64::exp` are documented to have non-deterministic precision (they call
//! the platform's libm), so [`ln`] and [`exp`] are computed here with IEEE-754 basic
//! operations only (correctly rounded on every platform): the same seed gives the same
//! simulation, bit for bit, everywhere.

/// ln 2 split as in fdlibm: `LN2_HI` has 32 trailing zero bits, so `k × LN2_HI` is exact
/// for every exponent `k`, and `LN2_HI + LN2_LO` is ln 2 to about 2^-85.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// splitmix64's output function.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of a string (64-bit).
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A splitmix64 generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    /// The generator of the stream named `key` under `seed`.
    pub fn stream(seed: u64, key: &str) -> SimRng {
        SimRng::new(splitmix64(seed ^ fnv1a(key)))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform draw in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform draw in `(0, 1]` (never zero: safe to take the logarithm of).
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n` (`0` when `n` is 0), by Lemire's multiply-shift (the bias
    /// is below 2^-32 for the small ranges used here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Whether an event of probability `p` happens.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// A standard normal draw (Marsaglia's polar method).
    pub fn normal(&mut self) -> f64 {
        loop {
            let u = 2.0 * self.next_f64() - 1.0;
            let v = 2.0 * self.next_f64() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                return u * (-2.0 * ln(s) / s).sqrt();
            }
        }
    }

    /// An exponential draw with the given rate (events per unit of time); infinite when the
    /// rate is not positive.
    pub fn exponential(&mut self, rate: f64) -> f64 {
        if rate.is_nan() || rate <= 0.0 {
            return f64::INFINITY;
        }
        -ln(self.next_open01()) / rate
    }
}

/// The natural logarithm, with IEEE-754 basic operations only: `x = m·2^e` with
/// `m ∈ [√½, √2)`, then `ln m = 2·atanh((m−1)/(m+1))` by its series. Accurate to a few ulps;
/// NaN for negative or NaN input, `-∞` for 0, `∞` for `∞`.
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    // Scale subnormals into the normal range first.
    let (x, bias) = if x < f64::MIN_POSITIVE {
        (x * (1u64 << 54) as f64, -54)
    } else {
        (x, 0)
    };
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023 + bias;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // |s| ≤ 0.1716: terms up to s^23 reach 1e-18 relative.
    let mut term = s;
    let mut sum = 0.0;
    let mut k = 1.0;
    while k < 24.0 {
        sum += term / k;
        term *= s2;
        k += 2.0;
    }
    let e = e as f64;
    e * LN2_HI + (e * LN2_LO + 2.0 * sum)
}

/// `e^x`, with IEEE-754 basic operations only: `x = k·ln 2 + r`, `|r| ≤ ½ ln 2`, a Taylor
/// series for `e^r`, then scaling by `2^k` through the exponent bits. Accurate to a few ulps;
/// 0 below −745, `∞` above 709.
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -745.0 {
        return 0.0;
    }
    let k = (x / std::f64::consts::LN_2).round();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 1..=20 {
        term = term * r / f64::from(n);
        sum += term;
    }
    // Apply 2^k in two halves so that neither factor leaves the normal range.
    let k = k as i64;
    let half = k / 2;
    sum * pow2(half) * pow2(k - half)
}

/// `2^k` for `k` in the normal exponent range (clamped to it).
fn pow2(k: i64) -> f64 {
    let k = k.clamp(-1022, 1023);
    f64::from_bits(((k + 1023) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_pinned() {
        // The reference value of splitmix64 seeded with 0 (as spot-core's advisor generator).
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        let mut r = SimRng::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        let a: Vec<u64> = (0..5)
            .map({
                let mut s = SimRng::stream(7, "x");
                move |_| s.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut s = SimRng::stream(7, "x");
                move |_| s.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(SimRng::stream(7, "x"), SimRng::stream(7, "y"));
        assert_ne!(SimRng::stream(7, "x"), SimRng::stream(8, "x"));
    }

    #[test]
    fn ln_and_exp_match_libm_closely() {
        for &x in &[
            1e-300, 1e-10, 0.001, 0.1, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 10.0, 123.456, 1e10, 1e300,
        ] {
            let (ours, std) = (ln(x), x.ln());
            assert!(
                (ours - std).abs() <= 4.0 * f64::EPSILON * std.abs().max(1.0),
                "ln({x}): {ours} vs {std}"
            );
        }
        assert_eq!(ln(1.0), 0.0);
        assert!(ln(-1.0).is_nan() && ln(f64::NAN).is_nan());
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert!(ln(5e-324).is_finite());
        for &x in &[-700.0, -20.0, -1.0, -0.3, 0.0, 1e-8, 0.5, 1.0, 2.5, 20.0, 700.0] {
            let (ours, std) = (exp(x), x.exp());
            assert!(
                (ours - std).abs() <= 8.0 * f64::EPSILON * std,
                "exp({x}): {ours} vs {std}"
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(800.0), f64::INFINITY);
        assert_eq!(exp(-800.0), 0.0);
    }

    #[test]
    fn draws_have_the_right_moments() {
        let mut r = SimRng::new(42);
        let n = 100_000;
        let uniform: f64 = (0..n).map(|_| r.next_f64()).sum::<f64>() / n as f64;
        assert!((uniform - 0.5).abs() < 0.01, "{uniform}");
        let normals: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = normals.iter().sum::<f64>() / n as f64;
        let var = normals.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.03, "{mean} {var}");
        let exps: f64 = (0..n).map(|_| r.exponential(2.0)).sum::<f64>() / n as f64;
        assert!((exps - 0.5).abs() < 0.01, "{exps}");
        assert_eq!(r.exponential(0.0), f64::INFINITY);
        assert!((0..1000).all(|_| r.below(7) < 7));
        assert_eq!(r.below(0), 0);
        let heads = (0..n).filter(|_| r.chance(0.25)).count() as f64 / n as f64;
        assert!((heads - 0.25).abs() < 0.01, "{heads}");
    }
}
