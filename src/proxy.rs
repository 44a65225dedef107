//! The request path: route with one table snapshot, forward to an instance, stream the answer back.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;

use crate::config::InstanceAddr;
use crate::error::ProxyError;
use crate::metrics::{Metrics, NO_DEPLOYMENT, RouteLabel};
use crate::routing::{PIN_HEADER, RoutingTable};
use crate::upstream::{Deployment, InFlight};

/// The routing table every request reads and every reload replaces.
pub type SharedTable = Arc<ArcSwap<RoutingTable>>;

/// Headers that describe one connection, not the message, and so never cross the proxy
/// (RFC 9110, section 7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static PIN: HeaderName = HeaderName::from_static(PIN_HEADER);
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Forwards requests to the deployments of the current routing table.
#[derive(Debug, Clone)]
pub struct Proxy {
    table: SharedTable,
    client: Client<HttpConnector, Incoming>,
    metrics: Arc<Metrics>,
}

/// What the gateway answers with: an upstream's body streamed through, or a small body of its own.
#[derive(Debug)]
pub enum ProxyBody {
    /// The instance's body; the request counts as in flight until it ends.
    Upstream {
        /// The body as it arrives.
        body: Incoming,
        /// Released when the body is dropped.
        in_flight: InFlight,
    },
    /// A body the gateway made (errors).
    Local(Full<Bytes>),
}

/// What is known about a request as it goes through, for its log line and metrics.
#[derive(Debug)]
struct Trace {
    deployment: Option<Arc<Deployment>>,
    route: RouteLabel,
    instance: Option<String>,
}

// === impl Proxy ===

impl Proxy {
    /// A proxy reading routes from `table`, with pooled keep-alive connections to instances.
    pub fn new(table: SharedTable, metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build(connector);
        Proxy {
            table,
            client,
            metrics,
        }
    }

    /// Answers one request: forwards it, or turns the failure into its JSON error response.
    /// Counts it once and logs it once, whatever happened.
    pub async fn handle(&self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = request_id(request.headers());
        request
            .headers_mut()
            .insert(REQUEST_ID.clone(), request_id.clone());
        let mut trace = Trace {
            deployment: None,
            route: RouteLabel::Unrouted,
            instance: None,
        };

        let mut response = match self.forward(request, &mut trace).await {
            Ok(response) => response,
            Err(error) => {
                self.metrics.count_gateway_error(error.code());
                let response = error
                    .to_response()
                    .map(|body| ProxyBody::Local(Full::new(body)));
                tracing::debug!(%error, "request failed in the gateway");
                response
            }
        };

        let elapsed = started.elapsed();
        let status = response.status();
        let deployment_name = trace
            .deployment
            .as_ref()
            .map_or(NO_DEPLOYMENT, |d| d.name());
        self.metrics
            .count_request(deployment_name, status, trace.route);
        if let Some(deployment) = &trace.deployment {
            deployment.metrics().observe(elapsed);
            response
                .headers_mut()
                .insert(PIN.clone(), deployment.header_value().clone());
        }
        tracing::info!(
            target: "switchyard::access",
            request_id = request_id.to_str().unwrap_or(""),
            deployment = deployment_name,
            route = trace.route.as_str(),
            instance = trace.instance.as_deref().unwrap_or(""),
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
        );
        response
            .headers_mut()
            .insert(REQUEST_ID.clone(), request_id);
        response
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // One snapshot per request: the route is decided against a single table, and the
        // in-flight guard holds the chosen deployment until the response body ends, even if a
        // reload removes it meanwhile.
        let route = {
            let pin = pin_header(request.headers())?;
            let draw = rand::rng().random_range(0..100);
            self.table.load().route(pin, draw)?
        };
        trace.route = route.reason.into();
        trace.deployment = Some(Arc::clone(&route.deployment));
        let in_flight = route.deployment.start_request();
        let instance = in_flight.instance().addr();
        trace.instance = Some(instance.authority.to_string());

        prepare_upstream_request(&mut request, instance);
        let response = self.client.request(request).await.map_err(|error| {
            let deployment = route.deployment.name().to_string();
            tracing::debug!(%deployment, %instance, %error, "upstream request failed");
            if error.is_connect() {
                ProxyError::Connect { deployment }
            } else {
                ProxyError::UpstreamFailed { deployment }
            }
        })?;

        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            ProxyBody::Upstream { body, in_flight },
        ))
    }
}

// === impl ProxyBody ===

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
            ProxyBody::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(body) => body.size_hint(),
        }
    }
}

/// The client's `x-request-id` if it is a sane token, else a new UUID v4.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|value| {
            let bytes = value.as_bytes();
            !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// A random (version 4) UUID.
fn new_request_id() -> HeaderValue {
    let bits: u128 = rand::rng().random();
    // Set the version (4) and variant (10xx) bits.
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    let text = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The pin header's value, if the request carries exactly one usable value.
fn pin_header(headers: &HeaderMap) -> Result<Option<&HeaderValue>, ProxyError> {
    let mut values = headers.get_all(&PIN).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProxyError::InvalidPinHeader(
            "sent more than once; send one deployment name",
        ));
    }
    if first.is_empty() {
        return Err(ProxyError::InvalidPinHeader(
            "empty; send a deployment name or leave the header out",
        ));
    }
    Ok(Some(first))
}

/// Points the request at `instance`, keeping path and query, and drops per-hop headers.
fn prepare_upstream_request(request: &mut Request<Incoming>, instance: &InstanceAddr) {
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(instance.scheme.clone());
    parts.authority = Some(instance.authority.clone());
    parts.path_and_query = Some(path_and_query);
    // Scheme, authority and path are all set, so this cannot fail.
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    // Instances speak HTTP/1.1 whatever the client spoke; hyper sets Host from the URI.
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    headers.remove(header::HOST);
    strip_hop_by_hop(headers);
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    // `upgrade` is hop-by-hop too; it is dropped here until upgrades are proxied end to end.
    headers.remove(header::UPGRADE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_request_id_is_a_version_4_uuid() {
        let id = new_request_id();
        let id = id.to_str().expect("ascii");
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn a_clients_request_id_is_kept_unless_it_is_unusable() {
        let mut headers = HeaderMap::new();
        headers.insert(&REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(&REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn one_pin_value_is_accepted() {
        let mut headers = HeaderMap::new();
        assert!(matches!(pin_header(&headers), Ok(None)));
        headers.insert(&PIN, HeaderValue::from_static("green"));
        assert_eq!(
            pin_header(&headers).ok().flatten().map(|v| v.as_bytes()),
            Some(&b"green"[..])
        );
    }

    #[test]
    fn two_pin_values_or_an_empty_one_are_refused() {
        let mut headers = HeaderMap::new();
        headers.append(&PIN, HeaderValue::from_static("green"));
        headers.append(&PIN, HeaderValue::from_static("blue"));
        assert!(matches!(
            pin_header(&headers),
            Err(ProxyError::InvalidPinHeader(_))
        ));
        let mut headers = HeaderMap::new();
        headers.insert(&PIN, HeaderValue::from_static(""));
        assert!(matches!(
            pin_header(&headers),
            Err(ProxyError::InvalidPinHeader(_))
        ));
    }
}
