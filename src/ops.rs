//! The operator's side of the admin API: `switchyard show`, `invoke` and `diff`.

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;
use http::{Method, StatusCode};

pub use crate::client::{Answer, base_url, send};

use crate::admin::EndpointStatus;
use crate::config::PIN_HEADER;
use crate::config::{Change, ConfigError, EndpointConfig};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// No HTTP exchange happened.
    #[error(transparent)]
    Unreachable(#[from] crate::client::Unreachable),
    /// The admin API answered with something unexpected.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// What was asked.
        url: String,
        /// Its status.
        status: StatusCode,
        /// Its body.
        body: String,
    },
    /// The admin API's JSON was not understood.
    #[error("cannot read the answer of {url}: {source}")]
    Json {
        /// What was asked.
        url: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A config file or the serving config is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A response read whole.
/// `GET {admin}/-/endpoint`.
pub async fn fetch_status(admin: &str) -> Result<EndpointStatus, OpsError> {
    let url = format!("{}/-/endpoint", base_url(admin));
    let answer = send(Method::GET, &url, &[], Bytes::new())
        .await
        .map_err(|error| crate::client::Unreachable {
            url: error.url,
            reason: format!(
                "{}; is the gateway running, with its admin API on {}?",
                error.reason,
                base_url(admin)
            ),
        })?;
    if answer.status != StatusCode::OK {
        return Err(OpsError::Status {
            url,
            status: answer.status,
            body: String::from_utf8_lossy(&answer.body).into_owned(),
        });
    }
    serde_json::from_slice(&answer.body).map_err(|source| OpsError::Json { url, source })
}

/// The serving config, rebuilt from the status's file-shaped copy.
pub fn serving_config(status: &EndpointStatus) -> Result<EndpointConfig, OpsError> {
    // JSON is valid YAML, so the same parser and validator read it.
    Ok(EndpointConfig::parse(&status.config.to_string())?)
}

/// `switchyard show`: the endpoint as a table.
pub fn render_status(status: &EndpointStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "endpoint {}  generation {}  applied {}  config {}{}",
        status.endpoint,
        status.generation,
        status.applied_at,
        status.config_path,
        if status.draining { "  DRAINING" } else { "" }
    );
    let rows: Vec<[String; 7]> = status
        .deployments
        .iter()
        .map(|d| {
            let ready = d.instances.iter().filter(|i| i.ready).count();
            // Recent, not since start: a deployment failing now must look like it.
            let rate = if status.recent_window_seconds > 0.0 {
                d.recent_requests as f64 / status.recent_window_seconds
            } else {
                0.0
            };
            let error_rate = if d.recent_requests > 0 {
                100.0 * d.recent_errors as f64 / d.recent_requests as f64
            } else {
                0.0
            };
            [
                d.name.clone(),
                if d.mirror > 0 {
                    format!("mirror {}%", d.mirror)
                } else {
                    format!("{}%", d.traffic)
                },
                d.model.clone(),
                format!("{ready}/{}", d.instances.len()),
                d.in_flight.to_string(),
                format!("{rate:.1}"),
                format!("{error_rate:.1}%"),
            ]
        })
        .collect();
    let header = [
        "DEPLOYMENT",
        "TRAFFIC",
        "MODEL",
        "READY",
        "IN FLIGHT",
        "REQ/S",
        "ERRORS",
    ];
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].len())
                .chain([header[column].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                // Names left-aligned, numbers right-aligned.
                if column == 0 || column == 2 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&header);
    for row in &rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if status.deployments.is_empty() {
        let _ = writeln!(out, "(no deployments)");
    } else {
        let _ = writeln!(
            out,
            "REQ/S and ERRORS cover the last {:.0} s",
            status.recent_window_seconds
        );
    }
    for deployment in &status.deployments {
        // A refusal share worth a line: Azure's default of one request at a time per instance
        // turns any concurrent load into 429s, which reads as a failing model otherwise.
        if deployment.recent_refused > 0
            && deployment.recent_refused * 20 >= deployment.recent_requests
        {
            let _ = writeln!(
                out,
                "{}: {:.0}% of its requests were refused with 429 (at most {} at once per \
                 instance); if its model server handles requests concurrently, raise \
                 request_settings.max_concurrent_requests_per_instance",
                deployment.name,
                100.0 * deployment.recent_refused as f64 / deployment.recent_requests as f64,
                deployment.max_concurrent_requests_per_instance,
            );
        }
    }
    if let Some(header) = status.config.get("sticky_header").and_then(|v| v.as_str()) {
        let _ = writeln!(
            out,
            "sticky: requests carrying {header} stay on one deployment per value"
        );
    }
    if let Some(rollout) = &status.rollout {
        let _ = write!(out, "\n{}", rollout.render());
    }
    if let Some(error) = &status.last_rejected {
        let _ = writeln!(
            out,
            "\nThe file on disk was rejected; generation {} keeps serving:\n{error}",
            status.generation
        );
    }
    out
}

/// `switchyard diff`: one line per change, or a note that there is none.
pub fn render_changes(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no changes\n".to_string();
    }
    changes.iter().map(|change| format!("{change}\n")).collect()
}

/// `switchyard invoke`: posts the file's content, pinned if asked.
pub async fn invoke(
    url: &str,
    deployment: Option<&str>,
    key: Option<&str>,
    request_file: &Path,
) -> Result<Answer, OpsError> {
    let body = std::fs::read(request_file).map_err(|source| OpsError::Read {
        path: request_file.display().to_string(),
        source,
    })?;
    let mut headers = vec![("content-type", "application/json")];
    if let Some(deployment) = deployment {
        headers.push((PIN_HEADER, deployment));
    }
    let bearer = key.map(|key| format!("Bearer {key}"));
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer));
    }
    Ok(send(Method::POST, url, &headers, Bytes::from(body)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{DeploymentStatus, InstanceStatus};

    fn status() -> EndpointStatus {
        let instance = |port: u16, ready: bool| InstanceStatus {
            url: format!("http://127.0.0.1:{port}"),
            ready,
            in_flight: 0,
        };
        EndpointStatus {
            endpoint: "my-endpoint".into(),
            config_path: "endpoint.yaml".into(),
            generation: 4,
            applied_at: "2026-01-01T00:00:00.000Z".into(),
            uptime_seconds: 100.0,
            draining: false,
            recent_window_seconds: 10.0,
            last_rejected: None,
            rollout: None,
            traffic: [("blue".to_string(), 90), ("green".to_string(), 10)].into(),
            mirror_traffic: [("red".to_string(), 20)].into(),
            deployments: vec![
                DeploymentStatus {
                    name: "blue".into(),
                    model: "model-1:1".into(),
                    traffic: 90,
                    mirror: 0,
                    in_flight: 3,
                    requests: 9000,
                    errors: 91,
                    recent_requests: 900,
                    recent_errors: 9,
                    recent_refused: 0,
                    max_concurrent_requests_per_instance: 16,
                    instances: vec![instance(9001, true), instance(9002, false)],
                },
                DeploymentStatus {
                    name: "green".into(),
                    model: "model-2:1".into(),
                    traffic: 10,
                    mirror: 0,
                    in_flight: 0,
                    requests: 1000,
                    errors: 1,
                    recent_requests: 100,
                    recent_errors: 0,
                    recent_refused: 0,
                    max_concurrent_requests_per_instance: 16,
                    instances: vec![instance(9003, true)],
                },
                DeploymentStatus {
                    name: "red".into(),
                    model: "model-3:1".into(),
                    traffic: 0,
                    mirror: 20,
                    in_flight: 1,
                    requests: 2000,
                    errors: 21,
                    recent_requests: 200,
                    recent_errors: 2,
                    recent_refused: 0,
                    max_concurrent_requests_per_instance: 16,
                    instances: vec![instance(9004, true)],
                },
            ],
            config: serde_json::json!({
                "name": "my-endpoint",
                "auth_mode": "none",
                "traffic": {"blue": 90, "green": 10},
                "mirror_traffic": {"red": 20},
                "deployments": [
                    {"name": "blue", "model": "model-1:1", "instances": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]},
                    {"name": "green", "model": "model-2:1", "instances": ["http://127.0.0.1:9003"]},
                    {"name": "red", "model": "model-3:1", "instances": ["http://127.0.0.1:9004"]},
                ],
            }),
        }
    }

    #[test]
    fn show_points_at_the_setting_when_many_requests_are_refused() {
        let mut status = status();
        assert!(!render_status(&status).contains("429"));
        status.deployments[0].recent_refused = 600;
        status.deployments[0].max_concurrent_requests_per_instance = 1;
        let text = render_status(&status);
        assert!(
            text.contains(
                "blue: 67% of its requests were refused with 429 (at most 1 at once per \
                 instance); if its model server handles requests concurrently, raise \
                 request_settings.max_concurrent_requests_per_instance"
            ),
            "{text}"
        );
        // A few refusals under a burst are no news.
        status.deployments[0].recent_refused = 20;
        assert!(!render_status(&status).contains("429"));
    }

    #[test]
    fn show_renders_one_aligned_row_per_deployment() {
        let text = render_status(&status());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "endpoint my-endpoint  generation 4  applied 2026-01-01T00:00:00.000Z  config endpoint.yaml"
        );
        assert_eq!(
            lines[1],
            "DEPLOYMENT     TRAFFIC  MODEL      READY  IN FLIGHT  REQ/S  ERRORS"
        );
        assert_eq!(
            lines[2],
            "blue               90%  model-1:1    1/2          3   90.0    1.0%"
        );
        assert_eq!(
            lines[3],
            "green              10%  model-2:1    1/1          0   10.0    0.0%"
        );
        assert_eq!(
            lines[4],
            "red         mirror 20%  model-3:1    1/1          1   20.0    1.0%"
        );
        assert_eq!(lines[5], "REQ/S and ERRORS cover the last 10 s");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn show_says_which_header_keeps_users_on_one_deployment() {
        let mut status = status();
        status.config["sticky_header"] = serde_json::Value::from("x-user-id");
        let text = render_status(&status);
        assert_eq!(
            text.lines().nth(6),
            Some("sticky: requests carrying x-user-id stay on one deployment per value")
        );
        assert_eq!(
            serving_config(&status)
                .expect("valid")
                .sticky_header
                .map(|h| h.to_string())
                .as_deref(),
            Some("x-user-id")
        );
    }

    #[test]
    fn the_serving_config_round_trips_through_the_status() {
        let config = serving_config(&status()).expect("valid");
        assert_eq!(config.deployments[0].traffic, 90);
        assert_eq!(
            config.deployments[1].instances[0].to_string(),
            "http://127.0.0.1:9003"
        );
        assert_eq!(config.deployments[1].model, "model-2:1");
        assert_eq!(config.mirrored().map(|d| d.mirror), Some(20));
    }
}
