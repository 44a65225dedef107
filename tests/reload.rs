//! Hot reload: every way a file gets replaced, bad files that must not take effect, and what a
//! reload must leave alone (connections, requests in flight).

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use switchyard::model_server::{Model, ModelServer};
use switchyard::reload::ReloadOutcome;
use tokio::net::TcpStream;

struct BlueGreen {
    blue: ModelServer,
    green: ModelServer,
}

impl BlueGreen {
    async fn start() -> Self {
        BlueGreen {
            blue: model_server(Model::Diabetes, "blue-1").await,
            green: model_server(Model::Constant, "green-1").await,
        }
    }

    fn split(&self, blue: u8, green: u8) -> String {
        endpoint_yaml(&[
            ("blue", blue, &[&self.blue.url()]),
            ("green", green, &[&self.green.url()]),
        ])
    }
}

/// Sends `n` unpinned requests and returns which deployments answered, all of them the same.
async fn all_answered_by(client: &TestClient, gateway: std::net::SocketAddr, n: usize) -> String {
    let mut seen = Vec::new();
    for _ in 0..n {
        let answer = score(client, gateway, None).await;
        assert_eq!(answer.status, StatusCode::OK);
        seen.push(answer.deployment.expect("deployment header"));
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "expected one deployment, saw {seen:?}");
    seen.remove(0)
}

#[tokio::test]
async fn an_in_place_write_is_applied() {
    let servers = BlueGreen::start().await;
    let file = EndpointFile::new(&servers.split(100, 0));
    let gateway = gateway(&file.path).await;
    let client = client();
    assert_eq!(all_answered_by(&client, gateway.addr(), 5).await, "blue");

    file.write_in_place(&servers.split(0, 100));
    wait_for_generation(&gateway, 2).await;
    assert_eq!(all_answered_by(&client, gateway.addr(), 5).await, "green");
}

#[tokio::test]
async fn a_rename_over_the_file_is_applied() {
    let servers = BlueGreen::start().await;
    let file = EndpointFile::new(&servers.split(100, 0));
    let gateway = gateway(&file.path).await;
    let client = client();

    file.replace_by_rename(&servers.split(0, 100));
    wait_for_generation(&gateway, 2).await;
    assert_eq!(all_answered_by(&client, gateway.addr(), 5).await, "green");

    // The watch survives the rename: the replaced file is watched too.
    file.replace_by_rename(&servers.split(100, 0));
    wait_for_generation(&gateway, 3).await;
    assert_eq!(all_answered_by(&client, gateway.addr(), 5).await, "blue");
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_is_applied() {
    // Kubernetes mounts a ConfigMap as endpoint.yaml -> ..data/endpoint.yaml, ..data -> ..v1,
    // and updates it by pointing a new ..data at a new directory with one rename.
    let servers = BlueGreen::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let version = |name: &str, text: &str| {
        std::fs::create_dir(root.join(name)).expect("version dir");
        std::fs::write(root.join(name).join("endpoint.yaml"), text).expect("write");
    };
    version("..v1", &servers.split(100, 0));
    std::os::unix::fs::symlink("..v1", root.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/endpoint.yaml", root.join("endpoint.yaml"))
        .expect("symlink");
    let gateway = gateway(&root.join("endpoint.yaml")).await;
    let client = client();
    assert_eq!(all_answered_by(&client, gateway.addr(), 3).await, "blue");

    version("..v2", &servers.split(0, 100));
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).expect("symlink");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    std::fs::remove_dir_all(root.join("..v1")).expect("old version removed");

    wait_for_generation(&gateway, 2).await;
    assert_eq!(all_answered_by(&client, gateway.addr(), 3).await, "green");
}

#[tokio::test]
async fn an_invalid_file_keeps_the_last_good_config_serving() {
    let servers = BlueGreen::start().await;
    let file = EndpointFile::new(&servers.split(100, 0));
    let gateway = gateway(&file.path).await;
    let client = client();

    // A typo that would send all traffic to green if it were half-applied.
    let typo = servers.split(0, 100).replace("traffic:", "trafic:");
    file.write_in_place(&typo);
    let deadline = std::time::Instant::now() + PATIENCE;
    // Wait for this file's error: a reader may also catch the file half-written first.
    let error = loop {
        if let Some(error) = gateway.reloader().status().last_error {
            if error.to_string().contains("trafic") {
                break error;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bad file was never looked at"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let message = error.to_string();
    assert!(
        message.contains("trafic") && message.contains("did you mean `traffic`?"),
        "{message}"
    );
    assert_eq!(gateway.generation(), 1);
    assert_eq!(all_answered_by(&client, gateway.addr(), 5).await, "blue");

    // An explicit reload reports the same rejection.
    match gateway.reloader().reload() {
        ReloadOutcome::Rejected { generation, .. } => assert_eq!(generation, 1),
        other => panic!("expected a rejection, got {other:?}"),
    }

    // Totals that are off, and an unreadable file, are rejected the same way.
    file.write_in_place(&servers.split(60, 60));
    assert!(matches!(
        gateway.reloader().reload(),
        ReloadOutcome::Rejected { .. }
    ));
    std::fs::remove_file(&file.path).expect("remove");
    assert!(matches!(
        gateway.reloader().reload(),
        ReloadOutcome::Rejected { .. }
    ));
    assert_eq!(all_answered_by(&client, gateway.addr(), 5).await, "blue");

    // Fixing the file applies it and clears the error.
    file.write_in_place(&servers.split(0, 100));
    wait_for_generation(&gateway, 2).await;
    assert!(gateway.reloader().status().last_error.is_none());
    assert_eq!(all_answered_by(&client, gateway.addr(), 5).await, "green");
}

#[tokio::test]
async fn one_keep_alive_connection_sees_each_new_split() {
    let servers = BlueGreen::start().await;
    let file = EndpointFile::new(&servers.split(100, 0));
    let gateway = gateway(&file.path).await;

    // A single HTTP/1.1 connection for the whole test: if a reload closed it, a send would fail.
    let stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    let (mut connection, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let driver = tokio::spawn(driver);

    let splits = [
        (0, 100, "green"),
        (100, 0, "blue"),
        (0, 100, "green"),
        (100, 0, "blue"),
    ];
    for (round, (blue, green, expected)) in splits.into_iter().enumerate() {
        file.replace_by_rename(&servers.split(blue, green));
        wait_for_generation(&gateway, round as u64 + 2).await;
        for _ in 0..5 {
            let response = connection
                .send_request(score_request(gateway.addr(), None))
                .await
                .expect("the connection is still open");
            let answer = read(response).await;
            assert_eq!(
                answer.deployment.as_deref(),
                Some(expected),
                "round {round}"
            );
        }
    }
    assert!(!driver.is_finished(), "the connection was never closed");
}

#[tokio::test]
async fn a_request_in_flight_finishes_when_its_deployment_is_deleted() {
    let blue = slow_model_server(Model::Diabetes, "blue-1", Duration::from_millis(400)).await;
    let green = model_server(Model::Constant, "green-1").await;
    let both = endpoint_yaml(&[("blue", 100, &[&blue.url()]), ("green", 0, &[&green.url()])]);
    let green_only = endpoint_yaml(&[("green", 100, &[&green.url()])]);
    let file = EndpointFile::new(&both);
    let gateway = gateway(&file.path).await;
    let client = client();

    let addr = gateway.addr();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { score(&client, addr, None).await }
    });
    // Wait until the request is at blue, then delete blue.
    let table = std::sync::Arc::clone(gateway.reloader().table());
    let deadline = std::time::Instant::now() + PATIENCE;
    while table
        .load()
        .routes
        .deployment("blue")
        .is_some_and(|d| d.in_flight() == 0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "request never reached blue"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    file.write_in_place(&green_only);
    wait_for_generation(&gateway, 2).await;
    assert!(
        table.load().routes.deployment("blue").is_none(),
        "blue is deleted"
    );
    assert!(
        !slow.is_finished(),
        "the slow request is still in flight after the delete"
    );

    let answer = slow.await.expect("task");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.deployment.as_deref(), Some("blue"));
    assert_eq!(blue.scored(), 1);

    let pinned = score(&client, addr, Some("blue")).await;
    assert_eq!(pinned.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_reload_keeps_unchanged_deployments_and_their_counts() {
    let servers = BlueGreen::start().await;
    let file = EndpointFile::new(&servers.split(100, 0));
    let gateway = gateway(&file.path).await;
    let before = gateway.reloader().table().load_full();

    file.write_in_place(&servers.split(90, 10));
    wait_for_generation(&gateway, 2).await;
    let after = gateway.reloader().table().load_full();
    for name in ["blue", "green"] {
        assert!(
            std::sync::Arc::ptr_eq(
                before.routes.deployment(name).expect("before"),
                after.routes.deployment(name).expect("after")
            ),
            "{name} was rebuilt by a traffic-only change"
        );
    }
}

#[tokio::test]
async fn rewriting_the_same_text_is_not_a_new_generation() {
    let servers = BlueGreen::start().await;
    let text = servers.split(100, 0);
    let file = EndpointFile::new(&text);
    let gateway = gateway(&file.path).await;
    file.write_in_place(&text);
    assert!(matches!(
        gateway.reloader().reload(),
        ReloadOutcome::Unchanged { generation: 1 }
    ));
}

#[tokio::test]
async fn reading_the_file_is_not_itself_a_change() {
    // The watcher sees the directory's events; the reload's own read of the file is one. If it
    // woke the watcher, the file would be re-read every debounce period, forever.
    let servers = BlueGreen::start().await;
    let file = EndpointFile::new(&servers.split(100, 0));
    let gateway = gateway(&file.path).await;
    let idle = Duration::from_millis(1500);
    tokio::time::sleep(idle).await;
    let metrics = gateway.metrics().render();
    let checks: u64 = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("switchyard_config_reloads_total{result=\"unchanged\"} ")
        })
        .map_or(0, |n| n.parse().expect("a count"));
    // The 1 s poll checks once or twice in 1.5 s; a feedback loop would check ~60 times.
    assert!(
        checks <= 3,
        "the file was checked {checks} times in {idle:?} with no change"
    );
    assert_eq!(gateway.generation(), 1);
}

#[tokio::test]
async fn an_edit_of_comments_and_layout_only_is_unchanged() {
    let blue = model_server(switchyard::model_server::Model::Diabetes, "blue-1").await;
    let text = endpoint_yaml(&[("blue", 100, &[&blue.url()])]);
    let file = EndpointFile::new(&text);
    let gateway = gateway(&file.path).await;
    file.write_in_place(&format!(
        "# a comment\n{}\n\n",
        text.replace("traffic: {blue: 100}", "traffic:   {blue: 100}   # all")
    ));
    let outcome = gateway.reloader().reload();
    assert!(
        matches!(
            outcome,
            switchyard::reload::ReloadOutcome::Unchanged { generation: 1 }
        ),
        "{outcome:?}"
    );
    assert_eq!(gateway.generation(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_slowly_in_place_applies_only_once_closed() {
    use std::io::Write;
    let blue = model_server(switchyard::model_server::Model::Diabetes, "blue-1").await;
    let green = model_server(switchyard::model_server::Model::Constant, "green-1").await;
    let first = endpoint_yaml(&[("blue", 100, &[&blue.url()]), ("green", 0, &[&green.url()])]);
    let file = EndpointFile::new(&first);
    let gateway = gateway(&file.path).await;
    // The new text's prefix up to green is valid by itself: blue at 100%, green deleted.
    let next = format!(
        "{}  - name: green\n    instances: [{}]\n",
        endpoint_yaml(&[("blue", 100, &[&blue.url()])]).replace("64", "32"),
        green.url()
    );
    let cut = next.find("  - name: green").expect("green's entry");
    assert!(switchyard::config::EndpointConfig::parse(&next[..cut]).is_ok());
    let path = file.path.clone();
    let whole = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = std::sync::Arc::clone(&whole);
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = std::fs::File::create(&path).expect("open for writing");
        // The valid prefix first, then the rest after more than one poll interval.
        out.write_all(&next.as_bytes()[..cut]).expect("prefix");
        out.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(2_500));
        out.write_all(&next.as_bytes()[cut..]).expect("rest");
        // From here on the file is whole; it is closed as `out` goes.
        written.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let started = std::time::Instant::now();
    while !whole.load(std::sync::atomic::Ordering::SeqCst) {
        assert_eq!(gateway.generation(), 1, "a half-written file was applied");
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.await.expect("writer");
    wait_for_generation(&gateway, 2).await;
    let table = gateway.reloader().table().load();
    assert!(
        table.routes.deployment("green").is_some(),
        "the whole file applied"
    );
}
