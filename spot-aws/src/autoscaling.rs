//! Auto Scaling lifecycle actions: completing a hook once the node is drained (or, for a
//! launch hook, Ready), and heartbeats while the work goes on.

use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use spot_core::event::LifecycleAction;
use tracing::info;

/// Errors of lifecycle calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Auto Scaling API refused or failed the call.
    #[error("{operation} for instance {instance} (hook {hook}, group {group}) failed: {message}")]
    Api {
        /// `CompleteLifecycleAction` or `RecordLifecycleActionHeartbeat`.
        operation: &'static str,
        /// The instance.
        instance: String,
        /// The hook.
        hook: String,
        /// The Auto Scaling group.
        group: String,
        /// What the API said.
        message: String,
    },
}

/// The result a lifecycle action is completed with.
pub const CONTINUE: &str = "CONTINUE";

/// Completes and heartbeats lifecycle actions.
#[derive(Debug, Clone)]
pub struct LifecycleClient {
    client: Client,
}

/// Whether an error says the action no longer exists (completed by someone else, or timed
/// out): there is nothing left to do.
fn is_gone(code: Option<&str>, message: Option<&str>) -> bool {
    code == Some("ValidationError") && message.is_some_and(|m| m.contains("No active Lifecycle Action found"))
}

impl LifecycleClient {
    /// A client over an Auto Scaling SDK client.
    pub fn new(client: Client) -> Self {
        LifecycleClient { client }
    }

    fn err(operation: &'static str, instance: &str, action: &LifecycleAction, message: String) -> Error {
        Error::Api {
            operation,
            instance: instance.to_owned(),
            hook: action.hook_name.clone(),
            group: action.group_name.clone(),
            message,
        }
    }

    /// CompleteLifecycleAction with result CONTINUE. An action that no longer exists counts as
    /// completed.
    pub async fn complete(&self, instance_id: &str, action: &LifecycleAction) -> Result<(), Error> {
        let mut req = self
            .client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&action.group_name)
            .lifecycle_hook_name(&action.hook_name)
            .lifecycle_action_result(CONTINUE)
            .instance_id(instance_id);
        if !action.token.is_empty() {
            req = req.lifecycle_action_token(&action.token);
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_gone(e.code(), e.message()) => {
                info!(instance = instance_id, hook = %action.hook_name, "lifecycle action already gone");
                Ok(())
            }
            Err(e) => Err(Self::err(
                "CompleteLifecycleAction",
                instance_id,
                action,
                error_text(&e),
            )),
        }
    }

    /// RecordLifecycleActionHeartbeat: extends the hook's timeout.
    pub async fn heartbeat(&self, instance_id: &str, action: &LifecycleAction) -> Result<(), Error> {
        let mut req = self
            .client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&action.group_name)
            .lifecycle_hook_name(&action.hook_name)
            .instance_id(instance_id);
        if !action.token.is_empty() {
            req = req.lifecycle_action_token(&action.token);
        }
        req.send().await.map(|_| ()).map_err(|e| {
            Self::err(
                "RecordLifecycleActionHeartbeat",
                instance_id,
                action,
                error_text(&e),
            )
        })
    }
}

fn error_text<E: ProvideErrorMetadata + std::fmt::Display>(e: &E) -> String {
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_actions_are_recognised() {
        assert!(is_gone(
            Some("ValidationError"),
            Some("No active Lifecycle Action found with instance ID i-1")
        ));
        assert!(!is_gone(Some("ValidationError"), Some("Invalid hook name")));
        assert!(!is_gone(Some("Throttling"), None));
    }
}
