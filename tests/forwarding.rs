//! What crosses the gateway: method, path, query, headers and a streamed body, both ways.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[tokio::test]
async fn method_path_query_headers_and_body_reach_the_instance() {
    let (echo, _task) = echo_server().await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&echo])]));
    let gateway = gateway(&file.path).await;

    let request = Request::put(format!(
        "http://{}/v1/models/m:predict?verbose=1&x=%20",
        gateway.addr()
    ))
    .header("content-type", "application/json")
    .header("x-custom", "kept")
    .header("connection", "keep-alive, x-client-private")
    .header("x-client-private", "hop")
    .header("keep-alive", "timeout=5")
    .body(Full::new(Bytes::from_static(b"{\"data\": [[1]]}")))
    .expect("request");
    let response = client().request(request).await.expect("answer");
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();

    let echoed = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().expect("ascii").to_string())
    };
    assert_eq!(echoed("x-echo-method").as_deref(), Some("PUT"));
    assert_eq!(
        echoed("x-echo-uri").as_deref(),
        Some("/v1/models/m:predict?verbose=1&x=%20")
    );
    assert_eq!(echoed("x-echo-x-custom").as_deref(), Some("kept"));
    assert_eq!(
        echoed("x-echo-content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        echoed("x-echo-x-client-private"),
        None,
        "named by Connection: hop-by-hop"
    );
    assert_eq!(echoed("x-echo-keep-alive"), None, "hop-by-hop");
    assert_eq!(
        echoed("x-echo-host").as_deref(),
        Some(echo.trim_start_matches("http://"))
    );
    assert_eq!(
        echoed("x-upstream-private"),
        None,
        "hop-by-hop on the way back too"
    );
    assert_eq!(echoed(PIN).as_deref(), Some("blue"));
    assert_eq!(
        echoed("x-echo-x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(echoed("x-echo-x-forwarded-proto").as_deref(), Some("http"));
    let gateway_host = gateway.addr().to_string();
    assert_eq!(
        echoed("x-echo-x-forwarded-host").as_deref(),
        Some(gateway_host.as_str())
    );
    let request_id = echoed("x-echo-x-request-id").expect("a request id reaches the instance");
    assert_eq!(request_id.len(), 36, "a generated UUID: {request_id}");
    assert_eq!(
        echoed("x-request-id"),
        Some(request_id),
        "and comes back to the client"
    );
    assert_eq!(&body[..], b"{\"data\": [[1]]}");
}

#[tokio::test]
async fn a_clients_request_id_is_kept() {
    let (echo, _task) = echo_server().await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&echo])]));
    let gateway = gateway(&file.path).await;
    let request = Request::post(format!("http://{}/score", gateway.addr()))
        .header("x-request-id", "trace-42")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = client().request(request).await.expect("answer");
    assert_eq!(response.headers()["x-echo-x-request-id"], "trace-42");
    assert_eq!(response.headers()["x-request-id"], "trace-42");
}

#[tokio::test]
async fn bodies_stream_both_ways_without_being_buffered_whole() {
    let (echo, _task) = echo_server().await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&echo])]));
    let gateway = gateway(&file.path).await;

    // One connection, a request body we feed by hand. If any hop waited for the whole request
    // before answering, the first echoed chunk would never arrive while the request is open.
    let stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let (mut body_tx, body) = Channel::<Bytes, Infallible>::new(1);
    let request = Request::post(format!("http://{}/score", gateway.addr()))
        .body(body)
        .expect("request");
    let response = tokio::spawn(sender.send_request(request));

    body_tx
        .send_data(Bytes::from_static(b"first chunk;"))
        .await
        .expect("send");
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("response head while the request is still open")
        .expect("task")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("first chunk echoed while the request is still open")
        .expect("a frame")
        .expect("data");
    assert_eq!(
        first.into_data().expect("data"),
        Bytes::from_static(b"first chunk;")
    );

    // Then a large remainder, to check nothing is lost or reordered on the way.
    let large: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let sending = tokio::spawn(async move {
        for piece in large.chunks(64 * 1024) {
            body_tx
                .send_data(Bytes::copy_from_slice(piece))
                .await
                .expect("send");
        }
    });
    let rest = body.collect().await.expect("rest").to_bytes();
    sending.await.expect("sender");
    assert_eq!(rest.len(), 4 * 1024 * 1024);
    assert!(rest.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
}
