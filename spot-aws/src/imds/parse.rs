//! Pure parsers (and the matching formatters) for the IMDS bodies the interruption source reads.
//!
//! Every function here is total: arbitrary input yields a value or an [`Error`] naming the field
//! and the offending value, never a panic.

use serde_json::Value;
use spot_core::event::{ScheduledState, SpotAction};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Longest value echoed back in an error message.
const MAX_ECHO: usize = 80;

/// The layout of scheduled-event times: Go's `2 Jan 2006 15:04:05 GMT` (day not zero-padded).
const SCHEDULED_TIME: &[BorrowedFormatItem<'static>] = format_description!(
    "[day padding:none] [month repr:short case_sensitive:false] [year] [hour]:[minute]:[second] GMT"
);

/// Errors of the IMDS body parsers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The body is not the JSON document expected at `document`.
    #[error("{document}: invalid JSON: {message}")]
    Json {
        /// Which document (`spot/instance-action`, ...).
        document: &'static str,
        /// What the JSON parser said.
        message: String,
    },
    /// A required field is absent (or null).
    #[error("{document}: missing field {field:?}")]
    MissingField {
        /// Which document.
        document: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field has a value this parser does not accept.
    #[error("{document}: field {field:?} has invalid value {value:?}: {reason}")]
    InvalidField {
        /// Which document.
        document: &'static str,
        /// The field.
        field: &'static str,
        /// The value, shortened to 80 characters.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

/// `GET /latest/meta-data/spot/instance-action`: the spot interruption notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceAction {
    /// What EC2 will do.
    pub action: SpotAction,
    /// When (UTC).
    pub time: OffsetDateTime,
}

/// `GET /latest/meta-data/events/recommendations/rebalance`: the rebalance recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebalanceNotice {
    /// When EC2 emitted the recommendation (UTC).
    pub notice_time: OffsetDateTime,
}

/// One element of `GET /latest/meta-data/events/maintenance/scheduled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledEvent {
    /// `system-reboot`, `instance-stop`, ...
    pub code: String,
    /// Free text.
    pub description: String,
    /// `instance-event-...`: stable across polls and state changes.
    pub event_id: String,
    /// Earliest start.
    pub not_before: OffsetDateTime,
    /// Latest end, when given.
    pub not_after: Option<OffsetDateTime>,
    /// Active, canceled or completed.
    pub state: ScheduledState,
}

/// `GET /latest/meta-data/autoscaling/target-lifecycle-state`: where Auto Scaling moves the
/// instance next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetLifecycleState {
    /// `InService`.
    InService,
    /// `Terminated`: Auto Scaling is terminating the instance.
    Terminated,
    /// Any other state (`Standby`, `Detached`, `Warmed:Stopped`, ...), verbatim.
    Other(String),
}

impl TargetLifecycleState {
    /// The state as IMDS spells it.
    pub fn as_str(&self) -> &str {
        match self {
            TargetLifecycleState::InService => "InService",
            TargetLifecycleState::Terminated => "Terminated",
            TargetLifecycleState::Other(s) => s,
        }
    }
}

/// The fields of `GET /latest/dynamic/instance-identity/document` the source uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityDocument {
    /// `instanceId`.
    pub instance_id: String,
    /// `instanceType`.
    pub instance_type: String,
    /// `region`.
    pub region: String,
    /// `availabilityZone`.
    pub availability_zone: String,
    /// `accountId`, when present.
    pub account_id: Option<String>,
    /// `privateIp`, when present.
    pub private_ip: Option<String>,
    /// `imageId`, when present.
    pub image_id: Option<String>,
}

/// Parses the spot `instance-action` document (`{"action": "terminate", "time": "...Z"}`).
pub fn parse_instance_action(body: &str) -> Result<InstanceAction, Error> {
    const DOC: &str = "spot/instance-action";
    let object = json_object(DOC, body)?;
    let action = string_field(DOC, &object, "action")?;
    let action = parse_spot_action(DOC, "action", action)?;
    let time = rfc3339_field(DOC, "time", string_field(DOC, &object, "time")?)?;
    Ok(InstanceAction { action, time })
}

/// Parses the rebalance recommendation document (`{"noticeTime": "...Z"}`).
pub fn parse_rebalance(body: &str) -> Result<RebalanceNotice, Error> {
    const DOC: &str = "events/recommendations/rebalance";
    let object = json_object(DOC, body)?;
    let notice_time = rfc3339_field(DOC, "noticeTime", string_field(DOC, &object, "noticeTime")?)?;
    Ok(RebalanceNotice { notice_time })
}

/// Parses the scheduled events array. An empty body counts as no events.
pub fn parse_scheduled_events(body: &str) -> Result<Vec<ScheduledEvent>, Error> {
    const DOC: &str = "events/maintenance/scheduled";
    if body.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(body).map_err(|e| Error::Json {
        document: DOC,
        message: e.to_string(),
    })?;
    let Value::Array(items) = value else {
        return Err(Error::Json {
            document: DOC,
            message: format!("expected an array, got {}", kind(&value)),
        });
    };
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(object) = item else {
            return Err(Error::Json {
                document: DOC,
                message: format!("expected an array of objects, got {}", kind(&item)),
            });
        };
        let code = string_field(DOC, &object, "Code")?;
        if code.is_empty() {
            return Err(invalid(DOC, "Code", code, "empty"));
        }
        let event_id = string_field(DOC, &object, "EventId")?;
        if event_id.is_empty() {
            return Err(invalid(DOC, "EventId", event_id, "empty"));
        }
        let description = optional_string_field(DOC, &object, "Description")?.unwrap_or_default();
        let state = match string_field(DOC, &object, "State")? {
            s if s.eq_ignore_ascii_case("active") => ScheduledState::Active,
            s if s.eq_ignore_ascii_case("canceled") || s.eq_ignore_ascii_case("cancelled") => {
                ScheduledState::Canceled
            }
            s if s.eq_ignore_ascii_case("completed") => ScheduledState::Completed,
            other => {
                return Err(invalid(
                    DOC,
                    "State",
                    other,
                    "expected active, canceled or completed",
                ));
            }
        };
        let not_before = scheduled_time_field(DOC, "NotBefore", string_field(DOC, &object, "NotBefore")?)?;
        let not_after = match optional_string_field(DOC, &object, "NotAfter")? {
            Some(s) if !s.is_empty() => Some(scheduled_time_field(DOC, "NotAfter", s)?),
            _ => None,
        };
        events.push(ScheduledEvent {
            code: code.to_owned(),
            description: description.to_owned(),
            event_id: event_id.to_owned(),
            not_before,
            not_after,
            state,
        });
    }
    Ok(events)
}

/// Parses the Auto Scaling target lifecycle state (plain text such as `InService`).
pub fn parse_target_lifecycle_state(body: &str) -> Result<TargetLifecycleState, Error> {
    const DOC: &str = "autoscaling/target-lifecycle-state";
    let state = body.trim();
    if state.is_empty() {
        return Err(invalid(DOC, "state", body, "empty"));
    }
    if let Some(bad) = state
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_')))
    {
        return Err(invalid(
            DOC,
            "state",
            state,
            &format!("unexpected character {bad:?}"),
        ));
    }
    Ok(match state {
        "InService" => TargetLifecycleState::InService,
        "Terminated" => TargetLifecycleState::Terminated,
        other => TargetLifecycleState::Other(other.to_owned()),
    })
}

/// Parses the instance identity document.
pub fn parse_identity_document(body: &str) -> Result<IdentityDocument, Error> {
    const DOC: &str = "instance-identity/document";
    let object = json_object(DOC, body)?;
    let required = |field: &'static str| -> Result<String, Error> {
        let value = string_field(DOC, &object, field)?;
        if value.trim().is_empty() {
            return Err(invalid(DOC, field, value, "empty"));
        }
        Ok(value.to_owned())
    };
    let optional = |field: &'static str| -> Result<Option<String>, Error> {
        Ok(optional_string_field(DOC, &object, field)?.map(str::to_owned))
    };
    Ok(IdentityDocument {
        instance_id: required("instanceId")?,
        instance_type: required("instanceType")?,
        region: required("region")?,
        availability_zone: required("availabilityZone")?,
        account_id: optional("accountId")?,
        private_ip: optional("privateIp")?,
        image_id: optional("imageId")?,
    })
}

/// Parses a scheduled-event time such as `21 Jan 2019 09:00:43 GMT`.
pub fn parse_scheduled_time(field: &'static str, value: &str) -> Result<OffsetDateTime, Error> {
    scheduled_time_field("events/maintenance/scheduled", field, value)
}

/// Formats a time the way scheduled events carry it (`21 Jan 2019 09:00:43 GMT`).
pub fn format_scheduled_time(time: OffsetDateTime) -> String {
    let utc = time.to_offset(time::UtcOffset::UTC);
    // Formatting into a String only fails for components the layout lacks; ours has them all.
    utc.format(SCHEDULED_TIME).unwrap_or_else(|_| utc.to_string())
}

/// Formats a time as IMDS does in JSON documents: RFC 3339, UTC, whole seconds.
pub fn format_imds_time(time: OffsetDateTime) -> String {
    let utc = time.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    )
}

/// The IMDS spelling of a spot action.
pub fn spot_action_str(action: SpotAction) -> &'static str {
    match action {
        SpotAction::Terminate => "terminate",
        SpotAction::Stop => "stop",
        SpotAction::Hibernate => "hibernate",
    }
}

/// The IMDS spelling of a scheduled event state.
pub fn scheduled_state_str(state: ScheduledState) -> &'static str {
    match state {
        ScheduledState::Active => "active",
        ScheduledState::Canceled => "canceled",
        ScheduledState::Completed => "completed",
    }
}

/// Parses a spot action (`terminate`, `stop`, `hibernate`); `field` names it in errors.
pub fn parse_spot_action(
    document: &'static str,
    field: &'static str,
    value: &str,
) -> Result<SpotAction, Error> {
    match value.trim() {
        v if v.eq_ignore_ascii_case("terminate") => Ok(SpotAction::Terminate),
        v if v.eq_ignore_ascii_case("stop") => Ok(SpotAction::Stop),
        v if v.eq_ignore_ascii_case("hibernate") => Ok(SpotAction::Hibernate),
        _ => Err(invalid(
            document,
            field,
            value,
            "expected terminate, stop or hibernate",
        )),
    }
}

fn json_object(document: &'static str, body: &str) -> Result<serde_json::Map<String, Value>, Error> {
    let value: Value = serde_json::from_str(body).map_err(|e| Error::Json {
        document,
        message: e.to_string(),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(Error::Json {
            document,
            message: format!("expected an object, got {}", kind(&other)),
        }),
    }
}

fn string_field<'a>(
    document: &'static str,
    object: &'a serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, Error> {
    optional_string_field(document, object, field)?.ok_or(Error::MissingField { document, field })
}

fn optional_string_field<'a>(
    document: &'static str,
    object: &'a serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, Error> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(document, field, &other.to_string(), "expected a string")),
    }
}

fn rfc3339_field(document: &'static str, field: &'static str, value: &str) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::parse(value.trim(), &Rfc3339)
        .map(|t| t.to_offset(time::UtcOffset::UTC))
        .map_err(|e| invalid(document, field, value, &format!("expected an RFC 3339 time: {e}")))
}

fn scheduled_time_field(
    document: &'static str,
    field: &'static str,
    value: &str,
) -> Result<OffsetDateTime, Error> {
    time::PrimitiveDateTime::parse(value.trim(), SCHEDULED_TIME)
        .map(|t| t.assume_utc())
        .map_err(|e| {
            invalid(
                document,
                field,
                value,
                &format!("expected a time like \"21 Jan 2019 09:00:43 GMT\": {e}"),
            )
        })
}

fn invalid(document: &'static str, field: &'static str, value: &str, reason: &str) -> Error {
    let mut shown: String = value.chars().take(MAX_ECHO).collect();
    if shown.len() < value.len() {
        shown.push('…');
    }
    Error::InvalidField {
        document,
        field,
        value: shown,
        reason: reason.to_owned(),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    #[test]
    fn instance_action() {
        let got =
            parse_instance_action("{\n\t\"action\": \"stop\",\n\t\"time\": \"2026-11-22T10:02:00Z\"\n}")
                .unwrap();
        assert_eq!(
            got,
            InstanceAction {
                action: SpotAction::Stop,
                time: datetime!(2026-11-22 10:02:00 UTC)
            }
        );
        let err = parse_instance_action(r#"{"action":"explode","time":"2026-11-22T10:02:00Z"}"#).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidField { field: "action", value, .. } if value == "explode"),
            "{err}"
        );
        let err = parse_instance_action(r#"{"action":"terminate","time":"tomorrow"}"#).unwrap_err();
        assert!(
            err.to_string().contains("\"time\"") && err.to_string().contains("tomorrow"),
            "{err}"
        );
        let err = parse_instance_action(r#"{"action":"terminate"}"#).unwrap_err();
        assert_eq!(
            err,
            Error::MissingField {
                document: "spot/instance-action",
                field: "time"
            }
        );
        assert!(matches!(parse_instance_action("[]"), Err(Error::Json { .. })));
        assert!(matches!(
            parse_instance_action(r#"{"action":3,"time":"x"}"#),
            Err(Error::InvalidField { .. })
        ));
    }

    #[test]
    fn rebalance() {
        let got = parse_rebalance(r#"{"noticeTime": "2020-10-26T15:55:55Z"}"#).unwrap();
        assert_eq!(got.notice_time, datetime!(2020-10-26 15:55:55 UTC));
        let err = parse_rebalance(r#"{"noticeTime": ""}"#).unwrap_err();
        assert!(err.to_string().contains("noticeTime"), "{err}");
    }

    #[test]
    fn scheduled_events() {
        let body = r#"[{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","Description":"scheduled reboot",
  "EventId":"instance-event-0d59937288b749b32","NotAfter":"21 Jan 2019 09:17:23 GMT","State":"active"},
  {"NotBefore":"1 Jan 2020 01:03:47 GMT","Code":"instance-stop","EventId":"instance-event-2","State":"canceled"}]"#;
        let got = parse_scheduled_events(body).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].code, "system-reboot");
        assert_eq!(got[0].not_before, datetime!(2019-01-21 09:00:43 UTC));
        assert_eq!(got[0].not_after, Some(datetime!(2019-01-21 09:17:23 UTC)));
        assert_eq!(got[0].state, ScheduledState::Active);
        assert_eq!(got[1].not_before, datetime!(2020-01-01 01:03:47 UTC));
        assert_eq!(got[1].not_after, None);
        assert_eq!(got[1].description, "");
        assert_eq!(got[1].state, ScheduledState::Canceled);
        assert!(parse_scheduled_events("[]").unwrap().is_empty());
        assert!(parse_scheduled_events("  ").unwrap().is_empty());
        let err = parse_scheduled_events(
            r#"[{"NotBefore":"yesterday","Code":"system-reboot","EventId":"e","State":"active"}]"#,
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidField { field: "NotBefore", value, .. } if value == "yesterday")
        );
        let err = parse_scheduled_events(
            r#"[{"NotBefore":"1 Jan 2020 01:03:47 GMT","Code":"c","EventId":"e","State":"x"}]"#,
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidField { field: "State", .. }));
        assert!(matches!(parse_scheduled_events("{}"), Err(Error::Json { .. })));
        assert!(matches!(parse_scheduled_events("[1]"), Err(Error::Json { .. })));
    }

    #[test]
    fn scheduled_time_round_trips() {
        let t = datetime!(2019-01-01 09:00:43 UTC);
        assert_eq!(format_scheduled_time(t), "1 Jan 2019 09:00:43 GMT");
        assert_eq!(
            parse_scheduled_time("NotBefore", "1 Jan 2019 09:00:43 GMT").unwrap(),
            t
        );
        assert_eq!(
            parse_scheduled_time("NotBefore", "01 Jan 2019 09:00:43 GMT").unwrap(),
            t
        );
        assert_eq!(
            format_imds_time(datetime!(2026-03-04 05:06:07.89 +01:00)),
            "2026-03-04T04:06:07Z"
        );
    }

    #[test]
    fn target_lifecycle_state() {
        assert_eq!(
            parse_target_lifecycle_state("InService").unwrap(),
            TargetLifecycleState::InService
        );
        assert_eq!(
            parse_target_lifecycle_state("Terminated\n").unwrap(),
            TargetLifecycleState::Terminated
        );
        assert_eq!(
            parse_target_lifecycle_state("Warmed:Stopped").unwrap(),
            TargetLifecycleState::Other("Warmed:Stopped".into())
        );
        assert!(matches!(
            parse_target_lifecycle_state(""),
            Err(Error::InvalidField { field: "state", .. })
        ));
        assert!(parse_target_lifecycle_state("<html>").is_err());
    }

    #[test]
    fn identity_document() {
        let body = r#"{"accountId":"123456789012","architecture":"x86_64","availabilityZone":"us-east-1a",
            "billingProducts":null,"imageId":"ami-1","instanceId":"i-0abc","instanceType":"m5.large",
            "privateIp":"10.0.0.1","region":"us-east-1","version":"2017-09-30"}"#;
        let doc = parse_identity_document(body).unwrap();
        assert_eq!(doc.instance_id, "i-0abc");
        assert_eq!(doc.region, "us-east-1");
        assert_eq!(doc.availability_zone, "us-east-1a");
        assert_eq!(doc.instance_type, "m5.large");
        assert_eq!(doc.account_id.as_deref(), Some("123456789012"));
        let err = parse_identity_document(r#"{"instanceId":"i-1","region":"r","availabilityZone":"z"}"#)
            .unwrap_err();
        assert!(matches!(
            err,
            Error::MissingField {
                field: "instanceType",
                ..
            }
        ));
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let long = "x".repeat(1000);
        let err = parse_instance_action(&format!(r#"{{"action":"{long}","time":"t"}}"#)).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }

    fn json_like() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            "[a-zA-Z0-9 :.\\-]{0,30}".prop_map(|s| format!("\"{s}\"")),
            Just("\"21 Jan 2019 09:00:43 GMT\"".to_owned()),
            Just("\"2026-11-22T10:02:00Z\"".to_owned()),
            Just("\"terminate\"".to_owned()),
            Just("\"active\"".to_owned()),
        ];
        let keys = prop_oneof![
            Just("action"),
            Just("time"),
            Just("noticeTime"),
            Just("Code"),
            Just("EventId"),
            Just("State"),
            Just("NotBefore"),
            Just("NotAfter"),
            Just("instanceId"),
            Just("region"),
        ];
        leaf.prop_recursive(3, 24, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|kv| {
                    let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    fn parse_all(body: &str) {
        let _ = parse_instance_action(body);
        let _ = parse_rebalance(body);
        let _ = parse_scheduled_events(body);
        let _ = parse_target_lifecycle_state(body);
        let _ = parse_identity_document(body);
        let _ = parse_scheduled_time("NotBefore", body);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(body in any::<String>()) {
            parse_all(&body);
        }

        #[test]
        fn arbitrary_json_never_panics(body in json_like()) {
            parse_all(&body);
        }

        #[test]
        fn scheduled_times_round_trip(secs in 0i64..4_102_444_800) {
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            prop_assert_eq!(parse_scheduled_time("NotBefore", &format_scheduled_time(t)).unwrap(), t);
        }

        #[test]
        fn instance_action_round_trips(secs in 0i64..4_102_444_800, action in 0usize..3) {
            let action = [SpotAction::Terminate, SpotAction::Stop, SpotAction::Hibernate][action];
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            let body = serde_json::json!({"action": spot_action_str(action), "time": format_imds_time(t)});
            let got = parse_instance_action(&body.to_string()).unwrap();
            prop_assert_eq!(got, InstanceAction { action, time: t });
        }
    }
}
