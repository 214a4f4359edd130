//! Kubernetes resource quantities (`250m`, `1.5`, `1Gi`, `129e6`): exact parsing, canonical
//! formatting and the rounding conversions schedulers use.
//!
//! The grammar is the one of Kubernetes' `resource.Quantity`:
//!
//! ```text
//! quantity        ::= signedNumber suffix
//! signedNumber    ::= [ "+" | "-" ] number
//! number          ::= digits | digits "." [ digits ] | "." digits
//! suffix          ::= binarySI | decimalSI | decimalExponent
//! binarySI        ::= "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
//! decimalSI       ::= "n" | "u" | "m" | "" | "k" | "M" | "G" | "T" | "P" | "E"
//! decimalExponent ::= ( "e" | "E" ) [ "+" | "-" ] digits
//! ```
//!
//! A bare trailing `E` is exa (10^18); `E` or `e` followed by an integer is an exponent.
//!
//! A [`Quantity`] is held exactly as an integer count of nano-units (10^-9), like Kubernetes
//! does: finer inputs are rounded up (away from zero) to the next nano-unit. Unlike Kubernetes,
//! which silently clamps, magnitudes above `i64::MAX` units are an error.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nano-units per unit.
const NANOS_PER_UNIT: i128 = 1_000_000_000;
/// Nano-units per milli-unit.
const NANOS_PER_MILLI: i128 = 1_000_000;
/// The largest magnitude a quantity may have, in nano-units (`i64::MAX` units).
const MAX_NANOS: i128 = i64::MAX as i128 * NANOS_PER_UNIT;
/// The binary suffixes, indexed by power of 1024.
const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input is the empty string.
    #[error("invalid quantity \"\": empty string")]
    Empty,
    /// The number before the suffix is malformed (no digits, two decimal points, ...).
    #[error("invalid quantity {input:?}: {reason}")]
    Number {
        /// The whole input.
        input: String,
        /// What is wrong with the number.
        reason: &'static str,
    },
    /// The suffix is none of the Kubernetes suffixes.
    #[error("invalid quantity {input:?}: unknown suffix {suffix:?}")]
    UnknownSuffix {
        /// The whole input.
        input: String,
        /// Everything after the number.
        suffix: String,
    },
    /// The magnitude exceeds `i64::MAX` units.
    #[error(
        "invalid quantity {input:?}: out of range (the magnitude must not exceed {max} units)",
        max = i64::MAX
    )]
    OutOfRange {
        /// The whole input.
        input: String,
    },
}

/// How a quantity is written, as Kubernetes' `resource.Format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// Powers of ten with SI suffixes: `500m`, `2`, `1k`, `12M`.
    #[default]
    DecimalSI,
    /// Powers of 1024 with IEC suffixes: `1Ki`, `1536Mi`. Values below 1024 or that are not
    /// whole numbers are written in [`Format::DecimalSI`], as Kubernetes does.
    BinarySI,
    /// Powers of ten with an exponent: `12e6`, `1e-3`.
    DecimalExponent,
}

/// A Kubernetes resource quantity.
///
/// Equality, ordering and hashing compare the value only: `1Gi == 1073741824`. The
/// [`Format`] only drives [`Display`](fmt::Display).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantity {
    /// The value in nano-units, `|nanos| <= MAX_NANOS`.
    nanos: i128,
    /// How to write it.
    format: Format,
}

impl Quantity {
    /// Zero, in [`Format::DecimalSI`].
    pub const ZERO: Quantity = Quantity {
        nanos: 0,
        format: Format::DecimalSI,
    };

    /// A whole number of units (bytes, pods, cores), in [`Format::DecimalSI`].
    pub fn from_value(value: i64) -> Quantity {
        Quantity {
            nanos: i128::from(value) * NANOS_PER_UNIT,
            format: Format::DecimalSI,
        }
    }

    /// A number of milli-units (CPU millicores), in [`Format::DecimalSI`].
    pub fn from_millis(millis: i64) -> Quantity {
        Quantity {
            nanos: i128::from(millis) * NANOS_PER_MILLI,
            format: Format::DecimalSI,
        }
    }

    /// A number of nano-units, or `None` when the magnitude exceeds `i64::MAX` units.
    pub fn from_nanos(nanos: i128, format: Format) -> Option<Quantity> {
        (nanos.unsigned_abs() <= MAX_NANOS.unsigned_abs()).then_some(Quantity { nanos, format })
    }

    /// The same value written in another format.
    #[must_use]
    pub fn with_format(self, format: Format) -> Quantity {
        Quantity { format, ..self }
    }

    /// The format [`Display`](fmt::Display) uses.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The exact value in nano-units.
    pub fn to_nanos(&self) -> i128 {
        self.nanos
    }

    /// The value in milli-units, rounded up away from zero (Kubernetes `MilliValue`), or `None`
    /// when it does not fit an `i64`.
    pub fn to_millis(&self) -> Option<i64> {
        i64::try_from(div_away_from_zero(self.nanos, NANOS_PER_MILLI)).ok()
    }

    /// The value in units (bytes, cores), rounded up away from zero (Kubernetes `Value`).
    pub fn to_value(&self) -> i64 {
        let value = div_away_from_zero(self.nanos, NANOS_PER_UNIT);
        // |nanos| <= i64::MAX units, so the rounded value still fits.
        i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
    }

    /// Whether the value is a whole number of units.
    pub fn is_integer(&self) -> bool {
        self.nanos % NANOS_PER_UNIT == 0
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Whether the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The sum, in `self`'s format, or `None` when it leaves the representable range.
    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        Quantity::from_nanos(self.nanos.checked_add(other.nanos)?, self.format)
    }

    /// The difference, in `self`'s format, or `None` when it leaves the representable range.
    pub fn checked_sub(self, other: Quantity) -> Option<Quantity> {
        Quantity::from_nanos(self.nanos.checked_sub(other.nanos)?, self.format)
    }

    /// The product by an integer, or `None` when it leaves the representable range.
    pub fn checked_mul(self, factor: i64) -> Option<Quantity> {
        Quantity::from_nanos(self.nanos.checked_mul(i128::from(factor))?, self.format)
    }

    /// Parses a quantity (the same as [`str::parse`]).
    pub fn parse(input: &str) -> Result<Quantity, Error> {
        parse(input)
    }
}

/// Divides, rounding any remainder away from zero.
fn div_away_from_zero(n: i128, d: i128) -> i128 {
    let (q, r) = (n / d, n % d);
    match r.cmp(&0) {
        Ordering::Equal => q,
        Ordering::Greater => q + 1,
        Ordering::Less => q - 1,
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Quantity) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Quantity) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Quantity) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.nanos.hash(state);
    }
}

/// A suffix: a power of 1024, a power of ten and the format it implies.
struct Suffix {
    pow1024: u32,
    pow10: i64,
    format: Format,
}

/// Interprets the suffix. `limit` bounds the magnitude of exponents: anything beyond it
/// overflows or rounds to one nano-unit all the same.
fn parse_suffix(suffix: &str, limit: i64) -> Option<Suffix> {
    let decimal = |pow10| {
        Some(Suffix {
            pow1024: 0,
            pow10,
            format: Format::DecimalSI,
        })
    };
    let binary = |pow1024| {
        Some(Suffix {
            pow1024,
            pow10: 0,
            format: Format::BinarySI,
        })
    };
    match suffix {
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "" => decimal(0),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        _ => {
            let rest = suffix.strip_prefix(['e', 'E'])?;
            let (negative, digits) = match rest.as_bytes().first() {
                Some(b'-') => (true, &rest[1..]),
                Some(b'+') => (false, &rest[1..]),
                _ => (false, rest),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let trimmed = digits.trim_start_matches('0');
            let magnitude = if trimmed.is_empty() {
                0
            } else if trimmed.len() > 18 {
                limit
            } else {
                trimmed.parse::<i64>().map_or(limit, |v| v.min(limit))
            };
            let pow10 = if negative { -magnitude } else { magnitude };
            Some(Suffix {
                pow1024: 0,
                pow10,
                format: Format::DecimalExponent,
            })
        }
    }
}

/// Multiplies a big-endian decimal digit vector by a small factor.
fn mul_digits(digits: &[u8], factor: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(digits.len() + 10);
    let mut carry: u64 = 0;
    for &d in digits.iter().rev() {
        let v = u64::from(d) * u64::from(factor) + carry;
        out.push((v % 10) as u8);
        carry = v / 10;
    }
    while carry > 0 {
        out.push((carry % 10) as u8);
        carry /= 10;
    }
    out.reverse();
    out
}

fn parse(input: &str) -> Result<Quantity, Error> {
    if input.is_empty() {
        return Err(Error::Empty);
    }
    let number_error = |reason| Error::Number {
        input: input.to_owned(),
        reason,
    };
    let bytes = input.as_bytes();
    let mut pos = 0;
    let negative = match bytes[0] {
        b'-' => {
            pos = 1;
            true
        }
        b'+' => {
            pos = 1;
            false
        }
        _ => false,
    };
    let int_start = pos;
    while pos < bytes.len() && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    let int_digits = &input[int_start..pos];
    let mut frac_digits = "";
    if bytes.get(pos) == Some(&b'.') {
        pos += 1;
        let frac_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        frac_digits = &input[frac_start..pos];
        if bytes.get(pos) == Some(&b'.') {
            return Err(number_error("more than one decimal point"));
        }
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(number_error("expected a number before the suffix"));
    }
    let suffix_text = &input[pos..];
    // Exponents beyond this overflow (or round to one nano-unit) whatever the digits are.
    let limit = i64::try_from(input.len())
        .unwrap_or(i64::MAX / 4)
        .saturating_add(64);
    let suffix = parse_suffix(suffix_text, limit).ok_or_else(|| Error::UnknownSuffix {
        input: input.to_owned(),
        suffix: suffix_text.to_owned(),
    })?;
    let out_of_range = || Error::OutOfRange {
        input: input.to_owned(),
    };

    // value = digits * 1024^pow1024 * 10^(pow10 - frac_len), in nano-units: 10^(... + 9).
    let mut digits: Vec<u8> = int_digits
        .bytes()
        .chain(frac_digits.bytes())
        .map(|b| b - b'0')
        .collect();
    for _ in 0..suffix.pow1024 {
        digits = mul_digits(&digits, 1024);
    }
    let leading_zeros = digits.iter().take_while(|&&d| d == 0).count();
    let digits = &digits[leading_zeros..];
    if digits.is_empty() {
        return Ok(Quantity {
            nanos: 0,
            format: suffix.format,
        });
    }
    let frac_len = i64::try_from(frac_digits.len()).map_err(|_| out_of_range())?;
    let pow10 = suffix.pow10 + 9 - frac_len;
    let len = i64::try_from(digits.len()).map_err(|_| out_of_range())?;
    // u128 holds at most 39 decimal digits.
    let (integer, zeros, round_up): (&[u8], i64, bool) = if pow10 >= 0 {
        if len + pow10 > 39 {
            return Err(out_of_range());
        }
        (digits, pow10, false)
    } else {
        let kept = len + pow10;
        if kept <= 0 {
            (&[], 0, true)
        } else {
            let kept = usize::try_from(kept).map_err(|_| out_of_range())?;
            if kept > 39 {
                return Err(out_of_range());
            }
            (&digits[..kept], 0, digits[kept..].iter().any(|&d| d != 0))
        }
    };
    let mut magnitude: u128 = 0;
    let all_digits = integer
        .iter()
        .copied()
        .chain(std::iter::repeat_n(0u8, zeros as usize));
    for d in all_digits {
        magnitude = magnitude
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(d)))
            .ok_or_else(out_of_range)?;
    }
    if round_up {
        magnitude = magnitude.checked_add(1).ok_or_else(out_of_range)?;
    }
    if magnitude > MAX_NANOS.unsigned_abs() {
        return Err(out_of_range());
    }
    let magnitude = i128::try_from(magnitude).map_err(|_| out_of_range())?;
    Ok(Quantity {
        nanos: if negative { -magnitude } else { magnitude },
        format: suffix.format,
    })
}

impl FromStr for Quantity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Quantity, Error> {
        parse(s)
    }
}

impl fmt::Display for Quantity {
    /// Writes the canonical form, as Kubernetes' `Quantity.String`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let sign = if self.nanos < 0 { "-" } else { "" };
        let magnitude = self.nanos.unsigned_abs();
        let unit = NANOS_PER_UNIT.unsigned_abs();
        if self.format == Format::BinarySI && magnitude >= 1024 * unit && magnitude.is_multiple_of(unit) {
            let mut value = magnitude / unit;
            let mut power = 0;
            while power < 6 && value.is_multiple_of(1024) {
                value /= 1024;
                power += 1;
            }
            return write!(f, "{sign}{value}{}", BINARY_SUFFIXES[power]);
        }
        // Largest power of ten that is a multiple of three and keeps the mantissa whole.
        let mut value = magnitude;
        let mut exponent: i32 = -9;
        while exponent < 18 && value.is_multiple_of(1000) {
            value /= 1000;
            exponent += 3;
        }
        if self.format == Format::DecimalExponent {
            return match exponent {
                0 => write!(f, "{sign}{value}"),
                _ => write!(f, "{sign}{value}e{exponent}"),
            };
        }
        let suffix = match exponent {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            _ => "",
        };
        write!(f, "{sign}{value}{suffix}")
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Accepts a quantity string or a JSON number.
struct QuantityVisitor;

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes quantity such as \"250m\" or \"1Gi\", or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        Ok(Quantity::from_value(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        parse(&v.to_string()).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
        if !v.is_finite() {
            return Err(E::custom(format!("invalid quantity {v}: not a finite number")));
        }
        // `Display` of an f64 is its shortest exact decimal form, never in exponent notation.
        parse(&v.to_string()).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Quantity, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(s: &str) -> Quantity {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn canonical_forms_follow_kubernetes() {
        let cases = [
            ("0", "0"),
            ("-0", "0"),
            ("+1", "1"),
            ("1", "1"),
            ("1.0", "1"),
            ("5.", "5"),
            (".5", "500m"),
            ("250m", "250m"),
            ("1500m", "1500m"),
            ("2000m", "2"),
            ("1.5", "1500m"),
            ("0.001", "1m"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("1k", "1k"),
            ("1M", "1M"),
            ("1G", "1G"),
            ("1T", "1T"),
            ("1P", "1P"),
            ("1E", "1E"),
            ("1n", "1n"),
            ("1u", "1u"),
            ("0.1n", "1n"),
            ("-0.1n", "-1n"),
            ("1Ki", "1Ki"),
            ("1Mi", "1Mi"),
            ("1Gi", "1Gi"),
            ("1Ti", "1Ti"),
            ("1Pi", "1Pi"),
            ("1Ei", "1Ei"),
            ("1024Ki", "1Mi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Ki", "512"),
            ("1536Ki", "1536Ki"),
            ("123Mi", "123Mi"),
            ("-1Gi", "-1Gi"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("12e6", "12e6"),
            ("1e3", "1e3"),
            ("1E3", "1e3"),
            ("1e+3", "1e3"),
            ("1e-3", "1e-3"),
            ("1e-1", "100e-3"),
            ("1500e0", "1500"),
            ("1.5e3", "1500"),
            ("100m", "100m"),
            ("-250m", "-250m"),
        ];
        for (input, want) in cases {
            assert_eq!(q(input).to_string(), want, "canonical form of {input}");
        }
    }

    #[test]
    fn values_and_formats() {
        assert_eq!(q("1Gi").to_value(), 1_073_741_824);
        assert_eq!(q("1Gi").format(), Format::BinarySI);
        assert_eq!(q("129e6").to_value(), 129_000_000);
        assert_eq!(q("129e6").format(), Format::DecimalExponent);
        assert_eq!(q("128974848"), q("123Mi"));
        assert_eq!(q("1E"), q("1e18"));
        assert_eq!(q("1E").format(), Format::DecimalSI);
        assert_eq!(q("1E3").to_value(), 1000);
        assert_eq!(q("1e0").to_value(), 1);
        assert_eq!(q("1e-0").to_value(), 1);
        assert_eq!(q("1n").to_nanos(), 1);
        assert_eq!(q("1u").to_nanos(), 1000);
        assert_eq!(q("0.5Ki").to_value(), 512);
        assert_eq!(q("1.5Gi").to_value(), 1_610_612_736);
        assert_eq!(q("1e-20").to_nanos(), 1, "finer than a nano rounds up");
        assert_eq!(q("0.000000000000000000000").to_nanos(), 0);
        let max = i64::MAX.to_string();
        assert_eq!(q(&max).to_value(), i64::MAX);
        assert_eq!(q(&format!("-{max}")).to_value(), -i64::MAX);
    }

    #[test]
    fn rounding_conversions() {
        assert_eq!(q("250m").to_millis(), Some(250));
        assert_eq!(q("250m").to_value(), 1, "Value rounds up");
        assert_eq!(q("0.1m").to_millis(), Some(1), "MilliValue rounds up");
        assert_eq!(q("2").to_millis(), Some(2000));
        assert_eq!(q("1.5").to_value(), 2);
        assert_eq!(q("-1.5").to_value(), -2, "away from zero");
        assert_eq!(q("-0.5m").to_millis(), Some(-1));
        assert_eq!(q("1Ki").to_millis(), Some(1_024_000));
        assert_eq!(q("9E").to_millis(), None, "does not fit an i64 of millis");
        assert!(q("1").is_integer());
        assert!(!q("1500m").is_integer());
    }

    #[test]
    fn constructors_and_arithmetic() {
        assert_eq!(Quantity::from_millis(1500).to_string(), "1500m");
        assert_eq!(Quantity::from_millis(2000).to_string(), "2");
        assert_eq!(Quantity::from_value(1_073_741_824).to_string(), "1073741824");
        assert_eq!(
            Quantity::from_value(1_073_741_824)
                .with_format(Format::BinarySI)
                .to_string(),
            "1Gi"
        );
        assert_eq!(
            Quantity::from_value(1000)
                .with_format(Format::BinarySI)
                .to_string(),
            "1k"
        );
        assert_eq!(
            Quantity::from_millis(1500)
                .with_format(Format::BinarySI)
                .to_string(),
            "1500m"
        );
        assert_eq!(Quantity::from_value(0).to_string(), "0");
        assert_eq!(Quantity::from_millis(i64::MIN).to_millis(), Some(i64::MIN));
        assert_eq!(
            q("1Gi").checked_add(q("512Mi")).map(|x| x.to_string()),
            Some("1536Mi".into())
        );
        assert_eq!(q("1").checked_sub(q("250m")), Some(q("750m")));
        assert_eq!(q("250m").checked_mul(4), Some(q("1")));
        let max = Quantity::from_value(i64::MAX);
        assert_eq!(max.checked_add(q("1n")), None);
        assert_eq!(max.checked_mul(2), None);
        assert!(q("-1").is_negative());
        assert!(q("0Gi").is_zero());
        assert!(q("1M") < q("1Mi"));
        assert_eq!(Quantity::from_nanos(MAX_NANOS + 1, Format::DecimalSI), None);
    }

    #[test]
    fn errors_name_the_input() {
        let cases = [
            ("12Qi", "invalid quantity \"12Qi\": unknown suffix \"Qi\""),
            ("", "invalid quantity \"\": empty string"),
            (
                "--1",
                "invalid quantity \"--1\": expected a number before the suffix",
            ),
            ("1..5", "invalid quantity \"1..5\": more than one decimal point"),
            ("1.2.3", "invalid quantity \"1.2.3\": more than one decimal point"),
            (
                "Gi",
                "invalid quantity \"Gi\": expected a number before the suffix",
            ),
            (".", "invalid quantity \".\": expected a number before the suffix"),
            ("1e", "invalid quantity \"1e\": unknown suffix \"e\""),
            ("1e+", "invalid quantity \"1e+\": unknown suffix \"e+\""),
            ("1e3.5", "invalid quantity \"1e3.5\": unknown suffix \"e3.5\""),
            ("1K", "invalid quantity \"1K\": unknown suffix \"K\""),
            ("1 ", "invalid quantity \"1 \": unknown suffix \" \""),
            ("1Gib", "invalid quantity \"1Gib\": unknown suffix \"Gib\""),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input).map_err(|e| e.to_string()),
                Err(want.to_owned()),
                "{input}"
            );
        }
        for input in [
            "9999999999999999999999999Ei",
            "9223372036854775808",
            "1e19",
            "16Ei",
            "1e999999999999999999999",
            "99999999999999999999999999999999999999999",
        ] {
            assert_eq!(
                parse(input),
                Err(Error::OutOfRange {
                    input: input.to_owned()
                }),
                "{input}"
            );
        }
        assert_eq!(q("1e-999999999999999999999").to_nanos(), 1);
        assert_eq!(q("0e999999999999999999999").to_nanos(), 0);
    }

    #[test]
    fn serde_strings_and_numbers() {
        let x: Quantity = serde_json::from_str("\"1Gi\"").unwrap();
        assert_eq!(serde_json::to_string(&x).unwrap(), "\"1Gi\"");
        let x: Quantity = serde_json::from_str("2").unwrap();
        assert_eq!(x, q("2"));
        let x: Quantity = serde_json::from_str("-3").unwrap();
        assert_eq!(x, q("-3"));
        let x: Quantity = serde_json::from_str("0.5").unwrap();
        assert_eq!(x.to_string(), "500m");
        let err = serde_json::from_str::<Quantity>("18446744073709551615")
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
        let err = serde_json::from_str::<Quantity>("\"12Qi\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown suffix \"Qi\""), "{err}");
        assert!(serde_json::from_str::<Quantity>("true").is_err());
        assert!(serde_json::from_str::<Quantity>("1e300").is_err());
    }

    fn format_strategy() -> impl Strategy<Value = Format> {
        prop_oneof![
            Just(Format::DecimalSI),
            Just(Format::BinarySI),
            Just(Format::DecimalExponent)
        ]
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(nanos in -MAX_NANOS..=MAX_NANOS, format in format_strategy()) {
            let x = Quantity::from_nanos(nanos, format).unwrap_or_default();
            let text = x.to_string();
            let back = parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.to_nanos(), nanos, "{}", text);
            prop_assert_eq!(back.to_string(), text);
        }

        #[test]
        fn format_then_parse_round_numbers(
            mantissa in -100_000i64..100_000,
            shift in 0u32..7,
            pow10 in -9i32..13,
            format in format_strategy(),
        ) {
            // Values built from powers of 1024 and 10 exercise every suffix.
            let binary = i128::from(mantissa) * 1024i128.pow(shift);
            // Without the power of ten the value is always in range (|binary| < 2^77).
            let x = binary
                .checked_mul(10i128.pow((pow10 + 9) as u32))
                .and_then(|n| Quantity::from_nanos(n, format))
                .or_else(|| Quantity::from_nanos(binary, format));
            prop_assert!(x.is_some());
            let x = x.unwrap_or_default();
            let text = x.to_string();
            let back = parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.to_nanos(), x.to_nanos(), "{}", text);
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,40}") {
            let _ = parse(&input);
        }

        #[test]
        fn parse_grammar_like_strings_never_panics(
            input in "[-+]?[0-9.]{0,30}[eEinumkKMGTP+-]{0,3}[0-9]{0,25}",
        ) {
            if let Ok(x) = parse(&input) {
                prop_assert_eq!(parse(&x.to_string()).ok(), Some(x));
            }
        }
    }
}
