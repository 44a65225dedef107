//! Serving threads, one per core.
//!
//! Each thread runs a single-threaded runtime with its own listening socket on the gateway's
//! port (`SO_REUSEPORT`); the kernel spreads new connections over the sockets. Everything a
//! request does (reading it, forwarding it over a pooled upstream connection, answering) then
//! stays on the thread that accepted its connection: no work stealing and no wake-ups across
//! threads on the request path. The admin API, the config watcher and readiness probes run on
//! the caller's runtime.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::sync::{oneshot, watch};

/// How many connections may wait in each listening socket's accept queue.
const BACKLOG: i32 = 1024;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the serving thread this code runs on; 0 off serving threads.
pub(crate) fn current() -> usize {
    INDEX.get()
}

/// Binds `count` listening sockets to one address; with port 0, the port the first one got.
pub(crate) fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let listener = std::net::TcpListener::from(socket);
        // The others join the port the first one was given.
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serving threads, stopped together.
#[derive(Debug)]
pub(crate) struct Workers {
    stop: watch::Sender<bool>,
    finished: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts a thread per listener, each running `serve(listener, stopped)` on its own runtime.
    /// `stopped` resolves when [`Workers::stop`] is called or the `Workers` is dropped.
    pub(crate) fn spawn<F, Fut>(
        listeners: Vec<std::net::TcpListener>,
        serve: F,
    ) -> io::Result<Workers>
    where
        F: Fn(tokio::net::TcpListener, StopSignal) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let mut finished = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let serve = serve.clone();
            let stopped = StopSignal(stopped.clone());
            let (done, finish) = oneshot::channel::<()>();
            finished.push(finish);
            std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || {
                    INDEX.set(index);
                    runtime.block_on(async move {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => serve(listener, stopped).await,
                            Err(error) => tracing::error!(%error, "worker cannot listen"),
                        }
                    });
                    drop(done);
                })?;
        }
        Ok(Workers { stop, finished })
    }

    /// Tells every thread to stop accepting and drain, and waits until all have finished.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for finished in self.finished {
            let _ = finished.await;
        }
    }
}

/// Resolves when the serving threads are told to stop (or their owner is gone).
#[derive(Debug, Clone)]
pub(crate) struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Waits for the stop.
    pub(crate) async fn stopped(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
