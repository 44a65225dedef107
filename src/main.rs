//! The `switchyard` command line: parse arguments, set up logging, call into the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard::config::EndpointConfig;
use switchyard::demo::DemoServers;
use switchyard::model_server::{Model, ModelServer, ModelServerOptions};
use switchyard::{DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, Gateway, GatewayOptions};
use tracing_subscriber::EnvFilter;

/// A gateway for rolling out new versions of ML models: weighted traffic split between
/// deployments, header pins, and hot reload of a declarative endpoint file.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
        /// Address for the admin API.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADMIN_LISTEN)]
        admin_listen: SocketAddr,
        /// How long requests in flight may take to finish on SIGTERM or Ctrl-C (e.g. 30s, 500ms).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        drain_timeout: Duration,
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
        /// Where to write the endpoint file and the rollout steps.
        #[arg(long, value_name = "DIR", default_value = "switchyard-demo")]
        dir: PathBuf,
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
        #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = parse_duration)]
        latency: Duration,
        /// Share of /score requests answered with 500, from 0 to 1.
        #[arg(long, default_value_t = 0.0)]
        failure_rate: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    if let Command::Validate { path } = &cli.command {
        return validate(path);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match EndpointConfig::load(path) {
        Ok(config) => {
            println!("{}: valid. {}", path.display(), config.summary());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprint!("{}", error.render());
            eprintln!("{}: invalid", path.display());
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Validate { .. } => unreachable!("handled before the runtime starts"),
        Command::Serve {
            config,
            listen,
            admin_listen: _,
            drain_timeout,
        } => {
            let mut options = GatewayOptions::new(config, listen);
            options.drain_timeout = drain_timeout;
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
        Command::Demo { listen, dir } => {
            let servers = DemoServers::start()
                .await
                .context("cannot start the demo model servers")?;
            let endpoint = servers
                .write_files(&dir)
                .with_context(|| format!("cannot write the demo files to {}", dir.display()))?;
            let mut options = GatewayOptions::new(endpoint, listen);
            options.reload_on_sighup = true;
            let gateway = start_gateway(options).await?;
            println!(
                "{}",
                switchyard::demo::instructions(gateway.addr(), &dir, &servers)
            );
            shutdown_signal().await;
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

async fn start_gateway(options: GatewayOptions) -> anyhow::Result<Gateway> {
    Gateway::start(options).await.map_err(|error| match error {
        switchyard::StartError::Config(config) => anyhow::anyhow!("{}", config.render().trim_end()),
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

/// `30s`, `500ms`, `2m`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. 30s or 500ms"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("unknown unit `{other}`; use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("`{text}`: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
