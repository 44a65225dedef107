//! Host names in instance URLs: one instance per address, re-resolved while running.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use switchyard::model_server::{Model, ModelServer, ModelServerOptions};
use switchyard::upstream::resolve::Resolve;
use switchyard::{Gateway, GatewayOptions};

/// A resolver the test controls, standing in for a headless service's DNS records.
#[derive(Debug, Default)]
struct Records(Mutex<HashMap<String, Vec<SocketAddr>>>);

impl Records {
    fn set(&self, host: &str, addresses: Vec<SocketAddr>) {
        self.0
            .lock()
            .expect("records")
            .insert(host.to_string(), addresses);
    }
}

impl Resolve for Records {
    fn resolve(&self, host: &str, _port: u16) -> Vec<SocketAddr> {
        self.0
            .lock()
            .expect("records")
            .get(host)
            .cloned()
            .unwrap_or_default()
    }
}

/// Two model servers on the same port of two loopback addresses, as two pods behind one name.
async fn two_pods() -> (ModelServer, ModelServer) {
    for _ in 0..20 {
        let first = ModelServer::bind(
            loopback(),
            ModelServerOptions::new(Model::Diabetes, "pod-1"),
        )
        .await
        .expect("bind");
        let port = first.addr().port();
        let second_addr = SocketAddr::from(([127, 0, 0, 2], port));
        if let Ok(second) = ModelServer::bind(
            second_addr,
            ModelServerOptions::new(Model::Diabetes, "pod-2"),
        )
        .await
        {
            return (first, second);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

async fn gateway_with(
    records: &Arc<Records>,
    text: &str,
    interval: Duration,
) -> (EndpointFile, Gateway) {
    let file = EndpointFile::new(text);
    let mut options = GatewayOptions::new(&file.path, loopback());
    options.resolver = Arc::clone(records) as Arc<dyn Resolve>;
    options.resolve_interval = interval;
    let gateway = Gateway::start(options).await.expect("start");
    (file, gateway)
}

fn instance_count(gateway: &Gateway) -> usize {
    let table = gateway.reloader().table().load();
    table
        .routes
        .deployment("blue")
        .expect("blue")
        .instances()
        .len()
}

#[tokio::test]
async fn each_address_of_a_name_is_an_instance_and_the_name_is_the_host() {
    let (pod_1, pod_2) = two_pods().await;
    let port = pod_1.addr().port();
    let records = Arc::new(Records::default());
    records.set("model.test", vec![pod_1.addr(), pod_2.addr()]);
    let url = format!("http://model.test:{port}");
    let (_file, gateway) = gateway_with(
        &records,
        &endpoint_yaml(&[("blue", 100, &[&url])]),
        Duration::from_secs(3600),
    )
    .await;
    assert_eq!(instance_count(&gateway), 2);

    let client = client();
    for _ in 0..40 {
        assert_eq!(
            score(&client, gateway.addr(), None).await.status,
            StatusCode::OK
        );
    }
    // Two idle instances, each pick a coin flip: one of them getting nothing has probability 2^-39.
    assert!(
        pod_1.scored() > 0 && pod_2.scored() > 0,
        "{} / {}",
        pod_1.scored(),
        pod_2.scored()
    );

    // The model server sees the name from the config, not the address.
    let (echo, _task) = echo_server().await;
    let echo_addr: SocketAddr = echo.trim_start_matches("http://").parse().expect("addr");
    records.set("echo.test", vec![echo_addr]);
    let echo_url = format!("http://echo.test:{}", echo_addr.port());
    let (_file, gateway) = gateway_with(
        &records,
        &endpoint_yaml(&[("blue", 100, &[&echo_url])]),
        Duration::from_secs(3600),
    )
    .await;
    let response = client
        .request(score_request(gateway.addr(), None))
        .await
        .expect("answer");
    assert_eq!(
        response.headers()["x-echo-host"],
        format!("echo.test:{}", echo_addr.port()).as_str()
    );
}

#[tokio::test]
async fn a_new_address_becomes_an_instance_without_a_config_change() {
    let (pod_1, pod_2) = two_pods().await;
    let records = Arc::new(Records::default());
    records.set("model.test", vec![pod_1.addr()]);
    let url = format!("http://model.test:{}", pod_1.addr().port());
    let (_file, gateway) = gateway_with(
        &records,
        &endpoint_yaml(&[("blue", 100, &[&url])]),
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(instance_count(&gateway), 1);

    // The service scales up: the name now has two addresses.
    records.set("model.test", vec![pod_1.addr(), pod_2.addr()]);
    let deadline = Instant::now() + PATIENCE;
    while instance_count(&gateway) != 2 {
        assert!(
            Instant::now() < deadline,
            "the new address never became an instance"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gateway.generation(), 1, "the config did not change");

    // And scales down again.
    records.set("model.test", vec![pod_2.addr()]);
    while instance_count(&gateway) != 1 {
        assert!(
            Instant::now() < deadline,
            "the removed address stayed an instance"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = client();
    for _ in 0..5 {
        assert_eq!(
            score(&client, gateway.addr(), None)
                .await
                .instance
                .as_deref(),
            Some("pod-2")
        );
    }
}
