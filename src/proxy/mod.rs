//! The request path: route with one table snapshot, admit to an instance, forward under the
//! deployment's limits, stream the answer back.

mod body;
pub mod headers;
mod mirror;
mod record;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;

pub use body::{ProxyBody, UpstreamBody};
use body::{RequestBody, SentBody, is_body_too_large};
use headers::{Forwarded, OWN_RESPONSE_HEADERS, REQUEST_ID};
use record::Record;

use crate::causes::BoxError;
use crate::config::UpstreamProtocol;
use crate::error::{ProxyError, is_grpc, status_of_grpc_code};
use crate::http1;
use crate::metrics::{Metrics, RouteLabel};
use crate::applied::SharedTable;
use crate::routing::{Decision, Draws, PIN, RouteReason};
use crate::server::{self, ClientBody, Connection, Reply};
use crate::upstream::connect::{self, tls_server_name};
use crate::upstream::health::Outcome;
use crate::upstream::{Deployment, InFlight, Instance, Refusal};

/// Default limit on a request body: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

type Http2Client = connect::Http2Client<UpstreamBody>;

thread_local! {
    static DRAWS: RefCell<Draws> = RefCell::default();
}

/// Forwards requests to the deployments of the current routing table.
#[derive(Debug, Clone)]
pub struct Proxy {
    table: SharedTable,
    /// HTTP/1.1 to instances, over plain TCP or TLS, in the request's own task.
    http1: http1::Connector,
    /// HTTP/2 to instances: h2c with prior knowledge, or h2 by ALPN over TLS.
    http2: Http2Client,
    metrics: Arc<Metrics>,
    max_body_bytes: u64,
}

/// The metric label of how a request was routed.
fn route_label(reason: RouteReason) -> RouteLabel {
    match reason {
        RouteReason::Weighted => RouteLabel::Weighted,
        RouteReason::Pinned => RouteLabel::Pinned,
        RouteReason::Sticky => RouteLabel::Sticky,
    }
}

/// What is known about a request as it goes through, for its log line and metrics.
#[derive(Debug)]
struct Trace {
    deployment: Option<Arc<Deployment>>,
    route: RouteLabel,
    /// Index of the instance in `deployment`, once one was chosen.
    instance: Option<usize>,
    /// The status the instance's answer stands for, where it is not the one on the wire: a
    /// gRPC call that failed with a trailers-only answer is an HTTP 200.
    meant: Option<StatusCode>,
}

/// A request's parts, kept so a refused connection can be retried on another instance.
struct Outgoing {
    method: Method,
    path_and_query: PathAndQuery,
    /// The client's headers, hop-by-hop ones removed.
    headers: HeaderMap,
    /// What the gateway adds (X-Forwarded-*, request id).
    forwarded: Forwarded,
    body: RequestBody,
    /// The client sent `te: trailers` (gRPC does), which HTTP/2 instances need to see.
    wants_trailers: bool,
    /// A gRPC call's own deadline (`grpc-timeout`): when it passes, and how long it was.
    deadline: Option<(tokio::time::Instant, std::time::Duration)>,
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
        Proxy {
            table,
            http1: http1::Connector::new(tls.clone()),
            http2: connect::http2_client(tls),
            metrics,
            max_body_bytes,
        }
    }

    /// Answers one request: forwards it, or turns the failure into its JSON error response.
    /// Counts it once and logs it once, whatever happened.
    ///
    /// This and `forward` are async blocks rather than async fns: an async fn keeps
    /// room for its arguments twice, and this state is allocated and copied for every request.
    #[allow(clippy::manual_async_fn)]
    pub fn handle(
        self: Arc<Self>,
        request: Request<ClientBody>,
        connection: Connection,
    ) -> impl Future<Output = Reply<ProxyBody>> + Send {
        async move {
            let started = Instant::now();
            let request_id = headers::request_id(request.headers());
            // gRPC runs over HTTP/2; an HTTP/1.1 request is never asked.
            let grpc = request.version() == Version::HTTP_2 && is_grpc(request.headers());
            let mut trace = Trace {
                deployment: None,
                route: RouteLabel::Unrouted,
                instance: None,
                meant: None,
            };

            let (mut reply, status) = match self
                .forward(request, connection, &request_id, &mut trace)
                .await
            {
                Ok(reply) => {
                    let status = trace.meant.unwrap_or_else(|| reply.status());
                    (reply, status)
                }
                Err(error) => {
                    self.metrics.count_gateway_error(error.code());
                    tracing::debug!(%error, "request answered by the gateway");
                    let response = if grpc {
                        error.to_grpc_response()
                    } else {
                        error.to_response()
                    };
                    // A gRPC error travels as HTTP 200; it is counted and logged by the status it
                    // stands for, so that the error rates see it.
                    (Reply::from(response.map(ProxyBody::local)), error.status())
                }
            };

            let head = started.elapsed();
            match &trace.deployment {
                Some(deployment) => {
                    deployment.metrics().count(status, trace.route);
                    deployment.metrics().observe_head(head, status);
                    reply.set_own_header(&PIN, deployment.header_value().clone());
                }
                None => self.metrics.count_unrouted(status),
            }
            reply.set_own_header(&REQUEST_ID, request_id.clone());
            // Logged, and its stream timings observed, when the body is over.
            reply.body_mut().attach(Record::new(
                started,
                head,
                trace.deployment,
                trace.route,
                status,
                request_id,
                trace.instance,
            ));
            reply
        }
    }

    // An async block, as `handle` says why.
    #[allow(clippy::manual_async_fn)]
    fn forward(
        self: &Arc<Self>,
        mut request: Request<ClientBody>,
        connection: Connection,
        request_id: &http::HeaderValue,
        trace: &mut Trace,
    ) -> impl Future<Output = Result<Reply<ProxyBody>, ProxyError>> + Send {
        async move {
            // The serve loop's HTTP/1 path has judged these already; HTTP/2 requests and those
            // of a server an `Endpoint` is mounted in have not.
            let path_and_query = target_path(request.method(), request.uri())?;
            headers::supported_codings(request.headers())?;
            headers::single_host(request.version(), request.uri(), request.headers())?;
            // One snapshot per request: the route is decided against a single table, and the
            // in-flight guard holds the chosen deployment until the response body ends, even if a
            // reload removes it meanwhile.
            let Decision {
                route,
                mirror,
                keyed,
            } = {
                let applied = self.table.load();
                let key = applied.key_check(request.headers());
                DRAWS.with_borrow_mut(|draws| {
                    applied
                        .routes
                        .decide(key, request.headers(), draws, &mut rand::rng())
                })?
            };
            trace.route = route_label(route.reason);
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
            let client_upgrade = upgrade
                .as_ref()
                .and_then(|_| server::on_upgrade(&mut request));

            // A tunnel is one client's conversation; it is never copied.
            let mirror = mirror.filter(|_| upgrade.is_none());
            let (request, copy) = match mirror {
                Some(_) => {
                    let (parts, body) = request.into_parts();
                    let (live, copy) = SentBody::with_copy(body);
                    (Request::from_parts(parts, live), Some(copy))
                }
                None => (request.map(SentBody::Client), None),
            };

            // Only a deployment with another instance to try pays for keeping the request around.
            let retryable = deployment.instances().len() > 1;
            let mut outgoing = Outgoing::new(
                request,
                path_and_query,
                connection,
                request_id,
                retryable,
                upgrade.clone(),
            );
            if keyed {
                // The key is the gateway's credential; model servers never see it.
                outgoing.headers.remove(header::AUTHORIZATION);
            }
            if let (Some(mirror), Some(copy)) = (mirror, copy) {
                let watch = copy.watch();
                let copied = outgoing.copy(copy);
                tokio::spawn(Arc::clone(self).mirror(mirror, copied, watch, request_id.clone()));
            }

            // A request that never reached an instance (connection refused) is tried once more on
            // another instance; one whose bytes were sent never is.
            let mut lease = self.admit(&deployment, None).await?;
            let mut retried = false;
            loop {
                trace.instance = Some(lease.instance_index());
                match self.exchange(&deployment, &mut outgoing, &lease).await {
                    Ok(answer) => {
                        let status = answer.status();
                        if status == StatusCode::SWITCHING_PROTOCOLS {
                            return match (answer, client_upgrade, &upgrade) {
                                (Answer::Http1(head, body), Some(client), Some(requested))
                                    if head_agrees(&head, requested) =>
                                {
                                    lease.record(Outcome::Success);
                                    Ok(splice(client, head, body, lease).into())
                                }
                                // Nobody asked to switch protocols.
                                _ => {
                                    lease.record(Outcome::Failure);
                                    Err(ProxyError::UpstreamFailed {
                                        deployment: deployment.name().to_string(),
                                    })
                                }
                            };
                        }
                        // A gRPC failure sent trailers-only carries its status in the head; one
                        // sent after messages, in trailers, is not seen here.
                        if let Answer::Http2(response) = &answer {
                            trace.meant = response
                                .headers()
                                .get("grpc-status")
                                .and_then(|code| status_of_grpc_code(code.as_bytes()));
                        }
                        lease.record(Outcome::of_answer(trace.meant.unwrap_or(status)));
                        let reply = match answer {
                            // The codec already left the hop-by-hop headers out. The rest go
                            // to the server as the lines they came in.
                            Answer::Http1(head, body) => {
                                let mut response = Response::new(ProxyBody::http1(body, lease));
                                *response.status_mut() = head.status;
                                Reply::with_lines(response, head.headers)
                            }
                            Answer::Http2(response) => {
                                let mut response =
                                    response.map(|body| ProxyBody::http2(body, lease));
                                headers::strip_hop_by_hop(response.headers_mut());
                                Reply::from(response)
                            }
                        };
                        return Ok(reply);
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
                        lease = self
                            .admit(&deployment, Some(tried))
                            .await
                            .map_err(|error| match error {
                                // Nothing else to try: report the refusal, not the empty pool.
                                ProxyError::NoReadyInstance { deployment } => {
                                    ProxyError::Connect { deployment }
                                }
                                other => other,
                            })?;
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
    ) -> Result<Answer, Exchange> {
        // `request_timeout_ms` bounds the wait for the response head, as in Azure; a gRPC call
        // that allows itself less is held to its own deadline.
        let timeout = deployment.settings().request_timeout;
        let by_timeout = tokio::time::Instant::now() + timeout;
        let (give_up_at, deadline) = match outgoing.deadline {
            Some((at, allowed)) if at < by_timeout => (at, Some(allowed)),
            _ => (by_timeout, None),
        };
        let attempt = async {
            match deployment.protocol() {
                UpstreamProtocol::Http1 => self.exchange_http1(outgoing, lease.instance()).await,
                // Boxed: hyper's client future is large, and HTTP/2 instances are the rarer kind.
                UpstreamProtocol::Http2 => {
                    Box::pin(self.exchange_http2(outgoing, lease.instance())).await
                }
            }
        };
        // Dropping the attempt cancels the upstream request.
        let failure = match tokio::time::timeout_at(give_up_at, attempt).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(failure)) => failure,
            Err(_) => {
                let deployment = deployment.name().to_string();
                return Err(Exchange::Failed(match deadline {
                    Some(allowed) => ProxyError::DeadlineExceeded {
                        deployment,
                        timeout_ms: allowed.as_millis(),
                    },
                    None => ProxyError::Timeout {
                        deployment,
                        timeout_ms: timeout.as_millis(),
                    },
                }));
            }
        };
        let instance = lease.instance().addr();
        Err(match failure {
            Failure::Connect(error) => {
                tracing::debug!(deployment = deployment.name(), %instance, %error, "connection refused");
                Exchange::Refused
            }
            Failure::RequestBody(error) if is_body_too_large(&*error) => {
                Exchange::Failed(ProxyError::PayloadTooLarge {
                    limit: self.max_body_bytes,
                })
            }
            Failure::RequestBody(error) => {
                tracing::debug!(deployment = deployment.name(), %instance, %error, "request body failed");
                Exchange::Failed(ProxyError::RequestBody)
            }
            Failure::Upstream(error) => {
                tracing::debug!(deployment = deployment.name(), %instance, %error, "upstream request failed");
                Exchange::Failed(ProxyError::UpstreamFailed {
                    deployment: deployment.name().to_string(),
                })
            }
        })
    }

    async fn exchange_http1(
        &self,
        outgoing: &mut Outgoing,
        instance: &Instance,
    ) -> Result<Answer, Failure> {
        let addr = instance.addr();
        let target = http1::Target {
            connect: instance.target(),
            tls_name: (addr.scheme == http::uri::Scheme::HTTPS)
                .then(|| tls_server_name(addr.authority.host())),
            host: addr.authority.as_str(),
        };
        let request = http1::Request {
            method: &outgoing.method,
            path: &outgoing.path_and_query,
            headers: &outgoing.headers,
            added: outgoing.forwarded.as_slice(),
            own_response_headers: &OWN_RESPONSE_HEADERS,
            body: outgoing.body.attempt(self.max_body_bytes),
        };
        match http1::send(instance.pool(), &self.http1, target, request).await {
            Ok((head, body)) => Ok(Answer::Http1(head, body)),
            Err(http1::Error::Connect(error)) => Err(Failure::Connect(error.into())),
            Err(http1::Error::RequestBody(error)) => Err(Failure::RequestBody(error)),
            Err(error) => Err(Failure::Upstream(error.into())),
        }
    }

    async fn exchange_http2(
        &self,
        outgoing: &mut Outgoing,
        instance: &Instance,
    ) -> Result<Answer, Failure> {
        let request = outgoing.http2_request(instance, self.max_body_bytes);
        match self.http2.request(request).await {
            Ok(response) => Ok(Answer::Http2(response)),
            Err(error) if error.is_connect() => Err(Failure::Connect(error.into())),
            Err(error) if is_body_too_large(&error) => Err(Failure::RequestBody(error.into())),
            Err(error) => Err(Failure::Upstream(error.into())),
        }
    }
}

/// The target to send an instance: the origin form (`/path?query`) of what the client sent, or
/// a refusal for a target an instance could read otherwise than the gateway did (RFC 9112,
/// section 3.2).
pub(crate) fn target_path(method: &Method, uri: &Uri) -> Result<PathAndQuery, ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::ConnectMethod);
    }
    let path_and_query = uri.path_and_query();
    match (uri.scheme(), uri.authority()) {
        // Absolute form: the path is what follows the authority, `/` when empty.
        (Some(scheme), Some(_)) => {
            if *scheme != http::uri::Scheme::HTTP && *scheme != http::uri::Scheme::HTTPS {
                return Err(ProxyError::InvalidTarget("only http and https URLs"));
            }
            // Read as sent: `PathAndQuery::path` shows an empty path as `/`.
            let sent = path_and_query.map_or("", PathAndQuery::as_str);
            if sent.starts_with('/') {
                return Ok(path_and_query
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")));
            }
            if !sent.is_empty() && !sent.starts_with('?') {
                return Err(ProxyError::InvalidTarget("the path must start with `/`"));
            }
            let rebuilt = match sent {
                "" => Ok(PathAndQuery::from_static("/")),
                query => PathAndQuery::try_from(format!("/{query}").as_str()),
            };
            rebuilt.map_err(|_| ProxyError::InvalidTarget("the query is malformed"))
        }
        (None, None) => match path_and_query {
            Some(target) if target.as_str().starts_with('/') => Ok(target.clone()),
            Some(target) if target.as_str() == "*" && method == Method::OPTIONS => {
                Ok(target.clone())
            }
            _ => Err(ProxyError::InvalidTarget(
                "it must start with `/` (or be an http URL)",
            )),
        },
        // Authority form, which only CONNECT may use.
        _ => Err(ProxyError::InvalidTarget(
            "it must start with `/` (or be an http URL)",
        )),
    }
}

/// An instance's response head, with its body still to come.
enum Answer {
    Http1(http1::ResponseHead, http1::ResponseBody<UpstreamBody>),
    Http2(Response<Incoming>),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Answer::Http1(head, _) => head.status,
            Answer::Http2(response) => response.status(),
        }
    }
}

/// Why an attempt failed, before it is judged.
enum Failure {
    /// No connection could be made.
    Connect(BoxError),
    /// The client's body failed (too large, malformed, or the client left).
    RequestBody(BoxError),
    /// The instance or the connection to it failed.
    Upstream(BoxError),
}

/// Answers an accepted upgrade with the instance's 101 and, once the client has switched too,
/// copies bytes both ways until either closes. The lease keeps the tunnel counted as in flight.
fn splice(
    client: server::OnUpgrade,
    head: http1::ResponseHead,
    body: http1::ResponseBody<UpstreamBody>,
    lease: InFlight,
) -> Response<ProxyBody> {
    let upstream = body.into_upgraded();
    tokio::spawn(async move {
        let _lease = lease;
        let Some((mut upstream, early)) = upstream else {
            return;
        };
        let tunnel = async {
            let mut client = client.await?;
            // Bytes the instance sent right after its 101 belong to the new protocol.
            client.write_all(&early).await?;
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
        };
        if let Err(error) = tunnel.await {
            tracing::debug!(%error, "upgraded connection ended with an error");
        }
    });
    let mut upstream_headers = HeaderMap::new();
    head.headers.append_to(&mut upstream_headers);
    let upgrade = upstream_headers.remove(header::UPGRADE);
    headers::strip_hop_by_hop(&mut upstream_headers);
    let mut switched = Response::new(ProxyBody::empty());
    *switched.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
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

/// Whether a 101 switches to the protocol the client asked for.
fn head_agrees(head: &http1::ResponseHead, requested: &http::HeaderValue) -> bool {
    let answered = head
        .headers
        .fields()
        .find(|(name, _)| name.eq_ignore_ascii_case(b"upgrade"))
        .map(|(_, value)| value);
    headers::upgrade_agreed(requested, answered)
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
        request: Request<SentBody>,
        path_and_query: PathAndQuery,
        connection: Connection,
        request_id: &http::HeaderValue,
        retryable: bool,
        upgrade: Option<http::HeaderValue>,
    ) -> Self {
        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        let wants_trailers = headers
            .get(header::TE)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
        // Instances see the client's host as X-Forwarded-Host; their Host is their own address.
        // A target with an authority (absolute form, or HTTP/2's `:authority`) names the host
        // over any `Host` header (RFC 9112, section 3.2.2).
        let host = parts
            .uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| headers.get(header::HOST).cloned());
        headers::strip_hop_by_hop(&mut headers);
        let forwarded = Forwarded::new(
            &headers,
            &connection.peer_ip,
            connection.tls,
            host,
            request_id.clone(),
        );
        if let Some(upgrade) = upgrade {
            headers.insert(
                header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            headers.insert(header::UPGRADE, upgrade);
        }
        let deadline = (parts.version == Version::HTTP_2)
            .then(|| headers::grpc_timeout(&headers))
            .flatten()
            .map(|allowed| (tokio::time::Instant::now() + allowed, allowed));
        Outgoing {
            method: parts.method,
            path_and_query,
            headers,
            forwarded,
            body: RequestBody::new(body, retryable),
            wants_trailers,
            deadline,
        }
    }

    /// The same request with `body`, the copy of this one's, to send to a mirror.
    fn copy(&self, body: SentBody) -> Outgoing {
        Outgoing {
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            headers: self.headers.clone(),
            forwarded: self.forwarded.clone(),
            body: RequestBody::new(body, false),
            wants_trailers: self.wants_trailers,
            deadline: self.deadline,
        }
    }

    /// The request for one attempt at an HTTP/2 `instance`.
    fn http2_request(&mut self, instance: &Instance, max_body_bytes: u64) -> Request<UpstreamBody> {
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
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = match self.body {
            // A retry needs the headers again.
            RequestBody::Retryable(_) => self.headers.clone(),
            RequestBody::Once(_) => std::mem::take(&mut self.headers),
        };
        let headers = request.headers_mut();
        // hyper sets Host from the URI, which holds the address connected to.
        headers.remove(header::HOST);
        self.forwarded.insert_into(headers);
        if instance.is_resolved() {
            // Connected by address; the model server still sees the name from the config.
            if let Ok(host) = http::HeaderValue::from_str(instance.addr().authority.as_str()) {
                headers.insert(header::HOST, host);
            }
        }
        if self.wants_trailers {
            headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
        }
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_reach_instances_in_origin_form_or_not_at_all() {
        let target = |method: Method, text: &str| {
            let uri: Uri = text.parse().expect("a URI");
            target_path(&method, &uri).map(|path| path.as_str().to_string())
        };
        let ok = |method: Method, text: &str| target(method, text).ok();
        assert_eq!(
            ok(Method::POST, "/score?x=1").as_deref(),
            Some("/score?x=1")
        );
        assert_eq!(ok(Method::GET, "http://h/a?q").as_deref(), Some("/a?q"));
        assert_eq!(ok(Method::GET, "http://h?q").as_deref(), Some("/?q"));
        assert_eq!(ok(Method::GET, "http://h").as_deref(), Some("/"));
        assert_eq!(ok(Method::OPTIONS, "*").as_deref(), Some("*"));
        for (method, text) in [
            (Method::GET, "foo"),
            (Method::GET, "example.com:80"),
            (Method::GET, "*"),
            (Method::GET, "ftp://h/a"),
        ] {
            assert!(
                matches!(target(method, text), Err(ProxyError::InvalidTarget(_))),
                "{text}"
            );
        }
        assert!(matches!(
            target(Method::CONNECT, "example.com:443"),
            Err(ProxyError::ConnectMethod)
        ));
    }

    #[test]
    fn certificates_are_checked_against_the_bare_host() {
        let host = |url: &str| {
            let uri: Uri = url.parse().expect("uri");
            tls_server_name(uri.host().expect("host")).to_string()
        };
        assert_eq!(host("https://models.internal:8443/"), "models.internal");
        assert_eq!(host("https://10.0.0.7:8443/"), "10.0.0.7");
        assert_eq!(host("https://[::1]:8443/"), "::1");
    }
}
