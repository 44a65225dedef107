//! `switchyard demo`: a working endpoint on this machine in one command, with no Docker.
//!
//! It starts three demo model servers on free loopback ports (blue: two instances of model-1,
//! green: one of model-2), writes the rollout steps of `config/rollout/` with those ports
//! into a directory, makes step 1 the live endpoint file, and runs the gateway watching it.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::model_server::{Model, ModelServer, ModelServerOptions};

/// The six rollout steps, as shipped in `config/rollout/`.
pub const ROLLOUT_STEPS: [(&str, &str); 6] = [
    (
        "1-create-blue.yaml",
        include_str!("../config/rollout/1-create-blue.yaml"),
    ),
    (
        "2-scale-blue.yaml",
        include_str!("../config/rollout/2-scale-blue.yaml"),
    ),
    (
        "3-create-green.yaml",
        include_str!("../config/rollout/3-create-green.yaml"),
    ),
    (
        "4-flight-green.yaml",
        include_str!("../config/rollout/4-flight-green.yaml"),
    ),
    (
        "5-full-green.yaml",
        include_str!("../config/rollout/5-full-green.yaml"),
    ),
    (
        "6-delete-blue.yaml",
        include_str!("../config/rollout/6-delete-blue.yaml"),
    ),
];

/// The optional step between 3 and 4: green gets a copy of 10% of live traffic.
pub const MIRROR_STEP: (&str, &str) = (
    "3a-mirror-green.yaml",
    include_str!("../config/rollout/3a-mirror-green.yaml"),
);

/// A gated rollout plan for green that works with the demo under `--load`.
pub const GATED_PLAN: (&str, &str) = (
    "gated-rollout.yaml",
    include_str!("../config/gated-rollout.yaml"),
);

/// Azure's sample scoring request.
pub const SAMPLE_REQUEST: &str = include_str!("../config/sample-request.json");

/// The instance URLs the shipped step files use, in the order blue-1, blue-2, green-1.
pub const TEMPLATE_INSTANCES: [&str; 3] = [
    "http://127.0.0.1:9001",
    "http://127.0.0.1:9002",
    "http://127.0.0.1:9003",
];

/// The demo's model servers.
#[derive(Debug)]
pub struct DemoServers {
    /// blue-1, blue-2 (model-1) and green-1 (model-2).
    pub servers: [ModelServer; 3],
}

impl DemoServers {
    /// Starts the three demo model servers on free loopback ports.
    pub async fn start() -> io::Result<Self> {
        Self::start_with_green_failing(0.0).await
    }

    /// The same, with green answering `failure_rate` of its requests with 500, to watch a gated
    /// rollout roll it back.
    pub async fn start_with_green_failing(failure_rate: f64) -> io::Result<Self> {
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut green = ModelServerOptions::new(Model::Constant, "green-1");
        green.failure_rate = failure_rate;
        let servers = [
            ModelServer::bind(any_port, ModelServerOptions::new(Model::Diabetes, "blue-1")).await?,
            ModelServer::bind(any_port, ModelServerOptions::new(Model::Diabetes, "blue-2")).await?,
            ModelServer::bind(any_port, green).await?,
        ];
        Ok(DemoServers { servers })
    }

    /// The step file's text with the template ports replaced by the servers' real ones.
    pub fn render(&self, template: &str) -> String {
        TEMPLATE_INSTANCES
            .iter()
            .zip(&self.servers)
            .fold(template.to_string(), |text, (placeholder, server)| {
                text.replace(placeholder, &server.url())
            })
    }

    /// Writes the six steps and the optional mirror step to `dir/rollout/`, step 1 to
    /// `dir/endpoint.yaml` and the sample request to `dir/sample-request.json`. Returns the
    /// endpoint file's path.
    pub fn write_files(&self, dir: &Path) -> io::Result<PathBuf> {
        let rollout = dir.join("rollout");
        std::fs::create_dir_all(&rollout)?;
        for (name, template) in ROLLOUT_STEPS.into_iter().chain([MIRROR_STEP]) {
            std::fs::write(rollout.join(name), self.render(template))?;
        }
        std::fs::write(dir.join("sample-request.json"), SAMPLE_REQUEST)?;
        std::fs::write(dir.join(GATED_PLAN.0), GATED_PLAN.1)?;
        let endpoint = dir.join("endpoint.yaml");
        std::fs::write(&endpoint, self.render(ROLLOUT_STEPS[0].1))?;
        Ok(endpoint)
    }
}

/// Sends `per_second` copies of the sample request to `gateway` until the task is dropped, so
/// that a demo rollout has live traffic to judge.
pub async fn generate_load(gateway: SocketAddr, per_second: u32) {
    use bytes::Bytes;
    if per_second == 0 {
        return;
    }
    let url = format!("http://{gateway}/score");
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1) / per_second);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let url = url.clone();
        tokio::spawn(async move {
            let _ = crate::client::send(
                http::Method::POST,
                &url,
                &[("content-type", "application/json")],
                Bytes::from_static(SAMPLE_REQUEST.as_bytes()),
            )
            .await;
        });
    }
}

/// What to try, printed once the demo is up.
pub fn instructions(
    gateway: SocketAddr,
    admin: Option<SocketAddr>,
    dir: &Path,
    servers: &DemoServers,
) -> String {
    let dir = dir.display();
    let [blue_1, blue_2, green_1] = &servers.servers;
    let mut out = String::new();
    let _ = writeln!(out, "Switchyard demo is running.");
    let _ = writeln!(out, "  scoring endpoint  http://{gateway}/score");
    let _ = writeln!(
        out,
        "  blue  (model-1)   {} and {}",
        blue_1.url(),
        blue_2.url()
    );
    let _ = writeln!(out, "  green (model-2)   {}", green_1.url());
    let _ = writeln!(
        out,
        "  endpoint file     {dir}/endpoint.yaml  (watched: edit it and the split changes)"
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Score (the response header azureml-model-deployment says who answered):"
    );
    let _ = writeln!(
        out,
        "  curl -si http://{gateway}/score -H 'Content-Type: application/json' -d @{dir}/sample-request.json"
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Walk the safe rollout, one step at a time:");
    for (name, _) in ROLLOUT_STEPS.iter().skip(1) {
        let _ = writeln!(out, "  cp {dir}/rollout/{name} {dir}/endpoint.yaml");
        if name.starts_with("3-") {
            let _ = writeln!(
                out,
                "  cp {dir}/rollout/{} {dir}/endpoint.yaml   (optional: green gets a copy of 10% of live traffic)",
                MIRROR_STEP.0
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "From step 3 on, test green before it gets live traffic:"
    );
    let _ = writeln!(
        out,
        "  curl -si http://{gateway}/score -H 'azureml-model-deployment: green' -H 'Content-Type: application/json' -d @{dir}/sample-request.json"
    );
    let program = program_name();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Or let Switchyard carry green from 0% to 100%, judged against blue at every step and rolled"
    );
    let _ = writeln!(
        out,
        "back by itself if it is worse (the demo needs traffic for that: run it with --load 100):"
    );
    let _ = writeln!(
        out,
        "  cp {dir}/rollout/3-create-green.yaml {dir}/endpoint.yaml"
    );
    let admin_flag = admin
        .map(|a| format!(" --admin http://{a}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  {program} rollout start {dir}/{} --config {dir}/endpoint.yaml{admin_flag}",
        GATED_PLAN.0
    );
    let _ = writeln!(
        out,
        "  {program} rollout status --config {dir}/endpoint.yaml      (in another terminal)"
    );
    if let Some(admin) = admin {
        let _ = writeln!(out);
        let _ = writeln!(out, "Watch it (admin API on {admin}):");
        let _ = writeln!(out, "  {program} show --admin http://{admin}");
        let _ = writeln!(
            out,
            "  {program} diff {dir}/rollout/4-flight-green.yaml --admin http://{admin}"
        );
        let _ = writeln!(out, "  curl -s http://{admin}/metrics | grep ^switchyard_");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Press Ctrl-C to stop.");
    out
}

/// How to call this program from the current directory: `target/release/switchyard` under
/// `cargo run`, or plain `switchyard` when installed on the PATH.
fn program_name() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "switchyard".to_string();
    };
    match std::env::current_dir().map(|cwd| exe.strip_prefix(cwd).map(Path::to_path_buf)) {
        Ok(Ok(relative)) => relative.display().to_string(),
        _ => "switchyard".to_string(),
    }
}
