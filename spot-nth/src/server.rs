//! The HTTP endpoints: `/metrics` (Prometheus text), the liveness probe (`/healthz` by
//! default) and `/readyz` (ready when the event source and the API server are reachable).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// A readiness check: resolves to `Err(reason)` when not ready.
pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: ReadyCheck,
}

/// The router with `/metrics` and the probes (liveness at `liveness_path`, readiness at
/// `/readyz`).
pub fn router(metrics: Arc<Metrics>, liveness_path: &str, ready: ReadyCheck) -> Router {
    let liveness_path = if liveness_path.starts_with('/') {
        liveness_path.to_owned()
    } else {
        format!("/{liveness_path}")
    };
    let mut router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/readyz", get(readyz));
    if liveness_path != "/readyz" && liveness_path != "/metrics" {
        router = router.route(&liveness_path, get(healthz));
    }
    router.with_state(AppState { metrics, ready })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn healthz() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"health":"OK"}"#)
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match (state.ready)().await {
        Ok(()) => (StatusCode::OK, r#"{"ready":true}"#.to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "ready": false, "reason": reason }).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn probes_and_metrics() {
        let metrics = Arc::new(Metrics::new());
        metrics.action("cordon", "success");
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let ready: ReadyCheck = Arc::new(move || {
            let ok = flag.load(Ordering::SeqCst);
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("SQS unreachable".to_owned())
                }
            })
        });
        let app = router(metrics, "healthz", ready);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        crate::install_crypto_provider();
        let client = reqwest::Client::new();

        let r = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(
            (r.status().as_u16(), r.text().await.unwrap()),
            (200, r#"{"health":"OK"}"#.to_owned())
        );
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 503);
        assert!(r.text().await.unwrap().contains("SQS unreachable"));
        up.store(true, Ordering::SeqCst);
        assert_eq!(
            client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            200
        );
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("spot_nth_actions_total{node_action=\"cordon\",node_status=\"success\"} 1"),
            "{text}"
        );
    }
}
