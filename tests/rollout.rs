//! The six-step safe rollout of `config/rollout/`, walked under continuous concurrent load:
//! no request may fail at any point, and each step's observed split must match its weights.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use switchyard::demo::{DemoServers, ROLLOUT_STEPS};

/// Concurrent clients sending requests back to back.
const WORKERS: usize = 8;
/// Requests observed while a step is settled before moving on.
const REQUESTS_PER_STEP: usize = 2_000;
/// Hard cap on requests per worker, so the load loop is bounded in count as well as time.
const MAX_REQUESTS_PER_WORKER: usize = 20_000;
/// Hard cap on the whole walk.
const WALK_DEADLINE: Duration = Duration::from_secs(90);
/// Marks requests sent while a new file was being applied; counted for failures, not for splits.
const IN_TRANSITION: usize = 0;

/// What one request saw.
struct Observation {
    step: usize,
    outcome: Result<String, String>,
}

/// Percent of live traffic for green at each step (blue gets the rest).
const GREEN_PERCENT: [u32; 6] = [0, 0, 0, 10, 100, 100];

/// Hoeffding: P(|share - p| >= t) <= 2 exp(-2 n t^2). With t below, a correct gateway fails this
/// check with probability under 1e-7 per step.
fn hoeffding_bound(n: usize) -> f64 {
    ((2.0 / 1e-7_f64).ln() / (2.0 * n as f64)).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_six_step_rollout_drops_nothing_and_follows_each_split() {
    let demo = DemoServers::start().await.expect("model servers");
    let steps: Vec<String> = ROLLOUT_STEPS
        .iter()
        .map(|(_, text)| demo.render(text))
        .collect();
    let file = EndpointFile::new(&steps[0]);
    let gateway = gateway(&file.path).await;
    let addr = gateway.addr();

    let step = Arc::new(AtomicUsize::new(1));
    let settled_requests = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let client = client();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (step, settled, stop, client) = (
                Arc::clone(&step),
                Arc::clone(&settled_requests),
                Arc::clone(&stop),
                client.clone(),
            );
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) && seen.len() < MAX_REQUESTS_PER_WORKER {
                    // Read the step before sending: a request counts for a step only if the
                    // step's table was already serving when it started.
                    let at_step = step.load(Ordering::SeqCst);
                    let outcome = match tokio::time::timeout(
                        PATIENCE,
                        client.request(score_request(addr, None)),
                    )
                    .await
                    {
                        Ok(Ok(response)) => {
                            let answer = read(response).await;
                            match (answer.status, answer.deployment) {
                                (StatusCode::OK, Some(deployment)) => Ok(deployment),
                                (status, _) => Err(format!("status {status}: {:?}", answer.body)),
                            }
                        }
                        Ok(Err(error)) => Err(format!("transport: {error}")),
                        Err(_) => Err("no answer in time".to_string()),
                    };
                    if at_step != IN_TRANSITION {
                        settled.fetch_add(1, Ordering::Relaxed);
                    }
                    seen.push(Observation {
                        step: at_step,
                        outcome,
                    });
                }
                seen
            })
        })
        .collect();

    let walk_started = Instant::now();
    let wait_for_settled_requests = |from: usize| {
        let settled = Arc::clone(&settled_requests);
        async move {
            while settled.load(Ordering::Relaxed) < from + REQUESTS_PER_STEP {
                assert!(walk_started.elapsed() < WALK_DEADLINE, "the load stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    let pin_client = common::client();
    for (index, text) in steps.iter().enumerate() {
        let number = index + 1;
        if number > 1 {
            step.store(IN_TRANSITION, Ordering::SeqCst);
            // Alternate the two ways files get replaced.
            if number % 2 == 0 {
                file.write_in_place(text);
            } else {
                file.replace_by_rename(text);
            }
            wait_for_generation(&gateway, number as u64).await;
            step.store(number, Ordering::SeqCst);
        }
        let from = settled_requests.load(Ordering::Relaxed);
        wait_for_settled_requests(from).await;

        // Green answers by header from the step that creates it; blue is gone after step 6.
        let green = score(&pin_client, addr, Some("green")).await;
        let expected_green = if number >= 3 {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(
            green.status, expected_green,
            "pin to green at step {number}"
        );
        let blue = score(&pin_client, addr, Some("blue")).await;
        let expected_blue = if number < 6 {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(blue.status, expected_blue, "pin to blue at step {number}");
    }
    stop.store(true, Ordering::Relaxed);

    let mut observations = Vec::new();
    for worker in workers {
        observations.extend(worker.await.expect("worker"));
    }

    let failures: Vec<&String> = observations
        .iter()
        .filter_map(|o| o.outcome.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the rollout, first: {:?}",
        failures.len(),
        observations.len(),
        failures.first()
    );

    for number in 1..=6 {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for observation in observations.iter().filter(|o| o.step == number) {
            if let Ok(deployment) = &observation.outcome {
                *counts.entry(deployment.as_str()).or_default() += 1;
            }
        }
        let total: usize = counts.values().sum();
        assert!(
            total >= REQUESTS_PER_STEP,
            "step {number}: only {total} requests"
        );
        let green = *counts.get("green").unwrap_or(&0);
        let share = green as f64 / total as f64;
        let expected = f64::from(GREEN_PERCENT[number - 1]) / 100.0;
        let bound = hoeffding_bound(total);
        match GREEN_PERCENT[number - 1] {
            // Weight 0 and 100 are exact: no draw may cross them.
            0 => assert_eq!(green, 0, "step {number}: green got live traffic at 0%"),
            100 => assert_eq!(green, total, "step {number}: blue got live traffic at 0%"),
            _ => assert!(
                (share - expected).abs() < bound,
                "step {number}: green share {share:.4} vs {expected} (bound {bound:.4}, n = {total})"
            ),
        }
    }

    // Blue's two instances shared its load from step 2 on.
    let [blue_1, blue_2, _] = &demo.servers;
    assert!(blue_2.scored() > 0 && blue_1.scored() > blue_2.scored() / 2);
}
