//! The `switchyard` binary: `validate` exit codes and messages, and `serve` under signals.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use switchyard::model_server::Model;

const BINARY: &str = env!("CARGO_BIN_EXE_switchyard");

#[test]
fn validate_accepts_every_shipped_endpoint_file() {
    let rollout = switchyard::demo::ROLLOUT_STEPS
        .iter()
        .chain([&switchyard::demo::MIRROR_STEP])
        .map(|(name, _)| format!("rollout/{name}"));
    for name in rollout.chain(["compose/endpoint.yaml".to_string()]) {
        let path = format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"));
        let output = Command::new(BINARY)
            .args(["validate", &path])
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("valid. my-endpoint:"), "{stdout}");
    }
}

#[test]
fn validate_names_the_file_line_field_and_fix() {
    let file = EndpointFile::new(
        "name: my-endpoint\ntraffic: {blue: 100}\ndeployments:\n  - name: blue\n    instances: [http://127.0.0.1:1]\n  - name: green\n    instances: [127.0.0.1:2]\n",
    );
    let output = Command::new(BINARY)
        .args(["validate", file.path.to_str().expect("utf-8 path")])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "{}:7:17: deployments[1].instances[0]: `127.0.0.1:2` is not an absolute URL",
        file.path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        stderr.contains("7 |     instances: [127.0.0.1:2]"),
        "{stderr}"
    );
}

#[test]
fn validate_reports_a_missing_file() {
    let output = Command::new(BINARY)
        .args(["validate", "/nonexistent/endpoint.yaml"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent/endpoint.yaml")
    );
}

/// `switchyard serve` as a child process, with its log lines.
struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Served {
    fn start(config: &std::path::Path) -> Self {
        Self::start_with(&[], config)
    }

    /// With global options (`--log-format json`, say) before the subcommand.
    fn start_with(global: &[&str], config: &std::path::Path) -> Self {
        Self::start_with_both(global, &[], config)
    }

    /// With global options before the subcommand and `serve`'s own after it.
    fn start_with_both(global: &[&str], own: &[&str], config: &std::path::Path) -> Self {
        let mut child = Command::new(BINARY)
            .args(global)
            .args([
                "serve",
                "--config",
                config.to_str().expect("utf-8"),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--drain-timeout", "5s", "--admin-listen", "127.0.0.1:0"])
            .args(own)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn switchyard serve");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut served = Served {
            child,
            lines,
            addr: loopback(),
            admin: loopback(),
        };
        served.admin = address_in(&served.wait_for_line("admin API listening"));
        served.addr = address_in(&served.wait_for_line("gateway listening"));
        served
    }

    fn wait_for_line(&self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no log line containing `{needle}`"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

/// The `addr` field of a log line, text (`addr=...`) or JSON (`"addr":"..."`).
fn address_in(line: &str) -> std::net::SocketAddr {
    let text = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next());
    let json = || {
        line.split("\"addr\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
    };
    text.or_else(json)
        .expect("addr in log line")
        .parse()
        .expect("socket address")
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sighup_reloads_and_the_process_keeps_serving() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let served = Served::start(&file.path);

    served.signal("HUP");
    served.wait_for_line("SIGHUP received");
    let answer = score(&client(), served.addr, None).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_0() {
    let blue = slow_model_server(Model::Diabetes, "blue-1", Duration::from_millis(600)).await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let mut served = Served::start(&file.path);
    let addr = served.addr;

    let slow = tokio::spawn(async move { score(&client(), addr, None).await });
    // The model takes 600 ms; 200 ms in, the request is at the model and SIGTERM arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!slow.is_finished());
    served.signal("TERM");
    served.wait_for_line("shutting down");

    // Readiness fails while the request drains, so a load balancer stops sending.
    let ready_url = format!("http://{}/-/ready", served.admin);
    let mut unready = false;
    for _ in 0..100 {
        let answer =
            switchyard::ops::send(http::Method::GET, &ready_url, &[], bytes::Bytes::new()).await;
        if answer.is_ok_and(|a| a.status == StatusCode::SERVICE_UNAVAILABLE) {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(unready, "/-/ready never turned 503 during the drain");
    assert!(
        !slow.is_finished(),
        "readiness failed before the request in flight finished"
    );

    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener stayed open after SIGTERM");

    let answer = slow.await.expect("task");
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the request in flight completed"
    );
    assert_eq!(blue.scored(), 1);
    let status = tokio::task::spawn_blocking(move || served.child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn diff_shows_what_each_rollout_step_changes() {
    let step = |index: usize| {
        format!(
            "{}/config/rollout/{}",
            env!("CARGO_MANIFEST_DIR"),
            switchyard::demo::ROLLOUT_STEPS[index].0
        )
    };
    let expected = [
        "instance http://127.0.0.1:9002 added to blue\n",
        "deployment green added with 0% traffic and 1 instance\n",
        "traffic blue 100% -> 90%\ntraffic green 0% -> 10%\n",
        "traffic blue 90% -> 0%\ntraffic green 10% -> 100%\n",
        "deployment blue removed\n",
    ];
    for (index, expected) in expected.iter().enumerate() {
        let output = Command::new(BINARY)
            .args(["diff", &step(index + 1), "--against", &step(index)])
            .output()
            .expect("run");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            *expected,
            "step {}",
            index + 2
        );
    }

    // The optional step between 3 and 4 only starts the mirror, and step 4 stops it.
    let mirror = format!(
        "{}/config/rollout/{}",
        env!("CARGO_MANIFEST_DIR"),
        switchyard::demo::MIRROR_STEP.0
    );
    for (new, old, expected) in [
        (&mirror, step(2), "mirrored traffic green 0% -> 10%\n"),
        (
            &step(3),
            mirror.clone(),
            "traffic blue 100% -> 90%\ntraffic green 0% -> 10%\nmirrored traffic green 10% -> 0%\n",
        ),
    ] {
        let output = Command::new(BINARY)
            .args(["diff", new, "--against", &old])
            .output()
            .expect("run");
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    }
}

#[test]
fn diff_refuses_an_invalid_new_file() {
    let file = EndpointFile::new("name: my-endpoint\ntrafic: {}\n");
    let output = Command::new(BINARY)
        .args([
            "diff",
            file.path.to_str().expect("utf-8"),
            "--against",
            file.path.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("did you mean `traffic`?"));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_access_fields_on_top() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let served = Served::start_with(&["--log-format", "json"], &file.path);
    let answer = score(&client(), served.addr, None).await;
    assert_eq!(answer.status, StatusCode::OK);

    let line = served.wait_for_line("switchyard::access");
    let entry: serde_json::Value = serde_json::from_str(&line).expect("a JSON object");
    assert_eq!(entry["target"], "switchyard::access");
    assert_eq!(entry["deployment"], "blue");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["route"], "weighted");
    assert!(entry["duration_ms"].as_f64().is_some(), "{entry}");
    assert!(entry["head_ms"].as_f64().is_some(), "{entry}");
    assert!(entry["first_byte_ms"].as_f64().is_some(), "{entry}");
    assert_eq!(entry["body"], "complete", "{entry}");
    assert!(entry["bytes"].as_u64().is_some_and(|b| b > 0), "{entry}");
}

#[tokio::test]
async fn workers_sets_the_number_of_serving_threads() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let served = Served::start_with_both(&[], &["--workers", "3"], &file.path);
    // Linux names threads after the first 15 bytes of `switchyard-worker-N`. A thread names
    // itself once it runs, so a busy machine may show it unnamed for a moment.
    let serving = || {
        std::fs::read_dir(format!("/proc/{}/task", served.child.id()))
            .expect("/proc")
            .filter_map(Result::ok)
            .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
            .filter(|name| name.trim() == "switchyard-work")
            .count()
    };
    let started = std::time::Instant::now();
    while serving() < 3 && started.elapsed() < PATIENCE {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(serving(), 3);
    // And they all answer on the one port.
    let client = client();
    for _ in 0..6 {
        assert_eq!(
            score(&client, served.addr, None).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn every_health_change_names_the_deployment_and_the_instance() {
    let dead = refused_url().await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&dead])]));
    let served = Served::start_with(&["--log-format", "json"], &file.path);
    assert_eq!(
        score(&client(), served.addr, None).await.status,
        StatusCode::BAD_GATEWAY
    );
    let line = served.wait_for_line("instance ejected");
    let entry: serde_json::Value = serde_json::from_str(&line).expect("a JSON object");
    assert_eq!(entry["deployment"], "blue", "{entry}");
    assert_eq!(entry["instance"], dead.as_str(), "{entry}");
    assert!(
        entry["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused")),
        "{entry}"
    );
    // The first ejection lasts 1 s; the next pick after it finds the instance back.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let _ = score(&client(), served.addr, None).await;
    let line = served.wait_for_line("instance back in rotation");
    assert!(line.contains(&dead) && line.contains("blue"), "{line}");
}

/// Runs the binary with `args`; its exit code, standard output and standard error.
fn switchyard(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(BINARY).args(args).output().expect("run");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn traffic_set_changes_the_split_and_leaves_every_other_byte() {
    let text = "# the endpoint\nname: my-endpoint   # keep this comment\nauth_mode: none\ntraffic:\n  blue: 100   # stable\n  green: 0\ndeployments:\n  - name: blue\n    instances: [http://127.0.0.1:9001]\n  - name: green\n    instances: [http://127.0.0.1:9002]\n";
    let file = EndpointFile::new(text);
    let path = file.path.to_str().expect("utf-8");
    let (code, out, err) = switchyard(&["traffic", "set", "blue=90", "green=10", "--config", path]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "traffic blue 100% -> 90%\ntraffic green 0% -> 10%\n");
    let edited = std::fs::read_to_string(&file.path).expect("read");
    assert_eq!(
        edited,
        text.replace("blue: 100   # stable", "blue: 90   # stable")
            .replace("green: 0", "green: 10")
    );

    let (code, _, err) = switchyard(&["traffic", "set", "blue=95", "--config", path]);
    assert_eq!(code, Some(1));
    assert!(err.contains("105"), "the shares must add up: {err}");
    assert_eq!(
        std::fs::read_to_string(&file.path).expect("read"),
        edited,
        "nothing written"
    );
}

#[test]
fn rollout_validate_checks_the_plan_against_the_endpoint_file() {
    let text = "name: my-endpoint\nauth_mode: none\ntraffic: {blue: 100, green: 0}\ndeployments:\n  - name: blue\n    instances: [http://127.0.0.1:9001]\n  - name: green\n    instances: [http://127.0.0.1:9002]\n";
    let file = EndpointFile::new(text);
    let config = file.path.to_str().expect("utf-8");
    let plan = file.dir.path().join("plan.yaml");
    std::fs::write(&plan, switchyard::demo::GATED_PLAN.1).expect("write plan");
    let plan = plan.to_str().expect("utf-8");
    let (code, out, err) = switchyard(&["rollout", "validate", plan, "--config", config]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("valid. green against blue in 4 steps"),
        "{out}"
    );
    assert!(out.contains("1. mirror 10%: hold 30s, judged"), "{out}");
    assert!(out.contains("4. traffic 100%: promotion"), "{out}");

    let other = file.dir.path().join("other.yaml");
    std::fs::write(&other, "deployment: gren\nsteps:\n  - {traffic: 100}\n").expect("write");
    let (code, _, err) = switchyard(&[
        "rollout",
        "validate",
        other.to_str().expect("utf-8"),
        "--config",
        config,
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("`gren`") && err.contains("did you mean `green`?"),
        "{err}"
    );

    let (code, _, err) = switchyard(&["rollout", "status", "--config", config, "--once"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no rollout was started"), "{err}");
}

#[test]
fn validate_and_diff_reject_what_the_gateway_would_reject() {
    // A keys file that is not there, and a key too short: both refused by a reload, so by
    // `validate` and `diff` too.
    let base = "name: my-endpoint\nauth_mode: key\nkeys_file: keys.yaml\ntraffic: {blue: 100}\ndeployments:\n  - name: blue\n    instances: [http://127.0.0.1:9001]\n";
    let file = EndpointFile::new(base);
    let path = file.path.to_str().expect("utf-8");
    let (code, _, err) = switchyard(&["validate", path]);
    assert_eq!(code, Some(1), "a missing keys file");
    assert!(err.contains("keys.yaml"), "{err}");
    let (code, _, err) = switchyard(&["diff", path, "--against", path]);
    assert_eq!(code, Some(1));
    assert!(err.contains("keys.yaml"), "{err}");

    std::fs::write(file.dir.path().join("keys.yaml"), "primary_key: short\n").expect("keys");
    let (code, _, err) = switchyard(&["validate", path]);
    assert_eq!(code, Some(1), "a short key");
    assert!(err.contains("primary_key"), "{err}");

    std::fs::write(
        file.dir.path().join("keys.yaml"),
        "primary_key: 0123456789abcdef0123\n",
    )
    .expect("keys");
    let (code, out, err) = switchyard(&["validate", path]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("valid"), "{out}");
}

#[test]
fn an_address_in_use_is_said_once_with_the_way_out() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &["http://127.0.0.1:9001"])]));
    let (code, _, err) = switchyard(&[
        "serve",
        "--config",
        file.path.to_str().expect("utf-8"),
        "--listen",
        &addr,
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(err.contains("--listen"), "{err}");
    let (code, _, err) = switchyard(&["invoke", "--request-file", "/nonexistent/request.json"]);
    assert_eq!(code, Some(1));
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

// The binary is run blocking, so the model server needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_sends_the_key_from_the_environment_and_show_takes_an_address_without_scheme() {
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let key = "0123456789abcdef0123";
    let file = EndpointFile::new(&format!(
        "name: my-endpoint\nauth_mode: key\nkeys_file: keys.yaml\ntraffic: {{blue: 100}}\ndeployments:\n  - name: blue\n    instances: [{}]\n",
        blue.url()
    ));
    std::fs::write(
        file.dir.path().join("keys.yaml"),
        format!("primary_key: {key}\n"),
    )
    .expect("keys");
    let request = file.dir.path().join("request.json");
    std::fs::write(&request, switchyard::demo::SAMPLE_REQUEST).expect("request");
    let served = Served::start(&file.path);
    let url = format!("http://{}/score", served.addr);
    let invoke = |key: Option<&str>| {
        let mut command = Command::new(BINARY);
        command.args(["invoke", "--url", &url, "--request-file"]);
        command.arg(&request);
        command.env_remove("SWITCHYARD_KEY");
        if let Some(key) = key {
            command.env("SWITCHYARD_KEY", key);
        }
        command.output().expect("run")
    };
    let refused = invoke(None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let answered = invoke(Some(key));
    assert_eq!(
        answered.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );

    let (code, out, err) = switchyard(&["show", "--admin", &served.admin.to_string()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("endpoint my-endpoint"), "{out}");
}

#[test]
fn serving_thread_flags_belong_to_the_commands_that_serve() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("endpoint.yaml");
    std::fs::write(
        &path,
        "name: e\nauth_mode: none\ntraffic: {blue: 100}\ndeployments:\n  - name: blue\n    instances: [http://127.0.0.1:1]\n",
    )
    .expect("write");
    let validate = Command::new(BINARY)
        .args(["validate", "--workers", "2"])
        .arg(&path)
        .output()
        .expect("run validate");
    assert!(!validate.status.success());
    let said = String::from_utf8_lossy(&validate.stderr);
    assert!(said.contains("--workers"), "{said}");
    for command in ["serve", "demo"] {
        let help = Command::new(BINARY)
            .args([command, "--help"])
            .output()
            .expect("run help");
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains("--workers") && text.contains("--pin-workers"),
            "{command}: {text}"
        );
    }
    for command in ["validate", "invoke", "model-server", "show"] {
        let help = Command::new(BINARY)
            .args([command, "--help"])
            .output()
            .expect("run help");
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            !text.contains("--workers"),
            "{command} lists --workers: {text}"
        );
    }
}

/// The fenced block of docs/endpoint-file.md that starts with `first_line`, without its fences.
fn docs_block(first_line: &str, nth: usize) -> String {
    let readme = include_str!("../docs/endpoint-file.md");
    let starts: Vec<usize> = readme
        .match_indices(&format!("\n{first_line}\n"))
        .map(|(at, _)| at + 1)
        .collect();
    let start = *starts
        .get(nth)
        .unwrap_or_else(|| panic!("the page has no block {nth} starting with {first_line:?}"));
    let end = readme[start..].find("\n```").expect("a closed block") + start;
    readme[start..end].to_string()
}

#[test]
fn the_docs_validate_example_is_what_validate_prints() {
    let dir = tempfile::tempdir().expect("dir");
    let file = docs_block("# endpoint.yaml, with a mistake on line 9", 0);
    std::fs::write(dir.path().join("endpoint.yaml"), format!("{file}\n")).expect("write");
    let run = || {
        let output = Command::new(BINARY)
            .args(["validate", "endpoint.yaml"])
            .current_dir(dir.path())
            .output()
            .expect("run validate");
        let mut said = String::from_utf8_lossy(&output.stdout).into_owned();
        said.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.success(), said)
    };
    let shown = |nth| {
        let block = docs_block("$ switchyard validate endpoint.yaml", nth);
        block
            .split_once('\n')
            .map(|(_, output)| format!("{output}\n"))
            .expect("output under the command")
    };
    let (valid, said) = run();
    assert!(!valid);
    assert_eq!(said, shown(0));

    let fixed = file.replace("[127.0.0.1:9003]", "[http://127.0.0.1:9003]");
    std::fs::write(dir.path().join("endpoint.yaml"), format!("{fixed}\n")).expect("write");
    let (valid, said) = run();
    assert!(valid, "{said}");
    assert_eq!(said, shown(1));
}
