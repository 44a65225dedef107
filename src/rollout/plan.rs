//! The rollout plan: which deployment to carry to 100%, in which steps, judged how. Read from
//! YAML as the user wrote it, then validated into [`Plan`], the only form the controller sees.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::config::{ConfigError, EndpointConfig, Issue, deserialize_yaml};
use crate::metrics::DURATION_BUCKETS;

/// How a step moves green.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Copy this percent of live traffic to green; clients only see the baseline's answers.
    Mirror(u8),
    /// Send green this percent of live traffic.
    Traffic(u8),
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    /// What the step serves.
    pub kind: StepKind,
    /// How long the step holds before it may pass.
    pub hold: Duration,
}

impl Step {
    /// Whether the step is judged: all but the final full shift, after which nothing is left
    /// to compare with.
    pub fn is_judged(&self) -> bool {
        self.kind != StepKind::Traffic(100)
    }
}

/// Which timing the slow-answer check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// The response head: the model's whole answer for ordinary requests.
    Head,
    /// The first body byte: the first token of a streamed answer.
    FirstByte,
}

/// The slow-answer check.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SlowCheck {
    /// Answers slower than this count as slow; one of the histogram bounds.
    pub above: Duration,
    /// How much larger green's slow share may be, as a share (0.02 for 2%).
    pub max_increase: f64,
    /// Which timing is compared.
    pub of: Timing,
}

/// How green is judged.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JudgeSettings {
    /// How much larger green's error share may be, as a share.
    pub errors_max_increase: f64,
    /// The slow-answer check, if the plan has one.
    pub slow: Option<SlowCheck>,
    /// Requests each deployment must answer in a step before it may pass.
    pub min_requests: u64,
    /// 1 minus the chance of rolling back a green as good as the baseline, over the rollout.
    pub confidence: f64,
    /// How often the counts are read and judged.
    pub interval: Duration,
}

/// What a step without a verdict does once its hold is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    /// Wait for a person (`rollout resume`, `promote` or `abort`).
    Pause,
    /// Roll back.
    Fail,
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// The deployment being rolled out.
    pub deployment: String,
    /// The deployment it is compared with, if the plan names one.
    pub baseline: Option<String>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// How it is judged.
    pub judge: JudgeSettings,
    /// What a step without a verdict does past its hold.
    pub no_data: NoData,
}

/// Defaults a plan may leave out.
pub mod defaults {
    use std::time::Duration;

    /// `judge.errors.max_increase`: 1 percentage point.
    pub const ERRORS_MAX_INCREASE: f64 = 0.01;
    /// `judge.slow.max_increase`: 2 percentage points.
    pub const SLOW_MAX_INCREASE: f64 = 0.02;
    /// `judge.min_requests`.
    pub const MIN_REQUESTS: u64 = 200;
    /// `judge.confidence`: 99%.
    pub const CONFIDENCE: f64 = 0.99;
    /// `judge.interval`.
    pub const INTERVAL: Duration = Duration::from_secs(5);
    /// A step's `hold`, except the last one's.
    pub const HOLD: Duration = Duration::from_secs(60);
}

// === The file as written ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    deployment: Spanned<String>,
    #[serde(default)]
    baseline: Option<Spanned<String>>,
    steps: Spanned<Vec<StepFile>>,
    #[serde(default)]
    judge: Option<JudgeFile>,
    #[serde(default)]
    no_data: Option<Spanned<String>>,
    #[serde(default)]
    on_rollback: Option<RollbackFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    #[serde(default)]
    mirror: Option<Spanned<i64>>,
    #[serde(default)]
    traffic: Option<Spanned<i64>>,
    #[serde(default)]
    hold: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JudgeFile {
    #[serde(default)]
    errors: Option<ErrorsFile>,
    #[serde(default)]
    slow: Option<SlowFile>,
    #[serde(default)]
    min_requests: Option<Spanned<i64>>,
    #[serde(default)]
    confidence: Option<Spanned<Percent>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorsFile {
    max_increase: Spanned<Percent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlowFile {
    above: Spanned<String>,
    #[serde(default)]
    max_increase: Option<Spanned<Percent>>,
    #[serde(default)]
    of: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackFile {
    traffic_to: Spanned<String>,
}

/// `1%`, `0.5%` or a bare number of percent.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Percent {
    Number(f64),
    Text(String),
}

impl Percent {
    /// As a share: `1%` is 0.01.
    fn share(&self) -> Option<f64> {
        let percent = match self {
            Percent::Number(number) => *number,
            Percent::Text(text) => text.trim().strip_suffix('%')?.trim().parse().ok()?,
        };
        (0.0..=100.0).contains(&percent).then_some(percent / 100.0)
    }
}

// === impl Plan ===

impl Plan {
    /// Parses and validates a plan file's text.
    pub fn parse(text: &str) -> Result<Plan, ConfigError> {
        let raw: PlanFile =
            deserialize_yaml(text).map_err(|issue| ConfigError::invalid(text, vec![issue]))?;
        validate(raw).map_err(|issues| ConfigError::invalid(text, issues))
    }

    /// Reads and validates the plan at `path`.
    pub fn load(path: &std::path::Path) -> Result<Plan, ConfigError> {
        let text = crate::config::read_file(path)?;
        Plan::parse(&text).map_err(|error| error.in_file(path))
    }

    /// The baseline for `endpoint`: the plan's, or else the deployment other than green with
    /// the most live traffic now.
    pub fn baseline_in(&self, endpoint: &EndpointConfig) -> Result<String, String> {
        if let Some(baseline) = &self.baseline {
            return Ok(baseline.clone());
        }
        endpoint
            .deployments
            .iter()
            .filter(|d| d.name != self.deployment && d.traffic > 0)
            .max_by_key(|d| d.traffic)
            .map(|d| d.name.clone())
            .ok_or_else(|| {
                format!(
                    "no deployment other than `{}` has live traffic to compare it with; name one \
                     with `baseline:`",
                    self.deployment
                )
            })
    }

    /// Checks the plan against the endpoint it will run on, as `rollout validate` does.
    pub fn check_against(&self, endpoint: &EndpointConfig) -> Result<String, Vec<String>> {
        let mut problems = Vec::new();
        let names: Vec<&str> = endpoint
            .deployments
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        let unknown = |name: &str| {
            let hint = crate::config::suggest_name(name, names.iter().copied())
                .map(|close| format!("; did you mean `{close}`?"))
                .unwrap_or_default();
            format!(
                "deployment `{name}` is not in endpoint `{}` (it has {}){hint}",
                endpoint.name,
                names.join(", ")
            )
        };
        if !names.contains(&self.deployment.as_str()) {
            problems.push(unknown(&self.deployment));
        }
        let baseline = match self.baseline_in(endpoint) {
            Ok(baseline) if !names.contains(&baseline.as_str()) => {
                problems.push(unknown(&baseline));
                None
            }
            Ok(baseline) => Some(baseline),
            Err(problem) => {
                problems.push(problem);
                None
            }
        };
        if let Some(baseline) = &baseline {
            let others: u32 = endpoint
                .deployments
                .iter()
                .filter(|d| d.name != *baseline && d.name != self.deployment)
                .map(|d| u32::from(d.traffic))
                .sum();
            let most = self
                .steps
                .iter()
                .filter_map(|step| match step.kind {
                    StepKind::Traffic(percent) => Some(u32::from(percent)),
                    StepKind::Mirror(_) => None,
                })
                .max()
                .unwrap_or(0);
            if others + most > 100 {
                problems.push(format!(
                    "other deployments hold {others}% of live traffic, so `{}` cannot reach \
                     {most}%; move their traffic to `{baseline}` first",
                    self.deployment
                ));
            }
            if let Some(mirrored) = endpoint.mirrored() {
                if mirrored.name != self.deployment && self.mirrors() {
                    problems.push(format!(
                        "`{}` is mirrored now; a mirror step needs `mirror_traffic` free",
                        mirrored.name
                    ));
                }
            }
        }
        match (problems.is_empty(), baseline) {
            (true, Some(baseline)) => Ok(baseline),
            _ => Err(problems),
        }
    }

    /// Whether any step mirrors.
    pub fn mirrors(&self) -> bool {
        self.steps
            .iter()
            .any(|step| matches!(step.kind, StepKind::Mirror(_)))
    }

    /// Steps that are judged: each gets an even part of `1 - confidence`.
    pub fn judged_steps(&self) -> usize {
        self.steps.iter().filter(|step| step.is_judged()).count()
    }
}

fn validate(raw: PlanFile) -> Result<Plan, Vec<Issue>> {
    let mut issues = Vec::new();
    let name = |spanned: &Spanned<String>, field: &str, issues: &mut Vec<Issue>| {
        let value = spanned.value.trim().to_string();
        if value.is_empty() {
            issues.push(Issue::new(
                field,
                Some(spanned.referenced),
                "a deployment name is needed here",
            ));
        }
        value
    };
    let deployment = name(&raw.deployment, "deployment", &mut issues);
    let baseline = raw
        .baseline
        .as_ref()
        .map(|baseline| name(baseline, "baseline", &mut issues));
    if baseline.as_deref() == Some(deployment.as_str()) {
        issues.push(Issue::new(
            "baseline",
            raw.baseline.as_ref().map(|b| b.referenced),
            "the baseline must be another deployment than the one rolled out",
        ));
    }

    let mut steps = Vec::new();
    let count = raw.steps.value.len();
    if count == 0 {
        issues.push(Issue::new(
            "steps",
            Some(raw.steps.referenced),
            "a plan needs at least one step, e.g. `- {traffic: 10, hold: 5m}` then `- {traffic: 100}`",
        ));
    }
    let mut last_traffic = 0;
    for (index, step) in raw.steps.value.iter().enumerate() {
        let field = format!("steps[{index}]");
        let percent = |value: &Spanned<i64>, key: &str, issues: &mut Vec<Issue>| {
            let ok = (1..=100).contains(&value.value);
            if !ok {
                issues.push(Issue::new(
                    format!("{field}.{key}"),
                    Some(value.referenced),
                    format!("{} is not a percent from 1 to 100", value.value),
                ));
            }
            value.value.clamp(0, 100) as u8
        };
        let kind = match (&step.mirror, &step.traffic) {
            (Some(mirror), None) => {
                let share = percent(mirror, "mirror", &mut issues);
                if share > 50 {
                    issues.push(Issue::new(
                        format!("{field}.mirror"),
                        Some(mirror.referenced),
                        "at most 50 percent of live traffic can be mirrored, as in Azure",
                    ));
                }
                if last_traffic > 0 {
                    issues.push(Issue::new(
                        format!("{field}.mirror"),
                        Some(mirror.referenced),
                        "a mirror step must come before the steps that give live traffic",
                    ));
                }
                StepKind::Mirror(share)
            }
            (None, Some(traffic)) => {
                let share = percent(traffic, "traffic", &mut issues);
                if share <= last_traffic {
                    issues.push(Issue::new(
                        format!("{field}.traffic"),
                        Some(traffic.referenced),
                        format!(
                            "each step must give more traffic than the one before ({last_traffic}%)"
                        ),
                    ));
                }
                if share == 100 && index + 1 != count {
                    issues.push(Issue::new(
                        format!("{field}.traffic"),
                        Some(traffic.referenced),
                        "`traffic: 100` is the promotion, so it must be the last step",
                    ));
                }
                last_traffic = share;
                StepKind::Traffic(share)
            }
            _ => {
                issues.push(Issue::new(
                    field.clone(),
                    None,
                    "each step has exactly one of `mirror` or `traffic`",
                ));
                StepKind::Traffic(0)
            }
        };
        let hold = match &step.hold {
            Some(hold) => duration(hold, &format!("{field}.hold"), &mut issues),
            None if kind == StepKind::Traffic(100) => Duration::ZERO,
            None => defaults::HOLD,
        };
        steps.push(Step { kind, hold });
    }
    if count > 0 && last_traffic != 100 {
        issues.push(Issue::new(
            "steps",
            Some(raw.steps.referenced),
            "the last step must be `{traffic: 100}`: the plan ends with the new deployment \
             serving all live traffic",
        ));
    }

    let judge = raw.judge.as_ref();
    let share =
        |value: Option<&Spanned<Percent>>, field: &str, default: f64, issues: &mut Vec<Issue>| {
            match value {
                None => default,
                Some(value) => value.value.share().unwrap_or_else(|| {
                    issues.push(Issue::new(
                        field,
                        Some(value.referenced),
                        "expected a percent such as `1%` or `0.5%`",
                    ));
                    default
                }),
            }
        };
    let errors_max_increase = share(
        judge
            .and_then(|j| j.errors.as_ref())
            .map(|e| &e.max_increase),
        "judge.errors.max_increase",
        defaults::ERRORS_MAX_INCREASE,
        &mut issues,
    );
    let slow = judge.and_then(|j| j.slow.as_ref()).map(|slow| {
        let above = duration(&slow.above, "judge.slow.above", &mut issues);
        let bounds: Vec<String> = DURATION_BUCKETS
            .iter()
            .map(|b| humantime::format_duration(Duration::from_secs_f64(*b)).to_string())
            .collect();
        if !DURATION_BUCKETS
            .iter()
            .any(|b| (b - above.as_secs_f64()).abs() < 1e-9)
        {
            issues.push(Issue::new(
                "judge.slow.above",
                Some(slow.above.referenced),
                format!(
                    "must be one of the latency histogram's bounds, so that Prometheus can \
                     count it too: {}",
                    bounds.join(", ")
                ),
            ));
        }
        let of = match slow
            .of
            .as_ref()
            .map(|of| (of.value.as_str(), of.referenced))
        {
            None | Some(("head", _)) => Timing::Head,
            Some(("first_byte", _)) => Timing::FirstByte,
            Some((other, location)) => {
                issues.push(Issue::new(
                    "judge.slow.of",
                    Some(location),
                    format!("unknown timing `{other}`; use `head` or `first_byte`"),
                ));
                Timing::Head
            }
        };
        SlowCheck {
            above,
            max_increase: share(
                slow.max_increase.as_ref(),
                "judge.slow.max_increase",
                defaults::SLOW_MAX_INCREASE,
                &mut issues,
            ),
            of,
        }
    });
    let min_requests = match judge.and_then(|j| j.min_requests.as_ref()) {
        None => defaults::MIN_REQUESTS,
        Some(value) if value.value >= 1 => value.value as u64,
        Some(value) => {
            issues.push(Issue::new(
                "judge.min_requests",
                Some(value.referenced),
                "expected a whole number of requests, at least 1",
            ));
            defaults::MIN_REQUESTS
        }
    };
    let confidence = share(
        judge.and_then(|j| j.confidence.as_ref()),
        "judge.confidence",
        defaults::CONFIDENCE,
        &mut issues,
    );
    if !(0.5..1.0).contains(&confidence) {
        issues.push(Issue::new(
            "judge.confidence",
            judge
                .and_then(|j| j.confidence.as_ref())
                .map(|c| c.referenced),
            "expected a percent from 50% to below 100%, such as `99%`",
        ));
    }
    let interval = match judge.and_then(|j| j.interval.as_ref()) {
        Some(interval) => duration(interval, "judge.interval", &mut issues),
        None => defaults::INTERVAL,
    };
    if interval < Duration::from_millis(100) {
        issues.push(Issue::new(
            "judge.interval",
            judge
                .and_then(|j| j.interval.as_ref())
                .map(|i| i.referenced),
            "at least 100ms",
        ));
    }
    let no_data = match raw
        .no_data
        .as_ref()
        .map(|n| (n.value.as_str(), n.referenced))
    {
        None | Some(("pause", _)) => NoData::Pause,
        Some(("fail", _)) => NoData::Fail,
        Some((other, location)) => {
            issues.push(Issue::new(
                "no_data",
                Some(location),
                format!("unknown choice `{other}`; use `pause` or `fail`"),
            ));
            NoData::Pause
        }
    };
    if let Some(rollback) = &raw.on_rollback {
        if rollback.traffic_to.value != "baseline" {
            issues.push(Issue::new(
                "on_rollback.traffic_to",
                Some(rollback.traffic_to.referenced),
                "only `baseline` is supported: all of the new deployment's live traffic goes \
                 back to the baseline",
            ));
        }
    }

    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(Plan {
        deployment,
        baseline,
        steps,
        judge: JudgeSettings {
            errors_max_increase,
            slow,
            min_requests,
            confidence,
            interval,
        },
        no_data,
    })
}

fn duration(value: &Spanned<String>, field: &str, issues: &mut Vec<Issue>) -> Duration {
    humantime::parse_duration(value.value.trim()).unwrap_or_else(|_| {
        issues.push(Issue::new(
            field,
            Some(value.referenced),
            format!(
                "`{}` is not a duration; write e.g. `30s`, `5m` or `250ms`",
                value.value
            ),
        ));
        Duration::ZERO
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_PLAN: &str = "deployment: green\nbaseline: blue\nsteps:\n  - {mirror: 10, hold: 2m}\n  - {traffic: 10, hold: 5m}\n  - {traffic: 50, hold: 5m}\n  - {traffic: 100}\njudge:\n  errors: {max_increase: 1%}\n  slow: {above: 250ms, max_increase: 2%}\n  min_requests: 500\n  confidence: 99%\nno_data: pause\non_rollback: {traffic_to: baseline}\n";

    #[test]
    fn the_documented_plan_reads_as_written() {
        let plan = Plan::parse(ISSUE_PLAN).expect("valid");
        assert_eq!(plan.deployment, "green");
        assert_eq!(plan.baseline.as_deref(), Some("blue"));
        assert_eq!(plan.steps.len(), 4);
        assert_eq!(plan.steps[0].kind, StepKind::Mirror(10));
        assert_eq!(plan.steps[0].hold, Duration::from_secs(120));
        assert_eq!(plan.steps[3].kind, StepKind::Traffic(100));
        assert!(!plan.steps[3].is_judged());
        assert_eq!(plan.judged_steps(), 3);
        assert_eq!(plan.judge.errors_max_increase, 0.01);
        let slow = plan.judge.slow.expect("slow check");
        assert_eq!(slow.above, Duration::from_millis(250));
        assert_eq!(slow.of, Timing::Head);
        assert_eq!(plan.judge.min_requests, 500);
        assert!((plan.judge.confidence - 0.99).abs() < 1e-12);
        assert_eq!(plan.no_data, NoData::Pause);
    }

    fn problems(text: &str) -> String {
        Plan::parse(text).expect_err("invalid").render()
    }

    #[test]
    fn mistakes_name_the_field_and_the_fix() {
        let typo = problems(&ISSUE_PLAN.replace("min_requests", "min_request"));
        assert!(typo.contains("did you mean `min_requests`?"), "{typo}");
        let bound = problems(&ISSUE_PLAN.replace("above: 250ms", "above: 300ms"));
        assert!(
            bound.contains("judge.slow.above") && bound.contains("250ms"),
            "{bound}"
        );
        let order = problems(&ISSUE_PLAN.replace("traffic: 50", "traffic: 5"));
        assert!(
            order.contains("steps[2].traffic") && order.contains("more traffic"),
            "{order}"
        );
        let unfinished = problems(&ISSUE_PLAN.replace("  - {traffic: 100}\n", ""));
        assert!(unfinished.contains("traffic: 100"), "{unfinished}");
        let hold = problems(&ISSUE_PLAN.replace("hold: 5m}", "hold: soon}"));
        assert!(
            hold.contains("steps[1].hold") && hold.contains("not a duration"),
            "{hold}"
        );
        let both =
            problems(&ISSUE_PLAN.replace("{mirror: 10, hold: 2m}", "{mirror: 10, traffic: 5}"));
        assert!(both.contains("exactly one of"), "{both}");
    }
}
