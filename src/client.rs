//! One HTTP/1.1 request with its whole answer: what the CLI and the rollout controller need to
//! talk to gateways and to Prometheus.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one exchange may take before it counts as unanswered.
pub(crate) const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// No HTTP exchange happened.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {url}: {reason}")]
pub struct Unreachable {
    /// What was asked.
    pub url: String,
    /// Why it failed.
    pub reason: String,
}

/// A base URL as a person may type it: `127.0.0.1:9090` and `http://127.0.0.1:9090/` both
/// mean `http://127.0.0.1:9090`.
pub fn base_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// An answer read whole.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// Sends one request and reads the whole answer.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Answer, Unreachable> {
    let unreachable = |reason: String| Unreachable {
        url: url.to_string(),
        reason,
    };
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|error| unreachable(error.to_string()))?;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let response = tokio::time::timeout(EXCHANGE_TIMEOUT, client.request(request))
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", EXCHANGE_TIMEOUT.as_secs())))?
        .map_err(|error| {
            // hyper says `client error (Connect)`; the cause underneath says what happened.
            let mut cause: &dyn std::error::Error = &error;
            while let Some(deeper) = cause.source() {
                cause = deeper;
            }
            if error.is_connect() {
                unreachable(format!("nothing answers there ({cause})"))
            } else {
                unreachable(crate::causes::each_cause_once(&error))
            }
        })?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|error| unreachable(error.to_string()))?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
