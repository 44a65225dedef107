//! Whether an instance should get traffic: what its readiness probes found ([`super::probe`]),
//! and passive health from the answers it gives real requests.
//!
//! Passive health does two things. Refused connections and runs of failures eject the instance
//! for a backoff period. And every answer feeds an error rate that the balancer multiplies into
//! the instance's load, so an instance that answers 429 or 5xx quickly looks busier, not idler:
//! fast failures must never attract more traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consecutive failed answers (5xx, 429, connection errors) that eject an instance.
pub const EJECT_AFTER_FAILURES: u32 = 5;
/// First ejection period; doubles on each ejection in a row.
pub const EJECT_BASE: Duration = Duration::from_secs(1);
/// Longest ejection period.
pub const EJECT_MAX: Duration = Duration::from_secs(30);

/// Weight of the newest answer in the error rate (an exponentially weighted moving average).
const ERROR_RATE_ALPHA: f64 = 0.1;
/// Fixed-point scale of the stored error rate.
const PPM: f64 = 1_000_000.0;

/// What an instance's answer says about its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer below 500 other than 429.
    Success,
    /// 5xx or 429: the instance is failing or overloaded.
    Failure,
    /// The connection was refused or broke: eject at once.
    ConnectFailure,
}

impl Outcome {
    /// What an answer with `status` says about the instance that gave it.
    pub fn of_answer(status: http::StatusCode) -> Outcome {
        if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// Health state of one instance; all atomics, read on every request.
#[derive(Debug)]
pub struct Health {
    /// False while readiness probes fail (or before the first success when probes are on).
    ready: AtomicBool,
    /// Milliseconds since `epoch` until which the instance is ejected.
    ejected_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections_in_a_row: AtomicU32,
    /// Error rate in parts per million.
    error_rate_ppm: AtomicU32,
    epoch: Instant,
    /// Whose health this is, for the log lines of its changes.
    deployment: Arc<str>,
    instance: Box<str>,
}

impl Health {
    /// The health of `instance` of `deployment`: ready at once without probes; unready until
    /// the first passed probe with them.
    pub fn new(probed: bool, deployment: &str, instance: &str) -> Health {
        Health {
            deployment: deployment.into(),
            instance: instance.into(),
            ready: AtomicBool::new(!probed),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections_in_a_row: AtomicU32::new(0),
            error_rate_ppm: AtomicU32::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether the readiness probe passes.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Whether passive health has taken the instance out for now.
    pub fn is_ejected(&self) -> bool {
        // Read on every pick: the common case, never ejected or ejection over, skips the clock.
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if self.now_ms() < until {
            return true;
        }
        // Over: a racing new ejection may be overwritten here, which at worst lets one
        // request through to an instance that is failing anyway.
        let ended = self
            .ejected_until_ms
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if ended {
            tracing::info!(
                deployment = &*self.deployment,
                instance = &*self.instance,
                "instance back in rotation: its ejection period is over"
            );
        }
        false
    }

    /// Ready and not ejected.
    pub fn is_available(&self) -> bool {
        self.is_ready() && !self.is_ejected()
    }

    /// Recent share of failed answers, 0.0..=1.0.
    pub fn error_rate(&self) -> f64 {
        f64::from(self.error_rate_ppm.load(Ordering::Relaxed)) / PPM
    }

    /// Factor the balancer multiplies the load by: 1 for a healthy instance, up to 17.
    pub fn load_factor_ppm(&self) -> u64 {
        PPM as u64 + 16 * u64::from(self.error_rate_ppm.load(Ordering::Relaxed))
    }

    /// Records the answer to one request.
    pub fn record(&self, outcome: Outcome) {
        let failed = outcome != Outcome::Success;
        self.update_error_rate(failed);
        if !failed {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.ejections_in_a_row.store(0, Ordering::Relaxed);
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if outcome == Outcome::ConnectFailure {
            self.eject("the connection was refused or broke");
        } else if failures >= EJECT_AFTER_FAILURES {
            self.eject("5 answers in a row were 5xx or 429");
        }
    }

    fn eject(&self, reason: &str) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let in_a_row = self.ejections_in_a_row.fetch_add(1, Ordering::Relaxed);
        let period = EJECT_BASE
            .saturating_mul(1 << in_a_row.min(16))
            .min(EJECT_MAX);
        // Never 0, which means "not ejected".
        let until = self.now_ms() + period.as_millis() as u64 + 1;
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        tracing::warn!(
            deployment = &*self.deployment,
            instance = &*self.instance,
            reason,
            period = %humantime::format_duration(period),
            "instance ejected: it gets no traffic for the period"
        );
    }

    fn update_error_rate(&self, failed: bool) {
        let sample = if failed { PPM } else { 0.0 };
        // A lost update under contention only delays the average a little; no CAS loop needed.
        let old = f64::from(self.error_rate_ppm.load(Ordering::Relaxed));
        let new = old + ERROR_RATE_ALPHA * (sample - old);
        self.error_rate_ppm.store(new as u32, Ordering::Relaxed);
    }

    /// A readiness probe passed, the `passes`-th in a row, enough to be ready.
    pub(super) fn probe_passed(&self, passes: u32) {
        if !self.ready.swap(true, Ordering::Relaxed) {
            tracing::info!(
                deployment = &*self.deployment,
                instance = &*self.instance,
                passes,
                "instance is ready: its readiness probe passes"
            );
        }
    }

    /// A readiness probe failed for `reason`, the `fails`-th in a row; at `threshold` the
    /// instance is unready.
    pub(super) fn probe_failed(&self, reason: &str, fails: u32, threshold: u32) {
        if fails >= threshold && self.ready.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                deployment = &*self.deployment,
                instance = &*self.instance,
                reason,
                fails,
                "instance is unready: its readiness probe fails, it gets no traffic"
            );
        } else if !self.is_ready() && fails == 1 {
            // An instance that never became ready says why, once per run of failures, at the
            // level operators read: this is the line that explains a deployment's 503s.
            tracing::warn!(
                deployment = &*self.deployment,
                instance = &*self.instance,
                reason,
                "instance is not ready: its readiness probe fails"
            );
        } else {
            tracing::debug!(
                deployment = &*self.deployment,
                instance = &*self.instance,
                reason,
                fails,
                "readiness probe failed"
            );
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_ejects_at_once() {
        let health = Health::new(false, "blue", "http://a:1");
        assert!(health.is_available());
        health.record(Outcome::ConnectFailure);
        assert!(health.is_ejected());
        assert!(!health.is_available());
    }

    #[test]
    fn a_run_of_failures_ejects_and_a_success_resets_the_run() {
        let health = Health::new(false, "blue", "http://a:1");
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            health.record(Outcome::Failure);
        }
        health.record(Outcome::Success);
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            health.record(Outcome::Failure);
        }
        assert!(!health.is_ejected(), "the success broke the run");
        health.record(Outcome::Failure);
        assert!(health.is_ejected());
    }

    #[test]
    fn failures_raise_the_load_factor() {
        let health = Health::new(false, "blue", "http://a:1");
        assert_eq!(health.load_factor_ppm(), 1_000_000);
        for _ in 0..3 {
            health.record(Outcome::Failure);
        }
        assert!(health.error_rate() > 0.2, "{}", health.error_rate());
        assert!(health.load_factor_ppm() > 4_000_000);
        for _ in 0..100 {
            health.record(Outcome::Success);
        }
        assert!(health.error_rate() < 0.01);
    }

    #[test]
    fn a_probed_instance_starts_unready() {
        assert!(!Health::new(true, "blue", "http://a:1").is_ready());
        assert!(Health::new(false, "blue", "http://a:1").is_ready());
    }
}
