//! The lifecycle calls checked with the AWS SDK's own test utilities (aws-smithy-mocks): the
//! modelled requests carry CONTINUE, the hook, the group, the instance and the token, and a
//! modelled ValidationError for a vanished action counts as completed.

use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::operation::complete_lifecycle_action::{
    CompleteLifecycleActionError, CompleteLifecycleActionOutput,
};
use aws_sdk_autoscaling::operation::record_lifecycle_action_heartbeat::RecordLifecycleActionHeartbeatOutput;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use spot_aws::autoscaling::LifecycleClient;
use spot_core::event::{LifecycleAction, LifecycleTransition};

fn action() -> LifecycleAction {
    LifecycleAction {
        transition: LifecycleTransition::Terminating,
        hook_name: "drain-hook".into(),
        group_name: "workers".into(),
        token: "bcd2f1b8-9a78-44d3-8a7a-4dd07d7cf635".into(),
    }
}

#[tokio::test]
async fn complete_and_heartbeat_send_the_modelled_requests() {
    let complete = mock!(Client::complete_lifecycle_action)
        .match_requests(|r| {
            r.lifecycle_action_result() == Some("CONTINUE")
                && r.auto_scaling_group_name() == Some("workers")
                && r.lifecycle_hook_name() == Some("drain-hook")
                && r.instance_id() == Some("i-0123456789abcdef0")
                && r.lifecycle_action_token() == Some("bcd2f1b8-9a78-44d3-8a7a-4dd07d7cf635")
        })
        .then_output(|| CompleteLifecycleActionOutput::builder().build());
    let heartbeat = mock!(Client::record_lifecycle_action_heartbeat)
        .match_requests(|r| {
            r.lifecycle_hook_name() == Some("drain-hook") && r.instance_id() == Some("i-0123456789abcdef0")
        })
        .then_output(|| RecordLifecycleActionHeartbeatOutput::builder().build());
    let client = mock_client!(aws_sdk_autoscaling, RuleMode::MatchAny, [&complete, &heartbeat]);
    let lifecycle = LifecycleClient::new(client);
    lifecycle
        .heartbeat("i-0123456789abcdef0", &action())
        .await
        .unwrap();
    lifecycle
        .complete("i-0123456789abcdef0", &action())
        .await
        .unwrap();
    assert_eq!((complete.num_calls(), heartbeat.num_calls()), (1, 1));
}

#[tokio::test]
async fn a_vanished_action_is_complete_other_errors_are_not() {
    let gone = mock!(Client::complete_lifecycle_action).then_error(|| {
        CompleteLifecycleActionError::generic(
            aws_sdk_autoscaling::error::ErrorMetadata::builder()
                .code("ValidationError")
                .message("No active Lifecycle Action found with instance ID i-1")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_autoscaling, [&gone]);
    LifecycleClient::new(client)
        .complete("i-1", &action())
        .await
        .unwrap();

    let refused = mock!(Client::complete_lifecycle_action).then_error(|| {
        CompleteLifecycleActionError::generic(
            aws_sdk_autoscaling::error::ErrorMetadata::builder()
                .code("ValidationError")
                .message("Unable to find hook drain-hook")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_autoscaling, [&refused]);
    let err = LifecycleClient::new(client)
        .complete("i-1", &action())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Unable to find hook") && err.contains("workers"),
        "{err}"
    );
}
