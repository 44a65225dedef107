//! Whatever a client puts in the headers the request path reads (the pin, the sticky header, the
//! request id, the key), routing answers or refuses; a sticky value always lands on the same
//! deployment with live traffic, and a pinned request is never copied to the mirror; nothing
//! panics.
#![no_main]

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use rand::SeedableRng;
use libfuzzer_sys::fuzz_target;
use switchyard::auth::Keys;
use switchyard::config::EndpointConfig;
use switchyard::metrics::Metrics;
use switchyard::config::PIN_HEADER;
use switchyard::proxy::headers;
use switchyard::routing::{Draws, KeyCheck, RouteReason, RoutingTable};
use switchyard::upstream::Deployment;

const ENDPOINT: &str = "name: fuzz\nauth_mode: none\ntraffic: {blue: 90, green: 10}\n\
    mirror_traffic: {red: 20}\nsticky_header: x-user-id\ndeployments:\n\
    - {name: blue, instances: [http://127.0.0.1:1, http://127.0.0.1:2]}\n\
    - {name: green, instances: [http://127.0.0.1:3]}\n\
    - {name: red, instances: [http://127.0.0.1:4]}\n";

fuzz_target!(|data: &[u8]| {
    let Some((&draw, rest)) = data.split_first() else {
        return;
    };
    let quarter = rest.len() / 4;
    let (pin, rest) = rest.split_at(quarter);
    let (user, rest) = rest.split_at(quarter);
    let (request_id, authorization) = rest.split_at(quarter);

    let mut map = HeaderMap::new();
    for (name, bytes) in [
        (PIN_HEADER, pin),
        ("x-user-id", user),
        ("x-request-id", request_id),
        ("authorization", authorization),
    ] {
        if let Ok(value) = HeaderValue::from_bytes(bytes) {
            map.append(name, value);
        }
    }

    let config = EndpointConfig::parse(ENDPOINT).expect("valid");
    let keys = Keys::parse("primary_key: fuzz-primary-key-0123\n").expect("valid");
    let resolved = Default::default();
    let deployments = Deployment::build_all(&config, &[], &Metrics::new(), &resolved);
    let table = RoutingTable::build(Arc::new(config), 1, deployments, resolved);
    let key = if keys.authorizes(&map) {
        KeyCheck::Passed
    } else {
        KeyCheck::Failed
    };
    let _ = headers::request_id(&map);
    // The rules in order, with a deck positioned by the input.
    let mut draws = Draws::default();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(u64::from(draw));
    let decided = table.decide(key, &map, &mut draws, &mut rng);
    if let Ok(decision) = &decided {
        if decision.route.reason == RouteReason::Pinned {
            assert!(decision.mirror.is_none(), "a pinned request is never copied");
        } else {
            assert!(decision.mirror.as_ref().is_none_or(|d| d.name() == "red"));
        }
    }
    if let Some(user) = table.sticky_key(&map) {
        if let Ok(route) = table.route_sticky(user.as_bytes()) {
            let again = table.route_sticky(user.as_bytes()).expect("the same answer");
            assert!(Arc::ptr_eq(&route.deployment, &again.deployment));
            assert_ne!(route.deployment.name(), "red", "red has no live traffic");
        }
    }
});
