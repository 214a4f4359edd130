//! Webhook notifications: a Go-template subset compatible with NTH's templates, custom
//! headers, proxy, retries with backoff.

use std::collections::BTreeMap;
use std::time::Duration;

/// NTH's default (Slack-compatible) template.
pub const DEFAULT_TEMPLATE: &str = r#"{"text":"[NTH][Instance Interruption] EventID: {{ .EventID }} - Kind: {{ .Kind }} - Instance: {{ .InstanceID }} - Node: {{ .NodeName }} - Description: {{ .Description }} - Start Time: {{ .StartTime }}"}"#;

/// The fields a template may use (NTH's `InterruptionEvent` and `NodeMetadata` names).
pub const FIELDS: &[&str] = &[
    "EventID",
    "Kind",
    "Monitor",
    "Description",
    "State",
    "NodeName",
    "InstanceID",
    "ProviderID",
    "InstanceType",
    "InstanceLifeCycle",
    "AvailabilityZone",
    "Region",
    "AutoScalingGroupName",
    "StartTime",
    "EndTime",
    "Pods",
    "AccountId",
    "LocalHostname",
    "LocalIP",
    "PublicHostname",
    "PublicIP",
];

/// Errors of webhooks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The template uses a field that does not exist, or is malformed.
    #[error("webhook template: {0}")]
    Template(String),
    /// Headers are not a JSON object of strings.
    #[error("webhook headers are not a JSON object of strings: {0}")]
    Headers(String),
    /// The proxy URL is invalid.
    #[error("webhook proxy {url:?} is invalid: {reason}")]
    Proxy {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Every attempt failed.
    #[error("webhook to {url} failed after {attempts} attempt(s): {last}")]
    Delivery {
        /// The URL, with any path elided (it often holds a secret).
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

impl Template {
    /// Parses `{{ .Field }}` placeholders; unknown fields and unclosed braces are errors
    /// (checked at start-up, as NTH does).
    pub fn parse(source: &str) -> Result<Self, Error> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| {
                Error::Template(format!(
                    "unclosed '{{{{' at byte {}",
                    source.len() - rest.len() + start
                ))
            })?;
            let inner = after[..end]
                .trim()
                .trim_start_matches('-')
                .trim_end_matches('-')
                .trim();
            let field = inner
                .strip_prefix('.')
                .filter(|f| FIELDS.contains(f))
                .ok_or_else(|| {
                    Error::Template(format!(
                        "unsupported placeholder {{{{ {inner} }}}}: use one of .{}",
                        FIELDS.join(", .")
                    ))
                })?;
            parts.push(Part::Field(field.to_owned()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Renders with `data`; missing fields render empty. Values are escaped for JSON string
    /// context when the template is JSON (it starts with `{` or `[`).
    pub fn render(&self, data: &BTreeMap<&str, String>) -> String {
        let json =
            matches!(self.parts.first(), Some(Part::Text(t)) if t.trim_start().starts_with(['{', '[']));
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => {
                    let value = data.get(f.as_str()).map(String::as_str).unwrap_or_default();
                    if json {
                        let quoted = serde_json::to_string(value).unwrap_or_default();
                        out.push_str(&quoted[1..quoted.len() - 1]);
                    } else {
                        out.push_str(value);
                    }
                }
            }
        }
        out
    }
}

/// A configured webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: String,
    headers: BTreeMap<String, String>,
    template: Template,
    client: reqwest::Client,
    attempts: u32,
    backoff: Duration,
}

impl Webhook {
    /// Builds a webhook. `proxy` applies to every request.
    pub fn new(url: String, headers_json: &str, template: &str, proxy: Option<&str>) -> Result<Self, Error> {
        let headers: BTreeMap<String, String> = serde_json::from_str(headers_json)
            .map_err(|e| Error::Headers(format!("{e}: {headers_json:?}")))?;
        let template = Template::parse(template)?;
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if let Some(proxy) = proxy.filter(|p| !p.is_empty()) {
            let p = reqwest::Proxy::all(proxy).map_err(|e| Error::Proxy {
                url: proxy.to_owned(),
                reason: e.to_string(),
            })?;
            builder = builder.proxy(p);
        } else {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| Error::Proxy {
            url: proxy.unwrap_or("").to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Webhook {
            url,
            headers,
            template,
            client,
            attempts: 4,
            backoff: Duration::from_secs(1),
        })
    }

    /// Sets the retry policy: `attempts` tries, waiting `backoff`, then twice that, ...
    pub fn with_retries(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// The body that would be sent for `data`.
    pub fn body(&self, data: &BTreeMap<&str, String>) -> String {
        self.template.render(data)
    }

    /// Sends the notification, retrying failures and non-2xx answers with backoff.
    pub async fn send(&self, data: &BTreeMap<&str, String>) -> Result<(), Error> {
        let body = self.body(data);
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let mut req = self.client.post(&self.url).body(body.clone());
            for (k, v) in &self.headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => last = format!("HTTP {}", resp.status()),
                Err(e) => last = e.to_string(),
            }
            if attempt < self.attempts {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        Err(Error::Delivery {
            url: redact(&self.url),
            attempts: self.attempts,
            last,
        })
    }
}

/// Keeps scheme and host of a URL, hiding the path (Slack webhook paths are secrets).
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}/…", rest.split('/').next().unwrap_or_default()),
        None => "<invalid url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn data() -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("EventID", "spot-itn-1".to_owned()),
            ("Kind", "SPOT_ITN".to_owned()),
            ("InstanceID", "i-1".to_owned()),
            ("NodeName", "ip-10-0-0-1".to_owned()),
            ("Description", "Spot \"interruption\"\nnotice".to_owned()),
            ("StartTime", "2026-11-22T10:00:00Z".to_owned()),
        ])
    }

    #[test]
    fn default_template_renders_valid_json() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let body = t.render(&data());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(
            text.contains("EventID: spot-itn-1 - Kind: SPOT_ITN - Instance: i-1 - Node: ip-10-0-0-1"),
            "{text}"
        );
        assert!(text.contains("Spot \"interruption\"\nnotice"));
    }

    #[test]
    fn plain_text_templates_and_trim_markers() {
        let t = Template::parse("node {{- .NodeName -}}!{{.Kind}}").unwrap();
        assert_eq!(t.render(&data()), "node ip-10-0-0-1!SPOT_ITN");
    }

    #[test]
    fn bad_templates_are_rejected() {
        let err = Template::parse("{{ .Nope }}").unwrap_err().to_string();
        assert!(err.contains("Nope") && err.contains(".EventID"), "{err}");
        assert!(
            Template::parse("{{ .Kind ")
                .unwrap_err()
                .to_string()
                .contains("unclosed")
        );
        assert!(Template::parse("{{ range .Pods }}").is_err());
    }

    #[test]
    fn redacts_paths() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T/B/secret"),
            "https://hooks.slack.com/…"
        );
    }

    #[tokio::test]
    async fn retries_until_success_with_headers() {
        use axum::{Router, http::HeaderMap, routing::post};
        let hits = Arc::new(AtomicU32::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (h, s) = (hits.clone(), seen.clone());
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let (h, s) = (h.clone(), s.clone());
                async move {
                    let n = h.fetch_add(1, Ordering::SeqCst);
                    s.lock().unwrap().push(format!(
                        "{}|{body}",
                        headers
                            .get("x-team")
                            .map(|v| v.to_str().unwrap_or_default())
                            .unwrap_or_default()
                    ));
                    if n < 2 {
                        axum::http::StatusCode::BAD_GATEWAY
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let hook = Webhook::new(
            format!("http://{addr}/hook"),
            r#"{"x-team":"sre"}"#,
            "{{ .Kind }}",
            None,
        )
        .unwrap()
        .with_retries(3, Duration::from_millis(10));
        hook.send(&data()).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        assert_eq!(seen.lock().unwrap().last().unwrap(), "sre|SPOT_ITN");

        let failing = Webhook::new(format!("http://{addr}/missing"), "{}", "x", None)
            .unwrap()
            .with_retries(2, Duration::from_millis(1));
        let err = failing.send(&data()).await.unwrap_err().to_string();
        assert!(err.contains("2 attempt(s)") && err.contains("404"), "{err}");
    }
}
