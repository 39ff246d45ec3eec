//! The connection table of one endpoint server: at most `cap` connections, and at the cap the
//! new one takes the place of the oldest idle one.
//!
//! Refusing at the cap would let whoever holds the slots lock out the kubelet's next probe;
//! closing the oldest connection instead means a flood only ever pushes out the flood itself
//! (a legitimate client sends its request at once, so it is rarely the oldest idle one).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The connections a server holds.
pub(super) struct Slots {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Id of the next connection; ids grow, so the map's order is the age order.
    next: u64,
    open: BTreeMap<u64, Slot>,
}

struct Slot {
    busy: Arc<AtomicBool>,
    /// Dropping it tells the connection's task to close.
    _close: oneshot::Sender<()>,
}

/// One admitted connection. Dropping it frees the slot.
pub(super) struct Ticket {
    slots: Arc<Slots>,
    id: u64,
    /// Set once the connection has sent a request; idle connections are evicted first.
    pub busy: Arc<AtomicBool>,
    /// Completes (with an error) when the connection was evicted to make room.
    pub evicted: oneshot::Receiver<()>,
}

impl Slots {
    /// A table of at most `cap` connections (at least one).
    pub fn new(cap: usize) -> Arc<Slots> {
        Arc::new(Slots {
            cap: cap.max(1),
            inner: Mutex::default(),
        })
    }

    /// Admits a new connection, evicting one first when the table is full; also returns
    /// whether one was evicted.
    pub fn admit(self: &Arc<Self>) -> (Ticket, bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted = false;
        while inner.open.len() >= self.cap {
            let ages = inner
                .open
                .iter()
                .map(|(id, s)| (*id, s.busy.load(Ordering::Acquire)));
            let Some(victim) = victim(ages) else { break };
            // Dropping the slot drops its sender: that connection's task sees it and closes.
            inner.open.remove(&victim);
            evicted = true;
        }
        let id = inner.next;
        inner.next += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let (close, closed) = oneshot::channel();
        inner.open.insert(
            id,
            Slot {
                busy: busy.clone(),
                _close: close,
            },
        );
        let ticket = Ticket {
            slots: self.clone(),
            id,
            busy,
            evicted: closed,
        };
        (ticket, evicted)
    }

    /// Connections held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .len()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.open.remove(&self.id);
    }
}

/// Which connection gives way: the oldest that has not sent a request, else the oldest.
/// `ages` lists (id, busy) oldest first.
fn victim(ages: impl Iterator<Item = (u64, bool)>) -> Option<u64> {
    let mut oldest = None;
    for (id, busy) in ages {
        if !busy {
            return Some(id);
        }
        oldest.get_or_insert(id);
    }
    oldest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victim_is_the_oldest_idle_else_the_oldest() {
        assert_eq!(
            victim([(1, true), (2, false), (3, false)].into_iter()),
            Some(2)
        );
        assert_eq!(victim([(1, false), (2, false)].into_iter()), Some(1));
        assert_eq!(victim([(4, true), (7, true)].into_iter()), Some(4));
        assert_eq!(victim(std::iter::empty()), None);
    }

    #[test]
    fn at_the_cap_the_oldest_idle_is_told_to_close() {
        let slots = Slots::new(2);
        let (mut a, evicted) = slots.admit();
        assert!(!evicted);
        let (mut b, _) = slots.admit();
        a.busy.store(true, Ordering::Release);
        let (mut c, evicted) = slots.admit();
        assert!(evicted);
        assert_eq!(slots.len(), 2);
        // b was idle, so b goes although a is older.
        assert!(b
            .evicted
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        assert_eq!(
            a.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        assert_eq!(
            c.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        // An evicted ticket dropped late frees nothing twice; a live one frees its slot.
        drop(b);
        assert_eq!(slots.len(), 2);
        drop(c);
        assert_eq!(slots.len(), 1);
        let (_d, evicted) = slots.admit();
        assert!(!evicted);
    }
}
