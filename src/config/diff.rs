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
    /// A deployment now serves another model.
    Model {
        /// The deployment.
        name: String,
        /// Old model.
        from: String,
        /// New model.
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
    for deployment in &new.deployments {
        match old.deployments.iter().find(|d| d.name == deployment.name) {
            None => changes.push(Change::DeploymentAdded {
                name: deployment.name.clone(),
                traffic: deployment.traffic,
                instances: deployment.instances.len(),
            }),
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
    if old.model != new.model {
        changes.push(Change::Model {
            name: name.clone(),
            from: old.model.clone(),
            to: new.model.clone(),
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
            Change::Model { name, from, to } => write!(f, "model of {name} {from} -> {to}"),
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
            "name: e-1\ntraffic: {blue: 100}\ndeployments:\n\
             - {name: blue, instances: [http://a:1]}\n- {name: green, instances: [http://b:1]}\n",
        );
        let new = config(
            "name: e-1\ntraffic: {blue: 90, green: 10}\ndeployments:\n\
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
            "name: e-1\ntraffic: {blue: 100}\ndeployments:\n- {name: blue, instances: [http://a:1]}\n",
        );
        let new = config(
            "name: e-1\ntraffic: {green: 100}\ndeployments:\n\
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
            "name: e-1\ntraffic: {blue: 100}\ndeployments:\n- {name: blue, instances: [http://a:1, http://a:2]}\n",
        );
        let lines: Vec<String> = diff(&old, &scaled)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(lines, ["instance http://a:2 added to blue"]);
    }

    #[test]
    fn identical_configs_have_no_changes() {
        let text = "name: e-1\ntraffic: {blue: 100}\ndeployments:\n- {name: blue, instances: [http://a:1]}\n";
        assert!(diff(&config(text), &config(text)).is_empty());
    }
}
