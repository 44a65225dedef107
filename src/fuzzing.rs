//! Entry points for the fuzz targets in `fuzz/`, not part of the API. Each runs one side of the
//! gateway's HTTP/1.1 on arbitrary bytes and reads what the gateway would send on with an
//! independent parser (httparse, strictly): it must be the same message, framed one way only.

use bytes::BytesMut;
use http::header;
use http::{Method, StatusCode};

pub use crate::http1::codec::read_response_in_steps;
use crate::http1::codec::{self, BodyFraming, RequestFraming};
use crate::http1::rules::parse_decimal;
use crate::proxy::headers::strip_hop_by_hop;
use crate::proxy::target_path;
pub use crate::server::read_requests;
use crate::server::{AnswerTo, encode_response_head, next_whole_request};

/// The header lines of a strictly parsed head, lowercased, in order.
fn lines(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

fn count(lines: &[(String, Vec<u8>)], name: &str) -> usize {
    lines.iter().filter(|(n, _)| n == name).count()
}

/// Every request the serve loop's own path reads from `wire`, encoded as the gateway forwards
/// it to an HTTP/1.1 instance and read back strictly: the same method, target, end-to-end
/// headers (in order) and body, one `Host`, one framing, no byte past the body. Returns how
/// many were checked.
pub fn forward_requests(wire: &[u8]) -> usize {
    let mut buf = BytesMut::from(wire);
    let mut checked = 0;
    while let Some(request) = next_whole_request(&mut buf) {
        let Ok(path) = target_path(request.method(), request.uri()) else {
            continue;
        };
        let (parts, _body) = request.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|length| parse_decimal(length.as_bytes()));
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        // A chunked request is forwarded chunked: its body streams, of no known length.
        let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
        let framing = match (chunked, declared) {
            (true, _) => RequestFraming::Chunked,
            (false, None | Some(0)) => RequestFraming::Empty,
            (false, Some(length)) => RequestFraming::Length(length),
        };
        let mut out = Vec::new();
        codec::encode_request_head(
            &mut out,
            &parts.method,
            &path,
            "instance:8080",
            &headers,
            &[],
            framing,
        );
        let mut slots = [httparse::EMPTY_HEADER; 256];
        let mut parsed = httparse::Request::new(&mut slots);
        let head = match parsed.parse(&out) {
            Ok(httparse::Status::Complete(head)) => head,
            other => panic!(
                "the forwarded head does not parse ({other:?}): {:?}",
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(head, out.len(), "bytes past the forwarded head");
        assert_eq!(parsed.method, Some(parts.method.as_str()));
        assert_eq!(parsed.path, Some(path.as_str()));
        let sent = lines(parsed.headers);
        assert_eq!(count(&sent, "host"), 1, "{sent:?}");
        assert_eq!(
            count(&sent, "transfer-encoding"),
            usize::from(chunked),
            "{sent:?}"
        );
        let lengths: Vec<&[u8]> = sent
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_slice())
            .collect();
        match framing {
            RequestFraming::Length(length) => {
                assert_eq!(lengths, [length.to_string().as_bytes()], "{sent:?}");
            }
            _ => assert!(lengths.is_empty(), "{sent:?}"),
        }
        let kept: Vec<(String, Vec<u8>)> = headers
            .iter()
            .filter(|(name, _)| !codec::is_framing_header(name))
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            .collect();
        let forwarded: Vec<(String, Vec<u8>)> = sent
            .into_iter()
            .filter(|(name, _)| {
                name != "host" && name != "content-length" && name != "transfer-encoding"
            })
            .collect();
        assert_eq!(forwarded, kept, "the end-to-end headers changed");
        checked += 1;
    }
    checked
}

/// An instance's answer in `wire`, read by the client side, and its head as the serve loop's
/// own path writes it back to the client, read strictly: the same status, the same end-to-end
/// lines in order, and framing that agrees with the instance's (one length, the same length,
/// or chunked where the length was open; for an HTTP/1.0 client, never chunked, and the
/// connection's end where the length was open). Returns whether an answer was read.
pub fn pass_answer(wire: &[u8], to_head_request: bool, http10: bool) -> bool {
    let method = if to_head_request {
        Method::HEAD
    } else {
        Method::POST
    };
    let mut buf = BytesMut::from(wire);
    let Ok(Some(head)) = codec::parse_response_head(&mut buf, &method, &[]) else {
        return false;
    };
    let mut response = http::Response::new(());
    *response.status_mut() = head.status;
    let (parts, ()) = response.into_parts();
    let exact = match head.body {
        BodyFraming::Empty => Some(0),
        BodyFraming::Length(length) => Some(length),
        BodyFraming::Chunked | BodyFraming::UntilClose | BodyFraming::Upgrade => None,
    };
    let mut out = Vec::new();
    let to = AnswerTo {
        head: to_head_request,
        http10,
        close: false,
    };
    let (_, closes) = encode_response_head(&mut out, &parts, Some(&head.headers), exact, to);
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Response::new(&mut slots);
    match parsed.parse(&out) {
        Ok(httparse::Status::Complete(len)) => assert_eq!(len, out.len()),
        other => panic!(
            "the head written back does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(parsed.code, Some(head.status.as_u16()));
    let written = lines(parsed.headers);
    let lengths = count(&written, "content-length");
    let chunked = count(&written, "transfer-encoding");
    assert!(lengths + chunked <= 1, "two framings: {written:?}");
    let bodiless = head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    if http10 {
        assert_eq!(chunked, 0, "chunks for an HTTP/1.0 client: {written:?}");
        if lengths == 0 && exact.is_none() && !bodiless && !to_head_request {
            assert!(closes, "an open length for HTTP/1.0 without the close");
        }
    }
    if let (BodyFraming::Length(length), false) = (head.body, bodiless) {
        let value = written
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.clone());
        assert_eq!(value, Some(length.to_string().into_bytes()), "{written:?}");
    }
    // After a 101 the connection is the new protocol's: it ends as HTTP/1.1, and its head
    // says nothing of a close.
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        assert!(
            closes,
            "a 101 the connection goes on speaking HTTP/1.1 after"
        );
        assert!(
            !written
                .iter()
                .any(|(name, value)| name == "connection" && value == b"close"),
            "a 101 that says close: {written:?}"
        );
    }
    // The instance's end-to-end lines, in order, as it sent them; the gateway adds only the
    // framing, `connection: close` when it closes and, if the instance sent none, a `date`.
    let from_instance: Vec<(String, Vec<u8>)> = head
        .headers
        .fields()
        .map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec()))
        .collect();
    let dated = count(&from_instance, "date") > 0;
    let passed: Vec<(String, Vec<u8>)> = written
        .into_iter()
        .filter(|(name, _)| name != "content-length" && name != "transfer-encoding")
        .filter(|(name, _)| dated || name != "date")
        .filter(|(name, value)| !(closes && name == "connection" && value == b"close"))
        .filter(|(name, value)| {
            !(http10 && !closes && name == "connection" && value == b"keep-alive")
        })
        .collect();
    let expected = from_instance;
    assert_eq!(passed, expected, "the instance's lines changed");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_as_they_came() {
        let wire = b"POST /score?x=1 HTTP/1.1\r\nHost: g\r\nX-A: 1\r\nx-a: 2\r\nConnection: keep-alive, x-hop\r\nx-hop: h\r\ncontent-length: 3\r\n\r\nabcGET / HTTP/1.1\r\nhost: g\r\n\r\n";
        assert_eq!(forward_requests(wire), 2);
        let chunked = b"POST / HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nx-sum: 1\r\n\r\nGET / HTTP/1.1\r\nhost: g\r\n\r\n";
        assert_eq!(forward_requests(chunked), 2);
    }

    #[test]
    fn answers_read_back_as_they_came() {
        for (wire, to_head) in [
            (
                &b"HTTP/1.1 200 OK\r\nx-model: m\r\ncontent-length: 2\r\n\r\nok"[..],
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nset-cookie: a\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", true),
            (
                b"HTTP/1.1 204 No Content\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
                false,
            ),
            // A 101 says neither `close` nor, to HTTP/1.0, `keep-alive`.
            (
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
                false,
            ),
        ] {
            for http10 in [false, true] {
                assert!(
                    pass_answer(wire, to_head, http10),
                    "{:?}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
    }
}
