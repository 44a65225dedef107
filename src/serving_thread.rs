//! What a serving thread knows of itself: its index, and when it last paused, so that a busy
//! thread can offer its CPU between two requests. The protocol code below the serving loop asks
//! this without knowing how the threads are started (that is [`crate::workers`]).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long a thread runs requests without pausing before it offers its CPU to others.
const SERVE_BEFORE_YIELD: Duration = Duration::from_micros(250);
/// A wait for events that returns sooner found them already there: the thread did not pause.
const PAUSE: Duration = Duration::from_micros(5);

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
    /// When this thread last paused or offered its CPU.
    static BUSY_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// When this thread's runtime last began to wait for events.
    static PARKED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Records which serving thread this is.
pub(crate) fn set_index(index: usize) {
    INDEX.set(index);
}

/// The index of the serving thread this code runs on; 0 off serving threads.
pub(crate) fn index() -> usize {
    INDEX.get()
}

/// Called between two requests: once the thread has run for [`SERVE_BEFORE_YIELD`] without
/// pausing, offers its CPU to any other thread waiting for it.
///
/// Under load a serving thread always finds another connection ready, so it never sleeps, and
/// the kernel lets it run until its next scheduler tick (4 ms at the common 250 Hz) while the
/// clients and model servers it trades bytes with wait for that CPU, with their requests. That
/// had made the p90 to p97 a tick longer than HAProxy's (BENCHMARKS.md). A thread that pauses
/// on its own (its runtime finds nothing to do and sleeps) starts afresh: at lighter load a
/// yield would only queue it behind others, which lengthened the p99 there.
pub(crate) fn offer_cpu() {
    let now = Instant::now();
    match BUSY_SINCE.get() {
        Some(since) if now.duration_since(since) < SERVE_BEFORE_YIELD => {}
        Some(_) => {
            std::thread::yield_now();
            BUSY_SINCE.set(Some(Instant::now()));
        }
        None => BUSY_SINCE.set(Some(now)),
    }
}

/// The runtime is about to wait for events.
pub(crate) fn parking() {
    PARKED_AT.set(Some(Instant::now()));
}

/// The runtime is back from waiting for events: if it really slept, the thread paused.
pub(crate) fn unparked() {
    if let Some(parked_at) = PARKED_AT.take() {
        let now = Instant::now();
        if now.duration_since(parked_at) >= PAUSE {
            BUSY_SINCE.set(Some(now));
        }
    }
}
