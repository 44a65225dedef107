//! Mirrored traffic: a copy of a share of weighted requests goes to the deployment named in
//! `mirror_traffic`, and its answer is read to the end and discarded.
//!
//! The copy runs in a task of its own, beside the live request, under the mirror deployment's
//! own limits (concurrency, queue wait, timeout). Nothing it does reaches the client: its
//! answer, its errors and its slowness show only in the mirror deployment's metrics and in
//! the access log, under the route `mirrored`.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;

use super::body::CopyWatch;
use super::{Answer, Exchange, Outgoing, Proxy, ProxyBody};
use crate::error::ProxyError;
use crate::metrics::RouteLabel;
use crate::upstream::Deployment;
use crate::upstream::health::Outcome;

/// How a copy ended.
enum Copied {
    /// The mirror answered with this status, or the gateway would have answered with it.
    Answered(StatusCode),
    /// The copy of the body could not reach the mirror whole: the client's body failed, the
    /// live request ended before it, or the mirror fell too far behind. Nothing was measured.
    Abandoned,
}

impl Proxy {
    /// Sends `copy` to `deployment`, reads the answer to its end, and records how it went.
    /// `watch` is there when the body is copied as it streams.
    pub(super) async fn mirror(
        self: Arc<Self>,
        deployment: Arc<Deployment>,
        mut copy: Outgoing,
        watch: Option<CopyWatch>,
        request_id: HeaderValue,
    ) {
        let started = Instant::now();
        let mut instance = None;
        let sending = self.send_copy(&deployment, &mut copy, &mut instance);
        let copied = match watch {
            Some(watch) => tokio::select! {
                copied = sending => copied,
                () = watch.abandoned() => Copied::Abandoned,
            },
            None => sending.await,
        };
        let elapsed = started.elapsed();
        let status = match copied {
            Copied::Answered(status) => status,
            Copied::Abandoned => {
                deployment.metrics().count_mirror_abandoned();
                tracing::debug!(
                    request_id = request_id.to_str().unwrap_or(""),
                    deployment = deployment.name(),
                    "the mirror's copy of a request was abandoned"
                );
                return;
            }
        };
        deployment.metrics().count(status, RouteLabel::Mirrored);
        deployment.metrics().observe_head(elapsed, status);
        tracing::info!(
            target: "switchyard::access",
            request_id = request_id.to_str().unwrap_or(""),
            deployment = deployment.name(),
            route = RouteLabel::Mirrored.as_str(),
            instance = instance.as_deref().unwrap_or(""),
            status = status.as_u16(),
            duration_ms = super::record::millis(elapsed),
        );
    }

    async fn send_copy(
        &self,
        deployment: &Arc<Deployment>,
        copy: &mut Outgoing,
        instance: &mut Option<String>,
    ) -> Copied {
        let lease = match self.admit(deployment, None).await {
            Ok(lease) => lease,
            Err(error) => return Copied::Answered(error.status()),
        };
        *instance = Some(lease.instance().target().to_string());
        match self.exchange(deployment, copy, &lease).await {
            Ok(answer) => {
                let status = answer.status();
                lease.record(Outcome::of_answer(status));
                let body = match answer {
                    Answer::Http1(_, body) => ProxyBody::http1(body, lease),
                    Answer::Http2(response) => ProxyBody::http2(response.into_body(), lease),
                };
                // Read to the end, so the connection goes back to the pool; bounded by the
                // deployment's timeout like the head was.
                let timeout = deployment.settings().request_timeout;
                let _ = tokio::time::timeout(timeout, body.collect()).await;
                Copied::Answered(status)
            }
            Err(Exchange::Refused) => {
                lease.record(Outcome::ConnectFailure);
                Copied::Answered(StatusCode::BAD_GATEWAY)
            }
            Err(Exchange::Failed(ProxyError::RequestBody | ProxyError::PayloadTooLarge { .. })) => {
                Copied::Abandoned
            }
            Err(Exchange::Failed(error)) => {
                lease.record(Outcome::Failure);
                Copied::Answered(error.status())
            }
        }
    }
}
