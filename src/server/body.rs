//! The request body a handler receives.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::causes::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

/// A client's request body: read whole with its head by the serve loop's own HTTP/1.1 path, or
/// streamed by hyper.
#[derive(Debug)]
pub struct ClientBody(Kind);

#[derive(Debug)]
enum Kind {
    /// Every byte arrived with the head; `None` once taken, or if there were none.
    Whole(Option<Bytes>),
    /// Streamed as it arrives.
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

    /// Whether every byte came with the head (the serve loop's own HTTP/1.1 path read it).
    pub(crate) fn is_whole(&self) -> bool {
        matches!(self.0, Kind::Whole(_))
    }

    /// A second body with the same bytes, if every byte is already here (a clone of `Bytes`
    /// shares them).
    pub(crate) fn clone_whole(&self) -> Option<ClientBody> {
        match &self.0 {
            Kind::Whole(bytes) => Some(ClientBody(Kind::Whole(bytes.clone()))),
            Kind::Streamed(_) | Kind::Other(_) => None,
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
            Kind::Streamed(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Other(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Whole(bytes) => bytes.is_none(),
            Kind::Streamed(body) => body.is_end_stream(),
            Kind::Other(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Streamed(body) => body.size_hint(),
            Kind::Other(body) => body.size_hint(),
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
}
