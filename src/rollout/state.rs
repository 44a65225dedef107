//! A rollout's state on disk, beside the endpoint file: what the controller resumes from, what
//! `rollout status`, `switchyard show` and the gateway's metrics read, and the audit log of its
//! decisions.
//!
//! For `endpoint.yaml` the files are `endpoint.yaml.rollout.json` (the state, replaced whole on
//! every change), `endpoint.yaml.rollout.log` (one JSON line per decision) and
//! `endpoint.yaml.rollout.control` (an operator's request, taken by the controller).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::edit::write_atomically;
use super::plan::{Plan, StepKind};
use super::step::{Assessment, Observed};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Steps are being applied and judged.
    Running,
    /// Nothing moves until an operator resumes, promotes or aborts (or, when paused for want of
    /// data, until a verdict comes).
    Paused,
    /// All live traffic went back to the baseline.
    RolledBack,
    /// The last step's traffic serves.
    Succeeded,
}

impl Status {
    /// Whether the rollout is over.
    pub fn is_final(self) -> bool {
        matches!(self, Status::RolledBack | Status::Succeeded)
    }

    /// The word for it, as in the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused => "paused",
            Status::RolledBack => "rolled_back",
            Status::Succeeded => "succeeded",
        }
    }
}

/// Why a rollout is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseCause {
    /// `rollout pause`.
    Operator,
    /// The hold ended without a verdict and the plan says `no_data: pause`; judging goes on.
    NoData,
    /// Someone changed the traffic in the endpoint file.
    HandEdit,
}

/// Cumulative counts per gateway (or per Prometheus server) and deployment.
pub type Totals = BTreeMap<String, BTreeMap<String, Observed>>;

/// The state of one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// The plan file, as given.
    pub plan_file: String,
    /// The plan's text, to tell a resumed rollout from another plan.
    pub plan_text: String,
    /// The plan as validated.
    pub plan: Plan,
    /// The deployment green is compared with.
    pub baseline: String,
    /// Where it stands.
    pub status: Status,
    /// Why it is paused.
    #[serde(default)]
    pub paused: Option<PauseCause>,
    /// The step being applied or judged, from 0.
    pub step: usize,
    /// When the step's traffic was written (Unix milliseconds).
    #[serde(default)]
    pub step_written_at: Option<u64>,
    /// When every gateway served it, which starts the step's clock.
    #[serde(default)]
    pub step_started_at: Option<u64>,
    /// The traffic and mirror shares the controller last wrote.
    #[serde(default)]
    pub written: Option<Shares>,
    /// The counts when the step's clock started.
    #[serde(default)]
    pub start_totals: Totals,
    /// Green's and the baseline's answers in the step so far.
    #[serde(default)]
    pub observed: (Observed, Observed),
    /// The gateways not yet serving the step.
    #[serde(default)]
    pub waiting_for: Vec<String>,
    /// The last assessment.
    #[serde(default)]
    pub assessment: Option<Assessment>,
    /// Why the rollout ended or paused, in words.
    #[serde(default)]
    pub reason: Option<String>,
    /// How many decisions of each kind were made.
    #[serde(default)]
    pub decisions: BTreeMap<String, u64>,
    /// The controller's process, while one runs.
    #[serde(default)]
    pub controller_pid: Option<u32>,
    /// When the state was last written (Unix milliseconds).
    pub updated_at: u64,
}

/// The shares a step writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shares {
    /// `traffic` entries written.
    pub traffic: BTreeMap<String, u8>,
    /// `mirror_traffic` entries written.
    pub mirror: BTreeMap<String, u8>,
}

/// The files of the rollout of `config`.
#[derive(Debug, Clone)]
pub struct Files {
    /// The state.
    pub state: PathBuf,
    /// The audit log.
    pub log: PathBuf,
    /// An operator's request.
    pub control: PathBuf,
}

impl Files {
    /// The files beside the endpoint file `config`.
    pub fn beside(config: &Path) -> Files {
        let with = |suffix: &str| {
            let mut name = config.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        Files {
            state: with(".rollout.json"),
            log: with(".rollout.log"),
            control: with(".rollout.control"),
        }
    }

    /// The state, if a rollout was ever started here.
    pub fn read_state(&self) -> Result<Option<RolloutState>, String> {
        match std::fs::read_to_string(&self.state) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|error| {
                format!("{} is not a rollout state: {error}", self.state.display())
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(format!("cannot read {}: {error}", self.state.display())),
        }
    }

    /// Replaces the state whole (temporary file and rename, so a reader never sees half).
    pub fn write_state(&self, state: &RolloutState) -> Result<(), String> {
        let text = serde_json::to_string_pretty(state).map_err(|e| e.to_string())?;
        write_atomically(&self.state, &text).map_err(|error| error.to_string())
    }

    /// Appends one decision to the audit log.
    pub fn log_event(&self, event: &serde_json::Value) -> Result<(), String> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|error| format!("cannot open {}: {error}", self.log.display()))?;
        writeln!(file, "{event}")
            .map_err(|error| format!("cannot write {}: {error}", self.log.display()))
    }

    /// Leaves a request for the controller.
    pub fn request(&self, command: Command) -> Result<(), String> {
        write_atomically(&self.control, command.as_str()).map_err(|error| error.to_string())
    }

    /// Takes the pending request, if any.
    pub fn take_request(&self) -> Option<Command> {
        let text = std::fs::read_to_string(&self.control).ok()?;
        let _ = std::fs::remove_file(&self.control);
        Command::parse(text.trim())
    }
}

/// What an operator asks of a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Hold everything where it is.
    Pause,
    /// Go on from where it was paused.
    Resume,
    /// Roll back now.
    Abort,
    /// Skip to the last step.
    Promote,
}

impl Command {
    /// The word in the control file.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
            Command::Promote => "promote",
        }
    }

    fn parse(word: &str) -> Option<Command> {
        Some(match word {
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "abort" => Command::Abort,
            "promote" => Command::Promote,
            _ => return None,
        })
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RolloutState {
    /// How long the step has held, if its clock started.
    pub fn held(&self) -> Option<Duration> {
        self.step_started_at
            .map(|started| Duration::from_millis(now_ms().saturating_sub(started)))
    }

    /// The step's traffic, in words: `traffic 10%` or `mirror 10%`.
    pub fn step_words(&self) -> String {
        match self.plan.steps.get(self.step).map(|step| step.kind) {
            Some(StepKind::Traffic(percent)) => format!("traffic {percent}%"),
            Some(StepKind::Mirror(percent)) => format!("mirror {percent}%"),
            None => "done".to_string(),
        }
    }

    /// A few lines a person reads at a glance.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let steps = self.plan.steps.len();
        let shown = (self.step + 1).min(steps);
        let status = match (&self.status, &self.paused) {
            (Status::Paused, Some(PauseCause::Operator)) => "paused by an operator".to_string(),
            (Status::Paused, Some(PauseCause::NoData)) => {
                "paused: not enough data for a verdict (still judging)".to_string()
            }
            (Status::Paused, Some(PauseCause::HandEdit)) => {
                "paused: the traffic was changed by hand".to_string()
            }
            (status, _) => status.as_str().replace('_', " "),
        };
        let _ = writeln!(
            out,
            "rollout of {} against {}: {status}, step {shown} of {steps} ({})",
            self.plan.deployment,
            self.baseline,
            self.step_words()
        );
        if let Some(reason) = &self.reason {
            let _ = writeln!(out, "  {reason}");
        }
        if self.status.is_final() {
            return out;
        }
        match (self.held(), self.plan.steps.get(self.step)) {
            (Some(held), Some(step)) => {
                let _ = writeln!(
                    out,
                    "  held {} of {}",
                    humantime::format_duration(Duration::from_secs(held.as_secs())),
                    humantime::format_duration(step.hold)
                );
            }
            _ if !self.waiting_for.is_empty() => {
                let _ = writeln!(
                    out,
                    "  waiting until every gateway serves the step: {}",
                    self.waiting_for.join(", ")
                );
            }
            _ => {}
        }
        let (green, baseline) = self.observed;
        let _ = writeln!(
            out,
            "  requests this step: {} {}, {} {} (at least {} each to pass)",
            self.plan.deployment,
            green.requests,
            self.baseline,
            baseline.requests,
            self.plan.judge.min_requests
        );
        if let Some(assessment) = &self.assessment {
            for (check, evidence) in &assessment.checks {
                let _ = writeln!(
                    out,
                    "  {check}: {} {}, {} {}; allowed +{:.2} points: {}",
                    self.plan.deployment,
                    evidence.green,
                    self.baseline,
                    evidence.baseline,
                    100.0 * evidence.margin,
                    evidence.verdict
                );
            }
        }
        out
    }
}
