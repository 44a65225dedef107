//! A real Prometheus server for the tests, scraping gateways' admin APIs every second.
//! Needs the `prometheus` binary (Debian's `prometheus` package, which `.ci/run` installs).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;

/// A Prometheus server, stopped on drop.
pub struct Prometheus {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

/// Whether the `prometheus` binary is there; tests that need it say so and pass over.
pub fn installed() -> bool {
    let found = Command::new("prometheus").arg("--version").output().is_ok();
    if !found {
        eprintln!("prometheus is not installed (Debian's prometheus package); skipped");
    }
    found
}

impl Prometheus {
    /// Scrapes each of `targets` (`host:port` of an admin API) every second.
    pub fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let targets: Vec<String> = targets
            .iter()
            .map(|t| format!("'{}'", t.trim_start_matches("http://")))
            .collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: switchyard\n    \
                 static_configs: [{{targets: [{}]}}]\n",
                targets.join(", ")
            ),
        )
        .expect("write config");
        // Prometheus cannot report a port it chose, so a free one is found first.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// An instant query's result: each series' labels and value.
    pub async fn query(&self, promql: &str) -> Vec<(HashMap<String, String>, f64)> {
        let url = format!("{}/api/v1/query?query={}", self.url, encode(promql));
        let answer = switchyard::ops::send(http::Method::GET, &url, &[], bytes::Bytes::new())
            .await
            .expect("prometheus answers");
        assert_eq!(answer.status, StatusCode::OK, "{promql}");
        let json: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
        json["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect();
                let value = series["value"][1]
                    .as_str()
                    .expect("a value")
                    .parse()
                    .expect("a number");
                (labels, value)
            })
            .collect()
    }

    /// The value of `promql` for each deployment.
    pub async fn by_deployment(&self, promql: &str) -> HashMap<String, f64> {
        self.query(promql)
            .await
            .into_iter()
            .map(|(labels, value)| (labels.get("deployment").cloned().unwrap_or_default(), value))
            .collect()
    }

    /// Waits until the server is up and scrapes `targets` targets.
    pub async fn wait_until_scraping(&self, targets: usize) {
        let started = Instant::now();
        loop {
            let url = format!("{}/api/v1/query?query=sum(up)", self.url);
            if let Ok(answer) =
                switchyard::ops::send(http::Method::GET, &url, &[], bytes::Bytes::new()).await
            {
                let json: serde_json::Value =
                    serde_json::from_slice(&answer.body).unwrap_or_default();
                if json["data"]["result"][0]["value"][1].as_str() == Some(&targets.to_string()) {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "prometheus never scraped the gateways"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but letters and digits.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
