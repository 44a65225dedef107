//! Serving threads: new client connections go to the thread with the fewest open ones, and each
//! thread's count shows in `switchyard_client_connections`.

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use switchyard::model_server::Model;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// One client connection to the gateway, kept open until dropped.
struct ClientConnection {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl ClientConnection {
    /// Connects and scores once, so the connection is surely accepted and handed to a thread.
    async fn open(gateway: std::net::SocketAddr) -> ClientConnection {
        let stream = TcpStream::connect(gateway).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = ClientConnection { sender, task };
        let response = tokio::time::timeout(
            PATIENCE,
            client.sender.send_request(score_request(gateway, None)),
        )
        .await
        .expect("no answer in time")
        .expect("request failed");
        assert_eq!(read(response).await.status, StatusCode::OK);
        client
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Open connections per serving thread, as the metrics show them.
fn per_thread(gateway: &switchyard::Gateway, threads: usize) -> Vec<i64> {
    let text = gateway.metrics().render();
    (0..threads)
        .map(|worker| {
            let series = format!("switchyard_client_connections{{worker=\"{worker}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&series))
                .map_or(0, |value| value.trim().parse().expect("a count"))
        })
        .collect()
}

/// Waits until the metrics show `expected`, or fails with what they show.
async fn until_per_thread(gateway: &switchyard::Gateway, expected: &[i64]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = per_thread(gateway, expected.len());
        if seen == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "open connections per thread: {seen:?}, expected {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn new_connections_go_to_the_thread_with_the_fewest() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let mut options = switchyard::GatewayOptions::new(&file.path, loopback());
    options.workers = Some(2);
    let gateway = switchyard::Gateway::start(options)
        .await
        .expect("start the gateway");
    let addr = gateway.addr();

    // Equal loads take turns: connection i lands on thread i % 2.
    let mut connections = Vec::new();
    for _ in 0..8 {
        connections.push(ClientConnection::open(addr).await);
    }
    until_per_thread(&gateway, &[4, 4]).await;

    // Close the four on thread 0: the next four all go there, where turns would have split them.
    let mut index = 0;
    connections.retain(|_| {
        index += 1;
        index % 2 == 0
    });
    until_per_thread(&gateway, &[0, 4]).await;
    for _ in 0..4 {
        connections.push(ClientConnection::open(addr).await);
    }
    until_per_thread(&gateway, &[4, 4]).await;

    drop(connections);
    until_per_thread(&gateway, &[0, 0]).await;
    gateway.shutdown().await;
}
