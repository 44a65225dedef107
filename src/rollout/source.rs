//! Where the controller reads what the gateways serve and what they counted: each gateway's own
//! admin API (no other component needed), or a Prometheus server that scrapes them all.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use super::plan::{Plan, Timing};
use super::state::{Shares, Totals};
use super::step::Observed;
use crate::client::{self, base_url};
use crate::metrics::names;

/// Where the counts come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The admin API of each gateway (`http://host:port`), summed.
    Admin(Vec<String>),
    /// A Prometheus server scraping the gateways of endpoint `endpoint`.
    Prometheus {
        /// Its base URL.
        url: String,
        /// The endpoint's name, as the `endpoint` label carries it.
        endpoint: String,
    },
}

impl Source {
    /// The gateways (or Prometheus targets) that do not serve `shares` yet; empty once all do.
    pub async fn not_serving(&self, shares: &Shares) -> Result<Vec<String>, String> {
        match self {
            Source::Admin(admins) => {
                let mut behind = Vec::new();
                for admin in admins {
                    let status = get_json(&format!("{}/-/endpoint", base_url(admin))).await?;
                    if !serves(&status, shares) {
                        behind.push(admin.clone());
                    }
                }
                Ok(behind)
            }
            Source::Prometheus { url, endpoint } => {
                // The endpoint's gateways: every target that reports its deployments.
                let targets = format!(
                    "count by (instance) ({}{{endpoint=\"{endpoint}\"}})",
                    names::INSTANCES
                );
                let targets: Vec<String> = query_prometheus(url, &targets)
                    .await?
                    .into_iter()
                    .filter_map(|(labels, _)| labels.get("instance").cloned())
                    .collect();
                if targets.is_empty() {
                    return Ok(vec![format!("no target of endpoint `{endpoint}` in {url}")]);
                }
                let mut behind = Vec::new();
                for (metric, wanted) in [
                    (names::TRAFFIC_PERCENT, &shares.traffic),
                    (names::MIRROR_PERCENT, &shares.mirror),
                ] {
                    for (deployment, percent) in wanted {
                        let query = format!(
                            "{metric}{{endpoint=\"{endpoint}\",deployment=\"{deployment}\"}} == {percent}"
                        );
                        let serving: Vec<String> = query_prometheus(url, &query)
                            .await?
                            .into_iter()
                            .filter_map(|(labels, _)| labels.get("instance").cloned())
                            .collect();
                        for target in &targets {
                            if !serving.contains(target) && !behind.contains(target) {
                                behind.push(target.clone());
                            }
                        }
                    }
                }
                Ok(behind)
            }
        }
    }

    /// What each gateway has counted so far, per deployment: requests, errors, and answers
    /// slower than the plan's threshold.
    pub async fn totals(&self, plan: &Plan) -> Result<Totals, String> {
        let slow = plan.judge.slow.map(|slow| {
            let family = match slow.of {
                Timing::Head => names::REQUEST_DURATION,
                Timing::FirstByte => names::FIRST_BYTE,
            };
            (family, bucket_label(slow.above))
        });
        match self {
            Source::Admin(admins) => {
                let mut totals = Totals::new();
                for admin in admins {
                    let text = get_text(&format!("{}/metrics", base_url(admin))).await?;
                    totals.insert(admin.clone(), totals_from_text(&text, slow.as_ref()));
                }
                Ok(totals)
            }
            Source::Prometheus { url, endpoint } => {
                let mut counts: BTreeMap<String, Observed> = BTreeMap::new();
                let by = |selector: String| format!("sum by (deployment) ({selector})");
                let count = format!("{}_count", names::REQUEST_DURATION);
                let requests = by(format!("{count}{{endpoint=\"{endpoint}\"}}"));
                for (labels, value) in query_prometheus(url, &requests).await? {
                    let deployment = labels.get("deployment").cloned().unwrap_or_default();
                    counts.entry(deployment).or_default().requests = value as u64;
                }
                let errors = by(format!(
                    "{count}{{endpoint=\"{endpoint}\",outcome=\"error\"}}"
                ));
                for (labels, value) in query_prometheus(url, &errors).await? {
                    let deployment = labels.get("deployment").cloned().unwrap_or_default();
                    counts.entry(deployment).or_default().errors = value as u64;
                }
                if let Some((family, le)) = &slow {
                    let all = by(format!("{family}_count{{endpoint=\"{endpoint}\"}}"));
                    let fast = by(format!(
                        "{family}_bucket{{endpoint=\"{endpoint}\",le=\"{le}\"}}"
                    ));
                    let fast: BTreeMap<String, f64> = query_prometheus(url, &fast)
                        .await?
                        .into_iter()
                        .map(|(labels, value)| {
                            (labels.get("deployment").cloned().unwrap_or_default(), value)
                        })
                        .collect();
                    for (labels, value) in query_prometheus(url, &all).await? {
                        let deployment = labels.get("deployment").cloned().unwrap_or_default();
                        let below = fast.get(&deployment).copied().unwrap_or(0.0);
                        counts.entry(deployment).or_default().slow =
                            (value - below).max(0.0) as u64;
                    }
                }
                Ok(Totals::from([(url.clone(), counts)]))
            }
        }
    }
}

/// Each deployment's answers since `start`, summed over the gateways. A gateway whose counts
/// went down restarted: its counts since the restart are all new.
pub fn since(start: &Totals, now: &Totals, deployment: &str) -> Observed {
    let mut sum = Observed::default();
    for (gateway, counts) in now {
        let Some(current) = counts.get(deployment) else {
            continue;
        };
        let before = start
            .get(gateway)
            .and_then(|counts| counts.get(deployment))
            .copied()
            .unwrap_or_default();
        let restarted = current.requests < before.requests;
        let delta = |now: u64, then: u64| {
            if restarted {
                now
            } else {
                now.saturating_sub(then)
            }
        };
        sum.requests += delta(current.requests, before.requests);
        sum.errors += delta(current.errors, before.errors);
        sum.slow += delta(current.slow, before.slow);
    }
    sum
}

/// Whether a gateway's `/-/endpoint` answer serves `shares`.
fn serves(status: &serde_json::Value, shares: &Shares) -> bool {
    let share = |map: &str, deployment: &str| status[map][deployment].as_u64().unwrap_or(0);
    shares
        .traffic
        .iter()
        .all(|(deployment, percent)| share("traffic", deployment) == u64::from(*percent))
        && shares
            .mirror
            .iter()
            .all(|(deployment, percent)| share("mirror_traffic", deployment) == u64::from(*percent))
}

/// The `le` label of the bucket bound `above`, as the text format writes it.
fn bucket_label(above: Duration) -> String {
    let seconds = above.as_secs_f64();
    // Prometheus writes bounds in their shortest form: 0.25, 1, 2.5.
    format!("{seconds}")
}

/// Per-deployment totals from one gateway's metrics text.
fn totals_from_text(text: &str, slow: Option<&(&str, String)>) -> BTreeMap<String, Observed> {
    let count = format!("{}_count", names::REQUEST_DURATION);
    let mut totals: BTreeMap<String, Observed> = BTreeMap::new();
    let mut slow_all: BTreeMap<String, f64> = BTreeMap::new();
    let mut slow_fast: BTreeMap<String, f64> = BTreeMap::new();
    for (name, labels, value) in samples(text) {
        let Some(deployment) = label(&labels, "deployment") else {
            continue;
        };
        if name == count {
            let entry = totals.entry(deployment.to_string()).or_default();
            entry.requests += value as u64;
            if label(&labels, "outcome") == Some("error") {
                entry.errors += value as u64;
            }
        }
        if let Some((family, le)) = slow {
            if name == format!("{family}_count") {
                *slow_all.entry(deployment.to_string()).or_default() += value;
            }
            if name == format!("{family}_bucket") && label(&labels, "le") == Some(le.as_str()) {
                *slow_fast.entry(deployment.to_string()).or_default() += value;
            }
        }
    }
    for (deployment, all) in slow_all {
        let fast = slow_fast.get(&deployment).copied().unwrap_or(0.0);
        totals.entry(deployment).or_default().slow = (all - fast).max(0.0) as u64;
    }
    totals
}

fn label<'a>(labels: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    labels.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The samples of Prometheus' text format: name, labels, value.
fn samples(text: &str) -> impl Iterator<Item = (&str, Vec<(&str, &str)>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key, value.trim_matches('"')))
                })
                .collect();
            Some((name, labels, value))
        })
}

async fn get_text(url: &str) -> Result<String, String> {
    let answer = client::send(Method::GET, url, &[], Bytes::new())
        .await
        .map_err(|error| format!("{error} (is the gateway running?)"))?;
    if answer.status != StatusCode::OK {
        return Err(format!("{url} answered {}", answer.status));
    }
    Ok(String::from_utf8_lossy(&answer.body).into_owned())
}

async fn get_json(url: &str) -> Result<serde_json::Value, String> {
    let text = get_text(url).await?;
    serde_json::from_str(&text).map_err(|error| format!("{url} answered no JSON: {error}"))
}

/// An instant query's result: each series' labels and value.
async fn query_prometheus(
    url: &str,
    query: &str,
) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let json = get_json(&format!("{}/api/v1/query?query={encoded}", base_url(url))).await?;
    if json["status"] != "success" {
        return Err(format!("Prometheus refused `{query}`: {}", json["error"]));
    }
    Ok(json["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .filter_map(|series| {
                    let labels = series["metric"]
                        .as_object()?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect();
                    let value = series["value"][1].as_str()?.parse().ok()?;
                    Some((labels, value))
                })
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_read_requests_errors_and_slow_answers_from_the_metrics() {
        let text = "\
switchyard_request_duration_seconds_bucket{deployment=\"green\",endpoint=\"e\",outcome=\"success\",le=\"0.25\"} 7
switchyard_request_duration_seconds_bucket{deployment=\"green\",endpoint=\"e\",outcome=\"error\",le=\"0.25\"} 2
switchyard_request_duration_seconds_count{deployment=\"green\",endpoint=\"e\",outcome=\"success\"} 10
switchyard_request_duration_seconds_count{deployment=\"green\",endpoint=\"e\",outcome=\"error\"} 2
switchyard_request_duration_seconds_count{deployment=\"blue\",endpoint=\"e\",outcome=\"success\"} 90
";
        let slow = (
            names::REQUEST_DURATION,
            bucket_label(Duration::from_millis(250)),
        );
        let totals = totals_from_text(text, Some(&slow));
        assert_eq!(
            totals["green"],
            Observed {
                requests: 12,
                errors: 2,
                slow: 3
            }
        );
        assert_eq!(totals["blue"].requests, 90);
    }

    #[test]
    fn counts_since_the_step_began_survive_a_gateway_restart() {
        let at = |requests, errors| {
            BTreeMap::from([(
                "green".to_string(),
                Observed {
                    requests,
                    errors,
                    slow: 0,
                },
            )])
        };
        let start = Totals::from([("a".to_string(), at(100, 1)), ("b".to_string(), at(50, 0))]);
        // `b` restarted: 20 requests since, all new.
        let now = Totals::from([("a".to_string(), at(150, 2)), ("b".to_string(), at(20, 1))]);
        assert_eq!(
            since(&start, &now, "green"),
            Observed {
                requests: 70,
                errors: 2,
                slow: 0
            }
        );
    }
}
