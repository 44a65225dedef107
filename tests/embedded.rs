//! A Switchyard endpoint as a `tower::Service`, driven with `oneshot` and no socket of its own:
//! what an axum or hyper server that mounts it sees.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use switchyard::demo::SAMPLE_REQUEST;
use switchyard::model_server::Model;
use switchyard::{Endpoint, EndpointOptions};
use tower::ServiceExt;

fn scoring(pin: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = Request::post("/score")
        .header("host", "models.example")
        .header("content-type", "application/json")
        .extension(std::net::SocketAddr::from(([192, 0, 2, 7], 40000)));
    if let Some(pin) = pin {
        request = request.header(PIN, pin);
    }
    request
        .body(Full::new(Bytes::from_static(SAMPLE_REQUEST.as_bytes())))
        .expect("request")
}

#[tokio::test]
async fn an_endpoint_mounted_as_a_service_routes_pins_and_counts() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let green = model_server(Model::Constant, "green-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[
        ("blue", 100, &[&blue.url()]),
        ("green", 0, &[&green.url()]),
    ]));
    let endpoint = Endpoint::start(EndpointOptions::new(&file.path)).expect("start");

    let answer = endpoint
        .clone()
        .oneshot(scoring(None))
        .await
        .expect("infallible");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()[PIN], "blue");
    assert_eq!(answer.headers()["x-demo-instance"], "blue-1");

    let answer = endpoint
        .clone()
        .oneshot(scoring(Some("green")))
        .await
        .expect("infallible");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()[PIN], "green");

    let answer = endpoint
        .clone()
        .oneshot(scoring(Some("red")))
        .await
        .expect("infallible");
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    let body = answer.into_body().collect().await.expect("body").to_bytes();
    let error: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(error["error"]["code"], "deployment_not_found");

    let counted = |deployment: &str| {
        endpoint
            .metrics()
            .render()
            .lines()
            .filter(|line| {
                line.starts_with("switchyard_requests_total")
                    && line.contains(&format!("deployment=\"{deployment}\""))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert_eq!(counted("blue"), 1);
    assert_eq!(counted("green"), 1);

    // The file is watched as by the gateway: a new split applies.
    file.replace_by_rename(&endpoint_yaml(&[
        ("blue", 0, &[&blue.url()]),
        ("green", 100, &[&green.url()]),
    ]));
    eventually("the new split applies", || endpoint.generation() == 2).await;
    let answer = endpoint
        .clone()
        .oneshot(scoring(None))
        .await
        .expect("infallible");
    assert_eq!(answer.headers()[PIN], "green");
}

/// Mounted in a hyper server of the team's own, the endpoint still splices a WebSocket: it takes
/// hyper's upgrade from the request, and the tunnel runs on the connection hyper hands over.
#[tokio::test]
async fn an_endpoint_mounted_in_a_hyper_server_splices_a_websocket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upper_casing_websocket().await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&upstream])]));
    let endpoint = Endpoint::start(EndpointOptions::new(&file.path)).expect("start");
    let listener = tokio::net::TcpListener::bind(loopback())
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let service = hyper::service::service_fn(move |request| endpoint.clone().oneshot(request));
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .with_upgrades()
            .await;
    });

    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nhost: models.example\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .expect("handshake");
    let head = read_response_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    stream.write_all(b"through").await.expect("send");
    let mut answer = [0u8; 7];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut answer))
        .await
        .expect("an answer through the tunnel")
        .expect("read");
    assert_eq!(&answer, b"THROUGH");
}
