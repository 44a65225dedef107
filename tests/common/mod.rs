//! Shared test fixtures: real model servers and gateways on `127.0.0.1:0`, an endpoint file in a
//! temporary directory, and a small HTTP client.
#![allow(dead_code, unreachable_pub)]

pub mod prometheus;
pub mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use switchyard::demo::SAMPLE_REQUEST;
use switchyard::model_server::{Model, ModelServer, ModelServerOptions};
use switchyard::server::ClientBody;
use switchyard::{Gateway, GatewayOptions};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};

/// Upper bound on any wait in these tests; far above what a healthy run needs.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub const PIN: &str = "azureml-model-deployment";

pub fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// A model server of `model` named `instance` on a free loopback port.
pub async fn model_server(model: Model, instance: &str) -> ModelServer {
    ModelServer::bind(loopback(), ModelServerOptions::new(model, instance))
        .await
        .expect("bind a model server")
}

/// A model server that waits `latency` before answering.
pub async fn slow_model_server(model: Model, instance: &str, latency: Duration) -> ModelServer {
    let mut options = ModelServerOptions::new(model, instance);
    options.latency = latency;
    ModelServer::bind(loopback(), options)
        .await
        .expect("bind a model server")
}

/// A loopback URL on which nothing listens: the port was bound, then released.
pub async fn refused_url() -> String {
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// The value of the series of `name` carrying every one of `labels` (`key="value"`), or 0.
pub fn metric(gateway: &Gateway, name: &str, labels: &[&str]) -> u64 {
    gateway
        .metrics()
        .render()
        .lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until `done` holds, failing after [`PATIENCE`].
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An endpoint file in its own temporary directory.
pub struct EndpointFile {
    pub dir: TempDir,
    pub path: PathBuf,
}

impl EndpointFile {
    pub fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("endpoint.yaml");
        std::fs::write(&path, text).expect("write endpoint file");
        EndpointFile { dir, path }
    }

    /// Rewrites the file in place (same inode), as `cp` or `echo >` would.
    pub fn write_in_place(&self, text: &str) {
        std::fs::write(&self.path, text).expect("write endpoint file");
    }

    /// Writes a temp file and renames it over the endpoint file, as editors save.
    pub fn replace_by_rename(&self, text: &str) {
        let temp = self.dir.path().join(".endpoint.yaml.swp");
        std::fs::write(&temp, text).expect("write temp file");
        std::fs::rename(&temp, &self.path).expect("rename over endpoint file");
    }
}

/// A gateway for the file at `path` on a free loopback port.
pub async fn gateway(path: &Path) -> Gateway {
    Gateway::start(GatewayOptions::new(path, loopback()))
        .await
        .expect("start the gateway")
}

/// A gateway in front of the one instance at `url`, and its endpoint file, which must live as
/// long as it.
pub async fn gateway_for(url: &str) -> (EndpointFile, Gateway) {
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[url])]));
    let gateway = gateway(&file.path).await;
    (file, gateway)
}

/// A gateway for the file at `path` serving on `threads` threads of its own, as the binary does.
pub async fn gateway_on_threads(path: &Path, threads: usize) -> Gateway {
    let mut options = GatewayOptions::new(path, loopback());
    options.workers = Some(threads);
    Gateway::start(options).await.expect("start the gateway")
}

/// Waits until the gateway serves `generation`, failing after [`PATIENCE`].
pub async fn wait_for_generation(gateway: &Gateway, generation: u64) -> Duration {
    let started = Instant::now();
    while gateway.generation() < generation {
        assert!(
            started.elapsed() < PATIENCE,
            "generation {generation} was not applied; still at {}",
            gateway.generation()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        gateway.generation(),
        generation,
        "more reloads than expected"
    );
    started.elapsed()
}

/// An endpoint file with one deployment per `(name, traffic, instance urls)`, no auth, and room
/// for 64 concurrent requests per instance (Azure's default of 1 would turn test load into 429s).
pub fn endpoint_yaml(deployments: &[(&str, u8, &[&str])]) -> String {
    let traffic: Vec<String> = deployments
        .iter()
        .map(|(name, traffic, _)| format!("{name}: {traffic}"))
        .collect();
    let mut text = format!(
        "name: test-endpoint\nauth_mode: none\ntraffic: {{{}}}\ndeployments:\n",
        traffic.join(", ")
    );
    for (name, _, instances) in deployments {
        text.push_str(&format!(
            "  - name: {name}\n    instances: [{}]\n    request_settings: {{max_concurrent_requests_per_instance: 64}}\n",
            instances.join(", ")
        ));
    }
    text
}

/// `text`, an endpoint file from [`endpoint_yaml`], with `percent` of live traffic copied to
/// `deployment`.
pub fn with_mirror(text: &str, deployment: &str, percent: u8) -> String {
    text.replacen(
        "deployments:\n",
        &format!("mirror_traffic: {{{deployment}: {percent}}}\ndeployments:\n"),
        1,
    )
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled keep-alive client, like most callers of a scoring endpoint.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// What a scoring call returned.
#[derive(Debug)]
pub struct Scored {
    pub status: StatusCode,
    /// The `azureml-model-deployment` response header.
    pub deployment: Option<String>,
    /// The `x-demo-instance` response header.
    pub instance: Option<String>,
    pub body: Bytes,
}

impl Scored {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// `POST /score` with Azure's sample request, pinned to `pin` if given.
pub fn score_request(gateway: SocketAddr, pin: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder =
        Request::post(format!("http://{gateway}/score")).header("content-type", "application/json");
    if let Some(pin) = pin {
        builder = builder.header(PIN, pin);
    }
    builder
        .body(Full::new(Bytes::from_static(SAMPLE_REQUEST.as_bytes())))
        .expect("request")
}

pub async fn read(response: Response<Incoming>) -> Scored {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let status = response.status();
    let deployment = header(PIN);
    let instance = header(switchyard::model_server::INSTANCE_HEADER);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("read body")
        .to_bytes();
    Scored {
        status,
        deployment,
        instance,
        body,
    }
}

pub async fn score(client: &TestClient, gateway: SocketAddr, pin: Option<&str>) -> Scored {
    send(client, score_request(gateway, pin)).await
}

/// Sends `request`, failing after [`PATIENCE`], and reads the answer.
pub async fn send(client: &TestClient, request: Request<Full<Bytes>>) -> Scored {
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("no answer in time")
        .expect("request failed");
    read(response).await
}

/// An upstream that answers with the request's own body, streamed back as it arrives, and
/// reports what it received in `x-echo-*` headers.
pub async fn echo_server() -> (String, tokio::task::JoinHandle<()>) {
    echo_server_with(None).await
}

/// [`echo_server`], over TLS when given an acceptor (the URL is then `https://localhost:port`).
pub async fn echo_server_with(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let url = match tls {
        Some(_) => format!("https://localhost:{port}"),
        None => format!("http://127.0.0.1:{port}"),
    };
    let handler = |request: Request<ClientBody>, _| async move {
        let mut response = Response::builder()
            .header("x-echo-method", request.method().as_str())
            .header("x-echo-uri", request.uri().to_string())
            .header("x-echo-version", format!("{:?}", request.version()))
            .header("connection", "keep-alive, x-upstream-private")
            .header("x-upstream-private", "hop");
        for (name, value) in request.headers() {
            response = response.header(format!("x-echo-{name}"), value);
        }
        response.body(request.into_body()).expect("echo response")
    };
    let task = tokio::spawn(switchyard::server::serve(
        listener,
        handler,
        std::future::pending(),
        switchyard::server::ServeOptions {
            tls,
            ..switchyard::server::ServeOptions::plain(Duration::from_secs(1))
        },
    ));
    (url, task)
}

/// The sum of the samples of `name`, in Prometheus' text format, whose labels include every
/// one of `labels`; `None` if no sample matches.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let pairs: Vec<(&str, &str)> = series_labels
            .split(',')
            .filter_map(|pair| {
                let (label, value) = pair.split_once('=')?;
                Some((label, value.trim_matches('"')))
            })
            .collect();
        if labels.iter().all(|wanted| pairs.contains(wanted)) {
            let value: f64 = value.parse().expect("a sample value");
            found = Some(found.unwrap_or(0.0) + value);
        }
    }
    found
}

/// An upstream that speaks raw HTTP/1.1 from a script, to control exactly when bytes go out.
pub async fn scripted_upstream(
    script: impl Fn(TcpStream) -> tokio::task::JoinHandle<()> + Send + 'static,
) -> String {
    let listener = TcpListener::bind(loopback()).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            script(stream);
        }
    });
    url
}

/// An instance that switches every request to WebSocket, then answers every chunk in upper
/// case until the peer closes.
pub async fn upper_casing_websocket() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    scripted_upstream(|mut stream| {
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            let head = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
            stream.write_all(head.as_bytes()).await.expect("101");
            let mut buffer = [0u8; 256];
            loop {
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                let upper = buffer[..n].to_ascii_uppercase();
                if stream.write_all(&upper).await.is_err() {
                    return;
                }
            }
        })
    })
    .await
}

/// A response head read byte by byte through its empty line, in lower case: no byte past it is
/// taken, so what follows (a tunnel's first bytes) stays on the stream. Whatever arrived, if
/// the connection ends first; a panic if no byte comes within [`PATIENCE`].
pub async fn read_response_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(PATIENCE, stream.read_exact(&mut byte))
            .await
            .expect("an answer in time");
        if read.is_err() {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

pub async fn read_request_head(stream: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await.expect("read");
        assert!(n > 0, "the gateway closed before sending a request");
        seen.extend_from_slice(&buffer[..n]);
    }
}
