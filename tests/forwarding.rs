//! What crosses the gateway: method, path, query, headers and a streamed body, both ways.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode, Version};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An answer's headers and its whole body.
async fn headers_and_body(
    response: http::Response<hyper::body::Incoming>,
) -> (http::HeaderMap, Bytes) {
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (headers, body)
}

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
    let (headers, body) = headers_and_body(response).await;

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

/// An instance that answers every request with the same raw head and `body`, written exactly as
/// given, so the test controls case, order and repeats of its headers.
async fn raw_instance(head: &'static str, body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(loopback())
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    // Requests here carry no body: a head ends each one.
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let to_head = seen.starts_with(b"HEAD ");
                        seen.drain(..end + 4);
                        let mut answer = head.replace("{length}", &body.len().to_string());
                        if !to_head {
                            answer.push_str(body);
                        }
                        if stream.write_all(answer.as_bytes()).await.is_err() {
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
    url
}

#[tokio::test]
async fn an_instances_headers_reach_every_kind_of_client_alike() {
    let instance = raw_instance(
        "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: keep-alive, X-Hop\r\n\
         Set-Cookie: a=1\r\nX-Model:m\r\nX-Hop: private\r\nset-cookie: b=2\r\n\
         X-Request-Id: the-instances\r\nazureml-model-deployment: the-instances\r\n\
         Keep-Alive: timeout=5\r\nContent-Length: {length}\r\n\r\n",
        "{\"ok\":1}",
    )
    .await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&instance])]));
    let gateway = gateway(&file.path).await;

    let http1 = client();
    let http2: TestClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let url = format!("http://{}/score", gateway.addr());
    // HTTP/1.1 and HTTP/1.0 clients are served by the gateway's own path, HTTP/2 clients by
    // hyper. All must see the same headers.
    for (who, client, method, version) in [
        ("HTTP/1.1", &http1, Method::GET, Version::HTTP_11),
        ("HTTP/1.1 HEAD", &http1, Method::HEAD, Version::HTTP_11),
        ("HTTP/1.0", &http1, Method::GET, Version::HTTP_10),
        ("HTTP/2", &http2, Method::GET, Version::HTTP_2),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .version(version)
            .header("x-request-id", "from-the-client")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = tokio::time::timeout(PATIENCE, client.request(request))
            .await
            .expect("an answer in time")
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::OK, "{who}");
        let (headers, body) = headers_and_body(response).await;
        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().expect("ascii"))
                .collect()
        };
        assert_eq!(
            all("set-cookie"),
            ["a=1", "b=2"],
            "{who}: repeats kept, in order"
        );
        assert_eq!(all("x-model"), ["m"], "{who}");
        assert_eq!(
            all("date"),
            ["Sun, 06 Nov 1994 08:49:37 GMT"],
            "{who}: one date, the instance's"
        );
        assert!(all("x-hop").is_empty(), "{who}: named by Connection");
        assert!(all("keep-alive").is_empty(), "{who}: hop-by-hop");
        assert_eq!(
            all("x-request-id"),
            ["from-the-client"],
            "{who}: the gateway's, once"
        );
        assert_eq!(all(PIN), ["blue"], "{who}: the gateway's, once");
        if version != Version::HTTP_2 {
            assert_eq!(
                all("content-length"),
                ["8"],
                "{who}: the length, a HEAD's too"
            );
        }
        let expected: &[u8] = if method == Method::HEAD {
            b""
        } else {
            b"{\"ok\":1}"
        };
        assert_eq!(&body[..], expected, "{who}");
    }
}

#[tokio::test]
async fn a_head_answer_without_a_length_is_not_given_one() {
    // As a GET would be answered: chunked, or until the close. A HEAD answer says how the GET's
    // body would be framed; a `content-length: 0` the instance never sent would be a lie.
    let chunked = raw_instance("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", "").await;
    let sized = raw_instance("HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n", "").await;
    let file = EndpointFile::new(&endpoint_yaml(&[
        ("blue", 100, &[&chunked]),
        ("green", 0, &[&sized]),
    ]));
    let gateway = gateway(&file.path).await;
    let http2: TestClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let url = format!("http://{}/score", gateway.addr());
    for (who, client, version) in [
        ("HTTP/1.1", &client(), Version::HTTP_11),
        ("HTTP/1.0", &client(), Version::HTTP_10),
        ("HTTP/2", &http2, Version::HTTP_2),
    ] {
        for (deployment, length) in [("blue", None), ("green", Some("42"))] {
            let request = Request::builder()
                .method(Method::HEAD)
                .uri(&url)
                .version(version)
                .header(PIN, deployment)
                .body(Full::new(Bytes::new()))
                .expect("request");
            let response = tokio::time::timeout(PATIENCE, client.request(request))
                .await
                .expect("an answer in time")
                .expect("an answer");
            assert_eq!(response.status(), StatusCode::OK, "{who} {deployment}");
            assert_eq!(
                response
                    .headers()
                    .get("content-length")
                    .map(|v| v.to_str().expect("ascii")),
                length,
                "{who} {deployment}"
            );
        }
    }
}
