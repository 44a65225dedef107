//! What does the routing decision cost per request, pick a deployment and then an instance,
//! and does it stay flat from 2 to 20 deployments? And what does a sticky user's hash cost,
//! which has to score every deployment with live traffic?

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use switchyard::config::EndpointConfig;
use switchyard::routing::{Deck, RoutingTable};
use switchyard::upstream::Deployment;

/// An endpoint with `n` deployments of two instances each; the first takes 100 - (n - 1)
/// percent and every other one 1 percent.
fn table(n: usize) -> RoutingTable {
    let mut traffic = vec![format!("d00: {}", 101 - n)];
    traffic.extend((1..n).map(|i| format!("d{i:02}: 1")));
    let mut text = format!(
        "name: bench\nauth_mode: none\nsticky_header: x-user-id\ntraffic: {{{}}}\n\
         deployments:\n",
        traffic.join(", ")
    );
    for i in 0..n {
        text.push_str(&format!(
            "  - name: d{i:02}\n    instances: [http://127.0.0.1:{}, http://127.0.0.1:{}]\n",
            10_000 + 2 * i,
            10_001 + 2 * i
        ));
    }
    let config = EndpointConfig::parse(&text).expect("valid bench config");
    let resolved = switchyard::upstream::resolve::Resolved::default();
    let metrics = switchyard::metrics::Metrics::new();
    let deployments = Deployment::build_all(&config, &[], &metrics, &resolved);
    RoutingTable::build(Arc::new(config), 1, deployments, resolved)
}

fn weighted(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_weighted_then_instance");
    for n in [2, 5, 20] {
        let table = table(n);
        let mut rng = rand::rng();
        // Drawn as the gateway draws: from a deck of 100, reshuffled once per 100 requests.
        let mut deck = Deck::new();
        group.bench_with_input(BenchmarkId::from_parameter(n), &table, |b, table| {
            b.iter(|| {
                let draw = deck.draw(&mut rng);
                let route = table.route(None, draw).expect("routed");
                black_box(route.deployment.select(&mut rng, None));
            })
        });
    }
    group.finish();
}

fn pinned(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_pinned_then_instance");
    for n in [2, 5, 20] {
        let table = table(n);
        // The last deployment: the worst case of the name scan.
        let pin = HeaderValue::from_str(&format!("d{:02}", n - 1)).expect("header");
        let mut rng = rand::rng();
        group.bench_with_input(BenchmarkId::from_parameter(n), &table, |b, table| {
            b.iter(|| {
                let route = table.route(Some(black_box(&pin)), 0).expect("routed");
                black_box(route.deployment.select(&mut rng, None));
            })
        });
    }
    group.finish();
}

fn sticky(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_sticky_then_instance");
    for n in [2, 5, 20] {
        let table = table(n);
        let users: Vec<String> = (0..1024)
            .map(|user| format!("5f0c6a1e-user-{user:04}"))
            .collect();
        let mut next = 0;
        let mut rng = rand::rng();
        group.bench_with_input(BenchmarkId::from_parameter(n), &table, |b, table| {
            b.iter(|| {
                next = (next + 1) % users.len();
                let route = table.route_sticky(users[next].as_bytes()).expect("routed");
                black_box(route.deployment.select(&mut rng, None));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, weighted, pinned, sticky);
criterion_main!(benches);
