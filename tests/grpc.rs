//! gRPC deployments with a real gRPC server and client (grpcio, gRPC's C core, in
//! `tests/grpc/`): calls of every shape pass through, the gateway's own errors reach clients as
//! gRPC statuses with the gateway's message, deadlines are honoured, streams are not cut, and
//! gRPC health probes, over h2c or TLS with a private CA, decide readiness.
//!
//! grpcio is a Python package (`.ci/run` installs it): a server and client written by gRPC
//! itself, not by this project, so the tests check what real gRPC peers see.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{EndpointFile, PATIENCE, gateway, metric};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard::{Gateway, GatewayOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grpc")
        .join(name)
}

/// A grpcio model server on a free loopback port; stopped when dropped.
struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start(name: &str, tls: Option<(&Path, &Path)>) -> GrpcServer {
        let mut command = Command::new("python3");
        command
            .arg(fixture("model_server.py"))
            .args(["--name", name]);
        if let Some((cert, key)) = tls {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3 (grpcio is installed by .ci/run)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the gRPC server did not start: {line:?}"));
        GrpcServer { child, port }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `calls` with the grpcio client against `target`; one result per call (and copy).
async fn grpc_calls(target: String, calls: Value) -> Vec<Value> {
    tokio::task::spawn_blocking(move || {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), calls.to_string()).expect("write calls");
        let output = Command::new("python3")
            .arg(fixture("client.py"))
            .arg(&target)
            .arg(file.path())
            .output()
            .expect("run the gRPC client");
        assert!(
            output.status.success(),
            "the gRPC client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON result"))
            .collect()
    })
    .await
    .expect("client thread")
}

async fn grpc_call(target: SocketAddr, call: Value) -> Value {
    grpc_calls(target.to_string(), json!([call]))
        .await
        .remove(0)
}

fn endpoint(deployments: &[(&str, u8, String, &str)]) -> String {
    let traffic: Vec<String> = deployments
        .iter()
        .map(|(name, traffic, _, _)| format!("{name}: {traffic}"))
        .collect();
    let mut text = format!(
        "name: grpc-endpoint\nauth_mode: none\ntraffic: {{{}}}\ndeployments:\n",
        traffic.join(", ")
    );
    for (name, _, instance, extra) in deployments {
        text.push_str(&format!(
            "  - name: {name}\n    protocol: http2\n    instances: [{instance}]\n{extra}"
        ));
    }
    text
}

const ROOMY: &str = "    request_settings: {max_concurrent_requests_per_instance: 16}\n";

/// An endpoint with the one deployment `blue` at `server`, over h2c or TLS, with `extra` YAML.
fn blue_at(server: &GrpcServer, scheme: &str, extra: &str) -> EndpointFile {
    EndpointFile::new(&endpoint(&[(
        "blue",
        100,
        format!("{scheme}://{}", server.addr()),
        extra,
    )]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_streaming_and_bidi_calls_pass_through_with_the_gateways_metadata() {
    let blue = GrpcServer::start("blue", None);
    let file = blue_at(&blue, "http", ROOMY);
    let gateway = gateway(&file.path).await;

    let results = grpc_calls(
        gateway.addr().to_string(),
        json!([
            {"method": "Predict", "request": "0:hello"},
            {"method": "Stream", "request": "4:10"},
            {"method": "Chat", "requests": ["a", "b", "c"]},
        ]),
    )
    .await;
    for result in &results {
        assert_eq!(result["code"], "OK", "{result}");
        assert_eq!(result["initial"]["azureml-model-deployment"], "blue");
        assert!(
            result["initial"]["x-request-id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{result}"
        );
    }
    assert_eq!(results[0]["responses"], json!(["blue answered hello"]));
    assert_eq!(
        results[1]["responses"],
        json!([
            "blue message 0",
            "blue message 1",
            "blue message 2",
            "blue message 3"
        ])
    );
    assert_eq!(
        results[2]["responses"],
        json!(["blue echoes a", "blue echoes b", "blue echoes c"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_counts_as_an_error_though_http_says_200() {
    let blue = GrpcServer::start("blue", None);
    let file = blue_at(&blue, "http", ROOMY);
    let gateway = gateway(&file.path).await;
    let results = grpc_calls(
        gateway.addr().to_string(),
        json!([
            {"method": "Fail", "request": ""},
            {"method": "Predict", "request": "0:x"},
        ]),
    )
    .await;
    assert_eq!(results[0]["code"], "INTERNAL", "{}", results[0]);
    assert_eq!(results[0]["details"], "model crashed");
    assert_eq!(results[1]["code"], "OK", "{}", results[1]);
    let counted = |labels: &[&str]| metric(&gateway, "switchyard_requests_total", labels);
    assert_eq!(counted(&["deployment=\"blue\"", "code=\"500\""]), 1);
    assert_eq!(counted(&["deployment=\"blue\"", "code=\"200\""]), 1);
    let errors = metric(
        &gateway,
        "switchyard_request_duration_seconds_count",
        &["deployment=\"blue\"", "outcome=\"error\""],
    );
    assert_eq!(errors, 1, "the judge's error series sees the failed call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_errors_reach_grpc_clients_as_statuses_with_its_message() {
    let blue = GrpcServer::start("blue", None);
    let slow = GrpcServer::start("slow", None);
    let busy = GrpcServer::start("busy", None);
    let refused = common::refused_url().await;
    let file = EndpointFile::new(&endpoint(&[
        ("blue", 100, format!("http://{}", blue.addr()), ROOMY),
        (
            "slow",
            0,
            format!("http://{}", slow.addr()),
            "    request_settings: {request_timeout_ms: 300}\n",
        ),
        (
            "busy",
            0,
            format!("http://{}", busy.addr()),
            "    request_settings: {max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 50}\n",
        ),
        ("gone", 0, refused.clone(), ""),
        (
            "down",
            0,
            refused,
            "    readiness_probe: {grpc: {service: \"\"}, period: 1}\n",
        ),
    ]));
    let gateway = gateway(&file.path).await;
    let pin = |deployment: &str| json!([["azureml-model-deployment", deployment]]);

    let results = grpc_calls(
        gateway.addr().to_string(),
        json!([
            {"method": "Predict", "request": "0:x", "metadata": pin("red")},
            {"method": "Predict", "request": "0:x", "metadata": pin("")},
            {"method": "Predict", "request": "2000:x", "metadata": pin("slow")},
            {"method": "Predict", "request": "0:x", "metadata": pin("gone")},
            {"method": "Predict", "request": "0:x", "metadata": pin("down")},
            {"method": "Predict", "request": "1000:x", "metadata": pin("busy"), "copies": 3},
        ]),
    )
    .await;
    let expect = |index: usize, code: &str, details: &str| {
        let result = &results[index];
        assert_eq!(result["code"], code, "{result}");
        assert_eq!(result["details"], details, "{result}");
    };
    expect(
        0,
        "NOT_FOUND",
        "Deployment `red` does not exist in this endpoint; deployments are: blue, slow, busy, \
         gone, down",
    );
    expect(
        1,
        "INVALID_ARGUMENT",
        "invalid `azureml-model-deployment` header: empty; send a deployment name or leave the header \
         out",
    );
    expect(
        2,
        "DEADLINE_EXCEEDED",
        "deployment `slow` did not answer within request_timeout_ms (300 ms)",
    );
    expect(
        3,
        "UNAVAILABLE",
        "could not connect to an instance of deployment `gone`",
    );
    expect(
        4,
        "UNAVAILABLE",
        "no instance of deployment `down` is ready",
    );
    // One of the three busy calls is served; the two beyond the instance's one slot and its
    // queue are refused as the deployment being at its limit.
    let busy: Vec<&Value> = results[5..].iter().collect();
    assert_eq!(busy.len(), 3);
    assert_eq!(
        busy.iter().filter(|r| r["code"] == "OK").count(),
        1,
        "{busy:?}"
    );
    for refused in busy.iter().filter(|r| r["code"] != "OK") {
        assert_eq!(refused["code"], "RESOURCE_EXHAUSTED", "{refused}");
        assert!(
            refused["details"]
                .as_str()
                .is_some_and(|d| d.starts_with("deployment `busy`") || d.contains("`busy`")),
            "{refused}"
        );
    }
    // Sent as HTTP 200 with a grpc-status, counted by the status each stands for.
    let counted = |deployment: &str, code: &str| {
        metric(
            &gateway,
            "switchyard_requests_total",
            &[
                &format!("deployment=\"{deployment}\""),
                &format!("code=\"{code}\""),
            ],
        )
    };
    assert_eq!(counted("slow", "408"), 1);
    assert_eq!(counted("gone", "502"), 1);
    assert_eq!(counted("down", "503"), 1);
    assert_eq!(counted("busy", "429"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_grpc_call_is_told_so() {
    let blue = GrpcServer::start("blue", None);
    let file = EndpointFile::new(&format!(
        "name: grpc-endpoint\nauth_mode: key\nkeys_file: keys.yaml\ntraffic: {{blue: 100}}\n\
         deployments:\n  - name: blue\n    protocol: http2\n    instances: [http://{}]\n",
        blue.addr()
    ));
    std::fs::write(
        file.dir.path().join("keys.yaml"),
        "primary_key: a-primary-key-of-some-length\nsecondary_key: a-secondary-key-of-length\n",
    )
    .expect("keys");
    let gateway = gateway(&file.path).await;
    let results = grpc_calls(
        gateway.addr().to_string(),
        json!([
            {"method": "Predict", "request": "0:x"},
            {"method": "Predict", "request": "0:x",
             "metadata": [["authorization", "Bearer a-primary-key-of-some-length"]]},
        ]),
    )
    .await;
    assert_eq!(results[0]["code"], "UNAUTHENTICATED", "{}", results[0]);
    assert_eq!(
        results[0]["details"],
        "missing or invalid key; send `Authorization: Bearer <key>`"
    );
    assert_eq!(results[1]["code"], "OK", "{}", results[1]);
}

/// A gRPC request as a client library sends it, over h2c with prior knowledge.
fn grpc_request(gateway: SocketAddr, message: &[u8], timeout: &str) -> http::Request<Full<Bytes>> {
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    http::Request::post(format!("http://{gateway}/switchyard.test.Model/Predict"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(Full::new(Bytes::from(frame)))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_timeout_shorter_than_request_timeout_ms_is_the_one_that_counts() {
    let blue = GrpcServer::start("blue", None);
    let file = blue_at(
        &blue,
        "http",
        "    request_settings: {request_timeout_ms: 5000, max_concurrent_requests_per_instance: 4}\n",
    );
    let gateway = gateway(&file.path).await;
    // A raw HTTP/2 client, which unlike a gRPC library does not give up at its own deadline:
    // the answer seen is the gateway's.
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();

    let started = Instant::now();
    let response = tokio::time::timeout(
        PATIENCE,
        client.request(grpc_request(gateway.addr(), b"3000:x", "300m")),
    )
    .await
    .expect("an answer in time")
    .expect("an answer");
    let waited = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "4");
    assert_eq!(
        response.headers()["grpc-message"],
        "deployment `blue` did not answer within the call's deadline (300 ms)"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(2500),
        "answered after {waited:?}"
    );
    let body = response.into_body().collect().await.expect("body");
    assert!(body.to_bytes().is_empty(), "a trailers-only answer");

    // A longer deadline leaves request_timeout_ms in charge, and a call within both passes.
    let response = client
        .request(grpc_request(gateway.addr(), b"100:x", "10S"))
        .await
        .expect("an answer");
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.expect("body");
    assert_eq!(
        collected.trailers().and_then(|t| t.get("grpc-status")),
        Some(&http::HeaderValue::from_static("0"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_outlasts_request_timeout_ms_is_not_cut() {
    let blue = GrpcServer::start("blue", None);
    let file = blue_at(
        &blue,
        "http",
        "    request_settings: {request_timeout_ms: 500}\n",
    );
    let gateway = gateway(&file.path).await;
    // 6 messages 250 ms apart: 1.25 s, over twice the timeout, which bounds the wait for the
    // first answer only.
    let result = grpc_call(
        gateway.addr(),
        json!({"method": "Stream", "request": "6:250", "timeout": 10}),
    )
    .await;
    assert_eq!(result["code"], "OK", "{result}");
    assert_eq!(result["responses"].as_array().map(Vec::len), Some(6));
    assert!(
        result["elapsed"].as_f64().is_some_and(|s| s >= 1.25),
        "{result}"
    );
}

async fn wait_until_ready(gateway: &Gateway, deployment: &str, ready: usize) {
    let started = Instant::now();
    loop {
        let table = gateway.reloader().table().load();
        let now = table
            .routes
            .deployment(deployment)
            .map_or(0, |deployment| deployment.available_instances());
        if now == ready {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{deployment} has {now} ready instances, not {ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_health_probe_makes_an_instance_ready_and_unready() {
    let blue = GrpcServer::start("blue", None);
    let file = blue_at(
        &blue,
        "http",
        "    readiness_probe: {grpc: {service: \"\"}, period: 1, failure_threshold: 1}\n",
    );
    let gateway = gateway(&file.path).await;
    wait_until_ready(&gateway, "blue", 1).await;
    let ok = grpc_call(
        gateway.addr(),
        json!({"method": "Predict", "request": "0:x"}),
    )
    .await;
    assert_eq!(ok["code"], "OK", "{ok}");

    // Told directly, not through the gateway, that it is not serving.
    let set = grpc_calls(
        blue.addr(),
        json!([{"method": "SetHealth", "request": "NOT_SERVING"}]),
    )
    .await;
    assert_eq!(set[0]["code"], "OK", "{}", set[0]);
    wait_until_ready(&gateway, "blue", 0).await;
    let refused = grpc_call(
        gateway.addr(),
        json!({"method": "Predict", "request": "0:x"}),
    )
    .await;
    assert_eq!(refused["code"], "UNAVAILABLE", "{refused}");

    grpc_calls(
        blue.addr(),
        json!([{"method": "SetHealth", "request": "SERVING"}]),
    )
    .await;
    wait_until_ready(&gateway, "blue", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_instance_with_a_private_ca_passes_its_probe_and_serves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("a certificate");
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
    let blue = GrpcServer::start("blue", Some((&cert, &key)));

    let file = blue_at(
        &blue,
        "https",
        "    readiness_probe: {grpc: {service: \"\"}, period: 1}\n",
    );
    let mut options = GatewayOptions::new(&file.path, common::loopback());
    options.upstream_ca_file = Some(cert.clone());
    let gateway = Gateway::start(options).await.expect("start the gateway");
    wait_until_ready(&gateway, "blue", 1).await;
    let result = grpc_call(
        gateway.addr(),
        json!({"method": "Predict", "request": "0:tls"}),
    )
    .await;
    assert_eq!(result["code"], "OK", "{result}");
    assert_eq!(result["responses"], json!(["blue answered tls"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_probe_says_why_in_the_log() {
    let blue = GrpcServer::start("blue", None);
    grpc_calls(
        blue.addr(),
        json!([{"method": "SetHealth", "request": "NOT_SERVING"}]),
    )
    .await;
    let file = blue_at(
        &blue,
        "http",
        "    readiness_probe: {grpc: {service: \"\"}, period: 1}\n",
    );
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config"])
        .arg(&file.path)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the gateway");
    let stderr = gateway.stderr.take().expect("stderr");
    let found = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("readiness probe fails") && line.contains("NOT_SERVING") {
                return Ok(line);
            }
            seen.push(line);
            if started.elapsed() > PATIENCE {
                break;
            }
        }
        Err(seen)
    });
    let found = tokio::time::timeout(PATIENCE, found).await;
    let _ = gateway.kill();
    let _ = gateway.wait();
    let line = found
        .expect("a log line in time")
        .expect("log thread")
        .unwrap_or_else(|seen| panic!("no probe failure logged; saw {seen:#?}"));
    assert!(
        line.contains("deployment=blue") || line.contains("\"blue\""),
        "{line}"
    );
    assert!(line.contains(&blue.addr()), "{line}");
}
