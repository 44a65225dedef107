//! The metrics a canary judge reads: latency separable by outcome, series that exist before the
//! first request and go with a deleted deployment, stream timings and cut bodies, the endpoint
//! label, and output that Prometheus' own checker accepts.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use switchyard::model_server::{Model, ModelServer, ModelServerOptions};
use tokio::io::AsyncWriteExt;

const ENDPOINT: (&str, &str) = ("endpoint", "test-endpoint");

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n";

fn labels<'a>(deployment: &'a str, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = vec![ENDPOINT, ("deployment", deployment)];
    all.extend_from_slice(more);
    all
}

#[tokio::test]
async fn promtool_finds_nothing_to_fix() {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("promtool is not installed (Debian's prometheus package ships it); skipped");
        return;
    }
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let gateway = gateway(&file.path).await;
    assert_eq!(
        score(&client(), gateway.addr(), None).await.status,
        StatusCode::OK
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(gateway.metrics().render().as_bytes())
        .expect("feed promtool");
    let output = check.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool: {said}");
    assert!(said.trim().is_empty(), "promtool has advice: {said}");
}

#[tokio::test]
async fn a_new_deployment_answers_every_query_with_zero_before_its_first_request() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let green = model_server(Model::Constant, "green-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let gateway = gateway(&file.path).await;
    file.write_in_place(&endpoint_yaml(&[
        ("blue", 100, &[&blue.url()]),
        ("green", 0, &[&green.url()]),
    ]));
    wait_for_generation(&gateway, 2).await;

    let text = gateway.metrics().render();
    for (name, more) in [
        (
            "switchyard_requests_total",
            vec![("code", "200"), ("route", "weighted")],
        ),
        (
            "switchyard_request_duration_seconds_count",
            vec![("outcome", "success")],
        ),
        (
            "switchyard_request_duration_seconds_count",
            vec![("outcome", "error")],
        ),
        (
            "switchyard_time_to_first_byte_seconds_count",
            vec![("outcome", "success")],
        ),
        (
            "switchyard_time_to_last_byte_seconds_count",
            vec![("outcome", "success")],
        ),
        (
            "switchyard_response_bodies_cut_total",
            vec![("side", "client")],
        ),
        (
            "switchyard_response_bodies_cut_total",
            vec![("side", "instance")],
        ),
        ("switchyard_requests_in_flight", vec![]),
    ] {
        assert_eq!(
            sample(&text, name, &labels("green", &more)),
            Some(0.0),
            "{name} {more:?} exists at 0"
        );
    }
}

#[tokio::test]
async fn latency_is_separable_by_outcome_and_unrouted_requests_have_their_own_label() {
    // Green fails every request at once: its errors must not pull its success latency down.
    let blue = slow_model_server(Model::Diabetes, "blue-1", Duration::from_millis(30)).await;
    let mut failing = ModelServerOptions::new(Model::Constant, "green-1");
    failing.failure_rate = 1.0;
    let green = ModelServer::bind(loopback(), failing).await.expect("bind");
    let file = EndpointFile::new(&endpoint_yaml(&[
        ("blue", 100, &[&blue.url()]),
        ("green", 0, &[&green.url()]),
    ]));
    let gateway = gateway(&file.path).await;
    let client = client();
    for _ in 0..5 {
        assert_eq!(
            score(&client, gateway.addr(), None).await.status,
            StatusCode::OK
        );
        assert_eq!(
            score(&client, gateway.addr(), Some("green")).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            score(&client, gateway.addr(), Some("purple")).await.status,
            StatusCode::NOT_FOUND
        );
    }
    let text = gateway.metrics().render();
    let count = |deployment, outcome| {
        sample(
            &text,
            "switchyard_request_duration_seconds_count",
            &labels(deployment, &[("outcome", outcome)]),
        )
    };
    assert_eq!(count("blue", "success"), Some(5.0));
    assert_eq!(count("blue", "error"), Some(0.0));
    assert_eq!(count("green", "error"), Some(5.0));
    assert_eq!(count("green", "success"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "switchyard_requests_total",
            &labels("(none)", &[("code", "404"), ("route", "unrouted")])
        ),
        Some(5.0)
    );
    assert!(
        !text.contains("deployment=\"\""),
        "no series with an empty deployment"
    );
}

#[tokio::test]
async fn a_stream_is_timed_to_its_first_byte_and_to_its_end() {
    let upstream = scripted_upstream(|mut stream| {
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            stream.write_all(SSE_HEAD.as_bytes()).await.expect("head");
            tokio::time::sleep(Duration::from_millis(150)).await;
            stream
                .write_all(b"d\r\ndata: first\n\n\r\n")
                .await
                .expect("first event");
            tokio::time::sleep(Duration::from_millis(300)).await;
            stream
                .write_all(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
                .await
                .expect("rest");
        })
    })
    .await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&upstream])]));
    let gateway = gateway(&file.path).await;
    let answer = score(&client(), gateway.addr(), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], b"data: first\n\ndata: second\n\n");

    let success = labels("blue", &[("outcome", "success")]);
    let seconds = |name: &str| {
        let text = gateway.metrics().render();
        assert_eq!(
            sample(&text, &format!("{name}_count"), &success),
            Some(1.0),
            "{name}"
        );
        sample(&text, &format!("{name}_sum"), &success).expect("a sum")
    };
    // The record is finished as the body is dropped, just after the client read its end.
    eventually("the stream's end is observed", || {
        sample(
            &gateway.metrics().render(),
            "switchyard_time_to_last_byte_seconds_count",
            &success,
        ) == Some(1.0)
    })
    .await;
    let head = seconds("switchyard_request_duration_seconds");
    let first = seconds("switchyard_time_to_first_byte_seconds");
    let last = seconds("switchyard_time_to_last_byte_seconds");
    assert!(head < 0.15, "the head left before the first event: {head}");
    assert!(
        first >= 0.15,
        "first byte after the first event's wait: {first}"
    );
    assert!(last >= 0.45, "the end after both waits: {last}");
    assert!(first < last, "{first} < {last}");
}

#[tokio::test]
async fn a_stream_cut_by_either_side_is_counted_with_that_side() {
    // Two events, then the instance dies mid-stream.
    let dying = scripted_upstream(|mut stream| {
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            stream.write_all(SSE_HEAD.as_bytes()).await.expect("head");
            stream
                .write_all(b"d\r\ndata: first\n\n\r\ne\r\ndata: second\n\n\r\n")
                .await
                .expect("events");
        })
    })
    .await;
    // One event, then nothing until the client has gone.
    let endless = scripted_upstream(|mut stream| {
        tokio::spawn(async move {
            read_request_head(&mut stream).await;
            stream.write_all(SSE_HEAD.as_bytes()).await.expect("head");
            stream
                .write_all(b"d\r\ndata: first\n\n\r\n")
                .await
                .expect("event");
            tokio::time::sleep(PATIENCE).await;
        })
    })
    .await;
    let file = EndpointFile::new(&endpoint_yaml(&[
        ("blue", 100, &[&dying]),
        ("green", 0, &[&endless]),
    ]));
    let gateway = gateway(&file.path).await;
    let client = client();

    let response = client
        .request(score_request(gateway.addr(), None))
        .await
        .expect("head");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.into_body().collect().await.is_err(),
        "the client sees the stream fail, not end"
    );

    let response = client
        .request(score_request(gateway.addr(), Some("green")))
        .await
        .expect("head");
    let mut body = response.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "data: first\n\n");
    drop(body);

    let cut = |deployment, side| {
        sample(
            &gateway.metrics().render(),
            "switchyard_response_bodies_cut_total",
            &labels(deployment, &[("side", side)]),
        )
    };
    eventually("blue's cut is counted", || {
        cut("blue", "instance") == Some(1.0)
    })
    .await;
    eventually("green's cut is counted", || {
        cut("green", "client") == Some(1.0)
    })
    .await;
    assert_eq!(cut("blue", "client"), Some(0.0));
    assert_eq!(cut("green", "instance"), Some(0.0));
}

#[tokio::test]
async fn a_deleted_deployments_series_go_once_its_last_request_ends() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let green = slow_model_server(Model::Constant, "green-1", Duration::from_millis(400)).await;
    let both = endpoint_yaml(&[("blue", 100, &[&blue.url()]), ("green", 0, &[&green.url()])]);
    let file = EndpointFile::new(&both);
    let gateway = gateway(&file.path).await;
    let addr = gateway.addr();
    let slow = tokio::spawn(async move { score(&client(), addr, Some("green")).await });
    let green_series = |text: &str| {
        text.lines()
            .filter(|line| !line.starts_with('#') && line.contains("deployment=\"green\""))
            .count()
    };
    eventually("green's request is in flight", || {
        sample(
            &gateway.metrics().render(),
            "switchyard_requests_in_flight",
            &labels("green", &[]),
        ) == Some(1.0)
    })
    .await;

    file.write_in_place(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    wait_for_generation(&gateway, 2).await;
    let text = gateway.metrics().render();
    assert_eq!(
        sample(
            &text,
            "switchyard_requests_in_flight",
            &labels("green", &[])
        ),
        Some(1.0),
        "still counted while its request runs"
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_deployment_traffic_percent",
            &labels("green", &[])
        ),
        None,
        "its configured share goes at once"
    );

    let answer = slow.await.expect("task");
    assert_eq!(answer.deployment.as_deref(), Some("green"));
    eventually("every green series is gone", || {
        green_series(&gateway.metrics().render()) == 0
    })
    .await;

    // Added again, it starts afresh at 0.
    file.write_in_place(&both);
    wait_for_generation(&gateway, 3).await;
    let text = gateway.metrics().render();
    assert_eq!(
        sample(
            &text,
            "switchyard_requests_total",
            &labels("green", &[("code", "200"), ("route", "pinned")])
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn the_rejected_flag_clears_when_the_file_is_put_back_as_it_was() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let good = endpoint_yaml(&[("blue", 100, &[&blue.url()])]);
    let file = EndpointFile::new(&good);
    let gateway = gateway(&file.path).await;
    let rejected = || {
        sample(
            &gateway.metrics().render(),
            "switchyard_config_last_reload_rejected",
            &[],
        )
    };
    file.write_in_place(&good.replace("blue: 100", "blue: 50"));
    let _ = gateway.reloader().reload();
    assert_eq!(rejected(), Some(1.0));
    file.write_in_place(&good);
    let outcome = gateway.reloader().reload();
    assert!(
        matches!(outcome, switchyard::reload::ReloadOutcome::Unchanged { .. }),
        "{outcome:?}"
    );
    assert_eq!(rejected(), Some(0.0));
}
