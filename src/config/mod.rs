//! The endpoint file: read it, check every rule, and produce the [`EndpointConfig`] the rest of
//! the program trusts.
//!
//! Two types on purpose: [`file`] holds what serde reads, with source positions; this module's
//! types hold only what passed validation. Only the second reaches the routing table.

mod diff;
mod error;
mod file;
mod suggest;

use std::collections::{BTreeMap, HashSet};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};
use serde_saphyr::{Location, Spanned};

pub use diff::{Change, diff};
pub use error::{ConfigError, Issue};
use file::{DeploymentFile, EndpointFile, ModelFile, ProbeFile, RequestSettingsFile};
pub(crate) use suggest::closest as suggest_name;

/// The request header that pins a request to one deployment, as in Azure.
pub const PIN_HEADER: &str = "azureml-model-deployment";

/// Azure's limit on deployments per endpoint.
pub const MAX_DEPLOYMENTS: usize = 20;
/// Azure's limit on instances per deployment.
pub const MAX_INSTANCES: usize = 50;
/// Azure's limit on the share of live traffic that may be mirrored.
pub const MAX_MIRROR_PERCENT: u8 = 50;

/// A validated endpoint: its name and its deployments with their share of live traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The endpoint's name.
    pub name: String,
    /// How clients authenticate.
    pub auth_mode: AuthMode,
    /// For `auth_mode: key`: the file holding the keys, relative to the endpoint file's directory
    /// unless absolute.
    pub keys_file: Option<PathBuf>,
    /// The request header whose value keeps a user on one deployment while the split allows
    /// (`sticky_header`; lowercase).
    pub sticky_header: Option<http::HeaderName>,
    /// Deployments in file order.
    pub deployments: Vec<DeploymentConfig>,
}

/// How clients authenticate: Azure's `key` mode, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `key`, Azure's default: `Authorization: Bearer <primary or secondary key>`.
    Key,
    /// `none`: no authentication.
    None,
}

/// One validated deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentConfig {
    /// Unique within the endpoint; what the pin header and `traffic` name.
    pub name: String,
    /// The model it serves, as written (`model-1:1`, a path, or `-` when not given).
    pub model: String,
    /// Percent of live traffic, 0..=100. Deployments left out of `traffic` get 0.
    pub traffic: u8,
    /// Percent of live traffic copied to this deployment, 0..=50 (`mirror_traffic`); its
    /// answers are discarded. At most one deployment has it, and that one has no `traffic`.
    pub mirror: u8,
    /// Where the deployment's instances listen.
    pub instances: Vec<InstanceAddr>,
    /// Timeout and concurrency limits.
    pub request_settings: RequestSettings,
    /// Active readiness probing, if configured.
    pub readiness_probe: Option<ReadinessProbe>,
    /// The HTTP version spoken to the instances.
    pub protocol: UpstreamProtocol,
}

/// The HTTP version a deployment's instances speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, the default.
    #[default]
    Http1,
    /// HTTP/2: h2c with prior knowledge on http://, h2 by ALPN on https:// (gRPC servers).
    Http2,
}

/// Azure's `request_settings`, with Azure's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSettings {
    /// Past this the client gets 408 and the upstream request is cancelled. Default 5 s.
    pub request_timeout: Duration,
    /// Requests one instance serves at once; the rest wait. Default 1.
    pub max_concurrent_requests_per_instance: u32,
    /// Longest a request waits for an instance before 429. Default 500 ms.
    pub max_queue_wait: Duration,
}

impl Default for RequestSettings {
    fn default() -> Self {
        RequestSettings {
            request_timeout: Duration::from_millis(5000),
            max_concurrent_requests_per_instance: 1,
            max_queue_wait: Duration::from_millis(500),
        }
    }
}

/// Azure's `readiness_probe`. Defaults are Azure's, except `initial_delay` (0 s here, 10 s in
/// Azure): the gateway does not start the model container, so it has nothing to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessProbe {
    /// What a probe asks. Default: `GET /`.
    pub check: ProbeCheck,
    /// Port probed, if not the instance's. Default: the instance's.
    pub port: Option<u16>,
    /// Wait before the first probe. Default 0 s.
    pub initial_delay: Duration,
    /// Time between probes. Default 10 s.
    pub period: Duration,
    /// A probe slower than this fails. Default 2 s.
    pub timeout: Duration,
    /// Successes in a row that make an instance ready. Default 1.
    pub success_threshold: u32,
    /// Failures in a row that make an instance unready. Default 30.
    pub failure_threshold: u32,
}

/// What a readiness probe asks an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeCheck {
    /// `GET path` (Azure's probe): ready on a 2xx answer.
    Http {
        /// Path probed, starting with `/`. Default `/`.
        path: String,
    },
    /// `grpc.health.v1.Health/Check` for `service` (`""`: the server as a whole): ready when the
    /// answer is `SERVING`. Needs `protocol: http2`.
    Grpc {
        /// The service asked about.
        service: String,
    },
}

impl std::fmt::Display for ProbeCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeCheck::Http { path } => write!(f, "GET {path}"),
            ProbeCheck::Grpc { service } if service.is_empty() => f.write_str("gRPC health check"),
            ProbeCheck::Grpc { service } => write!(f, "gRPC health check of `{service}`"),
        }
    }
}

/// The origin of one model server instance, e.g. `http://127.0.0.1:9001`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceAddr {
    /// `http` (only scheme accepted so far).
    pub scheme: Scheme,
    /// `host:port` as written.
    pub authority: Authority,
}

impl std::fmt::Display for InstanceAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl EndpointConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse_file(&read_file(path)?, path)
    }

    /// Validates `text`, read from `path`; errors name the file.
    pub fn parse_file(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse(text).map_err(|error| error.in_file(path))
    }

    /// Parses and validates endpoint YAML.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if has_no_content(text) {
            let issue = Issue::new(
                "",
                None,
                "the file is empty; an endpoint file needs at least `name`, `traffic` and \
                 `deployments` (see config/rollout/1-create-blue.yaml)",
            );
            return Err(ConfigError::invalid(text, vec![issue]));
        }
        let raw = deserialize(text).map_err(|issue| ConfigError::invalid(text, vec![issue]))?;
        validate(raw).map_err(|issues| ConfigError::invalid(text, issues))
    }

    /// The deployment that live traffic is mirrored to, if any.
    pub fn mirrored(&self) -> Option<&DeploymentConfig> {
        self.deployments.iter().find(|d| d.mirror > 0)
    }

    /// Total percent of live traffic: 0 or 100 in a valid config.
    pub fn total_traffic(&self) -> u32 {
        self.deployments.iter().map(|d| u32::from(d.traffic)).sum()
    }

    /// The config in the endpoint file's own shape, with every default written out. JSON is
    /// YAML, so [`EndpointConfig::parse`] reads it back to an equal config.
    pub fn to_file_value(&self) -> serde_json::Value {
        let auth_mode = match self.auth_mode {
            AuthMode::Key => "key",
            AuthMode::None => "none",
        };
        let deployments: Vec<serde_json::Value> = self
            .deployments
            .iter()
            .map(|d| {
                let settings = d.request_settings;
                let mut deployment = serde_json::json!({
                    "name": d.name,
                    "model": d.model,
                    "instances": d.instances.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "request_settings": {
                        "request_timeout_ms": settings.request_timeout.as_millis() as u64,
                        "max_concurrent_requests_per_instance": settings.max_concurrent_requests_per_instance,
                        "max_queue_wait_ms": settings.max_queue_wait.as_millis() as u64,
                    },
                });
                if d.protocol == UpstreamProtocol::Http2 {
                    deployment["protocol"] = serde_json::Value::from("http2");
                }
                if let Some(probe) = &d.readiness_probe {
                    deployment["readiness_probe"] = serde_json::json!({
                        "port": probe.port,
                        "initial_delay": probe.initial_delay.as_secs(),
                        "period": probe.period.as_secs(),
                        "timeout": probe.timeout.as_secs(),
                        "success_threshold": probe.success_threshold,
                        "failure_threshold": probe.failure_threshold,
                    });
                    if let Some(written) = deployment["readiness_probe"].as_object_mut() {
                        if probe.port.is_none() {
                            written.remove("port");
                        }
                        match &probe.check {
                            ProbeCheck::Http { path } => {
                                written.insert("path".into(), path.as_str().into());
                            }
                            ProbeCheck::Grpc { service } => {
                                written.insert(
                                    "grpc".into(),
                                    serde_json::json!({ "service": service }),
                                );
                            }
                        }
                    }
                }
                deployment
            })
            .collect();
        let mut value = serde_json::json!({
            "name": self.name,
            "auth_mode": auth_mode,
            "traffic": self.deployments.iter().map(|d| (d.name.clone(), d.traffic)).collect::<BTreeMap<_, _>>(),
            "deployments": deployments,
        });
        if let Some(keys_file) = &self.keys_file {
            value["keys_file"] = serde_json::Value::from(keys_file.display().to_string());
        }
        if let Some(header) = &self.sticky_header {
            value["sticky_header"] = serde_json::Value::from(header.as_str());
        }
        if let Some(mirrored) = self.mirrored() {
            value["mirror_traffic"] = serde_json::json!({ &mirrored.name: mirrored.mirror });
        }
        value
    }

    /// A one-line description: `my-endpoint: blue 90% (2 instances), green 10% (1 instance)`.
    pub fn summary(&self) -> String {
        let deployments: Vec<String> = self
            .deployments
            .iter()
            .map(|d| {
                let plural = if d.instances.len() == 1 { "" } else { "s" };
                let share = if d.mirror > 0 {
                    format!("{}% mirrored", d.mirror)
                } else {
                    format!("{}%", d.traffic)
                };
                format!(
                    "{} {share} ({} instance{plural})",
                    d.name,
                    d.instances.len()
                )
            })
            .collect();
        if deployments.is_empty() {
            format!("{}: no deployments", self.name)
        } else {
            format!("{}: {}", self.name, deployments.join(", "))
        }
    }
}

/// The text of an endpoint file.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Blank lines and comments only: what an editor leaves while it rewrites a file, or a
/// file that was never filled in. The YAML parser's own words for it ("unexpected end of
/// input") do not say what to do.
fn has_no_content(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with('#') || line == "---")
}

/// YAML -> [`EndpointFile`], with the field path and position of the first problem.
fn deserialize(text: &str) -> Result<EndpointFile, Issue> {
    deserialize_yaml(text)
}

/// Reads YAML into `T`, turning the first problem into an [`Issue`] at its field: the one
/// reader for every file Switchyard takes.
pub(crate) fn deserialize_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Issue> {
    let mut path_error = None;
    let parsed = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
        serde_path_to_error::deserialize::<_, T>(deserializer).map_err(|error| {
            path_error = Some(error.path().to_string());
            error.into_inner()
        })
    });
    parsed.map_err(|error| {
        let field = path_error.map(|path| clean_path(&path)).unwrap_or_default();
        Issue::from_parse_error(field, &error)
    })
}

/// `Spanned` values appear in serde paths as an extra `.value`; users never wrote it.
fn clean_path(path: &str) -> String {
    let cleaned = path.replace(".value[", "[").replace(".value.", ".");
    let cleaned = cleaned.strip_suffix(".value").unwrap_or(&cleaned);
    if cleaned == "." {
        String::new()
    } else {
        cleaned.to_string()
    }
}

/// Checks every rule, collecting all problems so a user can fix them in one pass.
fn validate(raw: EndpointFile) -> Result<EndpointConfig, Vec<Issue>> {
    let mut issues = Vec::new();

    check_name(&raw.name, "name", &mut issues);
    let auth_mode = check_auth_mode(raw.auth_mode.as_ref(), &mut issues);
    if auth_mode == AuthMode::Key && raw.keys_file.is_none() {
        let why = if raw.auth_mode.is_some() {
            "is `key`"
        } else {
            "defaults to `key`, as in Azure,"
        };
        issues.push(Issue::new(
            "auth_mode",
            raw.auth_mode.as_ref().map(|m| m.referenced),
            format!(
                "auth_mode {why} but no `keys_file` is given; add `keys_file: keys.yaml` \
                 (with primary_key and secondary_key) or set `auth_mode: none`"
            ),
        ));
    }
    if auth_mode == AuthMode::None {
        if let Some(keys_file) = &raw.keys_file {
            issues.push(Issue::new(
                "keys_file",
                Some(keys_file.referenced),
                "keys_file is set but auth_mode is `none`; set `auth_mode: key` or remove keys_file",
            ));
        }
    }

    if raw.deployments.len() > MAX_DEPLOYMENTS {
        issues.push(Issue::new(
            "deployments",
            raw.deployments
                .get(MAX_DEPLOYMENTS)
                .map(|d| d.name.referenced),
            format!(
                "{} deployments listed; an endpoint has at most {MAX_DEPLOYMENTS}",
                raw.deployments.len()
            ),
        ));
    }

    let mut seen_names: HashSet<String> = HashSet::new();
    let mut deployments = Vec::with_capacity(raw.deployments.len());
    for (index, deployment) in raw.deployments.iter().enumerate() {
        let field = format!("deployments[{index}]");
        if !seen_names.insert(deployment.name.value.to_lowercase()) {
            issues.push(Issue::new(
                format!("{field}.name"),
                Some(deployment.name.referenced),
                format!(
                    "deployment `{}` is listed twice; deployment names must be unique",
                    deployment.name.value
                ),
            ));
        }
        deployments.push(validate_deployment(&field, deployment, &mut issues));
    }

    check_traffic(&raw.traffic, &mut deployments, &mut issues);
    check_mirror(&raw.mirror_traffic, &mut deployments, &mut issues);
    let sticky_header = raw
        .sticky_header
        .as_ref()
        .and_then(|header| check_sticky_header(header, &mut issues));

    if issues.is_empty() {
        Ok(EndpointConfig {
            name: raw.name.value,
            auth_mode,
            keys_file: raw.keys_file.map(|file| PathBuf::from(file.value)),
            sticky_header,
            deployments,
        })
    } else {
        Err(issues)
    }
}

fn validate_deployment(
    field: &str,
    raw: &DeploymentFile,
    issues: &mut Vec<Issue>,
) -> DeploymentConfig {
    check_name(&raw.name, &format!("{field}.name"), issues);

    let listed: &[Spanned<String>] = raw.instances.as_ref().map_or(&[], |i| &i.value[..]);
    let list_location = raw
        .instances
        .as_ref()
        .map_or(raw.name.referenced, |i| i.referenced);
    if listed.is_empty() {
        issues.push(Issue::new(
            format!("{field}.instances"),
            Some(list_location),
            format!(
                "deployment `{}` has no instances; list at least one model server URL, \
                 e.g. `instances: [http://127.0.0.1:9001]`",
                raw.name.value
            ),
        ));
    }
    if listed.len() > MAX_INSTANCES {
        issues.push(Issue::new(
            format!("{field}.instances"),
            Some(list_location),
            format!(
                "{} instances listed; a deployment has at most {MAX_INSTANCES}",
                listed.len()
            ),
        ));
    }

    let mut instances: Vec<InstanceAddr> = Vec::with_capacity(listed.len());
    for (index, url) in listed.iter().enumerate() {
        let instance_field = format!("{field}.instances[{index}]");
        match parse_instance(&url.value) {
            Ok(addr) if instances.contains(&addr) => issues.push(Issue::new(
                instance_field,
                Some(url.referenced),
                format!("`{}` is listed twice in this deployment", url.value),
            )),
            Ok(addr) => instances.push(addr),
            Err(problem) => issues.push(Issue::new(instance_field, Some(url.referenced), problem)),
        }
    }

    let scale_count = raw
        .scale_settings
        .as_ref()
        .and_then(|s| s.instance_count.as_ref());
    for (count_field, count) in [
        ("instance_count", raw.instance_count.as_ref()),
        ("scale_settings.instance_count", scale_count),
    ] {
        let Some(count) = count else { continue };
        if count.value != listed.len() as i64 {
            issues.push(Issue::new(
                format!("{field}.{count_field}"),
                Some(count.referenced),
                format!(
                    "says {} but {} instance URL{} listed in `instances`; \
                     list one URL per instance, or remove `{count_field}`",
                    count.value,
                    listed.len(),
                    if listed.len() == 1 { " is" } else { "s are" }
                ),
            ));
        }
    }

    let protocol = match raw.protocol.as_ref() {
        None => UpstreamProtocol::Http1,
        Some(protocol) => match protocol.value.as_str() {
            "http1" => UpstreamProtocol::Http1,
            "http2" => UpstreamProtocol::Http2,
            other => {
                issues.push(Issue::new(
                    format!("{field}.protocol"),
                    Some(protocol.referenced),
                    format!("`{other}` is not a protocol; use `http1` or `http2`"),
                ));
                UpstreamProtocol::Http1
            }
        },
    };

    DeploymentConfig {
        name: raw.name.value.clone(),
        model: describe_model(raw.model.as_ref()),
        traffic: 0,
        mirror: 0,
        instances,
        request_settings: request_settings(field, raw.request_settings.as_ref(), issues),
        readiness_probe: raw
            .readiness_probe
            .as_ref()
            .map(|probe| readiness_probe(field, probe, protocol, issues)),
        protocol,
    }
}

fn request_settings(
    field: &str,
    raw: Option<&RequestSettingsFile>,
    issues: &mut Vec<Issue>,
) -> RequestSettings {
    let defaults = RequestSettings::default();
    let Some(raw) = raw else { return defaults };
    let mut section = Section::new(format!("{field}.request_settings"), issues);
    RequestSettings {
        request_timeout: Duration::from_millis(section.number(
            &raw.request_timeout_ms,
            "request_timeout_ms",
            1..=180_000,
            defaults.request_timeout.as_millis() as i64,
        ) as u64),
        max_concurrent_requests_per_instance: section.number(
            &raw.max_concurrent_requests_per_instance,
            "max_concurrent_requests_per_instance",
            1..=100_000,
            i64::from(defaults.max_concurrent_requests_per_instance),
        ) as u32,
        max_queue_wait: Duration::from_millis(section.number(
            &raw.max_queue_wait_ms,
            "max_queue_wait_ms",
            0..=180_000,
            defaults.max_queue_wait.as_millis() as i64,
        ) as u64),
    }
}

fn readiness_probe(
    field: &str,
    raw: &ProbeFile,
    protocol: UpstreamProtocol,
    issues: &mut Vec<Issue>,
) -> ReadinessProbe {
    let mut section = Section::new(format!("{field}.readiness_probe"), issues);
    let check = match (&raw.path, &raw.grpc) {
        (Some(path), Some(_)) => {
            section.issue(
                "path",
                path,
                "a probe is either `path` (a GET) or `grpc` (gRPC's health service), not both; \
                 remove one"
                    .to_string(),
            );
            ProbeCheck::Http {
                path: "/".to_string(),
            }
        }
        (Some(path), None) if !path.value.starts_with('/') => {
            section.issue(
                "path",
                path,
                format!("`{}` must start with `/`, e.g. `/health`", path.value),
            );
            ProbeCheck::Http {
                path: "/".to_string(),
            }
        }
        (Some(path), None) => ProbeCheck::Http {
            path: path.value.clone(),
        },
        (None, Some(grpc)) => {
            if protocol != UpstreamProtocol::Http2 {
                section.issue(
                    "grpc",
                    grpc,
                    "gRPC runs over HTTP/2: add `protocol: http2` to this deployment".to_string(),
                );
            }
            ProbeCheck::Grpc {
                service: grpc.value.service.clone().unwrap_or_default(),
            }
        }
        (None, None) => ProbeCheck::Http {
            path: "/".to_string(),
        },
    };
    let port = raw
        .port
        .is_some()
        .then(|| section.number(&raw.port, "port", 1..=65_535, 1) as u16);
    let mut seconds = |value: &Option<Spanned<i64>>, name: &str, range, default| {
        Duration::from_secs(section.number(value, name, range, default) as u64)
    };
    let initial_delay = seconds(&raw.initial_delay, "initial_delay", 0..=3_600, 0);
    let period = seconds(&raw.period, "period", 1..=3_600, 10);
    let timeout = seconds(&raw.timeout, "timeout", 1..=3_600, 2);
    ReadinessProbe {
        check,
        port,
        initial_delay,
        period,
        timeout,
        success_threshold: section.number(&raw.success_threshold, "success_threshold", 1..=1_000, 1)
            as u32,
        failure_threshold: section.number(
            &raw.failure_threshold,
            "failure_threshold",
            1..=1_000,
            30,
        ) as u32,
    }
}

/// The keys of one nested mapping, e.g. `deployments[0].request_settings`: reads its numbers and
/// records its problems under the full field path.
struct Section<'a> {
    prefix: String,
    issues: &'a mut Vec<Issue>,
}

impl<'a> Section<'a> {
    fn new(prefix: String, issues: &'a mut Vec<Issue>) -> Self {
        Section { prefix, issues }
    }

    /// The key's value if given and within `range`; `default` otherwise (with an issue if out of
    /// range).
    fn number(
        &mut self,
        value: &Option<Spanned<i64>>,
        key: &str,
        range: RangeInclusive<i64>,
        default: i64,
    ) -> i64 {
        ranged(
            value.as_ref(),
            &format!("{}.{key}", self.prefix),
            range,
            default,
            self.issues,
        )
    }

    fn issue<T>(&mut self, key: &str, at: &Spanned<T>, problem: String) {
        self.issues.push(Issue::new(
            format!("{}.{key}", self.prefix),
            Some(at.referenced),
            problem,
        ));
    }
}

/// `value` if given and within `range`, else `default` (recording an issue when out of range).
fn ranged(
    value: Option<&Spanned<i64>>,
    field: &str,
    range: RangeInclusive<i64>,
    default: i64,
    issues: &mut Vec<Issue>,
) -> i64 {
    match value {
        None => default,
        Some(value) if range.contains(&value.value) => value.value,
        Some(value) => {
            issues.push(Issue::new(
                field,
                Some(value.referenced),
                format!(
                    "{} is out of range; use a whole number from {} to {}",
                    value.value,
                    range.start(),
                    range.end()
                ),
            ));
            default
        }
    }
}

fn describe_model(model: Option<&ModelFile>) -> String {
    match model {
        None => "-".to_string(),
        Some(ModelFile::Reference(reference)) => reference.clone(),
        Some(ModelFile::Spec(spec)) => match (&spec.name, &spec.version, &spec.path) {
            (Some(name), Some(version), _) => format!("{name}:{version}"),
            (Some(name), None, _) => name.clone(),
            (None, _, Some(path)) => path.clone(),
            (None, _, None) => "-".to_string(),
        },
    }
}

/// Applies `traffic` to the deployments and checks its rules.
fn check_traffic(
    traffic: &BTreeMap<String, Spanned<i64>>,
    deployments: &mut [DeploymentConfig],
    issues: &mut Vec<Issue>,
) {
    let mut total: i64 = 0;
    for (name, percent) in traffic {
        let field = format!("traffic.{name}");
        let in_range = (0..=100).contains(&percent.value);
        if !in_range {
            issues.push(Issue::new(
                &field,
                Some(percent.referenced),
                format!(
                    "{} is not a percentage; use a whole number from 0 to 100",
                    percent.value
                ),
            ));
        } else {
            total += percent.value;
        }
        match deployments.iter_mut().find(|d| &d.name == name) {
            Some(deployment) => {
                if let Ok(value) = u8::try_from(percent.value) {
                    deployment.traffic = value.min(100);
                }
            }
            None => issues.push(Issue::new(
                &field,
                Some(percent.referenced),
                not_a_deployment(name, deployments),
            )),
        }
    }
    if total != 0 && total != 100 {
        let location = traffic.values().next().map(|v| v.referenced);
        issues.push(Issue::new(
            "traffic",
            location,
            format!(
                "percentages add up to {total}; they must add up to exactly 100 \
                 (or 0 to send live traffic nowhere)"
            ),
        ));
    }
}

/// The header `sticky_header` names, if it is a header a client can send for the purpose.
fn check_sticky_header(
    header: &Spanned<String>,
    issues: &mut Vec<Issue>,
) -> Option<http::HeaderName> {
    let field = "sticky_header";
    let location = Some(header.referenced);
    let Ok(name) = http::HeaderName::from_bytes(header.value.trim().as_bytes()) else {
        issues.push(Issue::new(
            field,
            location,
            format!(
                "`{}` is not a header name; use letters, digits and `-`, like `x-user-id`",
                header.value
            ),
        ));
        return None;
    };
    let why = match name.as_str() {
        PIN_HEADER => Some(
            "already pins a request to the deployment it names, whatever the split; name the \
             header that identifies your user or session instead, like `x-user-id`",
        ),
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
        | "proxy-connection" | "content-length" => Some(
            "describes the connection or the body, not the user; name the header that \
             identifies your user or session instead, like `x-user-id`",
        ),
        _ => None,
    };
    match why {
        Some(why) => {
            issues.push(Issue::new(field, location, format!("`{name}` {why}")));
            None
        }
        None => Some(name),
    }
}

/// Applies `mirror_traffic` to the deployments and checks Azure's rules for it: one deployment
/// at most, at most 50 percent, and never a deployment that also gets live traffic.
fn check_mirror(
    mirror_traffic: &BTreeMap<String, Spanned<i64>>,
    deployments: &mut [DeploymentConfig],
    issues: &mut Vec<Issue>,
) {
    let max = i64::from(MAX_MIRROR_PERCENT);
    for (name, percent) in mirror_traffic {
        let field = format!("mirror_traffic.{name}");
        let Some(deployment) = deployments.iter_mut().find(|d| &d.name == name) else {
            issues.push(Issue::new(
                &field,
                Some(percent.referenced),
                not_a_deployment(name, deployments),
            ));
            continue;
        };
        if !(0..=max).contains(&percent.value) {
            issues.push(Issue::new(
                &field,
                Some(percent.referenced),
                format!(
                    "{} is out of range; mirror a whole number from 0 to {max} percent of live \
                     traffic",
                    percent.value
                ),
            ));
            continue;
        }
        if percent.value > 0 && deployment.traffic > 0 {
            issues.push(Issue::new(
                &field,
                Some(percent.referenced),
                format!(
                    "`{name}` also gets {}% of live traffic; a deployment gets live traffic or \
                     mirrored traffic, not both: set `traffic.{name}` to 0 or mirror another \
                     deployment",
                    deployment.traffic
                ),
            ));
            continue;
        }
        deployment.mirror = u8::try_from(percent.value).unwrap_or(0);
    }
    let mirrored: Vec<&str> = mirror_traffic
        .iter()
        .filter(|(_, percent)| percent.value > 0)
        .map(|(name, _)| name.as_str())
        .collect();
    if mirrored.len() > 1 {
        let location = mirror_traffic.values().nth(1).map(|v| v.referenced);
        issues.push(Issue::new(
            "mirror_traffic",
            location,
            format!(
                "mirrors to {}; traffic can be mirrored to one deployment at most",
                mirrored.join(" and ")
            ),
        ));
    }
}

/// The problem with naming `name`, which is not among `deployments`, with the likely fix.
fn not_a_deployment(name: &str, deployments: &[DeploymentConfig]) -> String {
    let known = deployments.iter().map(|d| d.name.as_str());
    let hint = match suggest::closest(name, known) {
        Some(close) => format!("; did you mean `{close}`?"),
        None if deployments.is_empty() => "; the file lists no deployments".to_string(),
        None => format!(
            "; deployments are: {}",
            deployments
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!("`{name}` is not a deployment of this endpoint{hint}")
}

/// Azure's naming rule for endpoints and deployments.
fn check_name(name: &Spanned<String>, field: &str, issues: &mut Vec<Issue>) {
    if let Err(problem) = name_problem(&name.value) {
        issues.push(Issue::new(
            field,
            Some(name.referenced),
            format!("`{}` {problem}", name.value),
        ));
    }
}

fn name_problem(name: &str) -> Result<(), &'static str> {
    let length = name.chars().count();
    if !(3..=32).contains(&length) {
        return Err("must be 3 to 32 characters long");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("must start with a letter");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("may contain only letters, digits and dashes");
    }
    if name.contains("--") {
        return Err("may not contain two dashes in a row");
    }
    if name.ends_with('-') {
        return Err("may not end with a dash");
    }
    Ok(())
}

fn check_auth_mode(mode: Option<&Spanned<String>>, issues: &mut Vec<Issue>) -> AuthMode {
    let Some(mode) = mode else {
        return AuthMode::Key;
    };
    match mode.value.to_ascii_lowercase().as_str() {
        "key" => AuthMode::Key,
        "none" => AuthMode::None,
        azure @ ("aml_token" | "aad_token") => {
            issues.push(Issue::new(
                "auth_mode",
                Some(mode.referenced),
                format!(
                    "`{azure}` needs Azure's token service, which a self-hosted gateway does not \
                     have; use `key` (with keys_file) or `none`"
                ),
            ));
            AuthMode::None
        }
        _ => {
            issues.push(Issue::new(
                "auth_mode",
                Some(mode.referenced),
                format!("`{}` is not an auth mode; use `key` or `none`", mode.value),
            ));
            AuthMode::None
        }
    }
}

/// An instance is the origin of a model server: `http://host:port`.
fn parse_instance(url: &str) -> Result<InstanceAddr, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a URL; write it like http://127.0.0.1:9001"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(format!(
            "`{url}` is not an absolute URL; write it like http://127.0.0.1:9001"
        ));
    };
    if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
        return Err(format!(
            "`{url}` uses `{scheme}`; instances are http:// or https://"
        ));
    }
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{url}` carries credentials; remove the `user@` part"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    let path = uri.path();
    if (!path.is_empty() && path != "/") || uri.query().is_some() {
        return Err(format!(
            "`{url}` has a path; give only the origin (http://host:port): \
             the request path, e.g. /score, is forwarded as the client sent it"
        ));
    }
    Ok(InstanceAddr {
        scheme: scheme.clone(),
        authority: authority.clone(),
    })
}

/// Location of a `Spanned` value in the file, for error messages.
pub(crate) fn line_column(location: &Location) -> Option<(u64, u64)> {
    (location.line() > 0).then(|| (location.line(), location.column()))
}

#[cfg(test)]
mod tests;
