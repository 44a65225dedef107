//! HTTP/1.1 exchanges off the usual path, on raw sockets. An instance that answers before the
//! request body is complete (a model server rejecting a request early, nginx answering from a
//! location that ignores the body): the client gets that answer whole, never a reset, and its
//! connection carries on. An instance that fails after its head: a cut answer, counted. A
//! chunked request with a sloppy trailer: never one answer for two requests. Chunked and large
//! request bodies stream through, and the connection carries the next request.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::tls::TlsGateway;
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY_BYTES: usize = 256 * 1024;
/// More than the kernel's buffers hold between the gateway and an instance that does not read
/// yet (the gateway's send buffer is 256 KiB, doubled), so the rest of the request is still to
/// go when the answer is over; and no more than the gateway reads through after an answer
/// (1 MiB), so the client's connection carries on.
const LARGER_BODY_BYTES: usize = 1024 * 1024;

/// An instance that answers as soon as the head is in; `then_close` closes without reading the
/// body (so the gateway's writes fail), otherwise it reads the body and discards it.
async fn early_instance(then_close: bool) -> String {
    counted_early_instance(then_close, Counts::default(), BODY_BYTES, Duration::ZERO).await
}

/// What an early instance saw: connections accepted, request bodies read whole.
#[derive(Clone, Default)]
struct Counts {
    connections: Arc<AtomicUsize>,
    bodies: Arc<AtomicUsize>,
}

/// An early instance that reads bodies of `body_bytes`, starting `pause` after its answer.
async fn counted_early_instance(
    then_close: bool,
    counts: Counts,
    body_bytes: usize,
    pause: Duration,
) -> String {
    scripted_upstream(move |mut stream| {
        counts.connections.fetch_add(1, Ordering::SeqCst);
        let bodies = Arc::clone(&counts.bodies);
        tokio::spawn(async move {
            // Bytes read past what was consumed so far: a head, a body, the next head.
            let mut pending: Vec<u8> = Vec::new();
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let head_end = loop {
                    if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buffer[..n]),
                    }
                };
                pending.drain(..head_end);
                let answer: &[u8] = if then_close {
                    b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly"
                };
                if stream.write_all(answer).await.is_err() || then_close {
                    return;
                }
                tokio::time::sleep(pause).await;
                while pending.len() < body_bytes {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buffer[..n]),
                    }
                }
                pending.drain(..body_bytes);
                bodies.fetch_add(1, Ordering::SeqCst);
            }
        })
    })
    .await
}

/// Sends a POST with a 256 KiB body, writing and reading at once as a client that checks for an
/// early answer does; returns the answer's bytes, or the error the read ended with.
async fn post_large(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
) -> Result<Vec<u8>, std::io::Error> {
    post_of(stream, BODY_BYTES).await
}

/// The same with a body of `body_bytes`, a multiple of 16 KiB.
async fn post_of(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    body_bytes: usize,
) -> Result<Vec<u8>, std::io::Error> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let head =
        format!("POST /score HTTP/1.1\r\nhost: gateway\r\ncontent-length: {body_bytes}\r\n\r\n");
    let write = async {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..body_bytes / chunk.len() {
            writer.write_all(&chunk).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let read = async {
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let n = match tokio::time::timeout(Duration::from_secs(3), reader.read(&mut buffer))
                .await
            {
                Ok(read) => read?,
                // Nothing more within the time: what came is the answer.
                Err(_) => return Ok(answer),
            };
            if n == 0 {
                return Ok(answer);
            }
            answer.extend_from_slice(&buffer[..n]);
            if answer.ends_with(b"early") {
                return Ok(answer);
            }
        }
    };
    let (written, answer) = tokio::join!(write, read);
    // A write refused after the answer is fine; losing the answer is not.
    let _ = written;
    answer
}

/// A gateway in front of one echo instance, and what must live as long as it.
struct EchoGateway {
    gateway: switchyard::Gateway,
    _file: EndpointFile,
    _echo: tokio::task::JoinHandle<()>,
}

async fn echo_gateway() -> EchoGateway {
    let (echo, task) = echo_server().await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&echo])]));
    EchoGateway {
        gateway: gateway(&file.path).await,
        _file: file,
        _echo: task,
    }
}

#[tokio::test]
async fn an_early_answer_from_an_instance_that_reads_on_keeps_the_connection() {
    let instance = early_instance(false).await;
    let (_file, gateway) = gateway_for(&instance).await;
    let stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    early_answers_keep(stream).await;
}

/// Once the rest of a request answered early has gone out, its connection to the instance is
/// reused, as after any other exchange. Between requests the test waits until the instance
/// has the whole body, then 100 ms more for the gateway to put the connection back (a step
/// of microseconds after its last write): only two such stalls in six rounds could fail it.
#[tokio::test]
async fn the_instance_connection_of_an_early_answer_is_reused_once_the_rest_is_sent() {
    let counts = Counts::default();
    let pause = Duration::from_millis(50);
    let instance = counted_early_instance(false, counts.clone(), LARGER_BODY_BYTES, pause).await;
    let (_file, gateway) = gateway_for(&instance).await;
    let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    for round in 0..6 {
        let answer = tokio::time::timeout(PATIENCE, post_of(&mut stream, LARGER_BODY_BYTES))
            .await
            .expect("in time")
            .expect("answered");
        assert!(answer.ends_with(b"early"), "round {round}");
        eventually("the instance reads the whole body", || {
            counts.bodies.load(Ordering::SeqCst) == round + 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connections = counts.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 2,
        "{connections} connections to the instance for 6 requests"
    );
}

/// Over TLS the answer is written while the body is still read, on one TLS session.
#[tokio::test]
async fn over_tls_an_early_answer_keeps_the_connection_as_on_plain_ones() {
    let instance = early_instance(false).await;
    let (_file, gateway) = TlsGateway::for_instance(&instance).await;
    early_answers_keep(gateway.connect().await).await;
}

/// Sends three large POSTs on `stream`, each answered early; each must get its whole answer.
async fn early_answers_keep(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    for round in 0..3 {
        let answer = tokio::time::timeout(PATIENCE, post_large(&mut stream))
            .await
            .expect("in time")
            .unwrap_or_else(|error| panic!("round {round}: the answer was lost: {error}"));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text}");
        assert!(text.ends_with("early"), "round {round}: {text}");
    }
}

#[tokio::test]
async fn an_early_answer_from_an_instance_that_closes_reaches_the_client_whole() {
    let instance = early_instance(true).await;
    let (_file, gateway) = gateway_for(&instance).await;
    for round in 0..20 {
        let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
        let answer = tokio::time::timeout(PATIENCE, post_large(&mut stream))
            .await
            .expect("in time")
            .unwrap_or_else(|error| panic!("round {round}: the answer was lost: {error}"));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413"), "round {round}: {text}");
        assert!(text.ends_with("early"), "round {round}: {text}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn an_instance_that_fails_before_its_first_body_byte_gives_a_cut_answer_not_an_empty_one() {
    // Its head is in and passed on at once (a stream's head must not wait for its first
    // event); its body never comes. The client sees the head and a body shorter than declared,
    // which every HTTP client reports as an error, and the gateway counts the cut.
    let instance = scripted_upstream(|mut stream| {
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
                .await;
        })
    })
    .await;
    let (_file, gateway) = gateway_for(&instance).await;
    let text = answer_until_close(
        gateway.addr(),
        b"GET /score HTTP/1.1\r\nhost: gateway\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("content-length: 100\r\n"), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("a whole head") + 4..];
    assert!(body.len() < 100, "{text}");
    eventually("the cut is counted", || {
        metric(
            &gateway,
            "switchyard_response_bodies_cut_total",
            &["side=\"instance\""],
        ) == 1
    })
    .await;
}

#[tokio::test]
async fn a_chunked_request_whose_trailer_ends_in_a_bare_lf_does_not_swallow_the_next_request() {
    let echo = echo_gateway().await;
    let stream = TcpStream::connect(echo.gateway.addr())
        .await
        .expect("connect");
    a_bare_lf_trailer_is_refused_on(stream).await;
}

#[tokio::test]
async fn over_tls_a_bare_lf_trailer_is_refused_as_on_plain_connections() {
    let (echo, _task) = echo_server().await;
    let (_file, gateway) = TlsGateway::for_instance(&echo).await;
    a_bare_lf_trailer_is_refused_on(gateway.connect().await).await;
}

/// Sends a chunked request whose trailer line ends in a bare LF, and a GET pipelined behind it.
async fn a_bare_lf_trailer_is_refused_on(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    stream
        .write_all(
            b"POST /score HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\nx-trailer: 1\n\r\n\
              GET /second HTTP/1.1\r\nhost: gateway\r\n\r\n",
        )
        .await
        .expect("send");
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer))
        .await
        .is_ok();
    let text = String::from_utf8_lossy(&answer);
    let answers = text.matches("HTTP/1.1 ").count();
    // Both requests answered; or one, with the connection closed and said to close, which
    // tells the client the second was not taken (RFC 9112, section 9.3.2: it sends it again).
    // Never one answer for two requests on a connection that stays open.
    let told = answers == 1 && closed && text.contains("\r\nconnection: close\r\n");
    assert!(answers == 2 || told, "{text}");
    // The serve loop's own decoder takes every line end to be CRLF, so it refuses the trailer.
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
}

/// Sends `request` on a new connection to `gateway` and reads until the gateway closes it,
/// within [`PATIENCE`].
async fn answer_until_close(gateway: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(gateway).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the connection ends")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads from `stream` onto `seen` until `done` says what came is enough; fails if the
/// connection closes first, or nothing enough comes within [`PATIENCE`] of a read (`what`).
async fn read_until(
    stream: &mut (impl AsyncRead + Unpin),
    seen: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
    what: &str,
) {
    let mut buffer = [0u8; 16 * 1024];
    while !done(seen) {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("{what} in time"))
            .expect("read");
        assert!(n > 0, "closed before {what}");
        seen.extend_from_slice(&buffer[..n]);
    }
}

/// Everything `stream` sends until it closes or is quiet for half a second; and whether it
/// closed.
async fn read_until_quiet(stream: &mut (impl AsyncRead + Unpin)) -> (String, bool) {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&answer).into(), true),
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
            Err(_) => return (String::from_utf8_lossy(&answer).into(), false),
        }
    }
}

#[tokio::test]
async fn pipelined_chunked_requests_are_each_answered_on_a_connection_that_stays_open() {
    let echo = echo_gateway().await;
    let stream = TcpStream::connect(echo.gateway.addr())
        .await
        .expect("connect");
    pipelined_chunked_requests_are_answered_on(stream).await;
}

#[tokio::test]
async fn over_tls_pipelined_chunked_requests_are_answered_as_on_plain_connections() {
    let (echo, _task) = echo_server().await;
    let (_file, gateway) = TlsGateway::for_instance(&echo).await;
    pipelined_chunked_requests_are_answered_on(gateway.connect().await).await;
}

/// Sends two chunked POSTs and a GET pipelined; all three must be answered, in order, on a
/// connection that stays open.
async fn pipelined_chunked_requests_are_answered_on(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
) {
    stream
        .write_all(
            b"POST /score HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n\r\n\
              3;ext=1\r\nabc\r\n0\r\nx-checksum: 1\r\n\r\n\
              POST /score HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n\r\n\
              4\r\ndefg\r\n0\r\n\r\n\
              GET /third HTTP/1.1\r\nhost: gateway\r\n\r\n",
        )
        .await
        .expect("send");
    let (text, closed) = read_until_quiet(&mut stream).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
    assert!(!closed, "the connection stays open: {text}");
    assert!(!text.contains("connection: close"), "{text}");
    // The echoed bodies, in order, each framed once.
    let abc = text.find("\r\n3\r\nabc\r\n").expect("first body");
    let defg = text.find("\r\n4\r\ndefg\r\n").expect("second body");
    let third = text.find("x-echo-uri: /third").expect("third request");
    assert!(abc < defg && defg < third, "{text}");
    // The instance saw each body chunked, never with a length it did not send.
    assert!(text.contains("x-echo-transfer-encoding: chunked"), "{text}");
    assert!(!text.contains("x-echo-content-length"), "{text}");
}

#[tokio::test]
async fn a_body_too_large_to_read_whole_streams_through_and_the_connection_carries_on() {
    let echo = echo_gateway().await;
    let gateway = &echo.gateway;
    let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    const SIZE: usize = 1024 * 1024;
    let head = format!("POST /score HTTP/1.1\r\nhost: gateway\r\ncontent-length: {SIZE}\r\n\r\n");
    let body: Vec<u8> = (0..SIZE).map(|i| b'a' + (i % 26) as u8).collect();
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(head.as_bytes()).await.expect("head");
        for piece in body.chunks(50_000) {
            writer.write_all(piece).await.expect("body");
        }
        writer
            .write_all(b"GET /after HTTP/1.1\r\nhost: gateway\r\n\r\n")
            .await
            .expect("second request");
    };
    let read = async {
        let mut answer = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        while !String::from_utf8_lossy(&answer).contains("x-echo-uri: /after") {
            let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buffer))
                .await
                .expect("answers within 10 s")
                .expect("read");
            assert!(n > 0, "the gateway closed the connection");
            answer.extend_from_slice(&buffer[..n]);
        }
        answer
    };
    let ((), answer) = tokio::join!(write, read);
    let head_end = find(&answer, b"\r\n\r\n").expect("first head") + 4;
    let first_head = String::from_utf8_lossy(&answer[..head_end]);
    assert!(
        first_head.starts_with("HTTP/1.1 200 OK\r\n"),
        "{first_head}"
    );
    // The instance got the length the client declared, and echoed every byte in order.
    assert!(
        first_head.contains(&format!("x-echo-content-length: {SIZE}\r\n")),
        "{first_head}"
    );
    assert!(
        first_head.contains(&format!("content-length: {SIZE}\r\n")),
        "{first_head}"
    );
    assert_eq!(&answer[head_end..head_end + SIZE], &body[..]);
    assert!(answer[head_end + SIZE..].starts_with(b"HTTP/1.1 200 OK\r\n"));
}

#[tokio::test]
async fn a_malformed_chunk_is_refused_and_the_connection_closed() {
    let echo = echo_gateway().await;
    let gateway = &echo.gateway;
    for bad in [
        "zz\r\n",
        " 3\r\nabc\r\n0\r\n\r\n",
        "3\n\r\nabc\r\n0\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
        let request = format!(
            "POST /score HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n\r\n{bad}\
             GET /smuggled HTTP/1.1\r\nhost: gateway\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let (text, closed) = read_until_quiet(&mut stream).await;
        assert!(text.starts_with("HTTP/1.1 400 "), "{bad:?}: {text}");
        assert!(text.contains("connection: close\r\n"), "{bad:?}: {text}");
        assert!(closed, "{bad:?}: the connection is closed");
        assert!(!text.contains("/smuggled"), "{bad:?}: {text}");
    }
}

#[tokio::test]
async fn a_client_that_expects_100_continue_gets_it_before_it_sends_the_body() {
    let echo = echo_gateway().await;
    let gateway = &echo.gateway;
    for (length, body) in [(5, "hello".to_string()), (100_000, "z".repeat(100_000))] {
        let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
        let head = format!(
            "POST /score HTTP/1.1\r\nhost: gateway\r\nexpect: 100-continue\r\n\
             content-length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        let mut interim = [0u8; 25];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim))
            .await
            .expect("100 Continue within 5 s")
            .expect("read");
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.write_all(body.as_bytes()).await.expect("body");
        let mut answer = Vec::new();
        while !answer.ends_with(body.as_bytes()) {
            let mut buffer = [0u8; 16 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                .await
                .expect("the answer within 5 s")
                .expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buffer[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        // The gateway met the expectation itself: the instance is not asked again.
        assert!(!text.contains("x-echo-expect"), "{text}");
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A client that declares 64 MiB over the limit and stops sending after 1 MiB, keeping the
/// connection open, as one that waits for an answer to an upload it cannot finish.
#[tokio::test]
async fn a_refused_body_too_large_to_read_through_gets_its_answer_and_then_the_close() {
    let (echo, _task) = echo_server().await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&echo])]));
    let mut options = switchyard::GatewayOptions::new(&file.path, loopback());
    options.max_body_bytes = 1024;
    let gateway = switchyard::Gateway::start(options).await.expect("start");
    let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    let head = "POST /score HTTP/1.1\r\nhost: gateway\r\ncontent-length: 67108864\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b'x'; 16 * 1024];
    for _ in 0..64 {
        stream.write_all(&chunk).await.expect("body");
    }

    // The answer, then the end of the connection: well before the 30 s the gateway would give
    // a rest it reads through.
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the connection ends within 20 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        ended.is_ok(),
        "the close was a reset: {ended:?}, after {text}"
    );
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// An instance that starts a chunked answer, sends one piece, and then stays quiet; it reports
/// on `left` once the gateway closes the instance's connection.
async fn quiet_stream_instance(left: tokio::sync::mpsc::Sender<()>) -> String {
    scripted_upstream(move |mut stream| {
        let left = left.clone();
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
            if stream.write_all(head).await.is_err() {
                return;
            }
            let mut buffer = [0u8; 1024];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buffer)).await
            {
                let _ = left.send(()).await;
            }
        })
    })
    .await
}

/// Reads until the first piece of the quiet answer is in, then drops the connection; the
/// gateway must let the instance go, well before the instance's own 30 s wait.
async fn a_client_that_leaves_mid_stream_frees_the_instance(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    mut left: tokio::sync::mpsc::Receiver<()>,
) {
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .expect("send");
    let mut seen = Vec::new();
    read_until(
        &mut stream,
        &mut seen,
        |seen| seen.windows(5).any(|w| w == b"first"),
        "the first piece",
    )
    .await;
    drop(stream);
    tokio::time::timeout(PATIENCE, left.recv())
        .await
        .expect("the instance was let go in time");
}

#[tokio::test]
async fn a_client_that_leaves_a_quiet_stream_frees_the_instance() {
    let (tell, left) = tokio::sync::mpsc::channel(1);
    let instance = quiet_stream_instance(tell).await;
    let (_file, gateway) = gateway_for(&instance).await;
    let stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    a_client_that_leaves_mid_stream_frees_the_instance(stream, left).await;
}

#[tokio::test]
async fn over_tls_a_client_that_leaves_a_quiet_stream_frees_the_instance() {
    let (tell, left) = tokio::sync::mpsc::channel(1);
    let instance = quiet_stream_instance(tell).await;
    let (_file, gateway) = TlsGateway::for_instance(&instance).await;
    a_client_that_leaves_mid_stream_frees_the_instance(gateway.connect().await, left).await;
}

/// An instance that sends a 103 Early Hints, waits, then answers.
async fn hinting_instance() -> String {
    scripted_upstream(|mut stream| {
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            let hints = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\
                          connection: x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\n\r\n";
            if stream.write_all(hints).await.is_err() {
                return;
            }
            // The hint must reach the client before the answer exists.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        })
    })
    .await
}

/// Asks for `/page` on `stream`; the 103 must arrive before the answer (while the instance
/// still waits), with its link and without the instance's connection headers.
async fn early_hints_arrive_first_on(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    stream
        .write_all(b"GET /page HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .expect("send");
    let mut seen = Vec::new();
    read_until(
        &mut stream,
        &mut seen,
        |seen| seen.windows(4).any(|w| w == b"\r\n\r\n"),
        "a head",
    )
    .await;
    let first = String::from_utf8_lossy(&seen).to_string();
    assert!(
        first.starts_with("HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"),
        "{first}"
    );
    assert!(
        !first.contains("HTTP/1.1 200"),
        "the hint came with the answer: {first}"
    );
    assert!(
        !first.contains("x-hop") && !first.contains("keep-alive"),
        "{first}"
    );
    read_until(
        &mut stream,
        &mut seen,
        |seen| seen.ends_with(b"ok"),
        "the answer",
    )
    .await;
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");
    assert!(text.contains("\r\n\r\nHTTP/1.1 200 OK\r\n"), "{text}");
}

#[tokio::test]
async fn early_hints_reach_the_client_before_the_answer() {
    let instance = hinting_instance().await;
    let (_file, gateway) = gateway_for(&instance).await;
    let stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    early_hints_arrive_first_on(stream).await;
}

#[tokio::test]
async fn over_tls_early_hints_reach_the_client_before_the_answer() {
    let instance = hinting_instance().await;
    let (_file, gateway) = TlsGateway::for_instance(&instance).await;
    early_hints_arrive_first_on(gateway.connect().await).await;
}

#[tokio::test]
async fn an_instance_that_hints_without_end_gets_no_more_than_a_head_s_worth_through() {
    let instance = scripted_upstream(|mut stream| {
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            let hint = format!(
                "HTTP/1.1 103 Early Hints\r\nlink: </{}>\r\n\r\n",
                "a".repeat(200)
            );
            for _ in 0..1000 {
                if stream.write_all(hint.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        })
    })
    .await;
    let (_file, gateway) = gateway_for(&instance).await;
    let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    stream
        .write_all(b"GET /page HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .expect("send");
    let mut seen = Vec::new();
    read_until(
        &mut stream,
        &mut seen,
        |seen| seen.ends_with(b"\r\n\r\nok"),
        "the answer",
    )
    .await;
    let text = String::from_utf8_lossy(&seen);
    let hints = text.matches("HTTP/1.1 103 ").count();
    // 239 bytes each: 274 fit in 64 KiB.
    assert!((1..=274).contains(&hints), "{hints} hints passed");
    assert!(
        text.contains("\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{hints} hints, then no answer"
    );
}

/// An instance that answers every GET it is sent with `200 OK` and counts them in `forwarded`.
async fn counting_instance() -> (String, Arc<AtomicUsize>) {
    let forwarded = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&forwarded);
    let url = scripted_upstream(move |mut stream| {
        let counted = Arc::clone(&counted);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buffer = [0u8; 4096];
            loop {
                while let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    seen.drain(..at + 4);
                    counted.fetch_add(1, Ordering::SeqCst);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buffer[..n]),
                }
            }
        })
    })
    .await;
    (url, forwarded)
}

#[tokio::test]
async fn an_upgrade_not_switched_is_the_last_request_its_connection_carries() {
    let (instance, forwarded) = counting_instance().await;
    let (_file, gateway) = gateway_for(&instance).await;
    let stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    an_upgrade_not_switched_ends_its_connection_on(stream, &forwarded).await;
}

/// Inside TLS as on a plain connection.
#[tokio::test]
async fn over_tls_an_upgrade_not_switched_is_the_last_request_its_session_carries() {
    let (instance, forwarded) = counting_instance().await;
    let (_file, gateway) = TlsGateway::for_instance(&instance).await;
    an_upgrade_not_switched_ends_its_connection_on(gateway.connect().await, &forwarded).await;
}

/// An upgrade request whose instance answers 200 rather than 101, with a request pipelined
/// behind it. The gateway answers the first, says `Connection: close` and ends the connection:
/// what follows an upgrade request may be the protocol the client asked for, so it is never
/// read as a request, and never forwarded (the client sends it again).
async fn an_upgrade_not_switched_ends_its_connection_on(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    forwarded: &AtomicUsize,
) {
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: gateway\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n\
              GET /after HTTP/1.1\r\nhost: gateway\r\n\r\n",
        )
        .await
        .expect("send");
    let (text, closed) = read_until_quiet(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(closed, "the connection stays open: {text}");
    assert_eq!(forwarded.load(Ordering::SeqCst), 1, "{text}");
}

/// `OPTIONS *` is read by the own path as any other request: the instance gets `*`, and the
/// connection carries the request behind it.
#[tokio::test]
async fn options_asterisk_is_forwarded_and_keeps_its_connection() {
    let text = answers_with_one_behind(b"OPTIONS * HTTP/1.1\r\nhost: gateway\r\n\r\n").await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert!(text.contains("x-echo-uri: *\r\n"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
}

/// What an echo gateway answers to `first` with `GET /after` pipelined behind it, once the
/// second answer is in.
async fn answers_with_one_behind(first: &[u8]) -> String {
    let echo = echo_gateway().await;
    let mut stream = TcpStream::connect(echo.gateway.addr())
        .await
        .expect("connect");
    let pipelined = [first, b"GET /after HTTP/1.1\r\nhost: gateway\r\n\r\n"].concat();
    stream.write_all(&pipelined).await.expect("send");
    let mut seen = Vec::new();
    read_until(
        &mut stream,
        &mut seen,
        |seen| String::from_utf8_lossy(seen).contains("x-echo-uri: /after"),
        "both answers",
    )
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// A target in absolute form is read by the own path as any other: the instance gets its
/// path, and the connection carries the request behind it.
#[tokio::test]
async fn a_target_in_absolute_form_keeps_its_connection() {
    let text =
        answers_with_one_behind(b"GET http://gateway/first?q=1 HTTP/1.1\r\nhost: other\r\n\r\n")
            .await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert!(text.contains("x-echo-uri: /first?q=1\r\n"), "{text}");
    // The target's authority names the host, over `Host` (RFC 9112, section 3.2.2).
    assert!(
        text.contains("x-echo-x-forwarded-host: gateway\r\n"),
        "{text}"
    );
    assert!(!text.contains("connection: close"), "{text}");
}

/// Heads that break the syntax or the limits, frame their body so that readers could disagree,
/// or name a target, method or version the gateway does not pass on, are answered by the
/// gateway: a precise status, its code in a JSON body, `Connection: close`, and a count in the
/// gateway's error metric. Nothing of them reaches an instance, not even a request pipelined
/// behind them.
#[tokio::test]
async fn a_refused_head_is_answered_with_its_code_closed_and_counted() {
    let (instance, forwarded) = counting_instance().await;
    let (_file, gateway) = gateway_for(&instance).await;
    let many_lines = format!(
        "GET / HTTP/1.1\r\nhost: g\r\n{}\r\n",
        "x: 1\r\n".repeat(101)
    );
    let long_line = format!(
        "GET / HTTP/1.1\r\nhost: g\r\nx: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let cases: [(&str, &[u8], &str); 11] = [
        (
            "400",
            b"GET / HTTP/1.1\r\nhost: g\r\nbad name: 1\r\n\r\n",
            "malformed_request",
        ),
        (
            "400",
            b"GET / HTTP/1.1\r\nhost: g\r\nx: a\x01b\r\n\r\n",
            "malformed_request",
        ),
        (
            "400",
            b"G(ET / HTTP/1.1\r\nhost: g\r\n\r\n",
            "malformed_request",
        ),
        (
            "400",
            b"POST / HTTP/1.1\r\nhost: g\r\ncontent-length: +3\r\n\r\nabc",
            "malformed_request",
        ),
        (
            "400",
            b"POST / HTTP/1.0\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "malformed_request",
        ),
        (
            "431",
            many_lines.as_bytes(),
            "request_header_fields_too_large",
        ),
        (
            "431",
            long_line.as_bytes(),
            "request_header_fields_too_large",
        ),
        (
            "400",
            b"GET score HTTP/1.1\r\nhost: g\r\n\r\n",
            "invalid_request_target",
        ),
        (
            "405",
            b"CONNECT g:443 HTTP/1.1\r\nhost: g:443\r\n\r\n",
            "method_not_allowed",
        ),
        (
            "501",
            b"POST / HTTP/1.1\r\nhost: g\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "unsupported_transfer_coding",
        ),
        (
            "505",
            b"GET / HTTP/1.2\r\nhost: g\r\n\r\n",
            "http_version_not_supported",
        ),
    ];
    for (status, head, code) in cases {
        let pipelined = [head, b"GET /next HTTP/1.1\r\nhost: g\r\n\r\n"].concat();
        let text = answer_until_close(gateway.addr(), &pipelined).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer: {text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(
            text.contains("content-type: application/json\r\n"),
            "{text}"
        );
        assert!(text.contains(&format!("\"code\":\"{code}\"")), "{text}");
        if code == "unsupported_transfer_coding" {
            assert!(text.contains("`gzip, chunked`"), "names the coding: {text}");
        }
    }
    let counted = |kind: &str| {
        metric(
            &gateway,
            "switchyard_gateway_errors_total",
            &[&format!("kind=\"{kind}\"")],
        )
    };
    assert_eq!(counted("malformed_request"), 5);
    assert_eq!(counted("request_header_fields_too_large"), 2);
    for kind in [
        "invalid_request_target",
        "method_not_allowed",
        "unsupported_transfer_coding",
        "http_version_not_supported",
    ] {
        assert_eq!(counted(kind), 1, "{kind}");
    }
    assert_eq!(forwarded.load(Ordering::SeqCst), 0);
}
