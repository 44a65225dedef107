//! The serve loop's own HTTP/1.1 path, over plain TCP or TLS: requests answered in order on a
//! kept-alive connection, with no body, a small one read whole with the head, or a large or
//! chunked one streamed to the handler through the same decoder that reads instances' answers
//! (`http1::codec`). Serving it here skips what hyper's general machinery does for every
//! request (a body channel, a timer, a read-buffer check while the handler runs), which is most
//! of what a request costs when it is only passed along; and it reads request framing by the
//! same rules as the client side does answers.
//!
//! HTTP/1.0 is served here too: its connection is kept only when the client asks
//! (`Connection: keep-alive`, which the answer repeats), an answer of unknown length is framed by
//! the connection's end rather than chunked, and no interim answer goes to it.
//!
//! So are targets in absolute form and `OPTIONS *`. Every head is judged here: one that breaks
//! the syntax or the limits, frames its body so that readers could disagree, or names a target,
//! method or version the gateway does not pass on, is answered here ([`refuse`]) and ends its
//! connection. An upgrade is served here as well: a 101 answer hands the connection on
//! (`handover.rs`), and any other ends it. Only a connection that begins with HTTP/2's preface
//! goes to hyper, with the bytes already read.

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
use http_body::{Body, Frame};
use http_body_util::Full;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::body::BodyFeed;
use super::handover::{self, Pending, Prefixed};
use super::wire::{self, MIN_READ_ROOM, Wire};
use super::{ClientBody, Connection, Handler, IntoReply, MAX_HEADER_BYTES, Reply};
use crate::causes::BoxError;
use crate::error::ProxyError;
use crate::http1::codec::{BodyDecoder, BodyFraming, Decoded};
use crate::http1::interim;
use crate::http1::rules::{
    BadLength, Codings, ConnectionToken, ContentLength, MAX_HEADERS, REST_OF_REQUEST_TIMEOUT,
    TransferCodings, connection_tokens, parse_decimal,
};

/// Request bodies up to this size are read whole with their head; larger ones are streamed to
/// the handler as they arrive.
pub(crate) const MAX_WHOLE_BODY: usize = 64 * 1024;
/// Room a streamed request body's reads get. Large: each read is one frame handed to the
/// handler, and fewer, larger frames cost far less per byte. A connection holds at most this
/// and the one frame waiting for the handler.
const BODY_READ_SIZE: usize = 256 * 1024;
/// The most of a request body still to come once its answer is ready that is read (and fed on,
/// or thrown away) so that the connection carries the next request. A longer rest, or a chunked
/// one, ends the connection after the answer: reading it all could take long, for nothing.
const MAX_DRAINED_BODY: u64 = 1024 * 1024;
/// How long a connection that ends after an early answer goes on reading what the client still
/// sends, so that the client reads its answer before the close.
const LINGER: Duration = Duration::from_secs(5);
/// Room the write buffer starts with: most answers' head and body fit, and the allocator keeps
/// blocks of this size at hand.
const HEAD_ROOM: usize = 1024;
/// A response is written out once this much of it is buffered.
const FLUSH_BYTES: usize = 64 * 1024;

/// How serving a connection here ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The connection is done with.
    Closed,
    /// It carries HTTP/2: hyper takes it from here, starting with the bytes already read
    /// ([`Client::into_hand_over`]).
    Http2,
    /// The handler switched it to another protocol with a 101, which is written: the
    /// connection goes to whoever waits on the request's [`OnUpgrade`](super::OnUpgrade).
    Switched(Pending),
    /// Its next request head is malformed or over the limits: it is to be answered with the
    /// error, and the connection closed ([`refuse`]).
    Refused(Refusal),
}

/// Why this path refuses a request head. Small, unlike the error it stands for: it is part of
/// what every connection's task holds room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The head breaks the syntax, or frames its body so that readers could disagree.
    Malformed(Malformed),
    /// The head is over [`MAX_HEADER_BYTES`] or [`MAX_HEADERS`] lines.
    TooLarge,
    /// The target is not one an instance can be sent unchanged.
    Target(BadTarget),
    /// `CONNECT`.
    Connect,
    /// A transfer coding other than one final `chunked`.
    Coding,
    /// A version other than HTTP/1.1 and HTTP/1.0 (HTTP/2 starts with its preface instead).
    Version,
}

impl Refusal {
    /// The error the client is answered with; `head` is the refused head, read again for what
    /// the error names.
    pub(crate) fn error(self, head: &[u8]) -> ProxyError {
        match self {
            Refusal::Malformed(what) => ProxyError::MalformedHead(what.describe()),
            Refusal::TooLarge => ProxyError::HeadTooLarge {
                bytes: MAX_HEADER_BYTES,
                lines: MAX_HEADERS,
            },
            Refusal::Target(BadTarget::Asterisk) => {
                ProxyError::InvalidTarget("`*` is the target of `OPTIONS *` only")
            }
            Refusal::Target(BadTarget::Scheme) => {
                ProxyError::InvalidTarget("only http and https URLs")
            }
            Refusal::Target(BadTarget::NotAPath) => {
                ProxyError::InvalidTarget("it must start with `/` (or be an http URL)")
            }
            Refusal::Connect => ProxyError::ConnectMethod,
            Refusal::Coding => ProxyError::UnsupportedCoding(transfer_codings_of(head)),
            Refusal::Version => ProxyError::UnsupportedVersion,
        }
    }
}

// Every connection's task holds room for one.
const _: () = assert!(size_of::<Refusal>() <= 2);

/// What is wrong with a request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadTarget {
    /// `*` with a method other than OPTIONS.
    Asterisk,
    /// A URL of a scheme other than http and https.
    Scheme,
    /// Neither a path nor a URL: a relative path, or an authority (which only CONNECT takes).
    NotAPath,
}

/// The `Transfer-Encoding` values of the request head at the start of `buf`, joined.
fn transfer_codings_of(buf: &[u8]) -> String {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let _ = request.parse(buf);
    let values: Vec<String> = request
        .headers
        .iter()
        .filter(|line| line.name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|line| String::from_utf8_lossy(line.value).into_owned())
        .collect();
    values.join(", ")
}

/// What the start of a connection's buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A request head this path serves.
    Request(Head),
    /// Not a whole head yet.
    Partial,
    /// A head this path refuses.
    Refused(Refusal),
    /// HTTP/2's preface: hyper's.
    Http2,
}

/// Where a request head's parts lie in the buffer; the header lines are in the spans passed to
/// [`parse_head`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head {
    /// Through the empty line that ends the head.
    len: usize,
    method: Range<usize>,
    target: Range<usize>,
    /// How the body follows the head.
    body: BodyOf,
    /// The connection closes after this request: the client asked, or it speaks HTTP/1.0 and did
    /// not ask to keep it.
    close: bool,
    /// The request is HTTP/1.0: its answer is framed without chunks, and no interim answer goes
    /// to it.
    http10: bool,
    /// The client waits for `100 Continue` before it sends the body.
    expect_continue: bool,
    /// The client asks to switch protocols (`Upgrade`, or `Connection: upgrade`).
    upgrade: bool,
}

/// How a request's body follows its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyOf {
    /// This many bytes, read whole with the head (none when 0).
    Whole(usize),
    /// Streamed to the handler as it arrives: a length too large to read whole, or chunked.
    Streamed(BodyFraming),
}

impl BodyOf {
    /// Bytes that must follow the head before the request is handled.
    fn whole_len(self) -> usize {
        match self {
            BodyOf::Whole(len) => len,
            BodyOf::Streamed(_) => 0,
        }
    }
}

/// One header line: where its name and value lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    name: Range<usize>,
    value: Range<usize>,
}

/// Whether `target` begins as an `http://` or `https://` URL, in any case.
fn is_http_url(target: &str) -> bool {
    let starts = |prefix: &str| {
        target
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    starts("http://") || starts("https://")
}

/// What is wrong with a malformed request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    HeaderName,
    HeaderValue,
    NewLine,
    Token,
    NotHttp,
    /// Parts the parser let through that the `http` crate does not take.
    NotValid,
    CodingInHttp10,
    NotChunkedLast,
    LengthNotANumber,
    LengthsDisagree,
}

impl Malformed {
    /// What httparse's syntax error means.
    fn from_syntax(error: httparse::Error) -> Self {
        match error {
            httparse::Error::HeaderName => Malformed::HeaderName,
            httparse::Error::HeaderValue => Malformed::HeaderValue,
            httparse::Error::NewLine => Malformed::NewLine,
            httparse::Error::Token => Malformed::Token,
            _ => Malformed::NotHttp,
        }
    }

    /// For the client's 400.
    fn describe(self) -> &'static str {
        match self {
            Malformed::HeaderName => "a header name is empty or holds a character it may not",
            Malformed::HeaderValue => "a header value holds a control character",
            Malformed::NewLine => "a line ends in CR without LF",
            Malformed::Token => "the method or the target holds a character it may not",
            Malformed::NotHttp => "not an HTTP/1.1 request line and header lines",
            Malformed::NotValid => "the target or a header is not valid HTTP",
            Malformed::CodingInHttp10 => "an HTTP/1.0 request may not carry a Transfer-Encoding",
            // Without chunked last, nothing says where the body ends (RFC 9112, section 6.3).
            Malformed::NotChunkedLast => "the Transfer-Encoding does not end in `chunked`",
            Malformed::LengthNotANumber => "the Content-Length is not a decimal number",
            Malformed::LengthsDisagree => "the Content-Length values disagree",
        }
    }
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
        Ok(httparse::Status::Complete(len)) if len > MAX_HEADER_BYTES => {
            return Parsed::Refused(Refusal::TooLarge);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEADER_BYTES => {
            return Parsed::Refused(Refusal::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Refused(Refusal::TooLarge),
        // HTTP/2's preface is hyper's to read (`PRI * HTTP/2.0`, then the rest of it).
        Err(httparse::Error::Version) if buf.starts_with(b"PRI * HTTP/2.0") => {
            return Parsed::Http2;
        }
        Err(httparse::Error::Version) if names_a_version(buf) => {
            return Parsed::Refused(Refusal::Version);
        }
        Err(error) => return Parsed::Refused(Refusal::Malformed(Malformed::from_syntax(error))),
    };
    // A complete head has all three; httparse reads only HTTP/1.0 and HTTP/1.1.
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Parsed::Refused(Refusal::Malformed(Malformed::Token));
    };
    let http10 = minor == 0;
    if method == "CONNECT" {
        return Parsed::Refused(Refusal::Connect);
    }
    // A path, an http(s) URL (absolute form, which a server must accept: RFC 9112, section
    // 3.2.2), or `OPTIONS *`. Anything else an instance could read otherwise than the gateway.
    if !(target.starts_with('/') || is_http_url(target) || (target == "*" && method == "OPTIONS")) {
        return Parsed::Refused(Refusal::Target(if target == "*" {
            BadTarget::Asterisk
        } else if target.contains("://") {
            BadTarget::Scheme
        } else {
            BadTarget::NotAPath
        }));
    }
    let offset = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + part.len()
    };
    spans.clear();
    // One allocation for all the lines, rather than a few as the list grows.
    spans.reserve(request.headers.len());
    let mut length = ContentLength::default();
    let mut codings = TransferCodings::default();
    let mut close = false;
    let mut keep_alive = false;
    let mut expect_continue = false;
    let mut upgrade = false;
    // Where a `Content-Length` line lies among the spans, in case chunked overrides it.
    let mut length_lines = 0;
    for line in request.headers.iter() {
        let name = line.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                length.add(line.value);
                length_lines += 1;
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => codings.add(line.value),
            // `100-continue` is answered here, so it is not passed on; an HTTP/1.0 client's is
            // ignored (RFC 9110, section 10.1.1). Any other expectation is ignored too, as hyper
            // ignores it: the request goes on without it (`codec::is_framing_header`).
            6 if name.eq_ignore_ascii_case(b"expect")
                && line
                    .value
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue") =>
            {
                expect_continue = !http10;
                continue;
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => upgrade = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in connection_tokens(line.value) {
                    match token {
                        ConnectionToken::Close => close = true,
                        ConnectionToken::KeepAlive => keep_alive = true,
                        ConnectionToken::Upgrade => upgrade = true,
                        ConnectionToken::Names(_) => {}
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
    let body = match body_of(length, codings, http10) {
        Ok(body) => body,
        Err(refusal) => return Parsed::Refused(refusal),
    };
    if let BodyOf::Streamed(BodyFraming::Chunked) = body {
        if length_lines > 0 {
            // Chunked overrides a length sent beside it, which must not be passed on; and such
            // a request may be an attempt at smuggling, so its connection ends after the
            // answer (RFC 9112, section 6.1).
            spans.retain(|span| !buf[span.name.clone()].eq_ignore_ascii_case(b"content-length"));
            close = true;
        }
    }
    Parsed::Request(Head {
        len,
        method: offset(method.as_bytes()),
        target: offset(target.as_bytes()),
        body,
        // HTTP/1.0 keeps a connection only when asked to (RFC 9112, section 9.3). An upgrade
        // the handler does not take ends its connection: the client may already speak the
        // protocol it asked for.
        close: close || (http10 && !keep_alive) || upgrade,
        http10,
        expect_continue,
        upgrade: upgrade && !http10,
    })
}

/// How a request's body follows its head, by RFC 9112, section 6: a refusal for framing that
/// readers could take differently, or that the gateway cannot pass on unchanged.
fn body_of(
    length: ContentLength,
    codings: TransferCodings,
    http10: bool,
) -> Result<BodyOf, Refusal> {
    if codings.was_sent() {
        if http10 {
            return Err(Refusal::Malformed(Malformed::CodingInHttp10));
        }
        if !codings.ends_chunked() {
            return Err(Refusal::Malformed(Malformed::NotChunkedLast));
        }
        return match codings.verdict() {
            Codings::Chunked => Ok(BodyOf::Streamed(BodyFraming::Chunked)),
            _ => Err(Refusal::Coding),
        };
    }
    match length.get() {
        None => Ok(BodyOf::Whole(0)),
        Some(Ok(length)) => Ok(match usize::try_from(length) {
            Ok(length) if length <= MAX_WHOLE_BODY => BodyOf::Whole(length),
            _ => BodyOf::Streamed(BodyFraming::Length(length)),
        }),
        Some(Err(BadLength::NotANumber)) => Err(Refusal::Malformed(Malformed::LengthNotANumber)),
        Some(Err(BadLength::Conflicting)) => Err(Refusal::Malformed(Malformed::LengthsDisagree)),
    }
}

/// Whether the request line at the start of `buf` ends in a version of the form `HTTP/x.y`:
/// one the gateway does not speak, rather than no version at all.
fn names_a_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let version = line
        .trim_ascii_end()
        .rsplit(|&b| b == b' ')
        .next()
        .unwrap_or_default();
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// The request `head` describes, with `body`, and with header values pointing into `bytes`
/// (the head) rather than copied; `None` if a part the parser let through is not valid for the
/// `http` crate.
fn build_request<B>(bytes: &Bytes, head: &Head, spans: &[Span], body: B) -> Option<Request<B>> {
    let method = Method::from_bytes(&bytes[head.method.clone()]).ok()?;
    let uri = Uri::from_maybe_shared(bytes.slice(head.target.clone())).ok()?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    for span in spans {
        let name = HeaderName::from_bytes(&bytes[span.name.clone()]).ok()?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(span.value.clone())).ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if head.http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    Some(request)
}

/// Reads whatever `wire` holds as a client's request heads, the way a connection does: each
/// head this path serves becomes a request, whose body must lie within `wire`. Returns how many
/// requests it made before the rest was incomplete, refused or left to hyper. For fuzzing: it
/// must never panic, and a head must never claim bytes that are not there.
pub fn read_requests(wire: &[u8]) -> usize {
    let mut buf = BytesMut::from(wire);
    let mut made = 0;
    while let Some(request) = next_whole_request(&mut buf) {
        if !request.headers().contains_key(header::TRANSFER_ENCODING) {
            assert_eq!(
                request.body().size_hint().exact(),
                request
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .map_or(Some(0), |length| parse_decimal(length.as_bytes()))
            );
        }
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
    let (bytes, body) = match head.body {
        BodyOf::Whole(len) => {
            if buf.len() < head.len + len {
                return None;
            }
            let bytes = buf.split_to(head.len).freeze();
            (bytes, buf.split_to(len).freeze())
        }
        // Decoded as the connection would feed it, from what is there.
        BodyOf::Streamed(framing) => {
            let mut rest = BytesMut::from(&buf[head.len..]);
            let mut decoder = BodyDecoder::new(framing);
            let mut body = BytesMut::new();
            loop {
                match decoder.decode(&mut rest) {
                    Ok(Decoded::Data(data)) => body.extend_from_slice(&data),
                    Ok(Decoded::End(_)) => break,
                    Ok(Decoded::NeedMore) | Err(_) => return None,
                }
            }
            let bytes = buf.split_to(head.len).freeze();
            *buf = rest;
            (bytes, body.freeze())
        }
    };
    build_request(&bytes, &head, &spans, ClientBody::whole(body))
}

/// One client connection on this path: all it holds while it waits for a request.
pub(crate) struct Client<W> {
    stream: W,
    read: BytesMut,
    /// Ticks every header read timeout while the connection waits for a request. Boxed with
    /// its period: every idle connection's task holds room for what is not.
    idle: Box<Interval>,
    /// A request head arrived since `idle` last ticked.
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

impl<W: Wire> Client<W> {
    /// A connection from a client on `stream`, which is let go once it sends no whole head for
    /// a full `timeout` period, or once `draining` turns true between requests.
    pub(crate) fn new(stream: W, timeout: Duration, draining: watch::Receiver<bool>) -> Self {
        let mut idle = tokio::time::interval_at(Instant::now() + timeout, timeout);
        // After a request that outlasted a tick, the next tick is one period after the late one.
        idle.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Client {
            stream,
            read: BytesMut::new(),
            idle: Box::new(idle),
            progress: false,
            draining,
        }
    }

    /// The connection, with the bytes of it already read in front, for hyper to serve from
    /// there; with the drain signal and the header read timeout.
    pub(crate) fn into_hand_over(self) -> (Prefixed<W::Stream>, watch::Receiver<bool>, Duration) {
        let stream = Prefixed::new(self.read.freeze(), self.stream.into_stream());
        (stream, self.draining, self.idle.period())
    }

    /// The connection, and what was read of it and not yet taken.
    pub(crate) fn into_parts(self) -> (W::Stream, Bytes) {
        (self.stream.into_stream(), self.read.freeze())
    }

    /// Reads more of the next request. A client that sends no whole head for a full `timeout`
    /// period (so after between one and two of them) is let go.
    ///
    /// The read buffer is taken only once bytes are there to read: between requests a
    /// connection holds none. The wait is polled by hand rather than with `select!` over
    /// `readable()`: every idle connection's task holds room for it.
    async fn read_more(&mut self) -> io::Result<Read> {
        // Shutting down closes a connection between requests; one whose request has begun to
        // arrive gets the rest of it, and its answer.
        let may_close = self.read.is_empty();
        let Client {
            stream,
            read,
            idle,
            progress,
            draining,
        } = self;
        let arrival = poll_fn(|cx| poll_arrival(cx, stream, read, idle, progress));
        if !may_close {
            return arrival.await;
        }
        tokio::select! {
            biased;
            read = arrival => read,
            _ = draining.changed() => Ok(Read::Close),
        }
    }

    /// What was read and not yet taken as a request: the head a refusal is about.
    pub(crate) fn unread(&self) -> &[u8] {
        &self.read
    }

    fn draining(&self) -> bool {
        *self.draining.borrow()
    }
}

/// Serves requests on `client`'s connection until the client closes it, asks to, sends a head
/// this path refuses, is switched to another protocol, or starts HTTP/2, which hyper serves.
pub(crate) async fn serve<W: Wire>(
    client: &mut Client<W>,
    handler: &impl Handler,
    connection: &Connection,
) -> Result<Ended, BoxError> {
    let mut spans = Vec::new();
    loop {
        let head = loop {
            match parse_head(&client.read, &mut spans) {
                Parsed::Request(head) => break head,
                Parsed::Http2 => return Ok(Ended::Http2),
                Parsed::Refused(refusal) => return Ok(Ended::Refused(refusal)),
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
        let has_body = head.body != BodyOf::Whole(0);
        if head.expect_continue && has_body && client.read.len() == head.len {
            wire::write_all(&client.stream, b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let whole = head.body.whole_len();
        while client.read.len() < head.len + whole {
            if let Read::Close = client.read_more().await? {
                return Ok(Ended::Closed);
            }
        }

        let bytes = client.read.split_to(head.len).freeze();
        let body = client.read.split_to(whole).freeze();
        let (body, feed) = match head.body {
            BodyOf::Whole(_) => (ClientBody::whole(body), None),
            BodyOf::Streamed(framing) => {
                let (feed, body) = Feed::new(framing);
                (body, Some(feed))
            }
        };
        let Some(request) = build_request(&bytes, &head, &spans, body) else {
            return Ok(Ended::Refused(Refusal::Malformed(Malformed::NotValid)));
        };
        // The head's bytes live on in the request's header values only; this handle to them
        // would otherwise keep the read buffer shared, and growing it would then copy.
        drop(bytes);
        let close = head.close;
        // A switch is offered only to a request read whole: the connection's reads must be the
        // tunnel's alone once it is handed on.
        let upgrade = head.upgrade && matches!(head.body, BodyOf::Whole(_));
        // Boxed: a request in flight needs far more state than a connection waiting for one,
        // and thousands of connections wait. The price is an allocation per request.
        let exchange =
            boxed_in_place(|| client.exchange(handler, connection, request, close, feed, upgrade));
        let keep_alive = match exchange.await? {
            Exchanged::Answered { keep_alive } => keep_alive,
            Exchanged::Left => return Ok(Ended::Closed),
            Exchanged::Switched(pending) => return Ok(Ended::Switched(pending)),
        };
        // The response is on its way: a good moment to let others run.
        crate::serving_thread::offer_cpu();
        if !keep_alive {
            // A clean end: the client reads the response to its last byte, then the close.
            let _ = wire::shutdown(&client.stream).await;
            return Ok(Ended::Closed);
        }
        // A connection waiting for its next request holds no buffer: the allocator hands the
        // same memory to the next request that needs it.
        if client.read.is_empty() {
            client.read = BytesMut::new();
            spans = Vec::new();
        }
    }
}

/// Answers a request head this path refuses with `error` and `Connection: close`, then ends
/// the connection as an early answer does: the gateway's side is shut first and what still
/// arrives is read and dropped for a while, so the client reads the answer rather than losing
/// it to a reset. Nothing of the head reaches an instance.
pub(crate) async fn refuse<W: Wire>(client: &Client<W>, error: ProxyError) {
    let reply = Reply::from(error.to_response().map(Full::new));
    let answer = AnswerTo {
        head: false,
        http10: false,
        close: true,
    };
    let mut out = Vec::with_capacity(HEAD_ROOM);
    let written = write_response(&client.stream, &mut out, reply, answer, None).await;
    if written.is_err() || wire::shutdown(&client.stream).await.is_err() {
        return;
    }
    let stream = &client.stream;
    let mut scratch = BytesMut::new();
    let drained = poll_fn(|cx| {
        loop {
            scratch.clear();
            match std::task::ready!(stream.poll_read_into(cx, &mut scratch)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
    });
    let _ = tokio::time::timeout(LINGER, drained).await;
}

/// The future `make` makes, in a box taken before it is made: the future can then be written
/// straight into the box, rather than made on the stack and copied there.
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// How one request's exchange ended.
enum Exchanged {
    /// The answer is written; the connection may carry another request if `keep_alive`.
    Answered { keep_alive: bool },
    /// The client left before the answer.
    Left,
    /// The answer was a 101, written: the connection is the new protocol's.
    Switched(Pending),
}

impl<W: Wire> Client<W> {
    /// Answers `request` and writes the answer. With `upgrade`, the request carries an
    /// [`OnUpgrade`](super::OnUpgrade), and a 101 answer hands the connection on.
    #[allow(clippy::manual_async_fn)]
    fn exchange<'a>(
        &'a mut self,
        handler: &'a impl Handler,
        connection: &'a Connection,
        mut request: Request<ClientBody>,
        close: bool,
        mut feed: Option<Feed>,
        upgrade: bool,
    ) -> impl Future<Output = Result<Exchanged, BoxError>> + 'a {
        // An async block, not an async fn, and the handler's future dropped once it answered:
        // this state is allocated and copied for every request, and an async fn would keep
        // room for its arguments twice, and for the handler's future beside the answer's.
        async move {
            // Made here, where the request already lives, so that it is not moved to be
            // changed.
            let switch = upgrade.then(|| {
                let (pending, offer) = handover::pending();
                request.extensions_mut().insert(offer);
                pending
            });
            let to_head = request.method() == Method::HEAD;
            let http10 = request.version() == Version::HTTP_10;
            let Client {
                stream,
                read,
                draining,
                ..
            } = self;
            let stream = &*stream;

            // Wait for the answer, feeding the request body meanwhile. Once the body is in,
            // watch the client: bytes of a next request are kept (up to a bound), and a client
            // that closes the connection cancels the request.
            let mut hints = EarlyHints::default();
            let reply = {
                let mut answer = pin!(handler.call(request, connection.clone()));
                let answered = poll_fn(|cx| {
                    loop {
                        // HTTP/1.0 has no interim answers (RFC 9110, section 15.2): no slot is
                        // opened for one.
                        let opened = (!http10).then(interim::open);
                        let polled = answer.as_mut().poll(cx);
                        if let Some(opened) = opened {
                            hints.take(opened.close());
                        }
                        if let Poll::Ready(reply) = polled {
                            return Poll::Ready(Ok(Some(reply.into_reply())));
                        }
                        if let Poll::Ready(Err(error)) = hints.poll_send(cx, stream) {
                            return Poll::Ready(Err(error));
                        }
                        if let Some(feed) = feed.as_mut().filter(|feed| !feed.is_over()) {
                            match feed.poll(cx, stream, read) {
                                Poll::Ready(_) => continue,
                                Poll::Pending => return Poll::Pending,
                            }
                        }
                        return match poll_client_left(cx, stream, read) {
                            Poll::Ready(Ok(())) => Poll::Ready(Ok(None)),
                            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                            Poll::Pending => Poll::Pending,
                        };
                    }
                });
                let Some(reply) = answered.await? else {
                    return Ok(Exchanged::Left);
                };
                reply
            };
            if !hints.unsent.is_empty() {
                wire::write_all(stream, &hints.unsent).await?;
            }

            let broken = feed.as_ref().is_some_and(|feed| feed.broken);
            let close = close || *draining.borrow() || broken;
            let mut out = Vec::with_capacity(HEAD_ROOM);
            let answer = AnswerTo {
                head: to_head,
                http10,
                close,
            };
            if let Some(switch) =
                switch.filter(|_| reply.status() == StatusCode::SWITCHING_PROTOCOLS)
            {
                write_response(stream, &mut out, reply, answer, None).await?;
                return Ok(Exchanged::Switched(switch));
            }
            let Some(feed) = feed.as_mut().filter(|feed| !feed.is_over()) else {
                let keep_alive =
                    write_response(stream, &mut out, reply, answer, Some(read)).await?;
                return Ok(Exchanged::Answered { keep_alive });
            };

            // The answer came before the whole body (an instance that answers early, or refuses
            // the request): the body goes on being fed while the answer is written, as the
            // handler may still be sending it on, and the client may not read before it has sent.
            // A rest too large to read through (or of unknown size) ends the connection instead.
            let linger = feed
                .still_to_come(read.len())
                .is_none_or(|bytes| bytes > MAX_DRAINED_BODY);
            let answer = AnswerTo {
                close: close || linger,
                ..answer
            };
            // Boxed: this path is rare, and the state of every request holds room for what is
            // not.
            let mut writing = Box::pin(write_response(stream, &mut out, reply, answer, None));
            let written = poll_fn(|cx| {
                if !feed.is_over() {
                    let _ = feed.poll(cx, stream, read);
                }
                writing.as_mut().poll(cx)
            })
            .await?;
            drop(writing);
            if linger {
                // Closing with unread bytes would reset the connection, and a client that has
                // not yet read its answer would lose it to the reset. So the gateway's side is
                // shut first, and what still arrives is fed on (or thrown away) for a while.
                let _ = wire::shutdown(stream).await;
                let rest = poll_fn(|cx| feed.poll(cx, stream, read));
                let _ = tokio::time::timeout(LINGER, rest).await;
                return Ok(Exchanged::Answered { keep_alive: false });
            }
            // Then the rest is read to its end (for the handler if it still takes it, thrown away
            // if not), so the connection can carry the client's next request; bounded in time, as
            // on the instance's side.
            let rest = poll_fn(|cx| feed.poll(cx, stream, read));
            let whole = tokio::time::timeout(REST_OF_REQUEST_TIMEOUT, rest).await;
            Ok(Exchanged::Answered {
                keep_alive: written && whole == Ok(true),
            })
        }
    }
}

/// 103 Early Hints an instance sent before its answer, on their way to the client.
#[derive(Default)]
struct EarlyHints {
    /// Heads not yet written, whole or in part.
    unsent: Vec<u8>,
    /// Bytes of hints taken for this request so far.
    taken: usize,
}

impl EarlyHints {
    /// Takes `heads` to send, unless the request's hints would then pass the limit of one
    /// request head: an instance that sends hints without end gets no more of them through.
    fn take(&mut self, heads: Vec<u8>) {
        if heads.is_empty() || self.taken + heads.len() > MAX_HEADER_BYTES {
            return;
        }
        self.taken += heads.len();
        if self.unsent.is_empty() {
            self.unsent = heads;
        } else {
            self.unsent.extend_from_slice(&heads);
        }
    }

    /// Writes what is unsent; `Ready(Ok)` once all of it is on its way.
    fn poll_send(&mut self, cx: &mut Context<'_>, stream: &impl Wire) -> Poll<io::Result<()>> {
        if self.unsent.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while !self.unsent.is_empty() {
            match std::task::ready!(stream.poll_write(cx, &self.unsent))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => drop(self.unsent.drain(..n)),
            }
        }
        stream.poll_flush(cx)
    }
}

/// Waits for bytes of a request on `stream`, read onto `read`. `Close` once the client closed
/// the connection, or sent no whole head in a full period of `idle` since it last ticked.
fn poll_arrival(
    cx: &mut Context<'_>,
    stream: &impl Wire,
    read: &mut BytesMut,
    idle: &mut Interval,
    progress: &mut bool,
) -> Poll<io::Result<Read>> {
    loop {
        match stream.poll_read_into(cx, read) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Read::Close)),
            Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Read::More)),
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => {}
        }
        std::task::ready!(idle.poll_tick(cx));
        if !std::mem::take(progress) {
            return Poll::Ready(Ok(Read::Close));
        }
    }
}

/// Watches a client whose request is in while its answer is awaited: `Ready` once it closed
/// the connection. Bytes of a next request are kept, up to a bound.
fn poll_client_left(
    cx: &mut Context<'_>,
    stream: &impl Wire,
    read: &mut BytesMut,
) -> Poll<io::Result<()>> {
    loop {
        if read.len() > MAX_HEADER_BYTES {
            return Poll::Pending;
        }
        if std::task::ready!(stream.poll_read_into(cx, read))? == 0 {
            return Poll::Ready(Ok(()));
        }
    }
}

/// The rest of a request body, read from the connection while the request is handled, and fed
/// to the handler's body one frame at a time.
struct Feed {
    decoder: BodyDecoder,
    /// `None` once the body ended, whole or not.
    feed: Option<BodyFeed>,
    /// A frame waiting for the body to take the one before.
    pending: Option<Result<Frame<Bytes>, BoxError>>,
    /// The body failed: the client closed mid-body or broke its framing, so the connection
    /// cannot carry another request.
    broken: bool,
}

impl Feed {
    /// A feed for a body framed as `framing`, and the body it feeds.
    fn new(framing: BodyFraming) -> (Self, ClientBody) {
        let decoder = BodyDecoder::new(framing);
        let (feed, body) = ClientBody::fed(decoder.remaining());
        let feed = Feed {
            decoder,
            feed: Some(feed),
            pending: None,
            broken: false,
        };
        (feed, body)
    }

    /// Bytes of the body not yet read from the connection, given the `buffered` bytes read and
    /// not yet decoded; `None` for a chunked body.
    fn still_to_come(&self, buffered: usize) -> Option<u64> {
        let remaining = self.decoder.remaining()?;
        Some(remaining.saturating_sub(buffered as u64))
    }

    /// Whether the body ended, whole or not.
    fn is_over(&self) -> bool {
        self.feed.is_none()
    }

    /// Reads and feeds until the body ends: `Ready(true)` if whole, `Ready(false)` if it
    /// failed. Once the handler drops the body, the rest is read and thrown away.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        stream: &impl Wire,
        read: &mut BytesMut,
    ) -> Poll<bool> {
        loop {
            if self.pending.is_some() {
                if let Some(feed) = self.feed.as_mut()
                    && feed.poll_send(cx, &mut self.pending).is_pending()
                {
                    return Poll::Pending;
                }
                self.pending = None;
            }
            if self.broken {
                self.feed = None;
                return Poll::Ready(false);
            }
            if self.decoder.is_done() {
                if let Some(feed) = self.feed.take() {
                    feed.finish();
                }
                return Poll::Ready(true);
            }
            match self.decoder.decode(read) {
                Ok(Decoded::Data(data)) => {
                    self.pending = Some(Ok(Frame::data(data)));
                    continue;
                }
                Ok(Decoded::End(trailers)) => {
                    self.pending = trailers.map(|trailers| Ok(Frame::trailers(trailers)));
                    continue;
                }
                Ok(Decoded::NeedMore) => {}
                Err(malformed) => {
                    self.fail(malformed.to_string().into());
                    continue;
                }
            }
            // A body in flight reads straight into the buffer, in large pieces: each becomes
            // one frame, handed on without another copy.
            if read.capacity() - read.len() < MIN_READ_ROOM {
                read.reserve(BODY_READ_SIZE);
            }
            match stream.poll_read_into(cx, read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => self.fail("the client closed the connection mid-body".into()),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => self.fail(error.into()),
            }
        }
    }

    fn fail(&mut self, error: BoxError) {
        self.broken = true;
        self.pending = Some(Err(error));
    }
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// By the end of the connection: a body of unknown length for an HTTP/1.0 client.
    UntilClose,
}

/// What an answer's head says besides the answer itself: whom it answers, and whether the
/// connection ends after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AnswerTo {
    /// A HEAD request: no body follows the head.
    pub(crate) head: bool,
    /// An HTTP/1.0 client, which reads no chunks and keeps the connection only if told.
    pub(crate) http10: bool,
    /// The connection ends after this answer.
    pub(crate) close: bool,
}

/// Writes the head of an answer into `out`: the status line, the handler's headers, an
/// instance's lines as they came, and the framing this loop states itself. `exact` is the
/// body's size if known. Returns the body's framing, and whether the connection closes after.
pub(crate) fn encode_response_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    lines: Option<&crate::http1::HeaderBlock>,
    exact: Option<u64>,
    to: AnswerTo,
) -> (Framing, bool) {
    let AnswerTo {
        head: to_head,
        http10,
        close,
    } = to;
    let status = parts.status;
    // After a 101 the connection speaks another protocol, or ends; its head says `upgrade`.
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut close = close;
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
        None if http10 => {
            close = true;
            Framing::UntilClose
        }
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
    if close && !closing && !switching {
        out.extend_from_slice(b"connection: close\r\n");
    }
    // An HTTP/1.0 client closes after the answer unless told otherwise (RFC 9112, section 9.3).
    if http10 && !close && !closing && !switching {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    let close = close || closing || switching;
    out.extend_from_slice(b"\r\n");
    (framing, close)
}

/// Writes `response`; `Ok(true)` if the connection may carry another request. With `watch`,
/// the connection's read buffer, a client that closes the connection while the body waits ends
/// the answer, and bytes of its next request are kept there; without, the connection's reads
/// are someone else's (the request body is still coming).
async fn write_response<B>(
    stream: &impl Wire,
    out: &mut Vec<u8>,
    reply: Reply<B>,
    to: AnswerTo,
    mut watch: Option<&mut BytesMut>,
) -> Result<bool, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (response, lines) = reply.into_parts();
    let (parts, body) = response.into_parts();
    let mut body = pin!(body);
    let (framing, close) =
        encode_response_head(out, &parts, lines.as_ref(), body.size_hint().exact(), to);
    if to.head || framing == Framing::None {
        wire::write_all(stream, out).await?;
        return Ok(!close);
    }

    let mut sent = 0u64;
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
                    wire::write_all(stream, out).await?;
                    out.clear();
                }
                next_frame_unless_client_left(stream, &mut next, &mut watch).await?
            }
        };
        let Some(frame) = frame else { break };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                // What came before the failure still goes out, so the client sees the answer
                // begin and then end short of its framing, rather than no answer at all.
                let _ = wire::write_all(stream, out).await;
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
            wire::write_all(stream, out).await?;
            out.clear();
        }
    }
    match framing {
        Framing::Length(length) if sent < length => {
            wire::write_all(stream, out).await?;
            return Err("response body shorter than its content-length".into());
        }
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    wire::write_all(stream, out).await?;
    Ok(!close)
}

/// Waits for the body's next frame, but gives up when the client closes the connection: a
/// stream that is quiet for minutes (server-sent events, a slow generation) must not keep an
/// instance working for a client that is gone. Bytes of a next request are read onto `watch`
/// meanwhile; once they fill a request head's limit, the client is no longer watched.
async fn next_frame_unless_client_left<T>(
    stream: &impl Wire,
    next: &mut impl FnMut(&mut Context<'_>) -> Poll<Option<T>>,
    watch: &mut Option<&mut BytesMut>,
) -> Result<Option<T>, BoxError> {
    poll_fn(|cx| {
        if let Poll::Ready(frame) = next(cx) {
            return Poll::Ready(Ok(frame));
        }
        while let Some(read) = watch.as_deref_mut() {
            if read.len() > MAX_HEADER_BYTES {
                *watch = None;
                break;
            }
            match std::task::ready!(stream.poll_read_into(cx, read)) {
                Ok(0) => {
                    return Poll::Ready(Err("the client closed the connection mid-answer".into()));
                }
                Ok(_) => {}
                Err(error) => return Poll::Ready(Err(error.into())),
            }
        }
        Poll::Pending
    })
    .await
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
        assert_eq!(parsed.body, BodyOf::Whole(3));
        assert!(!parsed.close);
        let lines: Vec<(&str, &str)> = spans
            .iter()
            .map(|span| (&text[span.name.clone()], &text[span.value.clone()]))
            .collect();
        assert_eq!(lines, [("Host", "g"), ("Content-Length", "3")]);

        let (closing, _) = head("GET / HTTP/1.1\r\nconnection: keep-alive, Close\r\n\r\n");
        assert!(closing.close);
        assert_eq!(closing.body, BodyOf::Whole(0));
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
    fn only_http2_is_left_to_hyper() {
        assert_eq!(parse("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Parsed::Http2);
        assert_eq!(parse("PRI * HTTP/2.0\r\n"), Parsed::Http2);
    }

    #[test]
    fn an_upgrade_is_served_here_and_is_the_last_request_unless_switched() {
        let (websocket, _) =
            head("GET /ws HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n");
        assert!(websocket.upgrade && websocket.close);
        // HTTP/1.0 has no upgrades (RFC 9110, section 7.8).
        let (http10, _) = head("GET /ws HTTP/1.0\r\nupgrade: websocket\r\n\r\n");
        assert!(!http10.upgrade && http10.close);
        // The same rules as for any other head: an upgrade whose framing is refused is refused.
        assert_eq!(
            parse("GET /ws HTTP/1.1\r\nupgrade: websocket\r\ncontent-length: x\r\n\r\n"),
            Parsed::Refused(Refusal::Malformed(Malformed::LengthNotANumber))
        );
    }

    #[test]
    fn framing_targets_and_versions_readers_could_take_differently_are_refused_here() {
        use Malformed::*;
        for (text, refusal) in [
            (
                "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
                Refusal::Malformed(CodingInHttp10),
            ),
            (
                "POST / HTTP/1.0\r\ncontent-length: 1\r\ntransfer-encoding: identity\r\n\r\n",
                Refusal::Malformed(CodingInHttp10),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Refusal::Coding,
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
                Refusal::Coding,
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                Refusal::Malformed(NotChunkedLast),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: \r\ncontent-length: 3\r\n\r\n",
                Refusal::Malformed(NotChunkedLast),
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                Refusal::Malformed(LengthsDisagree),
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 1, 2\r\n\r\n",
                Refusal::Malformed(LengthsDisagree),
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
                Refusal::Malformed(LengthNotANumber),
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
                Refusal::Malformed(LengthNotANumber),
            ),
            (
                "GET ftp://g/ HTTP/1.1\r\n\r\n",
                Refusal::Target(BadTarget::Scheme),
            ),
            (
                "GET g.example:80 HTTP/1.1\r\n\r\n",
                Refusal::Target(BadTarget::NotAPath),
            ),
            (
                "GET score HTTP/1.1\r\n\r\n",
                Refusal::Target(BadTarget::NotAPath),
            ),
            (
                "GET * HTTP/1.1\r\n\r\n",
                Refusal::Target(BadTarget::Asterisk),
            ),
            ("CONNECT g:443 HTTP/1.1\r\n\r\n", Refusal::Connect),
            ("GET / HTTP/1.2\r\n\r\n", Refusal::Version),
            ("GET / HTTP/3.0\r\n\r\n", Refusal::Version),
            ("GET / FTP/1.1\r\n\r\n", Refusal::Malformed(NotHttp)),
        ] {
            assert_eq!(parse(text), Parsed::Refused(refusal), "{text:?}");
        }
    }

    #[test]
    fn chunked_overrides_a_length_which_is_dropped_and_the_connection_ends_after() {
        let text =
            "POST / HTTP/1.1\r\ncontent-length: 3\r\nx: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut spans = Vec::new();
        let Parsed::Request(head) = parse_head(text.as_bytes(), &mut spans) else {
            panic!("{text:?} is served here");
        };
        assert_eq!(head.body, BodyOf::Streamed(BodyFraming::Chunked));
        assert!(head.close);
        let names: Vec<&str> = spans.iter().map(|span| &text[span.name.clone()]).collect();
        assert_eq!(names, ["x", "transfer-encoding"]);
    }

    #[test]
    fn options_asterisk_is_served_here() {
        let Parsed::Request(head) = parse("OPTIONS * HTTP/1.1\r\nhost: g\r\n\r\n") else {
            panic!("OPTIONS * is served here");
        };
        assert!(!head.close);
    }

    #[test]
    fn heads_that_break_the_syntax_or_the_limits_are_refused_here() {
        for text in [
            "NOT HTTP\r\n\r\n",
            "GET / HTTP/1.1\r\nbad name: 1\r\n\r\n",
            "GET / HTTP/1.1\r\n: empty name\r\n\r\n",
            "GET / HTTP/1.1\r\nx: a\x01b\r\n\r\n",
            "GET / HTTP/1.1\r\nx: a\rb\r\n\r\n",
            "GE(T / HTTP/1.1\r\n\r\n",
            "GET /a\x7fb HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(text), Parsed::Refused(Refusal::Malformed(_))),
                "{text:?}: {:?}",
                parse(text)
            );
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "x: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            parse(&many),
            Parsed::Refused(Refusal::TooLarge),
            "too many header lines"
        );
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(
            parse(&long),
            Parsed::Refused(Refusal::TooLarge),
            "a head past the size limit, unfinished"
        );
    }

    #[test]
    fn http10_keeps_the_connection_only_when_asked_and_expects_nothing() {
        let head = |text: &str| match parse(text) {
            Parsed::Request(head) => head,
            other => panic!("{text:?}: {other:?}"),
        };
        let plain = head("GET / HTTP/1.0\r\n\r\n");
        assert!(plain.http10 && plain.close);
        let kept = head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(kept.http10 && !kept.close);
        let both = head("GET / HTTP/1.0\r\nconnection: keep-alive, close\r\n\r\n");
        assert!(both.close);
        // RFC 9110, section 10.1.1: a 100-continue from HTTP/1.0 is ignored, not answered.
        let expecting =
            head("POST / HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n");
        assert!(!expecting.expect_continue);
        assert!(!head("GET / HTTP/1.1\r\n\r\n").http10);
    }

    #[test]
    fn large_and_chunked_bodies_are_streamed_here() {
        let body = |text: &str| match parse(text) {
            Parsed::Request(head) => head.body,
            other => panic!("{text:?}: {other:?}"),
        };
        assert_eq!(
            body("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"),
            BodyOf::Streamed(BodyFraming::Chunked)
        );
        assert_eq!(
            body("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            BodyOf::Streamed(BodyFraming::Chunked)
        );
        assert_eq!(
            body("POST / HTTP/1.1\r\ncontent-length: 65537\r\n\r\n"),
            BodyOf::Streamed(BodyFraming::Length(65537))
        );
        assert_eq!(
            body("POST / HTTP/1.1\r\ncontent-length: 65536\r\n\r\n"),
            BodyOf::Whole(65536)
        );
        // Repeated identical lengths are one length (RFC 9112, section 6.3).
        assert_eq!(
            body("POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n"),
            BodyOf::Whole(1)
        );
    }

    #[test]
    fn the_request_points_into_the_head() {
        let text =
            "POST /score HTTP/1.1\r\nhost: g\r\nx-request-id: abc\r\ncontent-length: 2\r\n\r\n";
        let (parsed, spans) = head(text);
        let bytes = Bytes::from(text);
        let body = ClientBody::whole(Bytes::from_static(b"{}"));
        let request = build_request(&bytes, &parsed, &spans, body).expect("a valid request");
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path(), "/score");
        assert_eq!(request.headers()["x-request-id"], "abc");
        assert_eq!(request.headers().len(), 3);
        assert_eq!(request.body().size_hint().exact(), Some(2));
    }
}
