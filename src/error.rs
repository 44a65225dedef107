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
    /// The request head breaks HTTP/1.1's syntax (RFC 9112), so nothing of it is forwarded.
    #[error("malformed request head: {0}")]
    MalformedHead(&'static str),
    /// The request head is over the gateway's limits.
    #[error("the request head is over the limits of {bytes} bytes and {lines} header lines")]
    HeadTooLarge {
        /// The limit on the head's size.
        bytes: usize,
        /// The limit on its header lines.
        lines: usize,
    },
    /// A version other than HTTP/1.1, HTTP/1.0 and HTTP/2.
    #[error("HTTP version not supported: send HTTP/1.1, HTTP/1.0 or HTTP/2")]
    UnsupportedVersion,
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
    /// The instance took longer than the gRPC call's own deadline (`grpc-timeout`) to answer.
    #[error(
        "deployment `{deployment}` did not answer within the call's deadline ({timeout_ms} ms)"
    )]
    DeadlineExceeded {
        /// The deployment.
        deployment: String,
        /// The deadline the client set.
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
            ProxyError::UnsupportedVersion => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ProxyError::InvalidHost(_) => StatusCode::BAD_REQUEST,
            ProxyError::MalformedHead(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UnsupportedCoding(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::QueueTimeout { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoReadyInstance { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
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
            ProxyError::UnsupportedVersion => "http_version_not_supported",
            ProxyError::InvalidHost(_) => "invalid_host",
            ProxyError::MalformedHead(_) => "malformed_request",
            ProxyError::HeadTooLarge { .. } => "request_header_fields_too_large",
            ProxyError::UnsupportedCoding(_) => "unsupported_transfer_coding",
            ProxyError::Unauthorized => "unauthorized",
            ProxyError::PayloadTooLarge { .. } => "payload_too_large",
            ProxyError::Overloaded { .. } => "too_many_pending_requests",
            ProxyError::QueueTimeout { .. } => "queue_wait_timeout",
            ProxyError::NoReadyInstance { .. } => "no_ready_instance",
            ProxyError::Timeout { .. } => "request_timeout",
            ProxyError::DeadlineExceeded { .. } => "deadline_exceeded",
            ProxyError::Connect { .. } => "upstream_connect_failed",
            ProxyError::UpstreamFailed { .. } => "upstream_failed",
            ProxyError::RequestBody => "invalid_request_body",
        }
    }

    /// The gRPC status a gRPC client gets for this error. Exhaustive on purpose, like
    /// [`ProxyError::status`]. It follows gRPC's mapping of HTTP statuses where that mapping
    /// says what happened, and names the cause where the gateway knows better: an unknown
    /// deployment is NOT_FOUND (not UNIMPLEMENTED, the guide's reading of a 404), and a
    /// request the gateway refused as malformed is INVALID_ARGUMENT (not INTERNAL).
    pub fn grpc_status(&self) -> GrpcStatus {
        match self {
            ProxyError::NoValidDeployments => GrpcStatus::NotFound,
            ProxyError::UnknownDeployment { .. } => GrpcStatus::NotFound,
            ProxyError::InvalidPinHeader(_) => GrpcStatus::InvalidArgument,
            ProxyError::InvalidTarget(_) => GrpcStatus::InvalidArgument,
            ProxyError::ConnectMethod => GrpcStatus::Unimplemented,
            ProxyError::UnsupportedVersion => GrpcStatus::Unimplemented,
            ProxyError::InvalidHost(_) => GrpcStatus::InvalidArgument,
            ProxyError::MalformedHead(_) => GrpcStatus::InvalidArgument,
            ProxyError::HeadTooLarge { .. } => GrpcStatus::ResourceExhausted,
            ProxyError::UnsupportedCoding(_) => GrpcStatus::Unimplemented,
            ProxyError::Unauthorized => GrpcStatus::Unauthenticated,
            ProxyError::PayloadTooLarge { .. } => GrpcStatus::ResourceExhausted,
            ProxyError::Overloaded { .. } => GrpcStatus::ResourceExhausted,
            ProxyError::QueueTimeout { .. } => GrpcStatus::ResourceExhausted,
            ProxyError::NoReadyInstance { .. } => GrpcStatus::Unavailable,
            ProxyError::Timeout { .. } => GrpcStatus::DeadlineExceeded,
            ProxyError::DeadlineExceeded { .. } => GrpcStatus::DeadlineExceeded,
            ProxyError::Connect { .. } => GrpcStatus::Unavailable,
            ProxyError::UpstreamFailed { .. } => GrpcStatus::Unavailable,
            ProxyError::RequestBody => GrpcStatus::InvalidArgument,
        }
    }

    /// The answer to a gRPC client: HTTP 200 and a trailers-only response, whose `grpc-status`
    /// and `grpc-message` carry the status and the same message the JSON body would.
    pub fn to_grpc_response(&self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(self.grpc_status() as u16));
        if let Ok(message) = HeaderValue::from_str(&grpc_message(&self.to_string())) {
            headers.insert("grpc-message", message);
        }
        response
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

/// The gRPC status codes the gateway answers with (gRPC's `statuscodes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum GrpcStatus {
    /// 3: the request is malformed.
    InvalidArgument = 3,
    /// 4: no answer within the time allowed.
    DeadlineExceeded = 4,
    /// 5: no such deployment.
    NotFound = 5,
    /// 8: the deployment is at its limit, or the message too large.
    ResourceExhausted = 8,
    /// 12: something the gateway does not do.
    Unimplemented = 12,
    /// 14: no instance could take the call; retrying may succeed.
    Unavailable = 14,
    /// 16: no valid key.
    Unauthenticated = 16,
}

impl GrpcStatus {
    /// The status's name, as gRPC's libraries print it.
    pub fn name(self) -> &'static str {
        match self {
            GrpcStatus::InvalidArgument => "INVALID_ARGUMENT",
            GrpcStatus::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcStatus::NotFound => "NOT_FOUND",
            GrpcStatus::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcStatus::Unimplemented => "UNIMPLEMENTED",
            GrpcStatus::Unavailable => "UNAVAILABLE",
            GrpcStatus::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// The HTTP status a gRPC call's failure stands for, from the `grpc-status` an instance sent
/// (the mapping of `google.rpc.Code`): how the metrics, the access log, passive health and a
/// gated rollout's judge count a call that HTTP calls a 200. `None` for OK or a value that is no
/// code.
pub fn status_of_grpc_code(code: &[u8]) -> Option<StatusCode> {
    let status = match code {
        b"0" => return None,
        b"1" => 499,                // CANCELLED
        b"2" => 500,                // UNKNOWN
        b"3" | b"9" | b"11" => 400, // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
        b"4" => 504,                // DEADLINE_EXCEEDED
        b"5" => 404,                // NOT_FOUND
        b"6" | b"10" => 409,        // ALREADY_EXISTS, ABORTED
        b"7" => 403,                // PERMISSION_DENIED
        b"8" => 429,                // RESOURCE_EXHAUSTED
        b"12" => 501,               // UNIMPLEMENTED
        b"13" | b"15" => 500,       // INTERNAL, DATA_LOSS
        b"14" => 503,               // UNAVAILABLE
        b"16" => 401,               // UNAUTHENTICATED
        _ => return None,
    };
    StatusCode::from_u16(status).ok()
}

/// Whether a request's `content-type` is gRPC's (`application/grpc`, with or without a
/// `+proto`-style suffix): its client reads errors from `grpc-status`. The request path asks it
/// of HTTP/2 requests, which is what gRPC runs over.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= 16 && value[..16].eq_ignore_ascii_case(b"application/grpc")
    })
}

/// `text` as a `grpc-message`: percent-encoded outside printable ASCII, and `%` itself
/// (gRPC's HTTP/2 protocol spec).
fn grpc_message(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

impl From<RouteError> for ProxyError {
    fn from(error: RouteError) -> Self {
        match error {
            RouteError::Unauthorized => ProxyError::Unauthorized,
            RouteError::InvalidPin(why) => ProxyError::InvalidPinHeader(why),
            RouteError::NoPositiveWeight => ProxyError::NoValidDeployments,
            RouteError::UnknownDeployment { requested, known } => {
                ProxyError::UnknownDeployment { requested, known }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of each kind. The match makes a new kind fail to compile until it is listed.
    fn one_of_each() -> Vec<ProxyError> {
        let deployment = || "blue".to_string();
        let all = vec![
            ProxyError::NoValidDeployments,
            ProxyError::UnknownDeployment {
                requested: "red".into(),
                known: "blue".into(),
            },
            ProxyError::InvalidPinHeader("empty"),
            ProxyError::InvalidTarget("bad"),
            ProxyError::UnsupportedCoding("gzip".into()),
            ProxyError::InvalidHost("bad"),
            ProxyError::MalformedHead("bad"),
            ProxyError::HeadTooLarge { bytes: 1, lines: 1 },
            ProxyError::ConnectMethod,
            ProxyError::UnsupportedVersion,
            ProxyError::Unauthorized,
            ProxyError::PayloadTooLarge { limit: 1 },
            ProxyError::Overloaded {
                deployment: deployment(),
                limit: 2,
            },
            ProxyError::QueueTimeout {
                deployment: deployment(),
                waited_ms: 1,
            },
            ProxyError::NoReadyInstance {
                deployment: deployment(),
            },
            ProxyError::Timeout {
                deployment: deployment(),
                timeout_ms: 1,
            },
            ProxyError::DeadlineExceeded {
                deployment: deployment(),
                timeout_ms: 1,
            },
            ProxyError::Connect {
                deployment: deployment(),
            },
            ProxyError::RequestBody,
            ProxyError::UpstreamFailed {
                deployment: deployment(),
            },
        ];
        for error in &all {
            match error {
                ProxyError::NoValidDeployments
                | ProxyError::UnknownDeployment { .. }
                | ProxyError::InvalidPinHeader(_)
                | ProxyError::InvalidTarget(_)
                | ProxyError::UnsupportedCoding(_)
                | ProxyError::InvalidHost(_)
                | ProxyError::MalformedHead(_)
                | ProxyError::HeadTooLarge { .. }
                | ProxyError::ConnectMethod
                | ProxyError::UnsupportedVersion
                | ProxyError::Unauthorized
                | ProxyError::PayloadTooLarge { .. }
                | ProxyError::Overloaded { .. }
                | ProxyError::QueueTimeout { .. }
                | ProxyError::NoReadyInstance { .. }
                | ProxyError::Timeout { .. }
                | ProxyError::DeadlineExceeded { .. }
                | ProxyError::Connect { .. }
                | ProxyError::RequestBody
                | ProxyError::UpstreamFailed { .. } => {}
            }
        }
        all
    }

    #[test]
    fn the_docs_list_every_error_with_its_status_and_grpc_status() {
        let readme = include_str!("../docs/requests.md");
        let grpc_page = include_str!("../docs/grpc.md");
        for error in one_of_each() {
            let code = format!("| `{}` |", error.code());
            let row = readme
                .lines()
                .find(|line| line.contains(&code))
                .unwrap_or_else(|| panic!("docs/requests.md's error table has no row for {code}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert_eq!(cells[1], error.status().as_str(), "{row}");
            assert_eq!(
                cells[3],
                format!("`{}`", error.grpc_status().name()),
                "{row}"
            );
            let listed = grpc_page.lines().any(|line| {
                line.contains(&format!("`{}`", error.code()))
                    && line.contains(&format!(
                        "`{}` ({})",
                        error.grpc_status().name(),
                        error.grpc_status() as u16
                    ))
            });
            assert!(listed, "docs/grpc.md maps {} otherwise", error.code());
        }
    }

    #[test]
    fn a_grpc_failure_counts_as_the_http_status_it_stands_for() {
        assert_eq!(status_of_grpc_code(b"0"), None);
        assert_eq!(
            status_of_grpc_code(b"14"),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            status_of_grpc_code(b"13"),
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(
            status_of_grpc_code(b"8"),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
        assert_eq!(status_of_grpc_code(b"3"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status_of_grpc_code(b"99"), None);
        assert_eq!(status_of_grpc_code(b""), None);
    }

    #[test]
    fn a_grpc_message_is_percent_encoded_outside_printable_ascii() {
        assert_eq!(grpc_message("no `x`: 100%"), "no `x`: 100%25");
        assert_eq!(grpc_message("caf\u{e9}\n"), "caf%C3%A9%0A");
    }

    #[test]
    fn grpc_calls_are_told_apart_by_their_content_type() {
        let headers = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            headers
        };
        assert!(is_grpc(&headers("application/grpc")));
        assert!(is_grpc(&headers("application/grpc+proto")));
        assert!(is_grpc(&headers("Application/gRPC-web")));
        assert!(!is_grpc(&headers("application/json")));
        assert!(!is_grpc(&http::HeaderMap::new()));
    }

    #[test]
    fn a_grpc_answer_is_trailers_only_with_the_gateway_message() {
        let error = ProxyError::UnknownDeployment {
            requested: "red".into(),
            known: "blue, green".into(),
        };
        let response = error.to_grpc_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.body().is_empty());
        assert_eq!(response.headers()["grpc-status"], "5");
        assert_eq!(
            response.headers()["grpc-message"],
            "Deployment `red` does not exist in this endpoint; deployments are: blue, green"
        );
    }
}
