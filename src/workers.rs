//! Serving threads, one per core.
//!
//! Each thread runs a single-threaded runtime with its own listening socket on the gateway's
//! port (`SO_REUSEPORT`): the kernel spreads new connections over the sockets, and accepting
//! needs no other thread. The kernel's spread is a hash, though, and a burst of keep-alive
//! clients often lands a few more connections on one thread than on another, which then sets
//! the pace for all. So a thread that accepts a connection while it serves more than the least
//! loaded thread hands the connection over to that one instead. Everything a request does
//! (reading it, forwarding it over a pooled upstream connection, answering) then stays on the
//! thread that serves its connection: no work stealing and no wake-ups across threads on the
//! request path. The admin API, the config watcher and readiness probes run on the caller's
//! runtime.
//!
//! A busy serving thread never sleeps, as there is always another connection ready, so once it
//! has run for 250 µs without pausing it offers its CPU between two requests (`offer_cpu`):
//! the clients and model servers that share its cores get to run without waiting for a
//! scheduler tick. While busy it also looks for new socket events every few tasks
//! (`EVENT_INTERVAL`), so that a connection whose socket became ready is not kept waiting behind
//! a long batch.
//!
//! Optionally (`--pin-workers`) each thread is pinned to a CPU of its own. Unpinned, the kernel
//! at times runs two serving threads on one core while another is busy elsewhere, and the
//! connections of the thread left waiting stall for a time slice: on a 2-core machine shared with
//! the load generator and the upstream, pinning cut the p99 by a fifth to two fifths
//! (BENCHMARKS.md). It is off by default, since a pinned thread cannot move away from a core
//! that other work keeps busy.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use socket2::{Domain, Socket, Type};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::server::{self, Accepted, Connections, Listener, Slot};
use crate::serving_thread;

/// How many connections may wait in each listening socket's accept queue.
const BACKLOG: i32 = 1024;

/// How many tasks a busy serving thread runs before it looks for new socket events again.
/// tokio's default, 61, starves streamed bodies: each takes many socket events, and with 61
/// tasks between looks 256 KiB bodies went at under half the rate. Every 4 tasks cost small
/// requests a few percent of their rate for no shorter tail; 16 does neither (BENCHMARKS.md).
const EVENT_INTERVAL: u32 = 16;

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

/// A connection on its way to the thread that serves it. The socket travels unregistered: it
/// joins that thread's event loop.
type Handoff = (std::net::TcpStream, SocketAddr, Slot);

/// A serving thread as the others see it: where to hand it a connection, and how many it has.
#[derive(Debug)]
struct Peer {
    inbox: mpsc::UnboundedSender<Handoff>,
    open: IntGauge,
}

/// Serving threads, stopped together.
#[derive(Debug)]
pub(crate) struct Workers {
    stop: watch::Sender<bool>,
    finished: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts a thread per listener, each running `serve(connections, stopped)` on its own
    /// runtime, where `connections` are those it accepts and those the others hand it. Thread
    /// `i` counts its open connections in `gauges[i]`. Accepting takes one of `slots`.
    /// `stopped` resolves when [`Workers::stop`] is called or the `Workers` is dropped.
    ///
    /// With `pin`, thread `i` runs only on the `i`-th CPU this process may use (wrapping
    /// around when there are more threads than CPUs).
    pub(crate) fn spawn<F, Fut>(
        listeners: Vec<std::net::TcpListener>,
        slots: Arc<Semaphore>,
        gauges: Vec<IntGauge>,
        pin: bool,
        serve: F,
    ) -> io::Result<Workers>
    where
        F: Fn(ThreadConnections, StopSignal) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            listeners.iter().map(|_| mpsc::unbounded_channel()).unzip();
        let peers: Arc<[Peer]> = senders
            .into_iter()
            .zip(gauges)
            .map(|(inbox, open)| Peer { inbox, open })
            .collect();
        let cpus = if pin { cpus_to_pin_to() } else { Vec::new() };
        let mut finished = Vec::with_capacity(listeners.len());
        for (index, (listener, inbox)) in listeners.into_iter().zip(receivers).enumerate() {
            let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .event_interval(EVENT_INTERVAL)
                .on_thread_park(serving_thread::parking)
                .on_thread_unpark(serving_thread::unparked)
                .enable_all()
                .build()?;
            let serve = serve.clone();
            let stopped = StopSignal(stopped.clone());
            let slots = Arc::clone(&slots);
            let peers = Arc::clone(&peers);
            let (done, finish) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || {
                    serving_thread::set_index(index);
                    if let Some(cpu) = cpu {
                        match affinity::pin_this_thread(cpu) {
                            Ok(()) => tracing::debug!(index, cpu, "serving thread pinned"),
                            Err(error) => {
                                tracing::warn!(%error, index, cpu, "cannot pin serving thread");
                            }
                        }
                    }
                    runtime.block_on(async move {
                        tokio::spawn(keep_a_timer_due());
                        // The listener joins this thread's event loop.
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => {
                                let connections = ThreadConnections {
                                    index,
                                    listener: Listener::new(listener, slots),
                                    inbox,
                                    peers,
                                    next: 0,
                                };
                                serve(connections, stopped).await;
                            }
                            Err(error) => tracing::error!(%error, "worker cannot listen"),
                        }
                    });
                    drop(done);
                })?;
            finished.push(finish);
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

/// The connections one serving thread serves: those it accepts and keeps, and those the others
/// hand it.
#[derive(Debug)]
pub(crate) struct ThreadConnections {
    index: usize,
    listener: Listener,
    inbox: mpsc::UnboundedReceiver<Handoff>,
    peers: Arc<[Peer]>,
    /// Where the search for the least loaded thread starts, so equals take turns.
    next: usize,
}

impl ThreadConnections {
    /// The thread that should serve a new connection: this one while no thread has fewer open
    /// connections, else the least loaded.
    fn place(&mut self) -> usize {
        let loads: Vec<i64> = self.peers.iter().map(|peer| peer.open.get()).collect();
        let chosen = place(&loads, self.index, self.next);
        self.next = (chosen + 1) % loads.len();
        chosen
    }

    fn take_over((stream, peer, slot): Handoff) -> Option<Accepted> {
        let stream = server::register(stream, peer)?;
        Some(Accepted { stream, peer, slot })
    }
}

impl Connections for ThreadConnections {
    async fn next(&mut self) -> Option<Accepted> {
        loop {
            let (stream, peer, permit) = tokio::select! {
                biased;
                handoff = self.inbox.recv() => {
                    // This thread holds a sender to its own inbox, so it never closes here.
                    if let Some(accepted) = handoff.and_then(ThreadConnections::take_over) {
                        return Some(accepted);
                    }
                    continue;
                }
                accepted = self.listener.accept() => accepted?,
            };
            let chosen = self.place();
            let slot = Slot::new(permit, Some(self.peers[chosen].open.clone()));
            if chosen == self.index {
                return Some(Accepted { stream, peer, slot });
            }
            // Leaves this thread's event loop; the chosen thread registers it with its own.
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, %peer, "cannot hand over a connection");
                    continue;
                }
            };
            if let Err(mpsc::error::SendError(handoff)) =
                self.peers[chosen].inbox.send((stream, peer, slot))
            {
                // That thread has stopped: serve the connection here after all.
                let (stream, peer, mut slot) = handoff;
                slot.count_in(self.peers[self.index].open.clone());
                if let Some(accepted) = ThreadConnections::take_over((stream, peer, slot)) {
                    return Some(accepted);
                }
            }
        }
    }

    fn stop(mut self) -> Vec<Accepted> {
        self.inbox.close();
        let mut rest = Vec::new();
        while let Ok(handoff) = self.inbox.try_recv() {
            rest.extend(ThreadConnections::take_over(handoff));
        }
        rest
    }
}

/// Which thread serves a connection `own` accepted, given each thread's open connections: `own`
/// while none has fewer, else the least loaded, equals taken in turn from `start` on.
fn place(loads: &[i64], own: usize, start: usize) -> usize {
    let least = (0..loads.len())
        .map(|offset| (start + offset) % loads.len())
        .min_by_key(|&index| loads[index])
        .unwrap_or(own);
    if loads[own] <= loads[least] {
        own
    } else {
        least
    }
}

/// Ticks once a second for as long as the thread serves. tokio's timer wakes its own thread,
/// at the cost of a system call, whenever a timer is set that is due before every other it
/// holds. Every proxied request sets one (its timeout); with a tick always due within the
/// second, the usual timeouts never are the earliest.
async fn keep_a_timer_due() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
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

/// The CPUs this process may run on, for `--pin-workers`; none (so no pinning) if they cannot
/// be read.
fn cpus_to_pin_to() -> Vec<usize> {
    match affinity::allowed_cpus() {
        Ok(cpus) => cpus,
        Err(error) => {
            tracing::warn!(%error, "cannot read the CPUs this process may use; serving threads are not pinned");
            Vec::new()
        }
    }
}

#[cfg(target_os = "linux")]
mod affinity {
    use std::io;

    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;

    /// The CPUs the calling thread may run on (for the main thread: the process's set, as
    /// `taskset` or a container's cpuset left it), in ascending order.
    pub(super) fn allowed_cpus() -> io::Result<Vec<usize>> {
        let set = sched_getaffinity(Pid::from_raw(0))?;
        Ok((0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect())
    }

    /// Restricts the calling thread to `cpu`.
    pub(super) fn pin_this_thread(cpu: usize) -> io::Result<()> {
        let mut set = CpuSet::new();
        set.set(cpu)?;
        sched_setaffinity(Pid::from_raw(0), &set)?;
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod affinity {
    use std::io;

    pub(super) fn allowed_cpus() -> io::Result<Vec<usize>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "pinning threads is supported on Linux only",
        ))
    }

    pub(super) fn pin_this_thread(_cpu: usize) -> io::Result<()> {
        allowed_cpus().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::place;

    #[test]
    fn a_thread_keeps_what_it_accepts_while_none_has_fewer() {
        assert_eq!(place(&[2, 2], 0, 1), 0);
        assert_eq!(place(&[1, 2], 0, 1), 0);
        assert_eq!(place(&[1, 1, 1], 2, 0), 2);
    }

    #[test]
    fn a_busier_thread_hands_over_to_the_least_loaded() {
        assert_eq!(place(&[3, 1, 2], 0, 0), 1);
        assert_eq!(place(&[3, 2, 1], 1, 0), 2);
    }

    #[test]
    fn equally_least_loaded_threads_take_turns() {
        assert_eq!(place(&[2, 1, 1], 0, 0), 1);
        assert_eq!(place(&[2, 1, 1], 0, 2), 2);
        assert_eq!(place(&[2, 1, 1], 0, 0), 1);
    }
}
