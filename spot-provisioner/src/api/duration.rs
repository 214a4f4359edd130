//! Go-style durations as Karpenter's API spells them: `720h`, `30s`, `1h30m`, `1.5h`, `300ms`,
//! and, for fields that can be switched off, `Never`.
//!
//! Parsing is spot-core's [`parse_go_duration`], Go's `time.ParseDuration` (decimal numbers
//! with optional fractions, units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, a bare `0`) without
//! negative durations: no Karpenter field takes one. Formatting is the shortest Go-parseable spelling
//! (`720h`, `1h30m`, `0s`, `1.5s`), so values round-trip through the API unchanged in meaning.
//!
//! Serde errors name the field: each field deserializes through a function generated with
//! [`field_deserializers!`](crate::api::duration) that puts its JSON path in the message.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The spelling of a disabled duration.
pub const NEVER: &str = "Never";

pub use spot_core::disruption::duration::{Error as DurationError, parse_go_duration};

/// The shortest Go-parseable spelling: `720h`, `1h30m`, `45s`, `1.5s`, `0s`.
pub fn format_go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let nanos = d.subsec_nanos();
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
    } else if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// A duration field without an off switch (`terminationGracePeriod`, budget `duration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        GoDuration(d)
    }
}

impl FromStr for GoDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, DurationError> {
        parse_go_duration(s).map(GoDuration)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_go_duration(self.0))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^([0-9]+(s|m|h))+$"})
    }
}

/// A duration that can be switched off with `Never` (Karpenter's `NillableDuration`):
/// `expireAfter`, `consolidateAfter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NillableDuration {
    /// `Never`.
    Never,
    /// After this long.
    After(Duration),
}

impl NillableDuration {
    /// The duration, `None` for `Never`.
    pub fn duration(self) -> Option<Duration> {
        match self {
            NillableDuration::Never => None,
            NillableDuration::After(d) => Some(d),
        }
    }
}

impl FromStr for NillableDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, DurationError> {
        if s == NEVER {
            return Ok(NillableDuration::Never);
        }
        parse_go_duration(s).map(NillableDuration::After)
    }
}

impl fmt::Display for NillableDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NillableDuration::Never => f.write_str(NEVER),
            NillableDuration::After(d) => f.write_str(&format_go_duration(*d)),
        }
    }
}

impl Serialize for NillableDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NillableDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for NillableDuration {
    fn schema_name() -> Cow<'static, str> {
        "NillableDuration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^(([0-9]+(s|m|h))+|Never)$"})
    }
}

/// A value parsed from a string field, with errors that name the field.
pub(crate) trait FieldParse: Sized {
    /// Deserializes the field's string and parses it, naming `field` in errors.
    fn parse_field<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<Self, D::Error>;
}

fn parse_named<'de, D, T>(d: D, field: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = DurationError>,
{
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|e: DurationError| serde::de::Error::custom(format!("{field}: {e}")))
}

fn parse_named_optional<'de, D, T>(d: D, field: &str) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = DurationError>,
{
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| {
        t.parse()
            .map_err(|e: DurationError| serde::de::Error::custom(format!("{field}: {e}")))
    })
    .transpose()
}

impl FieldParse for GoDuration {
    fn parse_field<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<Self, D::Error> {
        parse_named(d, field)
    }
}

impl FieldParse for NillableDuration {
    fn parse_field<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<Self, D::Error> {
        parse_named(d, field)
    }
}

impl FieldParse for Option<GoDuration> {
    fn parse_field<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<Self, D::Error> {
        parse_named_optional(d, field)
    }
}

impl FieldParse for Option<NillableDuration> {
    fn parse_field<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<Self, D::Error> {
        parse_named_optional(d, field)
    }
}

/// Defines `fn NAME<'de, D>(d: D) -> Result<TYPE, D::Error>` deserializers that name their
/// field's JSON path in errors, for `#[serde(deserialize_with = "...")]`.
macro_rules! field_deserializers {
    ($($name:ident: $ty:ty = $path:literal;)*) => {
        $(
            #[doc = concat!("Deserializes `", $path, "`, naming it in errors.")]
            pub(crate) fn $name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                <$ty as $crate::api::duration::FieldParse>::parse_field(d, $path)
            }
        )*
    };
}
pub(crate) use field_deserializers;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations_and_never() {
        assert_eq!(
            "1.5h".parse::<GoDuration>().unwrap().get(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            "Never".parse::<NillableDuration>().unwrap(),
            NillableDuration::Never
        );
        assert_eq!(
            "0".parse::<NillableDuration>().unwrap(),
            NillableDuration::After(Duration::ZERO)
        );
        let e = "never".parse::<NillableDuration>().unwrap_err();
        assert!(e.to_string().contains("\"never\""), "{e}");
        assert!("-5s".parse::<GoDuration>().is_err());
    }

    #[test]
    fn formats_shortest_and_round_trips() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(720 * 3600), "720h"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_secs(3601), "1h1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(300), "0.3s"),
        ] {
            assert_eq!(format_go_duration(d), s);
            assert_eq!(parse_go_duration(s).unwrap(), d);
        }
    }

    #[test]
    fn nillable_and_plain_serde() {
        let n: NillableDuration = serde_json::from_str("\"Never\"").unwrap();
        assert_eq!(n, NillableDuration::Never);
        assert_eq!(n.duration(), None);
        let n: NillableDuration = serde_json::from_str("\"90m\"").unwrap();
        assert_eq!(n.duration(), Some(Duration::from_secs(5400)));
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"1h30m\"");
        assert!(serde_json::from_str::<GoDuration>("\"Never\"").is_err());
        let g: GoDuration = serde_json::from_str("\"45s\"").unwrap();
        assert_eq!(g.get(), Duration::from_secs(45));
        assert_eq!(serde_json::to_string(&g).unwrap(), "\"45s\"");
    }

    field_deserializers! {
        test_field: NillableDuration = "spec.test";
        test_optional: Option<GoDuration> = "spec.optional";
    }

    #[derive(Debug, Deserialize)]
    struct Holder {
        #[serde(deserialize_with = "test_field")]
        a: NillableDuration,
        #[serde(default, deserialize_with = "test_optional")]
        b: Option<GoDuration>,
    }

    #[test]
    fn field_errors_name_the_field() {
        let e = serde_json::from_str::<Holder>(r#"{"a": "5x"}"#).unwrap_err();
        assert!(
            e.to_string().contains("spec.test: invalid duration \"5x\""),
            "{e}"
        );
        let e = serde_json::from_str::<Holder>(r#"{"a": "5s", "b": "Never"}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("spec.optional: invalid duration \"Never\""),
            "{e}"
        );
        let h = serde_json::from_str::<Holder>(r#"{"a": "Never"}"#).unwrap();
        assert_eq!((h.a, h.b), (NillableDuration::Never, None));
    }
}
