//! The serve loop shared by the gateway and the demo model server: HTTP/1.1 and HTTP/2 on one
//! listener, a cap on open connections, accept errors that back off instead of exiting, and a
//! graceful drain on shutdown.
//!
//! HTTP/1.1 connections, plain or TLS, start on the loop's own HTTP/1.1 path (`h1.rs`), which
//! serves every HTTP/1 request (upgrades included) and hands HTTP/2 to hyper; TLS connections
//! that chose HTTP/2 by ALPN go to hyper directly.

mod body;
mod h1;
mod handler;
mod handover;
mod wire;

pub use body::ClientBody;
// For the fuzz targets.
#[cfg(feature = "internals")]
pub use h1::read_requests;
#[cfg(feature = "internals")]
pub(crate) use h1::{AnswerTo, encode_response_head, next_whole_request};
pub use handler::{Handler, IntoReply, Reply};
pub use handover::{OnUpgrade, on_upgrade};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;
use std::pin::pin;

use crate::causes::BoxError;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use wire::{TlsWire, Wire};

/// Default time a client may take to send a request head before its connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) accepted; larger ones get 431.
pub const MAX_HEADER_BYTES: usize = crate::http1::rules::MAX_HEAD_BYTES;
/// Default cap on open client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 25_000;

/// How a listener serves.
#[derive(Clone)]
pub struct ServeOptions {
    /// How long open requests may take to finish once shutdown starts.
    pub drain: Duration,
    /// Terminate TLS with this acceptor, if set.
    pub tls: Option<TlsAcceptor>,
    /// One slot per client connection allowed at once; past it, new ones wait in the backlog.
    /// Clones share the slots, so listeners on several threads keep one limit.
    pub connection_slots: Arc<Semaphore>,
    /// Counts the listener's open client connections, if set.
    pub open_connections: Option<IntGauge>,
    /// How long a client may take to send a request head. On a kept-alive HTTP/1.1
    /// connection the serve loop's own path allows up to twice this between requests.
    pub header_read_timeout: Duration,
    /// Counts, by the error's code, the request heads the serve loop refuses itself (malformed
    /// or over the limits), if set.
    pub refused: Option<IntCounterVec>,
}

impl ServeOptions {
    /// Plain HTTP with the default limits and a `drain` deadline.
    pub fn plain(drain: Duration) -> Self {
        ServeOptions {
            drain,
            tls: None,
            connection_slots: Arc::new(Semaphore::new(DEFAULT_MAX_CONNECTIONS)),
            open_connections: None,
            header_read_timeout: HEADER_READ_TIMEOUT,
            refused: None,
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("drain", &self.drain)
            .field("tls", &self.tls.is_some())
            .field(
                "free_connection_slots",
                &self.connection_slots.available_permits(),
            )
            .finish()
    }
}

/// What the handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP address as a header value, made once for all the connection's requests.
    pub peer_ip: http::HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Connection {
    /// A connection from `peer`.
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        // An IP address is always a valid header value.
        let peer_ip = http::HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        Connection { peer, peer_ip, tls }
    }
}

/// Serves connections from `listener` with `handler` until `shutdown` resolves, then stops
/// accepting and lets open requests finish for at most `options.drain`.
pub async fn serve(
    listener: TcpListener,
    handler: impl Handler,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) {
    let listener = Listener::new(listener, Arc::clone(&options.connection_slots));
    let connections = OwnListener {
        listener,
        open: options.open_connections.clone(),
    };
    serve_connections(connections, handler, shutdown, options).await
}

/// Serves the connections `connections` yields, as [`serve`] does those of a listener.
pub(crate) async fn serve_connections(
    mut connections: impl Connections,
    handler: impl Handler,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) {
    // hyper serves HTTP/2 only: every HTTP/1 byte is read by the own path, so no two parsers
    // take turns on one connection's bytes.
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    // Shared: the settings are large, and each connection's task would hold a copy.
    let shared = Arc::new(Shared {
        hyper: builder,
        refused: options.refused.clone(),
    });

    // Connections watch this to learn that shutdown began; the loop learns that they all
    // ended when every receiver is gone.
    let (drain, draining) = watch::channel(false);
    let start = |accepted: Accepted| {
        let Accepted { stream, peer, slot } = accepted;
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "could not set TCP_NODELAY");
        }
        let handler = handler.clone();
        let connection = Connection::new(peer, options.tls.is_some());
        let shared = Arc::clone(&shared);
        let timeout = options.header_read_timeout;
        // Two kinds of task, each sized for what it serves: most connections are plain keep-alive
        // ones that wait between requests, and each of those holds room for its task's state.
        match &options.tls {
            None => {
                let client = h1::Client::new(stream, timeout, draining.clone());
                tokio::spawn(serve_http1(client, handler, connection, shared, slot));
            }
            // The TLS handshake runs in a task of its own, so a slow client cannot hold up the
            // accept loop; the connection is then served by a task sized for what it speaks,
            // rather than one that keeps room for the handshake's state, or hyper's, for as
            // long as the connection lives.
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let draining = draining.clone();
                tokio::spawn(async move {
                    let Some(stream) = tls_handshake(stream, acceptor, peer).await else {
                        return;
                    };
                    // HTTP/2 by ALPN goes to hyper at once; HTTP/1.1 (by ALPN, or a client
                    // that named no protocol) is served as on a plain connection.
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        tokio::spawn(async move {
                            let _slot = slot;
                            let served = serve_with_hyper(
                                stream, &shared, handler, connection, draining, timeout,
                            );
                            log_end(served.await, peer);
                        });
                        return;
                    }
                    let client = h1::Client::new(TlsWire::new(stream), timeout, draining);
                    tokio::spawn(serve_http1(client, handler, connection, shared, slot));
                });
            }
        }
    };

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = connections.next() => match accepted {
                Some(accepted) => start(accepted),
                None => break,
            },
            () = &mut shutdown => break,
        }
    }
    // Connections already handed to this loop are not dropped: they drain like the open ones.
    for accepted in connections.stop() {
        start(accepted);
    }

    drop(draining);
    drain.send_replace(true);
    let deadline = options.drain;
    tokio::select! {
        () = drain.closed() => tracing::debug!("all connections drained"),
        () = tokio::time::sleep(deadline) => {
            tracing::warn!(?deadline, "drain deadline passed; closing the remaining connections");
        }
    }
}

/// What every connection of a serve loop uses: hyper's settings, for what the own path leaves
/// to it, and the counter of refused request heads.
struct Shared {
    hyper: http2::Builder<TokioExecutor>,
    refused: Option<IntCounterVec>,
}

/// Serves a connection on the serve loop's own HTTP/1.1 path, and with hyper from the first
/// request that path leaves to it.
///
/// An async block rather than an async fn: an async fn's task keeps room for its arguments
/// twice (as passed, and moved into its body), and every idle connection holds that room.
#[allow(clippy::manual_async_fn)]
fn serve_http1<W: Wire>(
    mut client: h1::Client<W>,
    handler: impl Handler,
    connection: Connection,
    shared: Arc<Shared>,
    slot: Slot,
) -> impl Future<Output = ()> {
    async move {
        // Held, not moved: a moved capture would take room twice.
        let _slot = &slot;
        let served = match h1::serve(&mut client, &handler, &connection).await {
            Ok(h1::Ended::Closed) => Ok(()),
            // Boxed, as the hand-over is: rare, and every idle connection's task would hold
            // room for it.
            Ok(h1::Ended::Refused(refusal)) => {
                let refused = async {
                    let error = refusal.error(client.unread());
                    if let Some(refused) = &shared.refused {
                        refused.with_label_values(&[error.code()]).inc();
                    }
                    tracing::debug!(%error, peer = %connection.peer, "request head refused");
                    h1::refuse(&client, error).await;
                };
                Box::pin(refused).await;
                Ok(())
            }
            Ok(h1::Ended::Switched(pending)) => {
                let (stream, prefix) = client.into_parts();
                pending.switch(prefix, stream, slot);
                return;
            }
            // Boxed: hyper's connection state is several times the size of the loop's own,
            // and every idle connection's task would hold room for it.
            Ok(h1::Ended::Http2) => {
                let (stream, draining, timeout) = client.into_hand_over();
                let peer = connection.peer;
                let served = Box::pin(serve_with_hyper(
                    stream, &shared, handler, connection, draining, timeout,
                ));
                return log_end(served.await, peer);
            }
            Err(error) => Err(error),
        };
        log_end(served, connection.peer);
    }
}

/// Logs how serving a connection from `peer` ended, if it ended in an error.
fn log_end(served: Result<(), BoxError>, peer: SocketAddr) {
    if let Err(error) = served {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}

/// Completes the TLS handshake on `stream` within [`TLS_HANDSHAKE_TIMEOUT`]; `None` if it
/// failed or took too long.
async fn tls_handshake(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%error, %peer, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Serves `io` with hyper (HTTP/1.1 with upgrades, or HTTP/2), closing gracefully once
/// `draining` turns true. A connection that has not begun a request within `first_request`
/// is closed: hyper bounds an HTTP/1.1 head, but an HTTP/2 connection that sent its preface
/// and then nothing would otherwise hold a connection slot for good.
async fn serve_with_hyper<I>(
    io: I,
    shared: &Shared,
    handler: impl Handler,
    connection: Connection,
    mut draining: watch::Receiver<bool>,
    first_request: Duration,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = connection.peer;
    let began = Arc::new(AtomicBool::new(false));
    let service = {
        let began = Arc::clone(&began);
        service_fn(move |request: Request<Incoming>| {
            began.store(true, Ordering::Relaxed);
            let reply = handler.call(request.map(ClientBody::from), connection.clone());
            async move { Ok::<_, Infallible>(reply.await.into_reply().into_response()) }
        })
    };
    let served = shared.hyper.serve_connection(TokioIo::new(io), service);
    let mut served = pin!(served);
    let silent = async {
        tokio::time::sleep(first_request).await;
        if began.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = served.as_mut() => return result.map_err(Into::into),
        // Also when the loop is gone: nobody is left to wait for this connection.
        _ = draining.wait_for(|draining| *draining) => {}
        () = silent => {
            tracing::debug!(%peer, "no request within the header read timeout; closing");
            return Ok(());
        }
    }
    served.as_mut().graceful_shutdown();
    Ok(served.await?)
}

/// A client connection to serve, holding its connection slot.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) slot: Slot,
}

/// Where a serve loop gets its client connections.
pub(crate) trait Connections {
    /// The next connection; `None` when no more will come.
    fn next(&mut self) -> impl Future<Output = Option<Accepted>>;

    /// Takes no more connections; returns those already taken in but not yet served.
    fn stop(self) -> Vec<Accepted>;
}

/// One client connection's share of the connection cap, and its place in an open-connections
/// gauge; both are given back when the connection ends.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Option<IntGauge>,
}

impl Slot {
    pub(crate) fn new(permit: OwnedSemaphorePermit, open: Option<IntGauge>) -> Self {
        if let Some(open) = &open {
            open.inc();
        }
        Slot {
            _permit: permit,
            open,
        }
    }

    /// Moves the connection to another gauge.
    pub(crate) fn count_in(&mut self, open: IntGauge) {
        open.inc();
        if let Some(previous) = self.open.replace(open) {
            previous.dec();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.dec();
        }
    }
}

/// A listening socket that accepts only while a connection slot is free.
#[derive(Debug)]
pub(crate) struct Listener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    backoff: AcceptBackoff,
}

impl Listener {
    pub(crate) fn new(listener: TcpListener, slots: Arc<Semaphore>) -> Self {
        Listener {
            listener,
            slots,
            backoff: AcceptBackoff::default(),
        }
    }

    /// The next client connection and its slot; `None` once the slots are closed. Past the
    /// connection cap it waits for a slot without accepting, so new clients wait in the
    /// kernel's backlog. Cancel-safe.
    pub(crate) async fn accept(&mut self) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        let permit = Arc::clone(&self.slots).acquire_owned().await.ok()?;
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff.reset();
                    return Some((stream, peer, permit));
                }
                Err(error) => {
                    // Usually out of file descriptors: wait for some to free up rather than
                    // spin or exit.
                    let pause = self.backoff.next();
                    tracing::warn!(%error, ?pause, "accept failed");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Registers a socket handed over from another thread with this thread's event loop.
pub(crate) fn register(stream: std::net::TcpStream, peer: SocketAddr) -> Option<TcpStream> {
    match TcpStream::from_std(stream) {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::debug!(%error, %peer, "cannot register a connection");
            None
        }
    }
}

/// A listener served by the loop that accepts from it.
struct OwnListener {
    listener: Listener,
    open: Option<IntGauge>,
}

impl Connections for OwnListener {
    async fn next(&mut self) -> Option<Accepted> {
        let (stream, peer, permit) = self.listener.accept().await?;
        Some(Accepted {
            stream,
            peer,
            slot: Slot::new(permit, self.open.clone()),
        })
    }

    fn stop(self) -> Vec<Accepted> {
        Vec::new()
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
