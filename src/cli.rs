//! The `switchyard` command line: parse arguments, set up logging, call into the library. The
//! binary is [`main`]; a wrapper binary of your own can call it too.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::EndpointConfig;
use crate::demo::DemoServers;
use crate::model_server::{Model, ModelServer, ModelServerOptions};
use crate::ops;
use crate::rollout::edit;
use crate::{DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, Gateway, GatewayOptions};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// A gateway for rolling out new versions of ML models: weighted traffic split between
/// deployments, header pins, and hot reload of a declarative endpoint file.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    /// Log format on stderr: `text` or `json` (one JSON object per line).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The threads a gateway serves requests on (`serve` and `demo`).
#[derive(Debug, Clone, Copy, clap::Args)]
struct Threads {
    /// Threads serving requests, each with its own listening socket on the port; a new
    /// connection goes to one with the fewest open (default: one per CPU core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Pin each serving thread to a CPU of its own. Shortens the latency tail where the gateway
    /// has its cores to itself; leave it off where other busy processes share them.
    #[arg(long)]
    pin_workers: bool,
}

impl Threads {
    /// Sets `options` to serve on these threads.
    fn apply(self, options: &mut GatewayOptions) {
        let count = self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, usize::from),
            usize::from,
        );
        options.workers = Some(count);
        options.pin_workers = self.pin_workers;
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where `show` and `diff` find the admin API by default.
const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9090";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway for an endpoint file, reloading it when it changes or on SIGHUP.
    Serve {
        /// The endpoint file (YAML).
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// Address for scoring requests.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Address for the admin API (health, readiness, status, reload, metrics).
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADMIN_LISTEN)]
        admin_listen: SocketAddr,
        /// How long requests in flight may take to finish on SIGTERM or Ctrl-C (e.g. 30s, 500ms).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
        /// Serve HTTPS with this PEM certificate chain (re-read when it changes).
        #[arg(long, value_name = "PATH", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key for --tls-cert.
        #[arg(long, value_name = "PATH", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Also trust the CA certificates in this PEM file for https:// instances.
        #[arg(long, value_name = "PATH")]
        upstream_ca_file: Option<PathBuf>,
        /// Largest request body accepted, in bytes; larger ones get 413.
        #[arg(long, value_name = "BYTES", default_value_t = crate::DEFAULT_MAX_BODY_BYTES)]
        max_body_bytes: u64,
        /// Most client connections open at once; further clients wait in the listen backlog.
        #[arg(long, value_name = "N", default_value_t = crate::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        #[command(flatten)]
        threads: Threads,
    },
    /// Show the running endpoint: deployments, traffic, instances, request rate and errors.
    Show {
        /// The gateway's admin API.
        #[arg(long, value_name = "URL", default_value = DEFAULT_ADMIN_URL)]
        admin: String,
    },
    /// Send a scoring request, like `az ml online-endpoint invoke`.
    Invoke {
        /// The scoring URL.
        #[arg(
            long,
            value_name = "URL",
            default_value = "http://127.0.0.1:8080/score"
        )]
        url: String,
        /// Send the request to this deployment whatever its traffic share.
        #[arg(long, value_name = "NAME")]
        deployment: Option<String>,
        /// The JSON request body.
        #[arg(long, value_name = "FILE")]
        request_file: PathBuf,
        /// The endpoint key, sent as `Authorization: Bearer KEY` (for `auth_mode: key`). Read
        /// from SWITCHYARD_KEY when not given, so it stays out of the shell's history.
        #[arg(
            long,
            value_name = "KEY",
            env = "SWITCHYARD_KEY",
            hide_env_values = true
        )]
        key: Option<String>,
    },
    /// Validate an endpoint file and show what applying it would change.
    Diff {
        /// The endpoint file you are about to apply.
        new_file: PathBuf,
        /// Compare against the config the gateway at this admin URL is serving.
        #[arg(long, value_name = "URL", default_value = DEFAULT_ADMIN_URL, conflicts_with = "against")]
        admin: String,
        /// Compare against this file instead of a running gateway.
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
    },
    /// Carry a deployment from 0% to 100% in planned steps, judged against the baseline on
    /// live traffic, rolled back by itself when it is worse.
    Rollout {
        #[command(subcommand)]
        action: RolloutAction,
    },
    /// Change the live traffic split in the endpoint file; every other byte stays as written.
    Traffic {
        #[command(subcommand)]
        action: TrafficAction,
    },
    /// Check an endpoint file without running anything; exit 1 if it is invalid.
    Validate {
        /// The endpoint file (YAML).
        path: PathBuf,
    },
    /// Run a complete local endpoint: demo model servers for blue and green, the six rollout
    /// steps as files, and the gateway watching the endpoint file.
    Demo {
        /// Address for scoring requests.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Address for the admin API.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADMIN_LISTEN)]
        admin_listen: SocketAddr,
        /// Where to write the endpoint file and the rollout steps.
        #[arg(long, value_name = "DIR", default_value = "switchyard-demo")]
        dir: PathBuf,
        /// Also send this many scoring requests a second, so a gated rollout has traffic to
        /// judge.
        #[arg(long, value_name = "PER_SECOND", default_value_t = 0)]
        load: u32,
        /// Share of green's requests answered with 500, from 0 to 1: a gated rollout then rolls
        /// green back.
        #[arg(long, value_name = "SHARE", default_value_t = 0.0)]
        green_failure_rate: f64,
        #[command(flatten)]
        threads: Threads,
    },
    /// Run one demo model server (Azure inference-server contract: POST /score, GET /).
    ModelServer {
        /// Which model: 1 (diabetes linear regression) or 2 (answers 0.5).
        #[arg(long, value_enum, default_value = "1")]
        model: Model,
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5001")]
        listen: SocketAddr,
        /// Name sent back in the x-demo-instance header.
        #[arg(long, default_value = "model")]
        instance: String,
        /// Extra latency for each /score request (e.g. 200ms).
        #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = humantime::parse_duration)]
        latency: Duration,
        /// Share of /score requests answered with 500, from 0 to 1.
        #[arg(long, default_value_t = 0.0)]
        failure_rate: f64,
    },
}

#[derive(Debug, Subcommand)]
enum RolloutAction {
    /// Check a plan, and that it fits the endpoint file.
    Validate {
        /// The rollout plan (YAML).
        plan: PathBuf,
        /// The endpoint file the plan will edit.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the plan: each step edits the endpoint file, waits until every gateway serves it,
    /// and is judged; exits 0 once promoted, 1 if rolled back.
    Start {
        /// The rollout plan (YAML).
        plan: PathBuf,
        /// The endpoint file the gateways watch.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// A gateway's admin API; repeat it for each replica watching the file.
        #[arg(long, value_name = "URL", default_value = DEFAULT_ADMIN_URL)]
        admin: Vec<String>,
        /// Read the counts (and whether each replica serves a step) from this Prometheus
        /// server instead of the admin APIs.
        #[arg(long, value_name = "URL")]
        prometheus: Option<String>,
    },
    /// Where the rollout on an endpoint file stands.
    Status {
        /// The endpoint file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Refresh every second until the rollout ends (the default on a terminal).
        #[arg(long)]
        watch: bool,
        /// Print once, even on a terminal.
        #[arg(long, conflicts_with = "watch")]
        once: bool,
    },
    /// Hold the rollout where it is.
    Pause {
        /// The endpoint file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Go on from where the rollout was paused.
    Resume {
        /// The endpoint file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Roll back now: all live traffic back to the baseline.
    Abort {
        /// The endpoint file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Skip to the last step (recorded as a manual decision).
    Promote {
        /// The endpoint file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TrafficAction {
    /// Set deployments' shares of live traffic, like `az ml online-endpoint update --traffic`.
    Set {
        /// `NAME=PERCENT` pairs, e.g. `blue=90 green=10`.
        #[arg(value_name = "NAME=PERCENT", required = true)]
        shares: Vec<String>,
        /// Mirror a share of live traffic: `NAME=PERCENT` (0 stops it).
        #[arg(long, value_name = "NAME=PERCENT")]
        mirror: Vec<String>,
        /// The endpoint file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Runs the command line on this process's arguments, as the `switchyard` binary does.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // An unset RUST_LOG means `info`; one that does not parse is said so, not ignored. By
    // default rustls says only errors: it warns of what clients do (an IP address sent as the
    // server name, as some benchmark tools do, on every connection), which is no operator's
    // to fix; a failed handshake is logged at debug by the gateway.
    const DEFAULT_FILTER: &str = "info,rustls=error";
    let (filter, bad_filter) = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(error) => (EnvFilter::new(DEFAULT_FILTER), Some((text, error))),
        },
        _ => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // Fields at the top level of each object, where log pipelines look for them.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    if let Some((text, error)) = bad_filter {
        tracing::warn!(
            rust_log = %text,
            %error,
            "RUST_LOG is not a valid filter (e.g. `info` or `switchyard=debug`); logging at info"
        );
    }

    // `serve` handles requests on threads of its own (`--workers`); this runtime keeps the
    // admin API, the config watcher and readiness probes.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, Command::Serve { .. }) {
        runtime.worker_threads(1);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", crate::causes::each_cause_once(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Loads and checks an endpoint file as applying it would, turning an error into its
/// rendering with source lines.
fn load_config(path: &std::path::Path) -> anyhow::Result<EndpointConfig> {
    crate::reload::check_files(path)
        .map_err(|error| anyhow::anyhow!("{}", error.render().trim_end()))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Rollout { action } => rollout(action).await,
        Command::Traffic {
            action:
                TrafficAction::Set {
                    shares,
                    mirror,
                    config,
                },
        } => {
            let traffic = parse_shares(&shares)?;
            let mirror = parse_shares(&mirror)?;
            let text = crate::config::read_file(&config)
                .map_err(|error| anyhow::anyhow!("{}", error.render().trim_end()))?;
            let edited =
                edit::set_shares(&text, &traffic, (!mirror.is_empty()).then_some(&mirror))?;
            if edited == text {
                println!("{}: unchanged", config.display());
                return Ok(());
            }
            let before = load_config(&config)?;
            edit::write_atomically(&config, &edited)?;
            let after =
                EndpointConfig::parse(&edited).map_err(|e| anyhow::anyhow!("{}", e.render()))?;
            print!(
                "{}",
                ops::render_changes(&crate::config::diff(&before, &after))
            );
            Ok(())
        }
        Command::Validate { path } => {
            let config = load_config(&path)?;
            println!("{}: valid. {}", path.display(), config.summary());
            Ok(())
        }
        Command::Serve {
            config,
            listen,
            admin_listen,
            drain_timeout,
            tls_cert,
            tls_key,
            upstream_ca_file,
            max_body_bytes,
            max_connections,
            threads,
        } => {
            let mut options = GatewayOptions::new(config, listen);
            threads.apply(&mut options);
            options.admin_listen = Some(admin_listen);
            options.drain_timeout = drain_timeout;
            options.max_body_bytes = max_body_bytes;
            options.max_connections = max_connections;
            options.upstream_ca_file = upstream_ca_file;
            if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
                options.tls = Some(crate::TlsFiles { cert, key });
            }
            options.reload_on_sighup = true;
            let gateway = start_gateway(options).await?;
            shutdown_signal().await;
            tracing::info!(
                ?drain_timeout,
                "shutting down: no new connections, draining requests in flight"
            );
            gateway.shutdown().await;
            Ok(())
        }
        Command::Show { admin } => {
            let status = ops::fetch_status(&admin).await?;
            print!("{}", ops::render_status(&status));
            Ok(())
        }
        Command::Invoke {
            url,
            deployment,
            request_file,
            key,
        } => {
            let answer =
                ops::invoke(&url, deployment.as_deref(), key.as_deref(), &request_file).await?;
            let header = |name: &str| {
                answer
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            eprintln!(
                "{} from deployment {} (x-request-id {})",
                answer.status,
                header(crate::config::PIN_HEADER),
                header("x-request-id")
            );
            println!("{}", String::from_utf8_lossy(&answer.body));
            anyhow::ensure!(
                answer.status.is_success(),
                "the endpoint answered {}",
                answer.status
            );
            Ok(())
        }
        Command::Diff {
            new_file,
            admin,
            against,
        } => {
            let new = load_config(&new_file)?;
            let old = match against {
                Some(path) => load_config(&path)?,
                None => ops::serving_config(&ops::fetch_status(&admin).await?)?,
            };
            print!("{}", ops::render_changes(&crate::config::diff(&old, &new)));
            Ok(())
        }
        Command::Demo {
            listen,
            admin_listen,
            dir,
            load,
            green_failure_rate,
            threads,
        } => {
            anyhow::ensure!(
                (0.0..=1.0).contains(&green_failure_rate),
                "--green-failure-rate must be between 0 and 1, got {green_failure_rate}"
            );
            let servers = DemoServers::start_with_green_failing(green_failure_rate)
                .await
                .context("cannot start the demo model servers")?;
            let endpoint = servers
                .write_files(&dir)
                .with_context(|| format!("cannot write the demo files to {}", dir.display()))?;
            let mut options = GatewayOptions::new(endpoint, listen);
            threads.apply(&mut options);
            options.admin_listen = Some(admin_listen);
            options.reload_on_sighup = true;
            let gateway = start_gateway(options).await?;
            println!(
                "{}",
                crate::demo::instructions(gateway.addr(), gateway.admin_addr(), &dir, &servers)
            );
            let traffic = tokio::spawn(crate::demo::generate_load(gateway.addr(), load));
            if load > 0 {
                println!("Sending {load} scoring requests a second to the endpoint.");
            }
            shutdown_signal().await;
            traffic.abort();
            gateway.shutdown().await;
            Ok(())
        }
        Command::ModelServer {
            model,
            listen,
            instance,
            latency,
            failure_rate,
        } => {
            anyhow::ensure!(
                (0.0..=1.0).contains(&failure_rate),
                "--failure-rate must be between 0 and 1, got {failure_rate}"
            );
            let options = ModelServerOptions {
                model,
                instance,
                latency,
                failure_rate,
            };
            let server = ModelServer::bind(listen, options)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(addr = %server.addr(), ?model, "demo model server listening");
            tokio::select! {
                () = server.wait() => {}
                () = shutdown_signal() => {}
            }
            Ok(())
        }
    }
}

/// `NAME=PERCENT` pairs.
fn parse_shares(pairs: &[String]) -> anyhow::Result<edit::Shares> {
    pairs
        .iter()
        .map(|pair| {
            let (name, percent) = pair
                .split_once('=')
                .with_context(|| format!("`{pair}`: write NAME=PERCENT, e.g. green=10"))?;
            let percent: u8 = percent
                .trim_end_matches('%')
                .parse()
                .ok()
                .filter(|p| *p <= 100)
                .with_context(|| {
                    format!("`{pair}`: the percent must be a whole number from 0 to 100")
                })?;
            Ok((name.to_string(), percent))
        })
        .collect()
}

async fn rollout(action: RolloutAction) -> anyhow::Result<()> {
    use crate::rollout::controller::{Controller, WATCH_INTERVAL};
    use crate::rollout::plan::Plan;
    use crate::rollout::source::Source;
    use crate::rollout::state::{Command as Request, Files, Status};

    let request = |config: &std::path::Path, command: Request| -> anyhow::Result<()> {
        let files = Files::beside(config);
        let state = files
            .read_state()
            .map_err(anyhow::Error::msg)?
            .with_context(|| format!("no rollout was started on {}", config.display()))?;
        anyhow::ensure!(
            !state.status.is_final(),
            "the rollout on {} has ended: {}",
            config.display(),
            state.status.as_str()
        );
        files.request(command).map_err(anyhow::Error::msg)?;
        let running = state
            .controller_pid
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if running {
            println!(
                "asked the controller to {}; it acts at its next look",
                command.as_str()
            );
        } else {
            println!(
                "no controller runs: `switchyard rollout start` acts on this when it starts;                  to move traffic now, use `switchyard traffic set`"
            );
        }
        Ok(())
    };
    match action {
        RolloutAction::Validate { plan, config } => {
            let parsed =
                Plan::load(&plan).map_err(|e| anyhow::anyhow!("{}", e.render().trim_end()))?;
            let endpoint = load_config(&config)?;
            let baseline = parsed
                .check_against(&endpoint)
                .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?;
            println!(
                "{}: valid. {} against {} in {} steps:",
                plan.display(),
                parsed.deployment,
                baseline,
                parsed.steps.len()
            );
            for (index, step) in parsed.steps.iter().enumerate() {
                let what = match step.kind {
                    crate::rollout::plan::StepKind::Traffic(p) => format!("traffic {p}%"),
                    crate::rollout::plan::StepKind::Mirror(p) => format!("mirror {p}%"),
                };
                let judged = if step.is_judged() {
                    format!("hold {}, judged", humantime::format_duration(step.hold))
                } else {
                    "promotion".to_string()
                };
                println!("  {}. {what}: {judged}", index + 1);
            }
            Ok(())
        }
        RolloutAction::Start {
            plan,
            config,
            admin,
            prometheus,
        } => {
            let source = match prometheus {
                Some(url) => Source::Prometheus {
                    url,
                    endpoint: load_config(&config)?.name,
                },
                None => Source::Admin(admin),
            };
            let controller = Controller::start(&plan, &config, source)?;
            print!("{}", controller.state().render());
            let ended = tokio::select! {
                ended = controller.run() => ended?,
                () = shutdown_signal() => {
                    // The state is on disk: the next `rollout start` resumes here.
                    println!("stopped; traffic stays where it is until the rollout is started again");
                    return Ok(());
                }
            };
            print!("{}", ended.render());
            anyhow::ensure!(
                ended.status == Status::Succeeded,
                "the rollout was rolled back"
            );
            Ok(())
        }
        RolloutAction::Status {
            config,
            watch,
            once,
        } => {
            let files = Files::beside(&config);
            let live = watch || (!once && std::io::stdout().is_terminal());
            loop {
                let state = files
                    .read_state()
                    .map_err(anyhow::Error::msg)?
                    .with_context(|| format!("no rollout was started on {}", config.display()))?;
                if live {
                    // Clear the screen and go home, then draw afresh.
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", state.render());
                if !live || state.status.is_final() {
                    return Ok(());
                }
                tokio::time::sleep(WATCH_INTERVAL).await;
            }
        }
        RolloutAction::Pause { config } => request(&config, Request::Pause),
        RolloutAction::Resume { config } => request(&config, Request::Resume),
        RolloutAction::Abort { config } => request(&config, Request::Abort),
        RolloutAction::Promote { config } => request(&config, Request::Promote),
    }
}

async fn start_gateway(options: GatewayOptions) -> anyhow::Result<Gateway> {
    Gateway::start(options).await.map_err(|error| match error {
        crate::StartError::Config(config) => {
            anyhow::anyhow!("{}", config.render().trim_end())
        }
        other => anyhow::Error::new(other),
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the gateway");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
