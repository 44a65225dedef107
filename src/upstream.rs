//! Deployments and their instances: where a routed request actually goes.
//!
//! A [`Deployment`] outlives routing tables: when a reload leaves a deployment's instances and
//! model alone, the new table holds the very same `Arc<Deployment>`, so its balancing state and
//! in-flight counts carry over. The weighted split lives in the table, not here, which is why a
//! traffic change never rebuilds a deployment.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderValue;

use crate::config::{DeploymentConfig, InstanceAddr};
use crate::metrics::{DeploymentMetrics, Metrics};

/// One deployment of the model: a name, the model it serves, and its instances.
#[derive(Debug)]
pub struct Deployment {
    name: Box<str>,
    /// `name` as a ready-made response header value.
    header_value: HeaderValue,
    model: Box<str>,
    instances: Box<[Arc<Instance>]>,
    next_instance: AtomicUsize,
    metrics: DeploymentMetrics,
}

/// One model server process of a deployment.
#[derive(Debug)]
pub struct Instance {
    addr: InstanceAddr,
    in_flight: AtomicUsize,
}

/// A request sent to one instance of a deployment. Counted as in flight, on the instance and in
/// the metrics, until dropped; holding it keeps the deployment alive even after a reload has
/// removed it from the table.
#[derive(Debug)]
pub struct InFlight {
    deployment: Arc<Deployment>,
    instance: usize,
}

// === impl Deployment ===

impl Deployment {
    /// Builds the deployment for `config`, reusing `previous` whole when nothing that matters to
    /// it changed, and reusing each unchanged instance otherwise.
    pub fn build(
        config: &DeploymentConfig,
        previous: Option<&Arc<Deployment>>,
        metrics: &Metrics,
    ) -> Arc<Deployment> {
        if let Some(previous) = previous {
            let same_instances = previous.instances.len() == config.instances.len()
                && previous
                    .instances
                    .iter()
                    .zip(&config.instances)
                    .all(|(old, new)| old.addr == *new);
            if same_instances && *previous.model == *config.model {
                return Arc::clone(previous);
            }
        }
        let instances = config
            .instances
            .iter()
            .map(|addr| {
                previous
                    .and_then(|p| p.instances.iter().find(|i| i.addr == *addr))
                    .map_or_else(|| Arc::new(Instance::new(addr.clone())), Arc::clone)
            })
            .collect();
        Arc::new(Deployment {
            name: config.name.as_str().into(),
            // Validation allows only letters, digits and dashes, all valid in a header value.
            header_value: HeaderValue::from_str(&config.name)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            model: config.model.as_str().into(),
            instances,
            next_instance: AtomicUsize::new(0),
            metrics: metrics.deployment(&config.name),
        })
    }

    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The deployment's name as a header value, for `azureml-model-deployment`.
    pub fn header_value(&self) -> &HeaderValue {
        &self.header_value
    }

    /// The model it serves, as the config wrote it.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Its instances, in config order.
    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// Requests currently in flight across all instances.
    pub fn in_flight(&self) -> usize {
        self.instances.iter().map(|i| i.in_flight()).sum()
    }

    /// The next instance in round-robin order. Validation guarantees at least one.
    pub fn pick_instance(&self) -> &Instance {
        &self.instances[self.next_index()]
    }

    /// Picks the next instance and counts a request in flight on it until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        let instance = self.next_index();
        self.instances[instance]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        self.metrics.start();
        InFlight {
            deployment: Arc::clone(self),
            instance,
        }
    }

    /// Per-request metric handles.
    pub fn metrics(&self) -> &DeploymentMetrics {
        &self.metrics
    }

    fn next_index(&self) -> usize {
        self.next_instance.fetch_add(1, Ordering::Relaxed) % self.instances.len()
    }
}

// === impl Instance ===

impl Instance {
    fn new(addr: InstanceAddr) -> Self {
        Instance {
            addr,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Where the instance listens.
    pub fn addr(&self) -> &InstanceAddr {
        &self.addr
    }

    /// Requests currently sent to this instance and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

// === impl InFlight ===

impl InFlight {
    /// The deployment the request went to.
    pub fn deployment(&self) -> &Arc<Deployment> {
        &self.deployment
    }

    /// The instance the request went to.
    pub fn instance(&self) -> &Instance {
        &self.deployment.instances[self.instance]
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.instance().in_flight.fetch_sub(1, Ordering::Relaxed);
        self.deployment.metrics.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointConfig;

    fn build(config: &DeploymentConfig, previous: Option<&Arc<Deployment>>) -> Arc<Deployment> {
        Deployment::build(config, previous, &Metrics::new())
    }

    fn deployment(instances: &str, model: &str) -> DeploymentConfig {
        let text = format!(
            "name: e-1\ntraffic: {{blue: 100}}\ndeployments:\n  - name: blue\n    model: {model}\n    instances: [{instances}]\n"
        );
        EndpointConfig::parse(&text)
            .expect("valid")
            .deployments
            .remove(0)
    }

    #[test]
    fn round_robin_visits_every_instance_in_turn() {
        let blue = build(&deployment("http://a:1, http://b:2, http://c:3", "m"), None);
        let picked: Vec<String> = (0..6)
            .map(|_| blue.pick_instance().addr().authority.to_string())
            .collect();
        assert_eq!(picked, ["a:1", "b:2", "c:3", "a:1", "b:2", "c:3"]);
    }

    #[test]
    fn an_unchanged_deployment_is_reused_whole() {
        let old = build(&deployment("http://a:1", "m"), None);
        let new = build(&deployment("http://a:1", "m"), Some(&old));
        assert!(Arc::ptr_eq(&old, &new));
    }

    #[test]
    fn scaling_keeps_the_existing_instances() {
        let old = build(&deployment("http://a:1", "m"), None);
        let _busy = old.start_request();
        let new = build(&deployment("http://a:1, http://b:2", "m"), Some(&old));
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(Arc::ptr_eq(&old.instances()[0], &new.instances()[0]));
        assert_eq!(new.in_flight(), 1, "in-flight count carries over");
    }

    #[test]
    fn a_new_model_builds_a_new_deployment() {
        let old = build(&deployment("http://a:1", "m"), None);
        let new = build(&deployment("http://a:1", "model-2"), Some(&old));
        assert!(!Arc::ptr_eq(&old, &new));
        assert_eq!(new.model(), "model-2");
    }

    #[test]
    fn the_in_flight_guard_counts_down_on_drop() {
        let blue = build(&deployment("http://a:1", "m"), None);
        let guard = blue.start_request();
        assert_eq!(blue.in_flight(), 1);
        drop(guard);
        assert_eq!(blue.in_flight(), 0);
    }
}
