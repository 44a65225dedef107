//! Prometheus metrics: one registry of the gateway's own, metric names in one place, labels only
//! from config names and small closed sets.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::routing::{RouteReason, RoutingTable};

/// Every metric name, so dashboards and tests have one place to look.
pub mod names {
    /// Requests answered, by deployment, status code and how the deployment was chosen.
    pub const REQUESTS: &str = "switchyard_requests_total";
    /// Time from receiving a request to sending the response head, by deployment.
    pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
    /// Requests in flight (until the response body ends), by deployment.
    pub const IN_FLIGHT: &str = "switchyard_requests_in_flight";
    /// Errors the gateway answered itself, by kind.
    pub const GATEWAY_ERRORS: &str = "switchyard_gateway_errors_total";
    /// Configured percent of live traffic, by deployment.
    pub const TRAFFIC_PERCENT: &str = "switchyard_deployment_traffic_percent";
    /// Instances configured, by deployment.
    pub const INSTANCES: &str = "switchyard_deployment_instances";
    /// Instances ready to take traffic, by deployment.
    pub const INSTANCES_READY: &str = "switchyard_deployment_instances_ready";
    /// Generation of the config serving now.
    pub const CONFIG_GENERATION: &str = "switchyard_config_generation";
    /// Reload attempts by result (`applied`, `rejected`).
    pub const CONFIG_RELOADS: &str = "switchyard_config_reloads_total";
    /// Unix time of the last applied config.
    pub const CONFIG_APPLIED_TIME: &str = "switchyard_config_last_applied_timestamp_seconds";
    /// 1 while the file on disk is rejected and an older config serves, else 0.
    pub const CONFIG_REJECTED: &str = "switchyard_config_last_reload_rejected";
    /// Open client connections, by serving thread.
    pub const CLIENT_CONNECTIONS: &str = "switchyard_client_connections";
    /// Configured percent of live traffic copied to a deployment (`mirror_traffic`).
    pub const MIRROR_PERCENT: &str = "switchyard_deployment_mirror_traffic_percent";
    /// Copies of live requests that did not reach the mirror whole, by deployment.
    pub const MIRRORS_ABANDONED: &str = "switchyard_mirrored_requests_abandoned_total";
}

/// Label value for requests that never reached a deployment.
pub const NO_DEPLOYMENT: &str = "";

/// Buckets from 1 ms to 60 s: model latency spans fast tabular models to slow generative ones.
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// How a request was routed, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    /// Drawn by weight.
    Weighted,
    /// Named by the pin header.
    Pinned,
    /// Chosen by the value of the sticky header.
    Sticky,
    /// A copy of a weighted request, sent to the mirror deployment; its answer is discarded.
    Mirrored,
    /// Never reached a deployment.
    Unrouted,
}

impl RouteLabel {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::Weighted => "weighted",
            RouteLabel::Pinned => "pinned",
            RouteLabel::Sticky => "sticky",
            RouteLabel::Mirrored => "mirrored",
            RouteLabel::Unrouted => "unrouted",
        }
    }
}

impl From<RouteReason> for RouteLabel {
    fn from(reason: RouteReason) -> Self {
        match reason {
            RouteReason::Weighted => RouteLabel::Weighted,
            RouteReason::Pinned => RouteLabel::Pinned,
            RouteReason::Sticky => RouteLabel::Sticky,
        }
    }
}

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    gateway_errors: IntCounterVec,
    traffic_percent: IntGaugeVec,
    mirror_percent: IntGaugeVec,
    mirrors_abandoned: IntCounterVec,
    instances: IntGaugeVec,
    instances_ready: IntGaugeVec,
    generation: IntGauge,
    reloads_applied: IntCounter,
    reloads_rejected: IntCounter,
    reloads_unchanged: IntCounter,
    applied_time: Gauge,
    rejected: IntGauge,
    client_connections: IntGaugeVec,
}

/// Requests a deployment answered, for status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// All answers.
    pub answered: u64,
    /// Answers that count as errors: see [`RequestCounts::is_error`].
    pub errors: u64,
}

impl RequestCounts {
    /// 5xx, and the 408 and 429 that protect an overloaded or slow model.
    pub fn is_error(code: u16) -> bool {
        code >= 500 || code == 408 || code == 429
    }
}

/// The metrics of one deployment, resolved once so the request path skips the label lookup.
#[derive(Debug, Clone)]
pub struct DeploymentMetrics {
    name: Arc<str>,
    duration: prometheus::Histogram,
    in_flight: IntGauge,
    requests: IntCounterVec,
    /// The `200` series, weighted and pinned: nearly every answer. Made on first use, so a
    /// series that never happened does not show.
    answered_ok: [OnceLock<IntCounter>; 3],
}

// === impl Metrics ===

impl Metrics {
    /// Creates and registers every metric, plus the process collector (memory, CPU, fds).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                names::REQUESTS,
                "Requests answered, by deployment, status code and route.",
            ),
            &["deployment", "code", "route"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                names::REQUEST_DURATION,
                "Time from receiving a request to sending the response head.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["deployment"],
        )
        .expect("valid metric");
        let in_flight = IntGaugeVec::new(
            Opts::new(
                names::IN_FLIGHT,
                "Requests in flight, until the response body ends.",
            ),
            &["deployment"],
        )
        .expect("valid metric");
        let gateway_errors = IntCounterVec::new(
            Opts::new(
                names::GATEWAY_ERRORS,
                "Errors the gateway answered itself, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let traffic_percent = IntGaugeVec::new(
            Opts::new(
                names::TRAFFIC_PERCENT,
                "Configured percent of live traffic.",
            ),
            &["deployment"],
        )
        .expect("valid metric");
        let mirror_percent = IntGaugeVec::new(
            Opts::new(
                names::MIRROR_PERCENT,
                "Configured percent of live traffic copied to the deployment; its answers are \
                 discarded.",
            ),
            &["deployment"],
        )
        .expect("valid metric");
        let mirrors_abandoned = IntCounterVec::new(
            Opts::new(
                names::MIRRORS_ABANDONED,
                "Copies of live requests the mirror did not receive whole: the client's body \
                 failed or the live request ended before it, or the mirror fell too far behind. \
                 The client's own request is never affected.",
            ),
            &["deployment"],
        )
        .expect("valid metric");
        let instances = IntGaugeVec::new(
            Opts::new(names::INSTANCES, "Instances configured."),
            &["deployment"],
        )
        .expect("valid metric");
        let instances_ready = IntGaugeVec::new(
            Opts::new(names::INSTANCES_READY, "Instances ready to take traffic."),
            &["deployment"],
        )
        .expect("valid metric");
        let generation = IntGauge::new(
            names::CONFIG_GENERATION,
            "Generation of the config serving now.",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                names::CONFIG_RELOADS,
                "Reload attempts by result: applied, rejected, or unchanged (the file was read \
                 and found as applied).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let applied_time = Gauge::new(
            names::CONFIG_APPLIED_TIME,
            "Unix time of the last applied config.",
        )
        .expect("valid metric");
        let client_connections = IntGaugeVec::new(
            Opts::new(
                names::CLIENT_CONNECTIONS,
                "Open client connections, by serving thread.",
            ),
            &["worker"],
        )
        .expect("valid metric");
        let rejected = IntGauge::new(
            names::CONFIG_REJECTED,
            "1 while the file on disk is rejected and an older config serves.",
        )
        .expect("valid metric");

        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(gateway_errors.clone()),
            Box::new(traffic_percent.clone()),
            Box::new(mirror_percent.clone()),
            Box::new(mirrors_abandoned.clone()),
            Box::new(instances.clone()),
            Box::new(instances_ready.clone()),
            Box::new(generation.clone()),
            Box::new(reloads.clone()),
            Box::new(applied_time.clone()),
            Box::new(rejected.clone()),
            Box::new(client_connections.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }

        Metrics {
            registry,
            requests,
            duration,
            in_flight,
            gateway_errors,
            traffic_percent,
            mirror_percent,
            mirrors_abandoned,
            instances,
            instances_ready,
            generation,
            reloads_applied: reloads.with_label_values(&["applied"]),
            reloads_rejected: reloads.with_label_values(&["rejected"]),
            reloads_unchanged: reloads.with_label_values(&["unchanged"]),
            applied_time,
            rejected,
            client_connections,
        }
    }

    /// The open-connections gauge of serving thread `worker`.
    pub fn client_connections(&self, worker: usize) -> IntGauge {
        self.client_connections
            .with_label_values(&[worker.to_string().as_str()])
    }

    /// The handles for one deployment's per-request metrics.
    pub fn deployment(&self, name: &str) -> DeploymentMetrics {
        DeploymentMetrics {
            name: name.into(),
            duration: self.duration.with_label_values(&[name]),
            in_flight: self.in_flight.with_label_values(&[name]),
            requests: self.requests.clone(),
            answered_ok: [OnceLock::new(), OnceLock::new(), OnceLock::new()],
        }
    }

    /// Counts one answered request.
    pub fn count_request(&self, deployment: &str, status: http::StatusCode, route: RouteLabel) {
        self.requests
            .with_label_values(&[deployment, status.as_str(), route.as_str()])
            .inc();
    }

    /// Counts one error the gateway answered itself.
    pub fn count_gateway_error(&self, kind: &'static str) {
        self.gateway_errors.with_label_values(&[kind]).inc();
    }

    /// Counts one copy of a request that did not reach the mirror whole.
    pub fn count_mirror_abandoned(&self, deployment: &str) {
        self.mirrors_abandoned
            .with_label_values(&[deployment])
            .inc();
    }

    /// Requests answered so far per deployment name, any route, read in one pass.
    pub fn request_counts(&self) -> HashMap<String, RequestCounts> {
        use prometheus::core::Collector;
        let mut counts: HashMap<String, RequestCounts> = HashMap::new();
        for family in self.requests.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value())
                };
                let (Some(deployment), Some(code)) = (label("deployment"), label("code")) else {
                    continue;
                };
                let value = metric.get_counter().get_value() as u64;
                let entry = counts.entry(deployment.to_string()).or_default();
                entry.answered += value;
                if code.parse::<u16>().is_ok_and(RequestCounts::is_error) {
                    entry.errors += value;
                }
            }
        }
        counts
    }

    /// Publishes what a newly applied table configures, dropping deployments it no longer has.
    pub fn table_applied(&self, table: &RoutingTable, previous: Option<&RoutingTable>) {
        if let Some(previous) = previous {
            for old in previous.deployments() {
                if table.deployment(old.name()).is_none() {
                    let labels = [old.name()];
                    let _ = self.traffic_percent.remove_label_values(&labels);
                    let _ = self.mirror_percent.remove_label_values(&labels);
                    let _ = self.instances.remove_label_values(&labels);
                    let _ = self.instances_ready.remove_label_values(&labels);
                }
            }
        }
        for (deployment, built) in table.config().deployments.iter().zip(table.deployments()) {
            let labels = [deployment.name.as_str()];
            self.traffic_percent
                .with_label_values(&labels)
                .set(i64::from(deployment.traffic));
            self.mirror_percent
                .with_label_values(&labels)
                .set(i64::from(deployment.mirror));
            if deployment.mirror > 0 {
                // Shown at 0 from the start, so that a dashboard's rate() has a series to read.
                let _ = self.mirrors_abandoned.with_label_values(&labels);
            }
            let count = built.instances().len() as i64;
            self.instances.with_label_values(&labels).set(count);
            self.instances_ready.with_label_values(&labels).set(count);
        }
        self.generation.set(table.generation() as i64);
        self.applied_time.set(unix_seconds(SystemTime::now()));
        self.rejected.set(0);
        if table.generation() > 1 {
            self.reloads_applied.inc();
        }
    }

    /// Publishes how many of a deployment's instances take traffic now.
    pub fn set_ready_instances(&self, deployment: &str, ready: usize) {
        self.instances_ready
            .with_label_values(&[deployment])
            .set(ready as i64);
    }

    /// Records a check that found the applied files unchanged.
    pub fn reload_unchanged(&self) {
        self.reloads_unchanged.inc();
    }

    /// Records a rejected reload.
    pub fn reload_rejected(&self) {
        self.reloads_rejected.inc();
        self.rejected.set(1);
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

// === impl DeploymentMetrics ===

impl DeploymentMetrics {
    /// Marks a request in flight.
    pub fn start(&self) {
        self.in_flight.inc();
    }

    /// Marks a request no longer in flight.
    pub fn finish(&self) {
        self.in_flight.dec();
    }

    /// Records how long the response head took.
    pub fn observe(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one answered request of this deployment.
    pub fn count(&self, status: http::StatusCode, route: RouteLabel) {
        let slot = match (status, route) {
            (http::StatusCode::OK, RouteLabel::Weighted) => Some(0),
            (http::StatusCode::OK, RouteLabel::Pinned) => Some(1),
            (http::StatusCode::OK, RouteLabel::Sticky) => Some(2),
            _ => None,
        };
        let labels = [&*self.name, status.as_str(), route.as_str()];
        match slot {
            Some(slot) => self.answered_ok[slot]
                .get_or_init(|| self.requests.with_label_values(&labels))
                .inc(),
            None => self.requests.with_label_values(&labels).inc(),
        }
    }
}

/// Seconds since the Unix epoch, as a float.
fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
