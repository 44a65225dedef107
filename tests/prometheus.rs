//! A real Prometheus server scraping a gateway under a known mix of traffic, asked through its
//! HTTP API the queries docs/metrics.md gives: the figures must match what the clients saw. Needs the
//! `prometheus` binary (Debian's `prometheus` package, which `.ci/run` installs).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::prometheus::{Prometheus, installed};
use common::*;
use http::StatusCode;
use switchyard::model_server::{Model, ModelServer, ModelServerOptions};
use switchyard::{Gateway, GatewayOptions};

/// The PromQL block of docs/metrics.md under the paragraph that starts with `intro`: the queries
/// run here are the ones the page gives, word for word.
fn documented_query(intro: &str) -> String {
    let page = include_str!("../docs/metrics.md");
    let at = page
        .find(&format!("\n{intro}"))
        .unwrap_or_else(|| panic!("docs/metrics.md has no paragraph {intro:?}"));
    let start = page[at..].find("```promql\n").expect("a query under it") + at + 10;
    let end = page[start..].find("```").expect("a closed block") + start;
    page[start..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn success_rate() -> String {
    documented_query("Success rate per deployment")
}

fn success_p99() -> String {
    documented_query("p99 of successful answers per deployment")
}

fn request_rate() -> String {
    documented_query("Request rate per deployment")
}

/// "The same with `outcome="error"` on top", as the page says of the error rate.
fn error_rate() -> String {
    let success = success_rate();
    let (top, _) = success.split_once(" / ").expect("a ratio");
    top.replace(r#"outcome!="error""#, r#"outcome="error""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_success_rate_p99_and_request_rate_as_the_clients_saw_them() {
    let blue = slow_model_server(Model::Diabetes, "blue-1", Duration::from_millis(2)).await;
    let mut options = ModelServerOptions::new(Model::Constant, "green-1");
    options.latency = Duration::from_millis(60);
    options.failure_rate = 0.2;
    let green = ModelServer::bind(loopback(), options).await.expect("bind");
    let file = EndpointFile::new(&endpoint_yaml(&[
        ("blue", 50, &[&blue.url()]),
        ("green", 50, &[&green.url()]),
    ]));
    let mut options = GatewayOptions::new(&file.path, loopback());
    options.admin_listen = Some(loopback());
    let gateway = Gateway::start(options).await.expect("start");
    if !installed() {
        return;
    }
    let prometheus = Prometheus::start(&[gateway.admin_addr().expect("admin").to_string()]);
    prometheus.wait_until_scraping(1).await;

    // 4 clients, 100 requests each; what each deployment answered is counted as seen.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let addr = gateway.addr();
        clients.push(tokio::spawn(async move {
            let client = client();
            let mut seen: HashMap<(String, bool), u64> = HashMap::new();
            for _ in 0..100 {
                let answer = score(&client, addr, None).await;
                let deployment = answer.deployment.expect("served by a deployment");
                *seen
                    .entry((deployment, answer.status == StatusCode::OK))
                    .or_default() += 1;
            }
            seen
        }));
    }
    let mut seen: HashMap<(String, bool), u64> = HashMap::new();
    for client in clients {
        for (key, count) in client.await.expect("client") {
            *seen.entry(key).or_default() += count;
        }
    }
    let answered = |deployment: &str| {
        seen.get(&(deployment.to_string(), true))
            .copied()
            .unwrap_or(0)
            + seen
                .get(&(deployment.to_string(), false))
                .copied()
                .unwrap_or(0)
    };
    let failed = |deployment: &str| {
        seen.get(&(deployment.to_string(), false))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(answered("blue") + answered("green"), 400);
    assert_eq!(failed("blue"), 0);
    // 200 requests at 20%: below 15 has a chance far under one in a million.
    assert!(failed("green") >= 15, "{seen:?}");

    // Once the last scrape holds every answer, the counters match the clients exactly.
    let started = Instant::now();
    loop {
        let totals = prometheus
            .by_deployment("sum by (deployment) (switchyard_requests_total)")
            .await;
        if totals.get("blue") == Some(&(answered("blue") as f64))
            && totals.get("green") == Some(&(answered("green") as f64))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the scraped totals never matched the clients: {totals:?} vs {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let success = prometheus.by_deployment(&success_rate()).await;
    let expected_green = 1.0 - failed("green") as f64 / answered("green") as f64;
    assert!((success["blue"] - 1.0).abs() < 1e-9, "{success:?}");
    // Both rates come from series scraped at the same instants, so their ratio is the ratio
    // of the counts; the margin only allows for float rounding.
    assert!(
        (success["green"] - expected_green).abs() < 1e-6,
        "{success:?} vs {expected_green}"
    );

    let p99 = prometheus.by_deployment(&success_p99()).await;
    assert!(p99["green"] >= 0.05, "green answers after 60 ms: {p99:?}");
    assert!(p99["blue"] < p99["green"], "{p99:?}");

    let rate = prometheus.by_deployment(&request_rate()).await;
    assert!(rate["blue"] > 0.0 && rate["green"] > 0.0, "{rate:?}");

    // A deployment added now answers the same queries with 0, not with no data.
    let red = model_server(Model::Constant, "red-1").await;
    file.write_in_place(&endpoint_yaml(&[
        ("blue", 50, &[&blue.url()]),
        ("green", 50, &[&green.url()]),
        ("red", 0, &[&red.url()]),
    ]));
    wait_for_generation(&gateway, 2).await;
    let started = Instant::now();
    loop {
        let rate = prometheus.by_deployment(&request_rate()).await;
        let errors = prometheus.by_deployment(&error_rate()).await;
        if let (Some(rate), Some(errors)) = (rate.get("red"), errors.get("red")) {
            assert_eq!((*rate, *errors), (0.0, 0.0));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "red never answered: {rate:?} {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
