//! The request body a handler receives.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::causes::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

/// A client's request body: read whole with its head, or streamed as it arrives, by the serve
/// loop's own HTTP/1.1 path; streamed by hyper (HTTP/2, and what that path hands over); or any
/// body a server the endpoint is mounted in hands over.
#[derive(Debug)]
pub struct ClientBody(Kind);

#[derive(Debug)]
enum Kind {
    /// Every byte arrived with the head; `None` once taken, or if there were none.
    Whole(Option<Bytes>),
    /// Streamed by the serve loop's own HTTP/1.1 path as it arrives, one frame at a time.
    Fed(FedBody),
    /// Streamed by hyper as it arrives.
    Streamed(Incoming),
    /// Any other body, from a server the endpoint is mounted in (see [`crate::Endpoint`]).
    Other(UnsyncBoxBody<Bytes, BoxError>),
}

impl ClientBody {
    /// Any body, as another server hands it over.
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ClientBody(Kind::Other(body.map_err(Into::into).boxed_unsync()))
    }

    /// A body already read in full.
    pub(crate) fn whole(bytes: Bytes) -> Self {
        ClientBody(Kind::Whole((!bytes.is_empty()).then_some(bytes)))
    }

    /// A body the serve loop reads on, and the end it feeds it from. `length` is the body's
    /// size when its head declares one.
    pub(crate) fn fed(length: Option<u64>) -> (BodyFeed, Self) {
        let slot = Arc::new(Mutex::new(FeedSlot::default()));
        let feed = BodyFeed {
            slot: Arc::clone(&slot),
        };
        let body = FedBody {
            slot,
            remaining: length,
            ended: false,
        };
        (feed, ClientBody(Kind::Fed(body)))
    }

    /// A second body with the same bytes, if every byte is already here (a clone of `Bytes`
    /// shares them).
    pub(crate) fn clone_whole(&self) -> Option<ClientBody> {
        match &self.0 {
            Kind::Whole(bytes) => Some(ClientBody(Kind::Whole(bytes.clone()))),
            Kind::Fed(_) | Kind::Streamed(_) | Kind::Other(_) => None,
        }
    }
}

impl From<Incoming> for ClientBody {
    fn from(body: Incoming) -> Self {
        ClientBody(Kind::Streamed(body))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Whole(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Kind::Fed(body) => body.poll_frame(cx),
            Kind::Streamed(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Other(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Whole(bytes) => bytes.is_none(),
            Kind::Fed(body) => body.ended,
            Kind::Streamed(body) => body.is_end_stream(),
            Kind::Other(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Fed(body) => match body.remaining {
                Some(remaining) => SizeHint::with_exact(remaining),
                None => SizeHint::default(),
            },
            Kind::Streamed(body) => body.size_hint(),
            Kind::Other(body) => body.size_hint(),
        }
    }
}

/// A body fed frame by frame: one frame waits in its slot at a time, so the serve loop reads
/// on from the client only as fast as the handler takes the body (and the client is slowed by
/// TCP, not buffered without bound).
#[derive(Debug)]
pub(crate) struct FedBody {
    slot: Arc<Mutex<FeedSlot>>,
    /// Data bytes still to come, when the head declared a length.
    remaining: Option<u64>,
    ended: bool,
}

/// The serve loop's end of a [`FedBody`]. Dropping it ends the body: after its last frame if
/// that was sent, or short (the body then fails) if not.
#[derive(Debug)]
pub(crate) struct BodyFeed {
    slot: Arc<Mutex<FeedSlot>>,
}

#[derive(Debug, Default)]
struct FeedSlot {
    frame: Option<Result<Frame<Bytes>, BoxError>>,
    /// The feed sent the body's end: nothing more will come.
    finished: bool,
    /// The feed is gone.
    feed_dropped: bool,
    /// The handler dropped the body: what is still fed is thrown away.
    body_dropped: bool,
    /// The body waits for a frame.
    body_waker: Option<Waker>,
    /// The feed waits for room.
    feed_waker: Option<Waker>,
}

fn lock(slot: &Mutex<FeedSlot>) -> MutexGuard<'_, FeedSlot> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BodyFeed {
    /// Hands `frame` to the body once the one before was taken. `Ready(false)` if the handler
    /// dropped the body: the frame is thrown away and so should be the rest.
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frame: &mut Option<Result<Frame<Bytes>, BoxError>>,
    ) -> Poll<bool> {
        let mut slot = lock(&self.slot);
        if slot.body_dropped {
            *frame = None;
            return Poll::Ready(false);
        }
        if slot.frame.is_some() {
            slot.feed_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        slot.frame = frame.take();
        if let Some(waker) = slot.body_waker.take() {
            waker.wake();
        }
        Poll::Ready(true)
    }

    /// The body is complete: once its last frame is taken, it ends.
    pub(crate) fn finish(self) {
        lock(&self.slot).finished = true;
    }
}

impl Drop for BodyFeed {
    fn drop(&mut self) {
        let mut slot = lock(&self.slot);
        slot.feed_dropped = true;
        if let Some(waker) = slot.body_waker.take() {
            waker.wake();
        }
    }
}

impl FedBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let mut slot = lock(&self.slot);
        if let Some(frame) = slot.frame.take() {
            if let Some(waker) = slot.feed_waker.take() {
                waker.wake();
            }
            if let (Ok(frame), Some(remaining)) = (&frame, self.remaining.as_mut())
                && let Some(data) = frame.data_ref()
            {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
            if frame.is_err() {
                self.ended = true;
            }
            return Poll::Ready(Some(frame));
        }
        if slot.finished {
            self.ended = true;
            return Poll::Ready(None);
        }
        if slot.feed_dropped {
            self.ended = true;
            return Poll::Ready(Some(Err(
                "the request body ended short of its framing".into()
            )));
        }
        slot.body_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for FedBody {
    fn drop(&mut self) {
        let mut slot = lock(&self.slot);
        slot.body_dropped = true;
        slot.frame = None;
        if let Some(waker) = slot.feed_waker.take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_whole_body_is_one_frame_of_known_size() {
        let body = ClientBody::whole(Bytes::from_static(b"{\"data\": [1]}"));
        assert_eq!(body.size_hint().exact(), Some(13));
        assert!(!body.is_end_stream());
        let bytes = body.collect().await.expect("whole").to_bytes();
        assert_eq!(&bytes[..], b"{\"data\": [1]}");

        let empty = ClientBody::whole(Bytes::new());
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
    }

    fn poll_send(feed: &mut BodyFeed, data: &'static [u8]) -> Poll<bool> {
        let mut frame = Some(Ok(Frame::data(Bytes::from_static(data))));
        let mut cx = Context::from_waker(Waker::noop());
        feed.poll_send(&mut cx, &mut frame)
    }

    #[tokio::test]
    async fn a_fed_body_holds_one_frame_at_a_time_and_ends_when_finished() {
        let (mut feed, mut body) = ClientBody::fed(Some(6));
        assert_eq!(body.size_hint().exact(), Some(6));
        assert_eq!(poll_send(&mut feed, b"abc"), Poll::Ready(true));
        // The body has not taken the first: the second waits.
        assert_eq!(poll_send(&mut feed, b"def"), Poll::Pending);
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "abc");
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(poll_send(&mut feed, b"def"), Poll::Ready(true));
        feed.finish();
        let rest = body.collect().await.expect("whole").to_bytes();
        assert_eq!(&rest[..], b"def");
    }

    #[tokio::test]
    async fn a_feed_dropped_before_the_end_fails_the_body() {
        let (mut feed, mut body) = ClientBody::fed(None);
        assert_eq!(poll_send(&mut feed, b"abc"), Poll::Ready(true));
        drop(feed);
        assert!(body.frame().await.expect("a frame").is_ok());
        assert!(body.frame().await.expect("the failure").is_err());
        assert!(body.is_end_stream());
    }

    #[test]
    fn once_the_body_is_dropped_what_is_fed_is_thrown_away() {
        let (mut feed, body) = ClientBody::fed(None);
        assert_eq!(poll_send(&mut feed, b"abc"), Poll::Ready(true));
        drop(body);
        assert_eq!(poll_send(&mut feed, b"def"), Poll::Ready(false));
    }
}
