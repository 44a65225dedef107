//! The gateway's HTTP/1.1 connections to instances: kept alive and reused, given up when the
//! instance closes them or says so, and framed right for answers without a body and for answers
//! that come before the request body is sent.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as an instance received it.
struct Received {
    head: String,
    body: Vec<u8>,
}

/// What the instance does after answering.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// Wait for the next request on the connection.
    KeepOpen,
    /// Close the connection without saying so in the answer.
    Close,
    /// Wait this long for the next request, then close (an idle timeout).
    IdleFor(Duration),
}

/// An instance speaking raw HTTP/1.1: for each request, `answer` gives the bytes to send back and
/// what to do next. Returns its URL and a count of the connections it accepted.
async fn instance(
    answer: impl Fn(&Received) -> (String, Then) + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut idle = None;
                loop {
                    let next = read_request(&mut stream, &mut buffer);
                    let request = match idle {
                        Some(limit) => match tokio::time::timeout(limit, next).await {
                            Ok(request) => request,
                            Err(_) => return,
                        },
                        None => next.await,
                    };
                    let Some(request) = request else { return };
                    let (bytes, then) = answer(&request);
                    if stream.write_all(bytes.as_bytes()).await.is_err() || then == Then::Close {
                        return;
                    }
                    if let Then::IdleFor(limit) = then {
                        idle = Some(limit);
                    }
                }
            });
        }
    });
    (url, accepted)
}

/// Reads one request with a Content-Length body (or none); `None` when the connection closed.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Received> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse::<usize>().expect("length"));
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Some(Received { head, body })
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn post(
    client: &TestClient,
    gateway: std::net::SocketAddr,
    body: &str,
) -> (StatusCode, Bytes) {
    let request = Request::post(format!("http://{gateway}/score"))
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let answer = read(client.request(request).await.expect("answer")).await;
    (answer.status, answer.body)
}

#[tokio::test]
async fn one_connection_carries_request_after_request() {
    let (url, accepted) =
        instance(|request| (ok(&request.body.len().to_string()), Then::KeepOpen)).await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&url])]));
    let gateway = gateway(&file.path).await;
    let client = client();
    for n in 0..20 {
        let body = "x".repeat(n);
        let (status, answer) = post(&client, gateway.addr(), &body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, n.to_string(), "request {n} got its own answer");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "sequential requests share one kept-alive connection"
    );
}

#[tokio::test]
async fn an_instance_that_closes_after_each_answer_costs_no_request() {
    // It never says `connection: close`; the gateway must notice the closed connection itself.
    let (url, accepted) = instance(|_| (ok("done"), Then::Close)).await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&url])]));
    let gateway = gateway(&file.path).await;
    let client = client();
    for _ in 0..20 {
        let (status, answer) = post(&client, gateway.addr(), "{}").await;
        assert_eq!((status, &answer[..]), (StatusCode::OK, &b"done"[..]));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn connection_close_in_an_answer_is_honoured() {
    let (url, accepted) = instance(|_| {
        (
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_string(),
            Then::KeepOpen,
        )
    })
    .await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&url])]));
    let gateway = gateway(&file.path).await;
    let client = client();
    for _ in 0..3 {
        let (status, answer) = post(&client, gateway.addr(), "{}").await;
        assert_eq!((status, &answer[..]), (StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "each answer said close, so each request needed a new connection"
    );
}

#[tokio::test]
async fn answers_without_a_body_do_not_wait_for_one() {
    let (url, accepted) = instance(|request| {
        let answer = if request.head.starts_with("HEAD ") {
            // A HEAD answer announces the length of a body it does not send.
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
        } else if request.head.starts_with("DELETE ") {
            "HTTP/1.1 204 No Content\r\n\r\n"
        } else {
            "HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"
        };
        (answer.to_string(), Then::KeepOpen)
    })
    .await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&url])]));
    let gateway = gateway(&file.path).await;
    let client = client();
    for (method, status) in [
        (Method::HEAD, StatusCode::OK),
        (Method::DELETE, StatusCode::NO_CONTENT),
        (Method::GET, StatusCode::NOT_MODIFIED),
        (Method::HEAD, StatusCode::OK),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}/score", gateway.addr()))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let answer = tokio::time::timeout(PATIENCE, async {
            read(client.request(request).await.expect("answer")).await
        })
        .await
        .expect("no body is waited for");
        assert_eq!(
            (answer.status, answer.body),
            (status, Bytes::new()),
            "{method}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "and the connection stays usable"
    );
}

#[tokio::test]
async fn an_answer_that_comes_before_the_whole_body_reaches_the_client() {
    // The instance refuses on sight of the head: it never reads the 4 MiB body.
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                }
                let refusal = "HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\n\
                               content-length: 8\r\n\r\ntoo much";
                let _ = stream.write_all(refusal.as_bytes()).await;
                // Keep the connection open a while without reading, like a busy server.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            });
        }
    });
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&url])]));
    let gateway = gateway(&file.path).await;
    let big = "y".repeat(4 * 1024 * 1024);
    let (status, answer) = tokio::time::timeout(PATIENCE, post(&client(), gateway.addr(), &big))
        .await
        .expect("the early answer is not stuck behind the body");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(&answer[..], b"too much");
}

#[tokio::test]
async fn serving_threads_share_the_port_and_reuse_their_upstream_connections() {
    let (url, accepted) = instance(|_| (ok("x"), Then::KeepOpen)).await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&url])]));
    let gateway = gateway_on_threads(&file.path, 2).await;
    let addr = gateway.addr();
    // 8 clients at once, 10 requests each, each client on its own connection.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let client = client();
                let mut statuses = Vec::new();
                for _ in 0..10 {
                    statuses.push(post(&client, addr, "{}").await.0);
                }
                statuses
            })
        })
        .collect();
    for client in clients {
        let statuses = client.await.expect("client task");
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
    }
    // At most one request per client is in flight, so at most 8 upstream connections are ever
    // needed; each thread reuses its own.
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&opened),
        "{opened} upstream connections for 80 requests"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_body_still_arriving_when_the_pooled_connection_idles_out_moves_to_a_new_one() {
    // The instance closes a connection it has waited on for 100 ms. The second request takes
    // the pooled connection, then its body arrives slowly: the instance closes meanwhile, having
    // seen none of it.
    let (url, accepted) = instance(|request| {
        (
            ok(&String::from_utf8_lossy(&request.body)),
            Then::IdleFor(Duration::from_millis(100)),
        )
    })
    .await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&url])]));
    let gateway = gateway(&file.path).await;
    let client = client();
    assert_eq!(
        post(&client, gateway.addr(), "first").await.0,
        StatusCode::OK
    );

    let (mut body_tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let request = Request::post(format!("http://{}/score", gateway.addr()))
        .header("content-length", "10")
        .body(body)
        .expect("request");
    let streaming_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let response = tokio::spawn(streaming_client.request(request));
    body_tx
        .send_data(Bytes::from_static(b"hello"))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    body_tx
        .send_data(Bytes::from_static(b"world"))
        .await
        .expect("send");
    drop(body_tx);
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("an answer")
        .expect("task")
        .expect("response");
    let answer = read(response).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        &answer.body[..],
        b"helloworld",
        "the whole body reached the instance"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_answer_with_both_a_length_and_chunked_framing_ends_its_connection() {
    // Framed by the chunked coding; the stray `smuggled` bytes after it are what a reused
    // connection would hand the next client as its answer.
    let (url, accepted) = instance(|_| {
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n\
             2\r\nok\r\n0\r\n\r\n"
                .to_string(),
            Then::KeepOpen,
        )
    })
    .await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&url])]));
    let gateway = gateway(&file.path).await;
    let client = client();
    for _ in 0..3 {
        let (status, answer) = post(&client, gateway.addr(), "{}").await;
        assert_eq!((status, &answer[..]), (StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "no connection that carried a conflicting framing is used again"
    );
}

#[tokio::test]
async fn bytes_an_instance_sends_after_its_answer_never_reach_another_request() {
    let (url, accepted) = instance(|request| {
        let answer = ok(&request.body.len().to_string());
        // The same write carries a second, unasked-for answer.
        (
            format!("{answer}HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nstolen!"),
            Then::KeepOpen,
        )
    })
    .await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&url])]));
    let gateway = gateway(&file.path).await;
    let client = client();
    for n in 1..6 {
        let (status, answer) = post(&client, gateway.addr(), &"x".repeat(n)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, n.to_string(), "request {n} got its own answer");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_response_head_over_64_kib_is_refused_however_it_arrives() {
    let padding = "a".repeat(130 * 1024);
    let (url, _) = instance(move |_| {
        (
            format!("HTTP/1.1 200 OK\r\nx-padding: {padding}\r\ncontent-length: 2\r\n\r\nok"),
            Then::KeepOpen,
        )
    })
    .await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&url])]));
    let gateway = gateway(&file.path).await;
    let (status, _) = post(&client(), gateway.addr(), "{}").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}
