//! The gated rollout end to end on loopback: demo model servers under continuous load, gateways
//! watching one endpoint file, and the controller carrying green through its plan: promoted
//! when good, rolled back when it fails or is slow, paused without data or after a hand edit,
//! resumed after a restart, across several replicas, and with Prometheus as the source.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use switchyard::config::EndpointConfig;
use switchyard::model_server::{Model, ModelServer, ModelServerOptions};
use switchyard::rollout::controller::Controller;
use switchyard::rollout::source::Source;
use switchyard::rollout::state::{Files, PauseCause, RolloutState, Status};
use switchyard::{Gateway, GatewayOptions};

/// Longest any rollout here may run.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(60);

/// What the load's clients saw: answers by deployment and status.
#[derive(Debug, Default)]
struct Seen {
    answers: HashMap<(String, StatusCode), u64>,
    /// Requests that got no answer at all (a connection failure).
    unanswered: u64,
}

impl Seen {
    fn failed(&self) -> u64 {
        self.answers
            .iter()
            .filter(|((_, status), _)| *status != StatusCode::OK)
            .map(|(_, count)| count)
            .sum::<u64>()
            + self.unanswered
    }

    fn failed_by(&self, deployment: &str) -> u64 {
        self.answers
            .iter()
            .filter(|((d, status), _)| d == deployment && *status != StatusCode::OK)
            .map(|(_, count)| count)
            .sum()
    }
}

/// Continuous load on `gateways` from 4 clients until stopped (at most 60 s, 400,000 requests).
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Seen>>,
}

impl Load {
    fn start(gateways: &[std::net::SocketAddr]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..4)
            .map(|index| {
                let stop = Arc::clone(&stop);
                let addr = gateways[index % gateways.len()];
                tokio::spawn(async move {
                    let client = client();
                    let mut seen = Seen::default();
                    let started = Instant::now();
                    for _ in 0..100_000 {
                        if stop.load(Ordering::Relaxed) || started.elapsed() > ROLLOUT_LIMIT {
                            break;
                        }
                        match client.request(score_request(addr, None)).await {
                            Ok(response) => {
                                let answer = read(response).await;
                                let deployment = answer.deployment.unwrap_or_default();
                                *seen.answers.entry((deployment, answer.status)).or_default() += 1;
                            }
                            Err(_) => seen.unanswered += 1,
                        }
                    }
                    seen
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Seen::default();
        for task in self.tasks {
            let seen = task.await.expect("load task");
            for (key, count) in seen.answers {
                *all.answers.entry(key).or_default() += count;
            }
            all.unanswered += seen.unanswered;
        }
        all
    }
}

/// Blue and green demo servers, and an endpoint file with blue at 100% and green at 0%.
struct Endpoint {
    _blue: ModelServer,
    _green: ModelServer,
    file: EndpointFile,
}

impl Endpoint {
    async fn new(green: ModelServerOptions) -> Endpoint {
        let blue = model_server(Model::Diabetes, "blue-1").await;
        let green = ModelServer::bind(loopback(), green)
            .await
            .expect("bind green");
        let file = EndpointFile::new(&endpoint_yaml(&[
            ("blue", 100, &[&blue.url()]),
            ("green", 0, &[&green.url()]),
        ]));
        Endpoint {
            _blue: blue,
            _green: green,
            file,
        }
    }

    fn plan(&self, text: &str) -> PathBuf {
        let path = self.file.dir.path().join("plan.yaml");
        std::fs::write(&path, text).expect("write the plan");
        path
    }

    fn traffic(&self) -> (u8, u8, u8) {
        let config = EndpointConfig::load(&self.file.path).expect("valid endpoint file");
        let share = |name: &str| {
            let d = config
                .deployments
                .iter()
                .find(|d| d.name == name)
                .expect("deployment");
            (d.traffic, d.mirror)
        };
        (share("blue").0, share("green").0, share("green").1)
    }
}

fn green(failure_rate: f64, latency: Duration) -> ModelServerOptions {
    let mut options = ModelServerOptions::new(Model::Constant, "green-1");
    options.failure_rate = failure_rate;
    options.latency = latency;
    options
}

async fn gateway_with_admin(path: &Path) -> (Gateway, String) {
    let mut options = GatewayOptions::new(path, loopback());
    options.admin_listen = Some(loopback());
    let gateway = Gateway::start(options).await.expect("start");
    let admin = format!("http://{}", gateway.admin_addr().expect("admin"));
    (gateway, admin)
}

async fn run(controller: Controller) -> RolloutState {
    tokio::time::timeout(ROLLOUT_LIMIT, controller.run())
        .await
        .expect("the rollout ended in time")
        .expect("the rollout ran")
}

/// Ticks `controller` until `done` holds of its state.
async fn tick_until(controller: &mut Controller, what: &str, done: impl Fn(&RolloutState) -> bool) {
    let started = Instant::now();
    while !done(controller.state()) {
        assert!(
            started.elapsed() < ROLLOUT_LIMIT,
            "{what}: {:#?}",
            controller.state()
        );
        controller.tick().await.expect("tick");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const GOOD_PLAN: &str = "deployment: green\nbaseline: blue\nsteps:\n  - {mirror: 10, hold: 1s}\n  - {traffic: 10, hold: 1s}\n  - {traffic: 50, hold: 1s}\n  - {traffic: 100}\njudge:\n  errors: {max_increase: 5%}\n  min_requests: 100\n  interval: 200ms\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_green_is_carried_through_every_step_without_a_failed_request() {
    let endpoint = Endpoint::new(green(0.0, Duration::ZERO)).await;
    let (gateway, admin) = gateway_with_admin(&endpoint.file.path).await;
    let load = Load::start(&[gateway.addr()]);
    let plan = endpoint.plan(GOOD_PLAN);
    let controller = Controller::start(
        &plan,
        &endpoint.file.path,
        Source::Admin(vec![admin.clone()]),
    )
    .expect("start");
    let ended = run(controller).await;
    let seen = load.stop().await;

    assert_eq!(ended.status, Status::Succeeded, "{}", ended.render());
    assert_eq!(endpoint.traffic(), (0, 100, 0));
    // `show` and the metrics tell the rollout's end.
    let shown = switchyard::ops::render_status(
        &switchyard::ops::fetch_status(&admin).await.expect("status"),
    );
    assert!(
        shown.contains("rollout of green against blue: succeeded, step 4 of 4"),
        "{shown}"
    );
    let scraped = switchyard::ops::send(
        http::Method::GET,
        &format!("{admin}/metrics"),
        &[],
        bytes::Bytes::new(),
    )
    .await
    .expect("scrape");
    let scraped = String::from_utf8_lossy(&scraped.body).into_owned();
    for (name, labels, value) in [
        (
            "switchyard_rollout_step",
            vec![("deployment", "green")],
            4.0,
        ),
        (
            "switchyard_rollout_state",
            vec![("deployment", "green"), ("state", "succeeded")],
            1.0,
        ),
        (
            "switchyard_rollout_state",
            vec![("deployment", "green"), ("state", "running")],
            0.0,
        ),
        (
            "switchyard_rollout_decisions",
            vec![("deployment", "green"), ("decision", "step_passed")],
            3.0,
        ),
    ] {
        assert_eq!(
            sample(&scraped, name, &labels),
            Some(value),
            "{name} {labels:?}"
        );
    }
    assert_eq!(ended.decisions.get("step_passed"), Some(&3));
    assert_eq!(
        seen.failed(),
        0,
        "the rollout itself failed requests: {seen:?}"
    );
    assert!(
        seen.answers.keys().any(|(d, _)| d == "green"),
        "green served live traffic"
    );
    // Every decision is in the audit log.
    let log = std::fs::read_to_string(Files::beside(&endpoint.file.path).log).expect("audit log");
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "step_applied").count(),
        4,
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"succeeded"));
    // The edit touched the traffic and nothing else.
    let text = std::fs::read_to_string(&endpoint.file.path).expect("endpoint file");
    assert!(text.contains("traffic: {blue: 0, green: 100}"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_green_is_rolled_back_before_its_step_ends() {
    let endpoint = Endpoint::new(green(0.05, Duration::ZERO)).await;
    let (gateway, admin) = gateway_with_admin(&endpoint.file.path).await;
    let load = Load::start(&[gateway.addr()]);
    let plan = endpoint.plan(
        "deployment: green\nsteps:\n  - {traffic: 10, hold: 50s}\n  - {traffic: 100}\n\
         judge:\n  errors: {max_increase: 1%}\n  interval: 200ms\n",
    );
    let started = Instant::now();
    let controller =
        Controller::start(&plan, &endpoint.file.path, Source::Admin(vec![admin])).expect("start");
    let ended = run(controller).await;
    let took = started.elapsed();
    // Green no longer serves: what the clients see from now on is blue's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = load.stop().await;

    assert_eq!(ended.status, Status::RolledBack, "{}", ended.render());
    assert!(
        took < Duration::from_secs(50),
        "rolled back during the step: {took:?}"
    );
    let reason = ended.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("errors check") && reason.contains("green"),
        "{reason}"
    );
    assert_eq!(endpoint.traffic(), (100, 0, 0));
    assert_eq!(seen.failed_by("blue") + seen.unanswered, 0, "{seen:?}");
    // Every failure a client saw is one green answered while it had traffic: no more than
    // green served in the step, and at most a few more answered while the rollback landed.
    let green_served = ended.observed.0.requests;
    assert!(
        seen.failed_by("green") <= green_served / 10 + 20,
        "{} failures, green served {green_served}",
        seen.failed_by("green")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_green_is_rolled_back_by_the_slow_answer_check() {
    let endpoint = Endpoint::new(green(0.0, Duration::from_millis(300))).await;
    let (gateway, admin) = gateway_with_admin(&endpoint.file.path).await;
    let load = Load::start(&[gateway.addr()]);
    let plan = endpoint.plan(
        "deployment: green\nsteps:\n  - {traffic: 50, hold: 50s}\n  - {traffic: 100}\n\
         judge:\n  slow: {above: 250ms, max_increase: 2%}\n  interval: 200ms\n",
    );
    let controller =
        Controller::start(&plan, &endpoint.file.path, Source::Admin(vec![admin])).expect("start");
    let ended = run(controller).await;
    let _ = load.stop().await;
    assert_eq!(ended.status, Status::RolledBack, "{}", ended.render());
    let reason = ended.reason.clone().unwrap_or_default();
    assert!(reason.contains("slow check"), "{reason}");
    assert_eq!(endpoint.traffic(), (100, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traffic_the_step_pauses_for_want_of_data() {
    let endpoint = Endpoint::new(green(0.0, Duration::ZERO)).await;
    let (_gateway, admin) = gateway_with_admin(&endpoint.file.path).await;
    let plan = endpoint.plan(
        "deployment: green\nsteps:\n  - {traffic: 10, hold: 500ms}\n  - {traffic: 100}\n\
         judge:\n  interval: 100ms\n",
    );
    let mut controller =
        Controller::start(&plan, &endpoint.file.path, Source::Admin(vec![admin])).expect("start");
    tick_until(&mut controller, "paused", |s| s.status == Status::Paused).await;
    let state = controller.state();
    assert_eq!(state.paused, Some(PauseCause::NoData));
    assert!(
        state
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("not enough data")),
        "{:?}",
        state.reason
    );
    assert_eq!(
        endpoint.traffic(),
        (90, 10, 0),
        "neither passed nor rolled back"
    );
    assert!(state.render().contains("not enough data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_started_again_resumes_the_same_step() {
    let endpoint = Endpoint::new(green(0.0, Duration::ZERO)).await;
    let (gateway, admin) = gateway_with_admin(&endpoint.file.path).await;
    let load = Load::start(&[gateway.addr()]);
    let plan = endpoint.plan(GOOD_PLAN);
    let source = || Source::Admin(vec![admin.clone()]);
    let mut first = Controller::start(&plan, &endpoint.file.path, source()).expect("start");
    tick_until(&mut first, "step 2 started", |s| {
        s.step == 1 && s.step_started_at.is_some()
    })
    .await;
    let (step, started) = (first.state().step, first.state().step_started_at);
    drop(first);

    let second = Controller::start(&plan, &endpoint.file.path, source()).expect("resume");
    assert_eq!(second.state().step, step);
    assert_eq!(
        second.state().step_started_at,
        started,
        "the same step, its clock kept"
    );
    let ended = run(second).await;
    let seen = load.stop().await;
    assert_eq!(ended.status, Status::Succeeded, "{}", ended.render());
    assert_eq!(seen.failed(), 0);

    // Another plan cannot start over a rollout in progress, but one can after it ended.
    assert_eq!(endpoint.traffic(), (0, 100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_of_the_traffic_pauses_the_rollout() {
    let endpoint = Endpoint::new(green(0.0, Duration::ZERO)).await;
    let (gateway, admin) = gateway_with_admin(&endpoint.file.path).await;
    let load = Load::start(&[gateway.addr()]);
    let plan = endpoint.plan(&GOOD_PLAN.replace("hold: 1s", "hold: 30s"));
    let mut controller =
        Controller::start(&plan, &endpoint.file.path, Source::Admin(vec![admin])).expect("start");
    tick_until(&mut controller, "step 1 served", |s| {
        s.step_started_at.is_some()
    })
    .await;

    let text = std::fs::read_to_string(&endpoint.file.path).expect("read");
    let edited = switchyard::rollout::edit::set_shares(
        &text,
        &[("blue".to_string(), 80), ("green".to_string(), 20)].into(),
        Some(&[("green".to_string(), 0)].into()),
    )
    .expect("edit");
    switchyard::rollout::edit::write_atomically(&endpoint.file.path, &edited).expect("write");
    tick_until(&mut controller, "paused", |s| s.status == Status::Paused).await;
    assert_eq!(controller.state().paused, Some(PauseCause::HandEdit));
    for _ in 0..5 {
        controller.tick().await.expect("tick");
    }
    assert_eq!(endpoint.traffic(), (80, 20, 0), "the person's edit stands");
    let _ = load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_must_serve_a_step_and_the_counts_are_summed_over_them() {
    let endpoint = Endpoint::new(green(0.0, Duration::ZERO)).await;
    let mut gateways = Vec::new();
    let mut admins = Vec::new();
    for _ in 0..3 {
        let (gateway, admin) = gateway_with_admin(&endpoint.file.path).await;
        gateways.push(gateway);
        admins.push(admin);
    }
    // A fourth replica reads its own copy of the file, which a slow sync updates later.
    let lagging = EndpointFile::new(&std::fs::read_to_string(&endpoint.file.path).expect("read"));
    let (late, late_admin) = gateway_with_admin(&lagging.path).await;
    admins.push(late_admin.clone());
    // Load only through the last two of the first three: counts must come from them.
    let load = Load::start(&[gateways[1].addr(), gateways[2].addr()]);
    let plan = endpoint.plan(GOOD_PLAN);
    let mut controller =
        Controller::start(&plan, &endpoint.file.path, Source::Admin(admins)).expect("start");
    tick_until(&mut controller, "waiting for the lagging replica", |s| {
        s.waiting_for == [late_admin.clone()]
    })
    .await;
    assert!(
        controller.state().step_started_at.is_none(),
        "the clock waits"
    );
    assert!(controller.state().render().contains(&late_admin));

    // The sync catches up for every step from now on.
    let source = endpoint.file.path.clone();
    let copy = lagging.path.clone();
    let sync = tokio::spawn(async move {
        loop {
            if let Ok(text) = std::fs::read_to_string(&source) {
                if std::fs::read_to_string(&copy).ok().as_deref() != Some(text.as_str()) {
                    switchyard::rollout::edit::write_atomically(&copy, &text).expect("sync");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tick_until(&mut controller, "step 2", |s| {
        s.step == 1 && s.step_started_at.is_some()
    })
    .await;
    tick_until(&mut controller, "green counted", |s| {
        s.observed.0.requests > 0
    })
    .await;
    let ended = run(controller).await;
    sync.abort();
    let seen = load.stop().await;
    assert_eq!(ended.status, Status::Succeeded, "{}", ended.render());
    assert_eq!(seen.failed(), 0);
    drop(late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prometheus_as_the_source_the_verdicts_are_the_same() {
    if !prometheus::installed() {
        return;
    }
    for (failure_rate, expected) in [(0.0, Status::Succeeded), (0.2, Status::RolledBack)] {
        let endpoint = Endpoint::new(green(failure_rate, Duration::ZERO)).await;
        let (first, first_admin) = gateway_with_admin(&endpoint.file.path).await;
        let (second, second_admin) = gateway_with_admin(&endpoint.file.path).await;
        let prometheus = prometheus::Prometheus::start(&[first_admin, second_admin]);
        prometheus.wait_until_scraping(2).await;
        let load = Load::start(&[first.addr(), second.addr()]);
        let plan = endpoint.plan(
            "deployment: green\nsteps:\n  - {traffic: 20, hold: 3s}\n  - {traffic: 100}\n\
             judge:\n  errors: {max_increase: 5%}\n  min_requests: 100\n  interval: 500ms\n",
        );
        let source = Source::Prometheus {
            url: prometheus.url.clone(),
            endpoint: "test-endpoint".to_string(),
        };
        let controller = Controller::start(&plan, &endpoint.file.path, source).expect("start");
        let ended = run(controller).await;
        let _ = load.stop().await;
        assert_eq!(ended.status, expected, "{}", ended.render());
    }
}

#[tokio::test]
async fn the_shipped_plan_fits_the_demo_endpoint_once_green_is_there() {
    let demo = switchyard::demo::DemoServers::start()
        .await
        .expect("servers");
    let step = |index: usize| {
        EndpointConfig::parse(&demo.render(switchyard::demo::ROLLOUT_STEPS[index].1))
            .expect("a valid step")
    };
    let plan = switchyard::rollout::plan::Plan::parse(switchyard::demo::GATED_PLAN.1)
        .expect("a valid plan");
    assert_eq!(plan.check_against(&step(2)).as_deref(), Ok("blue"));
    let before_green = plan
        .check_against(&step(0))
        .expect_err("green is not there yet");
    assert!(
        before_green[0].contains("`green` is not in endpoint"),
        "{before_green:?}"
    );
}
