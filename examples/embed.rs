//! A Switchyard endpoint mounted inside an axum server of one's own.
//!
//! The endpoint is a `tower::Service`: here it serves `/score` beside the server's own routes,
//! and its metrics are one more route. Two demo model servers stand in for a real blue and
//! green, so the example runs on its own:
//!
//! ```text
//! cargo run --example embed
//! curl -s localhost:8000/score -d @config/sample-request.json
//! curl -s localhost:8000/score -H 'azureml-model-deployment: green' -d @config/sample-request.json
//! curl -s localhost:8000/metrics | grep switchyard_requests_total
//! ```
//!
//! Editing the endpoint file it prints (the split, say) takes effect at once, as in the gateway.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use switchyard::model_server::{Model, ModelServer, ModelServerOptions};
use switchyard::{Endpoint, EndpointOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let blue =
        ModelServer::bind(any_port, ModelServerOptions::new(Model::Diabetes, "blue-1")).await?;
    let green = ModelServer::bind(
        any_port,
        ModelServerOptions::new(Model::Constant, "green-1"),
    )
    .await?;

    let dir = std::env::temp_dir().join("switchyard-embed");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("endpoint.yaml");
    std::fs::write(
        &config,
        format!(
            "name: embedded\nauth_mode: none\ntraffic: {{blue: 90, green: 10}}\ndeployments:\n\
             \x20 - name: blue\n    instances: [{}]\n    request_settings: {{max_concurrent_requests_per_instance: 16}}\n\
             \x20 - name: green\n    instances: [{}]\n    request_settings: {{max_concurrent_requests_per_instance: 16}}\n",
            blue.url(),
            green.url()
        ),
    )?;

    let endpoint = Endpoint::start(EndpointOptions::new(&config))?;
    let metrics = endpoint.metrics().clone();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
        .route_service("/score", endpoint);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
    println!(
        "serving on http://127.0.0.1:8000 (/score, /metrics, /health); endpoint file: {}",
        config.display()
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
