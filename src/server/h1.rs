//! The serve loop's own HTTP/1.1 path, for the exchange that is nearly all of a gateway's
//! traffic: HTTP/1.1 on a kept-alive connection, requests with no body or a small one of known
//! length, answered in order. Serving it here skips what hyper's general machinery does for
//! every request (a body channel, a timer, a read-buffer check while the handler runs), which is
//! most of what a request costs when it is only passed along.
//!
//! Anything else goes to hyper on the same connection, with the bytes already read, and stays
//! there: HTTP/2, HTTP/1.0, upgrades, `Expect`, chunked or large request bodies, and heads that
//! do not parse (hyper answers those with the right 4xx).

use std::future::{Future, poll_fn};
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::{ClientBody, Connection, Handler, IntoReply, MAX_HEADER_BYTES, Reply};
use crate::causes::BoxError;
use crate::http1::rules::{ConnectionToken, MAX_HEADERS, connection_tokens, parse_decimal};

/// Request bodies up to this size are read whole with their head; larger ones stream through
/// hyper.
pub(crate) const MAX_WHOLE_BODY: usize = 64 * 1024;
/// Room a read gets at least.
const READ_SIZE: usize = 8 * 1024;
/// A response is written out once this much of it is buffered.
const FLUSH_BYTES: usize = 64 * 1024;
/// Buffers that grew past this for one large request or answer are not kept between requests.
const KEEP_BUFFER_BYTES: usize = 16 * 1024;

/// How serving a connection here ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The connection is done with.
    Closed,
    /// It carries something this path does not serve: hyper takes it from here, starting with
    /// the bytes already read.
    HandOver { stream: TcpStream, read: BytesMut },
}

/// What the start of a connection's buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A request head this path serves.
    Request(Head),
    /// Not a whole head yet.
    Partial,
    /// Something for hyper.
    Other,
}

/// Where a request head's parts lie in the buffer; the header lines are in the spans passed to
/// [`parse_head`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head {
    /// Through the empty line that ends the head.
    len: usize,
    method: Range<usize>,
    target: Range<usize>,
    /// The body's length: all of it follows the head.
    body_len: usize,
    /// The client asked to close the connection after this request.
    close: bool,
}

/// One header line: where its name and value lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    name: Range<usize>,
    value: Range<usize>,
}

/// Reads the request head at the start of `buf`, if it is one this path serves, and records
/// where its header lines lie in `spans`.
pub(crate) fn parse_head(buf: &[u8], spans: &mut Vec<Span>) -> Parsed {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut slots,
    );
    let len = match parsed {
        // Heads over the limit get hyper's 431.
        Ok(httparse::Status::Complete(len)) if len > MAX_HEADER_BYTES => return Parsed::Other,
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::Other;
    };
    // Origin-form targets only: proxies' absolute form, `*` and CONNECT are hyper's to judge.
    if !target.starts_with('/') || method == "CONNECT" {
        return Parsed::Other;
    }
    let offset = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + part.len()
    };
    spans.clear();
    let mut body_len = None;
    let mut close = false;
    for line in request.headers.iter() {
        let name = line.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let Some(length) =
                    parse_decimal(line.value).and_then(|length| usize::try_from(length).ok())
                else {
                    return Parsed::Other;
                };
                if body_len.is_some() || length > MAX_WHOLE_BODY {
                    return Parsed::Other;
                }
                body_len = Some(length);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Parsed::Other,
            6 if name.eq_ignore_ascii_case(b"expect") => return Parsed::Other,
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Parsed::Other,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in connection_tokens(line.value) {
                    match token {
                        ConnectionToken::Close => close = true,
                        ConnectionToken::Upgrade => return Parsed::Other,
                        ConnectionToken::KeepAlive | ConnectionToken::Names(_) => {}
                    }
                }
            }
            _ => {}
        }
        spans.push(Span {
            name: offset(name),
            value: offset(line.value),
        });
    }
    Parsed::Request(Head {
        len,
        method: offset(method.as_bytes()),
        target: offset(target.as_bytes()),
        body_len: body_len.unwrap_or(0),
        close,
    })
}

/// The request `head` describes, without its body, with header values pointing into `bytes`
/// (the head) rather than copied; `None` if a part the parser let through is not valid for the
/// `http` crate.
fn build_request(bytes: &Bytes, head: &Head, spans: &[Span]) -> Option<Request<()>> {
    let method = Method::from_bytes(&bytes[head.method.clone()]).ok()?;
    let uri = Uri::from_maybe_shared(bytes.slice(head.target.clone())).ok()?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    for span in spans {
        let name = HeaderName::from_bytes(&bytes[span.name.clone()]).ok()?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(span.value.clone())).ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// Reads whatever `wire` holds as a client's request heads, the way a connection does: each
/// head this path serves becomes a request, whose body must lie within `wire`. Returns how many
/// requests it made before the rest was incomplete or left to hyper. For fuzzing: it must never
/// panic, and a head must never claim bytes that are not there.
pub fn read_requests(wire: &[u8]) -> usize {
    let mut buf = BytesMut::from(wire);
    let mut made = 0;
    while let Some(request) = next_whole_request(&mut buf) {
        assert_eq!(
            request.body().size_hint().exact(),
            request
                .headers()
                .get(header::CONTENT_LENGTH)
                .map_or(Some(0), |length| parse_decimal(length.as_bytes()))
        );
        made += 1;
    }
    made
}

/// The next request at the front of `buf` that this path serves, taken out of it with its whole
/// body; `None` once the rest is incomplete or hyper's to read.
pub(crate) fn next_whole_request(buf: &mut BytesMut) -> Option<Request<ClientBody>> {
    let mut spans = Vec::new();
    let Parsed::Request(head) = parse_head(buf, &mut spans) else {
        return None;
    };
    assert!(
        spans
            .iter()
            .all(|span| span.value.end <= head.len && span.name.end <= head.len),
        "a header line outside its head"
    );
    if buf.len() < head.len + head.body_len {
        return None;
    }
    let bytes = buf.split_to(head.len).freeze();
    let body = buf.split_to(head.body_len).freeze();
    let request = build_request(&bytes, &head, &spans)?;
    Some(request.map(|()| ClientBody::whole(body)))
}

/// One client connection on this path.
struct Client {
    stream: TcpStream,
    read: BytesMut,
    /// Fires every `timeout` while the connection waits for a request.
    idle: Pin<Box<Sleep>>,
    timeout: Duration,
    /// A request head arrived since `idle` last fired.
    progress: bool,
    draining: watch::Receiver<bool>,
}

/// What waiting for more of a request brought.
enum Read {
    More,
    /// The client closed the connection, sent no whole head for a full timeout period, or the
    /// server is shutting down while no request is under way.
    Close,
}

impl Client {
    /// Reads more of the next request. A client that sends no whole head for a full `timeout`
    /// period (so after between one and two of them) is let go.
    async fn read_more(&mut self) -> io::Result<Read> {
        loop {
            self.read.reserve(READ_SIZE);
            tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.read) => {
                    return Ok(if read? == 0 { Read::Close } else { Read::More });
                }
                () = self.idle.as_mut() => {
                    if !std::mem::take(&mut self.progress) {
                        return Ok(Read::Close);
                    }
                    self.idle.as_mut().reset(Instant::now() + self.timeout);
                }
                // Shutting down closes a connection between requests; one whose request has
                // begun to arrive gets the rest of it, and its answer.
                _ = self.draining.changed(), if self.read.is_empty() => return Ok(Read::Close),
            }
        }
    }

    fn draining(&self) -> bool {
        *self.draining.borrow()
    }
}

/// Serves requests on `stream` until the client closes it, asks to, or sends something hyper
/// must serve.
pub(crate) async fn serve(
    stream: TcpStream,
    handler: &impl Handler,
    connection: &Connection,
    timeout: Duration,
    draining: watch::Receiver<bool>,
) -> Result<Ended, BoxError> {
    let mut client = Client {
        stream,
        read: BytesMut::with_capacity(READ_SIZE),
        idle: Box::pin(tokio::time::sleep(timeout)),
        timeout,
        progress: false,
        draining,
    };
    let mut spans = Vec::new();
    let mut out = Vec::new();
    loop {
        let head = loop {
            match parse_head(&client.read, &mut spans) {
                Parsed::Request(head) => break head,
                Parsed::Other => return Ok(client.hand_over()),
                Parsed::Partial if client.read.len() > MAX_HEADER_BYTES => {
                    return Ok(client.hand_over());
                }
                Parsed::Partial => {}
            }
            if client.read.is_empty() && client.draining() {
                return Ok(Ended::Closed);
            }
            if let Read::Close = client.read_more().await? {
                return Ok(Ended::Closed);
            }
        };
        client.progress = true;
        while client.read.len() < head.len + head.body_len {
            if let Read::Close = client.read_more().await? {
                return Ok(Ended::Closed);
            }
        }

        let bytes = client.read.split_to(head.len).freeze();
        let body = client.read.split_to(head.body_len).freeze();
        let Some(request) = build_request(&bytes, &head, &spans) else {
            let mut read = BytesMut::with_capacity(bytes.len() + body.len() + client.read.len());
            read.extend_from_slice(&bytes);
            read.extend_from_slice(&body);
            read.extend_from_slice(&client.read);
            client.read = read;
            return Ok(client.hand_over());
        };
        let request = request.map(|()| ClientBody::whole(body));
        // The head's bytes live on in the request's header values only; this handle to them
        // would otherwise keep the read buffer shared, and growing it would then copy.
        drop(bytes);
        let to_head = request.method() == Method::HEAD;

        // Pinned where it is made: the handler's future is large, and every move copies it.
        let answer = pin!(handler.call(request, connection.clone()));
        let Some(reply) = client.respond(answer).await? else {
            return Ok(Ended::Closed);
        };
        let close = head.close || client.draining();
        let keep_alive =
            write_response(&mut client.stream, &mut out, reply, to_head, close).await?;
        // The response is on its way: a good moment to let others run.
        crate::serving_thread::offer_cpu();
        if !keep_alive {
            // A clean end: the client reads the response to its last byte, then the close.
            let _ = client.stream.shutdown().await;
            return Ok(Ended::Closed);
        }
        // An idle connection holds its buffers: thousands of them must stay small.
        if out.capacity() > KEEP_BUFFER_BYTES {
            out = Vec::new();
        }
        if client.read.is_empty() && client.read.capacity() > KEEP_BUFFER_BYTES {
            client.read = BytesMut::new();
        }
    }
}

impl Client {
    fn hand_over(self) -> Ended {
        Ended::HandOver {
            stream: self.stream,
            read: self.read,
        }
    }

    /// Waits for the handler's answer while watching the client: bytes of a next request are
    /// kept (up to a bound), and a client that closes the connection cancels the request,
    /// which ends with `None`.
    async fn respond<R: IntoReply>(
        &mut self,
        mut answer: Pin<&mut impl Future<Output = R>>,
    ) -> io::Result<Option<Reply<R::Body>>> {
        loop {
            let watching = self.read.len() <= MAX_HEADER_BYTES;
            tokio::select! {
                biased;
                reply = &mut answer => return Ok(Some(reply.into_reply())),
                ready = self.stream.readable(), if watching => {
                    ready?;
                    self.read.reserve(READ_SIZE);
                    match self.stream.try_read_buf(&mut self.read) {
                        Ok(0) => return Ok(None),
                        Ok(_) => {}
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                        Err(error) => return Err(error),
                    }
                }
            }
        }
    }
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes the head of an answer into `out`: the status line, the handler's headers, an
/// instance's lines as they came, and the framing this loop states itself. `exact` is the
/// body's size if known. Returns the body's framing, and whether the connection closes after.
pub(crate) fn encode_response_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    lines: Option<&crate::http1::HeaderBlock>,
    exact: Option<u64>,
    to_head: bool,
    close: bool,
) -> (Framing, bool) {
    let status = parts.status;
    let close = close || status == StatusCode::SWITCHING_PROTOCOLS;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut declared = None;
    let mut dated = false;
    // The handler's own `Connection: close`.
    let mut closing = false;
    for (name, value) in &parts.headers {
        // Framing is this loop's to state.
        if name == header::CONTENT_LENGTH {
            declared = parse_decimal(value.as_bytes().trim_ascii());
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::CONNECTION {
            closing |=
                connection_tokens(value.as_bytes()).any(|token| token == ConnectionToken::Close);
        }
        dated |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // An instance's headers, passed through as they came.
    if let Some(lines) = lines {
        out.extend_from_slice(lines.lines());
        declared = declared.or(lines.content_length());
        dated |= lines.is_dated();
    }
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A HEAD answer's length is the GET's: the one declared, or that of a body the handler
    // made for it. An instance's answer to HEAD has an empty body, which says nothing about
    // the GET's, so it gets no length it did not declare.
    let length = match (declared, exact) {
        (Some(length), _) => Some(length),
        (None, Some(0)) if to_head => None,
        (None, exact) => exact,
    };
    let framing = match length {
        _ if bodiless => {
            if let (StatusCode::NOT_MODIFIED, Some(length)) = (status, declared) {
                write_length(out, length);
            }
            Framing::None
        }
        Some(length) => {
            write_length(out, length);
            Framing::Length(length)
        }
        None if to_head => Framing::None,
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&http_date());
        out.extend_from_slice(b"\r\n");
    }
    if close && !closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let close = close || closing;
    out.extend_from_slice(b"\r\n");
    (framing, close)
}

/// Writes `response`; `Ok(true)` if the connection may carry another request.
async fn write_response<B>(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    reply: Reply<B>,
    to_head: bool,
    close: bool,
) -> Result<bool, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (response, lines) = reply.into_parts();
    let (parts, body) = response.into_parts();
    let mut body = pin!(body);
    let (framing, close) = encode_response_head(
        out,
        &parts,
        lines.as_ref(),
        body.size_hint().exact(),
        to_head,
        close,
    );
    if to_head || framing == Framing::None {
        stream.write_all(out).await?;
        return Ok(!close);
    }

    let mut sent = 0u64;
    // Whether a close by the client is still looked for while the body waits.
    let mut watching = true;
    loop {
        // Take what is ready; write out what is buffered before waiting for more, so a
        // streamed answer reaches the client as it is made.
        let mut next = |cx: &mut Context<'_>| {
            let polled = body.as_mut().poll_frame(cx);
            polled.map(|frame| frame.map(|frame| frame.map_err(Into::<BoxError>::into)))
        };
        let ready = poll_fn(|cx| Poll::Ready(next(cx))).await;
        let frame = match ready {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    stream.write_all(out).await?;
                    out.clear();
                }
                next_frame_unless_client_left(stream, &mut next, &mut watching).await?
            }
        };
        let Some(frame) = frame else { break };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                // What came before the failure still goes out, so the client sees the answer
                // begin and then end short of its framing, rather than no answer at all.
                let _ = stream.write_all(out).await;
                return Err(error);
            }
        };
        let Ok(mut data) = frame.into_data() else {
            // Trailers: HTTP/1.1 clients of a model seldom ask for them; they are dropped.
            continue;
        };
        let len = data.remaining();
        if len == 0 {
            continue;
        }
        sent += len as u64;
        match framing {
            Framing::Length(length) if sent > length => {
                return Err("response body longer than its content-length".into());
            }
            Framing::Chunked => {
                let _ = write!(out, "{len:x}\r\n");
            }
            _ => {}
        }
        while data.has_remaining() {
            let chunk = data.chunk();
            out.extend_from_slice(chunk);
            let taken = chunk.len();
            data.advance(taken);
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= FLUSH_BYTES {
            stream.write_all(out).await?;
            out.clear();
        }
    }
    match framing {
        Framing::Length(length) if sent < length => {
            stream.write_all(out).await?;
            return Err("response body shorter than its content-length".into());
        }
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    stream.write_all(out).await?;
    Ok(!close)
}

/// Waits for the body's next frame, but gives up when the client closes the connection: a
/// stream that is quiet for minutes (server-sent events, a slow generation) must not keep an
/// instance working for a client that is gone. Once the client has sent bytes of a next
/// request, the socket stays readable, so it is no longer watched.
async fn next_frame_unless_client_left<T>(
    stream: &TcpStream,
    next: &mut impl FnMut(&mut Context<'_>) -> Poll<Option<T>>,
    watching: &mut bool,
) -> Result<Option<T>, BoxError> {
    loop {
        tokio::select! {
            biased;
            frame = poll_fn(&mut *next) => return Ok(frame),
            ready = stream.readable(), if *watching => {
                ready?;
                let mut byte = [0u8; 1];
                let mut peeked = tokio::io::ReadBuf::new(&mut byte);
                // Readiness can be spurious: a peek that would wait is no news.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match stream.poll_peek(&mut cx, &mut peeked) {
                    Poll::Ready(Ok(0)) => {
                        return Err("the client closed the connection mid-answer".into());
                    }
                    Poll::Ready(Ok(_)) => *watching = false,
                    Poll::Ready(Err(error)) => return Err(error.into()),
                    Poll::Pending => {}
                }
            }
        }
    }
}

fn write_length(out: &mut Vec<u8>, length: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Today's `Date` header value, formatted once a second per thread.
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    CACHED.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        let mut text = [b' '; 29];
        let formatted = httpdate::fmt_http_date(now);
        let len = formatted.len().min(29);
        text[..len].copy_from_slice(&formatted.as_bytes()[..len]);
        cached.set((second, text));
        text
    })
}

/// A connection with bytes already read from it in front: what hyper gets when it takes a
/// connection over.
#[derive(Debug)]
pub(crate) struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Parsed {
        parse_head(text.as_bytes(), &mut Vec::new())
    }

    fn head(text: &str) -> (Head, Vec<Span>) {
        let mut spans = Vec::new();
        match parse_head(text.as_bytes(), &mut spans) {
            Parsed::Request(head) => (head, spans),
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn a_plain_request_is_served_here_with_its_parts_located() {
        let text = "POST /score?x=1 HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\n\r\nabcNEXT";
        let (parsed, spans) = head(text);
        assert_eq!(&text[parsed.method.clone()], "POST");
        assert_eq!(&text[parsed.target.clone()], "/score?x=1");
        assert_eq!(parsed.len, text.len() - "abcNEXT".len());
        assert_eq!(parsed.body_len, 3);
        assert!(!parsed.close);
        let lines: Vec<(&str, &str)> = spans
            .iter()
            .map(|span| (&text[span.name.clone()], &text[span.value.clone()]))
            .collect();
        assert_eq!(lines, [("Host", "g"), ("Content-Length", "3")]);

        let (closing, _) = head("GET / HTTP/1.1\r\nconnection: keep-alive, Close\r\n\r\n");
        assert!(closing.close);
        assert_eq!(closing.body_len, 0);
    }

    #[test]
    fn an_unfinished_head_waits_for_more() {
        assert_eq!(parse(""), Parsed::Partial);
        assert_eq!(
            parse("POST /score HTTP/1.1\r\nhost: g\r\n"),
            Parsed::Partial
        );
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        for text in [
            "GET / HTTP/1.0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            "GET /ws HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
            "GET /ws HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
            "GET http://g/ HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "CONNECT g:443 HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 65537\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert_eq!(parse(text), Parsed::Other, "{text:?}");
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "x: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parse(&many), Parsed::Other, "too many header lines");
    }

    #[test]
    fn the_request_points_into_the_head() {
        let text =
            "POST /score HTTP/1.1\r\nhost: g\r\nx-request-id: abc\r\ncontent-length: 2\r\n\r\n";
        let (parsed, spans) = head(text);
        let bytes = Bytes::from(text);
        let request = build_request(&bytes, &parsed, &spans)
            .expect("a valid request")
            .map(|()| ClientBody::whole(Bytes::from_static(b"{}")));
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path(), "/score");
        assert_eq!(request.headers()["x-request-id"], "abc");
        assert_eq!(request.headers().len(), 3);
        assert_eq!(request.body().size_hint().exact(), Some(2));
    }
}
