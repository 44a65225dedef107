//! One endpoint as a [`tower::Service`], to mount inside a server of one's own (an axum
//! router, a hyper service) instead of running the whole [`crate::Gateway`].
//!
//! It is the gateway's request path without its listeners: the same endpoint file, watched and
//! reloaded, the same routing, limits, probes, metrics and access log. The embedding server
//! owns the connections, TLS and shutdown; `examples/embed.rs` shows an axum router with a
//! scoring route and a metrics route.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use tokio::task::JoinHandle;

use crate::causes::BoxError;
use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::proxy::{DEFAULT_MAX_BODY_BYTES, Proxy, ProxyBody};
use crate::reload::{self, Reloader};
use crate::server::{ClientBody, Connection};
use crate::tls;
use crate::upstream::probe::Prober;
use crate::upstream::resolve::{Resolve, SystemResolver};

/// Why a gateway, or an endpoint embedded on its own, could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The endpoint file is invalid or unreadable.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (is another gateway running? choose another address with --listen or --admin-listen)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint file's directory cannot be watched.
    #[error("cannot watch the endpoint file for changes: {0}")]
    Watch(#[from] notify::Error),
    /// The TLS certificate or key is unusable.
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    /// The serving threads could not be started.
    #[error("cannot start the serving threads: {0} (try fewer with --workers)")]
    Threads(std::io::Error),
}

/// How to run an [`Endpoint`].
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// The endpoint file, watched for changes.
    pub config: PathBuf,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: u64,
    /// Extra CA certificates (PEM) trusted for `https://` instances, besides Mozilla's roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Resolves instance host names; each address is an instance.
    pub resolver: Arc<dyn Resolve>,
}

impl EndpointOptions {
    /// Options for the endpoint file at `config`, with the defaults.
    pub fn new(config: impl Into<PathBuf>) -> Self {
        EndpointOptions {
            config: config.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            upstream_ca_file: None,
            resolver: Arc::new(SystemResolver),
        }
    }
}

/// A Switchyard endpoint as a `tower::Service<http::Request<B>>`. Cheap to clone: clones share
/// the endpoint, its table and its metrics. It never fails: errors are answers (the gateway's
/// JSON errors, or gRPC statuses for gRPC calls).
///
/// The client's address, for `X-Forwarded-For`, is read from the request's extensions: a
/// [`SocketAddr`], or axum's `ConnectInfo<SocketAddr>`. Without either it is `unknown`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    proxy: Arc<Proxy>,
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    _watcher: Arc<Watcher>,
}

/// Stops watching the endpoint file when the last clone of the endpoint is dropped.
#[derive(Debug)]
struct Watcher(JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Endpoint {
    /// Loads the endpoint file and starts watching it and probing its instances. Must be called
    /// within a tokio runtime.
    pub fn start(options: EndpointOptions) -> Result<Endpoint, StartError> {
        let Loaded {
            metrics,
            reloader,
            upstream_tls,
        } = load(
            &options.config,
            Arc::clone(&options.resolver),
            options.upstream_ca_file.as_deref(),
        )?;
        let watcher = reload::spawn_watcher(
            Arc::clone(&reloader),
            false,
            reload::DEFAULT_RESOLVE_INTERVAL,
        )?;
        let proxy = Arc::new(Proxy::new(
            Arc::clone(reloader.table()),
            Arc::clone(&metrics),
            options.max_body_bytes,
            upstream_tls,
        ));
        Ok(Endpoint {
            proxy,
            reloader,
            metrics,
            _watcher: Arc::new(Watcher(watcher)),
        })
    }

    /// The endpoint's metrics; [`Metrics::render`] gives the Prometheus text.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The reloader, for explicit reloads and status.
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// The generation of the routing table serving now.
    pub fn generation(&self) -> u64 {
        self.reloader.table().load().routes.generation()
    }
}

/// What every way of running an endpoint starts from.
pub(crate) struct Loaded {
    pub(crate) metrics: Arc<Metrics>,
    /// Holds the first table, its instances' probes started.
    pub(crate) reloader: Arc<Reloader>,
    /// How instances are reached over TLS: the traffic and the probes share it.
    pub(crate) upstream_tls: rustls::ClientConfig,
}

/// Loads the endpoint file at `config` for the first time.
pub(crate) fn load(
    config: &Path,
    resolver: Arc<dyn Resolve>,
    upstream_ca_file: Option<&Path>,
) -> Result<Loaded, StartError> {
    let metrics = Arc::new(Metrics::new());
    let upstream_tls = tls::upstream_client_config(upstream_ca_file)?;
    let reloader = Arc::new(Reloader::load(
        config,
        Arc::clone(&metrics),
        resolver,
        Arc::new(Prober::new(upstream_tls.clone())),
    )?);
    Ok(Loaded {
        metrics,
        reloader,
        upstream_tls,
    })
}

impl<B> tower::Service<Request<B>> for Endpoint
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Limits are per deployment and decided per request (429s), never by refusing here.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let connection = connection_of(&request);
        let request = request.map(ClientBody::new);
        let proxy = Arc::clone(&self.proxy);
        Box::pin(async move { Ok(proxy.handle(request, connection).await.into_response()) })
    }
}

/// The client as far as the request says: its address from the extensions, never TLS (the
/// embedding server knows; it may set `X-Forwarded-Proto` itself in front).
fn connection_of<B>(request: &Request<B>) -> Connection {
    let extensions = request.extensions();
    let peer = extensions.get::<SocketAddr>().copied().or_else(|| {
        extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| info.0)
    });
    match peer {
        Some(peer) => Connection::new(peer, false),
        None => Connection {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            peer_ip: HeaderValue::from_static("unknown"),
            tls: false,
        },
    }
}
