//! The admin API, on its own listener: liveness, readiness, the endpoint's state, reload, metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::metrics::{Metrics, RolloutGauges};
use crate::reload::{ReloadOutcome, Reloader};
use crate::rollout::state::{Files, RolloutState, Status};

/// How often the counts behind the recent rates of [`EndpointStatus`] are sampled.
pub const RECENT_SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The config and its table.
    pub reloader: Arc<Reloader>,
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// Set when shutdown starts, so readiness fails before the listener closes.
    pub draining: Arc<AtomicBool>,
    /// When the gateway started.
    pub started: Instant,
}

/// `GET /-/endpoint`: the endpoint as it is serving now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The endpoint's name.
    pub endpoint: String,
    /// The file the gateway reads.
    pub config_path: String,
    /// Generation of the config serving now.
    pub generation: u64,
    /// When that generation was applied, RFC 3339.
    pub applied_at: String,
    /// Seconds since the gateway started.
    pub uptime_seconds: f64,
    /// True once shutdown has begun.
    pub draining: bool,
    /// The span, in seconds, that each deployment's `recent_requests` and `recent_errors`
    /// cover: the last minute, or less right after the gateway started.
    #[serde(default)]
    pub recent_window_seconds: f64,
    /// The error of the file on disk, if it was rejected after the serving config was applied.
    pub last_rejected: Option<String>,
    /// Percent of live traffic per deployment.
    pub traffic: BTreeMap<String, u8>,
    /// Percent of live traffic copied to the mirror deployment, if there is one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mirror_traffic: BTreeMap<String, u8>,
    /// Each deployment with its instances.
    pub deployments: Vec<DeploymentStatus>,
    /// The serving config in the endpoint file's own shape (JSON is YAML), for `switchyard diff`.
    pub config: serde_json::Value,
    /// The gated rollout on the endpoint file, if one was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutState>,
}

/// One deployment in [`EndpointStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentStatus {
    /// Its name.
    pub name: String,
    /// The model it serves.
    pub model: String,
    /// Percent of live traffic.
    pub traffic: u8,
    /// Percent of live traffic copied to it; its answers are discarded.
    #[serde(default)]
    pub mirror: u8,
    /// Requests in flight across its instances.
    pub in_flight: usize,
    /// Requests answered since the gateway started.
    pub requests: u64,
    /// Of those, answered with 408, 429 or 5xx.
    pub errors: u64,
    /// Requests answered in the last `recent_window_seconds`.
    #[serde(default)]
    pub recent_requests: u64,
    /// Of those, answered with 408, 429 or 5xx.
    #[serde(default)]
    pub recent_errors: u64,
    /// Of those, 429s: refused at the deployment's limit of requests at once.
    #[serde(default)]
    pub recent_refused: u64,
    /// Its `max_concurrent_requests_per_instance`.
    #[serde(default)]
    pub max_concurrent_requests_per_instance: u32,
    /// Its instances.
    pub instances: Vec<InstanceStatus>,
}

/// One instance in [`DeploymentStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// `http://host:port`.
    pub url: String,
    /// Whether it takes traffic.
    pub ready: bool,
    /// Requests in flight on it.
    pub in_flight: usize,
}

/// The admin API's routes; served by [`crate::Gateway`] and testable without a socket.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .route("/-/endpoint", get(endpoint))
        .route("/-/reload", post(reload))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthy() -> &'static str {
    "ok\n"
}

async fn ready(State(state): State<AdminState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: the gateway is shutting down\n",
        )
            .into_response();
    }
    let applied = state.reloader.table().load();
    let table = &applied.routes;
    let serving = table
        .deployments()
        .iter()
        .zip(&table.config().deployments)
        .any(|(deployment, config)| config.traffic > 0 && deployment.available_instances() > 0);
    if serving {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no deployment has live traffic and a ready instance\n",
        )
            .into_response()
    }
}

async fn endpoint(State(state): State<AdminState>) -> Json<EndpointStatus> {
    Json(status(&state))
}

/// The endpoint's state, as `GET /-/endpoint` reports it.
pub fn status(state: &AdminState) -> EndpointStatus {
    let reload = state.reloader.status();
    let applied = state.reloader.table().load_full();
    let table = &applied.routes;
    let config = table.config();
    let counts = state.metrics.request_counts();
    let (window, recent) = state.metrics.recent_counts();
    let deployments = table
        .deployments()
        .iter()
        .zip(&config.deployments)
        .map(|(deployment, settings)| DeploymentStatus {
            name: deployment.name().to_string(),
            model: deployment.model().to_string(),
            traffic: settings.traffic,
            mirror: settings.mirror,
            in_flight: deployment.in_flight(),
            requests: counts.get(deployment.name()).map_or(0, |c| c.answered),
            errors: counts.get(deployment.name()).map_or(0, |c| c.errors),
            recent_requests: recent.get(deployment.name()).map_or(0, |c| c.answered),
            recent_errors: recent.get(deployment.name()).map_or(0, |c| c.errors),
            recent_refused: recent.get(deployment.name()).map_or(0, |c| c.refused),
            max_concurrent_requests_per_instance: settings
                .request_settings
                .max_concurrent_requests_per_instance,
            instances: deployment
                .instances()
                .iter()
                .map(|instance| InstanceStatus {
                    url: instance.describe(),
                    ready: instance.health().is_available(),
                    in_flight: instance.in_flight(),
                })
                .collect(),
        })
        .collect();
    EndpointStatus {
        endpoint: config.name.clone(),
        config_path: reload.path.display().to_string(),
        generation: reload.generation,
        applied_at: humantime::format_rfc3339_millis(reload.applied_at).to_string(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        draining: state.draining.load(Ordering::SeqCst),
        recent_window_seconds: window.as_secs_f64(),
        last_rejected: reload.last_error.map(|error| error.to_string()),
        traffic: config
            .deployments
            .iter()
            .map(|d| (d.name.clone(), d.traffic))
            .collect(),
        mirror_traffic: config
            .mirrored()
            .map(|d| (d.name.clone(), d.mirror))
            .into_iter()
            .collect(),
        deployments,
        config: config.to_file_value(),
        rollout: rollout_state(state),
    }
}

/// The gated rollout beside the endpoint file, as the controller last wrote it.
fn rollout_state(state: &AdminState) -> Option<RolloutState> {
    Files::beside(state.reloader.path())
        .read_state()
        .ok()
        .flatten()
}

/// `POST /-/reload`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadResult {
    /// `applied`, `unchanged` or `rejected`.
    pub result: String,
    /// The generation serving after the attempt.
    pub generation: u64,
    /// What changed, for `applied`.
    #[serde(default)]
    pub changes: Vec<String>,
    /// Why, for `rejected`.
    #[serde(default)]
    pub error: Option<String>,
}

async fn reload(State(state): State<AdminState>) -> Response {
    let reloader = Arc::clone(&state.reloader);
    let outcome = match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(outcome) => outcome,
        Err(error) => {
            tracing::error!(%error, "reload task failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let (status, result) = match outcome {
        ReloadOutcome::Applied {
            generation,
            changes,
        } => (
            StatusCode::OK,
            ReloadResult {
                result: "applied".into(),
                generation,
                changes: changes.iter().map(ToString::to_string).collect(),
                error: None,
            },
        ),
        ReloadOutcome::Unchanged { generation } => (
            StatusCode::OK,
            ReloadResult {
                result: "unchanged".into(),
                generation,
                changes: Vec::new(),
                error: None,
            },
        ),
        ReloadOutcome::Rejected { generation, error } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            ReloadResult {
                result: "rejected".into(),
                generation,
                changes: Vec::new(),
                error: Some(error.to_string()),
            },
        ),
    };
    (status, Json(result)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    // Readiness changes between reloads, so it is read fresh at each scrape.
    let applied = state.reloader.table().load();
    let table = &applied.routes;
    for deployment in table.deployments() {
        state.metrics.set_ready_instances(
            &table.config().name,
            deployment.name(),
            deployment.available_instances(),
        );
    }
    let rollout = rollout_state(&state);
    const STATES: [Status; 4] = [
        Status::Running,
        Status::Paused,
        Status::RolledBack,
        Status::Succeeded,
    ];
    let states = STATES.map(Status::as_str);
    state
        .metrics
        .set_rollout(rollout.as_ref().map(|r| RolloutGauges {
            deployment: &r.plan.deployment,
            step: r.step + 1,
            state: r.status.as_str(),
            states: &states,
            decisions: &r.decisions,
        }));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
