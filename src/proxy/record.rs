//! What is recorded of one request once its answer is over: the stream timings, whether the
//! body ended whole, and the access-log line.
//!
//! A response head says little about a stream: for server-sent events or a chunked LLM answer
//! it leaves in a millisecond, and the stream may still be cut by either side minutes later.
//! So the record rides inside the response body ([`super::ProxyBody`]) and is finished when the
//! body ends or is dropped, which is when the request is really over.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{HeaderValue, StatusCode};

use crate::metrics::{CutBy, RouteLabel};
use crate::upstream::Deployment;

/// How a response body ended, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// Sent to its last byte.
    Complete,
    /// Cut by one side.
    Cut(CutBy),
}

impl fmt::Display for BodyEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyEnd::Complete => "complete",
            BodyEnd::Cut(CutBy::Client) => "client_gone",
            BodyEnd::Cut(CutBy::Instance) => "instance_failed",
        })
    }
}

/// One request's account, finished on drop.
#[derive(Debug)]
pub(crate) struct Record {
    started: Instant,
    /// `None` for requests no deployment took.
    deployment: Option<Arc<Deployment>>,
    route: RouteLabel,
    status: StatusCode,
    request_id: HeaderValue,
    /// The index of the instance in `deployment`, once one was chosen.
    instance: Option<usize>,
    /// Time to the response head.
    head: Duration,
    first_byte: Option<Duration>,
    bytes: u64,
    /// The body said it ended.
    ended: bool,
    /// The body failed on the instance's side.
    failed: bool,
}

impl Record {
    /// The record of a request that arrived at `started` and whose head took `head`.
    pub(crate) fn new(
        started: Instant,
        head: Duration,
        deployment: Option<Arc<Deployment>>,
        route: RouteLabel,
        status: StatusCode,
        request_id: HeaderValue,
        instance: Option<usize>,
    ) -> Self {
        Record {
            started,
            deployment,
            route,
            status,
            request_id,
            instance,
            head,
            first_byte: None,
            bytes: 0,
            ended: false,
            failed: false,
        }
    }

    /// Notes `len` bytes of body passing to the client.
    pub(crate) fn data(&mut self, len: usize) {
        if len == 0 {
            return;
        }
        if self.first_byte.is_none() {
            let elapsed = self.started.elapsed();
            self.first_byte = Some(elapsed);
            if let Some(deployment) = &self.deployment {
                deployment
                    .metrics()
                    .observe_first_byte(elapsed, self.status);
            }
        }
        self.bytes += len as u64;
    }

    /// Notes that the body reached its end.
    pub(crate) fn ended(&mut self) {
        self.ended = true;
    }

    /// Notes that the instance's side of the body failed.
    pub(crate) fn failed(&mut self) {
        self.failed = true;
    }

    /// The `host:port` the request went to, once an instance was chosen.
    fn instance_target(&self) -> Option<&Authority> {
        let deployment = self.deployment.as_ref()?;
        Some(deployment.instances().get(self.instance?)?.target())
    }

    /// How the body ended, judged once it is dropped: whole, failed by the instance, or
    /// abandoned by the client while there was more to come.
    fn end(&self, end_stream: bool) -> BodyEnd {
        if self.failed {
            BodyEnd::Cut(CutBy::Instance)
        } else if self.ended || end_stream {
            BodyEnd::Complete
        } else {
            BodyEnd::Cut(CutBy::Client)
        }
    }

    /// Counts and logs the request; `end_stream` is whether the body had nothing left.
    pub(crate) fn finish(&self, end_stream: bool) {
        let total = self.started.elapsed();
        let end = self.end(end_stream);
        if let Some(deployment) = &self.deployment {
            let metrics = deployment.metrics();
            metrics.observe_last_byte(total, self.status);
            if let BodyEnd::Cut(by) = end {
                metrics.count_cut(by);
            }
        }
        tracing::info!(
            target: "switchyard::access",
            request_id = self.request_id.to_str().unwrap_or(""),
            deployment = self.deployment.as_ref().map_or("", |d| d.name()),
            route = self.route.as_str(),
            instance = self.instance_target().map_or("", Authority::as_str),
            status = self.status.as_u16(),
            head_ms = millis(self.head),
            first_byte_ms = self.first_byte.map(millis),
            duration_ms = millis(total),
            bytes = self.bytes,
            body = %end,
        );
    }
}

/// A duration in milliseconds to the microsecond, as the log shows it: rounded, so that it
/// prints as `0.018` rather than `0.018482000000000002`.
pub(crate) fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_are_logged_to_the_microsecond() {
        assert_eq!(millis(Duration::from_nanos(18_482)).to_string(), "0.018");
        assert_eq!(millis(Duration::from_millis(1500)).to_string(), "1500");
    }

    #[test]
    fn a_body_is_whole_unless_a_side_cut_it() {
        let mut record = Record::new(
            Instant::now(),
            Duration::ZERO,
            None,
            RouteLabel::Unrouted,
            StatusCode::OK,
            HeaderValue::from_static("id"),
            None,
        );
        assert_eq!(record.end(true), BodyEnd::Complete);
        assert_eq!(record.end(false), BodyEnd::Cut(CutBy::Client));
        record.ended();
        assert_eq!(record.end(false), BodyEnd::Complete);
        record.failed();
        assert_eq!(record.end(true), BodyEnd::Cut(CutBy::Instance));
    }
}
