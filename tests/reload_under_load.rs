//! The endpoint file rewritten again and again under continuous load, alternating splits,
//! adding and removing deployments, and moving the mirror: no request may fail and no
//! connection may be reset. Reports
//! the delay from each file write to the first request served by the new split.
//!
//! CI runs 20 rewrites; the benchmark runs the full 200 with
//! `SWITCHYARD_RELOAD_REWRITES=200 cargo test --release --test reload_under_load -- --nocapture`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use switchyard::model_server::Model;

const WORKERS: usize = 8;
const MAX_REQUESTS_PER_WORKER: usize = 200_000;
const DEADLINE: Duration = Duration::from_secs(240);

fn rewrites() -> usize {
    std::env::var("SWITCHYARD_RELOAD_REWRITES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_file_under_load_fails_no_request() {
    let blue = model_server(Model::Diabetes, "blue").await;
    let green = model_server(Model::Constant, "green").await;
    let red = model_server(Model::Constant, "red").await;
    // Each config flips which deployment answers, and together they add and remove deployments
    // and copy live traffic to one, then another, then none.
    let configs: [(String, &str); 4] = [
        (
            with_mirror(
                &endpoint_yaml(&[("blue", 100, &[&blue.url()]), ("green", 0, &[&green.url()])]),
                "green",
                50,
            ),
            "blue",
        ),
        (
            endpoint_yaml(&[("blue", 0, &[&blue.url()]), ("green", 100, &[&green.url()])]),
            "green",
        ),
        (endpoint_yaml(&[("blue", 100, &[&blue.url()])]), "blue"),
        (
            with_mirror(
                &endpoint_yaml(&[("green", 100, &[&green.url()]), ("red", 0, &[&red.url()])]),
                "red",
                50,
            ),
            "green",
        ),
    ];
    let file = EndpointFile::new(&configs[0].0);
    // Served as the binary serves: on threads of its own, connections spread between them.
    let gateway = gateway_on_threads(&file.path, 2).await;
    let addr = gateway.addr();
    let started = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                // One pooled keep-alive client per worker: a reset connection would fail a request.
                let client = client();
                let (mut sent, mut failures) = (0usize, Vec::new());
                while !stop.load(Ordering::Relaxed) && sent < MAX_REQUESTS_PER_WORKER {
                    sent += 1;
                    match tokio::time::timeout(PATIENCE, client.request(score_request(addr, None)))
                        .await
                    {
                        Ok(Ok(response)) if response.status() == StatusCode::OK => {
                            let _ = read(response).await;
                        }
                        Ok(Ok(response)) => failures.push(format!("status {}", response.status())),
                        Ok(Err(error)) => failures.push(format!("transport: {error}")),
                        Err(_) => failures.push("no answer in time".into()),
                    }
                }
                (sent, failures)
            })
        })
        .collect();

    let probe = client();
    let mut delays = Vec::new();
    for rewrite in 1..=rewrites() {
        assert!(started.elapsed() < DEADLINE, "the walk took too long");
        let (text, expected) = &configs[rewrite % configs.len()];
        let written = Instant::now();
        if rewrite % 2 == 0 {
            file.write_in_place(text);
        } else {
            file.replace_by_rename(text);
        }
        loop {
            let answer = score(&probe, addr, None).await;
            assert_eq!(answer.status, StatusCode::OK);
            if answer.deployment.as_deref() == Some(*expected) {
                break;
            }
            assert!(
                written.elapsed() < PATIENCE,
                "rewrite {rewrite} never took effect"
            );
        }
        delays.push(written.elapsed());
    }
    stop.store(true, Ordering::Relaxed);

    let (mut sent, mut failures) = (0, Vec::new());
    for worker in workers {
        let (worker_sent, worker_failures) = worker.await.expect("worker");
        sent += worker_sent;
        failures.extend(worker_failures);
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    let worst = delays[delays.len() - 1];
    eprintln!(
        "{} rewrites under load: {sent} requests, {} failed; write -> new split served: median {median:?}, worst {worst:?}",
        delays.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(sent > 0);
    // The mirrors were fed: copies reached green while it had no live traffic, and red.
    assert!(red.scored() > 0, "no copy reached red");
}
