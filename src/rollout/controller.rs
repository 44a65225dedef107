//! The controller: applies a plan's steps by editing the endpoint file, waits until every
//! gateway serves each one, judges it on the counts, and moves on, pauses or rolls back. Its
//! state is on disk after every change, so a controller that is stopped and started again
//! resumes where it was; while none runs, nothing moves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::edit;
use super::plan::{NoData, Plan, StepKind};
use super::source::{Source, since};
use super::state::{Command, Files, PauseCause, RolloutState, Shares, Status, now_ms};
use super::step::{Assessment, Decision, assess};
use crate::config::EndpointConfig;

/// Why a rollout could not start or go on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RolloutError(pub String);

impl From<String> for RolloutError {
    fn from(message: String) -> Self {
        RolloutError(message)
    }
}

/// A running rollout.
#[derive(Debug)]
pub struct Controller {
    config: PathBuf,
    files: Files,
    source: Source,
    state: RolloutState,
}

impl Controller {
    /// Starts the plan at `plan_file` on the endpoint file `config`, or resumes the rollout of
    /// the same plan that was left running there.
    pub fn start(
        plan_file: &Path,
        config: &Path,
        source: Source,
    ) -> Result<Controller, RolloutError> {
        let plan_text = std::fs::read_to_string(plan_file)
            .map_err(|error| format!("cannot read {}: {error}", plan_file.display()))?;
        let plan = Plan::parse(&plan_text).map_err(|error| error.in_file(plan_file).render())?;
        let endpoint = EndpointConfig::load(config).map_err(|error| error.render())?;
        let baseline = plan
            .check_against(&endpoint)
            .map_err(|problems| problems.join("\n"))?;
        let files = Files::beside(config);
        let state = match files.read_state()? {
            Some(state) if !state.status.is_final() => {
                if state.plan_text != plan_text {
                    return Err(RolloutError(format!(
                        "a rollout of {} is in progress on {} (state in {}); let it finish, or \
                         `switchyard rollout abort --config {}` it, before starting another plan",
                        state.plan_file,
                        config.display(),
                        files.state.display(),
                        config.display()
                    )));
                }
                if let Some(pid) = state.controller_pid.filter(|pid| is_alive(*pid)) {
                    if pid != std::process::id() {
                        return Err(RolloutError(format!(
                            "another controller (process {pid}) runs this rollout already"
                        )));
                    }
                }
                tracing::info!(
                    target: "switchyard::rollout",
                    step = state.step + 1,
                    "resuming the rollout where it was"
                );
                state
            }
            _ => RolloutState {
                plan_file: plan_file.display().to_string(),
                plan_text,
                plan,
                baseline,
                status: Status::Running,
                paused: None,
                step: 0,
                step_written_at: None,
                step_started_at: None,
                written: None,
                start_totals: BTreeMap::new(),
                observed: Default::default(),
                waiting_for: Vec::new(),
                assessment: None,
                reason: None,
                decisions: BTreeMap::new(),
                controller_pid: None,
                updated_at: now_ms(),
            },
        };
        let mut controller = Controller {
            config: config.to_path_buf(),
            files,
            source,
            state,
        };
        controller.state.controller_pid = Some(std::process::id());
        controller.save()?;
        Ok(controller)
    }

    /// The state as it stands.
    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    /// Runs until the rollout succeeds or is rolled back; returns how it ended.
    pub async fn run(mut self) -> Result<RolloutState, RolloutError> {
        loop {
            self.tick().await?;
            if self.state.status.is_final() {
                self.state.controller_pid = None;
                self.save()?;
                return Ok(self.state);
            }
            // A step whose clock has not started is looked at often: the sooner every gateway
            // is seen serving it, the less of its traffic goes unjudged.
            let pause = match self.state.step_started_at {
                None if self.state.status == Status::Running => {
                    self.state.plan.judge.interval.min(WAITING_LOOK)
                }
                _ => self.state.plan.judge.interval,
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// One look, and its outcome on disk. A gateway or Prometheus that does not answer holds
    /// the step where it is; only a state that cannot be written is an error.
    pub async fn tick(&mut self) -> Result<(), RolloutError> {
        if let Err(error) = self.look().await {
            tracing::warn!(target: "switchyard::rollout", %error, "cannot judge the step now; trying again");
            self.state.reason = Some(format!("cannot go on now: {error}"));
        }
        self.save()
    }

    /// An operator's request, a hand edit, then the step.
    async fn look(&mut self) -> Result<(), RolloutError> {
        if let Some(command) = self.files.take_request() {
            self.on_command(command)?;
        }
        if self.state.status.is_final() {
            return Ok(());
        }
        if self.state.status == Status::Running || self.state.paused == Some(PauseCause::NoData) {
            if let Some(changed) = self.hand_edit()? {
                self.pause(PauseCause::HandEdit, changed);
                return Ok(());
            }
        }
        if self.state.status == Status::Paused && self.state.paused != Some(PauseCause::NoData) {
            return Ok(());
        }
        if self.state.step_written_at.is_none() {
            self.write_step()?;
        }
        let Some(written) = self.state.written.clone() else {
            return Ok(());
        };
        if self.state.step_started_at.is_none() {
            let behind = self.source.not_serving(&written).await?;
            if !behind.is_empty() {
                if behind != self.state.waiting_for {
                    tracing::info!(
                        target: "switchyard::rollout",
                        waiting_for = %behind.join(", "),
                        "waiting until every gateway serves the step"
                    );
                }
                self.state.waiting_for = behind;
                return Ok(());
            }
            let waited = now_ms().saturating_sub(self.state.step_written_at.unwrap_or(0));
            self.state.waiting_for.clear();
            self.state.start_totals = self.source.totals(&self.state.plan).await?;
            self.state.step_started_at = Some(now_ms());
            self.event(
                "step_serving",
                format!(
                    "every gateway serves step {} ({}), {} ms after it was written; its clock starts",
                    self.state.step + 1,
                    self.state.step_words(),
                    waited
                ),
                json!({"waited_ms": waited}),
            );
        }
        let step = self.state.plan.steps[self.state.step].clone();
        if !step.is_judged() {
            self.finish(
                Status::Succeeded,
                "succeeded",
                format!(
                    "{} serves all live traffic; {} keeps its instances at 0%",
                    self.state.plan.deployment, self.state.baseline
                ),
                json!({}),
            );
            return Ok(());
        }
        let now = self.source.totals(&self.state.plan).await?;
        let green = since(&self.state.start_totals, &now, &self.state.plan.deployment);
        let baseline = since(&self.state.start_totals, &now, &self.state.baseline);
        let held = self.state.held().unwrap_or_default();
        let assessment = assess(&self.state.plan, step.hold, held, green, baseline);
        self.state.observed = (green, baseline);
        self.state.reason = None;
        let decision = assessment.decision;
        self.state.assessment = Some(assessment.clone());
        match decision {
            Decision::Wait => {}
            Decision::Pass => {
                if self.state.status == Status::Paused {
                    self.state.status = Status::Running;
                    self.state.paused = None;
                }
                self.event(
                    "step_passed",
                    format!(
                        "step {} ({}) passed: {}",
                        self.state.step + 1,
                        self.state.step_words(),
                        summary(&assessment)
                    ),
                    json!({"assessment": assessment}),
                );
                self.next_step(self.state.step + 1);
            }
            Decision::RollBack => {
                let reason = match assessment.failed_check() {
                    Some((check, evidence)) => format!(
                        "rolled back at step {} ({}): {check} check found {} worse than {}: {}",
                        self.state.step + 1,
                        self.state.step_words(),
                        self.state.plan.deployment,
                        self.state.baseline,
                        describe_worse(evidence)
                    ),
                    None => "rolled back".to_string(),
                };
                self.roll_back(reason, json!({"assessment": assessment}))?;
            }
            Decision::NoData => match self.state.plan.no_data {
                NoData::Fail => {
                    let reason = format!(
                        "rolled back at step {}: its hold ended without a verdict ({}) and the \
                         plan says `no_data: fail`",
                        self.state.step + 1,
                        summary(&assessment)
                    );
                    self.roll_back(reason, json!({"assessment": assessment}))?;
                }
                NoData::Pause if self.state.status == Status::Running => {
                    let reason = format!(
                        "step {} held for {} without a verdict: not enough data ({}); judging \
                         goes on, and the step passes once it can, or `rollout promote` / \
                         `abort` decide",
                        self.state.step + 1,
                        humantime::format_duration(step.hold),
                        summary(&assessment)
                    );
                    self.pause(PauseCause::NoData, reason);
                }
                NoData::Pause => {}
            },
        }
        Ok(())
    }

    fn on_command(&mut self, command: Command) -> Result<(), RolloutError> {
        if self.state.status.is_final() {
            return Ok(());
        }
        match command {
            Command::Pause => {
                self.pause(PauseCause::Operator, "paused by an operator".to_string());
            }
            Command::Resume => {
                if self.state.status != Status::Paused {
                    return Ok(());
                }
                if self.state.paused == Some(PauseCause::HandEdit) {
                    // The step's traffic is written again, and its clock starts again.
                    self.next_step(self.state.step);
                }
                self.state.status = Status::Running;
                self.state.paused = None;
                self.event("resumed", "resumed by an operator".to_string(), json!({}));
            }
            Command::Abort => {
                self.roll_back("aborted by an operator".to_string(), json!({}))?;
            }
            Command::Promote => {
                let last = self.state.plan.steps.len() - 1;
                self.state.status = Status::Running;
                self.state.paused = None;
                self.event(
                    "promoted",
                    format!("promoted by an operator from step {}", self.state.step + 1),
                    json!({"from_step": self.state.step + 1}),
                );
                self.next_step(last);
            }
        }
        Ok(())
    }

    /// The shares the current step writes.
    fn step_shares(&self, endpoint: &EndpointConfig) -> Shares {
        let kind = self.state.plan.steps[self.state.step].kind;
        let (traffic, mirror) = match kind {
            StepKind::Traffic(percent) => (percent, 0),
            StepKind::Mirror(percent) => (0, percent),
        };
        self.shares(endpoint, traffic, mirror)
    }

    /// Green at `traffic` and `mirror` percent, the baseline with the rest of the live traffic
    /// the other deployments leave.
    fn shares(&self, endpoint: &EndpointConfig, traffic: u8, mirror: u8) -> Shares {
        let green = &self.state.plan.deployment;
        let baseline = &self.state.baseline;
        let others: u32 = endpoint
            .deployments
            .iter()
            .filter(|d| d.name != *green && d.name != *baseline)
            .map(|d| u32::from(d.traffic))
            .sum();
        let rest = 100u32.saturating_sub(others + u32::from(traffic)) as u8;
        let mut shares = Shares {
            traffic: BTreeMap::from([(green.clone(), traffic), (baseline.clone(), rest)]),
            mirror: BTreeMap::new(),
        };
        let mirrored_now = endpoint.mirrored().is_some_and(|d| d.name == *green);
        if mirror > 0 || mirrored_now {
            shares.mirror.insert(green.clone(), mirror);
        }
        shares
    }

    fn write_step(&mut self) -> Result<(), RolloutError> {
        let endpoint = EndpointConfig::load(&self.config).map_err(|error| error.render())?;
        let shares = self.step_shares(&endpoint);
        self.write(&shares)?;
        self.state.step_written_at = Some(now_ms());
        self.state.written = Some(shares.clone());
        self.event(
            "step_applied",
            format!(
                "step {} of {}: {} written to {}",
                self.state.step + 1,
                self.state.plan.steps.len(),
                describe_shares(&shares),
                self.config.display()
            ),
            json!({"traffic": shares.traffic, "mirror_traffic": shares.mirror}),
        );
        Ok(())
    }

    fn write(&self, shares: &Shares) -> Result<(), RolloutError> {
        let text = crate::config::read_file(&self.config).map_err(|error| error.render())?;
        let mirror = (!shares.mirror.is_empty()).then_some(&shares.mirror);
        let edited = edit::set_shares(&text, &shares.traffic, mirror)
            .map_err(|error| format!("cannot write the step: {error}"))?;
        if edited != text {
            edit::write_atomically(&self.config, &edited).map_err(|error| error.to_string())?;
        }
        Ok(())
    }

    /// What changed in the file since the controller wrote it, if anything did.
    fn hand_edit(&self) -> Result<Option<String>, RolloutError> {
        let Some(written) = &self.state.written else {
            return Ok(None);
        };
        let endpoint = EndpointConfig::load(&self.config).map_err(|error| error.render())?;
        let share = |name: &str, mirror: bool| {
            endpoint
                .deployments
                .iter()
                .find(|d| d.name == name)
                .map_or(0, |d| if mirror { d.mirror } else { d.traffic })
        };
        let mut changed = Vec::new();
        for (map, mirror) in [(&written.traffic, false), (&written.mirror, true)] {
            for (name, percent) in map {
                let now = share(name, mirror);
                if now != *percent {
                    let key = if mirror { "mirror_traffic" } else { "traffic" };
                    changed.push(format!("{key} {name} {percent}% -> {now}%"));
                }
            }
        }
        Ok((!changed.is_empty()).then(|| {
            format!(
                "the traffic in {} was changed by hand ({}); nothing moves until `switchyard \
                 rollout resume` (which writes the step's traffic again) or `abort`",
                self.config.display(),
                changed.join(", ")
            )
        }))
    }

    fn next_step(&mut self, step: usize) {
        self.state.step = step;
        self.state.step_written_at = None;
        self.state.step_started_at = None;
        self.state.start_totals.clear();
        self.state.observed = Default::default();
        self.state.assessment = None;
        self.state.waiting_for.clear();
    }

    fn pause(&mut self, cause: PauseCause, reason: String) {
        self.state.status = Status::Paused;
        self.state.paused = Some(cause.clone());
        self.state.reason = Some(reason.clone());
        let kind = match cause {
            PauseCause::Operator => "paused",
            PauseCause::NoData => "paused_no_data",
            PauseCause::HandEdit => "paused_hand_edit",
        };
        self.event(kind, reason, json!({}));
    }

    fn roll_back(
        &mut self,
        reason: String,
        details: serde_json::Value,
    ) -> Result<(), RolloutError> {
        let endpoint = EndpointConfig::load(&self.config).map_err(|error| error.render())?;
        let shares = self.shares(&endpoint, 0, 0);
        self.write(&shares)?;
        self.state.written = Some(shares);
        self.finish(Status::RolledBack, "rolled_back", reason, details);
        Ok(())
    }

    fn finish(&mut self, status: Status, kind: &str, reason: String, details: serde_json::Value) {
        self.state.status = status;
        self.state.paused = None;
        self.state.reason = Some(reason.clone());
        self.event(kind, reason, details);
    }

    /// Records a decision: the state's tally, the audit log and the log.
    fn event(&mut self, kind: &str, message: String, details: serde_json::Value) {
        *self.state.decisions.entry(kind.to_string()).or_default() += 1;
        let line = json!({
            "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "event": kind,
            "deployment": self.state.plan.deployment,
            "baseline": self.state.baseline,
            "step": self.state.step + 1,
            "message": message,
            "details": details,
        });
        if let Err(error) = self.files.log_event(&line) {
            tracing::warn!(target: "switchyard::rollout", %error, "cannot write the audit log");
        }
        tracing::info!(target: "switchyard::rollout", event = kind, "{message}");
    }

    fn save(&mut self) -> Result<(), RolloutError> {
        self.state.updated_at = now_ms();
        Ok(self.files.write_state(&self.state)?)
    }
}

/// Whether process `pid` runs.
fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `green 10%, blue 90%` and the mirror share, if any.
fn describe_shares(shares: &Shares) -> String {
    let mut parts: Vec<String> = shares
        .traffic
        .iter()
        .map(|(name, percent)| format!("traffic {name} {percent}%"))
        .collect();
    parts.extend(
        shares
            .mirror
            .iter()
            .map(|(name, percent)| format!("mirror_traffic {name} {percent}%")),
    );
    parts.join(", ")
}

/// Each check's counts and verdict, on one line.
fn summary(assessment: &Assessment) -> String {
    assessment
        .checks
        .iter()
        .map(|(check, e)| format!("{check}: {} against {}, {}", e.green, e.baseline, e.verdict))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a check said worse, with the figures against their bounds.
fn describe_worse(e: &super::judge::Evidence) -> String {
    let mut why = Vec::new();
    if e.least_increase() > e.margin {
        why.push(format!(
            "by the exact sequences it is at least +{:.2} points worse",
            100.0 * e.least_increase()
        ));
    }
    if let Some(boundary) = e.boundary.filter(|b| e.difference - e.margin > *b) {
        why.push(format!(
            "the difference +{:.2} points is past the margin by more than the mixture test's \
             bound of {:.2}",
            100.0 * e.difference,
            100.0 * boundary
        ));
    }
    format!(
        "{} against {}, allowed +{:.2} points; {}",
        e.green,
        e.baseline,
        100.0 * e.margin,
        why.join(", and ")
    )
}

/// How often a step is looked at while it waits for the gateways to serve it.
const WAITING_LOOK: Duration = Duration::from_millis(200);

/// How long `switchyard rollout status --watch` waits between looks.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
