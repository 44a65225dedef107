//! A corpus of HTTP/1.1 framing cases on both sides of the gateway, sent as raw bytes.
//!
//! Requests: a logging instance re-reads what the gateway forwarded with a strict RFC 9112
//! reader of its own. Every case is either refused with a precise status (and nothing reaches
//! the instance), or forwarded as exactly one message that no RFC 9112 reader can take another
//! way: one framing, a length of digits or one `chunked`, one `Host`, an origin-form target, the
//! body the client meant. Answers: an instance sends raw bytes, and the client gets a clean
//! answer or a 502, never bytes an instance sent outside its answer.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::tls::TlsGateway;
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as a strict reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Reads one request from the front of `bytes` by RFC 9112 and nothing looser: `Ok(None)` if
/// it is not all there yet, an error naming what another reader could take differently.
fn read_strictly(bytes: &[u8]) -> Result<Option<(Message, usize)>, String> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut slots);
    let head = match request.parse(bytes) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(format!("head: {error}")),
    };
    if !bytes[..head].ends_with(b"\r\n\r\n")
        || bytes[..head]
            .windows(2)
            .any(|w| w[1] == b'\n' && w[0] != b'\r')
    {
        return Err("a line not ended by CRLF".into());
    }
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let message = |body: Vec<u8>| Message {
        method: request.method.unwrap_or_default().to_string(),
        target: request.path.unwrap_or_default().to_string(),
        headers: headers.clone(),
        body,
    };
    let lengths: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    let codings: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .map(|(_, v)| v.as_str())
        .collect();
    if headers.iter().filter(|(n, _)| n == "host").count() != 1 {
        return Err("not exactly one Host".into());
    }
    if !request.path.unwrap_or_default().starts_with('/') {
        return Err("a target not in origin form".into());
    }
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Ok(Some((message(Vec::new()), head))),
        ([length], []) => {
            if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("Content-Length {length:?}"));
            }
            let length: usize = length.parse().map_err(|_| "a length too large")?;
            if bytes.len() < head + length {
                return Ok(None);
            }
            Ok(Some((
                message(bytes[head..head + length].to_vec()),
                head + length,
            )))
        }
        ([], ["chunked"]) => {
            let mut at = head;
            let mut body = Vec::new();
            loop {
                let Some(line_end) = bytes[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                let line =
                    std::str::from_utf8(&bytes[at..at + line_end]).map_err(|_| "chunk line")?;
                let size = line.split(';').next().unwrap_or_default();
                if size.is_empty() || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("chunk size {line:?}"));
                }
                let size = usize::from_str_radix(size, 16).map_err(|_| "chunk size too large")?;
                at += line_end + 2;
                if size == 0 {
                    // Trailer lines, each CRLF-ended, then the empty line.
                    loop {
                        let Some(end) = bytes[at..].windows(2).position(|w| w == b"\r\n") else {
                            return Ok(None);
                        };
                        if bytes[at..at + end].contains(&b'\n') {
                            return Err("a trailer line not ended by CRLF".into());
                        }
                        at += end + 2;
                        if end == 0 {
                            return Ok(Some((message(body), at)));
                        }
                    }
                }
                if bytes.len() < at + size + 2 {
                    return Ok(None);
                }
                body.extend_from_slice(&bytes[at..at + size]);
                if &bytes[at + size..at + size + 2] != b"\r\n" {
                    return Err("chunk data not ended by CRLF".into());
                }
                at += size + 2;
            }
        }
        _ => Err(format!(
            "ambiguous framing: lengths {lengths:?}, codings {codings:?}"
        )),
    }
}

type Log = Arc<Mutex<Vec<Result<Message, String>>>>;

/// An instance that reads every request strictly, logs it, and answers `200 ok`.
async fn logging_instance() -> (String, Log) {
    let log: Log = Arc::default();
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = Arc::clone(&accepted);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buffer = [0u8; 8192];
                loop {
                    match read_strictly(&seen) {
                        Ok(Some((message, used))) => {
                            seen.drain(..used);
                            log.lock().expect("log").push(Ok(message));
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Ok(None) => {}
                        Err(why) => {
                            log.lock().expect("log").push(Err(why));
                            return;
                        }
                    }
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
            });
        }
    });
    (url, log)
}

/// The status of the gateway's final answer to `bytes` (interim 1xx answers passed over), sent
/// on `stream`, a connection of their own; 0 if the connection closed without one.
async fn status_for(mut stream: impl AsyncRead + AsyncWrite + Unpin, bytes: &[u8]) -> u16 {
    stream.write_all(bytes).await.expect("send");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]);
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0);
            if (100..200).contains(&status) {
                seen.drain(..end + 4);
                continue;
            }
            return status;
        }
        match tokio::time::timeout(PATIENCE, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return 0,
            Ok(Ok(n)) => seen.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("no answer in time to {:?}", String::from_utf8_lossy(bytes)),
        }
    }
}

/// What must come of a case.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// This status, and nothing reaches the instance.
    Refused(u16),
    /// 200, and the instance reads exactly one message with this method, target and body.
    Forwarded(&'static str, &'static str, &'static [u8]),
}

const H: &str = "host: gateway\r\n";

fn request_cases() -> Vec<(&'static str, String, Outcome)> {
    use Outcome::*;
    let post =
        |headers: &str, body: &str| format!("POST /score HTTP/1.1\r\n{H}{headers}\r\n{body}");
    vec![
        (
            "a plain length",
            post("content-length: 3\r\n", "abc"),
            Forwarded("POST", "/score", b"abc"),
        ),
        (
            "the same length twice",
            post("content-length: 3\r\ncontent-length: 3\r\n", "abc"),
            Forwarded("POST", "/score", b"abc"),
        ),
        (
            "two lengths that differ",
            post("content-length: 3\r\ncontent-length: 4\r\n", "abcd"),
            Refused(400),
        ),
        (
            "a list of lengths that differ",
            post("content-length: 3, 4\r\n", "abcd"),
            Refused(400),
        ),
        (
            "a signed length",
            post("content-length: +3\r\n", "abc"),
            Refused(400),
        ),
        (
            "a negative length",
            post("content-length: -3\r\n", "abc"),
            Refused(400),
        ),
        (
            "a hexadecimal length",
            post("content-length: 0x3\r\n", "abc"),
            Refused(400),
        ),
        (
            "a length with a space inside",
            post("content-length: 1 2\r\n", "abc"),
            Refused(400),
        ),
        (
            "an empty length",
            post("content-length: \r\n", ""),
            Refused(400),
        ),
        (
            "a length past u64",
            post("content-length: 99999999999999999999\r\n", ""),
            Refused(400),
        ),
        (
            "chunked",
            post("transfer-encoding: chunked\r\n", "3\r\nabc\r\n0\r\n\r\n"),
            Forwarded("POST", "/score", b"abc"),
        ),
        (
            "chunked in upper case",
            post("transfer-encoding: CHUNKED\r\n", "3\r\nabc\r\n0\r\n\r\n"),
            Forwarded("POST", "/score", b"abc"),
        ),
        (
            "a chunk extension",
            post(
                "transfer-encoding: chunked\r\n",
                "3;name=value\r\nabc\r\n0\r\n\r\n",
            ),
            Forwarded("POST", "/score", b"abc"),
        ),
        (
            "trailers",
            post(
                "transfer-encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n",
            ),
            Forwarded("POST", "/score", b"abc"),
        ),
        // RFC 9112, section 6.3: chunked overrides the length, which a forwarded message must not
        // carry; the connection closes after the answer (section 6.1).
        (
            "length and chunked both",
            post(
                "content-length: 3\r\ntransfer-encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            Forwarded("POST", "/score", b"abc"),
        ),
        (
            "a coding before chunked",
            post(
                "transfer-encoding: gzip, chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            Refused(501),
        ),
        (
            "chunked twice",
            post(
                "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            Refused(501),
        ),
        // Section 6.3: chunked not last leaves the length unknown, which is a 400.
        (
            "a coding after chunked",
            post(
                "transfer-encoding: chunked, gzip\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            Refused(400),
        ),
        (
            "identity",
            post("transfer-encoding: identity\r\n", "abc"),
            Refused(400),
        ),
        (
            "a chunk size that is not hex",
            post("transfer-encoding: chunked\r\n", "zz\r\nabc\r\n0\r\n\r\n"),
            Refused(400),
        ),
        (
            "a chunk without its CRLF",
            post("transfer-encoding: chunked\r\n", "3\r\nabcX0\r\n\r\n"),
            Refused(400),
        ),
        (
            "lines ended by bare LF",
            "POST /score HTTP/1.1\nhost: gateway\ncontent-length: 3\n\nabc".to_string(),
            Forwarded("POST", "/score", b"abc"),
        ),
        (
            "a space before the colon",
            post("content-length : 3\r\n", "abc"),
            Refused(400),
        ),
        (
            "a folded header line",
            post("x-folded: a\r\n b\r\ncontent-length: 3\r\n", "abc"),
            Refused(400),
        ),
        (
            "a NUL in a value",
            post("x-nul: a\0b\r\ncontent-length: 3\r\n", "abc"),
            Refused(400),
        ),
        (
            "no Host",
            "GET /score HTTP/1.1\r\n\r\n".to_string(),
            Refused(400),
        ),
        (
            "Host twice",
            format!("GET /score HTTP/1.1\r\n{H}{H}\r\n"),
            Refused(400),
        ),
        (
            "a Host that is no host",
            "GET /score HTTP/1.1\r\nhost: a b\r\n\r\n".to_string(),
            Refused(400),
        ),
        (
            "an absolute target",
            format!("GET http://gateway/score?q=1 HTTP/1.1\r\n{H}\r\n"),
            Forwarded("GET", "/score?q=1", b""),
        ),
        (
            "an absolute target without a path",
            format!("GET http://gateway?q=1 HTTP/1.1\r\n{H}\r\n"),
            Forwarded("GET", "/?q=1", b""),
        ),
        (
            "a relative target",
            format!("GET score HTTP/1.1\r\n{H}\r\n"),
            Refused(400),
        ),
        (
            "an authority target",
            format!("GET gateway:80 HTTP/1.1\r\n{H}\r\n"),
            Refused(400),
        ),
        (
            "another scheme",
            format!("GET ftp://gateway/score HTTP/1.1\r\n{H}\r\n"),
            Refused(400),
        ),
        (
            "an asterisk outside OPTIONS",
            format!("GET * HTTP/1.1\r\n{H}\r\n"),
            Refused(400),
        ),
        (
            "CONNECT",
            "CONNECT gateway:443 HTTP/1.1\r\nhost: gateway:443\r\n\r\n".to_string(),
            Refused(405),
        ),
        (
            "an h2c upgrade",
            format!(
                "GET /score HTTP/1.1\r\n{H}connection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            ),
            Forwarded("GET", "/score", b""),
        ),
        (
            "HTTP/1.0 with a length",
            format!("POST /score HTTP/1.0\r\n{H}content-length: 3\r\n\r\nabc"),
            Forwarded("POST", "/score", b"abc"),
        ),
        (
            "expect 100-continue",
            post("expect: 100-continue\r\ncontent-length: 3\r\n", "abc"),
            Forwarded("POST", "/score", b"abc"),
        ),
        (
            "an unknown version",
            format!("GET /score HTTP/1.2\r\n{H}\r\n"),
            Refused(505),
        ),
    ]
}

#[tokio::test]
async fn every_request_framing_case_is_refused_or_forwarded_unambiguously() {
    let (instance, log) = logging_instance().await;
    let (_file, gateway) = gateway_for(&instance).await;
    let connect = || async { TcpStream::connect(gateway.addr()).await.expect("connect") };
    let failures = run_request_cases(&log, connect).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same bytes get the same outcome inside TLS: the connection is read by the same rules.
#[tokio::test]
async fn every_request_framing_case_has_the_same_outcome_over_tls() {
    let (instance, log) = logging_instance().await;
    let (_file, gateway) = TlsGateway::for_instance(&instance).await;
    let failures = run_request_cases(&log, || gateway.connect()).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Sends each request case on a connection of its own from `connect`; what did not come out
/// as the case says, one line each.
async fn run_request_cases<S, F>(log: &Log, connect: impl Fn() -> F) -> Vec<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: std::future::Future<Output = S>,
{
    let mut failures = Vec::new();
    for (name, bytes, outcome) in request_cases() {
        log.lock().expect("log").clear();
        let status = status_for(connect().await, bytes.as_bytes()).await;
        // Whatever was forwarded has reached the instance by the time its answer is back.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let seen = log.lock().expect("log").clone();
        let ok = match outcome {
            Outcome::Refused(expected) => status == expected && seen.is_empty(),
            Outcome::Forwarded(method, target, body) => {
                status == 200
                    && matches!(seen.as_slice(), [Ok(message)]
                        if message.method == method
                            && message.target == target
                            && message.body == body
                            && message.header("host").len() == 1
                            && message.header("upgrade").is_empty())
            }
        };
        if !ok {
            failures.push(format!(
                "{name}: expected {outcome:?}, got {status} with {seen:?}"
            ));
        }
    }
    failures
}

/// An instance that answers each request with `answer`, then closes.
async fn raw_answer(answer: &'static [u8]) -> String {
    scripted_upstream(move |mut stream| {
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            let _ = stream.write_all(answer).await;
        })
    })
    .await
}

#[tokio::test]
async fn every_answer_framing_case_reaches_the_client_clean_or_as_a_502() {
    // (case, what the instance sends, the status the client must see, the body it must get)
    let cases: [(&str, &[u8], u16, &[u8]); 14] = [
        ("a plain length", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 200, b"ok"),
        ("chunked with an extension", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\n\r\n", 200, b"ok"),
        ("no reason phrase", b"HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok", 200, b"ok"),
        ("bare LF line ends", b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", 200, b"ok"),
        ("an early hint first", b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 200, b"ok"),
        ("until the close", b"HTTP/1.1 200 OK\r\n\r\nok", 200, b"ok"),
        ("two lengths that differ", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!", 502, b""),
        ("a signed length", b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok", 502, b""),
        ("a coding before chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 502, b""),
        ("a status of two digits", b"HTTP/1.1 20 OK\r\ncontent-length: 2\r\n\r\nok", 502, b""),
        ("not HTTP", b"SSH-2.0-OpenSSH\r\n", 502, b""),
        ("a folded header line", b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 2\r\n\r\nok", 502, b""),
        ("a 204 with bytes after it", b"HTTP/1.1 204 No Content\r\n\r\nstray", 204, b""),
        ("length and chunked both", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200, b"ok"),
    ];
    let mut failures = Vec::new();
    for (name, answer, status, body) in cases {
        let instance = raw_answer(answer).await;
        let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&instance])]));
        let gateway = gateway(&file.path).await;
        let got = score(&client(), gateway.addr(), None).await;
        let body_ok = status != 200 || got.body.as_ref() == body;
        if got.status.as_u16() != status || !body_ok {
            failures.push(format!(
                "{name}: expected {status} {:?}, got {} {:?}",
                String::from_utf8_lossy(body),
                got.status,
                String::from_utf8_lossy(&got.body)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the instance reads of a request with two `X-Forwarded-For` lines, sent on `stream`.
async fn forwarded_headers_through(
    log: &Log,
    stream: impl AsyncRead + AsyncWrite + Unpin,
) -> Message {
    log.lock().expect("log").clear();
    let request = format!(
        "GET /score HTTP/1.1\r\n{H}x-forwarded-for: 198.51.100.1\r\n\
         x-forwarded-for: 203.0.113.7\r\nx-forwarded-proto: gopher\r\n\r\n"
    );
    assert_eq!(status_for(stream, request.as_bytes()).await, 200);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let seen = log.lock().expect("log").clone();
    match seen.as_slice() {
        [Ok(message)] => message.clone(),
        other => panic!("expected one message, got {other:?}"),
    }
}

#[tokio::test]
async fn every_x_forwarded_for_line_is_kept_in_order_and_the_client_appended() {
    let (instance, log) = logging_instance().await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&instance])]));
    let plain = gateway(&file.path).await;
    let stream = TcpStream::connect(plain.addr()).await.expect("connect");
    let message = forwarded_headers_through(&log, stream).await;
    assert_eq!(
        message.header("x-forwarded-for"),
        ["198.51.100.1, 203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(message.header("x-forwarded-proto"), ["http"]);

    let tls = TlsGateway::start(&file.path).await;
    let message = forwarded_headers_through(&log, tls.connect().await).await;
    assert_eq!(
        message.header("x-forwarded-for"),
        ["198.51.100.1, 203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(message.header("x-forwarded-proto"), ["https"]);
}
