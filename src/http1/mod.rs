//! The gateway's HTTP/1.1 client.
//!
//! A request is written, and its answer read, inside the task that serves the client's
//! connection: no connection task, no channel between the two, so one wake-up moves a request
//! along instead of several. Connections to an instance wait in that instance's [`Pool`] between
//! requests; the response body hands its connection back the moment its last byte is read.
//!
//! HTTP/2 instances, which multiplex, keep using hyper's client.

pub(crate) mod codec;
mod header_block;
pub(crate) mod interim;
pub(crate) mod rules;

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http_body::{Body, Frame, SizeHint};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::causes::BoxError;
use crate::serving_thread;
pub(crate) use codec::ResponseHead;
use codec::{BodyDecoder, BodyFraming, Decoded, Malformed, RequestFraming};
pub(crate) use header_block::HeaderBlock;
use rules::REST_OF_REQUEST_TIMEOUT;

/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// A request body up to this size is gathered whole and written with its head in one go.
const GATHER_BODY_BYTES: u64 = 64 * 1024;
/// A streaming body is written once this much is buffered, even if more is ready.
const FLUSH_BYTES: usize = 64 * 1024;
/// The read buffer's size, and how much room a read gets at least.
const READ_SIZE: usize = 16 * 1024;
const MIN_READ_ROOM: usize = 4 * 1024;
/// Room the write buffer starts with: most request heads fit.
const HEAD_ROOM: usize = 1024;
/// Buffers that grew past this for one large request are not kept on an idle connection.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// No connection could be made: nothing was sent.
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// The client's request body could not be read (too large, malformed, or the client left).
    #[error("request body: {0}")]
    RequestBody(#[source] BoxError),
    /// The connection failed while sending or receiving.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The instance closed the connection before any byte of a response.
    #[error("the instance closed the connection without responding")]
    Closed,
    /// The instance answered with something that is not HTTP/1.1.
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

/// Opens connections to instances, over TLS for `https://` ones.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: TlsConnector,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

/// Where one instance is, and how to reach it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// The `host:port` to connect to.
    pub(crate) connect: &'a Authority,
    /// For TLS: the name the certificate must carry.
    pub(crate) tls_name: Option<&'a str>,
    /// The `Host` header the instance sees.
    pub(crate) host: &'a str,
}

/// The parts of a request that go on the wire.
#[derive(Debug)]
pub(crate) struct Request<'a, B> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a PathAndQuery,
    pub(crate) headers: &'a HeaderMap,
    /// Headers the gateway adds; each replaces any of that name in `headers`.
    pub(crate) added: &'a [(HeaderName, HeaderValue)],
    /// Response headers the gateway sets itself: the instance's of these names are left out.
    pub(crate) own_response_headers: &'a [HeaderName],
    pub(crate) body: B,
}

/// One connection to an instance with its buffers.
#[derive(Debug)]
pub(crate) struct Connection {
    io: Stream,
    /// Bytes read and not yet consumed.
    read_buf: BytesMut,
    /// Request bytes to write; after the last write, the whole request when it fit.
    write_buf: Vec<u8>,
    /// How much of `write_buf` is written.
    written: usize,
}

/// Plain TCP or TLS.
#[derive(Debug)]
pub(crate) enum Stream {
    /// `http://`.
    Plain(TcpStream),
    /// `https://`.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The idle connections to one instance, one stack per serving thread: a connection is polled
/// by the thread whose runtime registered it, so it goes back where it came from. On each stack
/// the newest is reused first, so the older ones age out when traffic drops.
#[derive(Debug)]
pub(crate) struct Pool {
    shards: Box<[Mutex<VecDeque<Idle>>]>,
    /// Per stack.
    max_idle: usize,
}

/// Stacks per pool; serving threads beyond this many share stacks.
const POOL_SHARDS: usize = 64;

#[derive(Debug)]
struct Idle {
    connection: Connection,
    since: Instant,
}

/// The request body on its way out. Usually done before the response head arrives; when the
/// instance answers early, it keeps going alongside the response body (full duplex).
#[derive(Debug)]
struct Pump<B> {
    body: B,
    chunked: bool,
    /// A small body of known length: gather it all, then write head and body at once.
    gather: bool,
    trailers: Option<HeaderMap>,
    /// Every byte of the request is in the write buffer.
    encoded: bool,
    /// Every byte of the request is written.
    sent: bool,
    /// Nothing was written before the request was complete, so the write buffer holds all
    /// that was taken from the body.
    whole: bool,
    /// Writing to the instance failed after it answered (or while it did): the rest of the
    /// client's body is read and dropped, so that the client's connection, read to the end of
    /// its request, stays usable and the client is never reset while it sends.
    discarding: bool,
}

/// A response body read straight from the instance's connection.
#[derive(Debug)]
pub(crate) struct ResponseBody<B> {
    /// `None` once the body ended or failed.
    connection: Option<Connection>,
    decoder: BodyDecoder,
    keep_alive: bool,
    /// The rest of the request body, if the instance answered before it was sent (rare, so
    /// boxed).
    pump: Option<Box<Pump<B>>>,
    /// The answer's trailers, between the last chunk and the end (rare, so boxed).
    trailers: Option<Box<HeaderMap>>,
}

/// The kernel's send buffer for a connection to an instance (Linux doubles the figure), room
/// for about two pieces of a streamed body. Left to autotuning, it grows to megabytes, and
/// each connection then queues a large body's megabyte in the kernel ahead of an instance
/// still reading the bodies before it: with 1 MiB uploads p99 was near three times HAProxy's,
/// and bounded, it is level with it (BENCHMARKS.md).
const INSTANCE_SEND_BUFFER: usize = 256 * 1024;

// === impl Connector ===

impl Connector {
    /// A connector verifying `https://` instances with `tls`, offering only HTTP/1.1 by ALPN.
    pub(crate) fn new(mut tls: rustls::ClientConfig) -> Self {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Connector {
            tls: TlsConnector::from(Arc::new(tls)),
        }
    }

    async fn connect(&self, target: Target<'_>) -> io::Result<Connection> {
        let tcp = TcpStream::connect(target.connect.as_str()).await?;
        tcp.set_nodelay(true)?;
        // Only a tuning: a system that refuses it still gets the request through.
        let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(INSTANCE_SEND_BUFFER);
        let io = match target.tls_name {
            None => Stream::Plain(tcp),
            Some(name) => {
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
                Stream::Tls(Box::new(self.tls.connect(name, tcp).await?))
            }
        };
        Ok(Connection {
            io,
            read_buf: BytesMut::new(),
            write_buf: Vec::new(),
            written: 0,
        })
    }
}

/// Sends `request` to the instance at `target` over a pooled or new connection and reads the
/// response head. The body follows through the returned [`ResponseBody`].
///
/// A pooled connection the instance closed in the meantime is replaced by a new one and the
/// request moved there, but only when that cannot run it twice: no byte of it was written yet,
/// the write itself failed with the whole request in one piece, or the whole request was sent
/// and the method is idempotent (RFC 9110, section 9.2.2).
pub(crate) async fn send<B>(
    pool: &Pool,
    connector: &Connector,
    target: Target<'_>,
    request: Request<'_, B>,
) -> Result<(ResponseHead, ResponseBody<B>), Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    // Boxed: connecting (TLS included) is rare and its state large; the request's state stays
    // small without it.
    let connect = || Box::pin(connector.connect(target));
    let (mut connection, mut reused) = match pool.checkout() {
        Some(connection) => (connection, true),
        None => (connect().await.map_err(Error::Connect)?, false),
    };
    let framing = request_framing(&request.body, request.headers);
    connection.write_buf.clear();
    connection.write_buf.reserve(HEAD_ROOM);
    connection.written = 0;
    connection.read_buf.clear();
    codec::encode_request_head(
        &mut connection.write_buf,
        request.method,
        request.path,
        target.host,
        request.headers,
        request.added,
        framing,
    );
    let mut pump = Pump::new(request.body, framing);
    loop {
        let mut received = false;
        // A write that failed may have failed because the instance answered and closed: its
        // answer is still read, and is what the client gets.
        let mut write_failed = None;
        // Send the request and watch for the answer at the same time: an instance may answer
        // before the request body is complete.
        let exchanged = poll_fn(|cx| {
            if write_failed.is_none() {
                match pump.poll(cx, &mut connection) {
                    Poll::Ready(Err(WriteError::Io(error))) => write_failed = Some(error),
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                }
            }
            connection
                .poll_head(
                    cx,
                    request.method,
                    request.own_response_headers,
                    &mut received,
                )
                .map_err(WriteError::Read)
        })
        .await;
        let error = match (exchanged, write_failed) {
            // The body is fully sent only if the pump finished; otherwise it goes on.
            (Ok(head), None) => {
                let pump = (!pump.sent).then(|| Box::new(pump));
                return Ok(respond(pool, connection, head, pump));
            }
            // Answered, but the rest of the request cannot go out: the connection ends with
            // this answer, and the client's body is read to its end meanwhile.
            (Ok(mut head), Some(error)) => {
                tracing::debug!(%error, "the instance answered and stopped reading the request");
                head.keep_alive = false;
                pump.discard_rest(&mut connection);
                let pump = (!pump.sent).then(|| Box::new(pump));
                return Ok(respond(pool, connection, head, pump));
            }
            // No answer either: what failed first is what happened.
            (Err(WriteError::Read(_)), Some(error)) => WriteError::Io(error),
            (Err(error), _) => error,
        };
        let movable = reused
            && pump.whole
            && match &error {
                WriteError::Read(Error::Closed) => {
                    connection.written == 0 || (pump.sent && is_idempotent(request.method))
                }
                WriteError::Io(_) => true,
                WriteError::Body(_) | WriteError::Read(_) => false,
            };
        if !movable {
            return Err(match error {
                WriteError::Io(error) => Error::Io(error),
                WriteError::Read(error) => error,
                WriteError::Body(error) => Error::RequestBody(error),
            });
        }
        // What the buffer holds is all that was taken from the body: the new connection
        // starts from it, and the pump carries on from where it was.
        let mut fresh = connect().await?;
        std::mem::swap(&mut fresh.write_buf, &mut connection.write_buf);
        pump.sent = false;
        connection = fresh;
        reused = false;
    }
}

/// The response body that follows `head` on `connection`.
fn respond<B>(
    pool: &Pool,
    connection: Connection,
    head: ResponseHead,
    pump: Option<Box<Pump<B>>>,
) -> (ResponseHead, ResponseBody<B>)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut body = ResponseBody {
        connection: Some(connection),
        decoder: BodyDecoder::new(head.body),
        keep_alive: head.keep_alive,
        pump,
        trailers: None,
    };
    if body.decoder.is_done() && body.pump.is_none() && head.body != BodyFraming::Upgrade {
        // No body follows (a HEAD or 204 answer, say), and it may never be polled.
        body.release(pool);
    }
    (head, body)
}

/// Content-Length when the client gave one (or the body's size is known), no body for a
/// request that never had one, chunked otherwise.
fn request_framing<B: Body>(body: &B, headers: &HeaderMap) -> RequestFraming {
    let hint = body.size_hint();
    match hint.exact() {
        Some(0) if body.is_end_stream() && !headers.contains_key(header::CONTENT_LENGTH) => {
            RequestFraming::Empty
        }
        Some(length) => RequestFraming::Length(length),
        None => RequestFraming::Chunked,
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// How sending a request failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// Writing to the connection failed.
    #[error("write: {0}")]
    Io(io::Error),
    /// Reading the client's body failed.
    #[error("request body: {0}")]
    Body(BoxError),
    /// Reading the response head failed.
    #[error("read: {0}")]
    Read(Error),
}

// === impl Pump ===

impl<B> Pump<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn new(body: B, framing: RequestFraming) -> Self {
        Pump {
            body,
            chunked: framing == RequestFraming::Chunked,
            gather: matches!(framing, RequestFraming::Length(n) if n <= GATHER_BODY_BYTES),
            trailers: None,
            encoded: framing == RequestFraming::Empty,
            sent: false,
            whole: true,
            discarding: false,
        }
    }

    /// Stops writing to the instance; from now on the body is only read to its end.
    fn discard_rest(&mut self, connection: &mut Connection) {
        self.discarding = true;
        connection.write_buf.clear();
        connection.written = 0;
    }

    /// Reads the rest of the client's body and drops it.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        while !self.body.is_end_stream() {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(error))) => {
                    return Poll::Ready(Err(WriteError::Body(error.into())));
                }
                Poll::Ready(None) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        self.sent = true;
        Poll::Ready(Ok(()))
    }

    /// Moves the request out: takes what the body has, writes what is buffered. Ready once
    /// every byte is written and flushed.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        connection: &mut Connection,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            if self.sent {
                return Poll::Ready(Ok(()));
            }
            if self.discarding {
                return self.poll_discard(cx);
            }
            // Take in what the body has now, up to a buffer's worth.
            while !self.encoded && connection.unwritten() < FLUSH_BYTES {
                if self.body.is_end_stream() {
                    self.finish(connection);
                    break;
                }
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => self.encode(frame, connection),
                    Poll::Ready(Some(Err(error))) => {
                        return Poll::Ready(Err(WriteError::Body(error.into())));
                    }
                    Poll::Ready(None) => self.finish(connection),
                    Poll::Pending => {
                        // Gathering waits for the rest; streaming sends what it has.
                        if self.gather || connection.unwritten() == 0 {
                            return Poll::Pending;
                        }
                        break;
                    }
                }
            }
            if !self.encoded {
                // Part of the request goes out before the rest exists.
                self.whole = false;
            }
            match connection.poll_write_out(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(WriteError::Io(error))),
                Poll::Ready(Ok(())) => {}
            }
            if self.encoded {
                match Pin::new(&mut connection.io).poll_flush(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(WriteError::Io(error))),
                    Poll::Ready(Ok(())) => self.sent = true,
                }
            } else {
                connection.write_buf.clear();
                connection.written = 0;
            }
        }
    }

    fn encode(&mut self, frame: Frame<Bytes>, connection: &mut Connection) {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                self.trailers = frame.into_trailers().ok();
                return;
            }
        };
        if data.is_empty() {
            return;
        }
        let out = &mut connection.write_buf;
        if self.chunked {
            codec::encode_chunk_size(out, data.len());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&data);
        }
    }

    fn finish(&mut self, connection: &mut Connection) {
        if self.chunked {
            codec::encode_last_chunk(&mut connection.write_buf, self.trailers.as_ref());
        }
        self.encoded = true;
    }
}

// === impl Connection ===

impl Connection {
    fn unwritten(&self) -> usize {
        self.write_buf.len() - self.written
    }

    /// Writes the buffer out. The bytes stay in the buffer, so a whole request can be replayed.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write_buf.len() {
            let n = match Pin::new(&mut self.io).poll_write(cx, &self.write_buf[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            };
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads what the instance sent next onto the end of the read buffer; `Ok(0)` when it
    /// closed the connection.
    ///
    /// Answers are cut out of the buffer and handed on as they are, so its front is often still
    /// in use: keep reading into what is left, and only ask for a new buffer when little is (by
    /// then the old one is usually free again and is reused whole).
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < MIN_READ_ROOM {
            self.read_buf.reserve(READ_SIZE);
        }
        pin!(self.io.read_buf(&mut self.read_buf)).poll(cx)
    }

    /// Reads until a whole response head is in, skipping interim responses; headers named in
    /// `own` are left out of it. `received` notes whether any byte came, to tell a connection
    /// closed under the request from a failure.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
        own: &[HeaderName],
        received: &mut bool,
    ) -> Poll<Result<ResponseHead, Error>> {
        loop {
            if let Some(head) = codec::parse_response_head(&mut self.read_buf, method, own)? {
                return Poll::Ready(Ok(head));
            }
            match self.poll_read_more(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if !*received => return Poll::Ready(Err(Error::Closed)),
                Poll::Ready(Ok(0)) => {
                    let error = Malformed("the instance closed the connection mid-head");
                    return Poll::Ready(Err(error.into()));
                }
                Poll::Ready(Ok(_)) => *received = true,
                Poll::Ready(Err(error))
                    if !*received && error.kind() == io::ErrorKind::ConnectionReset =>
                {
                    return Poll::Ready(Err(Error::Closed));
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
            }
        }
    }
}

// === impl Pool ===

impl Pool {
    /// A pool keeping at most `max_idle` idle connections on each serving thread's stack.
    pub(crate) fn new(max_idle: usize) -> Self {
        Pool {
            shards: (0..POOL_SHARDS)
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
            max_idle: max_idle.max(1),
        }
    }

    /// This thread's stack.
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.shards[serving_thread::index() % POOL_SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest idle connection the instance has not closed meanwhile.
    fn checkout(&self) -> Option<Connection> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(Idle {
            mut connection,
            since,
        }) = idle.pop_back()
        {
            if now.duration_since(since) > IDLE_TIMEOUT {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if connection.io.is_open() {
                return Some(connection);
            }
        }
        None
    }

    fn put(&self, mut connection: Connection) {
        // Idle connections to instances are few (one per request in flight at the busiest
        // moment, per thread) and each is reused soon: they keep their buffers, unless one
        // grew for a large request.
        if connection.write_buf.capacity() > KEEP_BUFFER_BYTES {
            connection.write_buf = Vec::new();
        }
        if connection.read_buf.capacity() > KEEP_BUFFER_BYTES {
            connection.read_buf = BytesMut::new();
        }
        let now = Instant::now();
        let mut idle = self.lock();
        while idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle {
                connection,
                since: now,
            });
        }
    }
}

// === impl ResponseBody ===

impl<B> ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// The next piece of the body, reading from the connection as needed (and sending the rest
    /// of the request, if the instance answered early). `pool` takes the connection back once
    /// the exchange ended cleanly.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        pool: &Pool,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(pump) = self.pump.as_mut() {
                match pump.poll(cx, connection) {
                    Poll::Ready(Ok(())) => self.pump = None,
                    Poll::Ready(Err(WriteError::Io(error))) => {
                        // The instance stopped reading: the answer may still be whole, but the
                        // connection is done after it.
                        tracing::debug!(%error, "the instance stopped reading the request after its answer began");
                        pump.discard_rest(connection);
                        self.keep_alive = false;
                        continue;
                    }
                    Poll::Ready(Err(error)) => {
                        // The client stopped sending.
                        tracing::debug!(%error, "request body stopped after the answer began");
                        self.pump = None;
                        self.keep_alive = false;
                    }
                    Poll::Pending => {}
                }
            }
            if self.decoder.is_done() {
                self.release(pool);
                let trailers = self.trailers.take();
                return Poll::Ready(trailers.map(|trailers| Ok(Frame::trailers(*trailers))));
            }
            match self.decoder.decode(&mut connection.read_buf) {
                Ok(Decoded::Data(data)) => {
                    if self.decoder.is_done() {
                        self.release(pool);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End(trailers)) => {
                    self.trailers = trailers.map(Box::new);
                    continue;
                }
                Ok(Decoded::NeedMore) => {}
                Err(error) => return self.fail(error.into()),
            }
            match connection.poll_read_more(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if let Err(error) = self.decoder.on_close() {
                        return self.fail(error.into());
                    }
                    if self.pump.is_none() {
                        self.connection = None;
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => return self.fail(error.into()),
            }
        }
    }

    /// When the answer ended before the request was all sent (the instance answered early):
    /// the work of sending the rest, or of reading the rest from the client and dropping it
    /// once the instance stops reading. Run to its end, it leaves the client's connection read
    /// to the end of its request, so it carries on with the next one instead of being closed
    /// (and reset) while the client still sends; and a connection whose answer was whole and
    /// kept alive, and whose request then went out whole, goes back to `pool`, as after any
    /// other exchange. Bounded by [`REST_OF_REQUEST_TIMEOUT`].
    pub(crate) fn rest_of_request(
        &mut self,
        pool: Arc<Pool>,
    ) -> Option<impl Future<Output = ()> + use<B>> {
        let mut pump = self.pump.take()?;
        let mut connection = self.connection.take()?;
        let reusable = self.keep_alive && self.decoder.is_done();
        Some(async move {
            let rest = poll_fn(|cx| {
                loop {
                    match pump.poll(cx, &mut connection) {
                        Poll::Ready(Err(WriteError::Io(_))) => pump.discard_rest(&mut connection),
                        // Sent whole only if it was never given up on.
                        Poll::Ready(Ok(())) => return Poll::Ready(!pump.discarding),
                        Poll::Ready(Err(_)) => return Poll::Ready(false),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            });
            let sent = tokio::time::timeout(REST_OF_REQUEST_TIMEOUT, rest).await;
            if reusable && sent == Ok(true) && connection.read_buf.is_empty() {
                pool.put(connection);
            }
        })
    }

    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.connection = None;
        Poll::Ready(Some(Err(error)))
    }

    /// Hands the connection back if it may carry another request. One whose request is still
    /// going out stays for [`ResponseBody::rest_of_request`].
    fn release(&mut self, pool: &Pool) {
        if self.pump.is_some() {
            return;
        }
        if let Some(connection) = self.connection.take() {
            // Not while the request is still going out, nor with bytes past the body (the
            // instance broke the framing).
            if self.keep_alive && self.pump.is_none() && connection.read_buf.is_empty() {
                pool.put(connection);
            }
        }
    }
}

impl<B> ResponseBody<B> {
    /// True once the body was read to its end.
    pub(crate) fn is_end_stream(&self) -> bool {
        self.connection.is_none() || self.decoder.is_done()
    }

    /// The body's length when its framing gives it.
    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }

    /// After `101 Switching Protocols`: the connection and any bytes the instance already sent
    /// in the new protocol.
    pub(crate) fn into_upgraded(mut self) -> Option<(Stream, BytesMut)> {
        self.connection
            .take()
            .map(|connection| (connection.io, connection.read_buf))
    }
}

// === impl Stream ===

impl Stream {
    /// False once the instance closed the connection (or sent bytes nobody asked for).
    /// Reads only what the socket already has; never waits.
    fn is_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(Pin::new(self).poll_read(&mut cx, &mut probe), Poll::Pending)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}
