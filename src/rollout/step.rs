//! What a step's counts so far mean for the step: the one rule that the controller follows and
//! the simulation in `benches/judge.rs` measures.

use std::time::Duration;

use super::judge::{Counts, Evidence, Verdict, judge};
use super::plan::Plan;

/// What one deployment answered in a step so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Observed {
    /// Requests answered.
    pub requests: u64,
    /// Of those, errors (5xx, 408, 429).
    pub errors: u64,
    /// Of those, slower than the plan's threshold.
    pub slow: u64,
}

/// What the step does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Keep going: the hold, the minimum requests or a verdict are still to come.
    Wait,
    /// Every check says not worse, the hold is over and both deployments have the minimum.
    Pass,
    /// A check says worse: roll back now.
    RollBack,
    /// The hold is over without a verdict (or without the minimum): the plan's `no_data`.
    NoData,
}

/// The judge's evidence on each check and what it adds up to.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assessment {
    /// `errors`, then `slow` if the plan has it.
    pub checks: Vec<(String, Evidence)>,
    /// What the step does.
    pub decision: Decision,
}

impl Assessment {
    /// The first check that says worse, if any.
    pub fn failed_check(&self) -> Option<&(String, Evidence)> {
        self.checks
            .iter()
            .find(|(_, evidence)| evidence.verdict == Verdict::Worse)
    }
}

/// The share of `1 - confidence` that one check of one step may spend: evenly over the
/// judged steps and the checks, so the whole rollout keeps the plan's bound.
pub fn alpha_per_check(plan: &Plan) -> f64 {
    let checks = 1 + usize::from(plan.judge.slow.is_some());
    (1.0 - plan.judge.confidence) / (plan.judged_steps().max(1) * checks) as f64
}

/// Judges a step that has held for `held`, with `green` and `baseline` answered so far.
pub fn assess(
    plan: &Plan,
    hold: Duration,
    held: Duration,
    green: Observed,
    baseline: Observed,
) -> Assessment {
    let alpha = alpha_per_check(plan);
    let counts = |observed: Observed, bad: u64| Counts {
        requests: observed.requests,
        bad,
    };
    let mut checks = vec![(
        "errors".to_string(),
        judge(
            counts(green, green.errors),
            counts(baseline, baseline.errors),
            plan.judge.errors_max_increase,
            alpha,
        ),
    )];
    if let Some(slow) = plan.judge.slow {
        checks.push((
            "slow".to_string(),
            judge(
                counts(green, green.slow),
                counts(baseline, baseline.slow),
                slow.max_increase,
                alpha,
            ),
        ));
    }
    let worse = checks
        .iter()
        .any(|(_, evidence)| evidence.verdict == Verdict::Worse);
    let all_not_worse = checks
        .iter()
        .all(|(_, evidence)| evidence.verdict == Verdict::NotWorse);
    let enough =
        green.requests >= plan.judge.min_requests && baseline.requests >= plan.judge.min_requests;
    let decision = if worse {
        Decision::RollBack
    } else if held < hold {
        Decision::Wait
    } else if all_not_worse && enough {
        Decision::Pass
    } else {
        Decision::NoData
    };
    Assessment { checks, decision }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::parse(
            "deployment: green\nsteps:\n  - {traffic: 10, hold: 1m}\n  - {traffic: 100}\n\
             judge: {errors: {max_increase: 2%}, min_requests: 100}\n",
        )
        .expect("valid")
    }

    fn observed(requests: u64, errors: u64) -> Observed {
        Observed {
            requests,
            errors,
            slow: 0,
        }
    }

    #[test]
    fn the_rollout_keeps_its_bound_whatever_the_number_of_steps() {
        assert!((alpha_per_check(&plan()) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn worse_rolls_back_at_once_and_a_pass_waits_for_the_hold() {
        let minute = Duration::from_secs(60);
        let bad = assess(
            &plan(),
            minute,
            Duration::ZERO,
            observed(1000, 200),
            observed(9000, 9),
        );
        assert_eq!(bad.decision, Decision::RollBack);
        assert_eq!(
            bad.failed_check().map(|(name, _)| name.as_str()),
            Some("errors")
        );
        let good = (observed(3000, 3), observed(27_000, 27));
        assert_eq!(
            assess(&plan(), minute, minute / 2, good.0, good.1).decision,
            Decision::Wait
        );
        assert_eq!(
            assess(&plan(), minute, minute, good.0, good.1).decision,
            Decision::Pass
        );
        let few = (observed(50, 0), observed(450, 0));
        assert_eq!(
            assess(&plan(), minute, minute, few.0, few.1).decision,
            Decision::NoData
        );
    }
}
