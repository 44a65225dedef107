//! TLS with certificate reload, HTTP/2 (ALPN and h2c prior knowledge), server-sent events, and an
//! upstream that dies mid-response.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::tls::{client_config, write_certificate};
use common::*;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use switchyard::model_server::Model;
use switchyard::{Gateway, GatewayOptions, TlsFiles};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn tls_gateway(blue: &str, files: TlsFiles) -> (EndpointFile, Gateway) {
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[blue])]));
    let mut options = GatewayOptions::new(&file.path, loopback());
    options.tls = Some(files);
    let gateway = Gateway::start(options).await.expect("start with TLS");
    (file, gateway)
}

/// The certificate the server presents on a new connection.
async fn presented_certificate(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> CertificateDer<'static> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(addr).await.expect("connect");
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), stream)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certificates")[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn https_serves_http1_and_h2_by_alpn() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let dir = tempfile::tempdir().expect("dir");
    let (files, cert) = write_certificate(dir.path(), "first");
    let (_file, gateway) = tls_gateway(&blue.url(), files).await;
    let url = format!("https://localhost:{}/score", gateway.addr().port());

    for (http2, expected) in [(false, Version::HTTP_11), (true, Version::HTTP_2)] {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_config(std::slice::from_ref(&cert)))
            .https_only()
            .enable_http1();
        let connector = if http2 {
            builder.enable_http2().build()
        } else {
            builder.build()
        };
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build(connector);
        let request = Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                switchyard::demo::SAMPLE_REQUEST.as_bytes(),
            )))
            .expect("request");
        let response = client.request(request).await.expect("answer over TLS");
        assert_eq!(response.version(), expected);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[PIN], "blue");
    }
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_and_old_ones_stay_open() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let dir = tempfile::tempdir().expect("dir");
    let (files, first) = write_certificate(dir.path(), "first");
    let (_file, gateway) = tls_gateway(&blue.url(), files).await;
    let addr = gateway.addr();

    // An HTTP/1.1 connection opened with the first certificate.
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(std::slice::from_ref(&first))));
    let stream = TcpStream::connect(addr).await.expect("connect");
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), stream)
        .await
        .expect("handshake");
    let (mut open, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http handshake");
    tokio::spawn(driver);

    let (_, second) = write_certificate(dir.path(), "second");
    let trusting_both = || client_config(&[first.clone(), second.clone()]);
    let deadline = std::time::Instant::now() + PATIENCE;
    while presented_certificate(addr, trusting_both()).await != second {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let response = open
        .send_request(score_request(addr, None))
        .await
        .expect("the connection opened before the reload still works");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn h2c_with_prior_knowledge_is_served() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let gateway = gateway(&file.path).await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let answer = client
        .request(score_request(gateway.addr(), None))
        .await
        .expect("h2c answer");
    assert_eq!(answer.version(), Version::HTTP_2);
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        blue.scored(),
        1,
        "an HTTP/2 client reaches an HTTP/1.1 instance"
    );
}
#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let upstream = scripted_upstream(move |mut stream| {
        let mut release = release_rx.clone();
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            stream.write_all(head.as_bytes()).await.expect("head");
            stream.write_all(b"d\r\ndata: first\n\n\r\n").await.expect("first event");
            // The second event and the end wait until the test has seen the first one.
            let _ = release.wait_for(|go| *go).await;
            stream.write_all(b"e\r\ndata: second\n\n\r\n0\r\n\r\n").await.expect("rest");
        })
    })
    .await;
    let (_file, gateway) = gateway_for(&upstream).await;

    let response = client()
        .request(score_request(gateway.addr(), None))
        .await
        .expect("answer");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("the first event arrives while the stream is still open")
        .expect("frame")
        .expect("data")
        .into_data()
        .expect("data");
    assert_eq!(&first[..], b"data: first\n\n");
    release_tx.send(true).expect("release");
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(&rest[..], b"data: second\n\n");
}

#[tokio::test]
async fn an_upstream_dying_mid_body_never_looks_like_a_complete_answer() {
    let upstream = scripted_upstream(|mut stream| {
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            // Promises 100 bytes, sends 10, then the process "crashes".
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
            stream.write_all(head.as_bytes()).await.expect("partial");
            drop(stream);
        })
    })
    .await;
    let (_file, gateway) = gateway_for(&upstream).await;

    // The client may see the head and then a broken body, or only the broken connection if
    // the failure came before the head was flushed; it must never see a complete answer.
    let answer = tokio::time::timeout(PATIENCE, async {
        let response = client()
            .request(score_request(gateway.addr(), None))
            .await?;
        response.into_body().collect().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await
    .expect("the answer ends one way or another");
    assert!(
        answer.is_err(),
        "a truncated body must reach the client as an error"
    );
}

#[tokio::test]
async fn an_http2_deployment_speaks_h2c_to_its_instances() {
    let (echo, _task) = echo_server().await;
    let text = endpoint_yaml(&[("blue", 100, &[&echo])]).replace(
        "    request_settings:",
        "    protocol: http2\n    request_settings:",
    );
    let file = EndpointFile::new(&text);
    let gateway = gateway(&file.path).await;

    let mut request = score_request(gateway.addr(), None);
    request
        .headers_mut()
        .insert("te", "trailers".parse().expect("header"));
    let response = client().request(request).await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-echo-version"], "HTTP/2.0");
    assert_eq!(
        response.headers()["x-echo-te"],
        "trailers",
        "gRPC needs te: trailers"
    );
}

#[tokio::test]
async fn an_https_instance_is_verified_against_the_trusted_roots() {
    let dir = tempfile::tempdir().expect("dir");
    let (files, _) = write_certificate(dir.path(), "upstream");
    let store = switchyard::tls::CertStore::load(&files.cert, &files.key).expect("certificate");
    let (echo, _task) = echo_server_with(Some(store.acceptor().expect("acceptor"))).await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&echo])]));

    // Without the private CA, the instance's certificate is not trusted.
    let untrusting = gateway(&file.path).await;
    let answer = score(&client(), untrusting.addr(), None).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);

    let mut options = GatewayOptions::new(&file.path, loopback());
    options.upstream_ca_file = Some(files.cert.clone());
    let trusting = Gateway::start(options).await.expect("start");
    let answer = score(&client(), trusting.addr(), None).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn readiness_probes_go_over_the_traffics_tls_settings_and_protocol() {
    let dir = tempfile::tempdir().expect("dir");
    let (files, _) = write_certificate(dir.path(), "upstream");
    let store = switchyard::tls::CertStore::load(&files.cert, &files.key).expect("certificate");
    let (https, _task) = echo_server_with(Some(store.acceptor().expect("acceptor"))).await;
    let (h2c, _h2c_task) = echo_server().await;
    // blue: HTTPS with a private CA; green: HTTP/2 (h2c). Each probed with a GET.
    let text = format!(
        "name: test-endpoint\nauth_mode: none\ntraffic: {{blue: 100, green: 0}}\ndeployments:\n\
         \x20 - name: blue\n    instances: [{https}]\n    readiness_probe: {{path: /ready, period: 1}}\n\
         \x20 - name: green\n    protocol: http2\n    instances: [{h2c}]\n    \
         readiness_probe: {{path: /ready, period: 1}}\n"
    );
    let file = EndpointFile::new(&text);
    let ready = |gateway: &Gateway, name: &str| {
        gateway
            .reloader()
            .table()
            .load()
            .routes
            .deployment(name)
            .map_or(0, |deployment| deployment.available_instances())
    };

    // The probe trusts what the traffic trusts: without the private CA, blue never gets ready.
    let untrusting = gateway(&file.path).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ready(&untrusting, "blue"), 0);
    let answer = score(&client(), untrusting.addr(), None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);

    let mut options = GatewayOptions::new(&file.path, loopback());
    options.upstream_ca_file = Some(files.cert.clone());
    let trusting = Gateway::start(options).await.expect("start");
    eventually("the https instance passes its probe", || {
        ready(&trusting, "blue") == 1
    })
    .await;
    eventually("the HTTP/2 instance passes its probe", || {
        ready(&trusting, "green") == 1
    })
    .await;
    for deployment in ["blue", "green"] {
        let answer = score(&client(), trusting.addr(), Some(deployment)).await;
        assert_eq!(answer.status, StatusCode::OK, "{deployment}");
        assert_eq!(answer.deployment.as_deref(), Some(deployment));
    }
}

#[tokio::test]
async fn a_websocket_upgrade_is_spliced_through() {
    let upstream = upper_casing_websocket().await;
    let (_file, gateway) = gateway_for(&upstream).await;
    let stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    a_websocket_is_spliced_through_on(stream, &gateway).await;
}

/// Inside TLS the handshake is read by the same path, and the tunnel runs inside the session.
#[tokio::test]
async fn over_tls_a_websocket_upgrade_is_spliced_through() {
    let upstream = upper_casing_websocket().await;
    let (_file, gateway) = common::tls::TlsGateway::for_instance(&upstream).await;
    let stream = gateway.connect().await;
    a_websocket_is_spliced_through_on(stream, &gateway.gateway).await;
}

/// The client's handshake, with its first message sent right behind it: the 101 comes back
/// without a close, the message (kept while the instance answered) and the next go through the
/// tunnel, the tunnel counts as an open client connection while it lasts, and closing it on
/// the client's side ends it.
async fn a_websocket_is_spliced_through_on(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    gateway: &switchyard::Gateway,
) {
    use tokio::io::AsyncReadExt;
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nhost: gateway\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\nhello")
        .await
        .expect("handshake");
    let head = read_response_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert!(head.contains("azureml-model-deployment: blue"), "{head}");

    for message in ["hello", "second frame"] {
        if message != "hello" {
            stream.write_all(message.as_bytes()).await.expect("send");
        }
        let mut answer = vec![0u8; message.len()];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut answer))
            .await
            .expect("an answer through the tunnel")
            .expect("read");
        assert_eq!(answer, message.to_uppercase().as_bytes());
    }
    let open = || metric(gateway, "switchyard_client_connections", &[]);
    assert_eq!(open(), 1, "the tunnel is an open client connection");
    drop(stream);
    eventually("the tunnel ends with the client's side", || open() == 0).await;
}

/// An upstream that answers every request with a 101 to `protocol` and records each request
/// head it received.
async fn switching_upstream(
    protocol: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::AsyncReadExt;
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&heads);
    let upstream = scripted_upstream(move |mut stream| {
        let seen = std::sync::Arc::clone(&seen);
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&buffer[..n]);
            }
            seen.lock()
                .expect("heads")
                .push(String::from_utf8_lossy(&head).to_lowercase());
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {protocol}\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            tokio::time::sleep(PATIENCE).await;
        })
    })
    .await;
    (upstream, heads)
}

async fn raw_exchange(gateway: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(gateway).await.expect("connect");
    stream.write_all(request).await.expect("request");
    read_response_head(&mut stream).await
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_passed_on_or_tunnelled() {
    let (upstream, heads) = switching_upstream("h2c").await;
    let (_file, gateway) = gateway_for(&upstream).await;
    let answer = raw_exchange(
        gateway.addr(),
        b"GET / HTTP/1.1\r\nhost: gateway\r\nconnection: Upgrade, HTTP2-Settings\r\n\
          upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert!(
        !answer.starts_with("http/1.1 101"),
        "no tunnel to the instance: {answer}"
    );
    let forwarded = heads.lock().expect("heads").join("");
    assert!(!forwarded.contains("upgrade"), "{forwarded}");
    assert!(!forwarded.contains("http2-settings"), "{forwarded}");
}

#[tokio::test]
async fn a_switch_to_a_protocol_the_client_did_not_ask_for_is_refused() {
    let (upstream, _) = switching_upstream("something-else").await;
    let (_file, gateway) = gateway_for(&upstream).await;
    let answer = raw_exchange(
        gateway.addr(),
        b"GET /ws HTTP/1.1\r\nhost: gateway\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("http/1.1 502"), "{answer}");
}

#[tokio::test]
async fn request_targets_reach_the_instance_in_origin_form_or_are_refused() {
    let (upstream, _task) = echo_server().await;
    let (_file, gateway) = gateway_for(&upstream).await;
    let answer = raw_exchange(
        gateway.addr(),
        b"GET http://gateway?q=1 HTTP/1.1\r\nhost: gateway\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("x-echo-uri: /?q=1"), "{answer}");
    for target in ["foo", "!", "example.com:80", "ftp://gateway/a"] {
        let request = format!("GET {target} HTTP/1.1\r\nhost: gateway\r\n\r\n");
        let answer = raw_exchange(gateway.addr(), request.as_bytes()).await;
        assert!(answer.starts_with("http/1.1 400"), "{target}: {answer}");
    }
    let answer = raw_exchange(
        gateway.addr(),
        b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("http/1.1 405"), "{answer}");
}

#[tokio::test]
async fn trailer_fields_that_could_reframe_or_reroute_never_reach_the_instance() {
    use tokio::io::AsyncReadExt;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let upstream = scripted_upstream(move |mut stream| {
        let seen = seen_tx.clone();
        tokio::spawn(async move {
            let mut wire = Vec::new();
            let mut buffer = [0u8; 4096];
            // The whole chunked request, to the blank line after its trailers.
            while !(wire.windows(5).any(|w| w == b"0\r\n\r\n")
                || wire.windows(3).any(|w| w == b"0\r\n") && wire.ends_with(b"\r\n\r\n"))
            {
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                wire.extend_from_slice(&buffer[..n]);
            }
            let _ = seen.send(String::from_utf8_lossy(&wire).to_lowercase());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        })
    })
    .await;
    let (_file, gateway) = gateway_for(&upstream).await;
    let answer = raw_exchange(
        gateway.addr(),
        b"POST /score HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n\
          trailer: x-checksum\r\n\r\n2\r\n{}\r\n0\r\nx-checksum: abc\r\ncontent-length: 99\r\n\
          host: elsewhere\r\ntransfer-encoding: chunked\r\nazureml-model-deployment: green\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    let forwarded = tokio::time::timeout(PATIENCE, seen_rx.recv())
        .await
        .expect("the instance got the request")
        .expect("request");
    let trailers = &forwarded[forwarded.find("\r\n0\r\n").expect("the last chunk")..];
    assert!(trailers.contains("x-checksum: abc"), "{forwarded}");
    for forbidden in [
        "content-length",
        "host",
        "transfer-encoding",
        "azureml-model-deployment",
    ] {
        assert!(!trailers.contains(forbidden), "{forbidden} in {trailers}");
    }
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused_not_dropped() {
    let (upstream, _task) = echo_server().await;
    let (_file, gateway) = gateway_for(&upstream).await;
    for codings in ["gzip, chunked", "chunked, chunked"] {
        let request = format!(
            "POST /score HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: {codings}\r\n\r\n\
             2\r\n{{}}\r\n0\r\n\r\n"
        );
        let answer = raw_exchange(gateway.addr(), request.as_bytes()).await;
        assert!(answer.starts_with("http/1.1 501"), "{codings}: {answer}");
    }
    // An instance's answer in another coding is a failed answer, not one passed on altered.
    let coded = scripted_upstream(|mut stream| {
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            let answer =
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
            let _ = stream.write_all(answer.as_bytes()).await;
        })
    })
    .await;
    let (_file, gateway) = gateway_for(&coded).await;
    let answer = raw_exchange(gateway.addr(), b"GET / HTTP/1.1\r\nhost: gateway\r\n\r\n").await;
    assert!(answer.starts_with("http/1.1 502"), "{answer}");
}

#[tokio::test]
async fn a_host_sent_twice_or_malformed_is_refused_and_the_target_names_the_host() {
    let (upstream, _task) = echo_server().await;
    let (_file, gateway) = gateway_for(&upstream).await;
    for hosts in [
        "host: a.example\r\nhost: b.example\r\n",
        "host: a b\r\n",
        "host: user@a.example\r\n",
    ] {
        let request = format!("GET / HTTP/1.1\r\n{hosts}\r\n");
        let answer = raw_exchange(gateway.addr(), request.as_bytes()).await;
        assert!(answer.starts_with("http/1.1 400"), "{hosts:?}: {answer}");
    }
    let answer = raw_exchange(
        gateway.addr(),
        b"GET http://target.example/a HTTP/1.1\r\nhost: header.example\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains("x-echo-x-forwarded-host: target.example"),
        "{answer}"
    );
}
