//! Serving threads, one per core.
//!
//! Each thread runs a single-threaded runtime. One acceptor, on the caller's runtime, takes
//! new connections off the listening socket and hands each to the thread with the fewest open
//! connections, so the threads carry even loads (the kernel's `SO_REUSEPORT` hashing leaves one
//! thread with noticeably more connections than another as often as not). Everything a request
//! does (reading it, forwarding it over a pooled upstream connection, answering) then stays on
//! that thread: no work stealing and no wake-ups across threads on the request path. The admin
//! API, the config watcher and readiness probes run on the caller's runtime.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use prometheus::IntGauge;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::server::{Accepted, Connections, Listener, Slot};

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the serving thread this code runs on; 0 off serving threads.
pub(crate) fn current() -> usize {
    INDEX.get()
}

/// A connection on its way from the acceptor to a serving thread. The socket travels
/// unregistered: it joins the event loop of the thread that serves it.
type Handoff = (std::net::TcpStream, SocketAddr, Slot);

/// Serving threads and their acceptor, stopped together.
#[derive(Debug)]
pub(crate) struct Workers {
    stop: watch::Sender<bool>,
    acceptor: JoinHandle<()>,
    finished: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts one thread per gauge, each running `serve(connections, stopped)` on its own
    /// runtime, and an acceptor task on the caller's runtime that deals `listener`'s connections
    /// out to them. A thread's gauge counts its open connections. `stopped` resolves when
    /// [`Workers::stop`] is called or the `Workers` is dropped.
    pub(crate) fn spawn<F, Fut>(
        listener: Listener,
        gauges: Vec<IntGauge>,
        serve: F,
    ) -> io::Result<Workers>
    where
        F: Fn(Handoffs, StopSignal) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let mut finished = Vec::with_capacity(gauges.len());
        let mut queues = Vec::with_capacity(gauges.len());
        for (index, gauge) in gauges.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let serve = serve.clone();
            let stopped = StopSignal(stopped.clone());
            let (sender, receiver) = mpsc::unbounded_channel();
            let (done, finish) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || {
                    INDEX.set(index);
                    runtime.block_on(serve(Handoffs { receiver }, stopped));
                    drop(done);
                })?;
            finished.push(finish);
            queues.push(Queue { sender, gauge });
        }
        let acceptor = tokio::spawn(accept(listener, queues, StopSignal(stopped)));
        Ok(Workers {
            stop,
            acceptor,
            finished,
        })
    }

    /// Stops accepting, tells every thread to drain, and waits until all have finished.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.acceptor).await;
        for finished in std::mem::take(&mut self.finished) {
            let _ = finished.await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // The threads stop when the stop sender goes; the acceptor is the caller's task.
        self.acceptor.abort();
    }
}

/// A serving thread's inbox, and its count of open connections.
struct Queue {
    sender: mpsc::UnboundedSender<Handoff>,
    gauge: IntGauge,
}

/// Takes connections off `listener` and hands each to the least loaded thread until `stop`.
async fn accept(mut listener: Listener, queues: Vec<Queue>, stop: StopSignal) {
    let stopped = stop.stopped();
    tokio::pin!(stopped);
    let mut next = 0;
    loop {
        let (stream, peer, permit) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Some(accepted) => accepted,
                None => break,
            },
            () = &mut stopped => break,
        };
        let chosen = least_loaded(&queues, next);
        next = (chosen + 1) % queues.len();
        let queue = &queues[chosen];
        // Leaves this runtime's event loop; the serving thread registers it with its own.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, %peer, "cannot hand over a connection");
                continue;
            }
        };
        let slot = Slot::new(permit, Some(queue.gauge.clone()));
        if queue.sender.send((stream, peer, slot)).is_err() {
            // The thread has stopped: so are the others.
            break;
        }
    }
}

/// The queue with the fewest open connections.
fn least_loaded(queues: &[Queue], start: usize) -> usize {
    pick_least(queues.len(), start, |index| queues[index].gauge.get())
}

/// The index in `0..count` with the least `load`; among equals, the first from `start` on, so
/// equal loads are served in turn.
fn pick_least(count: usize, start: usize, load: impl Fn(usize) -> i64) -> usize {
    (0..count)
        .map(|offset| (start + offset) % count)
        .min_by_key(|&index| load(index))
        .unwrap_or(0)
}

/// The connections handed to one serving thread.
#[derive(Debug)]
pub(crate) struct Handoffs {
    receiver: mpsc::UnboundedReceiver<Handoff>,
}

impl Handoffs {
    fn register((stream, peer, slot): Handoff) -> Option<Accepted> {
        match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => Some(Accepted { stream, peer, slot }),
            Err(error) => {
                tracing::debug!(%error, %peer, "cannot take over a connection");
                None
            }
        }
    }
}

impl Connections for Handoffs {
    async fn next(&mut self) -> Option<Accepted> {
        loop {
            let handoff = self.receiver.recv().await?;
            if let Some(accepted) = Handoffs::register(handoff) {
                return Some(accepted);
            }
        }
    }

    fn stop(mut self) -> Vec<Accepted> {
        self.receiver.close();
        let mut rest = Vec::new();
        while let Ok(handoff) = self.receiver.try_recv() {
            rest.extend(Handoffs::register(handoff));
        }
        rest
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

#[cfg(test)]
mod tests {
    use super::pick_least;

    fn pick(loads: &[i64], start: usize) -> usize {
        pick_least(loads.len(), start, |index| loads[index])
    }

    #[test]
    fn the_thread_with_fewest_connections_gets_the_next() {
        assert_eq!(pick(&[3, 1, 2], 0), 1);
        assert_eq!(pick(&[3, 1, 2], 2), 1);
    }

    #[test]
    fn equal_loads_take_turns_from_the_start() {
        assert_eq!(pick(&[2, 2, 2], 0), 0);
        assert_eq!(pick(&[2, 2, 2], 1), 1);
        assert_eq!(pick(&[2, 2, 2], 2), 2);
        // Only the least loaded take turns.
        assert_eq!(pick(&[1, 2, 1], 1), 2);
        assert_eq!(pick(&[1, 2, 1], 0), 0);
    }
}
