//! CompleteLifecycleAction and RecordLifecycleActionHeartbeat, sent by the real SDK client to
//! a local endpoint that records the wire requests (moto implements neither call).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use spot_aws::autoscaling::LifecycleClient;
use spot_core::event::{LifecycleAction, LifecycleTransition};

type Seen = Arc<Mutex<Vec<String>>>;

async fn endpoint(
    State((seen, fail)): State<(Seen, Option<&'static str>)>,
    body: String,
) -> (StatusCode, String) {
    seen.lock().unwrap().push(body.clone());
    let action = body
        .split('&')
        .find_map(|p| p.strip_prefix("Action="))
        .unwrap_or_default()
        .to_owned();
    if let Some(message) = fail {
        let xml = format!(
            "<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code><Message>{message}</Message></Error><RequestId>r</RequestId></ErrorResponse>"
        );
        return (StatusCode::BAD_REQUEST, xml);
    }
    (
        StatusCode::OK,
        format!(
            "<{action}Response><{action}Result/><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></{action}Response>"
        ),
    )
}

async fn start(fail: Option<&'static str>) -> (LifecycleClient, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/", post(endpoint))
        .with_state((seen.clone(), fail));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = spot_aws::config::local(&url, "us-east-1").await;
    (
        LifecycleClient::new(aws_sdk_autoscaling::Client::new(&config)),
        seen,
    )
}

fn action() -> LifecycleAction {
    LifecycleAction {
        transition: LifecycleTransition::Terminating,
        hook_name: "drain-hook".into(),
        group_name: "workers".into(),
        token: "bcd2f1b8-9a78-44d3-8a7a-4dd07d7cf635".into(),
    }
}

#[tokio::test]
async fn complete_sends_continue_with_the_token() {
    let (client, seen) = start(None).await;
    client.complete("i-0123456789abcdef0", &action()).await.unwrap();
    let body = seen.lock().unwrap().remove(0);
    for part in [
        "Action=CompleteLifecycleAction",
        "AutoScalingGroupName=workers",
        "LifecycleHookName=drain-hook",
        "LifecycleActionResult=CONTINUE",
        "InstanceId=i-0123456789abcdef0",
        "LifecycleActionToken=bcd2f1b8-9a78-44d3-8a7a-4dd07d7cf635",
    ] {
        assert!(body.contains(part), "{part} missing from {body}");
    }
}

#[tokio::test]
async fn heartbeat_request_shape() {
    let (client, seen) = start(None).await;
    client.heartbeat("i-1", &action()).await.unwrap();
    let body = seen.lock().unwrap().remove(0);
    assert!(
        body.contains("Action=RecordLifecycleActionHeartbeat")
            && body.contains("LifecycleHookName=drain-hook"),
        "{body}"
    );
    assert!(!body.contains("LifecycleActionResult"), "{body}");
}

#[tokio::test]
async fn an_action_already_gone_counts_as_completed_other_errors_do_not() {
    let (client, _) = start(Some("No active Lifecycle Action found with instance ID i-1")).await;
    client.complete("i-1", &action()).await.unwrap();
    let (client, _) = start(Some("Unable to find hook drain-hook")).await;
    let err = client.complete("i-1", &action()).await.unwrap_err().to_string();
    assert!(
        err.contains("CompleteLifecycleAction")
            && err.contains("drain-hook")
            && err.contains("Unable to find hook"),
        "{err}"
    );
}
