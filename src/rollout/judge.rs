//! The judge: is green worse than the baseline, on the same live traffic, by more than the
//! margin the plan allows? A pure function of counts, so it can be simulated and tested
//! without a socket.
//!
//! # The test
//!
//! Each request to a deployment is a trial that is *bad* (an error, or slower than the plan's
//! threshold) or not. For each deployment the judge keeps an anytime-valid confidence sequence
//! for its bad share `p`: the set of `p0` whose Beta(1/2, 1/2)-mixture likelihood ratio
//!
//! ```text
//! M_n(p0) = B(1/2 + x, 1/2 + n - x) / B(1/2, 1/2) / (p0^x (1 - p0)^(n - x))
//! ```
//!
//! is below `1/a`, after `x` bad answers in `n`. `M_n(p)` at the true `p` is a nonnegative
//! martingale of mean 1, so by Ville's inequality the chance that it *ever* reaches `1/a`,
//! however often one looks, is at most `a`: the sequence holds the true share at every moment
//! of the step at once, with probability at least `1 - a`.
//!
//! Green is **worse** once even the lowest share its sequence allows exceeds the highest the
//! baseline's allows by more than the margin; **not worse** once the highest green share
//! allowed is within the margin of the lowest baseline share allowed; otherwise there is **not
//! enough data yet**. A verdict is wrong only if a sequence missed its true share, so each is
//! wrong with probability at most the sum of the `a`s spent on it. A rollout spends its
//! `1 - confidence` evenly over its judged steps and checks, and each check over its two
//! sequences: a green as good as the baseline is rolled back with probability at most
//! `1 - confidence` over the whole rollout, however long it runs and however often it is
//! judged.
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

/// Compares green with the baseline, spending `alpha` (at most 1) on the verdict: half on
/// each deployment's sequence.
pub fn judge(green: Counts, baseline: Counts, margin: f64, alpha: f64) -> Evidence {
    let each = alpha / 2.0;
    let green_bounds = confidence_sequence(green, each);
    let baseline_bounds = confidence_sequence(baseline, each);
    let least = green_bounds.0 - baseline_bounds.1;
    let most = green_bounds.1 - baseline_bounds.0;
    let verdict = if least > margin {
        Verdict::Worse
    } else if most <= margin {
        Verdict::NotWorse
    } else {
        Verdict::NotEnoughData
    };
    Evidence {
        green,
        baseline,
        green_bounds,
        baseline_bounds,
        margin,
        verdict,
    }
}

/// The shares `p0` the mixture martingale has not ruled out at level `alpha`: an interval
/// around the observed share (the log-ratio is convex in `p0`, lowest there).
pub fn confidence_sequence(counts: Counts, alpha: f64) -> (f64, f64) {
    let n = counts.requests as f64;
    let x = counts.bad.min(counts.requests) as f64;
    if n == 0.0 {
        return (0.0, 1.0);
    }
    let threshold = (1.0 / alpha).ln();
    let mixture = ln_beta(0.5 + x, 0.5 + n - x) - ln_beta(0.5, 0.5);
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
