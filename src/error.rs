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
    /// No connection to the chosen instance could be made.
    #[error("could not connect to an instance of deployment `{deployment}`")]
    Connect {
        /// The deployment whose instance refused.
        deployment: String,
    },
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
            ProxyError::Connect { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// A stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoValidDeployments => "no_valid_deployments",
            ProxyError::UnknownDeployment { .. } => "deployment_not_found",
            ProxyError::InvalidPinHeader(_) => "invalid_deployment_header",
            ProxyError::Connect { .. } => "upstream_connect_failed",
            ProxyError::UpstreamFailed { .. } => "upstream_failed",
        }
    }

    /// `{"error": {"code": ..., "message": ...}}` with the right status.
    pub fn to_response(&self) -> Response<Bytes> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
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
