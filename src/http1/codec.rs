//! HTTP/1.1 on the wire, client side: request heads out, response heads and bodies in
//! (RFC 9112). Pure functions over buffers, so every framing rule is tested without a socket.

use std::io::Write as _;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Version};

use super::header_block::HeaderBlock;
use super::interim;
pub(crate) use super::rules::MAX_HEAD_BYTES;
use super::rules::{
    BadLength, Codings, ConnectionToken, ContentLength, MAX_HEADERS, TransferCodings,
    connection_tokens, is_hop_by_hop_name,
};
/// Longest chunk-size line (size plus extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// A response an instance sent that cannot be read as HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid response from the instance: {0}")]
pub(crate) struct Malformed(pub(crate) &'static str);

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body and no framing header (a GET, say).
    Empty,
    /// `content-length: n`.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// Writes the request line and headers. `host` is the instance's authority as configured;
/// framing headers come from `framing`, never from `headers`; each of `added` replaces any
/// header of its name in `headers`.
pub(crate) fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path: &PathAndQuery,
    host: &str,
    headers: &HeaderMap,
    added: &[(HeaderName, HeaderValue)],
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    let replaced = |name: &HeaderName| added.iter().any(|(added, _)| added == name);
    let kept = headers
        .iter()
        .filter(|(name, _)| !is_framing_header(name) && !replaced(name));
    for (name, value) in kept.chain(added.iter().map(|(name, value)| (name, value))) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Empty => {}
        RequestFraming::Length(length) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Headers the encoder writes itself, or that the gateway settles with the client (`expect`).
pub(crate) fn is_framing_header(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::HOST
        || name == header::EXPECT
}

/// Appends one chunk's size line; the data and its closing CRLF follow.
pub(crate) fn encode_chunk_size(out: &mut Vec<u8>, size: usize) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{size:x}\r\n");
}

/// Appends the last chunk, the trailers if any, and the final CRLF.
pub(crate) fn encode_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    /// The end-to-end headers; hop-by-hop ones are left out.
    pub(crate) headers: HeaderBlock,
    /// How the body that follows is delimited.
    pub(crate) body: BodyFraming,
    /// Whether the connection may carry another request once the body ends.
    pub(crate) keep_alive: bool,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body: a HEAD request, or a 204 or 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the instance closes the connection.
    UntilClose,
    /// `101 Switching Protocols`: the connection now carries another protocol.
    Upgrade,
}

/// Parses a response head at the start of `buf`, consuming it. `Ok(None)` means more bytes are
/// needed. Interim (1xx) responses other than 101 are consumed; a 103 is offered to the client
/// that waits (see [`super::interim`]), with the same headers left out as of a final answer, and
/// the others are dropped: the gateway answers `Expect: 100-continue` itself. The head keeps only
/// end-to-end headers: those about the connection to the instance are read and left out, and
/// so are those named in `own`, which the gateway sets itself.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
    own: &[HeaderName],
) -> Result<Option<ResponseHead>, Malformed> {
    loop {
        match read_head(buf, method, own)? {
            Read::Partial if buf.len() > MAX_HEAD_BYTES => {
                return Err(Malformed("response head larger than 64 KiB"));
            }
            Read::Partial => return Ok(None),
            Read::Interim(length, early_hints) => {
                if early_hints {
                    interim::offer(|out| write_early_hints(out, &buf[..length], own));
                }
                buf.advance(length);
            }
            Read::Final(head, length) => {
                buf.advance(length);
                return Ok(Some(head));
            }
        }
    }
}

/// Writes the 103 whose head is `head` for the client: its status line and its end-to-end
/// headers, by the rules of a final answer's, then the empty line.
fn write_early_hints(out: &mut Vec<u8>, head: &[u8], own: &[HeaderName]) {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    // Read whole once already, by the same parser.
    let Ok(httparse::Status::Complete(_)) = response.parse(head) else {
        return;
    };
    let status = StatusCode::EARLY_HINTS;
    let mut hop = HopHeaders::default();
    for slot in response.headers.iter() {
        if slot.name.eq_ignore_ascii_case("connection") {
            hop.read_connection(slot.value);
        }
    }
    out.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\n");
    for slot in response.headers.iter() {
        let name = slot.name.as_bytes();
        if Role::of(name, status, own) == Role::EndToEnd && !hop.names(name) {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(slot.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// What [`read_head`] found at the start of the buffer.
enum Read {
    /// The head has not all arrived.
    Partial,
    /// An interim (1xx) response of this length, which the final one follows; and whether it
    /// is a 103 Early Hints.
    Interim(usize, bool),
    /// The final response's head, and its length.
    Final(ResponseHead, usize),
}

/// Reads the head at the start of `buf`, if it is all there. The parse runs over the bytes as
/// they are: a head usually arrives in one read, so looking for its end first would only scan
/// it twice.
fn read_head(buf: &[u8], method: &Method, own: &[HeaderName]) -> Result<Read, Malformed> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    ) {
        // A head that arrived whole in one large read is held to the same limit as one that
        // arrives in pieces.
        Ok(httparse::Status::Complete(length)) if length > MAX_HEAD_BYTES => {
            return Err(Malformed("response head larger than 64 KiB"));
        }
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(Read::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Malformed("more than 128 response header lines"));
        }
        Err(_) => return Err(Malformed("response head is not valid HTTP/1.1")),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Malformed("status code out of range"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        // 100 Continue, 103 Early Hints: the final response follows.
        return Ok(Read::Interim(length, status == StatusCode::EARLY_HINTS));
    }
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Connection-level headers are read first: `Connection` may name headers that came before
    // it. The others become the block, in the order received.
    let mut roles = [Role::EndToEnd; MAX_HEADERS];
    let mut hop = HopHeaders::default();
    for (slot, role) in response.headers.iter().zip(roles.iter_mut()) {
        *role = Role::of(slot.name.as_bytes(), status, own);
        match role {
            Role::Connection => hop.read_connection(slot.value),
            Role::TransferEncoding => hop.codings.add(slot.value),
            Role::ContentLength => hop.length.add(slot.value),
            Role::Dropped | Role::EndToEnd => {}
        }
    }
    let body = hop.body_framing(status, method)?;
    // An answer with both a length and a transfer coding is framed by the coding (RFC 9112,
    // section 6.3), but an instance that sends both may mean the other: whatever follows on
    // the connection could be read as the next client's answer, so it carries no other.
    let conflicting = hop.codings.was_sent() && hop.length.get().is_some();
    let keep_alive = body != BodyFraming::UntilClose
        && body != BodyFraming::Upgrade
        && !conflicting
        && hop.keep_alive(version);
    // RFC 9112, section 6.3: a proxy drops a length that the transfer coding overrides. One
    // that does not parse frames nothing here (the framing above failed if it had to).
    let declared = if hop.codings.was_sent() {
        None
    } else {
        hop.length.get().and_then(Result::ok)
    };
    let mut headers = HeaderBlock::new(length, declared);
    for (slot, role) in response.headers.iter().zip(roles) {
        let name = slot.name.as_bytes();
        if role == Role::EndToEnd && !hop.names(name) {
            headers.push(name, slot.value);
        }
    }
    let head = ResponseHead {
        status,
        headers,
        body,
        keep_alive,
    };
    Ok(Read::Final(head, length))
}

/// What a response header is to the gateway, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Read for keep-alive and the headers it names, then left out.
    Connection,
    /// Read for the body's framing, then left out.
    TransferEncoding,
    /// Read for the body's framing; kept apart from the lines, since the writer frames.
    ContentLength,
    /// Another header about this connection, or one the gateway sets itself.
    Dropped,
    /// Passed on to the client.
    EndToEnd,
}

impl Role {
    // Inlined: it is asked of every header of every answer, from the loop that reads them.
    #[inline(always)]
    fn of(name: &[u8], status: StatusCode, own: &[HeaderName]) -> Role {
        // Asked of every header of every answer: the length rules most names out at once.
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        match name.len() {
            10 if is("connection") => Role::Connection,
            14 if is("content-length") => Role::ContentLength,
            17 if is("transfer-encoding") => Role::TransferEncoding,
            // A 101 keeps `Upgrade`: it names the protocol switched to.
            7 if is("upgrade") && status == StatusCode::SWITCHING_PROTOCOLS => Role::EndToEnd,
            _ if is_hop_by_hop_name(name) => Role::Dropped,
            _ if own.iter().any(|own| is(own.as_str())) => Role::Dropped,
            _ => Role::EndToEnd,
        }
    }
}

/// What a response's connection-level headers say: how its body is framed and whether the
/// connection stays open.
#[derive(Debug, Default)]
struct HopHeaders {
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// Other headers `Connection` names, which belong to this connection too.
    named: Vec<HeaderName>,
    /// What `Transfer-Encoding` says.
    codings: TransferCodings,
    /// What `Content-Length` says.
    length: ContentLength,
}

impl HopHeaders {
    fn read_connection(&mut self, value: &[u8]) {
        for token in connection_tokens(value) {
            match token {
                ConnectionToken::Close => self.close = true,
                ConnectionToken::KeepAlive => self.keep_alive = true,
                ConnectionToken::Upgrade => {}
                // Hop-by-hop names are dealt with anyway; `Connection: upgrade` on a 101 must
                // not take its `Upgrade` away.
                ConnectionToken::Names(name) if is_hop_by_hop_name(name) => {}
                ConnectionToken::Names(name) => {
                    if let Ok(name) = HeaderName::from_bytes(name) {
                        self.named.push(name);
                    }
                }
            }
        }
    }

    /// Whether `Connection` named this header, which then belongs to this connection too.
    fn names(&self, name: &[u8]) -> bool {
        self.named
            .iter()
            .any(|named| name.eq_ignore_ascii_case(named.as_str().as_bytes()))
    }

    /// The declared length; an error if its values are bad or disagree.
    fn content_length(&self) -> Option<Result<u64, Malformed>> {
        self.length.get().map(|length| {
            length.map_err(|error| match error {
                BadLength::NotANumber => Malformed("content-length is not a number"),
                BadLength::Conflicting => Malformed("conflicting content-length values"),
            })
        })
    }

    /// RFC 9112, section 6.3.
    fn body_framing(&self, status: StatusCode, method: &Method) -> Result<BodyFraming, Malformed> {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(BodyFraming::Upgrade);
        }
        if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(BodyFraming::Empty);
        }
        // The gateway frames the body anew for the client, which would drop any other coding
        // and change the message: refused, not passed on altered.
        if self.codings.verdict() == Codings::Unsupported {
            return Err(Malformed(
                "the response uses a transfer coding other than chunked, which is not supported",
            ));
        }
        if self.codings.was_sent() {
            // A coding list with nothing in it names no end: the body runs to the close.
            return Ok(if self.codings.ends_chunked() {
                BodyFraming::Chunked
            } else {
                BodyFraming::UntilClose
            });
        }
        Ok(match self.content_length().transpose()? {
            Some(0) => BodyFraming::Empty,
            Some(length) => BodyFraming::Length(length),
            None => BodyFraming::UntilClose,
        })
    }

    fn keep_alive(&self, version: Version) -> bool {
        match version {
            Version::HTTP_10 => self.keep_alive,
            _ => !self.close,
        }
    }
}

/// Reads a response body out of the connection's buffer, one step at a time.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk, this many bytes left.
    ChunkData(u64),
    /// Expecting the CRLF that closes a chunk's data.
    ChunkEnd,
    /// Expecting trailer lines or the final CRLF.
    Trailers,
    Done,
}

/// What one decoding step found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body ended, with trailers if the instance sent any.
    End(Option<HeaderMap>),
    /// More bytes must be read first.
    NeedMore,
}

impl BodyDecoder {
    /// A decoder for a body framed as `framing`.
    pub(crate) fn new(framing: BodyFraming) -> Self {
        let state = match framing {
            BodyFraming::Empty | BodyFraming::Upgrade | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(length) => State::Length(length),
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    /// True once the whole body was decoded.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still expected, when the framing says.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(length) => Some(length),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body out of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End(None)),
                State::Length(left) => {
                    let Some((data, left)) = take_at_most(buf, left) else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(line_end) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(Malformed("chunk-size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_chunk_size(&buf[..line_end])?;
                    buf.advance(line_end + 2);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(left) => {
                    let Some((data, left)) = take_at_most(buf, left) else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Decoded::End(None));
                    }
                    let Some(end) = trailer_section_end(buf)? else {
                        if buf.len() > MAX_HEAD_BYTES {
                            return Err(Malformed("trailers larger than 64 KiB"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let trailers = parse_trailers(&buf[..end])?;
                    buf.advance(end);
                    self.state = State::Done;
                    return Ok(Decoded::End(Some(trailers)));
                }
            }
        }
    }

    /// The connection closed: the end of an until-close body, an error for any other.
    pub(crate) fn on_close(&mut self) -> Result<(), Malformed> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(Malformed("the instance closed the connection mid-body")),
        }
    }
}

/// Up to `left` bytes from the front of `buf`, and how many are still to come; `None` while
/// `buf` is empty.
fn take_at_most(buf: &mut BytesMut, left: u64) -> Option<(Bytes, u64)> {
    if buf.is_empty() {
        return None;
    }
    let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    Some((buf.split_to(take).freeze(), left - take as u64))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    find(buf, b"\r\n")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Where the trailer section at the front of `buf` ends (past its empty line), once it is all
/// there. Every line must end in CRLF and hold no other CR or LF: a parser that took a bare LF
/// for a line end would see the section end elsewhere, and read the bytes after it as another
/// message than this one does.
fn trailer_section_end(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    let mut start = 0;
    while let Some(line_end) = find_crlf(&buf[start..]) {
        let line = &buf[start..start + line_end];
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(Malformed("a bare CR or LF in the trailers"));
        }
        start += line_end + 2;
        if line.is_empty() {
            return Ok(Some(start));
        }
    }
    if buf[start..].contains(&b'\n') {
        return Err(Malformed("a bare LF in the trailers"));
    }
    Ok(None)
}

/// A chunk-size line (RFC 9112, section 7.1): hex digits, then optional extensions after
/// `;` (with optional whitespace before it), which carry nothing the gateway uses. Anything
/// else (a sign, leading whitespace, a bare CR or LF, control bytes) is refused: another parser
/// might read a different size from it.
fn parse_chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let invalid = Malformed("invalid chunk size");
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(invalid);
    }
    let rest = &line[digits..];
    let after_space = rest.trim_ascii_start();
    let whitespace_only = rest[..rest.len() - after_space.len()]
        .iter()
        .all(|&b| b == b' ' || b == b'\t');
    let extensions_ok = match after_space.first() {
        None => rest.is_empty(),
        Some(b';') => after_space
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)),
        Some(_) => false,
    };
    if !whitespace_only || !extensions_ok {
        return Err(invalid);
    }
    line[..digits].iter().try_fold(0u64, |total, &digit| {
        let value = (digit as char)
            .to_digit(16)
            .ok_or(Malformed("invalid chunk size"))?;
        Ok(total * 16 + u64::from(value))
    })
}

fn parse_trailers(block: &[u8]) -> Result<HeaderMap, Malformed> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err(Malformed("invalid trailers")),
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for slot in parsed {
        let name = HeaderName::from_bytes(slot.name.as_bytes())
            .map_err(|_| Malformed("invalid trailer name"))?;
        let value =
            HeaderValue::from_bytes(slot.value).map_err(|_| Malformed("invalid trailer value"))?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

/// Reads `wire` as an instance's answer, fed `step` bytes at a time: the head, then the body to
/// its end. Returns how many body bytes came out. For the fuzz target: malformed input must end
/// in an error, never a panic, a hang or more body than the framing allows; and the early hints
/// passed on must be whole 103 heads, each with no header about a connection or a body.
pub fn read_response_in_steps(wire: &[u8], step: usize, to_head_request: bool) -> usize {
    let opened = interim::open();
    let read = read_response_pieces(wire, step, to_head_request);
    check_early_hints(&opened.close());
    read
}

/// Asserts that `heads` is a run of whole `103 Early Hints` heads that say nothing of a
/// connection or of framing.
fn check_early_hints(mut heads: &[u8]) {
    while !heads.is_empty() {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(length)) = response.parse(heads) else {
            panic!("an early hint that is not a whole head: {heads:?}");
        };
        assert_eq!(response.code, Some(StatusCode::EARLY_HINTS.as_u16()));
        for slot in response.headers.iter() {
            let name = slot.name.as_bytes();
            assert!(
                !is_hop_by_hop_name(name)
                    && !slot.name.eq_ignore_ascii_case("content-length")
                    && HeaderName::from_bytes(name).is_ok()
                    && HeaderValue::from_bytes(slot.value).is_ok(),
                "an early hint passed on {:?}",
                slot.name
            );
        }
        heads = &heads[length..];
    }
}

fn read_response_pieces(wire: &[u8], step: usize, to_head_request: bool) -> usize {
    let method = if to_head_request {
        Method::HEAD
    } else {
        Method::POST
    };
    let mut pieces = wire.chunks(step.max(1));
    let mut buf = BytesMut::new();
    let head = loop {
        match parse_response_head(&mut buf, &method, &[]) {
            Ok(Some(head)) => break head,
            Ok(None) => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => return 0,
            },
            Err(_) => return 0,
        }
    };
    // Every kept line must read back as a header, for clients served by hyper too.
    let lines = head.headers.lines().iter().filter(|&&b| b == b'\n').count();
    assert_eq!(
        head.headers.fields().count(),
        lines,
        "a kept line has no colon"
    );
    let mut map = HeaderMap::new();
    head.headers.clone().append_to(&mut map);
    let declared = usize::from(head.headers.content_length().is_some());
    assert_eq!(
        map.len(),
        lines + declared,
        "a kept line is not a valid header"
    );
    let mut decoder = BodyDecoder::new(head.body);
    let mut total = 0;
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(data)) => {
                assert!(!data.is_empty(), "an empty data frame");
                total += data.len();
            }
            Ok(Decoded::End(_)) => break,
            Ok(Decoded::NeedMore) => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => {
                    let _ = decoder.on_close();
                    break;
                }
            },
            Err(_) => break,
        }
    }
    if let BodyFraming::Length(length) = head.body {
        assert!(total as u64 <= length, "more body than content-length");
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: &Method) -> Result<Option<ResponseHead>, Malformed> {
        parse_response_head(&mut BytesMut::from(text), method, &[])
    }

    /// The head of a valid, complete `text`.
    fn complete(text: &str, method: &Method) -> ResponseHead {
        head(text, method).expect("valid").expect("complete")
    }

    fn lines(parsed: &ResponseHead) -> &str {
        std::str::from_utf8(parsed.headers.lines()).expect("ASCII in these tests")
    }

    fn framing(text: &str) -> BodyFraming {
        complete(text, &Method::POST).body
    }

    /// Feeds `wire` to a decoder in pieces of `step` bytes and collects the body.
    fn decode_all(framing: BodyFraming, wire: &[u8], step: usize) -> (Vec<u8>, Option<HeaderMap>) {
        let mut decoder = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = wire.chunks(step);
        loop {
            match decoder.decode(&mut buf).expect("valid body") {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End(trailers) => return (body, trailers),
                Decoded::NeedMore => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => {
                        decoder.on_close().expect("ends at close");
                        return (body, None);
                    }
                },
            }
        }
    }

    #[test]
    fn a_request_head_carries_the_instance_host_and_its_own_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        headers.insert("x-request-id", HeaderValue::from_static("from-the-client"));
        let mut out = Vec::new();
        encode_request_head(
            &mut out,
            &Method::POST,
            &PathAndQuery::from_static("/score?x=1"),
            "10.0.0.5:5001",
            &headers,
            &[(
                HeaderName::from_static("x-request-id"),
                HeaderValue::from_static("id-7"),
            )],
            RequestFraming::Length(42),
        );
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "POST /score?x=1 HTTP/1.1\r\nhost: 10.0.0.5:5001\r\ncontent-type: application/json\r\n\
             x-request-id: id-7\r\ncontent-length: 42\r\n\r\n"
        );
    }

    #[test]
    fn chunked_request_bodies_end_with_the_last_chunk_and_trailers() {
        let mut out = Vec::new();
        encode_chunk_size(&mut out, 26);
        out.extend_from_slice(b"abcdefghijklmnopqrstuvwxyz\r\n");
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        encode_last_chunk(&mut out, Some(&trailers));
        assert_eq!(
            out,
            b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\ngrpc-status: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_head_split_across_reads_is_parsed_once_complete() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-len");
        assert!(matches!(
            parse_response_head(&mut buf, &Method::GET, &[]),
            Ok(None)
        ));
        buf.extend_from_slice(b"gth: 2\r\nx-model: m\r\n\r\nokNEXT");
        let parsed = parse_response_head(&mut buf, &Method::GET, &[])
            .expect("valid")
            .expect("complete");
        assert_eq!(parsed.status, StatusCode::OK);
        assert_eq!(lines(&parsed), "x-model: m\r\n");
        assert_eq!(parsed.headers.content_length(), Some(2));
        assert_eq!(parsed.body, BodyFraming::Length(2));
        assert!(parsed.keep_alive);
        assert_eq!(&buf[..], b"okNEXT", "only the head is consumed");
    }

    #[test]
    fn interim_responses_are_skipped() {
        let parsed = complete(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
             HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            &Method::POST,
        );
        assert_eq!(parsed.status, StatusCode::CREATED);
        assert_eq!(lines(&parsed), "", "the 103's link is not the answer's");
    }

    #[test]
    fn an_early_hint_is_offered_with_the_final_answers_header_rules() {
        let own = [HeaderName::from_static("x-request-id")];
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nconnection: x-hop\r\nx-hop: 1\r\n\
             keep-alive: 5\r\nx-request-id: theirs\r\ncontent-length: 9\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nlink: </b>\r\n\r\n\
             HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        );
        let opened = interim::open();
        let parsed = parse_response_head(&mut buf, &Method::GET, &own);
        let heads = opened.close();
        assert_eq!(
            parsed.expect("valid").expect("whole").status,
            StatusCode::OK
        );
        assert_eq!(
            String::from_utf8_lossy(&heads),
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nlink: </b>\r\n\r\n",
            "the 100 is the gateway's own to send; connection headers stay behind"
        );
    }

    #[test]
    fn body_framing_follows_rfc_9112() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"),
            BodyFraming::Chunked,
            "transfer-encoding wins over content-length"
        );
        for codings in ["gzip, chunked", "gzip", "chunked, chunked", "chunked, gzip"] {
            let text = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {codings}\r\n\r\n");
            assert!(head(&text, &Method::GET).is_err(), "{codings} is refused");
        }
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), BodyFraming::UntilClose);
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n"),
            BodyFraming::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n"),
            BodyFraming::Length(7)
        );
        assert_eq!(
            framing("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"),
            BodyFraming::Upgrade
        );
        let to_head = complete(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(
            to_head.body,
            BodyFraming::Empty,
            "a HEAD answer has no body"
        );
    }

    #[test]
    fn bad_heads_are_malformed_not_panics() {
        for text in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            "SMTP 220 hello\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(head(text, &Method::GET).is_err(), "{text:?}");
        }
        let whole = format!(
            "HTTP/1.1 200 OK\r\nx: {}\r\ncontent-length: 0\r\n\r\n",
            "a".repeat(2 * MAX_HEAD_BYTES)
        );
        assert_eq!(
            head(&whole, &Method::GET).err(),
            Some(Malformed("response head larger than 64 KiB")),
            "a head that arrived in one read is held to the limit too"
        );
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            head(&endless, &Method::GET).err(),
            Some(Malformed("response head larger than 64 KiB"))
        );
    }

    #[test]
    fn connection_level_headers_are_read_but_not_kept() {
        let chunked = complete(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, x-hop\r\nkeep-alive: timeout=5\r\n\
             x-hop: 1\r\nx-model: m\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\
             trailer: x-checksum\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(chunked.body, BodyFraming::Chunked);
        assert!(
            !chunked.keep_alive,
            "a length beside a transfer coding: the connection carries no other answer"
        );
        assert_eq!(
            lines(&chunked),
            "x-model: m\r\n",
            "no connection headers, nothing Connection names"
        );
        assert_eq!(
            chunked.headers.content_length(),
            None,
            "no length the coding overrides"
        );

        let sized = complete(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nProxy-Connection: close\r\nServer: m\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(lines(&sized), "Server: m\r\n");
        assert_eq!(sized.headers.content_length(), Some(2));

        let switched = complete(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(
            lines(&switched),
            "upgrade: websocket\r\n",
            "a 101 says what it switched to"
        );
    }

    #[test]
    fn kept_lines_are_written_in_one_form_whatever_form_they_came_in() {
        let parsed = complete(
            "HTTP/1.1 200 OK\nX-Model:m\nSet-Cookie:   a=1 \r\nset-cookie: b=2\ncontent-length: 0\n\n",
            &Method::GET,
        );
        assert_eq!(
            lines(&parsed),
            "X-Model: m\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n",
            "names keep their case; values lose surrounding spaces; lines end in CRLF"
        );
        assert!(!parsed.headers.is_dated());
        let dated = complete(
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
            &Method::GET,
        );
        assert!(dated.headers.is_dated());
    }

    #[test]
    fn headers_the_gateway_sets_itself_are_left_out() {
        let own = [
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("azureml-model-deployment"),
        ];
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nX-Request-ID: theirs\r\nx-model: m\r\n\
             azureml-model-deployment: other\r\nx-request-ids: kept\r\ncontent-length: 0\r\n\r\n",
        );
        let parsed = parse_response_head(&mut buf, &Method::GET, &own)
            .expect("valid")
            .expect("complete");
        assert_eq!(lines(&parsed), "x-model: m\r\nx-request-ids: kept\r\n");
    }

    #[test]
    fn a_head_answer_keeps_the_length_it_declares() {
        let parsed = complete(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(parsed.body, BodyFraming::Empty);
        assert_eq!(parsed.headers.content_length(), Some(10));
        let unreadable = head(
            "HTTP/1.1 304 Not Modified\r\ncontent-length: x\r\n\r\n",
            &Method::GET,
        )
        .expect("a length that frames nothing is not an error")
        .expect("complete");
        assert_eq!(unreadable.headers.content_length(), None);
    }

    #[test]
    fn keep_alive_depends_on_version_connection_and_framing() {
        let alive = |text: &str| complete(text, &Method::GET).keep_alive;
        assert!(alive("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!alive(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!alive("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(alive(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!alive("HTTP/1.1 200 OK\r\n\r\n"), "read-until-close");
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\nC\r\nworld, again\r\n0\r\nx-checksum: 9\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (body, trailers) = decode_all(BodyFraming::Chunked, wire, step);
            assert_eq!(body, b"hello world, again", "step {step}");
            assert_eq!(trailers.expect("trailers")["x-checksum"], "9");
        }
        let (body, trailers) = decode_all(BodyFraming::Chunked, b"3\r\nabc\r\n0\r\n\r\n", 1);
        assert_eq!(body, b"abc");
        assert!(trailers.is_none());
    }

    #[test]
    fn length_bodies_stop_at_the_length_and_leave_the_rest() {
        let mut decoder = BodyDecoder::new(BodyFraming::Length(3));
        let mut buf = BytesMut::from("abcHTTP/1.1");
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::End(None)));
        assert_eq!(&buf[..], b"HTTP/1.1");
        let (body, _) = decode_all(BodyFraming::UntilClose, b"all of it", 4);
        assert_eq!(body, b"all of it");
    }

    #[test]
    fn chunk_extensions_and_whitespace_before_them_are_read_past() {
        let (body, trailers) = decode_all(
            BodyFraming::Chunked,
            b"5 ;name=value\r\nhello\r\n1;a;b=\"c d\"\r\n!\r\n0\r\nx-sum: 1\r\n\r\n",
            3,
        );
        assert_eq!(body, b"hello!");
        assert_eq!(trailers.expect("trailers")["x-sum"], "1");
    }

    #[test]
    fn truncated_and_malformed_chunks_are_errors() {
        let mut decoder = BodyDecoder::new(BodyFraming::Length(10));
        let mut buf = BytesMut::from("short");
        assert!(matches!(decoder.decode(&mut buf), Ok(Decoded::Data(_))));
        assert!(decoder.on_close().is_err(), "closed before the length");
        for wire in [
            "zz\r\n",
            "5\r\nhelloXX",
            "12345678901234567\r\n",
            " 5\r\nhello\r\n0\r\n\r\n",
            "+5\r\nhello\r\n0\r\n\r\n",
            "5 \r\nhello\r\n0\r\n\r\n",
            "5\n\r\nhello\r\n0\r\n\r\n",
            "5;a=\x01\r\nhello\r\n0\r\n\r\n",
            "5\r\nhello\r\n0\r\nx-trailer: 1\n\r\nGET / HTTP/1.1\r\n\r\n",
            "5\r\nhello\r\n0\r\nx-trailer: 1\r\nx: \r2\r\n\r\n",
        ] {
            let mut decoder = BodyDecoder::new(BodyFraming::Chunked);
            let mut buf = BytesMut::from(wire);
            let result = loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => continue,
                    other => break other,
                }
            };
            assert!(result.is_err(), "{wire:?}: {result:?}");
        }
    }
}
