//! The endpoint file exactly as a user writes it.
//!
//! These types mirror Azure ML's declarative endpoint file plus the keys Switchyard adds
//! (`instances`, `keys_file`, `sticky_header`, `protocol`). They are only ever read by [`super::validate`]; nothing else in the program sees
//! them. Every struct denies unknown keys so that a typo is an error, never a silent default.
//! Azure keys that mean nothing to a gateway are accepted and ignored (`IgnoredAny`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

/// The whole endpoint file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointFile {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) traffic: BTreeMap<String, Spanned<i64>>,
    #[serde(default)]
    pub(crate) mirror_traffic: BTreeMap<String, Spanned<i64>>,
    #[serde(default)]
    pub(crate) deployments: Vec<DeploymentFile>,
    #[serde(default)]
    pub(crate) auth_mode: Option<Spanned<String>>,
    /// Switchyard's addition: where the keys for `auth_mode: key` live.
    #[serde(default)]
    pub(crate) keys_file: Option<Spanned<String>>,
    /// Switchyard's addition: the request header whose value keeps a user on one deployment.
    #[serde(default)]
    pub(crate) sticky_header: Option<Spanned<String>>,

    // Azure keys a gateway has no use for.
    #[serde(rename = "$schema", default)]
    _schema: Option<IgnoredAny>,
    #[serde(default, rename = "description")]
    _description: Option<IgnoredAny>,
    #[serde(default, rename = "tags")]
    _tags: Option<IgnoredAny>,
    #[serde(default, rename = "kind")]
    _kind: Option<IgnoredAny>,
    #[serde(default, rename = "compute")]
    _compute: Option<IgnoredAny>,
    #[serde(default, rename = "identity")]
    _identity: Option<IgnoredAny>,
    #[serde(default, rename = "public_network_access")]
    _public_network_access: Option<IgnoredAny>,
    #[serde(default, rename = "location")]
    _location: Option<IgnoredAny>,
}

/// One deployment: a version of the model behind its own instances.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeploymentFile {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) model: Option<ModelFile>,
    #[serde(default)]
    pub(crate) instances: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(crate) instance_count: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) scale_settings: Option<ScaleSettingsFile>,

    #[serde(default)]
    pub(crate) request_settings: Option<RequestSettingsFile>,
    #[serde(default)]
    pub(crate) readiness_probe: Option<ProbeFile>,
    /// Switchyard's addition: `http1` (default) or `http2` (h2c, or h2 over https).
    #[serde(default)]
    pub(crate) protocol: Option<Spanned<String>>,

    // Azure keys a gateway has no use for.
    #[serde(default, rename = "$schema")]
    _schema: Option<IgnoredAny>,
    #[serde(default, rename = "type")]
    _type: Option<IgnoredAny>,
    #[serde(default, rename = "endpoint_name")]
    _endpoint_name: Option<IgnoredAny>,
    #[serde(default, rename = "description")]
    _description: Option<IgnoredAny>,
    #[serde(default, rename = "tags")]
    _tags: Option<IgnoredAny>,
    #[serde(default, rename = "code_configuration")]
    _code_configuration: Option<IgnoredAny>,
    #[serde(default, rename = "environment")]
    _environment: Option<IgnoredAny>,
    #[serde(default, rename = "environment_variables")]
    _environment_variables: Option<IgnoredAny>,
    #[serde(default, rename = "instance_type")]
    _instance_type: Option<IgnoredAny>,
    #[serde(default, rename = "app_insights_enabled")]
    _app_insights_enabled: Option<IgnoredAny>,
    #[serde(default, rename = "liveness_probe")]
    _liveness_probe: Option<IgnoredAny>,
    #[serde(default, rename = "egress_public_network_access")]
    _egress_public_network_access: Option<IgnoredAny>,
    #[serde(default, rename = "data_collector")]
    _data_collector: Option<IgnoredAny>,
    #[serde(default, rename = "properties")]
    _properties: Option<IgnoredAny>,
    #[serde(default, rename = "model_mount_path")]
    _model_mount_path: Option<IgnoredAny>,
}

/// `model:` is either a reference string (`azureml:model-1:1`) or a mapping.
#[derive(Debug)]
pub(crate) enum ModelFile {
    Reference(String),
    Spec(ModelSpecFile),
}

// Written by hand rather than `#[serde(untagged)]`, whose only error is "data did not match any
// variant", and so that errors inside the mapping keep their field path.
impl<'de> Deserialize<'de> for ModelFile {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModelVisitor;

        impl<'de> serde::de::Visitor<'de> for ModelVisitor {
            type Value = ModelFile;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a model reference like `azureml:model-1:1` or a mapping like `{name: model-1, version: 1}`")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<ModelFile, E> {
                Ok(ModelFile::Reference(value.to_string()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ModelFile, A::Error> {
                ModelSpecFile::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ModelFile::Spec)
            }
        }

        deserializer.deserialize_any(ModelVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelSpecFile {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) version: Option<Scalar>,
    #[serde(default)]
    pub(crate) path: Option<String>,
    #[serde(default, rename = "type")]
    _type: Option<IgnoredAny>,
    #[serde(default, rename = "description")]
    _description: Option<IgnoredAny>,
    #[serde(default, rename = "$schema")]
    _schema: Option<IgnoredAny>,
}

/// A version may be written `1` or `"1"` or `1.2`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Int(v) => write!(f, "{v}"),
            Scalar::Float(v) => write!(f, "{v}"),
            Scalar::Text(v) => f.write_str(v),
        }
    }
}

/// Azure's older `scale_settings` block; only `instance_count` matters here, the rest
/// (`type`, `min_instances`, `max_instances`, ...) belongs to Azure's autoscaler.
#[derive(Debug, Deserialize)]
pub(crate) struct ScaleSettingsFile {
    #[serde(default)]
    pub(crate) instance_count: Option<Spanned<i64>>,
}

/// Azure's `request_settings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestSettingsFile {
    #[serde(default)]
    pub(crate) request_timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) max_concurrent_requests_per_instance: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) max_queue_wait_ms: Option<Spanned<i64>>,
}

/// Azure's `readiness_probe` (times in seconds, as in Azure).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProbeFile {
    #[serde(default)]
    pub(crate) path: Option<Spanned<String>>,
    /// Switchyard's addition: probe with gRPC's health service instead of a GET.
    #[serde(default)]
    pub(crate) grpc: Option<Spanned<GrpcProbeFile>>,
    #[serde(default)]
    pub(crate) port: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) initial_delay: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) period: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) timeout: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) success_threshold: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) failure_threshold: Option<Spanned<i64>>,
}

/// `readiness_probe.grpc`: the service asked about with `grpc.health.v1.Health/Check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrpcProbeFile {
    #[serde(default)]
    pub(crate) service: Option<String>,
}
