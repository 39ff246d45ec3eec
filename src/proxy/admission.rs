//! Admission of 15008 connections into their TLS handshake: bounded per pod and per source
//! address, so a client that opens thousands of TCP connections and never completes a handshake
//! holds at most a fixed number of the node's file descriptors and cannot starve other clients
//! or other pods. The excess is closed with RST at accept, before any TLS work.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{MAX_PENDING_HANDSHAKES_PER_POD, MAX_PENDING_HANDSHAKES_PER_SOURCE};

/// Node-wide count of handshakes in progress per source address.
#[derive(Debug, Default)]
pub struct HandshakeSlots {
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// The pod has [`MAX_PENDING_HANDSHAKES_PER_POD`] handshakes in progress.
    PodBusy,
    /// The source has [`MAX_PENDING_HANDSHAKES_PER_SOURCE`] handshakes in progress.
    SourceBusy,
}

impl Shed {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::PodBusy => "pod_pending_handshakes",
            Shed::SourceBusy => "source_pending_handshakes",
        }
    }
}

/// A handshake slot; freed when dropped (handshake done, failed or timed out).
#[derive(Debug)]
pub struct HandshakeGuard {
    slots: Arc<HandshakeSlots>,
    pod: Arc<AtomicUsize>,
    source: IpAddr,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HandshakeSlots {
    /// Takes a slot for `source` in a pod whose pending count is `pod`.
    pub fn admit(
        self: &Arc<Self>,
        pod: &Arc<AtomicUsize>,
        source: IpAddr,
    ) -> Result<HandshakeGuard, Shed> {
        let mut per_source = lock(&self.per_source);
        let from_source = per_source.get(&source).copied().unwrap_or(0);
        if from_source >= MAX_PENDING_HANDSHAKES_PER_SOURCE {
            return Err(Shed::SourceBusy);
        }
        let admitted = pod.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_PENDING_HANDSHAKES_PER_POD).then_some(n + 1)
        });
        if admitted.is_err() {
            return Err(Shed::PodBusy);
        }
        per_source.insert(source, from_source + 1);
        Ok(HandshakeGuard {
            slots: self.clone(),
            pod: pod.clone(),
            source,
        })
    }

    /// Handshakes in progress from `source` (for tests and the admin page).
    pub fn pending_from(&self, source: IpAddr) -> usize {
        lock(&self.per_source).get(&source).copied().unwrap_or(0)
    }
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.pod.fetch_sub(1, Ordering::AcqRel);
        let mut per_source = lock(&self.slots.per_source);
        if let Some(n) = per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                // Entries go with their last handshake, so the map holds only live sources.
                per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_source_and_per_pod_and_frees_on_drop() {
        let slots = Arc::new(HandshakeSlots::default());
        let pod = Arc::new(AtomicUsize::new(0));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..MAX_PENDING_HANDSHAKES_PER_SOURCE)
            .map(|_| slots.admit(&pod, a).unwrap())
            .collect();
        assert_eq!(slots.admit(&pod, a).unwrap_err(), Shed::SourceBusy);
        // Another source is still admitted.
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let other = slots.admit(&pod, b).unwrap();
        drop(held);
        drop(other);
        assert_eq!(slots.pending_from(a), 0);
        assert_eq!(pod.load(Ordering::Acquire), 0);
        assert!(lock(&slots.per_source).is_empty());
        // The pod cap holds across many sources.
        let mut many = Vec::new();
        for i in 0..MAX_PENDING_HANDSHAKES_PER_POD {
            let ip = IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8]);
            many.push(slots.admit(&pod, ip).unwrap());
        }
        let late: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(slots.admit(&pod, late).unwrap_err(), Shed::PodBusy);
        assert_eq!(
            slots.pending_from(late),
            0,
            "a refused source holds nothing"
        );
    }
}
