//! Client connections as the serve loop sees them, spoken to byte by byte: pipelined requests,
//! `Connection: close`, HTTP/1.0 keep-alive, chunked and large bodies on one connection,
//! malformed heads, HTTP/2 (which its own HTTP/1.1 path hands to hyper), clients that are silent
//! or too slow, and clients that leave mid-request.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::loopback;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use switchyard::server::{ClientBody, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATIENCE: Duration = Duration::from_secs(5);

/// Serves `handler` on a loopback port with `header_read_timeout`.
async fn serve<F, Fut, B>(handler: F, header_read_timeout: Duration) -> SocketAddr
where
    F: Fn(Request<ClientBody>, switchyard::server::Connection) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let options = ServeOptions {
        header_read_timeout,
        ..ServeOptions::plain(Duration::from_secs(1))
    };
    tokio::spawn(switchyard::server::serve(
        listener,
        handler,
        std::future::pending(),
        options,
    ));
    addr
}

/// Answers with the method, the body's length and the version, as text.
async fn describe(
    request: Request<ClientBody>,
    _: switchyard::server::Connection,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let version = request.version();
    let body = request
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = format!("{method} {} {version:?}", body.len());
    Response::new(Full::new(Bytes::from(text)))
}

/// A response read off the wire: its head (lower-cased) and body.
#[derive(Debug)]
struct Answer {
    head: String,
    body: String,
}

/// Reads one response with a `content-length` from `stream`, keeping any bytes after it in
/// `pending`.
async fn read_answer(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Answer {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .map(|value| value.trim().parse().expect("length"))
                .expect("a content-length");
            let start = end + 4;
            if pending.len() >= start + length {
                let body = String::from_utf8_lossy(&pending[start..start + length]).into_owned();
                pending.drain(..start + length);
                return Answer { head, body };
            }
        }
        read_some(stream, pending, deadline).await;
    }
}

/// Appends what `stream` has next to `pending`; the server must send it before `deadline`
/// and not close the connection.
async fn read_some(stream: &mut TcpStream, pending: &mut Vec<u8>, deadline: Instant) {
    let mut chunk = [0u8; 4096];
    let left = deadline.saturating_duration_since(Instant::now());
    let n = tokio::time::timeout(left, stream.read(&mut chunk))
        .await
        .expect("an answer in time")
        .expect("read");
    assert!(
        n > 0,
        "closed before a whole answer: {:?}",
        String::from_utf8_lossy(pending)
    );
    pending.extend_from_slice(&chunk[..n]);
}

/// Waits until the server closes `stream`, and says how long that took.
async fn closed_after(stream: &mut (impl AsyncReadExt + Unpin)) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("the server closes the connection in time");
        match read {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let addr = serve(describe, Duration::from_secs(30)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /score HTTP/1.1\r\nhost: g\r\ncontent-length: 3\r\n\r\nabc\
              GET /a HTTP/1.1\r\nhost: g\r\n\r\n\
              POST /score HTTP/1.1\r\nhost: g\r\ncontent-length: 0\r\n\r\n",
        )
        .await
        .expect("write");
    let mut pending = Vec::new();
    let answers = [
        read_answer(&mut stream, &mut pending).await,
        read_answer(&mut stream, &mut pending).await,
        read_answer(&mut stream, &mut pending).await,
    ];
    let bodies: Vec<&str> = answers.iter().map(|a| a.body.as_str()).collect();
    assert_eq!(
        bodies,
        ["POST 3 HTTP/1.1", "GET 0 HTTP/1.1", "POST 0 HTTP/1.1"]
    );
    for answer in &answers {
        assert!(
            answer.head.starts_with("http/1.1 200 ok"),
            "{}",
            answer.head
        );
        assert!(answer.head.contains("\r\ndate: "), "{}", answer.head);
        assert!(
            !answer.head.contains("connection: close"),
            "{}",
            answer.head
        );
    }
}

#[tokio::test]
async fn connection_close_gets_its_answer_then_the_close() {
    let addr = serve(describe, Duration::from_secs(30)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: g\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut pending = Vec::new();
    let answer = read_answer(&mut stream, &mut pending).await;
    assert_eq!(answer.body, "GET 0 HTTP/1.1");
    assert!(answer.head.contains("connection: close"), "{}", answer.head);
    closed_after(&mut stream).await;
}

#[tokio::test]
async fn http10_clients_keep_the_connection_only_when_they_ask_and_get_no_chunks() {
    use http_body_util::channel::Channel;
    use http_body_util::combinators::BoxBody;
    type Answer = Response<BoxBody<Bytes, std::convert::Infallible>>;
    let handler = |request: Request<ClientBody>, connection| async move {
        if request.uri().path() == "/stream" {
            // Of unknown length: chunked for HTTP/1.1, until the close for HTTP/1.0.
            let (mut sender, body) = Channel::<Bytes, std::convert::Infallible>::new(1);
            tokio::spawn(async move {
                for piece in ["ab", "cde"] {
                    let _ = sender.send_data(Bytes::from(piece)).await;
                }
            });
            return Answer::new(BoxBody::new(body));
        }
        Answer::new(BoxBody::new(
            describe(request, connection).await.into_body(),
        ))
    };
    let addr = serve(handler, Duration::from_secs(30)).await;

    // Without `Connection: keep-alive`: answered (as HTTP/1.1, RFC 9110 section 2.5), then closed.
    let mut old = TcpStream::connect(addr).await.expect("connect");
    old.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut pending = Vec::new();
    let answer = read_answer(&mut old, &mut pending).await;
    assert!(answer.head.starts_with("http/1.1 200"), "{}", answer.head);
    assert!(
        answer.head.contains("\r\nconnection: close"),
        "{}",
        answer.head
    );
    assert_eq!(answer.body, "GET 0 HTTP/1.0");
    closed_after(&mut old).await;

    // With it: kept, and said to be kept; a 100-continue is ignored, not answered.
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    kept.write_all(
        b"POST / HTTP/1.0\r\nconnection: keep-alive\r\nexpect: 100-continue\r\n\
          content-length: 2\r\n\r\nhi\
          GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    )
    .await
    .expect("write");
    let mut pending = Vec::new();
    for expected in ["POST 2 HTTP/1.0", "GET 0 HTTP/1.0"] {
        let answer = read_answer(&mut kept, &mut pending).await;
        assert!(answer.head.starts_with("http/1.1 200"), "{}", answer.head);
        assert!(
            answer.head.contains("\r\nconnection: keep-alive"),
            "{}",
            answer.head
        );
        assert_eq!(answer.body, expected);
    }
    assert!(!String::from_utf8_lossy(&pending).contains("100 continue"));

    // A body of unknown length: no chunks, its end is the connection's.
    kept.write_all(b"GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, kept.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read");
    let text = String::from_utf8_lossy(&rest).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.ends_with("\r\n\r\nabcde"), "{text}");
}

#[tokio::test]
async fn streamed_bodies_share_a_connection_and_garbage_gets_a_400() {
    let addr = serve(describe, Duration::from_secs(30)).await;

    // A chunked body, then a body past the size read whole, then a plain request, all on one
    // connection.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let large = vec![b'x'; 100 * 1024];
    let mut wire = b"POST /score HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\n\r\n"
        .to_vec();
    wire.extend_from_slice(
        format!(
            "POST /score HTTP/1.1\r\nhost: g\r\ncontent-length: {}\r\n\r\n",
            large.len()
        )
        .as_bytes(),
    );
    wire.extend_from_slice(&large);
    wire.extend_from_slice(b"GET /after HTTP/1.1\r\nhost: g\r\n\r\n");
    stream.write_all(&wire).await.expect("write");
    let mut pending = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(read_answer(&mut stream, &mut pending).await.body);
    }
    assert_eq!(
        bodies,
        ["POST 5 HTTP/1.1", "POST 102400 HTTP/1.1", "GET 0 HTTP/1.1"]
    );

    // Garbage gets a 400, not a hang or a silent close.
    let mut bad = TcpStream::connect(addr).await.expect("connect");
    bad.write_all(b"NOT HTTP AT ALL\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    tokio::time::timeout(PATIENCE, bad.read_to_end(&mut head))
        .await
        .expect("an answer in time")
        .expect("read");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn a_silent_or_trickling_client_is_let_go_but_a_slow_handler_is_not() {
    let timeout = Duration::from_millis(200);
    let slow = |request: Request<ClientBody>, connection| async move {
        if request.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        describe(request, connection).await
    };
    let addr = serve(slow, timeout).await;

    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let waited = closed_after(&mut silent).await;
    assert!(
        waited <= 2 * timeout + Duration::from_millis(500),
        "closed after {waited:?}"
    );

    // A byte every 50 ms, never a whole head.
    let (mut reader, mut writer) = TcpStream::connect(addr)
        .await
        .expect("connect")
        .into_split();
    let trickle = tokio::spawn(async move {
        let start = b"GET / HTTP/1.1\r\nhost: g\r\nx-padding: ";
        for byte in start.iter().chain(std::iter::repeat(&b'a')).take(100) {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let waited = closed_after(&mut reader).await;
    assert!(
        waited <= 2 * timeout + Duration::from_millis(500),
        "closed after {waited:?}"
    );
    trickle.abort();

    // A handler taking more than twice the timeout still answers, and the connection then
    // serves the next request.
    let mut patient = TcpStream::connect(addr).await.expect("connect");
    patient
        .write_all(b"GET /slow HTTP/1.1\r\nhost: g\r\n\r\n")
        .await
        .expect("write");
    let mut pending = Vec::new();
    assert_eq!(
        read_answer(&mut patient, &mut pending).await.body,
        "GET 0 HTTP/1.1"
    );
    patient
        .write_all(b"GET /again HTTP/1.1\r\nhost: g\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(
        read_answer(&mut patient, &mut pending).await.body,
        "GET 0 HTTP/1.1"
    );
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_request() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancelled);
    let handler = move |_request: Request<ClientBody>, _| {
        let flag = Arc::clone(&flag);
        async move {
            // Set when the serve loop drops this future before it finished.
            struct OnDrop(Arc<AtomicBool>, bool);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    if !self.1 {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
            }
            let mut guard = OnDrop(flag, false);
            tokio::time::sleep(Duration::from_secs(30)).await;
            guard.1 = true;
            Response::new(Full::new(Bytes::from_static(b"late")))
        }
    };
    let addr = serve(handler, Duration::from_secs(30)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"POST /score HTTP/1.1\r\nhost: g\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !cancelled.load(Ordering::SeqCst),
        "cancelled while the client waited"
    );
    drop(stream);
    let deadline = Instant::now() + PATIENCE;
    while !cancelled.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the request outlived its client");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn answers_are_framed_by_what_they_carry() {
    use http_body_util::channel::Channel;
    use http_body_util::combinators::BoxBody;
    type Answer = Response<BoxBody<Bytes, std::convert::Infallible>>;
    let handler = |request: Request<ClientBody>, _| async move {
        match request.uri().path() {
            "/empty" => {
                let mut answer = Answer::new(BoxBody::new(Full::new(Bytes::new())));
                *answer.status_mut() = http::StatusCode::NO_CONTENT;
                answer
            }
            "/stream" => {
                // Of unknown length: chunked, each piece sent as it is made.
                let (mut sender, body) = Channel::<Bytes, std::convert::Infallible>::new(1);
                tokio::spawn(async move {
                    for piece in ["ab", "cde"] {
                        let _ = sender.send_data(Bytes::from(piece)).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
                Answer::new(BoxBody::new(body))
            }
            _ => Answer::new(BoxBody::new(Full::new(Bytes::from_static(b"twelve bytes")))),
        }
    };
    let addr = serve(handler, Duration::from_secs(30)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"HEAD / HTTP/1.1\r\nhost: g\r\n\r\n\
              GET /empty HTTP/1.1\r\nhost: g\r\n\r\n\
              GET /stream HTTP/1.1\r\nhost: g\r\n\r\n",
        )
        .await
        .expect("write");
    let mut wire = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !wire.ends_with(b"0\r\n\r\n") {
        read_some(&mut stream, &mut wire, deadline).await;
    }
    let wire = String::from_utf8_lossy(&wire).to_lowercase();
    let answers: Vec<&str> = wire.split("http/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{wire}");
    assert!(answers[0].starts_with("200 ok"), "{}", answers[0]);
    assert!(
        answers[0].contains("content-length: 12\r\n"),
        "{}",
        answers[0]
    );
    assert!(
        answers[0].ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {}",
        answers[0]
    );
    assert!(answers[1].starts_with("204 no content"), "{}", answers[1]);
    assert!(!answers[1].contains("content-length"), "{}", answers[1]);
    assert!(answers[1].ends_with("\r\n\r\n"), "{}", answers[1]);
    assert!(
        answers[2].contains("transfer-encoding: chunked\r\n"),
        "{}",
        answers[2]
    );
    assert!(
        answers[2].ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
        "{}",
        answers[2]
    );
}

#[tokio::test]
async fn a_head_over_64_kib_gets_431() {
    let addr = serve(describe, Duration::from_secs(30)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET / HTTP/1.1\r\nhost: g\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    // The server may answer and close before taking every byte; the answer is what counts.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_a_request_under_way() {
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(switchyard::server::serve(
        listener,
        describe,
        async {
            let _ = stopped.await;
        },
        ServeOptions::plain(PATIENCE),
    ));

    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let mut arriving = TcpStream::connect(addr).await.expect("connect");
    arriving
        .write_all(b"POST /score HTTP/1.1\r\nhost: g\r\ncontent-length: 4\r\n\r\nab")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).expect("stop");

    closed_after(&mut idle).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    arriving
        .write_all(b"cd")
        .await
        .expect("the rest of the body");
    let mut pending = Vec::new();
    let answer = read_answer(&mut arriving, &mut pending).await;
    assert_eq!(answer.body, "POST 4 HTTP/1.1");
    assert!(answer.head.contains("connection: close"), "{}", answer.head);
    closed_after(&mut arriving).await;
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the serve loop ends once both connections are done")
        .expect("serve loop");
}

#[tokio::test]
async fn an_http2_connection_that_never_sends_a_request_is_closed() {
    let timeout = Duration::from_millis(200);
    let addr = serve(describe, timeout).await;
    // The whole preface, then silence; and only its first line, then silence.
    for opening in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\n"[..],
    ] {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(opening).await.expect("write");
        let waited = closed_after(&mut stream).await;
        assert!(
            waited <= 2 * timeout + Duration::from_millis(500),
            "closed after {waited:?}"
        );
    }
}

#[tokio::test]
async fn an_http2_connection_that_sent_a_request_is_not_cut_by_the_first_request_deadline() {
    let timeout = Duration::from_millis(100);
    let slow = |request: Request<ClientBody>, connection| async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        describe(request, connection).await
    };
    let addr = serve(slow, timeout).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let uri: http::Uri = format!("http://{addr}/").parse().expect("uri");
    for _ in 0..2 {
        let response = client
            .request(
                Request::get(uri.clone())
                    .body(Full::default())
                    .expect("request"),
            )
            .await
            .expect("answered over the same connection");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"GET 0 HTTP/2.0");
        // Idle between requests for longer than the deadline.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_connection_idle_past_a_timeout_period_still_serves_its_next_requests() {
    // With a 200 ms period, a connection quiet for 300 ms has given its read buffer back (the
    // first period ended with no request waiting); it must read the next ones as before,
    // pipelined ones included, and be let go only after a whole period with no request.
    let addr = serve(describe, Duration::from_millis(200)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut pending = Vec::new();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nhost: g\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(
        read_answer(&mut stream, &mut pending).await.body,
        "GET 0 HTTP/1.1"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream
        .write_all(b"POST /second HTTP/1.1\r\nhost: g\r\ncontent-length: 3\r\n\r\nabcGET /third HTTP/1.1\r\nhost: g\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(
        read_answer(&mut stream, &mut pending).await.body,
        "POST 3 HTTP/1.1"
    );
    assert_eq!(
        read_answer(&mut stream, &mut pending).await.body,
        "GET 0 HTTP/1.1"
    );
}
