//! Pure parsers for the queue messages that announce interruptions.
//!
//! No SDK types here: a message body (text or a parsed JSON value) goes in, typed
//! [`InterruptionEvent`]s (or the reason the message needs no action, or an error naming the
//! offending field and value) come out. Recognised shapes:
//!
//! - EventBridge envelopes (`version`, `id`, `detail-type`, `source`, `time`, `detail`, ...):
//!   - `aws.ec2` / `EC2 Spot Instance Interruption Warning`,
//!   - `aws.ec2` / `EC2 Instance Rebalance Recommendation`,
//!   - `aws.ec2` / `EC2 Instance State-change Notification` (only `stopping`, `stopped`,
//!     `shutting-down` and `terminated` act; `pending` and `running` are ignored),
//!   - `aws.ec2` / `EC2 Capacity Reservation Instance Interruption Warning`,
//!   - `aws.health` / `AWS Health Event` for service `EC2` and category `scheduledChange` (one
//!     event per affected instance; other services and categories are ignored),
//!   - `aws.autoscaling` / `EC2 Instance-terminate Lifecycle Action` and
//!     `EC2 Instance-launch Lifecycle Action`;
//! - direct Auto Scaling lifecycle-hook notifications (`LifecycleTransition`,
//!   `LifecycleActionToken`, ...), including `autoscaling:TEST_NOTIFICATION` (ignored);
//! - any of the above wrapped in an SNS notification (`{"Type":"Notification","Message":"..."}`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};
use spot_core::event::{
    EventId, EventKind, InstanceState, InterruptionEvent, LifecycleAction, LifecycleTransition, Origin,
    ScheduledState, SpotAction,
};
use time::format_description::well_known::{Rfc2822, Rfc3339};
use time::{OffsetDateTime, UtcOffset};

/// How long before the action a spot interruption warning is sent.
pub const SPOT_NOTICE: Duration = Duration::from_secs(120);

/// The longest rendering of an offending value kept in an error message.
const MAX_VALUE_CHARS: usize = 80;

/// Errors of message parsing. Each names the field (as a dotted path) and the value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The body (or an SNS `Message`) is not JSON.
    #[error("{field}: not JSON: {message}")]
    NotJson {
        /// `body`, or `Message` for the inside of an SNS notification.
        field: &'static str,
        /// The JSON parser's message.
        message: String,
    },
    /// A field has the wrong JSON type.
    #[error("{field}: expected {expected}, got {value}")]
    WrongType {
        /// The field's path (`detail.instance-id`).
        field: String,
        /// What was expected (`a string`).
        expected: &'static str,
        /// The value found, abbreviated.
        value: String,
    },
    /// A required field is absent.
    #[error("{field}: missing")]
    Missing {
        /// The field's path.
        field: String,
    },
    /// A field holds a value outside the documented set.
    #[error("{field}: unknown value {value:?}")]
    UnknownValue {
        /// The field's path.
        field: String,
        /// The value found.
        value: String,
    },
    /// A field that should name an EC2 instance does not hold an instance id.
    #[error("{field}: invalid instance id {value:?}")]
    InvalidInstanceId {
        /// The field's path.
        field: String,
        /// The value found.
        value: String,
    },
    /// A timestamp field could not be parsed (RFC 3339 and RFC 2822 are accepted).
    #[error("{field}: invalid timestamp {value:?}")]
    InvalidTime {
        /// The field's path.
        field: String,
        /// The value found.
        value: String,
    },
    /// A field contradicts the message's `detail-type`.
    #[error("{field}: value {value:?} contradicts detail-type {detail_type:?}")]
    Inconsistent {
        /// The field's path.
        field: String,
        /// The value found.
        value: String,
        /// The envelope's detail-type.
        detail_type: String,
    },
    /// A well-formed EventBridge event of a source or detail-type this parser does not handle.
    #[error("unsupported event: source {event_source:?}, detail-type {detail_type:?}")]
    Unsupported {
        /// The envelope's `source`.
        event_source: String,
        /// The envelope's `detail-type`.
        detail_type: String,
    },
    /// JSON that is neither an EventBridge event, an Auto Scaling notification nor an SNS
    /// notification.
    #[error("unrecognised message: no detail-type, LifecycleTransition, Event or SNS Type field")]
    Unrecognised,
    /// An SNS notification inside an SNS notification.
    #[error("Message: SNS notification nested inside an SNS notification")]
    NestedSns,
}

impl Error {
    /// Whether the message was understood but is of a kind this parser does not handle (as
    /// opposed to malformed).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. } | Error::Unrecognised)
    }
}

/// What a message means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Events to act on (never empty).
    Events(Vec<InterruptionEvent>),
    /// A recognised message that needs no action; it can be deleted.
    Ignored {
        /// Why no action is needed.
        reason: String,
    },
}

/// What the parser needs to know about the message besides its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageContext {
    /// The queue's message id (recorded in each event's [`Origin::Queue`]).
    pub message_id: String,
    /// When the message was received; the observation time of messages without a timestamp.
    pub received_at: OffsetDateTime,
}

/// Parses a message body.
pub fn parse_body(body: &str, ctx: &MessageContext) -> Result<Parsed, Error> {
    let value: Value = serde_json::from_str(body).map_err(|e| Error::NotJson {
        field: "body",
        message: e.to_string(),
    })?;
    parse_value(&value, ctx)
}

/// Parses a message body already read as JSON.
pub fn parse_value(value: &Value, ctx: &MessageContext) -> Result<Parsed, Error> {
    parse_inner(value, ctx, false)
}

fn parse_inner(value: &Value, ctx: &MessageContext, in_sns: bool) -> Result<Parsed, Error> {
    let root = Fields::root(value, if in_sns { "Message" } else { "body" })?;
    if let Some(kind) = root.opt_str("Type")?
        && (root.map.contains_key("Message") || root.map.contains_key("TopicArn"))
    {
        if kind != "Notification" {
            return Ok(Parsed::Ignored {
                reason: format!("SNS {kind} message"),
            });
        }
        if in_sns {
            return Err(Error::NestedSns);
        }
        let text = root.str("Message")?;
        let inner: Value = serde_json::from_str(text).map_err(|e| Error::NotJson {
            field: "Message",
            message: e.to_string(),
        })?;
        return parse_inner(&inner, ctx, true);
    }
    if root.map.contains_key("detail-type") {
        return parse_eventbridge(&root, ctx);
    }
    if root.map.contains_key("LifecycleTransition") || root.map.contains_key("Event") {
        return parse_direct_asg(&root, ctx);
    }
    Err(Error::Unrecognised)
}

const SPOT_ITN: &str = "EC2 Spot Instance Interruption Warning";
const REBALANCE: &str = "EC2 Instance Rebalance Recommendation";
const STATE_CHANGE: &str = "EC2 Instance State-change Notification";
const CAPACITY_RESERVATION: &str = "EC2 Capacity Reservation Instance Interruption Warning";
const HEALTH: &str = "AWS Health Event";
const ASG_TERMINATE: &str = "EC2 Instance-terminate Lifecycle Action";
const ASG_LAUNCH: &str = "EC2 Instance-launch Lifecycle Action";
const TEST_NOTIFICATION: &str = "autoscaling:TEST_NOTIFICATION";

fn parse_eventbridge(root: &Fields<'_>, ctx: &MessageContext) -> Result<Parsed, Error> {
    let detail_type = root.str("detail-type")?;
    let event_source = root.str("source")?;
    let id = root.str("id")?;
    let time = match root.opt_str("time")? {
        Some(text) => parse_time("time", text)?,
        None => ctx.received_at,
    };
    let origin = Origin::Queue {
        message_id: ctx.message_id.clone(),
        upstream_id: Some(id.to_owned()),
    };
    let single = |detail: &Fields<'_>, key: &str, kind: EventKind| -> Result<Parsed, Error> {
        let instance = detail.instance_id(key)?;
        Ok(Parsed::Events(vec![InterruptionEvent::new(
            instance,
            kind,
            id,
            time,
            origin.clone(),
        )]))
    };
    match (event_source, detail_type) {
        ("aws.ec2", SPOT_ITN) => {
            let detail = root.object("detail")?;
            let action = match detail.str("instance-action")? {
                "terminate" => SpotAction::Terminate,
                "stop" => SpotAction::Stop,
                "hibernate" => SpotAction::Hibernate,
                other => return Err(detail.unknown("instance-action", other)),
            };
            let deadline = time
                .checked_add(time::Duration::seconds(SPOT_NOTICE.as_secs() as i64))
                .ok_or_else(|| Error::InvalidTime {
                    field: "time".into(),
                    value: format!("{time}"),
                })?;
            single(
                &detail,
                "instance-id",
                EventKind::SpotInterruption { action, deadline },
            )
        }
        ("aws.ec2", REBALANCE) => single(
            &root.object("detail")?,
            "instance-id",
            EventKind::RebalanceRecommendation,
        ),
        ("aws.ec2", STATE_CHANGE) => {
            let detail = root.object("detail")?;
            let state = match detail.str("state")? {
                "stopping" => InstanceState::Stopping,
                "stopped" => InstanceState::Stopped,
                "shutting-down" => InstanceState::ShuttingDown,
                "terminated" => InstanceState::Terminated,
                other @ ("pending" | "running") => {
                    detail.instance_id("instance-id")?;
                    return Ok(Parsed::Ignored {
                        reason: format!("instance state {other:?} needs no action"),
                    });
                }
                other => return Err(detail.unknown("state", other)),
            };
            single(&detail, "instance-id", EventKind::StateChange { state })
        }
        ("aws.ec2", CAPACITY_RESERVATION) => {
            let detail = root.object("detail")?;
            if let Some(action) = detail.opt_str("instance-action")?
                && action != "terminate"
            {
                return Err(detail.unknown("instance-action", action));
            }
            single(&detail, "instance-id", EventKind::CapacityReservationInterruption)
        }
        ("aws.autoscaling", ASG_TERMINATE | ASG_LAUNCH) => {
            let detail = root.object("detail")?;
            let expected = if detail_type == ASG_TERMINATE {
                LifecycleTransition::Terminating
            } else {
                LifecycleTransition::Launching
            };
            if let Some(text) = detail.opt_str("LifecycleTransition")? {
                let found = transition(&detail, text)?;
                if found != Some(expected) {
                    return Err(Error::Inconsistent {
                        field: detail.path("LifecycleTransition"),
                        value: text.to_owned(),
                        detail_type: detail_type.to_owned(),
                    });
                }
            }
            let action = lifecycle_action(&detail, expected)?;
            single(&detail, "EC2InstanceId", EventKind::AsgLifecycle(action))
        }
        ("aws.health", HEALTH) => parse_health(&root.object("detail")?, root, time, &origin),
        _ => Err(Error::Unsupported {
            event_source: event_source.to_owned(),
            detail_type: detail_type.to_owned(),
        }),
    }
}

/// Maps an Auto Scaling transition name; `None` for the test notification.
fn transition(fields: &Fields<'_>, text: &str) -> Result<Option<LifecycleTransition>, Error> {
    match text {
        "autoscaling:EC2_INSTANCE_TERMINATING" => Ok(Some(LifecycleTransition::Terminating)),
        "autoscaling:EC2_INSTANCE_LAUNCHING" => Ok(Some(LifecycleTransition::Launching)),
        TEST_NOTIFICATION => Ok(None),
        other => Err(fields.unknown("LifecycleTransition", other)),
    }
}

fn lifecycle_action(fields: &Fields<'_>, transition: LifecycleTransition) -> Result<LifecycleAction, Error> {
    Ok(LifecycleAction {
        transition,
        hook_name: fields.non_empty("LifecycleHookName")?.to_owned(),
        group_name: fields.non_empty("AutoScalingGroupName")?.to_owned(),
        token: fields.non_empty("LifecycleActionToken")?.to_owned(),
    })
}

fn parse_direct_asg(root: &Fields<'_>, ctx: &MessageContext) -> Result<Parsed, Error> {
    if root.opt_str("Event")? == Some(TEST_NOTIFICATION) {
        return Ok(Parsed::Ignored {
            reason: "Auto Scaling test notification".into(),
        });
    }
    let Some(text) = root.opt_str("LifecycleTransition")? else {
        // An `Event` without a lifecycle transition: a plain Auto Scaling notification
        // (launch/terminate/error), not a lifecycle hook.
        let event = root.str("Event")?;
        return Err(Error::Unsupported {
            event_source: "aws.autoscaling".into(),
            detail_type: event.to_owned(),
        });
    };
    let Some(transition) = transition(root, text)? else {
        return Ok(Parsed::Ignored {
            reason: "Auto Scaling test notification".into(),
        });
    };
    let action = lifecycle_action(root, transition)?;
    let instance = root.instance_id("EC2InstanceId")?;
    let time = match root.opt_str("Time")? {
        Some(text) => parse_time("Time", text)?,
        None => ctx.received_at,
    };
    // The request id identifies the notification; the token identifies the lifecycle action
    // and is as stable, for the rare message without a request id.
    let identity = match root.opt_str("RequestId")? {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => action.token.clone(),
    };
    let origin = Origin::Queue {
        message_id: ctx.message_id.clone(),
        upstream_id: Some(identity.clone()),
    };
    let event = InterruptionEvent::new(instance, EventKind::AsgLifecycle(action), &identity, time, origin);
    Ok(Parsed::Events(vec![event]))
}

fn parse_health(
    detail: &Fields<'_>,
    root: &Fields<'_>,
    time: OffsetDateTime,
    origin: &Origin,
) -> Result<Parsed, Error> {
    let service = detail.str("service")?;
    if service != "EC2" {
        return Ok(Parsed::Ignored {
            reason: format!("AWS Health event for service {service:?}"),
        });
    }
    let category = detail.str("eventTypeCategory")?;
    if category != "scheduledChange" {
        return Ok(Parsed::Ignored {
            reason: format!("AWS Health event of category {category:?}"),
        });
    }
    let arn = detail.non_empty("eventArn")?;
    let code = health_code(detail.non_empty("eventTypeCode")?);
    let not_before = match detail.opt_str("startTime")? {
        Some(text) => parse_time("detail.startTime", text)?,
        None => time,
    };
    let not_after = detail
        .opt_str("endTime")?
        .map(|text| parse_time("detail.endTime", text))
        .transpose()?;
    let state = match detail.opt_str("statusCode")? {
        None | Some("open" | "upcoming") => ScheduledState::Active,
        Some("closed") => ScheduledState::Completed,
        Some(other) => return Err(detail.unknown("statusCode", other)),
    };
    let description = health_description(detail)?;

    let mut instances = BTreeSet::new();
    if let Some(entities) = detail.opt_array("affectedEntities")? {
        for (i, entity) in entities.iter().enumerate() {
            let entity = Fields::nested(entity, format!("detail.affectedEntities[{i}]."))?;
            if let Some(value) = entity.opt_str("entityValue")?
                && is_instance_id(value)
            {
                instances.insert(value.to_owned());
            }
        }
    } else if let Some(resources) = root.opt_array("resources")? {
        instances.extend(
            resources
                .iter()
                .filter_map(Value::as_str)
                .filter(|v| is_instance_id(v))
                .map(str::to_owned),
        );
    }
    if instances.is_empty() {
        return Ok(Parsed::Ignored {
            reason: format!("AWS Health event {arn} names no EC2 instance"),
        });
    }
    let state_name = match state {
        ScheduledState::Active => "active",
        ScheduledState::Canceled => "canceled",
        ScheduledState::Completed => "completed",
    };
    let events = instances
        .into_iter()
        .map(|instance| {
            let kind = EventKind::ScheduledChange {
                code: code.clone(),
                not_before,
                not_after,
                state,
                description: description.clone(),
            };
            // One id per (Health event, instance, state): a later "closed" update of the same
            // event is a new notice, a redelivery is not.
            let id = EventId::derive(&[kind.name(), &instance, arn, state_name]);
            InterruptionEvent {
                id,
                instance_id: instance,
                kind,
                observed_at: time,
                origin: origin.clone(),
            }
        })
        .collect();
    Ok(Parsed::Events(events))
}

/// Maps AWS Health EC2 event codes to the scheduled-event codes IMDS uses, so that both
/// sources name the same maintenance alike. Unknown codes are kept as they are.
fn health_code(code: &str) -> String {
    let mapped = match code {
        "AWS_EC2_INSTANCE_STOP_SCHEDULED" => "instance-stop",
        "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED" | "AWS_EC2_PERSISTENT_INSTANCE_RETIREMENT_SCHEDULED" => {
            "instance-retirement"
        }
        "AWS_EC2_INSTANCE_REBOOT_MAINTENANCE_SCHEDULED"
        | "AWS_EC2_INSTANCE_REBOOT_FLEXIBLE_MAINTENANCE_SCHEDULED" => "instance-reboot",
        "AWS_EC2_SYSTEM_REBOOT_MAINTENANCE_SCHEDULED" => "system-reboot",
        "AWS_EC2_SYSTEM_MAINTENANCE_EVENT" => "system-maintenance",
        other => other,
    };
    mapped.to_owned()
}

/// The English description of a Health event, else the first one, else empty.
fn health_description(detail: &Fields<'_>) -> Result<String, Error> {
    let Some(items) = detail.opt_array("eventDescription")? else {
        return Ok(String::new());
    };
    let mut first = None;
    for (i, item) in items.iter().enumerate() {
        let item = Fields::nested(item, format!("detail.eventDescription[{i}]."))?;
        let text = item.opt_str("latestDescription")?.unwrap_or_default();
        if item.opt_str("language")? == Some("en_US") {
            return Ok(text.to_owned());
        }
        first.get_or_insert(text);
    }
    Ok(first.unwrap_or_default().to_owned())
}

/// Whether `value` looks like an EC2 instance id (`i-` and 8 or more hex digits, as EC2
/// issues them; letters are accepted as well so that simulators' ids pass).
pub fn is_instance_id(value: &str) -> bool {
    value
        .strip_prefix("i-")
        .is_some_and(|rest| (1..=32).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn parse_time(field: &str, text: &str) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(text, &Rfc2822))
        .map(|t| t.to_offset(UtcOffset::UTC))
        .map_err(|_| Error::InvalidTime {
            field: field.to_owned(),
            value: text.to_owned(),
        })
}

fn describe(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= MAX_VALUE_CHARS {
        text
    } else {
        let cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
        format!("{cut}...")
    }
}

/// A JSON object with the path prefix its fields are reported under.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    fn root(value: &'a Value, name: &'static str) -> Result<Self, Error> {
        match value {
            Value::Object(map) => Ok(Fields {
                map,
                prefix: String::new(),
            }),
            other => Err(Error::WrongType {
                field: name.into(),
                expected: "a JSON object",
                value: describe(other),
            }),
        }
    }

    fn nested(value: &'a Value, prefix: String) -> Result<Self, Error> {
        match value {
            Value::Object(map) => Ok(Fields { map, prefix }),
            other => Err(Error::WrongType {
                field: prefix.trim_end_matches('.').to_owned(),
                expected: "a JSON object",
                value: describe(other),
            }),
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn unknown(&self, key: &str, value: &str) -> Error {
        Error::UnknownValue {
            field: self.path(key),
            value: value.to_owned(),
        }
    }

    fn object(&self, key: &str) -> Result<Fields<'a>, Error> {
        match self.map.get(key) {
            None | Some(Value::Null) => Err(Error::Missing {
                field: self.path(key),
            }),
            Some(value) => Fields::nested(value, format!("{}.", self.path(key))),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, Error> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(Error::WrongType {
                field: self.path(key),
                expected: "a string",
                value: describe(other),
            }),
        }
    }

    fn str(&self, key: &str) -> Result<&'a str, Error> {
        self.opt_str(key)?.ok_or_else(|| Error::Missing {
            field: self.path(key),
        })
    }

    fn non_empty(&self, key: &str) -> Result<&'a str, Error> {
        match self.str(key)? {
            "" => Err(Error::UnknownValue {
                field: self.path(key),
                value: String::new(),
            }),
            text => Ok(text),
        }
    }

    fn opt_array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, Error> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(Error::WrongType {
                field: self.path(key),
                expected: "an array",
                value: describe(other),
            }),
        }
    }

    fn instance_id(&self, key: &str) -> Result<&'a str, Error> {
        let value = self.str(key)?;
        if is_instance_id(value) {
            Ok(value)
        } else {
            Err(Error::InvalidInstanceId {
                field: self.path(key),
                value: value.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/sqs/", $name))
        };
    }

    fn ctx() -> MessageContext {
        MessageContext {
            message_id: "msg-1".into(),
            received_at: datetime!(2026-11-22 10:00:00 UTC),
        }
    }

    fn events(body: &str) -> Vec<InterruptionEvent> {
        match parse_body(body, &ctx()) {
            Ok(Parsed::Events(events)) => events,
            other => panic!("expected events, got {other:?}"),
        }
    }

    fn one(body: &str) -> InterruptionEvent {
        let mut all = events(body);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    fn ignored(body: &str) -> String {
        match parse_body(body, &ctx()) {
            Ok(Parsed::Ignored { reason }) => reason,
            other => panic!("expected ignored, got {other:?}"),
        }
    }

    fn error(body: &str) -> Error {
        match parse_body(body, &ctx()) {
            Err(e) => e,
            Ok(other) => panic!("expected an error, got {other:?}"),
        }
    }

    /// The fixture as JSON with `path` (object keys) set to `value`.
    fn patched(fixture: &str, path: &[&str], value: Value) -> String {
        let mut root: Value = serde_json::from_str(fixture).unwrap();
        let mut at = &mut root;
        for key in &path[..path.len() - 1] {
            at = at.get_mut(*key).unwrap();
        }
        at.as_object_mut()
            .unwrap()
            .insert(path[path.len() - 1].to_owned(), value);
        root.to_string()
    }

    #[test]
    fn spot_interruption_warning() {
        let ev = one(fixture!("spot-interruption.json"));
        assert_eq!(ev.instance_id, "i-0b662ef9931388ba0");
        assert_eq!(
            ev.kind,
            EventKind::SpotInterruption {
                action: SpotAction::Terminate,
                deadline: datetime!(2020-07-01 22:21:58 UTC)
            }
        );
        assert_eq!(ev.observed_at, datetime!(2020-07-01 22:19:58 UTC));
        assert_eq!(
            ev.origin,
            Origin::Queue {
                message_id: "msg-1".into(),
                upstream_id: Some("1e5527d7-bb36-4607-3370-4164db56a40e".into())
            }
        );
        // Stable: the same message (even received again under another message id) has the
        // same event id.
        let again = parse_body(
            fixture!("spot-interruption.json"),
            &MessageContext {
                message_id: "msg-2".into(),
                received_at: datetime!(2030-01-01 00:00:00 UTC),
            },
        );
        let Ok(Parsed::Events(again)) = again else {
            panic!("{again:?}")
        };
        assert_eq!(again[0].id, ev.id);
        // Another EventBridge id is another event.
        let other = one(&patched(
            fixture!("spot-interruption.json"),
            &["id"],
            "other".into(),
        ));
        assert_ne!(other.id, ev.id);
        for (text, action) in [("stop", SpotAction::Stop), ("hibernate", SpotAction::Hibernate)] {
            let body = patched(
                fixture!("spot-interruption.json"),
                &["detail", "instance-action"],
                text.into(),
            );
            assert!(matches!(one(&body).kind, EventKind::SpotInterruption { action: a, .. } if a == action));
        }
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let err = error(fixture!("spot-interruption-bad-action.json"));
        assert_eq!(
            err.to_string(),
            r#"detail.instance-action: unknown value "explode""#
        );
        assert!(!err.is_unsupported());
        let body = patched(
            fixture!("spot-interruption.json"),
            &["detail", "instance-id"],
            42.into(),
        );
        assert_eq!(
            error(&body).to_string(),
            "detail.instance-id: expected a string, got 42"
        );
        let body = patched(
            fixture!("spot-interruption.json"),
            &["detail", "instance-id"],
            "[instance-id]".into(),
        );
        assert_eq!(
            error(&body).to_string(),
            r#"detail.instance-id: invalid instance id "[instance-id]""#
        );
        let body = patched(fixture!("spot-interruption.json"), &["time"], "yesterday".into());
        assert_eq!(error(&body).to_string(), r#"time: invalid timestamp "yesterday""#);
        let body = patched(fixture!("spot-interruption.json"), &["detail"], Value::Null);
        assert_eq!(error(&body).to_string(), "detail: missing");
        let body = patched(fixture!("spot-interruption.json"), &["detail"], "x".into());
        assert_eq!(
            error(&body).to_string(),
            r#"detail: expected a JSON object, got "x""#
        );
        assert!(matches!(error("not json"), Error::NotJson { field: "body", .. }));
        assert_eq!(
            error("[1,2]").to_string(),
            "body: expected a JSON object, got [1,2]"
        );
        assert_eq!(error("{}"), Error::Unrecognised);
        let long = "x".repeat(500);
        let body = patched(
            fixture!("spot-interruption.json"),
            &["detail", "instance-action"],
            json_array(&long),
        );
        assert!(error(&body).to_string().len() < 200);
    }

    fn json_array(text: &str) -> Value {
        Value::Array(vec![Value::String(text.to_owned())])
    }

    #[test]
    fn a_deadline_past_the_representable_range_is_an_error() {
        let body = patched(
            fixture!("spot-interruption.json"),
            &["time"],
            "9999-12-31T23:59:59Z".into(),
        );
        assert!(matches!(error(&body), Error::InvalidTime { .. }));
    }

    #[test]
    fn rebalance_recommendation() {
        let ev = one(fixture!("rebalance-recommendation.json"));
        assert_eq!(ev.instance_id, "i-0b662ef9931388ba0");
        assert_eq!(ev.kind, EventKind::RebalanceRecommendation);
        assert_eq!(ev.observed_at, datetime!(2020-10-26 14:14:14 UTC));
    }

    #[test]
    fn state_changes_act_only_when_the_instance_goes_away() {
        let ev = one(fixture!("state-change-shutting-down.json"));
        assert_eq!(ev.instance_id, "i-abcd1111");
        assert_eq!(
            ev.kind,
            EventKind::StateChange {
                state: InstanceState::ShuttingDown
            }
        );
        for (text, state) in [
            ("stopping", InstanceState::Stopping),
            ("stopped", InstanceState::Stopped),
            ("terminated", InstanceState::Terminated),
        ] {
            let body = patched(
                fixture!("state-change-shutting-down.json"),
                &["detail", "state"],
                text.into(),
            );
            assert_eq!(one(&body).kind, EventKind::StateChange { state });
        }
        assert!(ignored(fixture!("state-change-running.json")).contains("running"));
        let body = patched(
            fixture!("state-change-running.json"),
            &["detail", "state"],
            "pending".into(),
        );
        assert!(ignored(&body).contains("pending"));
        let body = patched(
            fixture!("state-change-running.json"),
            &["detail", "state"],
            "melting".into(),
        );
        assert_eq!(
            error(&body).to_string(),
            r#"detail.state: unknown value "melting""#
        );
    }

    #[test]
    fn capacity_reservation_interruption() {
        let ev = one(fixture!("capacity-reservation-interruption.json"));
        assert_eq!(ev.instance_id, "i-0c1d2e3f4a5b6c7d8");
        assert_eq!(ev.kind, EventKind::CapacityReservationInterruption);
        assert!(ev.kind.is_terminal());
        let body = patched(
            fixture!("capacity-reservation-interruption.json"),
            &["detail", "instance-action"],
            "stop".into(),
        );
        assert_eq!(
            error(&body).to_string(),
            r#"detail.instance-action: unknown value "stop""#
        );
    }

    #[test]
    fn health_scheduled_change_gives_one_event_per_instance() {
        let all = events(fixture!("health-scheduled-change.json"));
        let ids: Vec<&str> = all.iter().map(|e| e.instance_id.as_str()).collect();
        // The volume entity is not an instance.
        assert_eq!(ids, ["i-12345678", "i-87654321"]);
        assert_ne!(all[0].id, all[1].id);
        let EventKind::ScheduledChange {
            code,
            not_before,
            not_after,
            state,
            description,
        } = &all[0].kind
        else {
            panic!("{:?}", all[0].kind)
        };
        assert_eq!(code, "instance-retirement");
        assert_eq!(*not_before, datetime!(2016-06-05 15:10:09 UTC));
        assert_eq!(*not_after, Some(datetime!(2016-06-05 17:10:09 UTC)));
        assert_eq!(*state, ScheduledState::Active);
        assert_eq!(description, "Your instances will be retired.");
        // Ids are stable and follow the Health event ARN, not the EventBridge id...
        let renotified = events(&patched(
            fixture!("health-scheduled-change.json"),
            &["id"],
            "another".into(),
        ));
        assert_eq!(renotified[0].id, all[0].id);
        let other_arn = patched(
            fixture!("health-scheduled-change.json"),
            &["detail", "eventArn"],
            "arn:x".into(),
        );
        assert_ne!(events(&other_arn)[0].id, all[0].id);
        // ...and the state: the closing update is a new notice.
        let closed = patched(
            fixture!("health-scheduled-change.json"),
            &["detail", "statusCode"],
            "closed".into(),
        );
        let closed = events(&closed);
        assert!(matches!(
            closed[0].kind,
            EventKind::ScheduledChange {
                state: ScheduledState::Completed,
                ..
            }
        ));
        assert_ne!(closed[0].id, all[0].id);
        let bad = patched(
            fixture!("health-scheduled-change.json"),
            &["detail", "statusCode"],
            "maybe".into(),
        );
        assert_eq!(
            error(&bad).to_string(),
            r#"detail.statusCode: unknown value "maybe""#
        );
        let bad = patched(
            fixture!("health-scheduled-change.json"),
            &["detail", "startTime"],
            "soon".into(),
        );
        assert_eq!(
            error(&bad).to_string(),
            r#"detail.startTime: invalid timestamp "soon""#
        );
    }

    #[test]
    fn health_events_without_entities_use_resources() {
        let mut root: Value = serde_json::from_str(fixture!("health-scheduled-change.json")).unwrap();
        root["detail"].as_object_mut().unwrap().remove("affectedEntities");
        let all = events(&root.to_string());
        assert_eq!(all.len(), 2);
        root["resources"] = Value::Array(vec![]);
        assert!(ignored(&root.to_string()).contains("names no EC2 instance"));
    }

    #[test]
    fn other_health_events_are_ignored() {
        assert!(ignored(fixture!("health-other-service.json")).contains("RDS"));
        let body = patched(
            fixture!("health-scheduled-change.json"),
            &["detail", "eventTypeCategory"],
            "issue".into(),
        );
        assert!(ignored(&body).contains("issue"));
    }

    #[test]
    fn asg_lifecycle_actions_via_eventbridge() {
        let ev = one(fixture!("asg-terminate-lifecycle.json"));
        assert_eq!(ev.instance_id, "i-0633ac2b0d9769723");
        assert_eq!(
            ev.kind,
            EventKind::AsgLifecycle(LifecycleAction {
                transition: LifecycleTransition::Terminating,
                hook_name: "node-termination-handler".into(),
                group_name: "nth-test1".into(),
                token: "0befcbdb-6ecd-498a-9ff7-ae9b54447cd6".into(),
            })
        );
        let launch = one(fixture!("asg-launch-lifecycle.json"));
        assert_eq!(launch.instance_id, "i-0a68bf5ef13e21b52");
        assert_eq!(launch.kind.name(), "asg-lifecycle-launch");
        assert!(!launch.kind.is_terminal());
        let body = patched(
            fixture!("asg-terminate-lifecycle.json"),
            &["detail", "LifecycleTransition"],
            "autoscaling:EC2_INSTANCE_LAUNCHING".into(),
        );
        assert!(matches!(error(&body), Error::Inconsistent { .. }));
        let body = patched(
            fixture!("asg-terminate-lifecycle.json"),
            &["detail", "LifecycleActionToken"],
            "".into(),
        );
        assert_eq!(
            error(&body).to_string(),
            r#"detail.LifecycleActionToken: unknown value """#
        );
    }

    #[test]
    fn direct_asg_notifications() {
        let ev = one(fixture!("asg-direct-terminate.json"));
        assert_eq!(ev.instance_id, "i-040107f6ba000e5ee");
        assert_eq!(ev.observed_at, datetime!(2022-01-31 23:07:47.872 UTC));
        assert!(
            matches!(&ev.kind, EventKind::AsgLifecycle(a) if a.group_name == "my-asg" && a.hook_name == "test-nth-asg-to-sqs")
        );
        assert_eq!(
            ev.origin,
            Origin::Queue {
                message_id: "msg-1".into(),
                upstream_id: Some("3775fac9-93c3-7ead-8713-159816566000".into())
            }
        );
        assert!(ignored(fixture!("asg-test-notification.json")).contains("test notification"));
        let body = patched(
            fixture!("asg-direct-terminate.json"),
            &["LifecycleTransition"],
            "autoscaling:TEST_NOTIFICATION".into(),
        );
        assert!(ignored(&body).contains("test notification"));
        let body = patched(
            fixture!("asg-direct-terminate.json"),
            &["LifecycleTransition"],
            "autoscaling:NAP".into(),
        );
        assert_eq!(
            error(&body).to_string(),
            r#"LifecycleTransition: unknown value "autoscaling:NAP""#
        );
        let plain = r#"{"Event":"autoscaling:EC2_INSTANCE_TERMINATE","EC2InstanceId":"i-1234abcd"}"#;
        assert!(error(plain).is_unsupported());
    }

    #[test]
    fn sns_wrapped_messages() {
        let direct = one(fixture!("spot-interruption.json"));
        let wrapped = one(fixture!("sns-spot-interruption.json"));
        assert_eq!(wrapped, direct);
        let nested =
            serde_json::json!({"Type": "Notification", "Message": fixture!("sns-spot-interruption.json")});
        assert_eq!(error(&nested.to_string()), Error::NestedSns);
        let confirm = serde_json::json!({"Type": "SubscriptionConfirmation", "TopicArn": "arn:aws:sns:x", "Message": "hi"});
        assert!(ignored(&confirm.to_string()).contains("SubscriptionConfirmation"));
        let broken = serde_json::json!({"Type": "Notification", "Message": "{"});
        assert!(matches!(
            error(&broken.to_string()),
            Error::NotJson { field: "Message", .. }
        ));
        let not_text = serde_json::json!({"Type": "Notification", "Message": 7});
        assert_eq!(
            error(&not_text.to_string()).to_string(),
            "Message: expected a string, got 7"
        );
    }

    #[test]
    fn unsupported_events_are_reported_as_such() {
        let body = patched(
            fixture!("spot-interruption.json"),
            &["detail-type"],
            "EC2 Fleet Error".into(),
        );
        let err = error(&body);
        assert!(err.is_unsupported());
        assert_eq!(
            err.to_string(),
            r#"unsupported event: source "aws.ec2", detail-type "EC2 Fleet Error""#
        );
    }

    #[test]
    fn eventbridge_time_is_optional() {
        let mut root: Value = serde_json::from_str(fixture!("rebalance-recommendation.json")).unwrap();
        root.as_object_mut().unwrap().remove("time");
        assert_eq!(one(&root.to_string()).observed_at, ctx().received_at);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".*".prop_map(Value::String),
            prop::sample::select(vec![
                "aws.ec2",
                "aws.health",
                "aws.autoscaling",
                "Notification",
                "EC2",
                "scheduledChange",
                "i-0123456789abcdef0",
                "2020-07-01T22:19:58Z",
                "terminate",
                "autoscaling:EC2_INSTANCE_TERMINATING",
                "autoscaling:TEST_NOTIFICATION",
            ])
            .prop_map(|s| Value::String(s.to_owned())),
        ];
        let keys = prop::sample::select(vec![
            "id",
            "time",
            "source",
            "detail-type",
            "detail",
            "instance-id",
            "instance-action",
            "state",
            "Type",
            "Message",
            "Event",
            "LifecycleTransition",
            "EC2InstanceId",
            "affectedEntities",
            "entityValue",
            "eventDescription",
            "service",
            "eventTypeCategory",
            "resources",
            "other",
        ]);
        leaf.prop_recursive(4, 48, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone().prop_map(str::to_owned), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const FIXTURES: [&str; 13] = [
        fixture!("spot-interruption.json"),
        fixture!("spot-interruption-bad-action.json"),
        fixture!("rebalance-recommendation.json"),
        fixture!("state-change-shutting-down.json"),
        fixture!("state-change-running.json"),
        fixture!("capacity-reservation-interruption.json"),
        fixture!("health-scheduled-change.json"),
        fixture!("health-other-service.json"),
        fixture!("asg-terminate-lifecycle.json"),
        fixture!("asg-launch-lifecycle.json"),
        fixture!("asg-direct-terminate.json"),
        fixture!("asg-test-notification.json"),
        fixture!("sns-spot-interruption.json"),
    ];

    /// Every field path (object keys only) of a JSON value.
    fn paths(value: &Value, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Value::Object(map) = value {
            for (key, child) in map {
                let mut path = prefix.clone();
                path.push(key.clone());
                out.push(path.clone());
                paths(child, path, out);
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(body in ".*") {
            let _ = parse_body(&body, &ctx());
        }

        #[test]
        fn arbitrary_json_never_panics(value in arb_json()) {
            let _ = parse_value(&value, &ctx());
            let _ = parse_body(&value.to_string(), &ctx());
            let sns = serde_json::json!({"Type": "Notification", "Message": value.to_string()});
            let _ = parse_value(&sns, &ctx());
        }

        #[test]
        fn fixtures_with_any_field_replaced_never_panic(
            fixture in prop::sample::select(FIXTURES.to_vec()),
            pick in any::<prop::sample::Index>(),
            value in arb_json(),
        ) {
            let mut root: Value = serde_json::from_str(fixture).unwrap();
            let mut all = Vec::new();
            paths(&root, Vec::new(), &mut all);
            let path = pick.get(&all).clone();
            let mut at = &mut root;
            for key in &path[..path.len() - 1] {
                at = at.get_mut(key).unwrap();
            }
            at.as_object_mut().unwrap().insert(path[path.len() - 1].clone(), value);
            match parse_value(&root, &ctx()) {
                // Whatever parses still names valid instances, and never yields an empty list.
                Ok(Parsed::Events(events)) => {
                    prop_assert!(!events.is_empty());
                    for event in events {
                        prop_assert!(is_instance_id(&event.instance_id), "{}", event.instance_id);
                    }
                }
                Ok(Parsed::Ignored { reason }) => prop_assert!(!reason.is_empty()),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn every_fixture_parses_as_documented() {
        let outcomes: Vec<&str> = FIXTURES
            .iter()
            .map(|body| match parse_body(body, &ctx()) {
                Ok(Parsed::Events(_)) => "events",
                Ok(Parsed::Ignored { .. }) => "ignored",
                Err(_) => "error",
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                "events", "error", "events", "events", "ignored", "events", "events", "ignored", "events",
                "events", "events", "ignored", "events"
            ]
        );
    }
}
