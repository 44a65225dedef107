//! How often does the rollout judge roll back a green that is as good as blue, and how fast does
//! it catch one that is worse, at realistic traffic? And how does a Flagger-style rule (error
//! rate over the last minute above a fixed threshold, checked every minute, one failed check
//! rolls back) do on the same simulated traffic?
//!
//! No sockets: each simulated rollout draws its answers from a seeded generator, so the table is
//! the same on every run. `cargo bench --bench judge` prints it (a few minutes on 2 cores).

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard::rollout::plan::Plan;
use switchyard::rollout::step::{Decision, Observed, assess};

/// One simulated second of traffic: how many of `requests` were bad, each with chance `p`.
/// Exact binomial draws by jumping from one bad answer to the next (geometric gaps), so the
/// cost is the number of bad answers, not of requests.
fn bad_answers(rng: &mut SmallRng, requests: u64, p: f64) -> u64 {
    if p <= 0.0 || requests == 0 {
        return 0;
    }
    let log_q = (1.0 - p).ln();
    let (mut at, mut bad) = (0u64, 0u64);
    loop {
        let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        at += (u.ln() / log_q).floor() as u64 + 1;
        if at > requests {
            return bad;
        }
        bad += 1;
    }
}

#[derive(Clone, Copy)]
struct Scenario {
    rps: u64,
    blue_errors: f64,
    green_errors: f64,
    blue_slow: f64,
    green_slow: f64,
    error_margin: f64,
}

#[derive(Default)]
struct Tally {
    runs: u32,
    rolled_back: u32,
    paused: u32,
    /// Green requests and seconds until the rollback, for the runs rolled back.
    caught_after: Vec<(u64, u64)>,
}

/// Shares of traffic of the judged steps, each held for `HOLD`, judged every `INTERVAL`.
const STEPS: [u64; 2] = [10, 50];
const HOLD: u64 = 300;
const INTERVAL: u64 = 10;

fn plan(scenario: &Scenario) -> Plan {
    let text = format!(
        "deployment: green\nbaseline: blue\nsteps:\n  - {{traffic: 10, hold: {HOLD}s}}\n  \
         - {{traffic: 50, hold: {HOLD}s}}\n  - {{traffic: 100}}\njudge:\n  errors: \
         {{max_increase: {}%}}\n  slow: {{above: 250ms, max_increase: 2%}}\n  min_requests: 200\n  \
         confidence: 99%\n  interval: {INTERVAL}s\n",
        scenario.error_margin * 100.0
    );
    Plan::parse(&text).expect("a valid plan")
}

/// One rollout judged by Switchyard's rule.
fn switchyard_rollout(rng: &mut SmallRng, s: &Scenario, plan: &Plan, tally: &mut Tally) {
    let mut green_total = 0;
    let mut elapsed = 0;
    for share in STEPS {
        let (mut green, mut blue) = (Observed::default(), Observed::default());
        let hold = Duration::from_secs(HOLD);
        let mut second = 0;
        loop {
            for _ in 0..INTERVAL {
                let to_green = s.rps * share / 100;
                let to_blue = s.rps - to_green;
                green.requests += to_green;
                green.errors += bad_answers(rng, to_green, s.green_errors);
                green.slow += bad_answers(rng, to_green, s.green_slow);
                blue.requests += to_blue;
                blue.errors += bad_answers(rng, to_blue, s.blue_errors);
                blue.slow += bad_answers(rng, to_blue, s.blue_slow);
            }
            second += INTERVAL;
            let held = Duration::from_secs(second);
            match assess(plan, hold, held, green, blue).decision {
                Decision::Wait => continue,
                Decision::Pass => break,
                Decision::RollBack => {
                    tally.rolled_back += 1;
                    tally
                        .caught_after
                        .push((green_total + green.requests, elapsed + second));
                    return;
                }
                Decision::NoData => {
                    tally.paused += 1;
                    return;
                }
            }
        }
        green_total += green.requests;
        elapsed += second;
    }
}

/// The same traffic judged the Flagger way: every 60 s, green's error rate over the last
/// minute against a fixed threshold (blue's rate plus the margin, as if known in advance);
/// one failed check rolls back. Slow answers likewise against blue's slow share plus 2%.
fn threshold_rollout(rng: &mut SmallRng, s: &Scenario, tally: &mut Tally) {
    let mut green_total = 0;
    let mut elapsed = 0;
    for share in STEPS {
        for minute in 1..=(HOLD / 60) {
            let to_green = s.rps * share / 100 * 60;
            let errors = bad_answers(rng, to_green, s.green_errors);
            let slow = bad_answers(rng, to_green, s.green_slow);
            // Blue's traffic is drawn too, so both rules see the same stream of draws.
            let to_blue = s.rps * 60 - to_green;
            let _ = bad_answers(rng, to_blue, s.blue_errors);
            let _ = bad_answers(rng, to_blue, s.blue_slow);
            let rate = |bad: u64| bad as f64 / to_green.max(1) as f64;
            if rate(errors) > s.blue_errors + s.error_margin || rate(slow) > s.blue_slow + 0.02 {
                tally.rolled_back += 1;
                tally
                    .caught_after
                    .push((green_total + to_green * minute, elapsed + minute * 60));
                return;
            }
        }
        green_total += s.rps * share / 100 * HOLD;
        elapsed += HOLD;
    }
}

fn median(values: &mut [u64]) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

fn row(label: &str, s: &Scenario, runs: u32, seed: u64) {
    let plan = plan(s);
    let mut ours = Tally::default();
    let mut theirs = Tally::default();
    let mut rng = SmallRng::seed_from_u64(seed);
    for _ in 0..runs {
        ours.runs += 1;
        switchyard_rollout(&mut rng, s, &plan, &mut ours);
        theirs.runs += 1;
        threshold_rollout(&mut rng, s, &mut theirs);
    }
    let describe = |tally: &mut Tally| {
        let share = 100.0 * f64::from(tally.rolled_back) / f64::from(tally.runs);
        let mut requests: Vec<u64> = tally.caught_after.iter().map(|(r, _)| *r).collect();
        let mut seconds: Vec<u64> = tally.caught_after.iter().map(|(_, s)| *s).collect();
        let after = match (median(&mut requests), median(&mut seconds)) {
            (Some(r), Some(s)) => format!("{r} / {s} s"),
            _ => "-".to_string(),
        };
        (format!("{share:.1}%"), after)
    };
    let (ours_share, ours_after) = describe(&mut ours);
    let (theirs_share, theirs_after) = describe(&mut theirs);
    let paused = 100.0 * f64::from(ours.paused) / f64::from(ours.runs);
    println!(
        "| {label} | {} | {:.1}% | {:.1}% | {:.2}% | {ours_share} | {paused:.1}% | {ours_after} | {theirs_share} | {theirs_after} |",
        s.rps,
        s.blue_errors * 100.0,
        s.green_errors * 100.0,
        s.error_margin * 100.0,
    );
}

fn main() {
    // `cargo test` runs benches once with `--test`-like flags; the table is for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!(
        "| green | req/s | blue errors | green errors | margin | rolled back | paused (no verdict) | caught after (green requests / time) | threshold rule: rolled back | threshold rule: caught after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut seed = 1;
    for rps in [5, 50, 500] {
        for blue_errors in [0.001, 0.005, 0.02] {
            let same = Scenario {
                rps,
                blue_errors,
                green_errors: blue_errors,
                blue_slow: 0.02,
                green_slow: 0.02,
                error_margin: 0.01,
            };
            row("as good", &same, 2_000, seed);
            let worse = Scenario {
                green_errors: 2.0 * blue_errors,
                ..same
            };
            row("2x errors", &worse, 500, seed + 1);
            let much_worse = Scenario {
                green_errors: blue_errors + 0.03,
                ..same
            };
            row("errors + 3 points", &much_worse, 500, seed + 3);
            let slower = Scenario {
                green_slow: 0.06,
                ..same
            };
            row("3x slow share", &slower, 500, seed + 2);
            seed += 4;
        }
    }
}
