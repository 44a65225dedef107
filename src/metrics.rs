//! Prometheus metrics: one registry of the gateway's own, metric names in one place, labels only
//! from config names and small closed sets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::EndpointConfig;

/// Every metric name, so dashboards and tests have one place to look.
pub mod names {
    /// Requests answered, by endpoint, deployment, status code and how the deployment was
    /// chosen.
    pub const REQUESTS: &str = "switchyard_requests_total";
    /// Time from receiving a request to sending the response head, by endpoint, deployment and
    /// outcome.
    pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
    /// Time from receiving a request to the first byte of the response body, by endpoint,
    /// deployment and outcome.
    pub const FIRST_BYTE: &str = "switchyard_time_to_first_byte_seconds";
    /// Time from receiving a request to the end of the response body, by endpoint, deployment
    /// and outcome.
    pub const LAST_BYTE: &str = "switchyard_time_to_last_byte_seconds";
    /// Response bodies that ended before their end, by endpoint, deployment and the side that
    /// cut them.
    pub const BODIES_CUT: &str = "switchyard_response_bodies_cut_total";
    /// Requests in flight (until the response body ends), by endpoint and deployment.
    pub const IN_FLIGHT: &str = "switchyard_requests_in_flight";
    /// Errors the gateway answered itself, by kind.
    pub const GATEWAY_ERRORS: &str = "switchyard_gateway_errors_total";
    /// Configured percent of live traffic, by endpoint and deployment.
    pub const TRAFFIC_PERCENT: &str = "switchyard_deployment_traffic_percent";
    /// Instances configured, by endpoint and deployment.
    pub const INSTANCES: &str = "switchyard_deployment_instances";
    /// Instances ready to take traffic, by endpoint and deployment.
    pub const INSTANCES_READY: &str = "switchyard_deployment_instances_ready";
    /// Generation of the config serving now.
    pub const CONFIG_GENERATION: &str = "switchyard_config_generation";
    /// Reload attempts by result (`applied`, `rejected`, `unchanged`).
    pub const CONFIG_RELOADS: &str = "switchyard_config_reloads_total";
    /// Unix time of the last applied config.
    pub const CONFIG_APPLIED_TIME: &str = "switchyard_config_last_applied_timestamp_seconds";
    /// 1 while the file on disk is rejected and an older config serves, else 0.
    pub const CONFIG_REJECTED: &str = "switchyard_config_last_reload_rejected";
    /// Open client connections, by serving thread.
    pub const CLIENT_CONNECTIONS: &str = "switchyard_client_connections";
    /// Configured percent of live traffic copied to a deployment (`mirror_traffic`).
    pub const MIRROR_PERCENT: &str = "switchyard_deployment_mirror_traffic_percent";
    /// Copies of live requests that did not reach the mirror whole, by endpoint and deployment.
    pub const MIRRORS_ABANDONED: &str = "switchyard_mirrored_requests_abandoned_total";
    /// The step a gated rollout is at (from 1), by the deployment rolled out.
    pub const ROLLOUT_STEP: &str = "switchyard_rollout_step";
    /// 1 for the state a gated rollout is in, 0 for the others, by deployment and `state`.
    pub const ROLLOUT_STATE: &str = "switchyard_rollout_state";
    /// Decisions a gated rollout made, by deployment and `decision`.
    pub const ROLLOUT_DECISIONS: &str = "switchyard_rollout_decisions";
}

/// The `deployment` label of requests that never reached a deployment. Deployment names are
/// letters, digits and dashes, so this can never be one.
pub const NO_DEPLOYMENT: &str = "(none)";

/// Buckets from 1 ms to 60 s: model latency spans fast tabular models to slow generative ones.
pub const DURATION_BUCKETS: [f64; 16] = [
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

/// What an answer says about the deployment, as the `outcome` label: the one definition of an
/// error that `show`, the metrics and a canary judge share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 1xx, 2xx and 3xx.
    Success,
    /// 4xx other than 408 and 429: the request was at fault, not the deployment.
    ClientError,
    /// 5xx, and the 408 and 429 that say a model is too slow or overloaded.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Success, Outcome::ClientError, Outcome::Error];

    /// The outcome of an answer with `status`.
    pub fn of(status: http::StatusCode) -> Outcome {
        let code = status.as_u16();
        if code >= 500 || code == 408 || code == 429 {
            Outcome::Error
        } else if code >= 400 {
            Outcome::ClientError
        } else {
            Outcome::Success
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which side ended a response body before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutBy {
    /// The client went away (or stopped reading) before the body was sent.
    Client,
    /// The instance failed mid-body: it closed the connection, reset the stream or broke the
    /// framing.
    Instance,
}

impl CutBy {
    const ALL: [CutBy; 2] = [CutBy::Client, CutBy::Instance];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CutBy::Client => "client",
            CutBy::Instance => "instance",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: Arc<Families>,
    gateway_errors: IntCounterVec,
    traffic_percent: IntGaugeVec,
    mirror_percent: IntGaugeVec,
    instances: IntGaugeVec,
    instances_ready: IntGaugeVec,
    generation: IntGauge,
    reloads_applied: IntCounter,
    reloads_rejected: IntCounter,
    reloads_unchanged: IntCounter,
    applied_time: Gauge,
    rejected: IntGauge,
    client_connections: IntGaugeVec,
    rollout_step: IntGaugeVec,
    rollout_state: IntGaugeVec,
    rollout_decisions: IntGaugeVec,
    /// The name of the endpoint serving now, for the requests no deployment took.
    endpoint: Mutex<Arc<str>>,
    /// Per-deployment counts over the last minute, for `show`.
    recent: Mutex<VecDeque<(Instant, HashMap<String, RequestCounts>)>>,
}

/// The families whose series belong to one deployment, and the deployments that have them.
#[derive(Debug)]
struct Families {
    requests: IntCounterVec,
    head: HistogramVec,
    first_byte: HistogramVec,
    last_byte: HistogramVec,
    cut: IntCounterVec,
    in_flight: IntGaugeVec,
    mirrors_abandoned: IntCounterVec,
    /// The series of each (endpoint, deployment) that something still holds.
    live: Mutex<HashMap<SeriesKey, Weak<DeploymentSeries>>>,
}

/// (endpoint, deployment): whose series they are.
type SeriesKey = (Arc<str>, Arc<str>);

/// Requests a deployment answered, for status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// All answers.
    pub answered: u64,
    /// Answers whose [`Outcome`] is an error.
    pub errors: u64,
    /// Of those, 429s: the deployment was at its limit of requests at once.
    pub refused: u64,
}

/// The metrics of one deployment, resolved once so the request path skips the label lookup.
///
/// Every handle of one endpoint's deployment shares one set of series, which exist, at 0,
/// from the moment the deployment does: a query for a deployment that has served nothing yet
/// answers 0 rather than nothing. They go once the last holder does: the tables that have the
/// deployment and the requests in flight on it.
#[derive(Debug, Clone)]
pub struct DeploymentMetrics(Arc<DeploymentSeries>);

#[derive(Debug)]
struct DeploymentSeries {
    families: Arc<Families>,
    endpoint: Arc<str>,
    name: Arc<str>,
    in_flight: IntGauge,
    /// By [`Outcome`].
    head: [Histogram; 3],
    first_byte: [Histogram; 3],
    last_byte: [Histogram; 3],
    /// By [`CutBy`].
    cut: [IntCounter; 2],
    mirrors_abandoned: IntCounter,
    /// The `200` series, weighted, pinned and sticky: nearly every answer.
    answered_ok: [IntCounter; 3],
}

// === impl Metrics ===

impl Metrics {
    /// Creates and registers every metric, plus the process collector (memory, CPU, fds).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let deployment_labels = ["endpoint", "deployment"];
        let by_outcome = ["endpoint", "deployment", "outcome"];
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
                &by_outcome,
            )
            .expect("valid metric")
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let families = Arc::new(Families {
            requests: counter(
                names::REQUESTS,
                "Requests answered, by endpoint, deployment, status code and route.",
                &["endpoint", "deployment", "code", "route"],
            ),
            head: histogram(
                names::REQUEST_DURATION,
                "Time from receiving a request to sending the response head, by outcome.",
            ),
            first_byte: histogram(
                names::FIRST_BYTE,
                "Time from receiving a request to the first byte of the response body, by \
                 outcome; answers without a body are not observed.",
            ),
            last_byte: histogram(
                names::LAST_BYTE,
                "Time from receiving a request to the end of the response body (for a stream, \
                 its whole length), by outcome.",
            ),
            cut: counter(
                names::BODIES_CUT,
                "Response bodies that ended before their end, by the side that cut them: \
                 client (went away) or instance (failed mid-body).",
                &["endpoint", "deployment", "side"],
            ),
            in_flight: gauge(
                names::IN_FLIGHT,
                "Requests in flight, until the response body ends.",
                &deployment_labels,
            ),
            mirrors_abandoned: counter(
                names::MIRRORS_ABANDONED,
                "Copies of live requests the mirror did not receive whole: the client's body \
                 failed or the live request ended before it, or the mirror fell too far behind. \
                 The client's own request is never affected.",
                &deployment_labels,
            ),
            live: Mutex::new(HashMap::new()),
        });
        let gateway_errors = counter(
            names::GATEWAY_ERRORS,
            "Errors the gateway answered itself, by kind.",
            &["kind"],
        );
        let traffic_percent = gauge(
            names::TRAFFIC_PERCENT,
            "Configured percent of live traffic.",
            &deployment_labels,
        );
        let mirror_percent = gauge(
            names::MIRROR_PERCENT,
            "Configured percent of live traffic copied to the deployment; its answers are \
             discarded.",
            &deployment_labels,
        );
        let instances = gauge(
            names::INSTANCES,
            "Instances configured.",
            &deployment_labels,
        );
        let instances_ready = gauge(
            names::INSTANCES_READY,
            "Instances ready to take traffic.",
            &deployment_labels,
        );
        let generation = IntGauge::new(
            names::CONFIG_GENERATION,
            "Generation of the config serving now.",
        )
        .expect("valid metric");
        let reloads = counter(
            names::CONFIG_RELOADS,
            "Reload attempts by result: applied, rejected, or unchanged (the file was read \
             and found as applied).",
            &["result"],
        );
        let applied_time = Gauge::new(
            names::CONFIG_APPLIED_TIME,
            "Unix time of the last applied config.",
        )
        .expect("valid metric");
        let client_connections = gauge(
            names::CLIENT_CONNECTIONS,
            "Open client connections, by serving thread.",
            &["worker"],
        );
        let rollout_step = gauge(
            names::ROLLOUT_STEP,
            "The step a gated rollout is at, from 1.",
            &["deployment"],
        );
        let rollout_state = gauge(
            names::ROLLOUT_STATE,
            "1 for the state a gated rollout is in (running, paused, rolled_back, succeeded).",
            &["deployment", "state"],
        );
        let rollout_decisions = gauge(
            names::ROLLOUT_DECISIONS,
            "Decisions the gated rollout made so far, by kind.",
            &["deployment", "decision"],
        );
        let rejected = IntGauge::new(
            names::CONFIG_REJECTED,
            "1 while the file on disk is rejected and an older config serves.",
        )
        .expect("valid metric");

        for collector in [
            Box::new(families.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(families.head.clone()),
            Box::new(families.first_byte.clone()),
            Box::new(families.last_byte.clone()),
            Box::new(families.cut.clone()),
            Box::new(families.in_flight.clone()),
            Box::new(families.mirrors_abandoned.clone()),
            Box::new(gateway_errors.clone()),
            Box::new(traffic_percent.clone()),
            Box::new(mirror_percent.clone()),
            Box::new(instances.clone()),
            Box::new(instances_ready.clone()),
            Box::new(generation.clone()),
            Box::new(reloads.clone()),
            Box::new(applied_time.clone()),
            Box::new(rejected.clone()),
            Box::new(client_connections.clone()),
            Box::new(rollout_step.clone()),
            Box::new(rollout_state.clone()),
            Box::new(rollout_decisions.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }

        Metrics {
            registry,
            families,
            gateway_errors,
            traffic_percent,
            mirror_percent,
            instances,
            instances_ready,
            generation,
            reloads_applied: reloads.with_label_values(&["applied"]),
            reloads_rejected: reloads.with_label_values(&["rejected"]),
            reloads_unchanged: reloads.with_label_values(&["unchanged"]),
            applied_time,
            rejected,
            client_connections,
            rollout_step,
            rollout_state,
            rollout_decisions,
            endpoint: Mutex::new(Arc::from("")),
            recent: Mutex::new(VecDeque::from([(Instant::now(), HashMap::new())])),
        }
    }

    /// The open-connections gauge of serving thread `worker`.
    pub fn client_connections(&self, worker: usize) -> IntGauge {
        self.client_connections
            .with_label_values(&[worker.to_string().as_str()])
    }

    /// The handles for the per-request metrics of deployment `name` of `endpoint`, shared with
    /// every other holder of the same pair.
    pub fn deployment(&self, endpoint: &str, name: &str) -> DeploymentMetrics {
        let mut live = lock(&self.families.live);
        let key = (Arc::from(endpoint), Arc::from(name));
        if let Some(series) = live.get(&key).and_then(Weak::upgrade) {
            return DeploymentMetrics(series);
        }
        let series = Arc::new(DeploymentSeries::new(
            Arc::clone(&self.families),
            Arc::clone(&key.0),
            Arc::clone(&key.1),
        ));
        live.insert(key, Arc::downgrade(&series));
        DeploymentMetrics(series)
    }

    /// Counts one request that no deployment took (unauthorized, unknown pin, no weight).
    pub fn count_unrouted(&self, status: http::StatusCode) {
        let endpoint = Arc::clone(&lock(&self.endpoint));
        self.families
            .requests
            .with_label_values(&[
                &*endpoint,
                NO_DEPLOYMENT,
                status.as_str(),
                RouteLabel::Unrouted.as_str(),
            ])
            .inc();
    }

    /// Counts one error the gateway answered itself.
    pub fn count_gateway_error(&self, kind: &'static str) {
        self.gateway_errors.with_label_values(&[kind]).inc();
    }

    /// The counter of errors the gateway answered itself, by kind, for the serve loop: it
    /// answers malformed request heads before any handler sees them.
    pub fn gateway_errors(&self) -> IntCounterVec {
        self.gateway_errors.clone()
    }

    /// Requests answered so far per deployment name, any route, read in one pass.
    pub fn request_counts(&self) -> HashMap<String, RequestCounts> {
        let mut counts: HashMap<String, RequestCounts> = HashMap::new();
        for family in self.families.requests.collect() {
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
                if deployment == NO_DEPLOYMENT {
                    continue;
                }
                let value = metric.get_counter().get_value() as u64;
                let entry = counts.entry(deployment.to_string()).or_default();
                entry.answered += value;
                let error = code
                    .parse()
                    .ok()
                    .and_then(|code| http::StatusCode::from_u16(code).ok())
                    .is_some_and(|status| Outcome::of(status) == Outcome::Error);
                if error {
                    entry.errors += value;
                }
                if code == "429" {
                    entry.refused += value;
                }
            }
        }
        counts
    }

    /// Takes a sample of [`Metrics::request_counts`] for [`Metrics::recent_counts`]; called
    /// every few seconds.
    pub fn sample_recent(&self) {
        let now = Instant::now();
        let counts = self.request_counts();
        let mut recent = lock(&self.recent);
        recent.push_back((now, counts));
        // Keep one sample at least RECENT_WINDOW old, to measure the whole window from.
        while recent
            .get(1)
            .is_some_and(|(taken, _)| now.duration_since(*taken) >= RECENT_WINDOW)
        {
            recent.pop_front();
        }
    }

    /// Requests answered per deployment since the oldest sample in the last minute, and how
    /// long ago that was.
    pub fn recent_counts(&self) -> (Duration, HashMap<String, RequestCounts>) {
        let now = Instant::now();
        let counts = self.request_counts();
        let recent = lock(&self.recent);
        let Some((taken, then)) = recent
            .iter()
            .find(|(taken, _)| now.duration_since(*taken) <= RECENT_WINDOW)
            .or(recent.back())
        else {
            return (Duration::ZERO, HashMap::new());
        };
        let window = now.duration_since(*taken);
        let counts = counts
            .into_iter()
            .map(|(name, now)| {
                let before = then.get(&name).copied().unwrap_or_default();
                let delta = RequestCounts {
                    answered: now.answered.saturating_sub(before.answered),
                    errors: now.errors.saturating_sub(before.errors),
                    refused: now.refused.saturating_sub(before.refused),
                };
                (name, delta)
            })
            .collect();
        (window, counts)
    }

    /// Publishes what a newly applied config sets, dropping deployments it no longer has.
    /// `instances` holds each deployment's instance count, in the config's order. Their request
    /// series go once their last request in flight ends.
    pub fn config_applied(
        &self,
        config: &EndpointConfig,
        instances: &[usize],
        generation: u64,
        previous: Option<&EndpointConfig>,
    ) {
        let endpoint = config.name.as_str();
        if let Some(previous) = previous {
            let old_endpoint = previous.name.as_str();
            for old in &previous.deployments {
                let kept = old_endpoint == endpoint
                    && config.deployments.iter().any(|new| new.name == old.name);
                if !kept {
                    let labels = [old_endpoint, old.name.as_str()];
                    let _ = self.traffic_percent.remove_label_values(&labels);
                    let _ = self.mirror_percent.remove_label_values(&labels);
                    let _ = self.instances.remove_label_values(&labels);
                    let _ = self.instances_ready.remove_label_values(&labels);
                }
            }
        }
        *lock(&self.endpoint) = Arc::from(endpoint);
        for (deployment, &count) in config.deployments.iter().zip(instances) {
            let labels = [endpoint, deployment.name.as_str()];
            self.traffic_percent
                .with_label_values(&labels)
                .set(i64::from(deployment.traffic));
            self.mirror_percent
                .with_label_values(&labels)
                .set(i64::from(deployment.mirror));
            self.instances.with_label_values(&labels).set(count as i64);
            self.instances_ready
                .with_label_values(&labels)
                .set(count as i64);
        }
        self.generation.set(generation as i64);
        self.applied_time.set(unix_seconds(SystemTime::now()));
        self.rejected.set(0);
        if generation > 1 {
            self.reloads_applied.inc();
        }
    }

    /// Publishes how many of a deployment's instances take traffic now.
    pub fn set_ready_instances(&self, endpoint: &str, deployment: &str, ready: usize) {
        self.instances_ready
            .with_label_values(&[endpoint, deployment])
            .set(ready as i64);
    }

    /// Publishes where a gated rollout stands; `None` clears it.
    pub fn set_rollout(&self, rollout: Option<RolloutGauges<'_>>) {
        self.rollout_step.reset();
        self.rollout_state.reset();
        self.rollout_decisions.reset();
        let Some(RolloutGauges {
            deployment,
            step,
            state,
            states,
            decisions,
        }) = rollout
        else {
            return;
        };
        self.rollout_step
            .with_label_values(&[deployment])
            .set(step as i64);
        for each in states {
            self.rollout_state
                .with_label_values(&[deployment, each])
                .set(i64::from(*each == state));
        }
        for (decision, count) in decisions {
            self.rollout_decisions
                .with_label_values(&[deployment, decision])
                .set(*count as i64);
        }
    }

    /// Records a check that found the applied files unchanged: whatever was rejected before
    /// is no longer on disk.
    pub fn reload_unchanged(&self) {
        self.reloads_unchanged.inc();
        self.rejected.set(0);
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

/// Where a gated rollout stands, for [`Metrics::set_rollout`].
#[derive(Debug, Clone, Copy)]
pub struct RolloutGauges<'a> {
    /// The deployment rolled out.
    pub deployment: &'a str,
    /// Its step, from 1.
    pub step: usize,
    /// The state it is in, one of `states`.
    pub state: &'a str,
    /// Every state there is, so the others read 0.
    pub states: &'a [&'a str],
    /// Its decisions so far, by kind.
    pub decisions: &'a BTreeMap<String, u64>,
}

/// How far back `show`'s rates look.
pub const RECENT_WINDOW: Duration = Duration::from_secs(60);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// === impl DeploymentMetrics ===

impl DeploymentMetrics {
    /// The endpoint the series are labelled with.
    pub fn endpoint(&self) -> &str {
        &self.0.endpoint
    }

    /// Marks a request in flight.
    pub fn start(&self) {
        self.0.in_flight.inc();
    }

    /// Marks a request no longer in flight.
    pub fn finish(&self) {
        self.0.in_flight.dec();
    }

    /// Records how long the response head took.
    pub fn observe_head(&self, elapsed: Duration, status: http::StatusCode) {
        self.0.head[Outcome::of(status).index()].observe(elapsed.as_secs_f64());
    }

    /// Records how long the first byte of the response body took.
    pub fn observe_first_byte(&self, elapsed: Duration, status: http::StatusCode) {
        self.0.first_byte[Outcome::of(status).index()].observe(elapsed.as_secs_f64());
    }

    /// Records how long the whole response took, to the end of its body.
    pub fn observe_last_byte(&self, elapsed: Duration, status: http::StatusCode) {
        self.0.last_byte[Outcome::of(status).index()].observe(elapsed.as_secs_f64());
    }

    /// Counts a response body that ended early.
    pub fn count_cut(&self, by: CutBy) {
        self.0.cut[by.index()].inc();
    }

    /// Counts one copy of a request that did not reach this mirror whole.
    pub fn count_mirror_abandoned(&self) {
        self.0.mirrors_abandoned.inc();
    }

    /// Counts one answered request of this deployment.
    pub fn count(&self, status: http::StatusCode, route: RouteLabel) {
        let series = &self.0;
        let slot = match (status, route) {
            (http::StatusCode::OK, RouteLabel::Weighted) => Some(0),
            (http::StatusCode::OK, RouteLabel::Pinned) => Some(1),
            (http::StatusCode::OK, RouteLabel::Sticky) => Some(2),
            _ => None,
        };
        match slot {
            Some(slot) => series.answered_ok[slot].inc(),
            None => series
                .families
                .requests
                .with_label_values(&[
                    &*series.endpoint,
                    &*series.name,
                    status.as_str(),
                    route.as_str(),
                ])
                .inc(),
        }
    }
}

// === impl DeploymentSeries ===

impl DeploymentSeries {
    fn new(families: Arc<Families>, endpoint: Arc<str>, name: Arc<str>) -> Self {
        let pair = [&*endpoint, &*name];
        let by_outcome = |vec: &HistogramVec| {
            Outcome::ALL
                .map(|outcome| vec.with_label_values(&[&*endpoint, &*name, outcome.as_str()]))
        };
        let ok = |route: RouteLabel| {
            families
                .requests
                .with_label_values(&[&*endpoint, &*name, "200", route.as_str()])
        };
        DeploymentSeries {
            in_flight: families.in_flight.with_label_values(&pair),
            head: by_outcome(&families.head),
            first_byte: by_outcome(&families.first_byte),
            last_byte: by_outcome(&families.last_byte),
            cut: CutBy::ALL.map(|by| {
                families
                    .cut
                    .with_label_values(&[&*endpoint, &*name, by.as_str()])
            }),
            mirrors_abandoned: families.mirrors_abandoned.with_label_values(&pair),
            answered_ok: [
                ok(RouteLabel::Weighted),
                ok(RouteLabel::Pinned),
                ok(RouteLabel::Sticky),
            ],
            families,
            endpoint,
            name,
        }
    }
}

impl Drop for DeploymentSeries {
    fn drop(&mut self) {
        let mut live = lock(&self.families.live);
        let key = (Arc::clone(&self.endpoint), Arc::clone(&self.name));
        // A deployment of the same name made while this one was going shares the series:
        // they stay for it.
        if live.get(&key).is_some_and(|other| other.strong_count() > 0) {
            return;
        }
        live.remove(&key);
        let families = &self.families;
        let (endpoint, name) = (&*self.endpoint, &*self.name);
        remove_series(&families.requests, endpoint, name);
        remove_series(&families.head, endpoint, name);
        remove_series(&families.first_byte, endpoint, name);
        remove_series(&families.last_byte, endpoint, name);
        remove_series(&families.cut, endpoint, name);
        remove_series(&families.in_flight, endpoint, name);
        remove_series(&families.mirrors_abandoned, endpoint, name);
    }
}

/// Removes every series of `vec` labelled with `endpoint` and `deployment`.
fn remove_series<T: MetricVecBuilder>(vec: &MetricVec<T>, endpoint: &str, deployment: &str) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels.get("endpoint") == Some(&endpoint)
                && labels.get("deployment") == Some(&deployment)
            {
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// Seconds since the Unix epoch, as a float.
fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn outcomes_put_overload_and_timeouts_with_the_errors() {
        let outcome = |code| Outcome::of(StatusCode::from_u16(code).expect("status"));
        assert_eq!(outcome(200), Outcome::Success);
        assert_eq!(outcome(304), Outcome::Success);
        assert_eq!(outcome(404), Outcome::ClientError);
        assert_eq!(outcome(408), Outcome::Error);
        assert_eq!(outcome(429), Outcome::Error);
        assert_eq!(outcome(503), Outcome::Error);
    }

    #[test]
    fn recent_counts_cover_only_what_came_after_the_window_began() {
        let metrics = Metrics::new();
        let green = metrics.deployment("e", "green");
        for _ in 0..100 {
            green.count(StatusCode::OK, RouteLabel::Weighted);
        }
        // A sample now stands for the start of the window...
        {
            let mut recent = lock(&metrics.recent);
            recent.clear();
        }
        metrics.sample_recent();
        // ... so only what follows it is recent.
        for _ in 0..3 {
            green.count(StatusCode::INTERNAL_SERVER_ERROR, RouteLabel::Weighted);
        }
        green.count(StatusCode::TOO_MANY_REQUESTS, RouteLabel::Weighted);
        let (window, recent) = metrics.recent_counts();
        assert!(window < RECENT_WINDOW);
        assert_eq!(
            recent["green"],
            RequestCounts {
                answered: 4,
                errors: 4,
                refused: 1,
            }
        );
        assert_eq!(
            metrics.request_counts()["green"],
            RequestCounts {
                answered: 104,
                errors: 4,
                refused: 1,
            }
        );
    }

    #[test]
    fn samples_older_than_the_window_are_let_go_but_one_to_measure_from() {
        let metrics = Metrics::new();
        let old = Instant::now() - 3 * RECENT_WINDOW;
        {
            let mut recent = lock(&metrics.recent);
            recent.clear();
            recent.push_back((old, HashMap::new()));
            recent.push_back((old + RECENT_WINDOW, HashMap::new()));
        }
        metrics.sample_recent();
        let recent = lock(&metrics.recent);
        assert_eq!(
            recent.len(),
            2,
            "the newest old sample and the one just taken"
        );
        assert_eq!(recent[0].0, old + RECENT_WINDOW);
    }
}
