//! `mirror_traffic`: a share of weighted requests is copied to one deployment whose answers are
//! discarded. The client sees only the live answer, whatever the mirror does.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use switchyard::Gateway;
use switchyard::model_server::Model;
use switchyard::server::ClientBody;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Blue takes all live traffic; `percent` of it is copied to green.
fn mirrored_endpoint(blue: &str, green: &str, percent: u8) -> String {
    let text = endpoint_yaml(&[("blue", 100, &[blue]), ("green", 0, &[green])]);
    with_mirror(&text, "green", percent)
}

fn mirrored_ok(gateway: &Gateway) -> u64 {
    metric(
        gateway,
        "switchyard_requests_total",
        &[
            r#"deployment="green""#,
            r#"route="mirrored""#,
            r#"code="200""#,
        ],
    )
}

#[tokio::test]
async fn a_share_of_weighted_requests_is_copied_and_the_client_sees_only_the_live_answer() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let green = model_server(Model::Constant, "green-1").await;
    let file = EndpointFile::new(&mirrored_endpoint(&blue.url(), &green.url(), 10));
    let gateway = gateway_on_threads(&file.path, 1).await;
    let client = client();

    // 2,000 weighted requests on one serving thread: the mirror's draws come from a deck of
    // 100, so exactly 10 of every 100 are copied.
    const REQUESTS: u64 = 2_000;
    for _ in 0..REQUESTS {
        let answer = score(&client, gateway.addr(), None).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.deployment.as_deref(), Some("blue"));
        assert_eq!(answer.instance.as_deref(), Some("blue-1"));
    }
    assert_eq!(blue.scored(), REQUESTS);
    // Copies finish after their live requests; each is counted once its answer was read.
    eventually("the copies were not all counted", || {
        mirrored_ok(&gateway) == green.scored()
    })
    .await;
    assert_eq!(
        green.scored(),
        REQUESTS / 10,
        "copies of {REQUESTS} requests"
    );

    // Green still answers its own pinned requests, as a 0% deployment does.
    let pinned = score(&client, gateway.addr(), Some("green")).await;
    assert_eq!(pinned.deployment.as_deref(), Some("green"));
    let metrics = gateway.metrics().render();
    for series in [
        r#"switchyard_deployment_mirror_traffic_percent{deployment="green",endpoint="test-endpoint"} 10"#,
        r#"switchyard_mirrored_requests_abandoned_total{deployment="green",endpoint="test-endpoint"} 0"#,
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
}

#[tokio::test]
async fn pinned_requests_are_never_copied() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let green = model_server(Model::Constant, "green-1").await;
    let file = EndpointFile::new(&mirrored_endpoint(&blue.url(), &green.url(), 50));
    let gateway = gateway(&file.path).await;
    let client = client();

    for _ in 0..200 {
        let answer = score(&client, gateway.addr(), Some("blue")).await;
        assert_eq!(answer.deployment.as_deref(), Some("blue"));
    }
    // A copy is started before its live request is sent, so any copy of these would have
    // reached green by now; one weighted request afterwards shows copies do happen.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(green.scored(), 0);
    assert_eq!(mirrored_ok(&gateway), 0);
    for _ in 0..40 {
        score(&client, gateway.addr(), None).await;
    }
    // 40 requests at 50%: none copied has probability at most 2^-40 (the mirror's draws come
    // from a deck of 100, so each draw not copied makes the next likelier to be).
    eventually("no weighted request was copied", || green.scored() > 0).await;
}

#[tokio::test]
async fn a_dead_or_slow_mirror_never_reaches_the_client() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let dead = refused_url().await;
    let file = EndpointFile::new(&mirrored_endpoint(&blue.url(), &dead, 50));
    let gateway = gateway(&file.path).await;
    let client = client();
    for _ in 0..100 {
        let answer = score(&client, gateway.addr(), None).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.deployment.as_deref(), Some("blue"));
    }
    // The refusals are the mirror's: counted under its name and route, never as the client's.
    eventually("no refused copy was counted", || {
        metric(
            &gateway,
            "switchyard_requests_total",
            &[
                r#"deployment="green""#,
                r#"route="mirrored""#,
                r#"code="502""#,
            ],
        ) > 0
    })
    .await;
    assert_eq!(
        metric(
            &gateway,
            "switchyard_requests_total",
            &[r#"deployment="blue""#, r#"code="200""#]
        ),
        100
    );

    // A mirror slower than the whole loop: 20 requests, about half of them copied, would take
    // at least 10 s if the client waited for any copy.
    let slow = slow_model_server(Model::Constant, "green-1", Duration::from_secs(10)).await;
    file.write_in_place(&mirrored_endpoint(&blue.url(), &slow.url(), 50));
    wait_for_generation(&gateway, 2).await;
    let started = Instant::now();
    for _ in 0..20 {
        let answer = score(&client, gateway.addr(), None).await;
        assert_eq!(answer.deployment.as_deref(), Some("blue"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the client waited for the mirror: {:?}",
        started.elapsed()
    );
}

/// An upstream that reads each request whole and reports its headers and body on `requests`.
async fn recording_server(requests: mpsc::UnboundedSender<(HeaderMap, Bytes)>) -> String {
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let handler = move |request: Request<ClientBody>, _| {
        let requests = requests.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            let _ = requests.send((parts.headers, body));
            Response::new(http_body_util::Full::new(Bytes::from_static(b"[0.5]")))
        }
    };
    tokio::spawn(switchyard::server::serve(
        listener,
        handler,
        std::future::pending(),
        switchyard::server::ServeOptions::plain(Duration::from_secs(5)),
    ));
    url
}

/// Sends `body` as a chunked request in pieces, a pause between them, and returns the status
/// line and the body the gateway answered with.
async fn post_in_pieces(gateway: std::net::SocketAddr, body: &[u8]) -> (String, Vec<u8>) {
    let stream = TcpStream::connect(gateway).await.expect("connect");
    let (mut reader, mut stream) = stream.into_split();
    // The echo answers while the body is still coming; reading at once keeps it flowing.
    let reading = tokio::spawn(async move {
        let mut answer = Vec::new();
        reader.read_to_end(&mut answer).await.map(|_| answer)
    });
    stream
        .write_all(
            b"POST /score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write head");
    for piece in body.chunks(64 * 1024) {
        let size = format!("{:x}\r\n", piece.len());
        stream.write_all(size.as_bytes()).await.expect("write");
        stream.write_all(piece).await.expect("write");
        stream.write_all(b"\r\n").await.expect("write");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stream.write_all(b"0\r\n\r\n").await.expect("write end");
    let answer = tokio::time::timeout(PATIENCE, reading)
        .await
        .expect("answered in time")
        .expect("reader")
        .expect("read answer");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head.lines().next().unwrap_or("").to_string();
    (status, answer[split + 4..].to_vec())
}

#[tokio::test]
async fn a_streamed_body_reaches_the_mirror_whole() {
    let (echo, _echo) = echo_server().await;
    let (sender, mut copies) = mpsc::unbounded_channel();
    let recorder = recording_server(sender).await;
    let file = EndpointFile::new(&mirrored_endpoint(&echo, &recorder, 50));
    let gateway = gateway(&file.path).await;

    // Bodies of 512 KiB, streamed in pieces, each different; 40 of them at 50% leave none
    // copied with probability at most 2^-40.
    let bodies: Vec<Vec<u8>> = (0..40u8)
        .map(|n| (0..512 * 1024).map(|i| (i % 251) as u8 ^ n).collect())
        .collect();
    for body in &bodies {
        let (status, answer) = post_in_pieces(gateway.addr(), body).await;
        assert!(status.contains("200"), "{status}");
        // The echo answers chunked; its payload is the body, so at least that many bytes came.
        assert!(
            answer.len() >= body.len(),
            "{} bytes answered",
            answer.len()
        );
    }
    let mut received = 0;
    eventually("no streamed body reached the mirror", || {
        while let Ok((_, copy)) = copies.try_recv() {
            assert!(
                bodies.iter().any(|body| body[..] == copy[..]),
                "the mirror received {} bytes that match no body sent",
                copy.len()
            );
            received += 1;
        }
        received > 0 && mirrored_ok(&gateway) == received
    })
    .await;
    let abandoned = metric(
        &gateway,
        "switchyard_mirrored_requests_abandoned_total",
        &[],
    );
    assert_eq!(abandoned, 0);
}

#[tokio::test]
async fn a_copy_carries_the_live_request_id_and_never_the_key() {
    const KEY: &str = "primary-0123456789abcdef";
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let (sender, mut copies) = mpsc::unbounded_channel();
    let recorder = recording_server(sender).await;
    let text = mirrored_endpoint(&blue.url(), &recorder, 50)
        .replace("auth_mode: none", "auth_mode: key\nkeys_file: keys.yaml");
    let file = EndpointFile::new(&text);
    std::fs::write(
        file.dir.path().join("keys.yaml"),
        format!("primary_key: {KEY}\n"),
    )
    .expect("write keys");
    let gateway = gateway(&file.path).await;
    let client = client();

    // 40 requests at 50%: none copied has probability at most 2^-40.
    let mut ids = Vec::new();
    for _ in 0..40 {
        let mut request = score_request(gateway.addr(), None);
        let bearer = format!("Bearer {KEY}").parse().expect("header");
        request.headers_mut().insert("authorization", bearer);
        let response = client.request(request).await.expect("answer");
        let id = response.headers().get("x-request-id").cloned();
        ids.push(id.expect("a request id"));
        assert_eq!(read(response).await.status, 200);
    }
    let mut received = Vec::new();
    eventually("no copy reached the mirror", || {
        while let Ok(copy) = copies.try_recv() {
            received.push(copy);
        }
        !received.is_empty() && mirrored_ok(&gateway) == received.len() as u64
    })
    .await;
    for (headers, body) in &received {
        assert_eq!(
            headers.get("authorization"),
            None,
            "the key reached the mirror"
        );
        let id = headers
            .get("x-request-id")
            .expect("the copy has a request id");
        assert!(ids.contains(id), "{id:?} is no live request's id");
        assert_eq!(&body[..], switchyard::demo::SAMPLE_REQUEST.as_bytes());
    }
}

#[tokio::test]
async fn a_mirror_that_stops_reading_is_abandoned_and_the_live_request_completes() {
    let (echo, _echo) = echo_server().await;
    // Accepts connections and never reads from them, with a small receive buffer (accepted
    // sockets inherit it) so that the bytes in flight to it stay far below the body's size.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(64 * 1024)
        .expect("receive buffer");
    socket.bind(loopback()).expect("bind");
    let stalled = socket.listen(16).expect("listen");
    let stalled_url = format!("http://{}", stalled.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = stalled.accept().await {
            open.push(stream);
        }
    });
    let file = EndpointFile::new(&mirrored_endpoint(&echo, &stalled_url, 50));
    let gateway = gateway(&file.path).await;

    // 16 MiB bodies: more than the socket buffers on the way to the stalled mirror hold (its
    // 64 KiB and the gateway's send buffer, at most 4 MiB by Linux's default), so its copy
    // falls behind by more than the 1 MiB it may. Up to 24 tries at 50%: none copied has
    // probability at most 2^-24.
    let body: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    for _ in 0..24 {
        let (status, answer) = post_in_pieces(gateway.addr(), &body).await;
        assert!(status.contains("200"), "{status}");
        assert!(
            answer.len() >= body.len(),
            "{} bytes answered",
            answer.len()
        );
        if metric(
            &gateway,
            "switchyard_mirrored_requests_abandoned_total",
            &[],
        ) > 0
        {
            break;
        }
    }
    eventually("no copy was abandoned", || {
        metric(
            &gateway,
            "switchyard_mirrored_requests_abandoned_total",
            &[r#"deployment="green""#],
        ) > 0
    })
    .await;
    held.abort();
}
