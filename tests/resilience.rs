//! Protecting slow models and routing around sick instances: timeouts, bounded queues, passive
//! and active health, and the retry of a request that never reached an instance.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use switchyard::model_server::Model;
use switchyard::{Gateway, GatewayOptions};

/// An endpoint with one deployment `blue` and extra YAML for it (request settings, probes).
fn blue_with(instances: &[&str], extra: &str) -> String {
    format!(
        "name: test-endpoint\nauth_mode: none\ntraffic: {{blue: 100}}\ndeployments:\n  - name: blue\n    instances: [{}]\n{extra}",
        instances.join(", ")
    )
}

async fn concurrently(n: usize, gateway: std::net::SocketAddr) -> Vec<Scored> {
    let requests: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { score(&client(), gateway, None).await }))
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.expect("task"));
    }
    answers
}

fn count(answers: &[Scored], status: StatusCode) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

#[tokio::test]
async fn a_model_slower_than_the_timeout_gets_408() {
    let slow = slow_model_server(Model::Diabetes, "slow", Duration::from_millis(1000)).await;
    let file = EndpointFile::new(&blue_with(
        &[&slow.url()],
        "    request_settings: {request_timeout_ms: 100}\n",
    ));
    let gateway = gateway(&file.path).await;

    let started = Instant::now();
    let answer = score(&client(), gateway.addr(), None).await;
    assert_eq!(answer.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(answer.json()["error"]["code"], "request_timeout");
    assert_eq!(answer.deployment.as_deref(), Some("blue"));
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the gateway did not wait for the model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_twice_the_capacity_requests_get_429_while_admitted_ones_succeed() {
    // One instance serving one request at a time: at most 2 x 1 x 1 = 2 pending.
    // The model is slow enough that all five requests arrive while the first is still in flight.
    let slow = slow_model_server(Model::Diabetes, "slow", Duration::from_millis(600)).await;
    let file = EndpointFile::new(&blue_with(
        &[&slow.url()],
        "    request_settings: {max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 3000}\n",
    ));
    let gateway = gateway(&file.path).await;

    let answers = concurrently(5, gateway.addr()).await;
    assert_eq!(
        count(&answers, StatusCode::OK),
        2,
        "one in flight and one queued succeed"
    );
    assert_eq!(count(&answers, StatusCode::TOO_MANY_REQUESTS), 3);
    let rejected = answers
        .iter()
        .find(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("a 429");
    assert_eq!(
        rejected.json()["error"]["code"],
        "too_many_pending_requests"
    );
    assert_eq!(
        slow.scored(),
        2,
        "rejected requests never reached the model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waits_longer_than_max_queue_wait_gets_429() {
    let slow = slow_model_server(Model::Diabetes, "slow", Duration::from_millis(400)).await;
    let file = EndpointFile::new(&blue_with(
        &[&slow.url()],
        "    request_settings: {max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 50}\n",
    ));
    let gateway = gateway(&file.path).await;

    let answers = concurrently(2, gateway.addr()).await;
    assert_eq!(count(&answers, StatusCode::OK), 1);
    let rejected = answers
        .iter()
        .find(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("a 429");
    assert_eq!(rejected.json()["error"]["code"], "queue_wait_timeout");
}

#[tokio::test]
async fn a_dead_instance_costs_no_failed_request_when_another_is_up() {
    let alive = model_server(Model::Diabetes, "alive").await;
    let dead = refused_url().await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&dead, &alive.url()])]));
    let gateway = gateway(&file.path).await;
    let client = client();

    for _ in 0..30 {
        let answer = score(&client, gateway.addr(), None).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.instance.as_deref(), Some("alive"));
    }
    assert_eq!(alive.scored(), 30);
    let table = gateway.reloader().table().load();
    let blue = table.routes.deployment("blue").expect("blue");
    assert!(
        blue.instances()[0].health().is_ejected(),
        "the dead instance is ejected"
    );
}

#[tokio::test]
async fn with_no_instance_left_the_client_gets_503_at_once() {
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&refused_url().await])]));
    let gateway = gateway(&file.path).await;
    let client = client();

    let first = score(&client, gateway.addr(), None).await;
    assert_eq!(first.status, StatusCode::BAD_GATEWAY, "the refusal itself");
    let started = Instant::now();
    let second = score(&client, gateway.addr(), None).await;
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.json()["error"]["code"], "no_ready_instance");
    assert!(started.elapsed() < Duration::from_millis(500), "no hang");
}

#[tokio::test]
async fn an_unready_instance_gets_no_traffic_until_it_passes_again() {
    let flaky = model_server(Model::Diabetes, "flaky").await;
    let steady = model_server(Model::Diabetes, "steady").await;
    let file = EndpointFile::new(&blue_with(
        &[&flaky.url(), &steady.url()],
        "    request_settings: {max_concurrent_requests_per_instance: 64}\n    readiness_probe: {period: 1, failure_threshold: 1, success_threshold: 1}\n",
    ));
    let gateway = gateway(&file.path).await;
    let client = client();
    let ready = |index: usize| {
        let table = gateway.reloader().table().load();
        table.routes.deployment("blue").expect("blue").instances()[index]
            .health()
            .is_ready()
    };
    let wait_until = |want: bool| async move {
        let deadline = Instant::now() + PATIENCE;
        while ready(0) != want {
            assert!(
                Instant::now() < deadline,
                "instance 0 never became ready={want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    wait_until(true).await;
    flaky.set_healthy(false);
    wait_until(false).await;
    let before = flaky.scored();
    for _ in 0..20 {
        let answer = score(&client, gateway.addr(), None).await;
        assert_eq!(answer.instance.as_deref(), Some("steady"));
    }
    assert_eq!(flaky.scored(), before, "an unready instance got traffic");

    flaky.set_healthy(true);
    wait_until(true).await;
    let mut served_by_flaky = 0;
    for _ in 0..40 {
        if score(&client, gateway.addr(), None)
            .await
            .instance
            .as_deref()
            == Some("flaky")
        {
            served_by_flaky += 1;
        }
    }
    // Both idle: each pick is a coin flip; 0 of 40 has probability 2^-40.
    assert!(
        served_by_flaky > 0,
        "the instance came back but got no traffic"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let mut options = GatewayOptions::new(&file.path, loopback());
    options.max_body_bytes = 1024;
    let gateway = Gateway::start(options).await.expect("start");
    let client = client();

    let request = Request::post(format!("http://{}/score", gateway.addr()))
        .body(Full::new(Bytes::from(vec![b' '; 2048])))
        .expect("request");
    let answer = read(client.request(request).await.expect("answer")).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.json()["error"]["code"], "payload_too_large");
    assert_eq!(blue.scored(), 0);

    // Within the limit it goes through.
    assert_eq!(
        score(&client, gateway.addr(), None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_streamed_body_that_grows_past_the_limit_gets_413() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let mut options = GatewayOptions::new(&file.path, loopback());
    options.max_body_bytes = 1024;
    let gateway = Gateway::start(options).await.expect("start");

    // No Content-Length: the limit can only be enforced as the bytes flow.
    let (mut sender, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
    let request = Request::post(format!("http://{}/score", gateway.addr()))
        .body(body)
        .expect("request");
    let feeding = tokio::spawn(async move {
        for _ in 0..4 {
            if sender
                .send_data(Bytes::from(vec![b' '; 600]))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let client: hyper_util::client::legacy::Client<_, _> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let answer = read(client.request(request).await.expect("answer")).await;
    feeding.await.expect("feeder");
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn an_ejected_instance_shows_as_not_ready_in_status_and_metrics() {
    let alive = model_server(Model::Diabetes, "alive").await;
    let dead = refused_url().await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&dead, &alive.url()])]));
    let mut options = GatewayOptions::new(&file.path, loopback());
    options.admin_listen = Some(loopback());
    let gateway = Gateway::start(options).await.expect("start");
    let client = client();
    for _ in 0..10 {
        assert_eq!(
            score(&client, gateway.addr(), None).await.status,
            StatusCode::OK
        );
    }
    let admin = format!("http://{}", gateway.admin_addr().expect("admin"));
    let status = switchyard::ops::fetch_status(&admin).await.expect("status");
    let ready: Vec<bool> = status.deployments[0]
        .instances
        .iter()
        .map(|i| i.ready)
        .collect();
    assert_eq!(ready, [false, true]);
    let metrics = switchyard::ops::send(
        http::Method::GET,
        &format!("{admin}/metrics"),
        &[],
        Bytes::new(),
    )
    .await
    .expect("scrape");
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.contains("switchyard_deployment_instances_ready{deployment=\"blue\",endpoint=\"test-endpoint\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "switchyard_deployment_instances{deployment=\"blue\",endpoint=\"test-endpoint\"} 2"
    ));
}
