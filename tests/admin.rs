//! The admin API and metrics: through `oneshot` with no socket, and through a real listener.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use switchyard::admin::{self, AdminState, EndpointStatus, ReloadResult};
use switchyard::metrics::Metrics;
use switchyard::model_server::Model;
use switchyard::ops;
use switchyard::reload::Reloader;
use switchyard::{Gateway, GatewayOptions};
use tower::ServiceExt;

async fn oneshot(state: &AdminState, method: Method, path: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(axum::body::Body::empty())
        .expect("request");
    let response = admin::router(state.clone())
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn state_for(file: &EndpointFile) -> AdminState {
    let metrics = Arc::new(Metrics::new());
    AdminState {
        reloader: Arc::new(
            Reloader::load(
                &file.path,
                Arc::clone(&metrics),
                Arc::new(switchyard::upstream::resolve::SystemResolver),
                Arc::new(switchyard::upstream::probe::Prober::new(
                    switchyard::tls::upstream_client_config(None).expect("roots"),
                )),
            )
            .expect("valid"),
        ),
        metrics,
        draining: Arc::new(AtomicBool::new(false)),
        started: Instant::now(),
    }
}

#[tokio::test]
async fn health_readiness_and_status_without_a_socket() {
    let file = EndpointFile::new(&endpoint_yaml(&[
        (
            "blue",
            100,
            &["http://127.0.0.1:9001", "http://127.0.0.1:9002"],
        ),
        ("green", 0, &["http://127.0.0.1:9003"]),
    ]));
    let state = state_for(&file);

    assert_eq!(
        oneshot(&state, Method::GET, "/-/healthy").await.0,
        StatusCode::OK
    );
    assert_eq!(
        oneshot(&state, Method::GET, "/-/ready").await.0,
        StatusCode::OK
    );

    let (status, body) = oneshot(&state, Method::GET, "/-/endpoint").await;
    assert_eq!(status, StatusCode::OK);
    let endpoint: EndpointStatus = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(endpoint.endpoint, "test-endpoint");
    assert_eq!(endpoint.generation, 1);
    assert_eq!(endpoint.traffic["blue"], 100);
    assert_eq!(endpoint.traffic["green"], 0);
    assert_eq!(endpoint.deployments[0].instances.len(), 2);
    assert_eq!(
        endpoint.deployments[0].instances[1].url,
        "http://127.0.0.1:9002"
    );
    assert!(endpoint.last_rejected.is_none());
    assert_eq!(endpoint.config_path, file.path.display().to_string());

    state
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        oneshot(&state, Method::GET, "/-/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn readiness_needs_a_deployment_with_live_traffic() {
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 0, &["http://127.0.0.1:9001"])]));
    let state = state_for(&file);
    assert_eq!(
        oneshot(&state, Method::GET, "/-/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn a_rejected_reload_is_visible_in_status_reload_and_metrics() {
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &["http://127.0.0.1:9001"])]));
    let state = state_for(&file);

    file.write_in_place(&endpoint_yaml(&[("blue", 50, &["http://127.0.0.1:9001"])]));
    let (status, body) = oneshot(&state, Method::POST, "/-/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let result: ReloadResult = serde_json::from_str(&body).expect("reload JSON");
    assert_eq!(result.result, "rejected");
    assert_eq!(result.generation, 1);
    assert!(
        result
            .error
            .as_deref()
            .is_some_and(|e| e.contains("add up to 50")),
        "{result:?}"
    );

    let (_, body) = oneshot(&state, Method::GET, "/-/endpoint").await;
    let endpoint: EndpointStatus = serde_json::from_str(&body).expect("status JSON");
    assert!(
        endpoint
            .last_rejected
            .is_some_and(|e| e.contains("traffic: percentages add up to 50"))
    );

    let (_, metrics) = oneshot(&state, Method::GET, "/metrics").await;
    assert!(
        metrics.contains("switchyard_config_reloads_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_config_last_reload_rejected 1"));
    assert!(metrics.contains("switchyard_config_generation 1"));

    file.write_in_place(&endpoint_yaml(&[("blue", 0, &["http://127.0.0.1:9001"])]));
    let (status, body) = oneshot(&state, Method::POST, "/-/reload").await;
    assert_eq!(status, StatusCode::OK);
    let result: ReloadResult = serde_json::from_str(&body).expect("reload JSON");
    assert_eq!((result.result.as_str(), result.generation), ("applied", 2));
    assert_eq!(result.changes, ["traffic blue 100% -> 0%"]);
    let (_, metrics) = oneshot(&state, Method::GET, "/metrics").await;
    assert!(metrics.contains("switchyard_config_reloads_total{result=\"applied\"} 1"));
    assert!(metrics.contains("switchyard_config_last_reload_rejected 0"));
    assert_eq!(
        sample(
            &metrics,
            "switchyard_deployment_traffic_percent",
            &[("endpoint", "test-endpoint"), ("deployment", "blue")]
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn counters_agree_exactly_with_the_requests_sent() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let green = model_server(Model::Constant, "green-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[
        ("blue", 100, &[&blue.url()]),
        ("green", 0, &[&green.url()]),
    ]));
    let mut options = GatewayOptions::new(&file.path, loopback());
    options.admin_listen = Some(loopback());
    let gateway = Gateway::start(options).await.expect("start");
    let admin_url = format!("http://{}", gateway.admin_addr().expect("admin"));
    let client = client();

    for _ in 0..30 {
        assert_eq!(
            score(&client, gateway.addr(), None).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..10 {
        assert_eq!(
            score(&client, gateway.addr(), Some("green")).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..3 {
        assert_eq!(
            score(&client, gateway.addr(), Some("purple")).await.status,
            StatusCode::NOT_FOUND
        );
    }

    let metrics = ops::send(
        Method::GET,
        &format!("{admin_url}/metrics"),
        &[],
        Bytes::new(),
    )
    .await
    .expect("scrape");
    assert_eq!(metrics.status, StatusCode::OK);
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    let value = |name: &str, labels: &[(&str, &str)]| sample(&metrics, name, labels);
    assert_eq!(
        value(
            "switchyard_requests_total",
            &[
                ("code", "200"),
                ("deployment", "blue"),
                ("route", "weighted")
            ]
        ),
        Some(30.0)
    );
    assert_eq!(
        value(
            "switchyard_requests_total",
            &[
                ("code", "200"),
                ("deployment", "green"),
                ("route", "pinned")
            ]
        ),
        Some(10.0)
    );
    assert_eq!(
        value(
            "switchyard_requests_total",
            &[
                ("code", "404"),
                ("deployment", "(none)"),
                ("route", "unrouted")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            "switchyard_requests_total",
            &[("code", "200"), ("deployment", "blue"), ("route", "pinned")]
        ),
        Some(0.0),
        "the usual series exist at 0 before their first request"
    );
    assert_eq!(
        value(
            "switchyard_gateway_errors_total",
            &[("kind", "deployment_not_found")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            "switchyard_request_duration_seconds_count",
            &[("deployment", "blue")]
        ),
        Some(30.0)
    );
    assert_eq!(
        value(
            "switchyard_request_duration_seconds_count",
            &[("deployment", "green")]
        ),
        Some(10.0)
    );
    assert_eq!(
        value("switchyard_requests_in_flight", &[("deployment", "blue")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            "switchyard_deployment_traffic_percent",
            &[("deployment", "blue")]
        ),
        Some(100.0)
    );
    assert_eq!(
        value(
            "switchyard_deployment_traffic_percent",
            &[("deployment", "green")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value("switchyard_deployment_instances", &[("deployment", "blue")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            "switchyard_deployment_instances_ready",
            &[("deployment", "green")]
        ),
        Some(1.0)
    );
    assert_eq!(value("switchyard_config_generation", &[]), Some(1.0));
    assert!(
        value("switchyard_config_last_applied_timestamp_seconds", &[]).is_some_and(|t| t > 1.7e9)
    );
    assert!(value("process_resident_memory_bytes", &[]).is_some_and(|bytes| bytes > 0.0));
    assert_eq!((blue.scored(), green.scored()), (30, 10));

    // The status the CLI shows is built from the same counters.
    let status = ops::fetch_status(&admin_url).await.expect("status");
    let blue_status = &status.deployments[0];
    assert_eq!((blue_status.requests, blue_status.errors), (30, 0));
    let shown = ops::render_status(&status);
    assert!(
        shown.contains("blue ") && shown.contains("100%") && shown.contains("1/1"),
        "{shown}"
    );

    // A deleted deployment's gauges go away with it.
    file.write_in_place(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    wait_for_generation(&gateway, 2).await;
    let metrics = ops::send(
        Method::GET,
        &format!("{admin_url}/metrics"),
        &[],
        Bytes::new(),
    )
    .await
    .expect("scrape");
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert_eq!(
        sample(
            &metrics,
            "switchyard_deployment_traffic_percent",
            &[("deployment", "green")]
        ),
        None
    );
    assert_eq!(
        sample(&metrics, "switchyard_config_generation", &[]),
        Some(2.0)
    );
}

#[tokio::test]
async fn in_flight_counts_until_the_response_body_ends() {
    let blue = slow_model_server(
        Model::Diabetes,
        "blue-1",
        std::time::Duration::from_millis(300),
    )
    .await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let gateway = gateway(&file.path).await;
    let addr = gateway.addr();
    let slow = tokio::spawn(async move { score(&client(), addr, None).await });

    let table = Arc::clone(gateway.reloader().table());
    let deadline = Instant::now() + PATIENCE;
    while table
        .load()
        .routes
        .deployment("blue")
        .is_some_and(|d| d.in_flight() == 0)
    {
        assert!(
            Instant::now() < deadline,
            "the request never became in flight"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let metrics = gateway.metrics().render();
    assert_eq!(
        sample(
            &metrics,
            "switchyard_requests_in_flight",
            &[("deployment", "blue")]
        ),
        Some(1.0)
    );

    assert_eq!(slow.await.expect("task").status, StatusCode::OK);
    assert_eq!(
        table
            .load()
            .routes
            .deployment("blue")
            .map(|d| d.in_flight()),
        Some(0)
    );
    let metrics = gateway.metrics().render();
    assert_eq!(
        sample(
            &metrics,
            "switchyard_requests_in_flight",
            &[("deployment", "blue")]
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn diff_against_a_running_gateway_lists_the_next_steps_changes() {
    let demo = switchyard::demo::DemoServers::start()
        .await
        .expect("servers");
    let steps: Vec<String> = switchyard::demo::ROLLOUT_STEPS
        .iter()
        .map(|(_, text)| demo.render(text))
        .collect();
    let file = EndpointFile::new(&steps[2]);
    let mut options = GatewayOptions::new(&file.path, loopback());
    options.admin_listen = Some(loopback());
    let gateway = Gateway::start(options).await.expect("start");
    let admin_url = format!("http://{}", gateway.admin_addr().expect("admin"));

    let serving =
        ops::serving_config(&ops::fetch_status(&admin_url).await.expect("status")).expect("valid");
    let next = switchyard::config::EndpointConfig::parse(&steps[3]).expect("valid");
    assert_eq!(
        ops::render_changes(&switchyard::config::diff(&serving, &next)),
        "traffic blue 100% -> 90%\ntraffic green 0% -> 10%\n"
    );
    let same = switchyard::config::EndpointConfig::parse(&steps[2]).expect("valid");
    assert_eq!(
        ops::render_changes(&switchyard::config::diff(&serving, &same)),
        "no changes\n"
    );
}
