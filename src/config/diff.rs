//! What applying one endpoint config over another changes, in words a reviewer reads.

use std::fmt;

use super::{DeploymentConfig, EndpointConfig};

/// One difference between two configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The endpoint was renamed.
    EndpointRenamed {
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// A deployment appears in the new config.
    DeploymentAdded {
        /// Its name.
        name: String,
        /// Its traffic percent.
        traffic: u8,
        /// How many instances it has.
        instances: usize,
    },
    /// A deployment is gone from the new config.
    DeploymentRemoved {
        /// Its name.
        name: String,
    },
    /// A deployment's share of live traffic changed.
    Traffic {
        /// The deployment.
        name: String,
        /// Old percent.
        from: u8,
        /// New percent.
        to: u8,
    },
    /// The share of live traffic copied to a deployment changed.
    Mirror {
        /// The deployment.
        name: String,
        /// Old percent.
        from: u8,
        /// New percent.
        to: u8,
    },
    /// A deployment now serves another model.
    Model {
        /// The deployment.
        name: String,
        /// Old model.
        from: String,
        /// New model.
        to: String,
    },
    /// A setting changed: of the endpoint when `deployment` is `None`.
    Setting {
        /// The deployment whose setting changed, if it is a deployment setting.
        deployment: Option<String>,
        /// The setting's key as written in the file, e.g. `request_settings.request_timeout_ms`.
        key: String,
        /// Old value.
        from: String,
        /// New value.
        to: String,
    },
    /// An instance was added to a deployment.
    InstanceAdded {
        /// The deployment.
        name: String,
        /// The instance URL.
        instance: String,
    },
    /// An instance was removed from a deployment.
    InstanceRemoved {
        /// The deployment.
        name: String,
        /// The instance URL.
        instance: String,
    },
}

/// Every change from `old` to `new`: endpoint first, then deployments in the new file's order,
/// then removed deployments.
pub fn diff(old: &EndpointConfig, new: &EndpointConfig) -> Vec<Change> {
    let mut changes = Vec::new();
    if old.name != new.name {
        changes.push(Change::EndpointRenamed {
            from: old.name.clone(),
            to: new.name.clone(),
        });
    }
    setting(
        None,
        "auth_mode",
        &format!("{:?}", old.auth_mode).to_lowercase(),
        &format!("{:?}", new.auth_mode).to_lowercase(),
        &mut changes,
    );
    let keys_file = |config: &EndpointConfig| {
        config
            .keys_file
            .as_ref()
            .map_or_else(|| "-".to_string(), |path| path.display().to_string())
    };
    setting(
        None,
        "keys_file",
        &keys_file(old),
        &keys_file(new),
        &mut changes,
    );
    let sticky_header = |config: &EndpointConfig| {
        config
            .sticky_header
            .as_ref()
            .map_or("-", |header| header.as_str())
            .to_string()
    };
    setting(
        None,
        "sticky_header",
        &sticky_header(old),
        &sticky_header(new),
        &mut changes,
    );
    for deployment in &new.deployments {
        match old.deployments.iter().find(|d| d.name == deployment.name) {
            None => {
                changes.push(Change::DeploymentAdded {
                    name: deployment.name.clone(),
                    traffic: deployment.traffic,
                    instances: deployment.instances.len(),
                });
                if deployment.mirror > 0 {
                    changes.push(Change::Mirror {
                        name: deployment.name.clone(),
                        from: 0,
                        to: deployment.mirror,
                    });
                }
            }
            Some(before) => diff_deployment(before, deployment, &mut changes),
        }
    }
    for deployment in &old.deployments {
        if !new.deployments.iter().any(|d| d.name == deployment.name) {
            changes.push(Change::DeploymentRemoved {
                name: deployment.name.clone(),
            });
        }
    }
    changes
}

fn diff_deployment(old: &DeploymentConfig, new: &DeploymentConfig, changes: &mut Vec<Change>) {
    let name = &new.name;
    if old.traffic != new.traffic {
        changes.push(Change::Traffic {
            name: name.clone(),
            from: old.traffic,
            to: new.traffic,
        });
    }
    if old.mirror != new.mirror {
        changes.push(Change::Mirror {
            name: name.clone(),
            from: old.mirror,
            to: new.mirror,
        });
    }
    if old.model != new.model {
        changes.push(Change::Model {
            name: name.clone(),
            from: old.model.clone(),
            to: new.model.clone(),
        });
    }
    let (before, after) = (old.request_settings, new.request_settings);
    let scope = Some(name.as_str());
    let millis = |d: std::time::Duration| d.as_millis().to_string();
    setting(
        scope,
        "request_settings.request_timeout_ms",
        &millis(before.request_timeout),
        &millis(after.request_timeout),
        changes,
    );
    setting(
        scope,
        "request_settings.max_concurrent_requests_per_instance",
        &before.max_concurrent_requests_per_instance.to_string(),
        &after.max_concurrent_requests_per_instance.to_string(),
        changes,
    );
    setting(
        scope,
        "request_settings.max_queue_wait_ms",
        &millis(before.max_queue_wait),
        &millis(after.max_queue_wait),
        changes,
    );
    let probe = |d: &DeploymentConfig| {
        d.readiness_probe.as_ref().map_or_else(
            || "none".to_string(),
            |p| {
                format!(
                    "{}{} every {}s",
                    p.check,
                    p.port
                        .map_or_else(String::new, |port| format!(" on port {port}")),
                    p.period.as_secs()
                )
            },
        )
    };
    if old.readiness_probe != new.readiness_probe {
        changes.push(Change::Setting {
            deployment: Some(name.clone()),
            key: "readiness_probe".into(),
            from: probe(old),
            to: probe(new),
        });
    }
    for instance in &new.instances {
        if !old.instances.contains(instance) {
            changes.push(Change::InstanceAdded {
                name: name.clone(),
                instance: instance.to_string(),
            });
        }
    }
    for instance in &old.instances {
        if !new.instances.contains(instance) {
            changes.push(Change::InstanceRemoved {
                name: name.clone(),
                instance: instance.to_string(),
            });
        }
    }
}

fn setting(deployment: Option<&str>, key: &str, from: &str, to: &str, changes: &mut Vec<Change>) {
    if from != to {
        changes.push(Change::Setting {
            deployment: deployment.map(str::to_string),
            key: key.to_string(),
            from: from.to_string(),
            to: to.to_string(),
        });
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::EndpointRenamed { from, to } => write!(f, "endpoint renamed {from} -> {to}"),
            Change::DeploymentAdded {
                name,
                traffic,
                instances,
            } => {
                let plural = if *instances == 1 { "" } else { "s" };
                write!(
                    f,
                    "deployment {name} added with {traffic}% traffic and {instances} instance{plural}"
                )
            }
            Change::DeploymentRemoved { name } => write!(f, "deployment {name} removed"),
            Change::Traffic { name, from, to } => write!(f, "traffic {name} {from}% -> {to}%"),
            Change::Mirror { name, from, to } => {
                write!(f, "mirrored traffic {name} {from}% -> {to}%")
            }
            Change::Model { name, from, to } => write!(f, "model of {name} {from} -> {to}"),
            Change::Setting {
                deployment: Some(name),
                key,
                from,
                to,
            } => write!(f, "{key} of {name} {from} -> {to}"),
            Change::Setting {
                deployment: None,
                key,
                from,
                to,
            } => write!(f, "{key} {from} -> {to}"),
            Change::InstanceAdded { name, instance } => {
                write!(f, "instance {instance} added to {name}")
            }
            Change::InstanceRemoved { name, instance } => {
                write!(f, "instance {instance} removed from {name}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> EndpointConfig {
        EndpointConfig::parse(text).expect("valid")
    }

    #[test]
    fn a_flight_step_shows_both_traffic_changes() {
        let old = config(
            "name: e-1\nauth_mode: none\ntraffic: {blue: 100}\ndeployments:\n\
             - {name: blue, instances: [http://a:1]}\n- {name: green, instances: [http://b:1]}\n",
        );
        let new = config(
            "name: e-1\nauth_mode: none\ntraffic: {blue: 90, green: 10}\ndeployments:\n\
             - {name: blue, instances: [http://a:1]}\n- {name: green, instances: [http://b:1]}\n",
        );
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            ["traffic blue 100% -> 90%", "traffic green 0% -> 10%"]
        );
    }

    #[test]
    fn added_removed_and_scaled_deployments_are_listed() {
        let old = config(
            "name: e-1\nauth_mode: none\ntraffic: {blue: 100}\ndeployments:\n- {name: blue, instances: [http://a:1]}\n",
        );
        let new = config(
            "name: e-1\nauth_mode: none\ntraffic: {green: 100}\ndeployments:\n\
             - {name: green, instances: [http://b:1, http://b:2]}\n",
        );
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "deployment green added with 100% traffic and 2 instances",
                "deployment blue removed"
            ]
        );
        let scaled = config(
            "name: e-1\nauth_mode: none\ntraffic: {blue: 100}\ndeployments:\n- {name: blue, instances: [http://a:1, http://a:2]}\n",
        );
        let lines: Vec<String> = diff(&old, &scaled)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(lines, ["instance http://a:2 added to blue"]);
    }

    #[test]
    fn setting_changes_are_listed() {
        let old = config(
            "name: e-1\nauth_mode: none\ntraffic: {blue: 100}\ndeployments:\n- {name: blue, instances: [http://a:1]}\n",
        );
        let new = config(
            "name: e-1\nauth_mode: key\nkeys_file: keys.yaml\nsticky_header: x-user-id\ntraffic: {blue: 100}\ndeployments:\n\
             - {name: blue, instances: [http://a:1], request_settings: {request_timeout_ms: 250}, readiness_probe: {path: /health}}\n",
        );
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "auth_mode none -> key",
                "keys_file - -> keys.yaml",
                "sticky_header - -> x-user-id",
                "request_settings.request_timeout_ms of blue 5000 -> 250",
                "readiness_probe of blue none -> GET /health every 10s",
            ]
        );
    }

    #[test]
    fn mirroring_changes_are_listed() {
        let old = config(
            "name: e-1\nauth_mode: none\ntraffic: {blue: 100}\ndeployments:\n- {name: blue, instances: [http://a:1]}\n",
        );
        let new = config(
            "name: e-1\nauth_mode: none\ntraffic: {blue: 100}\nmirror_traffic: {green: 10}\ndeployments:\n\
             - {name: blue, instances: [http://a:1]}\n- {name: green, instances: [http://b:1]}\n",
        );
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "deployment green added with 0% traffic and 1 instance",
                "mirrored traffic green 0% -> 10%"
            ]
        );
        let flight = config(
            "name: e-1\nauth_mode: none\ntraffic: {blue: 90, green: 10}\ndeployments:\n\
             - {name: blue, instances: [http://a:1]}\n- {name: green, instances: [http://b:1]}\n",
        );
        let lines: Vec<String> = diff(&new, &flight)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "traffic blue 100% -> 90%",
                "traffic green 0% -> 10%",
                "mirrored traffic green 10% -> 0%"
            ]
        );
    }

    #[test]
    fn identical_configs_have_no_changes() {
        let text = "name: e-1\nauth_mode: none\ntraffic: {blue: 100}\ndeployments:\n- {name: blue, instances: [http://a:1]}\n";
        assert!(diff(&config(text), &config(text)).is_empty());
    }
}
