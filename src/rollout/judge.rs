//! The judge: is green worse than the baseline, on the same live traffic, by more than the
//! margin the plan allows? A pure function of counts, so it can be simulated and tested
//! without a socket.
//!
//! # The test
//!
//! Each request to a deployment is a trial that is *bad* (an error, or slower than the plan's
//! threshold) or not. Two tests look at the counts, each given half of the check's `alpha`:
//!
//! - **Exact confidence sequences**, one per deployment. After `x` bad answers in `n`, the
//!   shares `p0` still allowed are those whose mixture likelihood ratio
//!   `M_n(p0) = mean over b of [B(1 + x, b + n - x) / B(1, b)] / (p0^x (1 - p0)^(n - x))`,
//!   with Beta(1, b) priors for b in 999, 99, 9, 1 (shares from 0.1% to 50%), is below `1/a`.
//!   At the true share `M_n` is a nonnegative martingale of mean 1, so by Ville's inequality
//!   it *ever* reaches `1/a`, however often one looks, with probability at most `a`. Green is
//!   worse once the least share its sequence allows exceeds the most the baseline's allows by
//!   more than the margin. Valid at any count, but wide.
//! - **The normal mixture sequential test** (mSPRT, as used for always-valid A/B tests) of
//!   the difference of the two shares against the margin. Sharper once each deployment has a
//!   hundred requests; it rests on the normal approximation of the shares.
//!
//! Either test concluding **worse** rolls back; either concluding **not worse** (the
//! difference is within the margin) lets the step pass; otherwise there is **not enough data
//! yet**. A verdict is wrong only if a test erred, so a check is wrong with probability at most
//! its `alpha`. A rollout spends its `1 - confidence` evenly over its judged steps and checks:
//! a green as good as the baseline is rolled back with probability at most `1 - confidence`
//! over the whole rollout, however long it runs and however often it is judged.
//!
//! A threshold checked every interval has no such bound: every look is another chance for
//! noise to cross it. BENCHMARKS.md compares the two on simulated traffic.

use std::fmt;

/// Requests of one deployment in a window, and how many of them were bad.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Requests answered.
    pub requests: u64,
    /// Of those, bad: an error, or slower than the threshold.
    pub bad: u64,
}

impl Counts {
    /// The observed bad share; 0 without requests.
    pub fn rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.bad as f64 / self.requests as f64
        }
    }
}

/// `1.20% (12/1000)`: the share, and the counts it comes from.
impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.2}% ({}/{})",
            100.0 * self.rate(),
            self.bad,
            self.requests
        )
    }
}

/// What the judge concludes from one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Green's share of bad answers exceeds the baseline's by more than the margin.
    Worse,
    /// Green's share exceeds the baseline's by at most the margin.
    NotWorse,
    /// Neither can be said yet.
    NotEnoughData,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Worse => "worse",
            Verdict::NotWorse => "not worse",
            Verdict::NotEnoughData => "not enough data yet",
        })
    }
}

/// The judge's evidence for one check, with its verdict.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    /// Green's counts.
    pub green: Counts,
    /// The baseline's counts.
    pub baseline: Counts,
    /// The shares green's sequence allows, lowest and highest.
    pub green_bounds: (f64, f64),
    /// The shares the baseline's sequence allows.
    pub baseline_bounds: (f64, f64),
    /// Green's observed share minus the baseline's.
    pub difference: f64,
    /// How far past the margin the difference must be for the mixture test's verdict;
    /// `None` while the counts are too small for it.
    pub boundary: Option<f64>,
    /// How much worse green may be, as a share.
    pub margin: f64,
    /// What it adds up to.
    pub verdict: Verdict,
}

impl Evidence {
    /// The least green can be worse by, as the sequences stand: the figure that crossing the
    /// margin makes `worse`.
    pub fn least_increase(&self) -> f64 {
        self.green_bounds.0 - self.baseline_bounds.1
    }

    /// The most green can be worse by: within the margin makes `not worse`.
    pub fn most_increase(&self) -> f64 {
        self.green_bounds.1 - self.baseline_bounds.0
    }
}

/// Compares green with the baseline, spending `alpha` (at most 1) on the verdict: half on the
/// exact confidence sequences (a quarter on each deployment's), half on the normal mixture
/// test of the difference.
pub fn judge(green: Counts, baseline: Counts, margin: f64, alpha: f64) -> Evidence {
    let each = alpha / 4.0;
    let green_bounds = confidence_sequence(green, each);
    let baseline_bounds = confidence_sequence(baseline, each);
    let least = green_bounds.0 - baseline_bounds.1;
    let most = green_bounds.1 - baseline_bounds.0;
    let (difference, boundary) = mixture_test(green, baseline, margin, alpha / 2.0);
    let beyond = |excess: f64| boundary.is_some_and(|boundary| excess > boundary);
    let verdict = if least > margin || beyond(difference - margin) {
        Verdict::Worse
    } else if most <= margin || beyond(margin - difference) {
        Verdict::NotWorse
    } else {
        Verdict::NotEnoughData
    };
    Evidence {
        green,
        baseline,
        green_bounds,
        baseline_bounds,
        difference,
        boundary,
        margin,
        verdict,
    }
}

/// The normal mixture sequential test (mSPRT) of `p_green - p_baseline` against `margin`:
/// the observed difference, and how far from the margin it must be for a verdict at level
/// `alpha`. With the difference's variance `V` and a normal mixture of spread `tau` over the
/// alternatives, the mixture likelihood ratio reaches `1/alpha` once
///
/// ```text
/// (difference - margin)^2 >= 2 V (V + tau^2) / tau^2 * (ln(1/alpha) + ln((V + tau^2) / V) / 2)
/// ```
///
/// It rests on the normal approximation of the two shares, so the variance is taken with one
/// bad and one good answer added to each (it is never 0), and the test says nothing until each
/// deployment has [`MIXTURE_MIN_REQUESTS`]; the exact sequences cover the smaller counts.
fn mixture_test(green: Counts, baseline: Counts, margin: f64, alpha: f64) -> (f64, Option<f64>) {
    let difference = green.rate() - baseline.rate();
    if green.requests < MIXTURE_MIN_REQUESTS || baseline.requests < MIXTURE_MIN_REQUESTS {
        return (difference, None);
    }
    let variance = |counts: Counts| {
        let smoothed = (counts.bad as f64 + 1.0) / (counts.requests as f64 + 2.0);
        smoothed * (1.0 - smoothed) / counts.requests as f64
    };
    let v = variance(green) + variance(baseline);
    let tau2 = margin.max(MIXTURE_MIN_SPREAD).powi(2);
    let boundary =
        (2.0 * v * (v + tau2) / tau2 * ((1.0 / alpha).ln() + 0.5 * ((v + tau2) / v).ln())).sqrt();
    (difference, Some(boundary))
}

/// Requests each deployment needs before the normal mixture test speaks.
pub const MIXTURE_MIN_REQUESTS: u64 = 100;

/// Least spread of the mixture over the alternatives: the test is tuned to differences of
/// about the margin, and of at least half a percentage point.
const MIXTURE_MIN_SPREAD: f64 = 0.005;

/// The shares `p0` the mixture martingale has not ruled out at level `alpha`: an interval
/// around the observed share (the log-ratio is convex in `p0`, lowest there).
pub fn confidence_sequence(counts: Counts, alpha: f64) -> (f64, f64) {
    let n = counts.requests as f64;
    let x = counts.bad.min(counts.requests) as f64;
    if n == 0.0 {
        return (0.0, 1.0);
    }
    let threshold = (1.0 / alpha).ln();
    let mixture = ln_mixture(x, n);
    let log_ratio = |p0: f64| mixture - x * p0.ln() - (n - x) * (1.0 - p0).ln();
    let observed = x / n;
    let lower = if x == 0.0 {
        0.0
    } else {
        // log_ratio falls from +inf at 0 to its least at the observed share.
        bisect(0.0, observed, |p0| log_ratio(p0) >= threshold)
    };
    let upper = if x == n {
        1.0
    } else {
        bisect(observed, 1.0, |p0| log_ratio(p0) < threshold)
    };
    (lower, upper)
}

/// The priors mixed: Beta(1, b) has its mean at `1 / (1 + b)` and a spread of the same size,
/// so each one fits shares of one order of magnitude, from 0.1% to 50%.
const PRIORS: [f64; 4] = [999.0, 99.0, 9.0, 1.0];

/// `ln` of the mixture's weight of `x` bad in `n`: the mean over [`PRIORS`] of
/// `B(1 + x, b + n - x) / B(1, b)`. The part of the ratio that depends on `p0` is the same
/// for every prior, so the mixture only sets this constant.
fn ln_mixture(x: f64, n: f64) -> f64 {
    let terms = PRIORS.map(|b| ln_beta(1.0 + x, b + n - x) - ln_beta(1.0, b));
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|t| (t - top).exp()).sum();
    top + (sum / PRIORS.len() as f64).ln()
}

/// The boundary in `[low, high]` where `outside_below` turns from true to false, to 1e-12.
fn bisect(mut low: f64, mut high: f64, outside_below: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..100 {
        let middle = 0.5 * (low + high);
        if outside_below(middle) {
            low = middle;
        } else {
            high = middle;
        }
        if high - low < 1e-12 {
            break;
        }
    }
    0.5 * (low + high)
}

/// `ln B(a, b)`.
fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// `ln Γ(x)` for `x > 0`, by Lanczos' approximation (g = 7, nine terms), good to about 1e-13
/// relative over the range used here.
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEFFICIENTS[0];
    for (index, coefficient) in COEFFICIENTS.iter().enumerate().skip(1) {
        sum += coefficient / (x + index as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn counts(requests: u64, bad: u64) -> Counts {
        Counts { requests, bad }
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        // Γ(1) = Γ(2) = 1, Γ(5) = 24, Γ(1/2) = √π.
        assert!(ln_gamma(1.0).abs() < 1e-12);
        assert!(ln_gamma(2.0).abs() < 1e-12);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((ln_gamma(100.0) - 359.134_205_369_575_4).abs() < 1e-9);
    }

    #[test]
    fn the_sequence_holds_the_observed_share_and_narrows_with_data() {
        let small = confidence_sequence(counts(100, 5), 0.01);
        let large = confidence_sequence(counts(10_000, 500), 0.01);
        for (low, high) in [small, large] {
            assert!(low < 0.05 && 0.05 < high, "{low} {high}");
        }
        assert!(large.1 - large.0 < small.1 - small.0);
        assert_eq!(confidence_sequence(counts(0, 0), 0.01), (0.0, 1.0));
        assert_eq!(confidence_sequence(counts(50, 0), 0.01).0, 0.0);
        assert_eq!(confidence_sequence(counts(50, 50), 0.01).1, 1.0);
    }

    #[test]
    fn the_sequence_misses_the_true_share_no_more_often_than_its_level() {
        // 1,000 seeded runs of 2,000 trials at p = 2%, looked at every 10 trials: the share
        // of runs in which the sequence ever excluded p must stay under alpha = 5%. Ville's
        // bound makes it at most 5% in expectation (50 runs); 90 is more than 5 standard
        // deviations above that, and the seed makes the outcome fixed anyway.
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let (p, alpha) = (0.02, 0.05);
        let mut missed = 0;
        for _ in 0..1_000 {
            let mut seen = counts(0, 0);
            for trial in 1..=2_000 {
                seen.requests += 1;
                seen.bad += u64::from(rng.random_bool(p));
                if trial % 10 != 0 {
                    continue;
                }
                let (low, high) = confidence_sequence(seen, alpha);
                if p < low || p > high {
                    missed += 1;
                    break;
                }
            }
        }
        assert!(missed < 90, "missed {missed} of 1000");
    }

    #[test]
    fn a_clearly_worse_green_is_worse_and_an_equal_one_is_not() {
        let worse = judge(counts(2_000, 200), counts(20_000, 200), 0.01, 0.01);
        assert_eq!(worse.verdict, Verdict::Worse, "{worse:?}");
        assert!(worse.least_increase() > 0.01);
        let same = judge(counts(5_000, 50), counts(50_000, 500), 0.01, 0.01);
        assert_eq!(same.verdict, Verdict::NotWorse, "{same:?}");
        let early = judge(counts(20, 1), counts(200, 2), 0.01, 0.01);
        assert_eq!(early.verdict, Verdict::NotEnoughData, "{early:?}");
    }
}
