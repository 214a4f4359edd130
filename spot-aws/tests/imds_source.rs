//! The IMDS client and event source against `spot-imds-sim` on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use spot_aws::imds::{self, ImdsClient, ImdsConfig, ImdsSource};
use spot_aws::imds_sim::{ImdsSim, RunningSim, ScheduledSpec, SimConfig};
use spot_core::event::{EventKind, InstanceState, InterruptionEvent, Origin, ScheduledState, SpotAction};
use spot_core::source::{self, AckHandle, EventSource};

const LOOPBACK: &str = "127.0.0.1:0";
const WAIT: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    LOOPBACK.parse().expect("loopback address")
}

async fn start(config: SimConfig) -> Result<RunningSim> {
    Ok(ImdsSim::start(config, loopback()).await?)
}

fn config_for(sim: &RunningSim) -> ImdsConfig {
    ImdsConfig {
        poll_interval: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..ImdsConfig::with_endpoint(sim.url())
    }
}

/// Receives the next deliveries (within 10 s), acknowledges them and returns their events.
async fn next_events(source: &ImdsSource) -> Result<Vec<InterruptionEvent>> {
    let deliveries = tokio::time::timeout(WAIT, source.receive()).await??;
    let handles: Vec<AckHandle> = deliveries.iter().map(|d| d.ack.clone()).collect();
    source.acknowledge(&handles).await?;
    Ok(deliveries.into_iter().flat_map(|d| d.events).collect())
}

#[tokio::test]
async fn spot_notice_is_reported_once_with_its_deadline() -> Result<()> {
    let sim = start(SimConfig::default().with_instance_id("i-0spot")).await?;
    let source = ImdsSource::new(&config_for(&sim))?;
    assert!(source.poll().await?.is_empty(), "nothing before the notice");
    let identity = source.identity().expect("identity read by the first poll");
    assert_eq!(
        (identity.instance_id.as_str(), identity.region.as_str()),
        ("i-0spot", "us-east-1")
    );

    let notice = sim.trigger_spot_itn(SpotAction::Terminate, Duration::from_secs(120));
    let deliveries = tokio::time::timeout(WAIT, source.receive()).await??;
    assert_eq!(deliveries.len(), 1);
    let event = &deliveries[0].events[0];
    assert_eq!(event.instance_id, "i-0spot");
    assert_eq!(event.origin, Origin::Imds);
    assert_eq!(
        event.kind,
        EventKind::SpotInterruption {
            action: SpotAction::Terminate,
            deadline: notice.time
        }
    );

    // Polled again: nothing new.
    for _ in 0..3 {
        assert!(source.poll().await?.is_empty());
    }
    source.acknowledge(&[deliveries[0].ack.clone()]).await?;
    let again = source
        .acknowledge(&[deliveries[0].ack.clone()])
        .await
        .unwrap_err();
    assert!(matches!(again, source::Error::UnknownHandle { .. }), "{again}");
    let stats = source.stats();
    assert_eq!((stats.events, stats.errors), (1, 0));
    assert!(source.ready().await);
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn receive_waits_for_a_delayed_start_up_notice() -> Result<()> {
    let sim = start(SimConfig::default().with_spot_itn_after(Duration::from_millis(300))).await?;
    let source = ImdsSource::new(&config_for(&sim))?;
    let events = next_events(&source).await?;
    assert_eq!(events.len(), 1);
    assert!(matches!(
        events[0].kind,
        EventKind::SpotInterruption {
            action: SpotAction::Terminate,
            ..
        }
    ));
    assert!(
        source.stats().polls >= 2,
        "the first polls found nothing: {:?}",
        source.stats()
    );
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn rebalance_recommendation() -> Result<()> {
    let sim = start(SimConfig::default()).await?;
    let source = ImdsSource::new(&config_for(&sim))?;
    sim.trigger_rebalance();
    let events = next_events(&source).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::RebalanceRecommendation);
    assert!(!events[0].kind.is_terminal());
    assert!(source.poll().await?.is_empty());
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn scheduled_event_active_then_canceled() -> Result<()> {
    let sim = start(SimConfig::default()).await?;
    let source = ImdsSource::new(&config_for(&sim))?;
    let scheduled = sim.schedule(ScheduledSpec {
        code: Some("instance-stop".into()),
        ..ScheduledSpec::default()
    })?;

    let active = next_events(&source).await?;
    assert_eq!(active.len(), 1);
    let EventKind::ScheduledChange {
        code,
        not_before,
        state,
        ..
    } = &active[0].kind
    else {
        panic!("expected a scheduled change, got {:?}", active[0].kind);
    };
    assert_eq!(
        (code.as_str(), *state, *not_before),
        ("instance-stop", ScheduledState::Active, scheduled.not_before)
    );
    assert!(active[0].kind.is_terminal());
    assert!(
        source.poll().await?.is_empty(),
        "an unchanged event is not reported again"
    );

    sim.cancel_scheduled(&scheduled.event_id)?;
    let canceled = next_events(&source).await?;
    assert_eq!(canceled.len(), 1);
    let EventKind::ScheduledChange {
        code,
        not_before,
        state,
        ..
    } = &canceled[0].kind
    else {
        panic!("expected a scheduled change, got {:?}", canceled[0].kind);
    };
    assert_eq!(
        (code.as_str(), *state, *not_before),
        ("instance-stop", ScheduledState::Canceled, scheduled.not_before)
    );
    assert!(!canceled[0].kind.is_terminal());
    assert_ne!(
        active[0].id, canceled[0].id,
        "the cancellation is a distinct event"
    );
    assert!(source.poll().await?.is_empty());
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn asg_target_state_terminated() -> Result<()> {
    let sim = start(SimConfig::default()).await?;
    let source = ImdsSource::new(&config_for(&sim))?;
    assert_eq!(
        source.client().target_lifecycle_state().await?,
        Some(imds::TargetLifecycleState::InService)
    );
    assert!(source.poll().await?.is_empty(), "InService is no event");
    sim.set_asg_target_state("Terminated")?;
    let events = next_events(&source).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].kind,
        EventKind::StateChange {
            state: InstanceState::Terminated
        }
    );
    assert!(source.poll().await?.is_empty());
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn ids_are_stable_across_polls_and_sources() -> Result<()> {
    let sim = start(SimConfig::default()).await?;
    sim.trigger_spot_itn(SpotAction::Stop, Duration::from_secs(120));
    sim.trigger_rebalance();
    sim.schedule(ScheduledSpec::default())?;
    sim.set_asg_target_state("Terminated")?;
    let first = ImdsSource::new(&config_for(&sim))?.poll().await?;
    assert_eq!(first.len(), 4);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = ImdsSource::new(&config_for(&sim))?.poll().await?;
    let ids = |events: &[InterruptionEvent]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&second));
    let names: Vec<&str> = first.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        names,
        [
            "spot-interruption",
            "rebalance-recommendation",
            "scheduled-change",
            "state-change"
        ]
    );

    // A new notice after a reset is a new event.
    sim.reset();
    sim.trigger_spot_itn(SpotAction::Stop, Duration::from_secs(300));
    let third = ImdsSource::new(&config_for(&sim))?.poll().await?;
    assert_eq!(third.len(), 1);
    assert_ne!(third[0].id, first[0].id);
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn token_is_reused_then_refreshed_before_expiry() -> Result<()> {
    let sim = start(SimConfig::default()).await?;
    let config = ImdsConfig {
        token_ttl: Duration::from_secs(2),
        ..config_for(&sim)
    };
    let client = ImdsClient::new(&config)?;
    for _ in 0..3 {
        assert_eq!(
            client.get("/latest/meta-data/instance-id").await?.as_deref(),
            Some("i-1234567890abcdef0")
        );
    }
    assert_eq!(client.token_requests(), 1, "the token is reused");
    // A 2 s token is refreshed a quarter (0.5 s) before it expires.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(client.get("/latest/meta-data/instance-type").await?.is_some());
    assert_eq!(client.token_requests(), 2);
    assert!(!client.is_imdsv1().await);
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn rejected_token_is_fetched_again_after_401() -> Result<()> {
    let sim = start(SimConfig::default()).await?;
    let client = ImdsClient::new(&config_for(&sim))?;
    assert!(client.get("/latest/meta-data/instance-id").await?.is_some());
    assert_eq!(client.token_requests(), 1);
    sim.revoke_tokens();
    assert_eq!(
        client.get("/latest/meta-data/instance-id").await?.as_deref(),
        Some("i-1234567890abcdef0")
    );
    assert_eq!(
        client.token_requests(),
        2,
        "401 made the client fetch a new token"
    );
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn sim_tokens_expire_after_their_ttl() -> Result<()> {
    let sim = start(SimConfig::default()).await?;
    spot_aws::config::install_crypto_provider();
    let http = reqwest::Client::new();
    let token_url = format!("{}/latest/api/token", sim.url());
    let response = http
        .put(&token_url)
        .header(imds::TOKEN_TTL_HEADER, "1")
        .send()
        .await?;
    assert_eq!(response.headers()[imds::TOKEN_TTL_HEADER], "1");
    let token = response.text().await?;
    let url = format!("{}/latest/meta-data/instance-id", sim.url());
    let ok = http.get(&url).header(imds::TOKEN_HEADER, &token).send().await?;
    assert_eq!(ok.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = http.get(&url).header(imds::TOKEN_HEADER, &token).send().await?;
    assert_eq!(expired.status(), 401);
    for ttl in ["0", "21601", "x"] {
        let bad = http
            .put(&token_url)
            .header(imds::TOKEN_TTL_HEADER, ttl)
            .send()
            .await?;
        assert_eq!(bad.status(), 400, "TTL {ttl}");
    }
    assert_eq!(http.put(&token_url).send().await?.status(), 400, "TTL missing");
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn imdsv1_is_refused_by_default() -> Result<()> {
    let sim = start(SimConfig::default()).await?;
    spot_aws::config::install_crypto_provider();
    let http = reqwest::Client::new();
    let url = format!("{}/latest/meta-data/instance-id", sim.url());
    assert_eq!(
        http.get(&url).send().await?.status(),
        401,
        "the sim requires a token by default"
    );
    sim.shutdown().await?;

    let v1 = start(SimConfig::default().with_imdsv1(true)).await?;
    let url = format!("{}/latest/meta-data/instance-id", v1.url());
    assert_eq!(http.get(&url).send().await?.text().await?, "i-1234567890abcdef0");
    assert_eq!(
        http.get(&url)
            .header(imds::TOKEN_HEADER, "forged")
            .send()
            .await?
            .status(),
        401
    );
    v1.shutdown().await?;

    // A metadata service without the token endpoint (IMDSv1 only).
    let legacy = legacy_imds().await?;
    let client = ImdsClient::new(&ImdsConfig::with_endpoint(format!("http://{legacy}")))?;
    let err = client.get("/latest/meta-data/instance-id").await.unwrap_err();
    assert!(matches!(err, imds::Error::TokenRefused { status: 405 }), "{err}");
    let fallback = ImdsConfig {
        allow_imdsv1: true,
        ..ImdsConfig::with_endpoint(format!("http://{legacy}"))
    };
    let client = ImdsClient::new(&fallback)?;
    assert_eq!(
        client.get("/latest/meta-data/instance-id").await?.as_deref(),
        Some("i-0legacy")
    );
    assert!(client.is_imdsv1().await);
    assert_eq!(
        client.get("/latest/meta-data/instance-id").await?.as_deref(),
        Some("i-0legacy")
    );
    assert_eq!(client.token_requests(), 1, "the fallback is remembered");
    Ok(())
}

/// A server that refuses token requests with 405 and serves an instance id (and a malformed
/// spot notice) only to requests without a token.
async fn legacy_imds() -> Result<SocketAddr> {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    let no_token = |headers: HeaderMap, body: &'static str| {
        if headers.contains_key(imds::TOKEN_HEADER) {
            (StatusCode::BAD_REQUEST, "")
        } else {
            (StatusCode::OK, body)
        }
    };
    let router = axum::Router::new()
        // Only GET is routed, so the token PUT gets 405.
        .route("/latest/api/token", get(|| async { "" }))
        .route("/latest/meta-data/instance-id", get(move |h: HeaderMap| async move { no_token(h, "i-0legacy") }))
        .route(
            "/latest/dynamic/instance-identity/document",
            get(move |h: HeaderMap| async move {
                no_token(
                    h,
                    r#"{"instanceId":"i-0legacy","instanceType":"t3.micro","region":"us-east-1","availabilityZone":"us-east-1a"}"#,
                )
            }),
        )
        .route(
            "/latest/meta-data/spot/instance-action",
            get(move |h: HeaderMap| async move { no_token(h, r#"{"action":"self-destruct","time":"2026-01-01T00:00:00Z"}"#) }),
        );
    let listener = tokio::net::TcpListener::bind(loopback()).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

#[tokio::test]
async fn malformed_bodies_and_dead_endpoints_are_transport_errors() -> Result<()> {
    let legacy = legacy_imds().await?;
    let config = ImdsConfig {
        allow_imdsv1: true,
        poll_interval: Duration::from_millis(20),
        ..ImdsConfig::with_endpoint(format!("http://{legacy}"))
    };
    let source = ImdsSource::new(&config)?;
    let err = tokio::time::timeout(WAIT, source.receive()).await?.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("\"action\"") && message.contains("self-destruct"),
        "{message}"
    );
    assert!(!source.ready().await);
    assert!(source.stats().errors >= 1);

    // Nothing listens there any more.
    let sim = start(SimConfig::default()).await?;
    let url = sim.url();
    sim.shutdown().await?;
    let source = ImdsSource::new(&ImdsConfig {
        request_timeout: Duration::from_millis(500),
        retry_delay: Duration::from_millis(10),
        ..ImdsConfig::with_endpoint(url)
    })?;
    let err = tokio::time::timeout(WAIT, source.receive()).await?.unwrap_err();
    assert!(matches!(err, source::Error::Transport { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn control_api() -> Result<()> {
    let sim = start(SimConfig::default()).await?;
    spot_aws::config::install_crypto_provider();
    let http = reqwest::Client::new();
    let post = |path: &str, body: &'static str| http.post(format!("{}{}", sim.url(), path)).body(body).send();

    let response = post("/sim/spot-itn", r#"{"action":"stop","notice_seconds":30}"#).await?;
    assert_eq!(response.status(), 200);
    let state: serde_json::Value = response.json().await?;
    assert_eq!(state["spot_instance_action"]["action"], "stop");

    let state: serde_json::Value = post("/sim/rebalance", "").await?.json().await?;
    assert!(state["rebalance_notice_time"].is_string(), "{state}");

    let state: serde_json::Value = post("/sim/scheduled", r#"{"code":"system-maintenance"}"#)
        .await?
        .json()
        .await?;
    let event_id = state["scheduled_events"][0]["event_id"]
        .as_str()
        .expect("event id")
        .to_owned();
    let cancel = format!(r#"{{"event_id":"{event_id}","state":"canceled"}}"#);
    let response = http
        .post(format!("{}/sim/scheduled", sim.url()))
        .body(cancel)
        .send()
        .await?;
    let state: serde_json::Value = response.json().await?;
    assert_eq!(state["scheduled_events"][0]["state"], "canceled");
    assert_eq!(state["scheduled_events"].as_array().map(Vec::len), Some(1));

    let response = post("/sim/asg-target-state", r#"{"delay_seconds":3600}"#).await?;
    assert_eq!(response.status(), 202);
    let state: serde_json::Value = response.json().await?;
    assert_eq!(
        (
            state["asg_target_lifecycle_state"].as_str(),
            state["pending_triggers"].as_u64()
        ),
        (Some("InService"), Some(1))
    );
    let state: serde_json::Value = post("/sim/asg-target-state", "").await?.json().await?;
    assert_eq!(state["asg_target_lifecycle_state"], "Terminated");

    assert_eq!(post("/sim/spot-itn", "{not json").await?.status(), 400);
    assert_eq!(
        post("/sim/spot-itn", r#"{"action":"explode"}"#).await?.status(),
        400
    );
    assert_eq!(
        post("/sim/asg-target-state", r#"{"state":"a b"}"#)
            .await?
            .status(),
        400
    );

    let state: serde_json::Value = post("/sim/reset", "").await?.json().await?;
    assert!(
        state["spot_instance_action"].is_null() && state["rebalance_notice_time"].is_null(),
        "{state}"
    );
    assert_eq!(state["pending_triggers"], 0);
    let state: serde_json::Value = http
        .get(format!("{}/sim/state", sim.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(state["asg_target_lifecycle_state"], "InService");
    sim.shutdown().await?;
    Ok(())
}

/// A listener that drops the first `drop` connections it accepts (a flaky link to IMDS).
struct Flaky {
    inner: tokio::net::TcpListener,
    drop: usize,
}

impl axum::serve::Listener for Flaky {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let accepted = self.inner.accept().await;
            match accepted {
                Ok(_) if self.drop > 0 => self.drop -= 1,
                Ok(conn) => return conn,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The IMDS simulator behind a link that drops its first `drop` connections.
async fn flaky_imds(drop: usize) -> Result<SocketAddr> {
    let sim = ImdsSim::new(SimConfig::default().with_instance_id("i-0flaky"));
    let inner = tokio::net::TcpListener::bind(loopback()).await?;
    let addr = inner.local_addr()?;
    let router = sim.router();
    tokio::spawn(async move { axum::serve(Flaky { inner, drop }, router).await });
    Ok(addr)
}

#[tokio::test]
async fn transport_errors_are_tried_metadata_tries_times() -> Result<()> {
    // Two dropped connections: the third of three tries gets through.
    let addr = flaky_imds(2).await?;
    let config = ImdsConfig {
        tries: 3,
        retry_delay: Duration::from_millis(20),
        ..ImdsConfig::with_endpoint(format!("http://{addr}"))
    };
    let client = ImdsClient::new(&config)?;
    let started = tokio::time::Instant::now();
    assert_eq!(
        client.get("/latest/meta-data/instance-id").await?.as_deref(),
        Some("i-0flaky")
    );
    assert_eq!(client.retries(), 2);
    // 20 ms, then 40 ms, each plus up to half in jitter.
    assert!(
        started.elapsed() >= Duration::from_millis(60),
        "{:?}",
        started.elapsed()
    );

    // Two tries are not enough for two dropped connections.
    let addr = flaky_imds(2).await?;
    let client = ImdsClient::new(&ImdsConfig {
        tries: 2,
        ..ImdsConfig {
            endpoint: format!("http://{addr}"),
            ..config
        }
    })?;
    let err = client.get("/latest/meta-data/instance-id").await.unwrap_err();
    assert!(matches!(err, imds::Error::Http { .. }), "{err}");
    assert_eq!(client.retries(), 1);

    // HTTP statuses are answers: a 404 is not tried again.
    let addr_ok = flaky_imds(0).await?;
    let client = ImdsClient::new(&ImdsConfig::with_endpoint(format!("http://{addr_ok}")))?;
    assert_eq!(client.get("/latest/meta-data/spot/instance-action").await?, None);
    assert_eq!(client.retries(), 0);
    Ok(())
}
