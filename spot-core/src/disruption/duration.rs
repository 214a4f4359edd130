//! Go durations as Karpenter's API and annotations spell them (`30m`, `1h30m`, `1.5h`,
//! `300ms`, `0`), parsed as Go's `time.ParseDuration` does but without negative values.

use std::time::Duration;

/// Why a Go duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {value:?}: {reason}")]
pub struct Error {
    /// The text given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a Go duration: a sequence of decimal numbers, each with an optional fraction and a
/// unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), or a bare `0`. Fractions beyond nanoseconds
/// are truncated, as in Go. Negative durations are refused.
pub fn parse_go_duration(text: &str) -> Result<Duration, Error> {
    let err = |reason| Error {
        value: text.to_owned(),
        reason,
    };
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(err("negative durations are not allowed"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(err("empty duration"));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => a.split_at(a.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(err("expected a number"));
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err("missing unit (one of ns, us, ms, s, m, h)")),
            _ => return Err(err("unknown unit (expected one of ns, us, ms, s, m, h)")),
        };
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| err("number too large"))?
        };
        let mut nanos = whole
            .checked_mul(scale)
            .ok_or_else(|| err("duration too large"))?;
        let mut place = scale;
        for digit in frac.bytes() {
            place /= 10;
            if place == 0 {
                break;
            }
            nanos += u128::from(digit - b'0') * place;
        }
        total = total
            .checked_add(nanos)
            .filter(|t| *t <= i64::MAX as u128)
            .ok_or_else(|| err("duration too large"))?;
        rest = after;
    }
    Ok(Duration::new(
        (total / 1_000_000_000) as u64,
        (total % 1_000_000_000) as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_spellings() {
        let cases = [
            ("0", 0),
            ("30s", 30_000),
            ("30m", 1_800_000),
            ("1h30m", 5_400_000),
            ("1.5h", 5_400_000),
            ("+2m", 120_000),
            ("300ms", 300),
            ("720h", 2_592_000_000),
        ];
        for (text, millis) in cases {
            assert_eq!(
                parse_go_duration(text).unwrap(),
                Duration::from_millis(millis),
                "{text}"
            );
        }
        assert_eq!(parse_go_duration("1us").unwrap(), Duration::from_micros(1));
    }

    #[test]
    fn refuses_bad_input() {
        for (text, reason) in [
            ("", "empty duration"),
            ("-1m", "negative durations are not allowed"),
            ("10", "missing unit (one of ns, us, ms, s, m, h)"),
            ("10d", "unknown unit (expected one of ns, us, ms, s, m, h)"),
            ("true", "expected a number"),
            ("h", "expected a number"),
            ("99999999999999999999h", "duration too large"),
        ] {
            let err = parse_go_duration(text).unwrap_err();
            assert_eq!(err.reason, reason, "{text}");
            assert_eq!(err.value, text);
        }
    }
}
