//! The byte stream under a client connection on the serve loop's own HTTP/1.1 path: plain TCP,
//! or TLS over it. The path uses it through a shared reference, so that a request body can be
//! read while its answer is written.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The most one read takes in when the read buffer has too little room.
const READ_SIZE: usize = 16 * 1024;
/// Room in the read buffer worth reading into directly; with less, a read goes through
/// [`SCRATCH`].
pub(crate) const MIN_READ_ROOM: usize = 4 * 1024;

thread_local! {
    /// Where a read lands when the connection's own buffer has no room: this thread's
    /// connections share it, and each takes only what arrived.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

/// A client connection's bytes, both ways.
pub(crate) trait Wire: Send + Sync + 'static {
    /// The stream itself, for hyper when it takes the connection over.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Reads what arrived onto the end of `read`, which grows only by what arrived unless it
    /// already has [`MIN_READ_ROOM`] to spare. `Ready(Ok(0))` once the client closed its side.
    fn poll_read_into(&self, cx: &mut Context<'_>, read: &mut BytesMut) -> Poll<io::Result<usize>>;

    /// Writes some of `buf`.
    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;

    /// Sends on whatever a write left buffered.
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ends the gateway's side of the connection; the client's side can still be read.
    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The stream, for hyper to serve from here.
    fn into_stream(self) -> Self::Stream;
}

/// Writes all of `buf` and sends it on.
pub(crate) async fn write_all(wire: &impl Wire, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match poll_fn(|cx| wire.poll_write(cx, buf)).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => buf = &buf[n..],
        }
    }
    poll_fn(|cx| wire.poll_flush(cx)).await
}

/// Ends the gateway's side of `wire`.
pub(crate) fn shutdown(wire: &impl Wire) -> impl Future<Output = io::Result<()>> {
    poll_fn(|cx| wire.poll_shutdown(cx))
}

impl Wire for TcpStream {
    type Stream = TcpStream;

    fn poll_read_into(&self, cx: &mut Context<'_>, read: &mut BytesMut) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.poll_read_ready(cx))?;
            match try_read(self, read) {
                // Readiness was stale: wait again.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.poll_write_ready(cx))?;
            match self.try_write(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write))
    }

    fn into_stream(self) -> TcpStream {
        self
    }
}

/// Reads what `stream` holds onto the end of `read`, which grows only by what arrived.
/// Readiness is often stale (a read that took all there was leaves it set), so a buffer that
/// made room before each read would be holding memory through most idle waits.
fn try_read(stream: &TcpStream, read: &mut BytesMut) -> io::Result<usize> {
    let room = read.capacity() - read.len();
    if room >= MIN_READ_ROOM {
        return read_once(stream, room, || stream.try_read_buf(read));
    }
    SCRATCH.with_borrow_mut(|scratch| {
        let n = read_once(stream, scratch.len(), || stream.try_read(scratch))?;
        read.extend_from_slice(&scratch[..n]);
        Ok(n)
    })
}

/// Whether a read that fills less than it had room for shows the socket empty: true of the
/// edge-triggered event queues (epoll, kqueue) tokio uses on these systems.
const SHORT_READ_EMPTIES: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "freebsd"
));

/// Runs `read`, one read of at most `room` bytes from `stream`. A read that took less than
/// `room` emptied the socket, so its readiness is cleared, as a read that would block clears it:
/// the next wait goes to the event loop rather than to one more read that finds nothing, one
/// system call per request saved. tokio's own `poll_read` does the same; its `try_read` does
/// not. The readiness cleared is the one seen before the read, so bytes that arrive after it
/// still wake the connection.
fn read_once(
    stream: &TcpStream,
    room: usize,
    read: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut short = None;
    let result = stream.try_io(tokio::io::Interest::READABLE, || match read() {
        Ok(n) if SHORT_READ_EMPTIES && 0 < n && n < room => {
            short = Some(n);
            Err(io::ErrorKind::WouldBlock.into())
        }
        other => other,
    });
    match short {
        Some(n) => Ok(n),
        None => result,
    }
}

/// A TLS connection. Its session state is taken for the length of one poll at a time (never
/// across a wait), so reading the request body and writing the answer can interleave.
pub(crate) struct TlsWire(Mutex<TlsStream<TcpStream>>);

impl TlsWire {
    pub(crate) fn new(stream: TlsStream<TcpStream>) -> Self {
        TlsWire(Mutex::new(stream))
    }

    fn stream(&self) -> MutexGuard<'_, TlsStream<TcpStream>> {
        // A panic mid-poll leaves nothing half-done that the next poll could misread: the
        // session's own state is consistent between its calls.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Wire for TlsWire {
    type Stream = TlsStream<TcpStream>;

    fn poll_read_into(&self, cx: &mut Context<'_>, read: &mut BytesMut) -> Poll<io::Result<usize>> {
        let mut stream = self.stream();
        if read.capacity() - read.len() >= MIN_READ_ROOM {
            return pin!(stream.read_buf(read)).poll(cx);
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut landed = ReadBuf::new(scratch);
            std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut landed))?;
            read.extend_from_slice(landed.filled());
            Poll::Ready(Ok(landed.filled().len()))
        })
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.stream()).poll_write(cx, buf)
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream()).poll_shutdown(cx)
    }

    fn into_stream(self) -> Self::Stream {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}
