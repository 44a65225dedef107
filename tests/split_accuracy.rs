//! The observed split through a real gateway matches the configured weights, for the splits
//! users actually set, including the extremes.
//!
//! Bound: Bernstein's inequality for a binomial share p̂ of n draws with probability p:
//! P(|p̂ - p| >= t) <= 2 exp(-n t² / (2 p (1 - p) + 2t/3)). Each check uses the t that makes this
//! 1e-8, and there are 13 checks, so a correct gateway fails this test with probability below
//! 1.3e-7. Weights 0 and 100 are checked exactly.

mod common;

use std::collections::HashMap;

use common::*;
use http::StatusCode;
use switchyard::model_server::Model;

const REQUESTS_PER_SPLIT: usize = 4_000;
const CONCURRENCY: usize = 8;
const FALSE_FAILURE_PER_CHECK: f64 = 1e-8;

/// The deviation t at which Bernstein's bound equals `FALSE_FAILURE_PER_CHECK`.
fn bernstein_bound(n: usize, p: f64) -> f64 {
    let l = (2.0 / FALSE_FAILURE_PER_CHECK).ln();
    let n = n as f64;
    // Solve n t² = l (2 p (1 - p) + 2t/3) for t > 0.
    let b = 2.0 * l / 3.0;
    (b + (b * b + 8.0 * n * p * (1.0 - p) * l).sqrt()) / (2.0 * n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_shares_stay_within_the_bound_for_every_split() {
    let servers = [
        model_server(Model::Diabetes, "a").await,
        model_server(Model::Diabetes, "b").await,
        model_server(Model::Diabetes, "c").await,
    ];
    let names = ["blue", "green", "red"];
    let splits: [&[u8]; 6] = [
        &[90, 10],
        &[50, 50],
        &[99, 1],
        &[1, 99],
        &[33, 33, 34],
        &[0, 100],
    ];

    let yaml = |split: &[u8]| {
        let deployments: Vec<(&str, u8, Vec<String>)> = split
            .iter()
            .enumerate()
            .map(|(i, weight)| (names[i], *weight, vec![servers[i].url()]))
            .collect();
        let borrowed: Vec<Vec<&str>> = deployments
            .iter()
            .map(|(_, _, urls)| urls.iter().map(String::as_str).collect())
            .collect();
        let spec: Vec<(&str, u8, &[&str])> = deployments
            .iter()
            .zip(&borrowed)
            .map(|((name, weight, _), urls)| (*name, *weight, urls.as_slice()))
            .collect();
        endpoint_yaml(&spec)
    };

    let file = EndpointFile::new(&yaml(splits[0]));
    let gateway = gateway(&file.path).await;
    let addr = gateway.addr();
    for (index, split) in splits.iter().enumerate() {
        if index > 0 {
            file.replace_by_rename(&yaml(split));
            wait_for_generation(&gateway, index as u64 + 1).await;
        }
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                tokio::spawn(async move {
                    let client = client();
                    let mut seen = Vec::new();
                    for _ in 0..REQUESTS_PER_SPLIT / CONCURRENCY {
                        let answer = score(&client, addr, None).await;
                        assert_eq!(answer.status, StatusCode::OK);
                        seen.push(answer.deployment.expect("deployment header"));
                    }
                    seen
                })
            })
            .collect();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for task in tasks {
            for deployment in task.await.expect("task") {
                *counts.entry(deployment).or_default() += 1;
            }
        }
        let n: usize = counts.values().sum();
        assert_eq!(n, REQUESTS_PER_SPLIT);
        for (name, weight) in names.iter().zip(split.iter()) {
            let observed = *counts.get(*name).unwrap_or(&0);
            match weight {
                0 => assert_eq!(observed, 0, "{split:?}: {name} at 0% got traffic"),
                100 => assert_eq!(observed, n, "{split:?}: {name} at 100% missed traffic"),
                _ => {
                    let p = f64::from(*weight) / 100.0;
                    let share = observed as f64 / n as f64;
                    let bound = bernstein_bound(n, p);
                    assert!(
                        (share - p).abs() < bound,
                        "{split:?}: {name} share {share:.4}, expected {p} ± {bound:.4}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_bound_is_tight_enough_to_catch_a_wrong_split() {
    // At 4,000 requests, 1% is told apart from 2.5%, 90% from 85%, 50% from 44%.
    assert!(bernstein_bound(4_000, 0.01) < 0.015);
    assert!(bernstein_bound(4_000, 0.90) < 0.05);
    assert!(bernstein_bound(4_000, 0.50) < 0.06);
}

#[tokio::test]
async fn every_hundred_weighted_requests_on_a_serving_thread_follow_the_split_exactly() {
    let blue = model_server(Model::Diabetes, "blue").await;
    let green = model_server(Model::Constant, "green").await;
    let file = EndpointFile::new(&endpoint_yaml(&[
        ("blue", 90, &[&blue.url()]),
        ("green", 10, &[&green.url()]),
    ]));
    // One serving thread, so one deck draws for every request.
    let gateway = gateway_on_threads(&file.path, 1).await;
    let client = client();
    for block in 0..5 {
        let mut to_green = 0;
        for request in 0..100 {
            // Pinned requests in between take no draw.
            if request % 7 == 0 {
                let pinned = score(&client, gateway.addr(), Some("green")).await;
                assert_eq!(pinned.deployment.as_deref(), Some("green"));
            }
            let answer = score(&client, gateway.addr(), None).await;
            assert_eq!(answer.status, StatusCode::OK);
            if answer.deployment.as_deref() == Some("green") {
                to_green += 1;
            }
        }
        assert_eq!(
            to_green, 10,
            "green's share of weighted requests {block}00..{block}99"
        );
    }
}

#[tokio::test]
async fn a_new_config_starts_a_fresh_run_of_a_hundred() {
    let blue = model_server(Model::Diabetes, "blue").await;
    let green = model_server(Model::Constant, "green").await;
    let text = endpoint_yaml(&[("blue", 90, &[&blue.url()]), ("green", 10, &[&green.url()])]);
    let file = EndpointFile::new(&text);
    let gateway = gateway_on_threads(&file.path, 1).await;
    let client = client();
    let green_of = |count: usize| {
        let client = client.clone();
        let addr = gateway.addr();
        async move {
            let mut to_green = 0;
            for _ in 0..count {
                let answer = score(&client, addr, None).await;
                assert_eq!(answer.status, StatusCode::OK);
                to_green += usize::from(answer.deployment.as_deref() == Some("green"));
            }
            to_green
        }
    };
    // 37 requests into a run, then a config with the same split and another setting.
    let _ = green_of(37).await;
    file.write_in_place(&text.replace("per_instance: 64", "per_instance: 32"));
    wait_for_generation(&gateway, 2).await;
    for block in 0..3 {
        assert_eq!(green_of(100).await, 10, "run {block} under the new config");
    }
}
