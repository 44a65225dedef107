//! Deployments and their instances: where a routed request actually goes, and whether it may go
//! there now.
//!
//! A [`Deployment`] outlives routing tables: when a reload leaves a deployment's instances, model
//! and settings alone, the new table holds the very same `Arc<Deployment>`, so its balancing
//! state, health and in-flight counts carry over. The weighted split lives in the table, not
//! here, which is why a traffic change never rebuilds a deployment.
//!
//! Inside a deployment, requests are balanced by the power of two choices: two random available
//! instances, the one with the lower load wins, where load is requests outstanding times a factor
//! that grows with the instance's recent error rate.

pub mod connect;
pub mod health;
pub mod probe;
pub mod resolve;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::HeaderValue;
use http::uri::Authority;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{
    EndpointConfig,
    DeploymentConfig, InstanceAddr, ReadinessProbe, RequestSettings, UpstreamProtocol,
};
use crate::http1;
use crate::metrics::{DeploymentMetrics, Metrics};
use health::{Health, Outcome};
use probe::Prober;
use resolve::Resolved;

/// Most idle connections kept per instance.
const MAX_IDLE_CONNECTIONS: usize = 1024;

/// One deployment of the model: a name, the model it serves, its settings and instances.
#[derive(Debug)]
pub struct Deployment {
    name: Box<str>,
    /// `name` as a ready-made response header value.
    header_value: HeaderValue,
    model: Box<str>,
    settings: RequestSettings,
    probe: Option<ReadinessProbe>,
    protocol: UpstreamProtocol,
    instances: Box<[Arc<Instance>]>,
    /// Requests admitted and not finished: waiting for an instance or in flight.
    pending: AtomicUsize,
    metrics: DeploymentMetrics,
}

/// One model server process of a deployment.
#[derive(Debug)]
pub struct Instance {
    /// The URL in the config.
    addr: InstanceAddr,
    /// Where to connect: the config's authority, or one address its host name resolved to.
    target: Authority,
    /// Requests assigned to this instance and not finished, waiting included.
    in_flight: AtomicUsize,
    /// One permit per request the instance may serve at once.
    permits: Arc<Semaphore>,
    health: Health,
    /// Idle HTTP/1.1 connections to it; shared with the sending of a request's rest after an
    /// early answer, which gives its connection back.
    pool: Arc<http1::Pool>,
    /// Its readiness probe was started.
    probing: AtomicBool,
}

/// Why a deployment would not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// More than 2 x max_concurrent_requests_per_instance x instances are pending (Azure's rule).
    Overloaded,
    /// Every instance is unready or ejected.
    NoReadyInstance,
    /// No instance became free within max_queue_wait_ms.
    QueueTimeout,
}

/// A request assigned to one instance of a deployment. Counted as pending and in flight until
/// dropped; holding it keeps the deployment alive even after a reload has removed it from the
/// table. Holds the instance's concurrency permit once [`InFlight::wait_turn`] has it.
#[derive(Debug)]
pub struct InFlight {
    deployment: Arc<Deployment>,
    instance: usize,
    permit: Option<OwnedSemaphorePermit>,
}

// === impl Deployment ===

impl Deployment {
    /// The deployments of `config`, in config order, each built by [`Deployment::build`] from
    /// the deployment of the same name in `previous` (the ones serving until now), if any.
    pub fn build_all(
        config: &EndpointConfig,
        previous: &[Arc<Deployment>],
        metrics: &Metrics,
        resolved: &Resolved,
    ) -> Box<[Arc<Deployment>]> {
        config
            .deployments
            .iter()
            .map(|deployment| {
                let before = previous.iter().find(|d| d.name() == deployment.name);
                Deployment::build(&config.name, deployment, before, metrics, resolved)
            })
            .collect()
    }

    /// Builds deployment `config` of `endpoint`, reusing `previous` whole when nothing that
    /// matters to it changed, and reusing each unchanged instance otherwise.
    pub fn build(
        endpoint: &str,
        config: &DeploymentConfig,
        previous: Option<&Arc<Deployment>>,
        metrics: &Metrics,
        resolved: &Resolved,
    ) -> Arc<Deployment> {
        // Each configured URL is one instance, or one per address its host name resolved to.
        let wanted: Vec<(&InstanceAddr, Authority)> = config
            .instances
            .iter()
            .flat_map(|addr| match resolved.addresses(addr) {
                Some(addresses) => addresses
                    .iter()
                    .filter_map(|a| Authority::try_from(a.to_string().as_str()).ok())
                    .map(|target| (addr, target))
                    .collect::<Vec<_>>(),
                None => vec![(addr, addr.authority.clone())],
            })
            .collect();
        // Instances carry the settings' semaphore and probe, so they are only reusable while
        // those stay the same.
        let reusable = previous.filter(|p| {
            p.settings == config.request_settings
                && p.probe == config.readiness_probe
                && p.protocol == config.protocol
        });
        if let Some(previous) = reusable {
            let same_instances = previous.instances.len() == wanted.len()
                && previous
                    .instances
                    .iter()
                    .zip(&wanted)
                    .all(|(old, (addr, target))| old.addr == **addr && old.target == *target);
            // Its metrics are labelled with the endpoint's name, so a renamed endpoint needs
            // new ones.
            let same_endpoint = previous.metrics.endpoint() == endpoint;
            if same_instances && same_endpoint && *previous.model == *config.model {
                return Arc::clone(previous);
            }
        }
        let instances = wanted
            .into_iter()
            .map(|(addr, target)| {
                reusable
                    .and_then(|p| {
                        p.instances
                            .iter()
                            .find(|i| i.addr == *addr && i.target == target)
                    })
                    .map_or_else(
                        || Instance::start(addr.clone(), target.clone(), config),
                        Arc::clone,
                    )
            })
            .collect();
        Arc::new(Deployment {
            name: config.name.as_str().into(),
            // Validation allows only letters, digits and dashes, all valid in a header value.
            header_value: HeaderValue::from_str(&config.name)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            model: config.model.as_str().into(),
            settings: config.request_settings,
            probe: config.readiness_probe.clone(),
            protocol: config.protocol,
            instances,
            pending: AtomicUsize::new(0),
            metrics: metrics.deployment(endpoint, &config.name),
        })
    }

    /// Starts the readiness probes of instances that have none running yet.
    pub fn start_probes(&self, prober: &Arc<Prober>) {
        let Some(probe) = &self.probe else { return };
        for instance in self.instances.iter() {
            if !instance.probing.swap(true, Ordering::Relaxed) {
                prober.spawn(instance, probe.clone(), self.protocol);
            }
        }
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

    /// Its request settings.
    pub fn settings(&self) -> &RequestSettings {
        &self.settings
    }

    /// The HTTP version its instances speak.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// Its instances, in config order.
    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// Requests currently assigned to its instances.
    pub fn in_flight(&self) -> usize {
        self.instances.iter().map(|i| i.in_flight()).sum()
    }

    /// Instances that take traffic now.
    pub fn available_instances(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.health.is_available())
            .count()
    }

    /// Per-request metric handles.
    pub fn metrics(&self) -> &DeploymentMetrics {
        &self.metrics
    }

    /// Admits a request and assigns it to an instance, other than `exclude` if given.
    pub fn admit(
        self: &Arc<Self>,
        rng: &mut impl Rng,
        exclude: Option<usize>,
    ) -> Result<InFlight, Refusal> {
        let limit =
            2 * self.settings.max_concurrent_requests_per_instance as usize * self.instances.len();
        if self.pending.fetch_add(1, Ordering::Relaxed) >= limit {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Overloaded);
        }
        let Some(instance) = self.select(rng, exclude) else {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::NoReadyInstance);
        };
        self.instances[instance]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        self.metrics.start();
        Ok(InFlight {
            deployment: Arc::clone(self),
            instance,
            permit: None,
        })
    }

    /// Power of two choices among available instances; `None` if none is available.
    pub fn select(&self, rng: &mut impl Rng, exclude: Option<usize>) -> Option<usize> {
        let count = self.instances.len();
        let usable = |i: usize| Some(i) != exclude && self.instances[i].health.is_available();
        if count == 1 {
            return usable(0).then_some(0);
        }
        let first = rng.random_range(0..count);
        let mut second = rng.random_range(0..count - 1);
        if second >= first {
            second += 1;
        }
        match (usable(first), usable(second)) {
            (true, true) => {
                let load = |i: usize| self.instances[i].load();
                Some(if load(second) < load(first) {
                    second
                } else {
                    first
                })
            }
            (true, false) => Some(first),
            (false, true) => Some(second),
            // Both picks are out: fall back to the first usable one after a random start.
            (false, false) => (0..count).map(|k| (first + k) % count).find(|&i| usable(i)),
        }
    }
}

// === impl Instance ===

impl Instance {
    fn start(addr: InstanceAddr, target: Authority, config: &DeploymentConfig) -> Arc<Instance> {
        let permits = config.request_settings.max_concurrent_requests_per_instance as usize;
        let health = Health::new(
            config.readiness_probe.is_some(),
            &config.name,
            &describe(&addr, &target),
        );
        Arc::new(Instance {
            addr,
            target,
            in_flight: AtomicUsize::new(0),
            permits: Arc::new(Semaphore::new(permits)),
            health,
            // More idle connections than requests allowed at once would never be used.
            pool: Arc::new(http1::Pool::new(permits.min(MAX_IDLE_CONNECTIONS))),
            probing: AtomicBool::new(false),
        })
    }

    /// The instance's URL as the config gives it.
    pub fn addr(&self) -> &InstanceAddr {
        &self.addr
    }

    /// The `host:port` connected to: the URL's own, or one address its host name resolved to.
    pub fn target(&self) -> &Authority {
        &self.target
    }

    /// Whether `target` is a resolved address rather than the URL's own authority.
    pub fn is_resolved(&self) -> bool {
        self.target != self.addr.authority
    }

    /// The URL, with the address connected to when it differs.
    pub fn describe(&self) -> String {
        describe(&self.addr, &self.target)
    }

    /// Requests assigned to this instance and not finished, waiting ones included.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Its health state.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Its idle HTTP/1.1 connections.
    pub(crate) fn pool(&self) -> &Arc<http1::Pool> {
        &self.pool
    }

    /// What the balancer compares: outstanding requests, weighted up by recent errors.
    fn load(&self) -> u64 {
        (self.in_flight() as u64 + 1) * self.health.load_factor_ppm()
    }
}

/// An instance's URL, with the address connected to when it differs.
fn describe(addr: &InstanceAddr, target: &Authority) -> String {
    if *target == addr.authority {
        addr.to_string()
    } else {
        format!("{addr} ({target})")
    }
}

// === impl InFlight ===

impl InFlight {
    /// The deployment the request went to.
    pub fn deployment(&self) -> &Arc<Deployment> {
        &self.deployment
    }

    /// The index of the instance in its deployment.
    pub fn instance_index(&self) -> usize {
        self.instance
    }

    /// The instance the request went to.
    pub fn instance(&self) -> &Instance {
        &self.deployment.instances[self.instance]
    }

    /// Waits, at most `max_queue_wait_ms`, until the instance may serve one more request.
    pub async fn wait_turn(&mut self) -> Result<(), Refusal> {
        let permits = Arc::clone(&self.instance().permits);
        let wait = self.deployment.settings.max_queue_wait;
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => match tokio::time::timeout(wait, permits.acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                // Timed out, or the semaphore was closed (never done here).
                _ => return Err(Refusal::QueueTimeout),
            },
        };
        self.permit = Some(permit);
        Ok(())
    }

    /// Records what the instance answered, for passive health and balancing.
    pub fn record(&self, outcome: Outcome) {
        self.instance().health.record(outcome);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.instance().in_flight.fetch_sub(1, Ordering::Relaxed);
        self.deployment.pending.fetch_sub(1, Ordering::Relaxed);
        self.deployment.metrics.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointConfig;

    fn build(config: &DeploymentConfig, previous: Option<&Arc<Deployment>>) -> Arc<Deployment> {
        Deployment::build(
            "e-1",
            config,
            previous,
            &Metrics::new(),
            &Resolved::default(),
        )
    }

    fn deployment(instances: &str, model: &str) -> DeploymentConfig {
        let text = format!(
            "name: e-1\nauth_mode: none\ntraffic: {{blue: 100}}\ndeployments:\n  - name: blue\n    model: {model}\n    instances: [{instances}]\n"
        );
        EndpointConfig::parse(&text)
            .expect("valid")
            .deployments
            .remove(0)
    }

    fn seeded() -> rand::rngs::SmallRng {
        rand::SeedableRng::seed_from_u64(11)
    }

    #[test]
    fn idle_instances_share_the_picks() {
        let blue = build(&deployment("http://a:1, http://b:2, http://c:3", "m"), None);
        let mut rng = seeded();
        let mut counts = [0; 3];
        for _ in 0..3_000 {
            counts[blue.select(&mut rng, None).expect("available")] += 1;
        }
        // Seeded, so deterministic; each gets about a third.
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        let blue = build(&deployment("http://a:1, http://b:2", "m"), None);
        blue.instances[0].in_flight.store(3, Ordering::Relaxed);
        let mut rng = seeded();
        assert!((0..100).all(|_| blue.select(&mut rng, None) == Some(1)));
    }

    #[test]
    fn fast_failures_make_an_instance_look_busier_not_idler() {
        let blue = build(&deployment("http://a:1, http://b:2", "m"), None);
        // Instance 0 answers errors quickly, so it has fewer requests outstanding ...
        blue.instances[1].in_flight.store(2, Ordering::Relaxed);
        for _ in 0..4 {
            blue.instances[0].health.record(Outcome::Failure);
        }
        // ... and still loses to the slower, healthy instance.
        let mut rng = seeded();
        assert!((0..100).all(|_| blue.select(&mut rng, None) == Some(1)));
    }

    #[test]
    fn ejected_instances_get_nothing_and_none_left_is_a_refusal() {
        let blue = build(&deployment("http://a:1, http://b:2", "m"), None);
        blue.instances[0].health.record(Outcome::ConnectFailure);
        let mut rng = seeded();
        assert!((0..100).all(|_| blue.select(&mut rng, None) == Some(1)));
        assert_eq!(
            blue.select(&mut rng, Some(1)),
            None,
            "the only other one is excluded"
        );
        blue.instances[1].health.record(Outcome::ConnectFailure);
        assert_eq!(
            blue.admit(&mut rng, None).err(),
            Some(Refusal::NoReadyInstance)
        );
        assert_eq!(
            blue.pending.load(Ordering::Relaxed),
            0,
            "a refusal leaves no count behind"
        );
    }

    #[test]
    fn more_than_twice_the_capacity_pending_is_overload() {
        // Default max_concurrent_requests_per_instance is 1: the limit is 2 x 1 x 2 instances.
        let blue = build(&deployment("http://a:1, http://b:2", "m"), None);
        let mut rng = seeded();
        let admitted: Vec<InFlight> = (0..4)
            .map(|_| blue.admit(&mut rng, None).expect("within the limit"))
            .collect();
        assert_eq!(blue.admit(&mut rng, None).err(), Some(Refusal::Overloaded));
        drop(admitted);
        assert!(blue.admit(&mut rng, None).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_cannot_start_in_time_is_refused() {
        let blue = build(&deployment("http://a:1", "m"), None);
        let mut rng = seeded();
        let mut first = blue.admit(&mut rng, None).expect("admitted");
        first.wait_turn().await.expect("the instance is free");
        let mut second = blue.admit(&mut rng, None).expect("admitted");
        assert_eq!(second.wait_turn().await, Err(Refusal::QueueTimeout));
        drop(first);
        let mut third = blue.admit(&mut rng, None).expect("admitted");
        assert_eq!(third.wait_turn().await, Ok(()));
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
        let _busy = old.admit(&mut rand::rng(), None).expect("admitted");
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
        let guard = blue.admit(&mut rand::rng(), None).expect("admitted");
        assert_eq!(blue.in_flight(), 1);
        drop(guard);
        assert_eq!(blue.in_flight(), 0);
    }
}
