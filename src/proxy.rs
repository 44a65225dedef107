//! The request path: route with one table snapshot, forward to an instance, stream the answer back.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;

use crate::config::InstanceAddr;
use crate::error::ProxyError;
use crate::routing::{PIN_HEADER, RoutingTable};

/// The routing table every request reads and every reload replaces.
pub type SharedTable = Arc<ArcSwap<RoutingTable>>;

/// What the gateway answers with: an upstream's streamed body, or a small body of its own.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

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

/// Forwards requests to the deployments of the current routing table.
#[derive(Debug, Clone)]
pub struct Proxy {
    table: SharedTable,
    client: Client<HttpConnector, Incoming>,
}

// === impl Proxy ===

impl Proxy {
    /// A proxy reading routes from `table`, with pooled keep-alive connections to instances.
    pub fn new(table: SharedTable) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build(connector);
        Proxy { table, client }
    }

    /// Answers one request, turning any failure into its JSON error response.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        match self.forward(request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%error, "request failed in the gateway");
                error
                    .to_response()
                    .map(|body| Either::Right(Full::new(body)))
            }
        }
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // One snapshot per request: the route is decided against a single table, and the
        // `Arc<Deployment>` it returns keeps that deployment alive until the request is done,
        // even if a reload removes it meanwhile.
        let route = {
            let pin = pin_header(request.headers())?;
            let draw = rand::rng().random_range(0..100);
            self.table.load().route(pin, draw)?
        };
        let deployment = route.deployment;
        let instance = deployment.pick_instance();
        let _in_flight = instance.start_request();

        prepare_upstream_request(&mut request, instance.addr());
        let response = self.client.request(request).await.map_err(|error| {
            tracing::debug!(deployment = deployment.name(), instance = %instance.addr(), %error, "upstream request failed");
            if error.is_connect() {
                ProxyError::Connect {
                    deployment: deployment.name().to_string(),
                }
            } else {
                ProxyError::UpstreamFailed {
                    deployment: deployment.name().to_string(),
                }
            }
        })?;

        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(PIN.clone(), deployment.header_value().clone());
        Ok(Response::from_parts(parts, Either::Left(body)))
    }
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
