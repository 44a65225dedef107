//! Which deployment answers: weights, pins, zero weights, and instances that refuse.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use switchyard::error::NO_VALID_DEPLOYMENTS;
use switchyard::model_server::Model;

#[tokio::test]
async fn a_pin_reaches_a_deployment_at_zero_percent() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let green = model_server(Model::Constant, "green-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[
        ("blue", 100, &[&blue.url()]),
        ("green", 0, &[&green.url()]),
    ]));
    let gateway = gateway(&file.path).await;
    let client = client();

    for _ in 0..20 {
        let pinned = score(&client, gateway.addr(), Some("green")).await;
        assert_eq!(pinned.status, StatusCode::OK);
        assert_eq!(pinned.deployment.as_deref(), Some("green"));
        assert_eq!(pinned.json(), serde_json::json!([0.5, 0.5]));

        let unpinned = score(&client, gateway.addr(), None).await;
        assert_eq!(unpinned.deployment.as_deref(), Some("blue"));
    }
    assert_eq!(green.scored(), 20, "green got exactly the pinned requests");
    assert_eq!(blue.scored(), 20, "blue got exactly the unpinned requests");
}

#[tokio::test]
async fn an_unknown_pin_gets_404_naming_it() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let gateway = gateway(&file.path).await;

    let answer = score(&client(), gateway.addr(), Some("purple")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let error = answer.json();
    assert_eq!(error["error"]["code"], "deployment_not_found");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("`purple`") && message.contains("blue"),
        "{message}"
    );
    assert_eq!(blue.scored(), 0);
}

#[tokio::test]
async fn all_zero_traffic_gets_azures_404_but_pins_still_work() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 0, &[&blue.url()])]));
    let gateway = gateway(&file.path).await;
    let client = client();

    let answer = score(&client, gateway.addr(), None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json()["error"]["message"], NO_VALID_DEPLOYMENTS);

    let pinned = score(&client, gateway.addr(), Some("blue")).await;
    assert_eq!(pinned.status, StatusCode::OK);
}

#[tokio::test]
async fn a_refused_connection_gets_502_with_a_json_body() {
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&refused_url().await])]));
    let gateway = gateway(&file.path).await;

    let answer = score(&client(), gateway.addr(), None).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.json()["error"]["code"], "upstream_connect_failed");
}

#[tokio::test]
async fn requests_spread_over_a_deployments_instances() {
    let blue_1 = model_server(Model::Diabetes, "blue-1").await;
    let blue_2 = model_server(Model::Diabetes, "blue-2").await;
    let blue_3 = model_server(Model::Diabetes, "blue-3").await;
    let file = EndpointFile::new(&endpoint_yaml(&[(
        "blue",
        100,
        &[&blue_1.url(), &blue_2.url(), &blue_3.url()],
    )]));
    let gateway = gateway(&file.path).await;
    let client = client();

    for _ in 0..300 {
        assert_eq!(
            score(&client, gateway.addr(), None).await.status,
            StatusCode::OK
        );
    }
    // Idle instances tie, and a tie goes to a random one of the two picks, so each gets a third
    // on average. Hoeffding: with n = 300, a share outside 1/3 +- 0.167 has probability < 1e-7.
    for served in [blue_1.scored(), blue_2.scored(), blue_3.scored()] {
        assert!((50..=150).contains(&served), "{served} of 300");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_gets_less_traffic_than_a_fast_one() {
    let slow = slow_model_server(Model::Diabetes, "slow", Duration::from_millis(100)).await;
    let fast = model_server(Model::Diabetes, "fast").await;
    let file = EndpointFile::new(&endpoint_yaml(&[(
        "blue",
        100,
        &[&slow.url(), &fast.url()],
    )]));
    let gateway = gateway(&file.path).await;
    let addr = gateway.addr();

    let workers: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let client = client();
                for _ in 0..25 {
                    assert_eq!(score(&client, addr, None).await.status, StatusCode::OK);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    // Blind alternation would give each half of the 200 requests. Balancing on outstanding
    // requests sends the slow one a request only while it is no busier than the fast one.
    assert_eq!(slow.scored() + fast.scored(), 200);
    assert!(
        slow.scored() * 4 < fast.scored(),
        "slow {} vs fast {}",
        slow.scored(),
        fast.scored()
    );
}

#[tokio::test]
async fn a_pin_header_sent_twice_gets_400() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let gateway = gateway(&file.path).await;

    let mut request = score_request(gateway.addr(), Some("blue"));
    request
        .headers_mut()
        .append(PIN, http::HeaderValue::from_static("green"));
    let answer = read(client().request(request).await.expect("answer")).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"]["code"], "invalid_deployment_header");
    assert_eq!(blue.scored(), 0);
}
