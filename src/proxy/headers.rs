//! Header handling on the request path: the pin, request ids, hop-by-hop and forwarded headers.

use std::time::Duration;

use http::HeaderValue;
use http::header::{self, HeaderMap, HeaderName};
use rand::Rng;

use crate::config::PIN_HEADER;
use crate::error::ProxyError;
use crate::http1::rules::{
    Codings, ConnectionToken, TransferCodings, connection_tokens, is_hop_by_hop_name, list_items,
    parse_decimal,
};

/// `x-request-id`: kept from the client or generated, sent upstream and back.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// What the gateway sets on every answer it forwards; an instance's headers of these names are
/// replaced.
pub static OWN_RESPONSE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static(PIN_HEADER),
    HeaderName::from_static("x-request-id"),
];
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client's `x-request-id` if it is a sane token, else a new UUID v4.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|value| {
            let bytes = value.as_bytes();
            !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic)
        })
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// A random (version 4) UUID, formatted without allocating on the way.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes: [u8; 16] = rand::rng().random();
    // Set the version (4) and variant (10xx) bits.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (index, byte) in bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    // Owned by a shared buffer from the start: the id is cloned into the forwarded headers,
    // and a plain copy would be moved into a shared one (a second allocation) right there.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade handshake (`Connection: upgrade` plus
/// `Upgrade: websocket`), if the request is one.
///
/// An upgrade to `h2c` is never one: the connection would become a raw tunnel to the instance,
/// and the requests that followed on it would pass no key check, no request id and no
/// forwarding headers. The request is served as plain HTTP/1.1 instead, which RFC 9113 lets a
/// server do; clients that want HTTP/2 use prior knowledge or ALPN.
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| connection_tokens(value.as_bytes()))
        .any(|token| token == ConnectionToken::Upgrade);
    if !asks {
        return None;
    }
    let upgrade = headers.get(header::UPGRADE)?;
    let h2c = list_items(upgrade.as_bytes()).any(|token| token.eq_ignore_ascii_case(b"h2c"));
    (!h2c).then(|| upgrade.clone())
}

/// A gRPC call's deadline, from its `grpc-timeout` header: 1 to 8 digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`; gRPC's HTTP/2 protocol spec). `None` if absent or malformed.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Refuses a `Host` sent twice or that is no `host[:port]`, and an HTTP/1.1 request that names
/// no host at all (RFC 9112, section 3.2): which host an instance would read is anyone's guess.
/// A target with an authority (absolute form, HTTP/2's `:authority`) names one, and HTTP/1.0
/// may leave it out.
pub fn single_host(
    version: http::Version,
    target: &http::Uri,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == http::Version::HTTP_11 && target.authority().is_none() => Err(
            ProxyError::InvalidHost("missing; HTTP/1.1 requests must send one"),
        ),
        (_, Some(_)) => Err(ProxyError::InvalidHost("sent more than once")),
        // Empty is allowed: the target then had no authority to name.
        (Some(host), None) if !host.is_empty() && !is_host_and_port(host.as_bytes()) => {
            Err(ProxyError::InvalidHost(if host.as_bytes().contains(&b'@') {
                "a host carries no user information"
            } else {
                "not a host name or address with an optional port"
            }))
        }
        _ => Ok(()),
    }
}

/// Whether `value` is `host[:port]` (RFC 3986, section 3.2.2, and RFC 9110, section 7.2): a
/// name of unreserved and sub-delimiter characters (which covers an IPv4 address), or an IP
/// literal in brackets; then a port of up to five digits. Read in place:
/// every request is checked, and copying the value to parse it costs an allocation.
fn is_host_and_port(value: &[u8]) -> bool {
    let (host_ok, rest) = match value.strip_prefix(b"[") {
        Some(literal) => {
            let Some(end) = literal.iter().position(|&b| b == b']') else {
                return false;
            };
            let address = &literal[..end];
            let ok = !address.is_empty()
                && address
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            (ok, &literal[end + 1..])
        }
        None => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            (is_reg_name(&value[..end]), &value[end..])
        }
    };
    // A port may be empty (RFC 3986, section 3.2.3).
    let port_ok = match rest {
        [] | [b':'] => true,
        [b':', port @ ..] => {
            port.len() <= 5 && parse_decimal(port).is_some_and(|port| port <= 65_535)
        }
        _ => false,
    };
    host_ok && port_ok
}

/// A host name: at least one character, each unreserved or a sub-delimiter. Percent-encoding,
/// which RFC 3986 allows here, is refused as the `http` crate refuses it: no DNS name holds one.
fn is_reg_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| REG_NAME_BYTE[usize::from(b)])
}

/// Which bytes a host name may hold: one lookup per byte, as every request's `Host` is read.
static REG_NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        let sub_delim = matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        );
        table[byte] = unreserved || sub_delim;
        byte += 1;
    }
    table
};

/// Refuses a request body in a transfer coding the gateway cannot pass on
/// (`TransferCodings`).
pub fn supported_codings(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut codings = TransferCodings::default();
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        codings.add(value.as_bytes());
    }
    match codings.verdict() {
        Codings::None | Codings::Chunked => Ok(()),
        Codings::Unsupported => {
            let all: Vec<String> = headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .collect();
            Err(ProxyError::UnsupportedCoding(all.join(", ")))
        }
    }
}

/// Whether the protocol an instance switched to (its 101's `Upgrade`) is one the client asked
/// for: a 101 to anything else would splice the client into a conversation it never began.
pub fn upgrade_agreed(requested: &HeaderValue, answered: Option<&[u8]>) -> bool {
    let Some(answered) = answered.map(<[u8]>::trim_ascii) else {
        return false;
    };
    list_items(requested.as_bytes()).any(|offered| offered.eq_ignore_ascii_case(answered))
}

/// Removes the trailer fields that must not come after a body (RFC 9110, section 6.5.1): those
/// about framing, routing, authentication, request handling and the content's form, the
/// hop-by-hop ones, and the gateway's own. Sent after the body they could reframe or re-route
/// a message for whoever merges trailers into headers, and HTTP/2 peers reset a stream whose
/// trailers carry connection-level fields.
pub fn strip_forbidden_trailers(trailers: &mut HeaderMap) {
    const FORBIDDEN: [&str; 17] = [
        "content-length",
        "content-type",
        "content-encoding",
        "content-range",
        "host",
        "authorization",
        "proxy-authorization",
        "www-authenticate",
        "proxy-authenticate",
        "cookie",
        "set-cookie",
        "expect",
        "max-forwards",
        "range",
        "cache-control",
        PIN_HEADER,
        "x-request-id",
    ];
    let doomed: Vec<HeaderName> = trailers
        .keys()
        .filter(|name| {
            is_hop_by_hop(name)
                || FORBIDDEN.contains(&name.as_str())
                || name.as_str().starts_with("x-forwarded-")
                || name.as_str().starts_with("if-")
        })
        .cloned()
        .collect();
    for name in doomed {
        trailers.remove(name);
    }
}

/// Whether `name` is a hop-by-hop header (`is_hop_by_hop_name`).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    is_hop_by_hop_name(name.as_str().as_bytes())
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds those to remove; most messages carry none, and an empty
    // collection allocates nothing.
    let mut leaving: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name))
        .cloned()
        .collect();
    if leaving.is_empty() {
        return;
    }
    // `Connection: keep-alive` (or `close`) is the usual case and names nothing else to remove:
    // only a value naming other headers costs a copy.
    let names_others = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| connection_tokens(value.as_bytes()))
        .any(|token| matches!(token, ConnectionToken::Names(name) if !is_hop_by_hop_name(name)));
    if names_others {
        leaving.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|value| list_items(value.as_bytes()))
                .filter_map(|name| HeaderName::from_bytes(name).ok()),
        );
    }
    for name in &leaving {
        headers.remove(name);
    }
}

/// What the gateway adds to each request it forwards: `X-Forwarded-For` (the client appended to
/// any earlier hops), `-Proto`, `-Host` and the request id. Kept beside the client's headers
/// rather than inserted into them, so the HTTP/1.1 encoder writes them straight out.
#[derive(Debug, Clone)]
pub struct Forwarded {
    entries: [(HeaderName, HeaderValue); 4],
    /// 3 without a host to pass on, else 4.
    len: usize,
}

impl Forwarded {
    /// The headers for a request from `client_ip` with the client's `headers`.
    pub fn new(
        headers: &HeaderMap,
        client_ip: &HeaderValue,
        tls: bool,
        host: Option<HeaderValue>,
        request_id: HeaderValue,
    ) -> Self {
        // Every line the client sent, in order: lines of one field are one comma-separated
        // list (RFC 9110, section 5.3), and a proxy before this one may have added its own.
        let mut lines = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
        let forwarded_for = if lines.peek().is_none() {
            client_ip.clone()
        } else {
            let mut joined = Vec::new();
            for line in lines.chain(std::iter::once(client_ip)) {
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(line.as_bytes());
            }
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone())
        };
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        let len = if host.is_some() { 4 } else { 3 };
        Forwarded {
            entries: [
                (X_FORWARDED_FOR.clone(), forwarded_for),
                (X_FORWARDED_PROTO.clone(), proto),
                (REQUEST_ID.clone(), request_id),
                (
                    X_FORWARDED_HOST.clone(),
                    host.unwrap_or_else(|| HeaderValue::from_static("")),
                ),
            ],
            len,
        }
    }

    /// The headers, each replacing any the client sent under that name.
    pub fn as_slice(&self) -> &[(HeaderName, HeaderValue)] {
        &self.entries[..self.len]
    }

    /// Sets them in `headers`.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.as_slice() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_read_in_place_and_never_looser_than_the_http_crate() {
        let valid = [
            "models.example",
            "models.example:8080",
            "127.0.0.1",
            "127.0.0.1:65535",
            "[::1]",
            "[::1]:443",
            "[2001:db8::7]:80",
            "a-b_c~d.e",
            "a!$&'()*+,;=b",
            "host:",
        ];
        let invalid = [
            "a b",
            "a\tb",
            "host:port",
            "host:65536",
            "host:123456",
            "host:80:81",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:8x",
            "[::g]",
            "::1",
            "name%20x",
            "name%zz",
            ":80",
            "a/b",
            "a?b",
            "a#b",
            "a\\b",
            "a\"b",
            "a<b>",
            "a{b}",
            "a|b",
            "a^b",
            "a`b",
        ];
        for host in valid {
            assert!(is_host_and_port(host.as_bytes()), "{host:?} is a host");
        }
        for host in invalid {
            assert!(!is_host_and_port(host.as_bytes()), "{host:?} is no host");
        }
        // What is accepted here, the `http` crate reads as an authority too.
        for host in valid.iter().chain(&invalid) {
            if is_host_and_port(host.as_bytes()) {
                assert!(
                    http::uri::Authority::try_from(host.as_bytes()).is_ok(),
                    "{host:?}"
                );
            }
        }
        // Every byte outside the host alphabet is refused, and only those.
        for byte in 0..=u8::MAX {
            let allowed = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&byte);
            assert_eq!(is_reg_name(&[byte]), allowed, "byte {byte:#04x}");
        }
    }

    #[test]
    fn a_host_is_refused_with_what_is_wrong_with_it() {
        let uri = http::Uri::from_static("/score");
        let refusal = |hosts: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for host in hosts {
                headers.append(header::HOST, HeaderValue::from_static(host));
            }
            match single_host(http::Version::HTTP_11, &uri, &headers) {
                Ok(()) => None,
                Err(ProxyError::InvalidHost(why)) => Some(why),
                Err(other) => panic!("{other:?}"),
            }
        };
        assert_eq!(refusal(&["models.example:8080"]), None);
        assert_eq!(refusal(&[""]), None);
        assert_eq!(
            refusal(&["user@models.example"]),
            Some("a host carries no user information")
        );
        assert_eq!(
            refusal(&["models example"]),
            Some("not a host name or address with an optional port")
        );
        assert_eq!(refusal(&["a", "b"]), Some("sent more than once"));
        assert_eq!(
            refusal(&[]),
            Some("missing; HTTP/1.1 requests must send one")
        );
        let http10 = single_host(http::Version::HTTP_10, &uri, &HeaderMap::new());
        assert!(http10.is_ok(), "HTTP/1.0 may leave the host out");
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_refused_when_malformed() {
        let timeout = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_static(value));
            grpc_timeout(&headers)
        };
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["S", "100", "123456789S", "+5S", "5s", "5 S", "-1m"] {
            assert_eq!(timeout(bad), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn a_plain_keep_alive_answer_loses_only_its_hop_by_hop_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        headers.insert(header::SERVER, HeaderValue::from_static("model"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "server"]);
    }

    #[test]
    fn hop_by_hop_names_are_recognised_and_no_others() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
            assert!(
                is_hop_by_hop_name(name.to_ascii_uppercase().as_bytes()),
                "{name}"
            );
        }
        for name in [
            "content-length",
            "host",
            "x-request-id",
            "keep",
            "tee",
            "upgrades",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn a_new_request_id_is_a_version_4_uuid() {
        let id = new_request_id();
        let id = id.to_str().expect("ascii");
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert!(
            id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn a_clients_request_id_is_kept_unless_it_is_unusable() {
        let mut headers = HeaderMap::new();
        headers.insert(&REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(&REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
    }

    #[test]
    fn forwarded_for_appends_to_an_earlier_proxys_value() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        let forwarded = Forwarded::new(
            &headers,
            &HeaderValue::from_static("127.0.0.1"),
            false,
            Some(HeaderValue::from_static("gw:8080")),
            HeaderValue::from_static("id-1"),
        );
        forwarded.insert_into(&mut headers);
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.7, 127.0.0.1");

        // A second line, from a proxy before the client's, is kept, in order.
        let mut two = HeaderMap::new();
        two.append(&X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        two.append(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        let forwarded = Forwarded::new(
            &two,
            &HeaderValue::from_static("127.0.0.1"),
            false,
            None,
            HeaderValue::from_static("id"),
        );
        assert_eq!(
            forwarded.as_slice()[0].1,
            "198.51.100.1, 203.0.113.7, 127.0.0.1"
        );
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(headers[&X_FORWARDED_HOST], "gw:8080");
        assert_eq!(headers[&REQUEST_ID], "id-1");
    }

    #[test]
    fn without_a_host_there_is_no_forwarded_host() {
        let forwarded = Forwarded::new(
            &HeaderMap::new(),
            &HeaderValue::from_static("::1"),
            true,
            None,
            HeaderValue::from_static("id-2"),
        );
        let names: Vec<&str> = forwarded
            .as_slice()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            names,
            ["x-forwarded-for", "x-forwarded-proto", "x-request-id"]
        );
        assert_eq!(forwarded.as_slice()[1].1, "https");
    }
}
