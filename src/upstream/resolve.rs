//! Host names in instance URLs: each address a name resolves to is an instance of its own, which
//! is how a Kubernetes headless service lists the pods of a deployment. Names are resolved when a
//! config is applied and again periodically; a change of addresses rebuilds the routing table.
//!
//! Only `http://` names are expanded. An `https://` instance stays one instance whose name is
//! resolved at connect time, because its certificate is checked against the name.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use http::uri::Scheme;

use crate::config::{EndpointConfig, InstanceAddr};

/// Looks up the addresses of a host name.
pub trait Resolve: Send + Sync + fmt::Debug {
    /// Every address of `host` for `port`; empty if the name does not resolve now.
    fn resolve(&self, host: &str, port: u16) -> Vec<SocketAddr>;
}

/// The system resolver (`getaddrinfo`: /etc/hosts, then DNS).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        match (host, port).to_socket_addrs() {
            Ok(addresses) => addresses.collect(),
            Err(error) => {
                tracing::warn!(%host, %error, "instance host name does not resolve");
                Vec::new()
            }
        }
    }
}

/// The addresses each expandable instance URL of a config resolved to, sorted, so two lookups
/// compare equal when nothing changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved(BTreeMap<InstanceKey, Vec<SocketAddr>>);

/// An instance URL as a map key.
type InstanceKey = String;

impl Resolved {
    /// Resolves every `http://` instance of `config` that names a host rather than an address.
    pub fn lookup(config: &EndpointConfig, resolver: &dyn Resolve) -> Resolved {
        let mut found = BTreeMap::new();
        for addr in config.deployments.iter().flat_map(|d| &d.instances) {
            if !is_expandable(addr) {
                continue;
            }
            let key = addr.to_string();
            if found.contains_key(&key) {
                continue;
            }
            let port = addr.authority.port_u16().unwrap_or(80);
            let mut addresses = resolver.resolve(addr.authority.host(), port);
            addresses.sort();
            addresses.dedup();
            found.insert(key, addresses);
        }
        Resolved(found)
    }

    /// The addresses `addr` expands to, or `None` if it stays one instance as written (an IP
    /// literal, an https URL, or a name that does not resolve now and is left to connect time).
    pub fn addresses(&self, addr: &InstanceAddr) -> Option<&[SocketAddr]> {
        self.0
            .get(&addr.to_string())
            .map(Vec::as_slice)
            .filter(|addresses| !addresses.is_empty())
    }

    /// True if no instance URL names a host to expand.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn is_expandable(addr: &InstanceAddr) -> bool {
    let host = addr
        .authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    addr.scheme == Scheme::HTTP && host.parse::<IpAddr>().is_err()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Debug)]
    struct Fixed(HashMap<&'static str, Vec<SocketAddr>>);

    impl Resolve for Fixed {
        fn resolve(&self, host: &str, port: u16) -> Vec<SocketAddr> {
            self.0
                .get(host)
                .map(|ips| ips.iter().map(|a| SocketAddr::new(a.ip(), port)).collect())
                .unwrap_or_default()
        }
    }

    fn config(instances: &str) -> EndpointConfig {
        EndpointConfig::parse(&format!(
            "name: e-1\nauth_mode: none\ntraffic: {{blue: 100}}\ndeployments:\n- {{name: blue, instances: [{instances}]}}\n"
        ))
        .expect("valid")
    }

    fn at(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 0)
    }

    #[test]
    fn names_expand_to_sorted_addresses_and_literals_and_https_do_not() {
        let resolver = Fixed(HashMap::from([(
            "model",
            vec![at("10.0.0.2"), at("10.0.0.1")],
        )]));
        let config = config("http://model:8080, http://10.0.0.9:8080, https://model:8443");
        let resolved = Resolved::lookup(&config, &resolver);
        let instances = &config.deployments[0].instances;
        let expanded: Vec<String> = resolved
            .addresses(&instances[0])
            .expect("expanded")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(expanded, ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(resolved.addresses(&instances[1]), None, "an IP literal");
        assert_eq!(
            resolved.addresses(&instances[2]),
            None,
            "https keeps its name"
        );
    }

    #[test]
    fn a_name_that_does_not_resolve_stays_as_written() {
        let resolved = Resolved::lookup(&config("http://nowhere:80"), &Fixed(HashMap::new()));
        assert!(!resolved.is_empty());
        assert_eq!(
            resolved.addresses(&config("http://nowhere:80").deployments[0].instances[0]),
            None
        );
    }
}
