//! The routing table: an immutable snapshot of one applied config, and the pure decision of which
//! deployment serves a request.
//!
//! Everything a request needs is computed when the table is built: the weighted split becomes a
//! 100-slot array, so a weighted pick is one index, and a pin is a scan of at most 20 words.
//! The index comes from a [`Deck`]: every 100 draws hold each slot once, so the observed split
//! is exact over every 100 weighted requests a serving thread routes, not only on average.
//!
//! With `sticky_header`, a request that carries the header is routed by its value instead, with
//! weighted rendezvous hashing (`Sticky`): the same value lands on the same deployment for as
//! long as the split allows, and a split change moves only the users it has to.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::seq::SliceRandom;

use crate::config::{EndpointConfig, PIN_HEADER};
use crate::upstream::Deployment;
use crate::upstream::probe::Prober;
use crate::upstream::resolve::Resolved;

/// One applied config, ready to route requests. Never changes once built; a reload builds a new
/// one and swaps it in.
#[derive(Debug)]
pub struct RoutingTable {
    config: Arc<EndpointConfig>,
    generation: u64,
    /// Deployments in config order.
    deployments: Box<[Arc<Deployment>]>,
    /// What the instances' host names resolved to when the table was built.
    resolved: Resolved,
    /// `slots[draw]` is the index of the deployment that a weighted draw of `draw` (0..100) picks;
    /// `None` when all weights are 0.
    slots: Option<Box<[u8; 100]>>,
    /// Where a share of weighted requests is copied to, and how large a share.
    mirror: Option<(Arc<Deployment>, u8)>,
    /// [`pin_key`] of each deployment's name, in config order: a pin is looked for in this one
    /// contiguous array, and only a matching key's name is compared in full.
    pin_keys: Box<[u64]>,
    /// Routes requests that carry the `sticky_header`; `None` without one.
    sticky: Option<Sticky>,
}

/// Weighted rendezvous hashing over the deployments with live traffic.
///
/// Each deployment scores a key `-ln(u) / weight`, where `u` in `(0, 1)` hashes the key with the
/// deployment's name, and the lowest score wins. So a deployment wins a share of keys equal to
/// its share of the weights, and the winner depends only on the key and on the deployments'
/// names and weights: when green grows from 10 to 20%, users already on green stay there and
/// only the users green takes over move. In general a user moves only off a deployment whose
/// weight fell or onto one whose weight rose.
#[derive(Debug)]
struct Sticky {
    header: HeaderName,
    /// Deployments with positive weight: index, seed from the name, and `1 / weight`.
    candidates: Box<[(u8, u64, f64)]>,
}

/// How a deployment was chosen; a metric label, so a small closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteReason {
    /// Drawn by the traffic weights.
    Weighted,
    /// Named by the pin header.
    Pinned,
    /// Chosen by the value of the sticky header.
    Sticky,
}

/// The outcome of routing one request.
#[derive(Debug, Clone)]
pub struct Route {
    /// The deployment that serves it.
    pub deployment: Arc<Deployment>,
    /// Why that one.
    pub reason: RouteReason,
}

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// `auth_mode: key`, and the request carries no valid key.
    Unauthorized,
    /// The pin header is present but unusable (sent twice, or empty).
    InvalidPin(&'static str),
    /// No pin, and every deployment has weight 0.
    NoPositiveWeight,
    /// The pin header names no deployment of this endpoint.
    UnknownDeployment {
        /// The name as sent (lossy if not UTF-8).
        requested: String,
        /// The deployments that do exist, comma separated.
        known: String,
    },
}

/// What checking a request's key found. The keys themselves are held beside the table, by
/// whoever checks them: the decision needs only the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// `auth_mode: none`: no key is asked for.
    NotAsked,
    /// The request carries one of the endpoint's keys.
    Passed,
    /// `auth_mode: key`, and the request carries no valid key.
    Failed,
}

/// What an endpoint's rules decide for one request, before it goes to an instance.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The deployment that serves it, and why that one.
    pub route: Route,
    /// The deployment it is also copied to, whose answer is discarded.
    pub mirror: Option<Arc<Deployment>>,
    /// The endpoint checks keys: the request's key is the gateway's credential, which
    /// instances never see.
    pub keyed: bool,
}

/// The draws of one serving thread: one deck for the split, one for the mirror's share, both for
/// the table of `generation`.
#[derive(Debug, Default)]
pub struct Draws {
    generation: u64,
    split: Deck,
    mirror: Deck,
}

impl Draws {
    /// The draws for `table`: a table not drawn for before starts fresh decks, so that every
    /// run of 100 weighted requests under one config follows its split exactly, however many
    /// were drawn under the one before.
    fn for_table(&mut self, table: &RoutingTable) -> &mut Draws {
        if self.generation != table.generation() {
            *self = Draws {
                generation: table.generation(),
                ..Draws::default()
            };
        }
        self
    }
}

/// `azureml-model-deployment`: pins a request, and names the deployment on every answer. A
/// name made once: looking a header up by a string parses the string each time.
pub static PIN: HeaderName = HeaderName::from_static(PIN_HEADER);

/// The pin header's value, if the request has one: refused when sent twice (which one would an
/// instance see?) or empty.
pub fn pin(headers: &HeaderMap) -> Result<Option<&HeaderValue>, RouteError> {
    let mut values = headers.get_all(&PIN).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(RouteError::InvalidPin(
            "sent more than once; send one deployment name",
        ));
    }
    if first.is_empty() {
        return Err(RouteError::InvalidPin(
            "empty; send a deployment name or leave the header out",
        ));
    }
    Ok(Some(first))
}

/// Draws for the weighted split: each run of 100 draws holds every value of `0..100` once, in an
/// order shuffled afresh for each run.
///
/// Independent random draws match a 90/10 split only on average: over 100 requests, green's
/// count has a standard deviation of 3, so a user checking a fresh 10% flight sees anything from
/// 4 to 16. Drawing without replacement makes every 100 requests routed by one config come out
/// at exactly 90/10, and the order within them stays unpredictable.
#[derive(Debug, Clone)]
pub struct Deck {
    order: [u8; 100],
    next: usize,
}

impl Deck {
    /// A deck whose first run is shuffled on the first draw.
    pub fn new() -> Self {
        Deck {
            order: std::array::from_fn(|index| index as u8),
            next: 100,
        }
    }

    /// The next draw, in `0..100`.
    pub fn draw(&mut self, rng: &mut impl rand::Rng) -> u8 {
        if self.next == self.order.len() {
            self.order.shuffle(rng);
            self.next = 0;
        }
        let draw = self.order[self.next];
        self.next += 1;
        draw
    }
}

impl Default for Deck {
    fn default() -> Self {
        Deck::new()
    }
}

// === impl RoutingTable ===

impl RoutingTable {
    /// The rules of a request, in this order: the key (`auth_mode: key`; `key` is what
    /// checking it found), the pin header, the sticky header, the weighted draw, and the
    /// mirror's draw. A pinned request is never copied, as in Azure; pinned and sticky requests
    /// take no draw from `draws`, so they leave the weighted split exact.
    pub fn decide(
        &self,
        key: KeyCheck,
        headers: &HeaderMap,
        draws: &mut Draws,
        rng: &mut impl rand::Rng,
    ) -> Result<Decision, RouteError> {
        if key == KeyCheck::Failed {
            return Err(RouteError::Unauthorized);
        }
        let pin = pin(headers)?;
        let route = match (pin, self.sticky_key(headers)) {
            (None, Some(key)) => self.route_sticky(key.as_bytes())?,
            (None, None) => {
                let draw = draws.for_table(self).split.draw(rng);
                self.route(None, draw)?
            }
            (Some(pin), _) => self.route(Some(pin), 0)?,
        };
        let mirror = if route.reason != RouteReason::Pinned && self.mirrors() {
            let draw = draws.for_table(self).mirror.draw(rng);
            self.mirror(draw).cloned()
        } else {
            None
        };
        Ok(Decision {
            route,
            mirror,
            keyed: key != KeyCheck::NotAsked,
        })
    }

    /// Builds the table for `config`, whose deployments, in config order, are `deployments`;
    /// `resolved` is what their instances' host names resolved to.
    pub fn build(
        config: Arc<EndpointConfig>,
        generation: u64,
        deployments: Box<[Arc<Deployment>]>,
        resolved: Resolved,
    ) -> RoutingTable {
        assert_eq!(
            deployments.len(),
            config.deployments.len(),
            "one deployment per configured deployment"
        );

        let slots = (config.total_traffic() == 100).then(|| {
            let mut slots = Box::new([0u8; 100]);
            let mut next = 0;
            for (index, deployment) in config.deployments.iter().enumerate() {
                for _ in 0..deployment.traffic {
                    // At most 20 deployments, so the index fits in a u8.
                    slots[next] = index as u8;
                    next += 1;
                }
            }
            slots
        });

        let mirror = config
            .deployments
            .iter()
            .zip(&deployments)
            .find(|(config, _)| config.mirror > 0)
            .map(|(config, deployment)| (Arc::clone(deployment), config.mirror));

        let pin_keys = deployments
            .iter()
            .map(|deployment| pin_key(deployment.header_value().as_bytes()))
            .collect();

        let sticky = config.sticky_header.as_ref().map(|header| Sticky {
            header: header.clone(),
            candidates: config
                .deployments
                .iter()
                .enumerate()
                .filter(|(_, deployment)| deployment.traffic > 0)
                .map(|(index, deployment)| {
                    let seed = mix(hash_bytes(deployment.name.as_bytes()));
                    (index as u8, seed, 1.0 / f64::from(deployment.traffic))
                })
                .collect(),
        });

        RoutingTable {
            config,
            generation,
            deployments,
            resolved,
            slots,
            mirror,
            pin_keys,
            sticky,
        }
    }

    /// Picks the deployment for a request.
    ///
    /// `pin` is the value of the pin header, if the request had one. `draw` is a uniform random
    /// number in `0..100`; taking it as an argument keeps this function pure, so tests can drive
    /// it with a seeded RNG or exact values.
    pub fn route(&self, pin: Option<&HeaderValue>, draw: u8) -> Result<Route, RouteError> {
        if let Some(pin) = pin {
            let key = pin_key(pin.as_bytes());
            return self
                .pin_keys
                .iter()
                .zip(self.deployments.iter())
                .find(|(candidate, d)| **candidate == key && d.header_value() == pin)
                .map(|(_, deployment)| Route {
                    deployment: Arc::clone(deployment),
                    reason: RouteReason::Pinned,
                })
                .ok_or_else(|| RouteError::UnknownDeployment {
                    requested: String::from_utf8_lossy(pin.as_bytes()).into_owned(),
                    known: self.names().join(", "),
                });
        }
        let slots = self.slots.as_ref().ok_or(RouteError::NoPositiveWeight)?;
        let index = slots[usize::from(draw) % 100];
        Ok(Route {
            deployment: Arc::clone(&self.deployments[usize::from(index)]),
            reason: RouteReason::Weighted,
        })
    }

    /// The value of the sticky header, when the endpoint has one and the request carries it with
    /// a value that is not empty.
    pub fn sticky_key<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let sticky = self.sticky.as_ref()?;
        headers
            .get(&sticky.header)
            .filter(|value| !value.as_bytes().trim_ascii().is_empty())
    }

    /// Picks the deployment for a request whose sticky header has the value `key`: always the
    /// same one for the same key under the same split (see `Sticky`).
    pub fn route_sticky(&self, key: &[u8]) -> Result<Route, RouteError> {
        let sticky = self.sticky.as_ref().ok_or(RouteError::NoPositiveWeight)?;
        let key = hash_bytes(key);
        let (index, _) = sticky
            .candidates
            .iter()
            .map(|&(index, seed, inverse_weight)| {
                // The top 53 bits as a float strictly inside (0, 1), so `ln` stays finite.
                let u = ((mix(key ^ seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                (index, -u.ln() * inverse_weight)
            })
            .min_by(|(_, a), (_, b)| a.total_cmp(b))
            .ok_or(RouteError::NoPositiveWeight)?;
        Ok(Route {
            deployment: Arc::clone(&self.deployments[usize::from(index)]),
            reason: RouteReason::Sticky,
        })
    }

    /// The deployment a weighted request is copied to, if any, for a uniform `draw` in `0..100`
    /// taken apart from the route's. Pinned requests are never copied (as in Azure).
    pub fn mirror(&self, draw: u8) -> Option<&Arc<Deployment>> {
        self.mirror
            .as_ref()
            .filter(|(_, percent)| draw < *percent)
            .map(|(deployment, _)| deployment)
    }

    /// Whether weighted requests are copied anywhere.
    pub fn mirrors(&self) -> bool {
        self.mirror.is_some()
    }

    /// What the instances' host names resolved to.
    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// The deployment with this name, if any.
    pub fn deployment(&self, name: &str) -> Option<&Arc<Deployment>> {
        self.deployments.iter().find(|d| d.name() == name)
    }

    /// Starts the readiness probes of instances this table brought in; those it kept from
    /// the table before go on with theirs.
    pub fn start_probes(&self, prober: &Arc<Prober>) {
        for deployment in self.deployments() {
            deployment.start_probes(prober);
        }
    }

    /// All deployments in config order.
    pub fn deployments(&self) -> &[Arc<Deployment>] {
        &self.deployments
    }

    /// The config this table was built from.
    pub fn config(&self) -> &Arc<EndpointConfig> {
        &self.config
    }

    /// Counts applied configs: 1 for the first, +1 for each reload that changed something.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn names(&self) -> Vec<&str> {
        self.deployments.iter().map(|d| d.name()).collect()
    }
}

/// A name's length and first seven bytes in one word: equal names have equal keys, and most
/// different names (different lengths, or different starts) have different ones.
fn pin_key(name: &[u8]) -> u64 {
    let length = u64::from(u8::try_from(name.len()).unwrap_or(u8::MAX));
    name.iter()
        .take(7)
        .enumerate()
        .fold(length << 56, |key, (index, &byte)| {
            key | u64::from(byte) << (8 * index)
        })
}

/// FNV-1a over `bytes`: cheap, and stable across builds and platforms, so a user stays where
/// they are when the gateway is restarted or upgraded. [`mix`] makes up for its weak low bits.
fn hash_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// MurmurHash3's 64-bit finalizer: every input bit flips each output bit with probability 1/2.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn table(traffic: &str) -> RoutingTable {
        let text = format!(
            "name: e-1\nauth_mode: none\ntraffic: {traffic}\ndeployments:\n\
             - {{name: blue, instances: [http://127.0.0.1:1]}}\n\
             - {{name: green, instances: [http://127.0.0.1:2]}}\n\
             - {{name: red, instances: [http://127.0.0.1:3]}}\n"
        );
        table_from(&text)
    }

    /// The table for the endpoint file `text`.
    fn table_from(text: &str) -> RoutingTable {
        let config = EndpointConfig::parse(text).expect("valid");
        built(Arc::new(config), 1, None)
    }

    /// The table for `config`, carrying over the deployments of `previous`, as a reload does.
    fn built(
        config: Arc<EndpointConfig>,
        generation: u64,
        previous: Option<&RoutingTable>,
    ) -> RoutingTable {
        let previous = previous.map_or(&[][..], RoutingTable::deployments);
        let metrics = crate::metrics::Metrics::new();
        let resolved = Resolved::default();
        let deployments = Deployment::build_all(&config, previous, &metrics, &resolved);
        RoutingTable::build(config, generation, deployments, resolved)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    /// What `table` decides for a request with headers `pairs` whose key check found `key`.
    fn decided_with(
        table: &RoutingTable,
        key: KeyCheck,
        pairs: &[(&'static str, &'static str)],
        draws: &mut Draws,
    ) -> Result<Decision, RouteError> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        table.decide(key, &headers(pairs), draws, &mut rng)
    }

    /// The same, for an endpoint that asks for no key.
    fn decided(
        table: &RoutingTable,
        pairs: &[(&'static str, &'static str)],
        draws: &mut Draws,
    ) -> Result<Decision, RouteError> {
        decided_with(table, KeyCheck::NotAsked, pairs, draws)
    }

    #[test]
    fn a_request_is_checked_then_pinned_stuck_or_drawn_in_that_order() {
        let text = "name: e-1\nauth_mode: key\nkeys_file: k.yaml\ntraffic: {blue: 90, green: 10}\n\
                    sticky_header: x-user\nmirror_traffic: {red: 20}\ndeployments:\n\
                    - {name: blue, instances: [http://127.0.0.1:1]}\n\
                    - {name: green, instances: [http://127.0.0.1:2]}\n\
                    - {name: red, instances: [http://127.0.0.1:3]}\n";
        let config = EndpointConfig::parse(text).expect("valid");
        let table = built(Arc::new(config), 1, None);
        let mut draws = Draws::default();
        // No key: refused before anything else is looked at, a bad pin included.
        assert_eq!(
            decided_with(&table, KeyCheck::Failed, &[(PIN_HEADER, "")], &mut draws).err(),
            Some(RouteError::Unauthorized)
        );
        assert_eq!(
            decided_with(&table, KeyCheck::Failed, &[], &mut draws).err(),
            Some(RouteError::Unauthorized)
        );
        let passed = KeyCheck::Passed;
        assert!(matches!(
            decided_with(&table, passed, &[(PIN_HEADER, "")], &mut draws),
            Err(RouteError::InvalidPin(_))
        ));
        assert!(matches!(
            decided_with(
                &table,
                passed,
                &[(PIN_HEADER, "blue"), (PIN_HEADER, "red")],
                &mut draws
            ),
            Err(RouteError::InvalidPin(_))
        ));
        // A pin wins over the sticky header, reaches a 0% deployment, and is never copied.
        for _ in 0..50 {
            let pinned = decided_with(
                &table,
                passed,
                &[(PIN_HEADER, "red"), ("x-user", "u1")],
                &mut draws,
            )
            .expect("routed");
            assert_eq!(pinned.route.deployment.name(), "red");
            assert_eq!(pinned.route.reason, RouteReason::Pinned);
            assert!(pinned.mirror.is_none());
            assert!(pinned.keyed);
        }
        let sticky =
            decided_with(&table, passed, &[("x-user", "u1")], &mut draws).expect("routed");
        assert_eq!(sticky.route.reason, RouteReason::Sticky);
        assert!(sticky.keyed, "the key is the gateway's and is not forwarded");
        let open = decided(&table, &[("x-user", "u1")], &mut draws).expect("routed");
        assert!(!open.keyed);
        assert_ne!(
            sticky.route.deployment.name(),
            "red",
            "red has no live traffic"
        );
    }

    #[test]
    fn pinned_and_sticky_requests_leave_the_weighted_split_exact() {
        let table = table_from(
            "name: e-1\nauth_mode: none\ntraffic: {blue: 90, green: 10}\nsticky_header: x-user\n\
             mirror_traffic: {red: 20}\ndeployments:\n\
             - {name: blue, instances: [http://127.0.0.1:1]}\n\
             - {name: green, instances: [http://127.0.0.1:2]}\n\
             - {name: red, instances: [http://127.0.0.1:3]}\n",
        );
        let mut draws = Draws::default();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let (mut green, mut mirrored) = (0, 0);
        for request in 0..300 {
            // Between each two weighted requests, a pinned and a sticky one.
            let pinned = headers(&[(PIN_HEADER, "green")]);
            let sticky = headers(&[("x-user", "someone")]);
            table.decide(KeyCheck::NotAsked, &pinned, &mut draws, &mut rng).expect("pinned");
            // Sticky requests are copied too: they take the mirror's draws, not the split's.
            let stuck = table.decide(KeyCheck::NotAsked, &sticky, &mut draws, &mut rng).expect("sticky");
            mirrored += usize::from(stuck.mirror.is_some());
            let weighted = table
                .decide(KeyCheck::NotAsked, &HeaderMap::new(), &mut draws, &mut rng)
                .expect("weighted");
            green += usize::from(weighted.route.deployment.name() == "green");
            mirrored += usize::from(weighted.mirror.is_some());
            if request % 100 == 99 {
                // Every 100 weighted requests: exactly 10 to green; every 100 mirror draws (a
                // weighted and a sticky request each time), exactly 20 copied.
                assert_eq!(
                    (green, mirrored),
                    (10 * (request + 1) / 100, 40 * (request + 1) / 100)
                );
            }
        }
        // A new table starts fresh decks, whatever was drawn before.
        let next = built(Arc::clone(table.config()), 2, Some(&table));
        for _ in 0..37 {
            table
                .decide(KeyCheck::NotAsked, &HeaderMap::new(), &mut draws, &mut rng)
                .expect("weighted");
        }
        let green = (0..100)
            .filter(|_| {
                let decision = next
                    .decide(KeyCheck::NotAsked, &HeaderMap::new(), &mut draws, &mut rng)
                    .expect("weighted");
                decision.route.deployment.name() == "green"
            })
            .count();
        assert_eq!(green, 10);
    }

    fn name_of(result: Result<Route, RouteError>) -> String {
        result.expect("routed").deployment.name().to_string()
    }

    #[test]
    fn every_draw_lands_on_its_share() {
        let table = table("{blue: 90, green: 10}");
        let green = (0..100)
            .filter(|draw| name_of(table.route(None, *draw)) == "green")
            .count();
        assert_eq!(green, 10);
    }

    #[test]
    fn weight_100_takes_every_draw_and_weight_0_none() {
        let table = table("{blue: 0, green: 100}");
        assert!((0..100).all(|draw| name_of(table.route(None, draw)) == "green"));
    }

    #[test]
    fn a_pin_wins_over_the_weights_even_at_zero() {
        let table = table("{blue: 100}");
        let pin = HeaderValue::from_static("green");
        let route = table.route(Some(&pin), 0).expect("routed");
        assert_eq!(route.deployment.name(), "green");
        assert_eq!(route.reason, RouteReason::Pinned);
    }

    #[test]
    fn a_pin_matches_the_whole_name_exactly() {
        // Names that share a length and their first seven bytes differ only past the key.
        let text = "name: e-1\nauth_mode: none\ntraffic: {model-v1-a: 100}\ndeployments:\n\
                    - {name: model-v1-a, instances: [http://127.0.0.1:1]}\n\
                    - {name: model-v1-b, instances: [http://127.0.0.1:2]}\n";
        let table = table_from(text);
        for name in ["model-v1-a", "model-v1-b"] {
            let pin = HeaderValue::from_static(name);
            assert_eq!(name_of(table.route(Some(&pin), 0)), name);
        }
        for unknown in ["model-v1-c", "model-v1", "model-v1-a-", "Model-v1-a", ""] {
            let pin = HeaderValue::from_static(unknown);
            assert!(table.route(Some(&pin), 0).is_err(), "{unknown:?}");
        }
    }

    #[test]
    fn a_pin_works_when_all_weights_are_zero() {
        let table = table("{}");
        let pin = HeaderValue::from_static("red");
        assert_eq!(name_of(table.route(Some(&pin), 0)), "red");
    }

    #[test]
    fn an_unknown_pin_names_the_known_deployments() {
        let table = table("{blue: 100}");
        let pin = HeaderValue::from_static("purple");
        assert_eq!(
            table.route(Some(&pin), 0).expect_err("unknown"),
            RouteError::UnknownDeployment {
                requested: "purple".into(),
                known: "blue, green, red".into()
            }
        );
    }

    #[test]
    fn all_zero_weights_route_nothing_unpinned() {
        let table = table("{blue: 0, green: 0}");
        assert_eq!(
            table.route(None, 42).expect_err("nothing to route to"),
            RouteError::NoPositiveWeight
        );
    }

    #[test]
    fn a_seeded_draw_matches_the_split_exactly_enough() {
        // 100,000 seeded draws at 33/33/34: each share within 1 percentage point. With a fixed
        // seed the outcome is deterministic, so this cannot flake.
        let table = table("{blue: 33, green: 33, red: 34}");
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            let route = table.route(None, rng.random_range(0..100)).expect("routed");
            let index = ["blue", "green", "red"]
                .iter()
                .position(|n| *n == route.deployment.name())
                .expect("known");
            counts[index] += 1;
        }
        for (count, expected) in counts.iter().zip([33_000, 33_000, 34_000]) {
            assert!(count.abs_diff(expected) < 1_000, "{counts:?}");
        }
    }

    #[test]
    fn the_mirror_takes_its_share_of_draws() {
        let text = "name: e-1\nauth_mode: none\ntraffic: {blue: 100}\nmirror_traffic: {green: 10}\n\
                    deployments:\n- {name: blue, instances: [http://127.0.0.1:1]}\n\
                    - {name: green, instances: [http://127.0.0.1:2]}\n";
        let table = table_from(text);
        let copied: Vec<u8> = (0..100)
            .filter(|draw| table.mirror(*draw).is_some())
            .collect();
        assert_eq!(copied, (0..10).collect::<Vec<u8>>());
        assert_eq!(table.mirror(0).map(|d| d.name()), Some("green"));
        assert!(table.mirrors());
        // Live traffic is untouched by the mirror.
        assert!((0..100).all(|draw| name_of(table.route(None, draw)) == "blue"));

        assert!(!self::table("{blue: 100}").mirrors());
        assert!((0..100).all(|draw| self::table("{blue: 100}").mirror(draw).is_none()));
    }

    #[test]
    fn every_hundred_draws_of_a_deck_hold_each_slot_once() {
        let mut deck = Deck::new();
        let mut rng = SmallRng::seed_from_u64(11);
        let runs: Vec<Vec<u8>> = (0..3)
            .map(|_| (0..100).map(|_| deck.draw(&mut rng)).collect())
            .collect();
        for run in &runs {
            let mut sorted = run.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..100).collect::<Vec<u8>>());
        }
        // Shuffled, and afresh for each run.
        assert_ne!(runs[0], (0..100).collect::<Vec<u8>>());
        assert_ne!(runs[0], runs[1]);

        // So a 90/10 table gives exactly 10 greens in every 100 draws.
        let table = table("{blue: 90, green: 10}");
        for _ in 0..5 {
            let green = (0..100)
                .filter(|_| name_of(table.route(None, deck.draw(&mut rng))) == "green")
                .count();
            assert_eq!(green, 10);
        }
    }

    /// The table for three deployments with `traffic`, sticky by `x-user-id`.
    fn sticky_table(traffic: &str) -> RoutingTable {
        table_from(&format!(
            "name: e-1\nauth_mode: none\nsticky_header: X-User-Id\ntraffic: {traffic}\n\
             deployments:\n\
             - {{name: blue, instances: [http://127.0.0.1:1]}}\n\
             - {{name: green, instances: [http://127.0.0.1:2]}}\n\
             - {{name: red, instances: [http://127.0.0.1:3]}}\n"
        ))
    }

    /// Where each of 10,000 users lands.
    fn sticky_routes(table: &RoutingTable) -> Vec<String> {
        (0..10_000)
            .map(|user| name_of(table.route_sticky(format!("user-{user}").as_bytes())))
            .collect()
    }

    fn count(routes: &[String], name: &str) -> usize {
        routes.iter().filter(|route| *route == name).count()
    }

    #[test]
    fn a_sticky_key_always_lands_on_the_same_deployment() {
        let table = sticky_table("{blue: 50, green: 50}");
        let first = sticky_routes(&table);
        assert_eq!(first, sticky_routes(&table));
        // And on a table built afresh from the same file, as after a restart.
        assert_eq!(first, sticky_routes(&sticky_table("{blue: 50, green: 50}")));
    }

    #[test]
    fn sticky_keys_follow_the_split() {
        // Over 10,000 users, a deployment with share p gets 10,000 p users, give or take
        // 100 sqrt(p (1 - p)) (at most 50) for a well-mixed hash. The bound allows 5 of those,
        // for 1/99 too, where the standard deviation is 10. The hash is fixed, so this cannot
        // flake; the bound is what a hash that splits users fairly must meet.
        for (traffic, shares) in [
            ("{blue: 90, green: 10}", [9000, 1000, 0]),
            ("{blue: 50, green: 50}", [5000, 5000, 0]),
            ("{blue: 99, green: 1}", [9900, 100, 0]),
            ("{blue: 1, green: 99}", [100, 9900, 0]),
            ("{blue: 33, green: 33, red: 34}", [3300, 3300, 3400]),
            ("{blue: 0, green: 100}", [0, 10_000, 0]),
        ] {
            let routes = sticky_routes(&sticky_table(traffic));
            for (name, expected) in ["blue", "green", "red"].into_iter().zip(shares) {
                let got = count(&routes, name);
                let tolerance = if expected == 0 || expected == 10_000 {
                    0
                } else {
                    250
                };
                assert!(
                    got.abs_diff(expected) <= tolerance,
                    "{traffic}: {name} got {got} users, expected {expected} +- {tolerance}"
                );
            }
        }
    }

    #[test]
    fn a_growing_deployment_keeps_its_users_and_takes_only_what_it_needs() {
        let steps = [
            "{blue: 100, green: 0}",
            "{blue: 90, green: 10}",
            "{blue: 80, green: 20}",
            "{blue: 50, green: 50}",
            "{blue: 0, green: 100}",
        ];
        for pair in steps.windows(2) {
            let before = sticky_routes(&sticky_table(pair[0]));
            let after = sticky_routes(&sticky_table(pair[1]));
            let mut moved = 0;
            for (old, new) in before.iter().zip(&after) {
                assert!(
                    !(old == "green" && new == "blue"),
                    "{} -> {}: a green user went back to blue",
                    pair[0],
                    pair[1]
                );
                moved += usize::from(old != new);
            }
            // Only as many users move as the split has to move: the difference in green's
            // share, nothing more.
            let needed = count(&after, "green") - count(&before, "green");
            assert_eq!(moved, needed, "{} -> {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn a_user_moves_only_off_a_deployment_that_shrank_or_onto_one_that_grew() {
        // Blue shrinks, green grows, red keeps its weight.
        let before = sticky_routes(&sticky_table("{blue: 33, green: 33, red: 34}"));
        let after = sticky_routes(&sticky_table("{blue: 23, green: 43, red: 34}"));
        let mut moves = 0;
        for (old, new) in before.iter().zip(&after) {
            if old != new {
                moves += 1;
                assert!(
                    old == "blue" || new == "green",
                    "a {old} user moved to {new}"
                );
            }
        }
        // About a tenth of the users have to move; a hash that reshuffled everyone would move
        // about two thirds.
        assert!((500..=1500).contains(&moves), "{moves} users moved");
    }

    #[test]
    fn a_new_deployment_at_zero_moves_no_one() {
        let before = sticky_routes(&table_from(
            "name: e-1\nauth_mode: none\nsticky_header: x-user-id\ntraffic: {blue: 100}\n\
             deployments:\n- {name: blue, instances: [http://127.0.0.1:1]}\n",
        ));
        let after = sticky_routes(&sticky_table("{blue: 100, green: 0, red: 0}"));
        assert_eq!(before, after);
        assert_eq!(count(&after, "blue"), 10_000);
    }

    #[test]
    fn the_sticky_key_is_the_header_value_when_there_is_one() {
        let zero = sticky_table("{blue: 0, green: 0}");
        let mut headers = HeaderMap::new();
        assert_eq!(zero.sticky_key(&headers), None);
        headers.insert("x-user-id", HeaderValue::from_static("  "));
        assert_eq!(zero.sticky_key(&headers), None);
        headers.insert("x-user-id", HeaderValue::from_static("alice"));
        assert_eq!(
            zero.sticky_key(&headers),
            Some(&HeaderValue::from_static("alice"))
        );
        // With every weight at 0 there is nowhere to stick to.
        assert_eq!(
            zero.route_sticky(b"alice").map(|route| route.reason),
            Err(RouteError::NoPositiveWeight)
        );
        // An endpoint without a sticky header has no sticky keys.
        assert_eq!(table("{blue: 100}").sticky_key(&headers), None);
    }

    #[test]
    fn a_rebuild_keeps_unchanged_deployments() {
        let first = table("{blue: 100}");
        let second = built(Arc::clone(first.config()), 2, Some(&first));
        for (a, b) in first.deployments().iter().zip(second.deployments()) {
            assert!(Arc::ptr_eq(a, b));
        }
    }
}
