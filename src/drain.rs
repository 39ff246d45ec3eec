//! Draining: the trigger SIGTERM pulls, and the watchers every accept loop and HBONE server
//! connection hold.
//!
//! On the trigger, accept loops stop accepting (their listeners close; with
//! `tcp_migrate_req` the connections still queued move to the next daemon's listener), HBONE
//! server connections send GOAWAY so peers open new streams elsewhere, and live connections run
//! on until they end or the drain deadline passes.

use tokio::sync::watch;

/// Starts a drain. Dropping it without [`DrainTrigger::start`] never drains.
#[derive(Debug)]
pub struct DrainTrigger(watch::Sender<bool>);

/// Learns that a drain started. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DrainWatcher(watch::Receiver<bool>);

/// A trigger and its first watcher.
pub fn channel() -> (DrainTrigger, DrainWatcher) {
    let (tx, rx) = watch::channel(false);
    (DrainTrigger(tx), DrainWatcher(rx))
}

impl DrainTrigger {
    /// Tells every watcher to drain.
    pub fn start(&self) {
        self.0.send_replace(true);
    }
}

impl DrainWatcher {
    /// Resolves once a drain has started (at once if it already has). If the trigger is
    /// dropped without starting, it never resolves.
    pub async fn started(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}

impl Default for DrainWatcher {
    /// A watcher whose drain never starts (for proxies that are only ever aborted).
    fn default() -> Self {
        // The sender is dropped at once: `started` then pends forever (see above).
        let (_never, rx) = watch::channel(false);
        DrainWatcher(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_see_the_start_once_pulled() {
        let (trigger, watcher) = channel();
        let second = watcher.clone();
        assert!(!watcher.is_draining());
        let waiting = tokio::spawn(async move { second.started().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        trigger.start();
        waiting.await.unwrap();
        assert!(watcher.is_draining());
        // A watcher made after the start resolves at once.
        watcher.clone().started().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_never_drains() {
        let (trigger, watcher) = channel();
        drop(trigger);
        let r = tokio::time::timeout(std::time::Duration::from_millis(20), watcher.started()).await;
        assert!(r.is_err());
    }
}
