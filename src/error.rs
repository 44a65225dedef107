//! Errors the gateway itself answers with, and the one place that maps them to a response.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::routing::RouteError;

/// Azure's text for a request with nowhere to go, kept word for word so users recognise it.
pub const NO_VALID_DEPLOYMENTS: &str = "No valid deployments to route to. Please check that the \
    endpoint has at least one deployment with positive weight values or use a deployment \
    specific header to route.";

/// Everything that can stop the gateway from returning an upstream's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Every weight is 0 and the request was not pinned.
    #[error("{NO_VALID_DEPLOYMENTS}")]
    NoValidDeployments,
    /// The pin header names a deployment that does not exist.
    #[error("Deployment `{requested}` does not exist in this endpoint; deployments are: {known}")]
    UnknownDeployment {
        /// The name that was asked for.
        requested: String,
        /// The names that exist.
        known: String,
    },
    /// The pin header is present but unusable.
    #[error("invalid `azureml-model-deployment` header: {0}")]
    InvalidPinHeader(&'static str),
    /// The request target is not one a model server can be sent unchanged.
    #[error("invalid request target: {0}")]
    InvalidTarget(&'static str),
    /// The request's body uses a transfer coding other than one `chunked`.
    #[error(
        "transfer coding `{0}` is not supported: send the body with `Transfer-Encoding: chunked` \
         or a Content-Length"
    )]
    UnsupportedCoding(String),
    /// The `Host` header is sent twice or is no host.
    #[error("invalid `Host` header: {0}")]
    InvalidHost(&'static str),
    /// `CONNECT`: the gateway is no tunnel.
    #[error(
        "CONNECT is not supported: the gateway forwards requests to models, it opens no tunnels"
    )]
    ConnectMethod,
    /// The client did not present a valid key.
    #[error("missing or invalid key; send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// The request body is larger than the gateway accepts.
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Too many requests are pending for the deployment (Azure's rule).
    #[error(
        "deployment `{deployment}` has too many pending requests (more than {limit}: 2 x \
         max_concurrent_requests_per_instance x instances); retry later"
    )]
    Overloaded {
        /// The deployment.
        deployment: String,
        /// The pending limit.
        limit: usize,
    },
    /// No instance became free within `max_queue_wait_ms`.
    #[error(
        "no instance of deployment `{deployment}` became free within max_queue_wait_ms \
         ({waited_ms} ms); retry later"
    )]
    QueueTimeout {
        /// The deployment.
        deployment: String,
        /// How long the request waited.
        waited_ms: u128,
    },
    /// Every instance of the chosen deployment is unready or ejected.
    #[error("no instance of deployment `{deployment}` is ready")]
    NoReadyInstance {
        /// The deployment.
        deployment: String,
    },
    /// The instance took longer than `request_timeout_ms` to answer.
    #[error("deployment `{deployment}` did not answer within request_timeout_ms ({timeout_ms} ms)")]
    Timeout {
        /// The deployment.
        deployment: String,
        /// The timeout.
        timeout_ms: u128,
    },
    /// No connection to the chosen instance could be made.
    #[error("could not connect to an instance of deployment `{deployment}`")]
    Connect {
        /// The deployment whose instance refused.
        deployment: String,
    },
    /// The client's request body broke off or was malformed.
    #[error("the request body could not be read to its end")]
    RequestBody,
    /// The instance accepted the request but failed before sending a response head.
    #[error("deployment `{deployment}` closed the connection without responding")]
    UpstreamFailed {
        /// The deployment whose instance failed.
        deployment: String,
    },
}

impl ProxyError {
    /// The status code for this error. Exhaustive on purpose: a new error must choose one.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoValidDeployments => StatusCode::NOT_FOUND,
            ProxyError::UnknownDeployment { .. } => StatusCode::NOT_FOUND,
            ProxyError::InvalidPinHeader(_) => StatusCode::BAD_REQUEST,
            ProxyError::InvalidTarget(_) => StatusCode::BAD_REQUEST,
            ProxyError::ConnectMethod => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::InvalidHost(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedCoding(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::QueueTimeout { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoReadyInstance { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Connect { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::RequestBody => StatusCode::BAD_REQUEST,
        }
    }

    /// A stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoValidDeployments => "no_valid_deployments",
            ProxyError::UnknownDeployment { .. } => "deployment_not_found",
            ProxyError::InvalidPinHeader(_) => "invalid_deployment_header",
            ProxyError::InvalidTarget(_) => "invalid_request_target",
            ProxyError::ConnectMethod => "method_not_allowed",
            ProxyError::InvalidHost(_) => "invalid_host",
            ProxyError::UnsupportedCoding(_) => "unsupported_transfer_coding",
            ProxyError::Unauthorized => "unauthorized",
            ProxyError::PayloadTooLarge { .. } => "payload_too_large",
            ProxyError::Overloaded { .. } => "too_many_pending_requests",
            ProxyError::QueueTimeout { .. } => "queue_wait_timeout",
            ProxyError::NoReadyInstance { .. } => "no_ready_instance",
            ProxyError::Timeout { .. } => "request_timeout",
            ProxyError::Connect { .. } => "upstream_connect_failed",
            ProxyError::UpstreamFailed { .. } => "upstream_failed",
            ProxyError::RequestBody => "invalid_request_body",
        }
    }

    /// `{"error": {"code": ..., "message": ...}}` with the right status.
    pub fn to_response(&self) -> Response<Bytes> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            ProxyError::Overloaded { .. } | ProxyError::QueueTimeout { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<RouteError> for ProxyError {
    fn from(error: RouteError) -> Self {
        match error {
            RouteError::NoPositiveWeight => ProxyError::NoValidDeployments,
            RouteError::UnknownDeployment { requested, known } => {
                ProxyError::UnknownDeployment { requested, known }
            }
        }
    }
}
