//! The HTTP/1.1 rules both sides of the gateway apply (RFC 9112 and RFC 9110): what a message's
//! header lines mean for its framing and for its connection, and the limits on a head.
//!
//! The server's own request path, the client to instances and the header filter between them
//! all ask here. A proxy whose two sides read the same bytes by different rules is where request
//! smuggling and response desync live, so each rule is written once.

/// Largest message head accepted, request or response, through the empty line that ends it.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines a message head may have (hyper's limit too, so both server paths agree).
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest the rest of a request is sent on, or read and dropped, once its answer is out: on
/// the client's side so its connection can carry the next request, on the instance's so the
/// instance gets what it reads.
pub(crate) const REST_OF_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The items of a comma-separated header value (RFC 9110, section 5.6.1), trimmed, without the
/// empty ones the list syntax allows.
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// Whether `name` is a hop-by-hop header, in any case: one that describes one connection, not
/// the message, and so never crosses the proxy (RFC 9110, section 7.6.1, with the older
/// `Keep-Alive` and `Proxy-Connection`).
pub(crate) fn is_hop_by_hop_name(name: &[u8]) -> bool {
    // Asked of every header of every message: most are turned away by their length alone.
    let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
    match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// One item of a `Connection` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionToken<'a> {
    /// `close`: the connection ends after this message.
    Close,
    /// `keep-alive`: an HTTP/1.0 peer asks to keep it open.
    KeepAlive,
    /// `upgrade`: the message asks to switch protocols.
    Upgrade,
    /// Any other: the name of a header that belongs to this connection only.
    Names(&'a [u8]),
}

/// The tokens of one `Connection` header value.
pub(crate) fn connection_tokens(value: &[u8]) -> impl Iterator<Item = ConnectionToken<'_>> {
    list_items(value).map(|token| {
        if token.eq_ignore_ascii_case(b"close") {
            ConnectionToken::Close
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            ConnectionToken::KeepAlive
        } else if token.eq_ignore_ascii_case(b"upgrade") {
            ConnectionToken::Upgrade
        } else {
            ConnectionToken::Names(token)
        }
    })
}

/// Reads a `Content-Length` number: ASCII digits only (no sign, no space, no `0x`), at most 19
/// of them so it fits a `u64`. `str::parse` would take `+12`, which other parsers refuse.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |total, &digit| {
        digit
            .is_ascii_digit()
            .then(|| total * 10 + u64::from(digit - b'0'))
    })
}

/// Why a message's `Content-Length` cannot frame it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadLength {
    /// A value that is not a decimal number.
    NotANumber,
    /// Values that disagree (`5, 6`, or two lines).
    Conflicting,
}

/// Reads every `Content-Length` line of a message in turn. Repeated identical values are one
/// length (RFC 9112, section 6.3, point 5); anything else is an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ContentLength {
    state: Option<Result<u64, BadLength>>,
}

impl ContentLength {
    /// Takes in one `Content-Length` line's value.
    pub(crate) fn add(&mut self, value: &[u8]) {
        for part in value.split(|&b| b == b',') {
            let parsed = parse_decimal(part.trim_ascii()).ok_or(BadLength::NotANumber);
            self.state = Some(match (self.state.take(), parsed) {
                (Some(Err(error)), _) | (_, Err(error)) => Err(error),
                (Some(Ok(earlier)), Ok(parsed)) if earlier != parsed => Err(BadLength::Conflicting),
                (_, Ok(parsed)) => Ok(parsed),
            });
        }
    }

    /// The length, if the message declared one.
    pub(crate) fn get(&self) -> Option<Result<u64, BadLength>> {
        self.state
    }
}

/// What a message's `Transfer-Encoding` lines say, read in turn.
///
/// The gateway frames every body anew for the other side, so the only coding it can pass on
/// faithfully is one final `chunked`: a coding before it (`gzip, chunked`) or a second
/// `chunked` would be dropped, and the other side would read another body than was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TransferCodings {
    /// Whether the last coding so far is `chunked`, once any line was read.
    last_chunked: Option<bool>,
    /// Some coding other than one final `chunked` was named.
    unsupported: bool,
}

/// The verdict on a message's transfer codings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codings {
    /// No `Transfer-Encoding` line (or only empty ones): the length frames the body.
    None,
    /// Exactly one coding, `chunked`.
    Chunked,
    /// Anything else; it cannot be passed on.
    Unsupported,
}

impl TransferCodings {
    /// Takes in one `Transfer-Encoding` line's value.
    pub(crate) fn add(&mut self, value: &[u8]) {
        let mut chunked = self.last_chunked.unwrap_or(false);
        for coding in list_items(value) {
            self.unsupported |= chunked || !coding.eq_ignore_ascii_case(b"chunked");
            chunked = coding.eq_ignore_ascii_case(b"chunked");
        }
        self.last_chunked = Some(chunked);
    }

    /// What the lines read so far say.
    pub(crate) fn verdict(&self) -> Codings {
        match self.last_chunked {
            None => Codings::None,
            Some(_) if self.unsupported => Codings::Unsupported,
            Some(true) => Codings::Chunked,
            // Only empty lines: the message named no coding.
            Some(false) => Codings::None,
        }
    }

    /// Whether any `Transfer-Encoding` line was read, empty or not. Such a line and a
    /// `Content-Length` together make the framing ambiguous (RFC 9112, section 6.1).
    pub(crate) fn was_sent(&self) -> bool {
        self.last_chunked.is_some()
    }

    /// Whether the last coding named is `chunked`: what decides the framing of a response.
    pub(crate) fn ends_chunked(&self) -> bool {
        self.last_chunked == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codings(lines: &[&str]) -> Codings {
        let mut codings = TransferCodings::default();
        for line in lines {
            codings.add(line.as_bytes());
        }
        codings.verdict()
    }

    #[test]
    fn only_one_final_chunked_is_a_coding_the_gateway_passes_on() {
        assert_eq!(codings(&[]), Codings::None);
        assert_eq!(codings(&["chunked"]), Codings::Chunked);
        assert_eq!(codings(&["Chunked "]), Codings::Chunked);
        assert_eq!(codings(&[" , chunked"]), Codings::Chunked);
        assert_eq!(codings(&["gzip, chunked"]), Codings::Unsupported);
        assert_eq!(codings(&["gzip", "chunked"]), Codings::Unsupported);
        assert_eq!(codings(&["chunked, chunked"]), Codings::Unsupported);
        assert_eq!(codings(&["chunked", "chunked"]), Codings::Unsupported);
        assert_eq!(codings(&["chunked, gzip"]), Codings::Unsupported);
        assert_eq!(codings(&["identity"]), Codings::Unsupported);
    }

    #[test]
    fn content_length_takes_digits_only_and_one_value() {
        let length = |lines: &[&str]| {
            let mut length = ContentLength::default();
            for line in lines {
                length.add(line.as_bytes());
            }
            length.get()
        };
        assert_eq!(length(&[]), None);
        assert_eq!(length(&["12"]), Some(Ok(12)));
        assert_eq!(length(&["12, 12", "12"]), Some(Ok(12)));
        assert_eq!(length(&["+12"]), Some(Err(BadLength::NotANumber)));
        assert_eq!(length(&["-1"]), Some(Err(BadLength::NotANumber)));
        assert_eq!(length(&["0x10"]), Some(Err(BadLength::NotANumber)));
        assert_eq!(length(&["1 2"]), Some(Err(BadLength::NotANumber)));
        assert_eq!(length(&[""]), Some(Err(BadLength::NotANumber)));
        assert_eq!(length(&["12", "13"]), Some(Err(BadLength::Conflicting)));
        assert_eq!(
            length(&["99999999999999999999"]),
            Some(Err(BadLength::NotANumber))
        );
    }

    #[test]
    fn connection_tokens_are_read_in_any_case_and_spacing() {
        let tokens: Vec<_> = connection_tokens(b" Close ,keep-ALIVE,,Upgrade, x-secret").collect();
        assert_eq!(
            tokens,
            [
                ConnectionToken::Close,
                ConnectionToken::KeepAlive,
                ConnectionToken::Upgrade,
                ConnectionToken::Names(b"x-secret"),
            ]
        );
        assert!(is_hop_by_hop_name(b"Transfer-Encoding"));
        assert!(!is_hop_by_hop_name(b"x-request-id"));
    }
}
