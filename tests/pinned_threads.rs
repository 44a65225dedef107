//! `--pin-workers`: each serving thread runs on a CPU of its own. A file of its own, so the
//! process holds no other gateway's serving threads.
#![cfg(target_os = "linux")]

mod common;

use std::time::Instant;

use common::*;
use switchyard::model_server::Model;
use switchyard::{Gateway, GatewayOptions};

/// The CPUs a thread (or, for `self`, the process's main thread) may run on, as the kernel
/// lists them in `/proc`.
fn allowed_cpus(task: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{task}/status"))
        .expect("the thread's status");
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (usize, usize) = (
            first.parse().expect("a CPU number"),
            last.parse().expect("a CPU number"),
        );
        cpus.extend(first..=last);
    }
    cpus
}

/// The serving threads' CPU lists, once `count` of them exist.
async fn serving_threads(count: usize) -> Vec<Vec<usize>> {
    let started = Instant::now();
    loop {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
            let task = task.expect("task").file_name();
            let task = task.to_string_lossy();
            let comm =
                std::fs::read_to_string(format!("/proc/self/task/{task}/comm")).unwrap_or_default();
            // Thread names are cut to 15 bytes: "switchyard-work".
            if comm.trim_end().starts_with("switchyard-work") {
                found.push(allowed_cpus(&task));
            }
        }
        if found.len() >= count || started.elapsed() > PATIENCE {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn pinned_serving_threads_each_run_on_one_cpu_of_their_own() {
    let process_cpus = allowed_cpus(&std::process::id().to_string());
    let blue = model_server(Model::Diabetes, "blue-1").await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&blue.url()])]));
    let mut options = GatewayOptions::new(&file.path, loopback());
    options.workers = Some(2);
    options.pin_workers = true;
    let gateway = Gateway::start(options).await.expect("start the gateway");

    // Pinning happens as a thread starts; a request served proves both have started.
    let client = client();
    assert_eq!(
        score(&client, gateway.addr(), None).await.status,
        http::StatusCode::OK
    );
    let threads = serving_threads(2).await;
    assert_eq!(threads.len(), 2, "two serving threads: {threads:?}");
    // Pinning may land a moment after the thread appears.
    let started = Instant::now();
    let mut threads = threads;
    while threads.iter().any(|cpus| cpus.len() != 1) && started.elapsed() < PATIENCE {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        threads = serving_threads(2).await;
    }
    for cpus in &threads {
        assert_eq!(cpus.len(), 1, "one CPU per serving thread: {threads:?}");
        assert!(
            process_cpus.contains(&cpus[0]),
            "a CPU the process may use ({process_cpus:?}): {threads:?}"
        );
    }
    if process_cpus.len() >= 2 {
        assert_ne!(threads[0], threads[1], "not the same CPU: {threads:?}");
    }
    drop(gateway);
}
