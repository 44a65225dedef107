//! A connection the own HTTP/1.1 path hands on, with the bytes it already read from it in
//! front: to hyper when it begins with HTTP/2's preface, or to the handler once it answered an
//! upgrade with `101 Switching Protocols`.
//!
//! An upgrade request carries an [`OnUpgrade`] in its extensions ([`on_upgrade`] takes it). If
//! the handler's answer is a 101, the own path writes it and then sends the connection through
//! it as [`Upgraded`], which also holds the connection's slot: a tunnel counts as an open
//! connection for as long as it lasts. A request that came through a hyper server of its own
//! (an embedded endpoint) carries hyper's upgrade instead, which [`on_upgrade`] takes as well.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::Slot;

/// What a tunnel reads from and writes to.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A client's connection after a 101: the new protocol's bytes both ways, starting with any the
/// client sent behind its request.
pub struct Upgraded {
    io: Box<dyn Io>,
    /// The connection's slot, when the serve loop accepted it.
    _slot: Option<Slot>,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded").finish_non_exhaustive()
    }
}

/// The client's connection once the upgrade's 101 is written; an error if it is not (the
/// answer was no 101, or the client left first).
#[derive(Debug)]
pub struct OnUpgrade(Source);

#[derive(Debug)]
enum Source {
    Own(oneshot::Receiver<Upgraded>),
    Hyper(hyper::upgrade::OnUpgrade),
}

/// The own path's end of an [`OnUpgrade`].
#[derive(Debug)]
pub(crate) struct Pending(oneshot::Sender<Upgraded>);

/// How a request carries its [`OnUpgrade`]: extensions must be `Clone`, and it is taken once.
#[derive(Debug, Clone)]
pub(crate) struct Offer(Arc<Mutex<Option<OnUpgrade>>>);

/// A new pair: the request carries the [`Offer`], the connection keeps the [`Pending`].
pub(crate) fn pending() -> (Pending, Offer) {
    let (send, receive) = oneshot::channel();
    let offer = Offer(Arc::new(Mutex::new(Some(OnUpgrade(Source::Own(receive))))));
    (Pending(send), offer)
}

/// Takes the upgrade a request carries: the own path's offer, or hyper's.
pub fn on_upgrade<B>(request: &mut Request<B>) -> Option<OnUpgrade> {
    if let Some(offer) = request.extensions_mut().remove::<Offer>() {
        let mut taken = offer.0.lock().unwrap_or_else(PoisonError::into_inner);
        return taken.take();
    }
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_some()
    {
        return Some(OnUpgrade(Source::Hyper(hyper::upgrade::on(request))));
    }
    None
}

impl Pending {
    /// Hands `io` (with `prefix`, what was read of it and not yet taken, in front) to whoever
    /// waits on the [`OnUpgrade`].
    pub(crate) fn switch<T>(self, prefix: Bytes, io: T, slot: Slot)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let upgraded = Upgraded {
            io: Box::new(Prefixed::new(prefix, io)),
            _slot: Some(slot),
        };
        // Nobody waiting: the handler gave up on the tunnel, and the connection closes.
        let _ = self.0.send(upgraded);
    }
}

impl Future for OnUpgrade {
    type Output = io::Result<Upgraded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Source::Own(receive) => Pin::new(receive).poll(cx).map(|switched| {
                switched.map_err(|_| io::Error::other("the connection was not switched"))
            }),
            Source::Hyper(upgrade) => Pin::new(upgrade).poll(cx).map(|switched| {
                let upgraded = switched.map_err(io::Error::other)?;
                Ok(Upgraded {
                    io: Box::new(hyper_util::rt::TokioIo::new(upgraded)),
                    _slot: None,
                })
            }),
        }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

/// A connection with bytes already read from it in front.
#[derive(Debug)]
pub(crate) struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
