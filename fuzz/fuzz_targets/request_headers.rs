//! Whatever a client puts in the headers the request path reads (the pin, the request id, the
//! key), routing answers or refuses, and only a weighted request may be copied to the mirror;
//! nothing panics.
#![no_main]

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use switchyard::auth::Keys;
use switchyard::config::EndpointConfig;
use switchyard::metrics::Metrics;
use switchyard::proxy::headers;
use switchyard::routing::{PIN_HEADER, RouteReason, RoutingTable};

const ENDPOINT: &str = "name: fuzz\nauth_mode: none\ntraffic: {blue: 90, green: 10}\n\
    mirror_traffic: {red: 20}\ndeployments:\n\
    - {name: blue, instances: [http://127.0.0.1:1, http://127.0.0.1:2]}\n\
    - {name: green, instances: [http://127.0.0.1:3]}\n\
    - {name: red, instances: [http://127.0.0.1:4]}\n";

fuzz_target!(|data: &[u8]| {
    let Some((&draw, rest)) = data.split_first() else {
        return;
    };
    let thirds = rest.len() / 3;
    let (pin, rest) = rest.split_at(thirds);
    let (request_id, authorization) = rest.split_at(thirds);

    let mut map = HeaderMap::new();
    for (name, bytes) in [
        (PIN_HEADER, pin),
        ("x-request-id", request_id),
        ("authorization", authorization),
    ] {
        if let Ok(value) = HeaderValue::from_bytes(bytes) {
            map.append(name, value);
        }
    }

    let config = EndpointConfig::parse(ENDPOINT).expect("valid");
    let keys = Keys::parse("primary_key: fuzz-primary-key-0123\n").expect("valid");
    let table = RoutingTable::build(
        Arc::new(config),
        1,
        None,
        &Metrics::new(),
        Some(keys),
        Default::default(),
    );
    let _ = table.authorizes(&map);
    let _ = headers::request_id(&map);
    if let Ok(pin) = headers::pin(&map) {
        if let Ok(route) = table.route(pin, draw) {
            if route.reason == RouteReason::Weighted {
                // The mirror's draw is its own; any value picks red or nothing.
                let mirror = table.mirror(draw.wrapping_mul(37) % 100);
                assert!(mirror.is_none_or(|deployment| deployment.name() == "red"));
            }
        }
    }
});
