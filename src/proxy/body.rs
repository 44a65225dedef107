//! The bodies that cross the gateway.
//!
//! [`UpstreamBody`] carries the client's request body to an instance. It can be taken back if no
//! byte of it was read (so a request whose connection was refused can be retried on another
//! instance), and it enforces the request body limit as the bytes flow. [`ProxyBody`] carries
//! the answer back and keeps the request counted as in flight until the last byte. A request
//! copied to a mirror deployment sends a [`SentBody`] pair: the live one feeds each chunk it
//! reads to the copy.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::{Notify, mpsc};

use super::record::Record;
use crate::causes::BoxError;
use crate::http1;
use crate::server::ClientBody;
use crate::upstream::InFlight;

/// What the gateway answers with: an instance's body streamed through, or a small body of its
/// own. It carries the request's record, finished when the body ends or is dropped.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    /// Inline rather than boxed: an allocation per request costs more than moving it.
    record: Option<Record>,
}

#[derive(Debug)]
enum Kind {
    /// An HTTP/1.1 instance's body, read from its connection in this task. The request counts
    /// as in flight until the body ends, and the connection goes back to the instance's pool.
    Http1 {
        body: http1::ResponseBody<UpstreamBody>,
        in_flight: InFlight,
    },
    /// An HTTP/2 instance's body; in flight until it ends (the guard is only held, for its drop).
    Http2 {
        body: Incoming,
        _in_flight: InFlight,
    },
    /// A body the gateway made (errors).
    Local(Full<Bytes>),
}

impl ProxyBody {
    /// The body of an HTTP/1.1 instance's response.
    pub(crate) fn http1(body: http1::ResponseBody<UpstreamBody>, in_flight: InFlight) -> Self {
        ProxyBody::of(Kind::Http1 { body, in_flight })
    }

    /// The body of an HTTP/2 instance's response.
    pub(crate) fn http2(body: Incoming, in_flight: InFlight) -> Self {
        ProxyBody::of(Kind::Http2 {
            body,
            _in_flight: in_flight,
        })
    }

    /// A body of the gateway's own.
    pub(crate) fn local(body: Bytes) -> Self {
        ProxyBody::of(Kind::Local(Full::new(body)))
    }

    /// No body.
    pub(crate) fn empty() -> Self {
        ProxyBody::of(Kind::Local(Full::default()))
    }

    fn of(kind: Kind) -> Self {
        ProxyBody { kind, record: None }
    }

    /// Hands the body the request's record, to finish when the body is over.
    pub(crate) fn attach(&mut self, record: Record) {
        self.record = Some(record);
    }

    fn poll_kind(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Http1 { body, in_flight } => body.poll_frame(cx, in_flight.instance().pool()),
            Kind::Http2 { body, .. } => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut polled = this.poll_kind(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled {
            if let Some(trailers) = frame.trailers_mut() {
                super::headers::strip_forbidden_trailers(trailers);
            }
        }
        if let Some(record) = &mut this.record {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    record.data(frame.data_ref().map_or(0, Bytes::len));
                }
                Poll::Ready(Some(Err(_))) => record.failed(),
                Poll::Ready(None) => record.ended(),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Http1 { body, .. } => body.is_end_stream(),
            Kind::Http2 { body, .. } => body.is_end_stream(),
            Kind::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Http1 { body, .. } => body.size_hint(),
            Kind::Http2 { body, .. } => body.size_hint(),
            Kind::Local(body) => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(record) = &self.record {
            record.finish(self.is_end_stream());
        }
        // An answer that ended before its request was all sent: the rest goes on, on its own.
        if let Kind::Http1 { body, in_flight } = &mut self.kind {
            let pool = Arc::clone(in_flight.instance().pool());
            if let Some(rest) = body.rest_of_request(pool) {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(rest);
                }
            }
        }
    }
}

/// The client's request body on its way to an instance.
#[derive(Debug)]
pub struct UpstreamBody {
    source: Source,
    limit: u64,
    seen: u64,
}

#[derive(Debug)]
enum Source {
    /// The body itself: this is the only attempt.
    Direct(Option<SentBody>),
    /// The body waits in `slot` until the first read, so an attempt that never read it can
    /// hand it to the next; see [`RequestBody::is_untouched`].
    Shared {
        slot: Arc<Mutex<Option<SentBody>>>,
        body: Option<SentBody>,
    },
}

/// A request body, held so that it can be sent by one or, if retries are possible, more attempts.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// Sent once; no retry is possible.
    Once(Option<SentBody>),
    /// Shared between attempts until one reads it.
    Retryable(Arc<Mutex<Option<SentBody>>>),
}

/// The request body grew past the limit while streaming.
#[derive(Debug)]
pub(crate) struct BodyTooLarge {
    /// The limit in bytes.
    pub(crate) limit: u64,
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body larger than {} bytes", self.limit)
    }
}

impl StdError for BodyTooLarge {}

impl RequestBody {
    /// Holds `body` for one attempt, or for several if `retryable`. Retryable bodies cost a
    /// shared slot, so they are only made where a retry can happen.
    pub(crate) fn new(body: SentBody, retryable: bool) -> Self {
        if retryable {
            RequestBody::Retryable(Arc::new(Mutex::new(Some(body))))
        } else {
            RequestBody::Once(Some(body))
        }
    }

    /// A body for one attempt, failing once more than `limit` bytes have flowed.
    pub(crate) fn attempt(&mut self, limit: u64) -> UpstreamBody {
        let source = match self {
            RequestBody::Once(body) => Source::Direct(body.take()),
            RequestBody::Retryable(slot) => Source::Shared {
                slot: Arc::clone(slot),
                body: None,
            },
        };
        UpstreamBody {
            source,
            limit,
            seen: 0,
        }
    }

    /// True while no attempt has read the body, so another attempt can send it whole.
    pub(crate) fn is_untouched(&self) -> bool {
        match self {
            RequestBody::Once(_) => false,
            RequestBody::Retryable(slot) => lock(slot).is_some(),
        }
    }
}

fn lock(slot: &Mutex<Option<SentBody>>) -> std::sync::MutexGuard<'_, Option<SentBody>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let body = match &mut this.source {
            Source::Direct(body) => body,
            Source::Shared { slot, body } => {
                if body.is_none() {
                    *body = lock(slot).take();
                }
                body
            }
        };
        let Some(body) = body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    super::headers::strip_forbidden_trailers(trailers);
                }
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        let error = BodyTooLarge { limit: this.limit };
                        return Poll::Ready(Some(Err(Box::new(error))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Direct(body)
            | Source::Shared {
                body: body @ Some(_),
                ..
            } => body.as_ref().is_none_or(Body::is_end_stream),
            Source::Shared { slot, body: None } => {
                lock(slot).as_ref().is_none_or(Body::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Read before the first poll, so that hyper keeps the client's Content-Length framing.
        let hint =
            |body: Option<&SentBody>| body.map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        match &self.source {
            Source::Direct(body)
            | Source::Shared {
                body: body @ Some(_),
                ..
            } => hint(body.as_ref()),
            Source::Shared { slot, body: None } => hint(lock(slot).as_ref()),
        }
    }
}

/// What an attempt sends.
#[derive(Debug)]
pub(crate) enum SentBody {
    /// The client's body.
    Client(ClientBody),
    /// The client's body, each frame also fed to a mirror's copy as it passes.
    Teed(Tee),
    /// A mirror's copy of a live request's body.
    Copy(MirrorCopy),
}

/// How far a mirror's copy may lag behind the live request before it is abandoned: the copy's
/// frames wait in memory until the mirror reads them.
const MIRROR_LAG_LIMIT: usize = 1024 * 1024;

/// The live side of a copied body.
#[derive(Debug)]
pub(crate) struct Tee {
    body: ClientBody,
    /// `None` once the copy is complete or abandoned.
    feed: Option<mpsc::UnboundedSender<Frame<Bytes>>>,
    state: Arc<CopyState>,
}

/// The mirror's side of a copied body.
#[derive(Debug)]
pub(crate) struct MirrorCopy {
    frames: mpsc::UnboundedReceiver<Frame<Bytes>>,
    state: Arc<CopyState>,
    /// The client body's size, so that the copy is framed as the original was.
    hint: SizeHint,
}

#[derive(Debug, Default)]
struct CopyState {
    /// Bytes fed and not yet read by the mirror.
    queued: AtomicUsize,
    /// Set once every frame of the body was fed.
    complete: AtomicBool,
    /// Notified when the copy cannot be whole, so that a mirror stuck writing it stops at once.
    abandoned: Notify,
}

/// Tells a mirror that its copy of the body was abandoned.
#[derive(Debug)]
pub(crate) struct CopyWatch(Arc<CopyState>);

impl CopyWatch {
    /// Resolves once the copy is abandoned; never, if it completes.
    pub(crate) async fn abandoned(&self) {
        self.0.abandoned.notified().await;
    }
}

/// The copy ended before the live request's body did, or fell too far behind it.
#[derive(Debug)]
pub(crate) struct CopyIncomplete;

impl fmt::Display for CopyIncomplete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the mirror's copy of the request body was abandoned")
    }
}

impl StdError for CopyIncomplete {}

impl SentBody {
    /// `body` for the live request, and a copy of it for a mirror: the same bytes when they
    /// all came with the head (the usual scoring request), otherwise fed frame by frame as the
    /// live request reads them, so the live request never waits for the mirror.
    pub(crate) fn with_copy(body: ClientBody) -> (SentBody, SentBody) {
        if let Some(copy) = body.clone_whole() {
            return (SentBody::Client(body), SentBody::Client(copy));
        }
        let (feed, frames) = mpsc::unbounded_channel();
        let state = Arc::new(CopyState::default());
        let copy = MirrorCopy {
            frames,
            state: Arc::clone(&state),
            hint: body.size_hint(),
        };
        let tee = Tee {
            body,
            feed: Some(feed),
            state,
        };
        (SentBody::Teed(tee), SentBody::Copy(copy))
    }

    /// For a copy fed frame by frame, a watch on whether it was abandoned.
    pub(crate) fn watch(&self) -> Option<CopyWatch> {
        match self {
            SentBody::Copy(copy) => Some(CopyWatch(Arc::clone(&copy.state))),
            SentBody::Client(_) | SentBody::Teed(_) => None,
        }
    }
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            SentBody::Client(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            SentBody::Teed(tee) => tee.poll_frame(cx),
            SentBody::Copy(copy) => copy.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SentBody::Client(body) => body.is_end_stream(),
            SentBody::Teed(tee) => tee.body.is_end_stream(),
            SentBody::Copy(copy) => copy.hint.exact() == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SentBody::Client(body) => body.size_hint(),
            SentBody::Teed(tee) => tee.body.size_hint(),
            SentBody::Copy(copy) => copy.hint,
        }
    }
}

impl Tee {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.feed(frame);
                if self.body.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.abandon(),
            Poll::Pending => {}
        }
        polled.map_err(Into::into)
    }

    fn feed(&mut self, frame: &Frame<Bytes>) {
        let Some(feed) = &self.feed else { return };
        let copy = match (frame.data_ref(), frame.trailers_ref()) {
            (Some(data), _) => {
                let queued = self.state.queued.fetch_add(data.len(), Ordering::Relaxed);
                if queued + data.len() > MIRROR_LAG_LIMIT {
                    self.abandon();
                    return;
                }
                Frame::data(data.clone())
            }
            (None, Some(trailers)) => Frame::trailers(trailers.clone()),
            (None, None) => return,
        };
        if feed.send(copy).is_err() {
            // The mirror is gone; stop copying.
            self.feed = None;
        }
    }

    fn finish(&mut self) {
        if self.feed.take().is_some() {
            self.state.complete.store(true, Ordering::Release);
        }
    }

    /// Stops feeding a copy that can no longer be whole: the copy then fails rather than end
    /// early, and its mirror is told.
    fn abandon(&mut self) {
        if self.feed.take().is_some() {
            self.state.abandoned.notify_one();
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // An attempt may stop reading once the declared length has arrived, before the body
        // says it ended.
        if self.body.is_end_stream() {
            self.finish();
        } else {
            self.abandon();
        }
    }
}

impl MirrorCopy {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.state.queued.fetch_sub(data.len(), Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) if self.state.complete.load(Ordering::Acquire) => Poll::Ready(None),
            Poll::Ready(None) => Poll::Ready(Some(Err(Box::new(CopyIncomplete)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Whether `error`, or anything it was caused by, is a [`BodyTooLarge`].
pub(crate) fn is_body_too_large(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<BodyTooLarge>() {
            return true;
        }
        current = error.source();
    }
    false
}
