//! Inclusive numeric ranges and the parsers for the selector's quantities.
//!
//! Every numeric filter of the selector is a [`Range`]: `--X v` is the range `[v, v]`,
//! `--X-min a` is `[a, +inf)`, `--X-max b` is `[0, b]` (all quantities are non-negative),
//! and both bounds are inclusive. [`Range::from_flags`] builds one from the three flags and
//! rejects `--X` combined with a bound and `min > max`, naming the flag.
//!
//! Quantities a type does not have (GPUs, GPU memory, local storage on an EBS-only type) are
//! zero, so a range keeps such a type exactly when it contains zero: `--gpus-max 2` keeps the
//! types without GPUs (ec2-instance-selector drops them), `--gpus-min 1` drops them.

use std::fmt;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `--X` was combined with `--X-min` or `--X-max`.
    #[error("--{flag} cannot be combined with --{flag}-min or --{flag}-max")]
    ExactWithBounds {
        /// The flag, without dashes.
        flag: String,
    },
    /// The lower bound is greater than the upper bound.
    #[error("--{flag}-min {min} is greater than --{flag}-max {max}")]
    Contradiction {
        /// The flag, without dashes.
        flag: String,
        /// The lower bound as given.
        min: String,
        /// The upper bound as given.
        max: String,
    },
    /// A bound that is not a number (NaN).
    #[error("invalid bound for --{flag}: {value}")]
    InvalidBound {
        /// The flag, without dashes.
        flag: String,
        /// The bound as given.
        value: String,
    },
    /// A size that does not parse.
    #[error(
        "invalid size {value:?}: expected a number of GiB, optionally with a unit: 512mb, 4, 4gb, 4GiB, 1tb"
    )]
    Size {
        /// The text as given.
        value: String,
    },
    /// A vCPU-to-memory ratio that does not parse.
    #[error("invalid vCPU-to-memory ratio {value:?}: expected VCPUS:GIB with positive numbers, such as 1:4")]
    Ratio {
        /// The text as given.
        value: String,
    },
    /// A number that does not parse, or is negative or not finite.
    #[error("invalid number {value:?}: expected a finite non-negative number")]
    Number {
        /// The text as given.
        value: String,
    },
}

/// An inclusive range; a missing bound is unbounded on that side.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Range<T> {
    /// Lower bound, inclusive.
    pub min: Option<T>,
    /// Upper bound, inclusive.
    pub max: Option<T>,
}

impl<T: PartialOrd + Copy + fmt::Display> Range<T> {
    /// The range holding exactly `value`.
    pub fn exact(value: T) -> Self {
        Range {
            min: Some(value),
            max: Some(value),
        }
    }

    /// `[min, +inf)`.
    pub fn at_least(min: T) -> Self {
        Range {
            min: Some(min),
            max: None,
        }
    }

    /// `(-inf, max]`; for the selector's non-negative quantities, `[0, max]`.
    pub fn at_most(max: T) -> Self {
        Range {
            min: None,
            max: Some(max),
        }
    }

    /// `[min, max]`, unchecked: see [`Range::validate`].
    pub fn between(min: T, max: T) -> Self {
        Range {
            min: Some(min),
            max: Some(max),
        }
    }

    /// Builds the range of a `--FLAG` / `--FLAG-min` / `--FLAG-max` triple; `None` when no
    /// flag was given.
    pub fn from_flags(
        flag: &str,
        exact: Option<T>,
        min: Option<T>,
        max: Option<T>,
    ) -> Result<Option<Self>, Error> {
        Self::from_flags_shown(flag, exact, min, max, |v| v.to_string())
    }

    /// [`Range::from_flags`], showing bounds in errors with `show` (for values stored in
    /// another unit than the user writes, such as MiB for `--memory`).
    pub fn from_flags_shown(
        flag: &str,
        exact: Option<T>,
        min: Option<T>,
        max: Option<T>,
        show: impl Fn(T) -> String,
    ) -> Result<Option<Self>, Error> {
        let range = match (exact, min, max) {
            (None, None, None) => return Ok(None),
            (Some(v), None, None) => Range::exact(v),
            (Some(_), _, _) => {
                return Err(Error::ExactWithBounds {
                    flag: flag.to_owned(),
                });
            }
            (None, min, max) => Range { min, max },
        };
        range.validate_shown(flag, show)?;
        Ok(Some(range))
    }

    /// Checks that both bounds are numbers and `min <= max`; `flag` names the range in the
    /// error.
    pub fn validate(&self, flag: &str) -> Result<(), Error> {
        self.validate_shown(flag, |v| v.to_string())
    }

    /// [`Range::validate`], showing bounds in errors with `show`.
    pub fn validate_shown(&self, flag: &str, show: impl Fn(T) -> String) -> Result<(), Error> {
        for bound in [self.min, self.max].into_iter().flatten() {
            if bound.partial_cmp(&bound).is_none() {
                return Err(Error::InvalidBound {
                    flag: flag.to_owned(),
                    value: bound.to_string(),
                });
            }
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            return Err(Error::Contradiction {
                flag: flag.to_owned(),
                min: show(min),
                max: show(max),
            });
        }
        Ok(())
    }

    /// Whether `value` lies within the bounds (inclusive).
    pub fn contains(&self, value: T) -> bool {
        self.min.is_none_or(|min| value >= min) && self.max.is_none_or(|max| value <= max)
    }
}

fn trimmed(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Formats MiB as GiB with at most three decimals: `4GiB`, `0.5GiB`.
pub fn format_gib(mib: f64) -> String {
    format!("{}GiB", trimmed(mib / 1024.0))
}

/// Formats GiB per vCPU as a ratio: `1:4`, `1:1.5`.
pub fn format_ratio(gib_per_vcpu: f64) -> String {
    format!("1:{}", trimmed(gib_per_vcpu))
}

impl<T: fmt::Display> fmt::Display for Range<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.min, &self.max) {
            (Some(min), Some(max)) => write!(f, "[{min}, {max}]"),
            (Some(min), None) => write!(f, "[{min}, +inf)"),
            (None, Some(max)) => write!(f, "[0, {max}]"),
            (None, None) => f.write_str("any"),
        }
    }
}

/// Parses a size into MiB. A bare number is GiB; the units `m`/`mb`/`mib`, `g`/`gb`/`gib`
/// and `t`/`tb`/`tib` are case-insensitive, may follow a space, and are all binary
/// (`4gb` is 4096 MiB, as ec2-instance-selector reads it).
pub fn parse_size_mib(text: &str) -> Result<f64, Error> {
    let err = || Error::Size {
        value: text.to_owned(),
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    if number.is_empty() || number.starts_with('.') {
        return Err(err());
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    let factor = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "g" | "gb" | "gib" => 1024.0,
        "m" | "mb" | "mib" => 1.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    Ok(value * factor)
}

/// Parses a `VCPUS:GIB` ratio such as `1:4` into GiB of memory per vCPU (4.0).
pub fn parse_ratio(text: &str) -> Result<f64, Error> {
    let err = || Error::Ratio {
        value: text.to_owned(),
    };
    let (vcpus, memory) = text.trim().split_once(':').ok_or_else(err)?;
    let vcpus = parse_non_negative(vcpus.trim()).map_err(|_| err())?;
    let memory = parse_non_negative(memory.trim()).map_err(|_| err())?;
    if vcpus == 0.0 || memory == 0.0 {
        return Err(err());
    }
    Ok(memory / vcpus)
}

/// Parses a finite, non-negative decimal number (prices, Gbps).
pub fn parse_non_negative(text: &str) -> Result<f64, Error> {
    let err = || Error::Number {
        value: text.to_owned(),
    };
    // Only plain decimals: `f64::from_str` would also take "NaN", "inf" and exponents.
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err());
    }
    let value: f64 = text.parse().map_err(|_| err())?;
    if value.is_finite() { Ok(value) } else { Err(err()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_flags_builds_inclusive_ranges() {
        let r = Range::from_flags("vcpus", Some(2u32), None, None)
            .unwrap()
            .unwrap();
        assert!(r.contains(2) && !r.contains(1) && !r.contains(3));
        let r = Range::from_flags("vcpus", None, Some(2u32), None)
            .unwrap()
            .unwrap();
        assert!(r.contains(2) && r.contains(u32::MAX) && !r.contains(1));
        let r = Range::from_flags("vcpus", None, None, Some(4u32))
            .unwrap()
            .unwrap();
        assert!(r.contains(0) && r.contains(4) && !r.contains(5));
        assert_eq!(Range::<u32>::from_flags("vcpus", None, None, None).unwrap(), None);
    }

    #[test]
    fn from_flags_rejects_contradictions_naming_the_flag() {
        let err = Range::from_flags("gpus", None, Some(4u32), Some(2)).unwrap_err();
        assert_eq!(err.to_string(), "--gpus-min 4 is greater than --gpus-max 2");
        let err = Range::from_flags("memory", Some(1.0), Some(1.0), None).unwrap_err();
        assert!(
            matches!(err, Error::ExactWithBounds { ref flag } if flag == "memory"),
            "{err}"
        );
        let err = Range::between(f64::NAN, 1.0)
            .validate("price-per-hour")
            .unwrap_err();
        assert!(err.to_string().contains("--price-per-hour"), "{err}");
    }

    #[test]
    fn shown_bounds_use_the_user_units() {
        let err =
            Range::from_flags_shown("memory", None, Some(8192.0), Some(4096.0), format_gib).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--memory-min 8GiB is greater than --memory-max 4GiB"
        );
        let err = Range::from_flags_shown("memory", Some(1.0), None, Some(2.0), format_gib).unwrap_err();
        assert!(matches!(err, Error::ExactWithBounds { .. }), "{err}");
        let ok = Range::from_flags_shown("memory", None, Some(512.0), None, format_gib).unwrap();
        assert_eq!(ok, Some(Range::at_least(512.0)));
        assert_eq!(format_gib(512.0), "0.5GiB");
        assert_eq!(format_ratio(1.5), "1:1.5");
        let err = Range::between(8.0, 2.0)
            .validate_shown("vcpus-to-memory-ratio", format_ratio)
            .unwrap_err();
        assert!(err.to_string().contains("-min 1:8 is greater than"), "{err}");
        assert!(
            Range::between(f64::NAN, 1.0)
                .validate_shown("memory", format_gib)
                .is_err()
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("4").unwrap(), 4096.0);
        assert_eq!(parse_size_mib("4gb").unwrap(), 4096.0);
        assert_eq!(parse_size_mib("4GiB").unwrap(), 4096.0);
        assert_eq!(parse_size_mib("4 G").unwrap(), 4096.0);
        assert_eq!(parse_size_mib("512mb").unwrap(), 512.0);
        assert_eq!(parse_size_mib("2.5gb").unwrap(), 2560.0);
        assert_eq!(parse_size_mib("1tb").unwrap(), 1024.0 * 1024.0);
        for bad in ["", "gb", "4xb", "-4", ".5", "4..5", "four", "4 gb gb"] {
            assert!(
                matches!(parse_size_mib(bad), Err(Error::Size { .. })),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn ratios() {
        assert_eq!(parse_ratio("1:4").unwrap(), 4.0);
        assert_eq!(parse_ratio("2:3").unwrap(), 1.5);
        assert_eq!(parse_ratio(" 1 : 2 ").unwrap(), 2.0);
        for bad in ["4", "1:", ":4", "0:4", "1:0", "a:b", "1:4:8", "-1:4"] {
            assert!(
                matches!(parse_ratio(bad), Err(Error::Ratio { .. })),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_non_negative("0.085").unwrap(), 0.085);
        assert_eq!(parse_non_negative("10").unwrap(), 10.0);
        for bad in ["", "NaN", "inf", "-1", "1e3", "1.2.3"] {
            assert!(parse_non_negative(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn display() {
        assert_eq!(Range::between(1, 2).to_string(), "[1, 2]");
        assert_eq!(Range::at_least(1).to_string(), "[1, +inf)");
        assert_eq!(Range::at_most(2).to_string(), "[0, 2]");
    }
}
