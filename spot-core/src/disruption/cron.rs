//! Standard 5-field cron schedules in UTC, with the semantics of `robfig/cron`'s standard
//! parser that Karpenter uses for budget schedules: `minute hour day-of-month month
//! day-of-week`, lists (`1,15`), ranges (`1-5`), steps (`*/10`, `5/15`, `1-30/2`), month and
//! weekday names (`JAN`, `mon`), `?` as `*`, and the macros `@yearly`, `@annually`,
//! `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly`.
//!
//! As in cron, when both day fields are restricted a day matches if *either* does; when one of
//! them is `*` (or `?`), both must match.

use std::time::Duration;

use time::{Date, OffsetDateTime, Time, UtcOffset};

/// Why a schedule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron schedule {schedule:?}: {reason}")]
pub struct Error {
    /// The schedule as given.
    pub schedule: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Set when a day field was `*` or `?` (robfig's `starBit`).
const STAR: u64 = 1 << 63;

/// How far back [`Schedule::last_fire_at_or_before`] looks: nine years covers the longest gap
/// between two fires of any schedule that fires at all (29 February across 2100).
const LOOKBACK_DAYS: i64 = 9 * 366;

/// One field's bounds and names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DOW: Field = Field {
    name: "day of week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// A parsed cron schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
}

impl Schedule {
    /// Parses a 5-field schedule or a macro (see the [module documentation](self)).
    pub fn parse(text: &str) -> Result<Schedule, Error> {
        let fail = |reason: String| Error {
            schedule: text.to_owned(),
            reason,
        };
        let trimmed = text.trim();
        if let Some(name) = trimmed.strip_prefix('@') {
            let expanded = match name.to_ascii_lowercase().as_str() {
                "yearly" | "annually" => "0 0 1 1 *",
                "monthly" => "0 0 1 * *",
                "weekly" => "0 0 * * 0",
                "daily" | "midnight" => "0 0 * * *",
                "hourly" => "0 * * * *",
                _ => {
                    return Err(fail(format!(
                        "unknown macro @{name} (expected @yearly, @annually, @monthly, @weekly, \
                         @daily, @midnight or @hourly)"
                    )));
                }
            };
            return Schedule::parse(expanded).map_err(|e| fail(e.reason));
        }
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields.as_slice() else {
            return Err(fail(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                fields.len()
            )));
        };
        Ok(Schedule {
            minute: parse_field(minute, &MINUTE).map_err(fail)?,
            hour: parse_field(hour, &HOUR).map_err(fail)?,
            dom: parse_field(dom, &DOM).map_err(fail)?,
            month: parse_field(month, &MONTH).map_err(fail)?,
            dow: parse_field(dow, &DOW).map_err(fail)?,
        })
    }

    /// Whether the schedule fires on this (UTC) day.
    fn day_matches(&self, date: Date) -> bool {
        if self.month & (1 << u8::from(date.month())) == 0 {
            return false;
        }
        let dom = self.dom & (1 << date.day()) != 0;
        let dow = self.dow & (1 << date.weekday().number_days_from_sunday()) != 0;
        if self.dom & STAR != 0 || self.dow & STAR != 0 {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// Whether the schedule fires at this minute (seconds are ignored).
    pub fn fires_at(&self, at: OffsetDateTime) -> bool {
        let at = at.to_offset(UtcOffset::UTC);
        self.day_matches(at.date())
            && self.hour & (1 << at.hour()) != 0
            && self.minute & (1 << at.minute()) != 0
    }

    /// The latest time at or before `at` when the schedule fires (whole minutes, UTC), looking
    /// back at most nine years; `None` when it does not fire in that span (`0 0 30 2 *`).
    pub fn last_fire_at_or_before(&self, at: OffsetDateTime) -> Option<OffsetDateTime> {
        self.last_fire_within(at, LOOKBACK_DAYS)
    }

    /// The latest fire at or before `at`, scanning back at most `days` days before `at`'s day.
    fn last_fire_within(&self, at: OffsetDateTime, days: i64) -> Option<OffsetDateTime> {
        let at = at.to_offset(UtcOffset::UTC);
        let mut date = at.date();
        for offset in 0..=days {
            if self.day_matches(date) {
                let last_hour = if offset == 0 { at.hour() } else { 23 };
                for hour in (0..=last_hour).rev() {
                    if self.hour & (1 << hour) == 0 {
                        continue;
                    }
                    let last_minute = if offset == 0 && hour == at.hour() {
                        at.minute()
                    } else {
                        59
                    };
                    if let Some(minute) = (0..=last_minute).rev().find(|m| self.minute & (1 << m) != 0) {
                        let time = Time::from_hms(hour, minute, 0).ok()?;
                        return Some(date.with_time(time).assume_utc());
                    }
                }
            }
            date = date.previous_day()?;
        }
        None
    }

    /// Whether a window of `duration` opened by one of the schedule's fires contains `now`:
    /// some fire `f` has `now - duration < f <= now` (Karpenter's `Budget.IsActive`).
    pub fn active(&self, duration: Duration, now: OffsetDateTime) -> bool {
        if duration.is_zero() {
            return false;
        }
        let days = i64::try_from(duration.as_secs() / 86_400 + 1).unwrap_or(i64::MAX);
        let Some(fire) = self.last_fire_within(now, days.min(LOOKBACK_DAYS)) else {
            return false;
        };
        let Ok(duration) = time::Duration::try_from(duration) else {
            return true;
        };
        now - duration < fire
    }
}

/// Parses one field into a bit set, with [`STAR`] when it is `*` or `?` without a step > 1.
fn parse_field(text: &str, field: &Field) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        bits |= parse_range(part, field)?;
    }
    Ok(bits)
}

/// Parses `*`, `?`, `N`, `N-M`, each with an optional `/step`.
fn parse_range(part: &str, field: &Field) -> Result<u64, String> {
    let bad = |what: String| format!("{} field {part:?}: {what}", field.name);
    let (range, step) = match part.split_once('/') {
        Some((range, step)) => {
            let step: u32 = step
                .parse()
                .map_err(|_| bad(format!("step {step:?} is not a number")))?;
            if step == 0 {
                return Err(bad("step must be at least 1".to_owned()));
            }
            (range, Some(step))
        }
        None => (part, None),
    };
    let (start, end, mut star) = if range == "*" || range == "?" {
        (field.min, field.max, true)
    } else {
        match range.split_once('-') {
            Some((low, high)) => (
                value(low, field).map_err(&bad)?,
                value(high, field).map_err(&bad)?,
                false,
            ),
            None => {
                let start = value(range, field).map_err(&bad)?;
                // `N/step` means `N-max/step`.
                (start, if step.is_some() { field.max } else { start }, false)
            }
        }
    };
    if start > end {
        return Err(bad(format!("range start {start} is after its end {end}")));
    }
    let step = step.unwrap_or(1);
    if step > 1 {
        star = false;
    }
    let mut bits = if star { STAR } else { 0 };
    let mut v = start;
    while v <= end {
        bits |= 1 << v;
        v += step;
    }
    Ok(bits)
}

/// One value: a number within the field's bounds, or a name.
fn value(text: &str, field: &Field) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(index) = field.names.iter().position(|n| *n == lower) {
        return Ok(field.min + index as u32);
    }
    let n: u32 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if n < field.min || n > field.max {
        return Err(format!("{n} is outside {}-{}", field.min, field.max));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn parse(text: &str) -> Schedule {
        Schedule::parse(text).unwrap()
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        let s = parse("*/15 9-17 * JAN-mar mon-fri");
        assert!(s.fires_at(datetime!(2026-01-05 09:45 UTC)), "a Monday in January");
        assert!(!s.fires_at(datetime!(2026-01-05 09:44 UTC)));
        assert!(!s.fires_at(datetime!(2026-01-05 18:00 UTC)));
        assert!(!s.fires_at(datetime!(2026-01-04 10:00 UTC)), "a Sunday");
        assert!(!s.fires_at(datetime!(2026-04-06 10:00 UTC)), "April");
        let s = parse("5/20 0 1,15 * ?");
        assert!(s.fires_at(datetime!(2026-03-15 00:25 UTC)));
        assert!(s.fires_at(datetime!(2026-03-01 00:45 UTC)));
        assert!(!s.fires_at(datetime!(2026-03-01 00:15 UTC)));
        assert!(!s.fires_at(datetime!(2026-03-02 00:05 UTC)));
        let s = parse("0-30/10 * * * *");
        assert!(s.fires_at(datetime!(2026-03-02 07:30 UTC)));
        assert!(!s.fires_at(datetime!(2026-03-02 07:40 UTC)));
    }

    #[test]
    fn day_fields_or_when_both_restricted() {
        // The 13th OR any Friday.
        let s = parse("0 0 13 * 5");
        assert!(s.fires_at(datetime!(2026-01-13 00:00 UTC)), "a Tuesday the 13th");
        assert!(s.fires_at(datetime!(2026-01-16 00:00 UTC)), "a Friday");
        assert!(!s.fires_at(datetime!(2026-01-14 00:00 UTC)));
        // `*/1` keeps the star: both must match.
        let s = parse("0 0 13 * */1");
        assert!(!s.fires_at(datetime!(2026-01-16 00:00 UTC)));
        // A step > 1 on `*` makes the field restricted: OR again.
        let s = parse("0 0 13 * */7");
        assert!(s.fires_at(datetime!(2026-01-18 00:00 UTC)), "Sunday via */7");
    }

    #[test]
    fn macros() {
        for (text, at, fires) in [
            ("@daily", datetime!(2026-05-06 00:00 UTC), true),
            ("@midnight", datetime!(2026-05-06 00:01 UTC), false),
            ("@hourly", datetime!(2026-05-06 13:00 UTC), true),
            ("@weekly", datetime!(2026-05-10 00:00 UTC), true),
            ("@weekly", datetime!(2026-05-11 00:00 UTC), false),
            ("@monthly", datetime!(2026-05-01 00:00 UTC), true),
            ("@yearly", datetime!(2026-01-01 00:00 UTC), true),
            ("@annually", datetime!(2026-02-01 00:00 UTC), false),
        ] {
            assert_eq!(parse(text).fires_at(at), fires, "{text} at {at}");
        }
    }

    #[test]
    fn last_fire_and_windows() {
        let s = parse("30 2 * * *");
        assert_eq!(
            s.last_fire_at_or_before(datetime!(2026-05-06 02:30:59 UTC)),
            Some(datetime!(2026-05-06 02:30 UTC))
        );
        assert_eq!(
            s.last_fire_at_or_before(datetime!(2026-05-06 02:29 UTC)),
            Some(datetime!(2026-05-05 02:30 UTC))
        );
        let hour = Duration::from_secs(3600);
        assert!(s.active(hour, datetime!(2026-05-06 02:30 UTC)), "at the fire");
        assert!(s.active(hour, datetime!(2026-05-06 03:29:59 UTC)));
        assert!(
            !s.active(hour, datetime!(2026-05-06 03:30 UTC)),
            "window is (f, f+d)"
        );
        assert!(!s.active(hour, datetime!(2026-05-06 02:29 UTC)));
        assert!(!s.active(Duration::ZERO, datetime!(2026-05-06 02:30 UTC)));
        // A window longer than a day across midnight and month ends.
        let s = parse("0 22 31 * *");
        let two_days = Duration::from_secs(48 * 3600);
        assert!(s.active(two_days, datetime!(2026-06-01 10:00 UTC)));
        assert!(!s.active(two_days, datetime!(2026-06-02 22:00 UTC)));
        // Leap days: the last 29 February before 2026 is 2024.
        let s = parse("0 0 29 2 *");
        assert_eq!(
            s.last_fire_at_or_before(datetime!(2026-05-06 00:00 UTC)),
            Some(datetime!(2024-02-29 00:00 UTC))
        );
        assert_eq!(
            parse("0 0 30 2 *").last_fire_at_or_before(datetime!(2026-05-06 00:00 UTC)),
            None
        );
        // Offsets are converted to UTC.
        let local = datetime!(2026-05-06 04:30 +02:00);
        assert!(parse("30 2 * * *").fires_at(local));
    }

    #[test]
    fn errors_name_the_field() {
        for (text, reason) in [
            (
                "* * *",
                "expected 5 fields (minute hour day-of-month month day-of-week), got 3",
            ),
            ("60 * * * *", "minute field \"60\": 60 is outside 0-59"),
            (
                "* 5-2 * * *",
                "hour field \"5-2\": range start 5 is after its end 2",
            ),
            ("* * 0 * *", "day of month field \"0\": 0 is outside 1-31"),
            ("* * * foo *", "month field \"foo\": \"foo\" is not a number"),
            ("* * * * 7", "day of week field \"7\": 7 is outside 0-6"),
            ("*/0 * * * *", "minute field \"*/0\": step must be at least 1"),
            ("*/x * * * *", "minute field \"*/x\": step \"x\" is not a number"),
            (
                "@every 5m",
                "unknown macro @every 5m (expected @yearly, @annually, @monthly, @weekly, @daily, \
                 @midnight or @hourly)",
            ),
        ] {
            let err = Schedule::parse(text).unwrap_err();
            assert_eq!(err.reason, reason, "{text}");
            assert_eq!(err.schedule, text);
        }
    }
}
