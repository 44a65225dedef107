//! The request path: route with one table snapshot, admit to an instance, forward under the
//! deployment's limits, stream the answer back.

mod body;
pub mod headers;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;

pub use body::{ProxyBody, UpstreamBody};
use body::{RequestBody, is_body_too_large};
use headers::{PIN, REQUEST_ID};

use crate::config::UpstreamProtocol;
use crate::error::ProxyError;
use crate::metrics::{Metrics, NO_DEPLOYMENT, RouteLabel};
use crate::routing::RoutingTable;
use crate::server::Connection;
use crate::upstream::health::Outcome;
use crate::upstream::{Deployment, InFlight, Instance, Refusal};

/// The routing table every request reads and every reload replaces.
pub type SharedTable = Arc<ArcSwap<RoutingTable>>;

/// Default limit on a request body: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// Forwards requests to the deployments of the current routing table.
#[derive(Debug, Clone)]
pub struct Proxy {
    table: SharedTable,
    /// HTTP/1.1 to instances, over plain TCP or TLS.
    http1: UpstreamClient,
    /// HTTP/2 to instances: h2c with prior knowledge, or h2 by ALPN over TLS.
    http2: UpstreamClient,
    metrics: Arc<Metrics>,
    max_body_bytes: u64,
}

/// What is known about a request as it goes through, for its log line and metrics.
#[derive(Debug)]
struct Trace {
    deployment: Option<Arc<Deployment>>,
    route: RouteLabel,
    /// Index of the instance in `deployment`, once one was chosen.
    instance: Option<usize>,
}

impl Trace {
    fn instance_target(&self) -> Option<&http::uri::Authority> {
        let deployment = self.deployment.as_ref()?;
        Some(deployment.instances().get(self.instance?)?.target())
    }
}

/// A request's parts, kept so a refused connection can be retried on another instance.
struct Outgoing {
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: RequestBody,
    /// The client sent `te: trailers` (gRPC does), which HTTP/2 instances need to see.
    wants_trailers: bool,
    /// The protocol asked for in an upgrade handshake (`websocket`), if this is one.
    upgrade: Option<http::HeaderValue>,
}

// === impl Proxy ===

impl Proxy {
    /// A proxy reading routes from `table`, with pooled keep-alive connections to instances.
    /// `tls` verifies `https://` instances.
    pub fn new(
        table: SharedTable,
        metrics: Arc<Metrics>,
        max_body_bytes: u64,
        tls: rustls::ClientConfig,
    ) -> Self {
        let tcp = || {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            // The TLS layer above decides which schemes are allowed.
            connector.enforce_http(false);
            connector
        };
        let http1 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp());
        let http2 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(tcp());
        let idle = std::time::Duration::from_secs(90);
        Proxy {
            table,
            http1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(idle)
                .build(http1),
            http2: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(idle)
                .http2_only(true)
                .build(http2),
            metrics,
            max_body_bytes,
        }
    }

    /// Answers one request: forwards it, or turns the failure into its JSON error response.
    /// Counts it once and logs it once, whatever happened.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        connection: Connection,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = headers::request_id(request.headers());
        let mut trace = Trace {
            deployment: None,
            route: RouteLabel::Unrouted,
            instance: None,
        };

        let mut response = match self
            .forward(request, connection, &request_id, &mut trace)
            .await
        {
            Ok(response) => response,
            Err(error) => {
                self.metrics.count_gateway_error(error.code());
                tracing::debug!(%error, "request answered by the gateway");
                error
                    .to_response()
                    .map(|body| ProxyBody::Local(Full::new(body)))
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
            instance = trace.instance_target().map(|a| a.as_str()).unwrap_or(""),
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
        connection: Connection,
        request_id: &http::HeaderValue,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // One snapshot per request: the route is decided against a single table, and the
        // in-flight guard holds the chosen deployment until the response body ends, even if a
        // reload removes it meanwhile.
        let (route, keyed) = {
            let table = self.table.load();
            if !table.authorizes(request.headers()) {
                return Err(ProxyError::Unauthorized);
            }
            let pin = headers::pin(request.headers())?;
            let draw = rand::rng().random_range(0..100);
            (table.route(pin, draw)?, table.keys().is_some())
        };
        trace.route = route.reason.into();
        trace.deployment = Some(Arc::clone(&route.deployment));
        let deployment = route.deployment;

        if request.body().size_hint().lower() > self.max_body_bytes {
            return Err(ProxyError::PayloadTooLarge {
                limit: self.max_body_bytes,
            });
        }
        // A WebSocket (or other HTTP/1.1 upgrade) handshake: once the instance agrees, the two
        // connections are spliced together.
        let upgrade = headers::upgrade_request(request.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));

        // Only a deployment with another instance to try pays for keeping the request around.
        let retryable = deployment.instances().len() > 1;
        let mut outgoing = Outgoing::new(request, connection, request_id, retryable);
        outgoing.upgrade = upgrade;
        if keyed {
            // The key is the gateway's credential; model servers never see it.
            outgoing.headers.remove(header::AUTHORIZATION);
        }

        // A request that never reached an instance (connection refused) is tried once more on
        // another instance; one whose bytes were sent never is.
        let mut lease = self.admit(&deployment, None).await?;
        let mut retried = false;
        loop {
            trace.instance = Some(lease.instance_index());
            match self.exchange(&deployment, &mut outgoing, &lease).await {
                Ok(mut response) => {
                    if let (StatusCode::SWITCHING_PROTOCOLS, Some(client)) =
                        (response.status(), client_upgrade)
                    {
                        lease.record(Outcome::Success);
                        return Ok(splice(client, &mut response, lease));
                    }
                    let outcome = if response.status().is_server_error()
                        || response.status() == StatusCode::TOO_MANY_REQUESTS
                    {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                    lease.record(outcome);
                    let (mut parts, body) = response.into_parts();
                    headers::strip_hop_by_hop(&mut parts.headers);
                    return Ok(Response::from_parts(
                        parts,
                        ProxyBody::Upstream {
                            body,
                            in_flight: lease,
                        },
                    ));
                }
                Err(Exchange::Refused) => {
                    lease.record(Outcome::ConnectFailure);
                    let tried = lease.instance_index();
                    let retryable = !retried
                        && outgoing.body.is_untouched()
                        && deployment.available_instances() > 0;
                    if !retryable {
                        return Err(ProxyError::Connect {
                            deployment: deployment.name().to_string(),
                        });
                    }
                    drop(lease);
                    lease = self.admit(&deployment, Some(tried)).await.map_err(
                        |error| match error {
                            // Nothing else to try: report the refusal, not the empty pool.
                            ProxyError::NoReadyInstance { deployment } => {
                                ProxyError::Connect { deployment }
                            }
                            other => other,
                        },
                    )?;
                    retried = true;
                }
                Err(Exchange::Failed(error)) => {
                    // An oversized body is the client's doing, not a sign of a sick instance.
                    if !matches!(error, ProxyError::PayloadTooLarge { .. }) {
                        lease.record(Outcome::Failure);
                    }
                    return Err(error);
                }
            }
        }
    }

    /// Admits the request to an instance of `deployment` and waits for its turn there.
    async fn admit(
        &self,
        deployment: &Arc<Deployment>,
        exclude: Option<usize>,
    ) -> Result<InFlight, ProxyError> {
        let mut lease = deployment
            .admit(&mut rand::rng(), exclude)
            .map_err(|refusal| refusal_error(refusal, deployment, None))?;
        let waiting = Instant::now();
        lease
            .wait_turn()
            .await
            .map_err(|refusal| refusal_error(refusal, deployment, Some(waiting)))?;
        Ok(lease)
    }

    /// One attempt: send to the lease's instance and wait for the response head.
    async fn exchange(
        &self,
        deployment: &Deployment,
        outgoing: &mut Outgoing,
        lease: &InFlight,
    ) -> Result<Response<Incoming>, Exchange> {
        let protocol = deployment.protocol();
        let request = outgoing.request_for(lease.instance(), protocol, self.max_body_bytes);
        let client = match protocol {
            UpstreamProtocol::Http1 => &self.http1,
            UpstreamProtocol::Http2 => &self.http2,
        };
        let timeout = deployment.settings().request_timeout;
        match tokio::time::timeout(timeout, client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.is_connect() => {
                tracing::debug!(deployment = deployment.name(), instance = %lease.instance().addr(), %error, "connection refused");
                Err(Exchange::Refused)
            }
            Ok(Err(error)) if is_body_too_large(&error) => {
                Err(Exchange::Failed(ProxyError::PayloadTooLarge {
                    limit: self.max_body_bytes,
                }))
            }
            Ok(Err(error)) => {
                tracing::debug!(deployment = deployment.name(), instance = %lease.instance().addr(), %error, "upstream request failed");
                Err(Exchange::Failed(ProxyError::UpstreamFailed {
                    deployment: deployment.name().to_string(),
                }))
            }
            // Dropping the request future cancels the upstream request.
            Err(_) => Err(Exchange::Failed(ProxyError::Timeout {
                deployment: deployment.name().to_string(),
                timeout_ms: timeout.as_millis(),
            })),
        }
    }
}

/// Answers an accepted upgrade with the instance's 101 and, once both sides have switched, copies
/// bytes both ways until either closes. The lease keeps the tunnel counted as in flight.
fn splice(
    client: hyper::upgrade::OnUpgrade,
    response: &mut Response<Incoming>,
    lease: InFlight,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut *response);
    tokio::spawn(async move {
        let _lease = lease;
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                {
                    tracing::debug!(%error, "upgraded connection ended with an error");
                }
            }
            Err(error) => tracing::debug!(%error, "upgrade did not complete"),
        }
    });
    let mut switched = Response::new(ProxyBody::Local(Full::default()));
    *switched.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let mut upstream_headers = std::mem::take(response.headers_mut());
    let upgrade = upstream_headers.remove(header::UPGRADE);
    headers::strip_hop_by_hop(&mut upstream_headers);
    *switched.headers_mut() = upstream_headers;
    switched.headers_mut().insert(
        header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    if let Some(upgrade) = upgrade {
        switched.headers_mut().insert(header::UPGRADE, upgrade);
    }
    switched
}

/// How one attempt went wrong.
enum Exchange {
    /// The instance refused the connection; nothing was sent.
    Refused,
    /// Anything else; final.
    Failed(ProxyError),
}

fn refusal_error(
    refusal: Refusal,
    deployment: &Deployment,
    waiting: Option<Instant>,
) -> ProxyError {
    let name = deployment.name().to_string();
    match refusal {
        Refusal::Overloaded => ProxyError::Overloaded {
            deployment: name,
            limit: 2
                * deployment.settings().max_concurrent_requests_per_instance as usize
                * deployment.instances().len(),
        },
        Refusal::NoReadyInstance => ProxyError::NoReadyInstance { deployment: name },
        Refusal::QueueTimeout => ProxyError::QueueTimeout {
            deployment: name,
            waited_ms: waiting.map_or(0, |w| w.elapsed().as_millis()),
        },
    }
}

// === impl Outgoing ===

impl Outgoing {
    fn new(
        request: Request<Incoming>,
        connection: Connection,
        request_id: &http::HeaderValue,
        retryable: bool,
    ) -> Self {
        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        let wants_trailers = headers
            .get(header::TE)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
        // Instances see the client's host as X-Forwarded-Host; hyper sets Host from the URI.
        let host = headers.remove(header::HOST).or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        });
        headers::strip_hop_by_hop(&mut headers);
        headers::set_forwarded(&mut headers, connection.peer, connection.tls, host);
        headers.insert(REQUEST_ID.clone(), request_id.clone());
        Outgoing {
            method: parts.method,
            path_and_query: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers,
            body: RequestBody::new(body, retryable),
            wants_trailers,
            upgrade: None,
        }
    }

    /// The request for one attempt at `instance`.
    fn request_for(
        &mut self,
        instance: &Instance,
        protocol: UpstreamProtocol,
        max_body_bytes: u64,
    ) -> Request<UpstreamBody> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(instance.addr().scheme.clone());
        uri.authority = Some(instance.target().clone());
        uri.path_and_query = Some(self.path_and_query.clone());
        let mut request = Request::new(self.body.attempt(max_body_bytes));
        *request.method_mut() = self.method.clone();
        // Scheme, authority and path are all set, so this cannot fail.
        if let Ok(uri) = Uri::from_parts(uri) {
            *request.uri_mut() = uri;
        }
        // Instances speak their configured version, whatever the client spoke.
        *request.headers_mut() = match self.body {
            // A retry needs the headers again.
            RequestBody::Retryable(_) => self.headers.clone(),
            RequestBody::Once(_) => std::mem::take(&mut self.headers),
        };
        if instance.is_resolved() {
            // Connected by address; the model server still sees the name from the config.
            if let Ok(host) = http::HeaderValue::from_str(instance.addr().authority.as_str()) {
                request.headers_mut().insert(header::HOST, host);
            }
        }
        if let Some(upgrade) = &self.upgrade {
            let headers = request.headers_mut();
            headers.insert(
                header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            headers.insert(header::UPGRADE, upgrade.clone());
        }
        match protocol {
            UpstreamProtocol::Http1 => *request.version_mut() = Version::HTTP_11,
            UpstreamProtocol::Http2 => {
                *request.version_mut() = Version::HTTP_2;
                if self.wants_trailers {
                    request
                        .headers_mut()
                        .insert(header::TE, http::HeaderValue::from_static("trailers"));
                }
            }
        }
        request
    }
}
