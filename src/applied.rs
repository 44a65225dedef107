//! The config a request is served by: the routing table built from the endpoint file, and the
//! keys its requests must present. A reload builds both and replaces them with one store, so a
//! request never pairs one config's routes with another's keys.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;

use crate::auth::Keys;
use crate::routing::{KeyCheck, RoutingTable};

/// One applied config.
#[derive(Debug)]
pub struct Applied {
    /// The deployments and the rules that pick one.
    pub routes: RoutingTable,
    /// The keys requests must present; `None` for `auth_mode: none`.
    pub keys: Option<Keys>,
}

/// The applied config every request reads and every reload replaces.
pub type SharedTable = Arc<ArcSwap<Applied>>;

impl Applied {
    /// Checks the key a request with these headers carries, if the endpoint asks for one.
    pub fn key_check(&self, headers: &HeaderMap) -> KeyCheck {
        match &self.keys {
            None => KeyCheck::NotAsked,
            Some(keys) if keys.authorizes(headers) => KeyCheck::Passed,
            Some(_) => KeyCheck::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::config::EndpointConfig;
    use crate::metrics::Metrics;
    use crate::upstream::Deployment;
    use crate::upstream::resolve::Resolved;

    fn applied(keys: Option<Keys>) -> Applied {
        let config = EndpointConfig::parse(
            "name: e-1\nauth_mode: none\ntraffic: {blue: 100}\n\
             deployments:\n- {name: blue, instances: [http://127.0.0.1:1]}\n",
        )
        .expect("valid");
        let resolved = Resolved::default();
        let deployments = Deployment::build_all(&config, &[], &Metrics::new(), &resolved);
        Applied {
            routes: RoutingTable::build(Arc::new(config), 1, deployments, resolved),
            keys,
        }
    }

    fn with_authorization(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn a_key_is_asked_for_only_when_the_endpoint_has_keys() {
        let open = applied(None);
        assert_eq!(open.key_check(&HeaderMap::new()), KeyCheck::NotAsked);
        assert_eq!(
            open.key_check(&with_authorization("Bearer anything")),
            KeyCheck::NotAsked
        );

        let keys = Keys::parse("primary_key: a-primary-key-0123456\n").expect("keys");
        let keyed = applied(Some(keys));
        assert_eq!(
            keyed.key_check(&with_authorization("Bearer a-primary-key-0123456")),
            KeyCheck::Passed
        );
        assert_eq!(
            keyed.key_check(&with_authorization("Bearer a-primary-key-0123457")),
            KeyCheck::Failed
        );
        assert_eq!(keyed.key_check(&HeaderMap::new()), KeyCheck::Failed);
    }
}
