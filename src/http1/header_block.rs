//! An instance's end-to-end response headers kept in HTTP/1.1 wire form.
//!
//! Most answers go back to an HTTP/1.1 client, which needs these headers as bytes again. Kept as
//! the lines they arrived as, they are copied once into the client's write buffer; a header map
//! would cost a name lookup, a hash and an allocation per header, only to be written out again.
//! Clients served by hyper (HTTP/2, TLS, upgrades) get them moved into the response's map.

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Header lines, each `name: value\r\n`, already checked as HTTP field syntax.
///
/// `Content-Length` is not among the lines: whoever writes the answer frames it. The length the
/// instance declared is kept apart, since a HEAD or 304 answer states one without a body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HeaderBlock {
    lines: BytesMut,
    content_length: Option<u64>,
    dated: bool,
}

impl HeaderBlock {
    /// An empty block for an answer that declared `content_length`, with room for `capacity`
    /// bytes of lines and for the headers the gateway adds to every answer it forwards (its
    /// deployment and request id), so that adding them does not grow the buffer. The size of
    /// the head the lines come from is enough unless many lacked the space after the colon or
    /// the CR before the LF.
    pub(crate) fn new(capacity: usize, content_length: Option<u64>) -> Self {
        const GATEWAY_HEADERS: usize = 128;
        HeaderBlock {
            lines: BytesMut::with_capacity(capacity + GATEWAY_HEADERS),
            content_length,
            dated: false,
        }
    }

    /// Adds one line. The caller has checked `name` and `value` as HTTP field syntax, and
    /// `name` is not `Content-Length`.
    pub(crate) fn push(&mut self, name: &[u8], value: &[u8]) {
        self.dated |= name.eq_ignore_ascii_case(b"date");
        self.lines.extend_from_slice(name);
        self.lines.extend_from_slice(b": ");
        self.lines.extend_from_slice(value);
        self.lines.extend_from_slice(b"\r\n");
    }

    /// The lines, ready to be written after a status line.
    pub(crate) fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// The `Content-Length` the instance sent, if it framed its answer by one.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Whether the lines include a `Date`.
    pub(crate) fn is_dated(&self) -> bool {
        self.dated
    }

    /// Each header as name and value, in the order received.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        fields(&self.lines)
    }

    /// Moves the headers into `map`, after any it holds, with the declared `Content-Length`.
    pub(crate) fn append_to(self, map: &mut HeaderMap) {
        let lines = self.lines.freeze();
        map.reserve(fields(&lines).count() + 1);
        for (name, value) in fields(&lines) {
            // The lines were checked when they were read; nothing is expected to fail here.
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_maybe_shared(lines.slice_ref(value)),
            ) else {
                continue;
            };
            map.append(name, value);
        }
        if let Some(length) = self.content_length {
            map.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
}

fn fields(lines: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    lines
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_suffix(b"\r"))
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], line[colon + 1..].trim_ascii_start()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(fields: &[(&str, &str)], content_length: Option<u64>) -> HeaderBlock {
        let mut block = HeaderBlock::new(0, content_length);
        for (name, value) in fields {
            block.push(name.as_bytes(), value.as_bytes());
        }
        block
    }

    #[test]
    fn lines_are_in_wire_form_in_the_order_pushed() {
        let block = block(
            &[("Content-Type", "application/json"), ("x-a", "1")],
            Some(2),
        );
        assert_eq!(
            block.lines(),
            b"Content-Type: application/json\r\nx-a: 1\r\n"
        );
        assert_eq!(block.content_length(), Some(2));
        assert!(!block.is_dated());
    }

    #[test]
    fn a_date_line_is_noticed_whatever_its_case() {
        assert!(block(&[("DATE", "Sun, 06 Nov 1994 08:49:37 GMT")], None).is_dated());
        assert!(!block(&[("x-date", "today")], None).is_dated());
    }

    #[test]
    fn moved_into_a_map_every_field_survives_with_the_declared_length() {
        let mut map = HeaderMap::new();
        map.insert("x-request-id", HeaderValue::from_static("abc"));
        block(
            &[
                ("Set-Cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("x-empty", ""),
            ],
            Some(42),
        )
        .append_to(&mut map);
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(map["x-empty"], "");
        assert_eq!(map["x-request-id"], "abc");
        assert_eq!(map[header::CONTENT_LENGTH], "42");
        assert_eq!(map.len(), 5);
    }

    #[test]
    fn values_keep_inner_colons_and_spaces() {
        let block = block(&[("location", "http://a:1/b c")], None);
        let fields: Vec<_> = block.fields().collect();
        assert_eq!(fields, [(&b"location"[..], &b"http://a:1/b c"[..])]);
    }
}
