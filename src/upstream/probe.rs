//! Readiness probes: Azure's `GET path`, or gRPC's health service, sent over the same
//! connectors, TLS settings and protocol as the deployment's traffic.

use std::future::poll_fn;
use std::sync::{Arc, Weak};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};

use super::Instance;
use super::connect::{self, Http2Client, tls_server_name};
use crate::config::{ProbeCheck, ReadinessProbe, UpstreamProtocol};
use crate::http1;

/// The path of gRPC's standard health check.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// How much of a probe's answer is read before it is judged; the rest is dropped.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Sends readiness probes: one per instance and period, each on a connection of its own.
pub struct Prober {
    http1: http1::Connector,
    http2: Http2Client<Full<Bytes>>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").finish_non_exhaustive()
    }
}

impl Prober {
    /// A prober verifying `https://` instances with `tls`, the traffic's own TLS settings.
    pub fn new(tls: rustls::ClientConfig) -> Prober {
        Prober {
            http1: http1::Connector::new(tls.clone()),
            http2: connect::http2_client(tls),
        }
    }

    /// Probes `instance` until it is dropped (the task holds only a weak reference), with the
    /// deployment's `probe` over its `protocol`.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        instance: &Arc<Instance>,
        probe: ReadinessProbe,
        protocol: UpstreamProtocol,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime (unit tests): nothing probes, the instance stays as it is.
            return;
        };
        let weak: Weak<Instance> = Arc::downgrade(instance);
        let target = ProbeTarget::of(instance, &probe);
        let prober = Arc::clone(self);
        runtime.spawn(async move {
            // A probe's own connections: a probe never takes one a request could use.
            let pool = http1::Pool::new(1);
            tokio::time::sleep(probe.initial_delay).await;
            let (mut passes, mut fails) = (0u32, 0u32);
            loop {
                let asked = prober.ask(&target, &probe, protocol, &pool);
                let probed = match tokio::time::timeout(probe.timeout, asked).await {
                    Ok(probed) => probed,
                    Err(_) => Err(format!(
                        "{} gave no answer within {}",
                        target.describe(&probe),
                        humantime::format_duration(probe.timeout)
                    )),
                };
                let Some(instance) = weak.upgrade() else {
                    return;
                };
                match probed {
                    Ok(()) => {
                        passes += 1;
                        fails = 0;
                        if passes >= probe.success_threshold {
                            instance.health.probe_passed(passes);
                        }
                    }
                    Err(reason) => {
                        fails += 1;
                        passes = 0;
                        instance
                            .health
                            .probe_failed(&reason, fails, probe.failure_threshold);
                    }
                }
                drop(instance);
                tokio::time::sleep(probe.period).await;
            }
        });
    }

    /// One probe; the error says why it failed.
    async fn ask(
        &self,
        target: &ProbeTarget,
        probe: &ReadinessProbe,
        protocol: UpstreamProtocol,
        pool: &http1::Pool,
    ) -> Result<(), String> {
        match (&probe.check, protocol) {
            (ProbeCheck::Http { .. }, UpstreamProtocol::Http1) => {
                self.get_http1(target, probe, pool).await
            }
            (ProbeCheck::Http { .. }, UpstreamProtocol::Http2) => {
                self.get_http2(target, probe).await
            }
            (ProbeCheck::Grpc { service }, _) => self.grpc_check(target, service).await,
        }
    }

    async fn get_http1(
        &self,
        target: &ProbeTarget,
        probe: &ReadinessProbe,
        pool: &http1::Pool,
    ) -> Result<(), String> {
        let asked = target.describe(probe);
        let path = target.path(probe);
        let request = http1::Request {
            method: &Method::GET,
            path: &path,
            headers: &HeaderMap::new(),
            added: &[],
            own_response_headers: &[],
            body: Empty::<Bytes>::new(),
        };
        let connect = http1::Target {
            connect: &target.connect,
            tls_name: target.tls.then(|| tls_server_name(target.host.host())),
            host: target.host.as_str(),
        };
        let (head, mut body) = http1::send(pool, &self.http1, connect, request)
            .await
            .map_err(|error| match error {
                http1::Error::Connect(error) => format!(
                    "{asked}: cannot connect: {}",
                    crate::causes::each_cause_once(&error)
                ),
                other => format!("{asked} failed: {}", crate::causes::each_cause_once(&other)),
            })?;
        // Read to the end (within reason), so the connection can serve the next probe.
        let mut read = 0;
        while read < MAX_ANSWER_BYTES {
            match poll_fn(|cx| body.poll_frame(cx, pool)).await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(_)) | None => break,
            }
        }
        judge_status(&asked, head.status)
    }

    async fn get_http2(&self, target: &ProbeTarget, probe: &ReadinessProbe) -> Result<(), String> {
        let asked = target.describe(probe);
        let request = Request::get(target.uri(&target.path(probe))?);
        let response = self
            .send_http2(target, request, Bytes::new(), &asked)
            .await?;
        judge_status(&asked, response.status())
    }

    /// Sends a probe over HTTP/2 with the instance's `Host`; the error says what failed.
    async fn send_http2(
        &self,
        target: &ProbeTarget,
        request: http::request::Builder,
        body: Bytes,
        asked: &str,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let request = request
            .version(http::Version::HTTP_2)
            .header(header::HOST, target.host_value())
            .body(Full::new(body))
            .map_err(|error| format!("cannot build the probe request: {error}"))?;
        self.http2
            .request(request)
            .await
            .map_err(|error| http2_failure(asked, &error))
    }

    async fn grpc_check(&self, target: &ProbeTarget, service: &str) -> Result<(), String> {
        let asked = ProbeCheck::Grpc {
            service: service.to_string(),
        }
        .to_string();
        let path = PathAndQuery::from_static(GRPC_HEALTH_CHECK);
        let request = Request::post(target.uri(&path)?)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers");
        let response = self
            .send_http2(target, request, health_check_request(service), &asked)
            .await?;
        if response.status() != StatusCode::OK {
            return Err(format!("{asked} answered HTTP {}", response.status()));
        }
        let (parts, body) = response.into_parts();
        let collected = body
            .collect()
            .await
            .map_err(|error| format!("{asked}: the answer broke off: {error}"))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        // A trailers-only answer carries its status in the head.
        let status = trailers
            .get("grpc-status")
            .or_else(|| parts.headers.get("grpc-status"));
        match status.map(HeaderValue::as_bytes) {
            Some(b"0") => {}
            Some(code) => {
                let message = trailers
                    .get("grpc-message")
                    .or_else(|| parts.headers.get("grpc-message"))
                    .map(|message| String::from_utf8_lossy(message.as_bytes()).into_owned())
                    .unwrap_or_default();
                return Err(format!(
                    "{asked} answered grpc-status {} {message}",
                    String::from_utf8_lossy(code)
                )
                .trim_end()
                .to_string());
            }
            None => return Err(format!("{asked}: the answer has no grpc-status")),
        }
        match serving_status(collected.to_bytes()) {
            Some(1) => Ok(()),
            Some(status) => Err(format!(
                "{asked} answered {}",
                match status {
                    0 => "UNKNOWN",
                    2 => "NOT_SERVING",
                    3 => "SERVICE_UNKNOWN",
                    _ => "a status it does not define",
                }
            )),
            None => Err(format!("{asked}: the answer is not a HealthCheckResponse")),
        }
    }
}

/// Where one instance's probes go: its own authority, or the probe's port on its host.
#[derive(Debug)]
struct ProbeTarget {
    /// `host:port` connected to.
    connect: Authority,
    /// `host:port` the instance is told (`Host`, `:authority`) and, for TLS, whose name its
    /// certificate must carry.
    host: Authority,
    tls: bool,
}

impl ProbeTarget {
    fn of(instance: &Instance, probe: &ReadinessProbe) -> ProbeTarget {
        let addr = instance.addr();
        let with_port = |authority: &Authority| match probe.port {
            Some(port) => Authority::try_from(format!("{}:{port}", authority.host()).as_str())
                .unwrap_or_else(|_| authority.clone()),
            None => authority.clone(),
        };
        ProbeTarget {
            connect: with_port(instance.target()),
            host: with_port(&addr.authority),
            tls: addr.scheme == http::uri::Scheme::HTTPS,
        }
    }

    fn path(&self, probe: &ReadinessProbe) -> PathAndQuery {
        match &probe.check {
            ProbeCheck::Http { path } => {
                PathAndQuery::try_from(path.as_str()).unwrap_or(PathAndQuery::from_static("/"))
            }
            ProbeCheck::Grpc { .. } => PathAndQuery::from_static(GRPC_HEALTH_CHECK),
        }
    }

    fn uri(&self, path: &PathAndQuery) -> Result<Uri, String> {
        let scheme = if self.tls { "https" } else { "http" };
        Uri::builder()
            .scheme(scheme)
            .authority(self.connect.clone())
            .path_and_query(path.clone())
            .build()
            .map_err(|error| format!("cannot build the probe URL: {error}"))
    }

    fn host_value(&self) -> HeaderValue {
        HeaderValue::from_str(self.host.as_str()).unwrap_or(HeaderValue::from_static("localhost"))
    }

    /// What the probe asks, for its log lines: `GET http://host:port/path`.
    fn describe(&self, probe: &ReadinessProbe) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        match &probe.check {
            ProbeCheck::Http { path } => format!("GET {scheme}://{}{path}", self.host),
            check @ ProbeCheck::Grpc { .. } => format!("{check} at {scheme}://{}", self.host),
        }
    }
}

fn judge_status(asked: &str, status: StatusCode) -> Result<(), String> {
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{asked} answered {status}"))
    }
}

fn http2_failure(asked: &str, error: &hyper_util::client::legacy::Error) -> String {
    let why = crate::causes::each_cause_once(error);
    if error.is_connect() {
        format!("{asked}: cannot connect: {why}")
    } else {
        format!("{asked} failed: {why}")
    }
}

/// A `grpc.health.v1.HealthCheckRequest { service }` in one uncompressed gRPC message frame.
fn health_check_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        // Field 1, length-delimited.
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    frame.freeze()
}

/// The `status` of the `grpc.health.v1.HealthCheckResponse` in a gRPC message frame: 0 when
/// the message leaves it out (proto3's default, `UNKNOWN`); `None` if it is not one.
fn serving_status(mut frame: Bytes) -> Option<u64> {
    if frame.len() < 5 || frame[0] != 0 {
        // Too short, or compressed (the probe asked for no compression).
        return None;
    }
    frame.advance(1);
    let length = frame.get_u32() as usize;
    if frame.len() != length {
        return None;
    }
    let mut status = 0;
    while frame.has_remaining() {
        let key = get_varint(&mut frame)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = get_varint(&mut frame)?,
            // Fields a newer version may add are skipped.
            (_, 0) => {
                get_varint(&mut frame)?;
            }
            (_, 1) if frame.remaining() >= 8 => frame.advance(8),
            (_, 2) => {
                let length = usize::try_from(get_varint(&mut frame)?).ok()?;
                if frame.remaining() < length {
                    return None;
                }
                frame.advance(length);
            }
            (_, 5) if frame.remaining() >= 4 => frame.advance(4),
            _ => return None,
        }
    }
    Some(status)
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn get_varint(input: &mut Bytes) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !input.has_remaining() {
            return None;
        }
        let byte = input.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_health_check_request_is_one_grpc_message_naming_the_service() {
        assert_eq!(&health_check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &health_check_request("model")[..],
            &[0, 0, 0, 0, 7, 0x0a, 5, b'm', b'o', b'd', b'e', b'l']
        );
    }

    #[test]
    fn the_serving_status_is_read_from_the_response_message() {
        let frame = |message: &[u8]| {
            let mut frame = vec![0, 0, 0, 0, message.len() as u8];
            frame.extend_from_slice(message);
            Bytes::from(frame)
        };
        assert_eq!(serving_status(frame(&[0x08, 1])), Some(1));
        assert_eq!(serving_status(frame(&[0x08, 2])), Some(2));
        assert_eq!(serving_status(frame(&[])), Some(0));
        // An unknown string field before the status is skipped.
        assert_eq!(
            serving_status(frame(&[0x12, 2, b'h', b'i', 0x08, 1])),
            Some(1)
        );
        assert_eq!(serving_status(frame(&[0x08])), None);
        assert_eq!(serving_status(Bytes::from_static(&[1, 0, 0, 0, 0])), None);
        assert_eq!(
            serving_status(Bytes::from_static(&[0, 0, 0, 0, 9, 8])),
            None
        );
    }
}
