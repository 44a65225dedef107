//! Which deployment answers: weights, pins, zero weights, and instances that refuse.

mod common;

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
async fn requests_spread_round_robin_over_a_deployments_instances() {
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

    let mut instances = Vec::new();
    for _ in 0..30 {
        instances.push(
            score(&client, gateway.addr(), None)
                .await
                .instance
                .expect("instance header"),
        );
    }
    assert_eq!(&instances[..3], ["blue-1", "blue-2", "blue-3"]);
    assert_eq!(
        (blue_1.scored(), blue_2.scored(), blue_3.scored()),
        (10, 10, 10)
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
