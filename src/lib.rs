//! Switchyard: one scoring endpoint in front of several deployments of a model, with the traffic
//! split, header pins and hot reload of Azure ML's managed online endpoints.
//!
//! The flow of one request: accept -> load one routing table snapshot -> pin header or weighted
//! draw -> an instance of that deployment -> forward -> stream the response back with
//! `azureml-model-deployment` set. A reload builds a whole new table and swaps it in; requests
//! in flight keep the snapshot they started with.
//!
//! The API: a whole [`Gateway`] (listeners, admin API, reload, drain) started from
//! [`GatewayOptions`]; or one [`Endpoint`], the request path as a `tower::Service`, to mount in a
//! server of your own (see `examples/embed.rs`); the endpoint file's types in [`config`]; and
//! the command line itself in [`cli`].

// Without `internals`, what only the tests, benches and fuzz targets reach is unused and
// unreachable from the API, and is not to be warned about.
#![cfg_attr(not(feature = "internals"), allow(dead_code, unreachable_pub))]

pub mod cli;
pub mod config;

pub use causes::BoxError;
pub use endpoint::{Endpoint, EndpointOptions, StartError};
pub use metrics::Metrics;
pub use proxy::DEFAULT_MAX_BODY_BYTES;
pub use proxy::ProxyBody;
pub use reload::{ReloadOutcome, Reloader};
pub use server::ClientBody;
pub use server::DEFAULT_MAX_CONNECTIONS;
pub use upstream::resolve::{Resolve, SystemResolver};

mod client;
mod endpoint;
pub(crate) mod http1;
pub(crate) mod serving_thread;
pub(crate) mod workers;

/// Declares modules beyond the API. They are public only with the `internals` feature, which
/// the crate's tests, benches and fuzz targets turn on to reach what they exercise; it promises
/// nothing from one version to the next, and without it they are private.
macro_rules! internal_modules {
    ($($name:ident),* $(,)?) => {
        $(
            #[cfg(feature = "internals")]
            #[doc(hidden)]
            pub mod $name;
            #[cfg(not(feature = "internals"))]
            mod $name;
        )*
    };
}

internal_modules!(
    admin,
    applied,
    auth,
    causes,
    demo,
    error,
    metrics,
    model_server,
    ops,
    proxy,
    reload,
    rollout,
    routing,
    server,
    tls,
    upstream,
);

// What only the fuzz targets call.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod fuzzing;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::admin::AdminState;
use crate::proxy::Proxy;

/// Default address of the scoring listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default address of the admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default time open requests get to finish on shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run a gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The endpoint file, watched for changes.
    pub config: PathBuf,
    /// Where clients connect; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where the admin API listens, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// How long open requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Reload on SIGHUP (the binary does; embedded gateways may not want to).
    pub reload_on_sighup: bool,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: u64,
    /// Terminate TLS with this certificate and key (PEM files, re-read when they change).
    pub tls: Option<TlsFiles>,
    /// At most this many client connections at once.
    pub max_connections: usize,
    /// Extra CA certificates (PEM) trusted for `https://` instances, besides Mozilla's roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Resolves instance host names; each address is an instance.
    pub resolver: Arc<dyn upstream::resolve::Resolve>,
    /// How often instance host names are resolved again.
    pub resolve_interval: Duration,
    /// Serve on this many threads of their own, each with its own listening socket on the same
    /// port, connections evened out between them (see the `workers` module). `None` serves on the
    /// caller's runtime.
    pub workers: Option<usize>,
    /// Pin each serving thread to a CPU of its own (see the `workers` module). Off by default.
    pub pin_workers: bool,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl GatewayOptions {
    /// Options for `config` on `listen` with the defaults.
    pub fn new(config: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        GatewayOptions {
            config: config.into(),
            listen,
            admin_listen: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            reload_on_sighup: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            upstream_ca_file: None,
            resolver: Arc::new(upstream::resolve::SystemResolver),
            resolve_interval: reload::DEFAULT_RESOLVE_INTERVAL,
            workers: None,
            pin_workers: false,
        }
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    serving: Serving,
    admin: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    watcher: JoinHandle<()>,
    cert_reloader: Option<JoinHandle<()>>,
}

// === impl Gateway ===

impl Gateway {
    /// Loads the endpoint file, binds the listener and starts serving and watching.
    pub async fn start(options: GatewayOptions) -> Result<Gateway, StartError> {
        let started = Instant::now();
        let endpoint::Loaded {
            metrics,
            reloader,
            upstream_tls,
        } = endpoint::load(
            &options.config,
            Arc::clone(&options.resolver),
            options.upstream_ca_file.as_deref(),
        )?;
        let (acceptor, cert_reloader) = match &options.tls {
            Some(files) => {
                let store = tls::CertStore::load(&files.cert, &files.key)?;
                (Some(store.acceptor()?), Some(store.spawn_reloader()))
            }
            None => (None, None),
        };
        let (listeners, addr) = bind(options.listen, options.workers).await?;
        let admin_listener = match options.admin_listen {
            Some(admin_listen) => Some(bind_one(admin_listen).await?),
            None => None,
        };
        let watcher = reload::spawn_watcher(
            Arc::clone(&reloader),
            options.reload_on_sighup,
            options.resolve_interval,
        )?;
        let draining = Arc::new(AtomicBool::new(false));

        let proxy = Arc::new(Proxy::new(
            Arc::clone(reloader.table()),
            Arc::clone(&metrics),
            options.max_body_bytes,
            upstream_tls,
        ));
        let handler = move |request, connection| Arc::clone(&proxy).handle(request, connection);
        let serve_options = server::ServeOptions {
            drain: options.drain_timeout,
            tls: acceptor,
            connection_slots: Arc::new(Semaphore::new(options.max_connections)),
            open_connections: None,
            header_read_timeout: server::HEADER_READ_TIMEOUT,
            refused: Some(metrics.gateway_errors()),
        };
        let serving = match listeners {
            Listeners::Here(listener) => {
                let (stop, stopped) = oneshot::channel();
                let stopped = async {
                    let _ = stopped.await;
                };
                let serve_options = server::ServeOptions {
                    open_connections: Some(metrics.client_connections(0)),
                    ..serve_options
                };
                let task = tokio::spawn(server::serve(listener, handler, stopped, serve_options));
                Serving::Task {
                    stop: Some(stop),
                    task,
                }
            }
            Listeners::Threads(listeners) => {
                let slots = Arc::clone(&serve_options.connection_slots);
                let gauges = (0..listeners.len())
                    .map(|index| metrics.client_connections(index))
                    .collect();
                let serve = move |connections, stop: workers::StopSignal| {
                    server::serve_connections(
                        connections,
                        handler.clone(),
                        stop.stopped(),
                        serve_options.clone(),
                    )
                };
                let workers =
                    workers::Workers::spawn(listeners, slots, gauges, options.pin_workers, serve)
                        .map_err(StartError::Threads)?;
                Serving::Threads(Some(workers))
            }
        };

        let admin = admin_listener.map(|(listener, admin_addr)| {
            let router = admin::router(AdminState {
                reloader: Arc::clone(&reloader),
                metrics: Arc::clone(&metrics),
                draining: Arc::clone(&draining),
                started,
            });
            let (stop_admin, stopped) = oneshot::channel::<()>();
            let metrics = Arc::clone(&metrics);
            let task = tokio::spawn(async move {
                let serving = axum::serve(listener, router).with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
                // `show`'s recent rates are read from these samples.
                let sampling = async {
                    let mut ticks = tokio::time::interval(admin::RECENT_SAMPLE_INTERVAL);
                    loop {
                        ticks.tick().await;
                        metrics.sample_recent();
                    }
                };
                tokio::select! {
                    served = serving => if let Err(error) = served {
                        tracing::error!(%error, "admin API stopped");
                    },
                    () = sampling => {}
                }
            });
            tracing::info!(addr = %admin_addr, "admin API listening");
            (admin_addr, (stop_admin, task))
        });
        let (admin_addr, admin) = match admin {
            Some((admin_addr, admin)) => (Some(admin_addr), Some(admin)),
            None => (None, None),
        };

        tracing::info!(
            %addr,
            config = %options.config.display(),
            endpoint = %reloader.table().load().routes.config().summary(),
            "gateway listening"
        );
        Ok(Gateway {
            addr,
            admin_addr,
            reloader,
            metrics,
            draining,
            serving,
            admin,
            watcher,
            cert_reloader,
        })
    }

    /// The address of the admin API, if it was asked for.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The reloader, for explicit reloads and status.
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// The generation of the routing table serving now.
    pub fn generation(&self) -> u64 {
        self.reloader.table().load().routes.generation()
    }

    /// Stops accepting, waits for open requests up to the drain timeout, and returns.
    ///
    /// Readiness turns unready first, so a load balancer in front stops sending; the admin API
    /// stays up until the drain is over.
    pub async fn shutdown(mut self) {
        self.draining.store(true, Ordering::SeqCst);
        match &mut self.serving {
            Serving::Task { stop, task } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                let _ = task.await;
            }
            Serving::Threads(workers) => {
                if let Some(workers) = workers.take() {
                    workers.stop().await;
                }
            }
        }
        self.watcher.abort();
        if let Some(task) = &self.cert_reloader {
            task.abort();
        }
        if let Some((stop, task)) = self.admin.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Serving threads stop (and drain) once their `Workers` is dropped with this.
        if let Serving::Task { task, .. } = &self.serving {
            task.abort();
        }
        self.watcher.abort();
        if let Some(task) = &self.cert_reloader {
            task.abort();
        }
        if let Some((_, task)) = &self.admin {
            task.abort();
        }
    }
}

/// Where the gateway accepts connections.
enum Listeners {
    /// One listener served on the caller's runtime.
    Here(TcpListener),
    /// One listener per serving thread, all on the same port.
    Threads(Vec<std::net::TcpListener>),
}

/// How the gateway serves, and how to stop it.
#[derive(Debug)]
enum Serving {
    /// A task on the caller's runtime.
    Task {
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
    },
    /// Threads of their own; `None` once stopped.
    Threads(Option<workers::Workers>),
}

async fn bind(
    addr: SocketAddr,
    threads: Option<usize>,
) -> Result<(Listeners, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    match threads {
        None => {
            let (listener, local) = bind_one(addr).await?;
            Ok((Listeners::Here(listener), local))
        }
        Some(count) => {
            let listeners = workers::bind(addr, count).map_err(bind_error)?;
            let local = listeners[0].local_addr().map_err(bind_error)?;
            Ok((Listeners::Threads(listeners), local))
        }
    }
}

async fn bind_one(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}
