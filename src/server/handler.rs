//! What the serve loop calls for each request, and what it gets back.

use std::future::Future;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;

use super::{ClientBody, Connection};
use crate::causes::BoxError;
use crate::http1::HeaderBlock;

/// Answers requests. Any `Fn(Request<ClientBody>, Connection) -> impl Future` whose output is a
/// `Response` (or a [`Reply`]) is one, so a closure serves.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response body.
    type Body: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
    /// The answer to come. Callers pin it where it is made: a proxy's is large, and each move
    /// copies it.
    type Future: Future<Output: IntoReply<Body = Self::Body>> + Send + 'static;

    /// Answers one request that came on `connection`.
    fn call(&self, request: Request<ClientBody>, connection: Connection) -> Self::Future;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request<ClientBody>, Connection) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output: IntoReply> + Send + 'static,
{
    type Body = <Fut::Output as IntoReply>::Body;
    type Future = Fut;

    fn call(&self, request: Request<ClientBody>, connection: Connection) -> Fut {
        self(request, connection)
    }
}

/// A response, and maybe header lines from an instance written after its own headers: to an
/// HTTP/1.1 client as they are, to others by way of the response's header map.
#[derive(Debug)]
pub struct Reply<B> {
    response: Response<B>,
    lines: Option<HeaderBlock>,
}

impl<B> Reply<B> {
    /// `response` followed by `lines`.
    pub(crate) fn with_lines(response: Response<B>, lines: HeaderBlock) -> Self {
        Reply {
            response,
            lines: Some(lines),
        }
    }

    /// The response's status.
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// Sets a header the instance's lines do not hold: the codec leaves such names out
    /// ([`crate::proxy::headers::OWN_RESPONSE_HEADERS`]), so appending to them replaces.
    pub(crate) fn set_own_header(&mut self, name: &HeaderName, value: HeaderValue) {
        match &mut self.lines {
            Some(lines) => lines.push(name.as_str().as_bytes(), value.as_bytes()),
            None => {
                self.response.headers_mut().insert(name.clone(), value);
            }
        }
    }

    /// The response's body.
    pub(crate) fn body_mut(&mut self) -> &mut B {
        self.response.body_mut()
    }

    /// The response and the lines still to be written after its headers.
    pub(crate) fn into_parts(self) -> (Response<B>, Option<HeaderBlock>) {
        (self.response, self.lines)
    }

    /// The response alone, with any lines moved into its header map.
    pub(crate) fn into_response(self) -> Response<B> {
        let mut response = self.response;
        if let Some(lines) = self.lines {
            lines.append_to(response.headers_mut());
        }
        response
    }
}

impl<B> From<Response<B>> for Reply<B> {
    fn from(response: Response<B>) -> Self {
        Reply {
            response,
            lines: None,
        }
    }
}

/// What a handler's future may resolve to.
pub trait IntoReply {
    type Body: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;

    fn into_reply(self) -> Reply<Self::Body>;
}

impl<B> IntoReply for Response<B>
where
    B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type Body = B;

    fn into_reply(self) -> Reply<B> {
        Reply::from(self)
    }
}

impl<B> IntoReply for Reply<B>
where
    B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type Body = B;

    fn into_reply(self) -> Reply<B> {
        self
    }
}
