//! 103 Early Hints (RFC 8297) from an instance, passed on to the client whose request waits for
//! the answer.
//!
//! The client side reads an instance's answer inside the poll of the request's handler, and on
//! the serve loop's own HTTP/1.1 path that poll runs within the client connection's own poll,
//! on the same thread. So the hints travel through a slot on the thread that the server side
//! opens for the length of one poll ([`open`]), and no request pays for a channel that
//! almost none would use. Where no slot is open (HTTP/2 clients, which hyper serves and which
//! have no way here to send an interim answer; a mirrored copy, which runs in a task of its
//! own), the hints are dropped, as before.

use std::cell::RefCell;

thread_local! {
    /// The interim heads offered during the current poll, encoded; `None` outside [`collect`].
    static OPEN: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Opens the slot for one poll of a request's handler; [`Opened::close`] after the poll gives
/// the interim heads offered meanwhile. A guard rather than a function taking the poll: the
/// poll's answer is large, and it stays where it is made rather than being passed back.
pub(crate) fn open() -> Opened {
    Opened(Some(OPEN.with_borrow_mut(|slot| slot.replace(Vec::new()))))
}

/// The slot, open; holds that of an enclosing poll, which closing (or dropping, as when the poll
/// panics) puts back.
#[must_use = "closing the slot gives the heads offered"]
pub(crate) struct Opened(Option<Option<Vec<u8>>>);

impl Opened {
    /// The interim heads offered since the slot opened, each written out whole, in order.
    pub(crate) fn close(mut self) -> Vec<u8> {
        self.put_back()
    }

    fn put_back(&mut self) -> Vec<u8> {
        let Some(outer) = self.0.take() else {
            return Vec::new();
        };
        let ours = OPEN.with_borrow_mut(|slot| std::mem::replace(slot, outer));
        ours.unwrap_or_default()
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.put_back();
    }
}

/// Passes an interim head on to the client whose request is being polled; `write` writes the
/// head whole, from its status line to the empty line. Does nothing where no slot is open.
pub(crate) fn offer(write: impl FnOnce(&mut Vec<u8>)) {
    OPEN.with_borrow_mut(|slot| {
        if let Some(heads) = slot {
            write(heads);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_offered_during_a_poll_is_collected_and_nothing_outside_one() {
        let mut asked = false;
        offer(|_| asked = true);
        assert!(!asked, "no slot is open outside a poll");
        let opened = open();
        offer(|heads| heads.extend_from_slice(b"one "));
        offer(|heads| heads.extend_from_slice(b"two"));
        assert_eq!(opened.close(), b"one two");
        offer(|_| asked = true);
        assert!(!asked, "the slot closes with the poll");
    }

    #[test]
    fn a_poll_inside_another_keeps_its_own_heads() {
        let outer = open();
        offer(|heads| heads.extend_from_slice(b"outer"));
        let inner = open();
        offer(|heads| heads.extend_from_slice(b"inner"));
        assert_eq!(inner.close(), b"inner");
        offer(|heads| heads.extend_from_slice(b" again"));
        assert_eq!(outer.close(), b"outer again");
    }

    #[test]
    fn a_poll_that_panics_closes_the_slot() {
        let panicked = std::panic::catch_unwind(|| {
            let _opened = open();
            panic!("handler failed");
        });
        assert!(panicked.is_err());
        let mut asked = false;
        offer(|_| asked = true);
        assert!(!asked);
    }
}
