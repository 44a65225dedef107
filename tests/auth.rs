//! `auth_mode: key`: a primary and a secondary key from a separate file, rotated by editing it.

mod common;

use std::path::Path;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use switchyard::Gateway;
use switchyard::model_server::{Model, ModelServer};

const PRIMARY: &str = "primary-0123456789abcdef";
const SECONDARY: &str = "secondary-0123456789abcdef";
const ROTATED: &str = "rotated-0123456789abcdef";

fn keyed_endpoint(instance: &str) -> String {
    format!(
        "name: test-endpoint\nauth_mode: key\nkeys_file: keys.yaml\ntraffic: {{blue: 100}}\n\
         deployments:\n  - name: blue\n    instances: [{instance}]\n    \
         request_settings: {{max_concurrent_requests_per_instance: 16}}\n"
    )
}

fn write_keys(dir: &Path, primary: &str, secondary: &str) {
    let text = format!("primary_key: {primary}\nsecondary_key: {secondary}\n");
    // Written beside and renamed, as a secret manager would, so no half-written file is read.
    let temp = dir.join(".keys.yaml.tmp");
    std::fs::write(&temp, text).expect("write keys");
    std::fs::rename(temp, dir.join("keys.yaml")).expect("rename keys");
}

async fn call(gateway: &Gateway, authorization: Option<&str>) -> Scored {
    let mut request = score_request(gateway.addr(), None);
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert("authorization", value.parse().expect("header"));
    }
    read(client().request(request).await.expect("answer")).await
}

/// The status of a request presenting `key` as a bearer token.
async fn status_with_key(gateway: &Gateway, key: &str) -> StatusCode {
    call(gateway, Some(&format!("Bearer {key}"))).await.status
}

async fn keyed_gateway(server: &ModelServer) -> (EndpointFile, Gateway) {
    let file = EndpointFile::new(&keyed_endpoint(&server.url()));
    write_keys(file.dir.path(), PRIMARY, SECONDARY);
    let gateway = gateway(&file.path).await;
    (file, gateway)
}

#[tokio::test]
async fn missing_and_wrong_keys_get_the_same_401() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let (_file, gateway) = keyed_gateway(&blue).await;

    let missing = call(&gateway, None).await;
    let wrong = call(&gateway, Some("Bearer not-the-key-0123456789")).await;
    let malformed = call(&gateway, Some(PRIMARY)).await;
    for answer in [&missing, &wrong, &malformed] {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.json()["error"]["code"], "unauthorized");
    }
    assert_eq!(missing.body, wrong.body, "no hint which part failed");
    assert_eq!(blue.scored(), 0);
}

#[tokio::test]
async fn either_key_is_accepted() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let (_file, gateway) = keyed_gateway(&blue).await;
    assert_eq!(status_with_key(&gateway, PRIMARY).await, StatusCode::OK);
    assert_eq!(status_with_key(&gateway, SECONDARY).await, StatusCode::OK);
}

#[tokio::test]
async fn editing_the_keys_file_rotates_keys_without_a_restart() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let (file, gateway) = keyed_gateway(&blue).await;

    // Regenerate the primary key, as `az ml online-endpoint regenerate-keys` would.
    write_keys(file.dir.path(), ROTATED, SECONDARY);
    wait_for_generation(&gateway, 2).await;
    assert_eq!(
        status_with_key(&gateway, PRIMARY).await,
        StatusCode::UNAUTHORIZED,
        "the old key"
    );
    assert_eq!(status_with_key(&gateway, ROTATED).await, StatusCode::OK);
    assert_eq!(status_with_key(&gateway, SECONDARY).await, StatusCode::OK);
}

#[tokio::test]
async fn an_invalid_keys_file_keeps_the_old_keys() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let (file, gateway) = keyed_gateway(&blue).await;

    write_keys(file.dir.path(), "short", SECONDARY);
    let outcome = gateway.reloader().reload();
    let switchyard::reload::ReloadOutcome::Rejected { error, .. } = outcome else {
        panic!("expected a rejection, got {outcome:?}");
    };
    let message = error.to_string();
    assert!(
        message.contains("keys.yaml") && message.contains("primary_key"),
        "{message}"
    );
    assert!(
        !message.contains(SECONDARY),
        "a key leaked into an error: {message}"
    );
    assert_eq!(status_with_key(&gateway, PRIMARY).await, StatusCode::OK);
}

#[tokio::test]
async fn the_key_is_not_forwarded_to_the_model() {
    let (echo, _task) = echo_server().await;
    let file = EndpointFile::new(&keyed_endpoint(&echo));
    write_keys(file.dir.path(), PRIMARY, SECONDARY);
    let gateway = gateway(&file.path).await;

    let request = Request::post(format!("http://{}/score", gateway.addr()))
        .header("authorization", format!("Bearer {PRIMARY}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = client().request(request).await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("x-echo-authorization").is_none());
}

#[tokio::test]
async fn a_missing_keys_file_stops_start_up_with_its_name() {
    let file = EndpointFile::new(&keyed_endpoint("http://127.0.0.1:9"));
    let error = switchyard::Gateway::start(switchyard::GatewayOptions::new(&file.path, loopback()))
        .await
        .expect_err("no keys file");
    assert!(error.to_string().contains("keys.yaml"), "{error}");
}
