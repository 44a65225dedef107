//! The accept loop shared by the gateway and the demo model server: HTTP/1.1 and HTTP/2 on one
//! listener, accept errors that back off instead of exiting, and a graceful drain on shutdown.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// How long a client may take to send a request head before its connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handler knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Serves connections from `listener` with `handler` until `shutdown` resolves, then stops
/// accepting and lets open requests finish for at most `drain`.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    handler: F,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    F: Fn(Request<Incoming>, Connection) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());

    let graceful = GracefulShutdown::new();
    let mut accept_backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_backoff.reset();
                    accepted
                }
                Err(error) => {
                    // Usually out of file descriptors: wait for some to free up rather than
                    // spin or exit.
                    let pause = accept_backoff.next();
                    tracing::warn!(%error, ?pause, "accept failed");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "could not set TCP_NODELAY");
        }
        let handler = handler.clone();
        let connection = Connection { peer, tls: false };
        let service = service_fn(move |request| {
            let response = handler(request, connection);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!("all connections drained"),
        () = tokio::time::sleep(drain) => {
            tracing::warn!(?drain, "drain deadline passed; closing the remaining connections");
        }
    }
}

/// 5 ms doubling up to 1 s.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(5u64 << self.failures.min(8)).min(Duration::from_secs(1))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}
