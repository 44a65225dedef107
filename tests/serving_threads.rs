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

/// Opens a connection and finds the thread serving it: the one whose count went up.
async fn open_and_locate(
    gateway: &switchyard::Gateway,
    connections: &mut Vec<(ClientConnection, usize)>,
) -> usize {
    let before = per_thread(gateway, 2);
    let connection = ClientConnection::open(gateway.addr()).await;
    // The connection was counted when accepted, before its request was answered.
    let after = per_thread(gateway, 2);
    let grown: Vec<usize> = (0..2).filter(|&i| after[i] == before[i] + 1).collect();
    assert_eq!(
        grown.len(),
        1,
        "one thread should have one more connection: {before:?} -> {after:?}"
    );
    connections.push((connection, grown[0]));
    grown[0]
}

#[tokio::test]
async fn new_connections_go_to_the_thread_with_the_fewest() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let gateway = gateway_on_threads(&file.path, 2).await;

    // Whichever socket the kernel picks, the threads never differ by more than one. (By the
    // kernel's hash alone, 16 connections would split evenly at each of the 8 even counts with
    // a chance of 1 in 256.)
    let mut connections = Vec::new();
    for opened in 1..=16 {
        open_and_locate(&gateway, &mut connections).await;
        let loads = per_thread(&gateway, 2);
        assert!(
            (loads[0] - loads[1]).abs() <= 1 && loads[0] + loads[1] == opened,
            "after {opened} connections: {loads:?}"
        );
    }
    assert_eq!(per_thread(&gateway, 2), [8, 8]);

    // Close those on thread 0: the next eight all go there, wherever the kernel sends them.
    connections.retain(|(_, thread)| *thread == 1);
    until_per_thread(&gateway, &[0, 8]).await;
    for _ in 0..8 {
        let thread = open_and_locate(&gateway, &mut connections).await;
        assert_eq!(thread, 0, "loads now {:?}", per_thread(&gateway, 2));
    }
    assert_eq!(per_thread(&gateway, 2), [8, 8]);

    drop(connections);
    until_per_thread(&gateway, &[0, 0]).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_connection_per_request_is_served_whichever_thread_takes_it() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let gateway = gateway_on_threads(&file.path, 2).await;
    let addr = gateway.addr();

    // 8 clients, 25 requests each, every request on a new connection: loads shift all the time,
    // so many connections are handed from one thread to the other.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..25 {
                    // Fails the test unless the request is answered with 200.
                    drop(ClientConnection::open(addr).await);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("every request answered");
    }
    until_per_thread(&gateway, &[0, 0]).await;
    gateway.shutdown().await;
}
