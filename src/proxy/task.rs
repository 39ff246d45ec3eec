//! The task of one proxied connection, written by hand so that an idle connection holds only
//! what its copy needs.
//!
//! A connection first opens (decides, asks policy, dials, opens a tunnel): large, short-lived
//! state, kept boxed. The opening returns the copy phase as a future that owns its parts; the
//! task then holds that alone. An `async fn` doing the same would also keep its arguments and
//! every value it awaited beside the copy for the connection's whole life (measured in
//! `benches/README.md`: the outbound task was 1.1 KiB, mostly such leftovers).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// A connection's task: its boxed opening `O`, then the copy `C` that the opening returned
/// (`None` when the opening refused or failed, having recorded why).
pub(crate) enum ConnectionTask<O, C> {
    Opening(Pin<Box<O>>),
    Copying(C),
    Done,
}

impl<O, C> ConnectionTask<O, C> {
    /// A task that starts with `opening`.
    pub(crate) fn new(opening: O) -> Self {
        ConnectionTask::Opening(Box::pin(opening))
    }
}

impl<O, C> Future for ConnectionTask<O, C>
where
    O: Future<Output = Option<C>>,
    C: Future<Output = ()> + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                ConnectionTask::Opening(opening) => match ready!(opening.as_mut().poll(cx)) {
                    // The opening's state is freed here, before the copy's first poll.
                    Some(copy) => *this = ConnectionTask::Copying(copy),
                    None => *this = ConnectionTask::Done,
                },
                ConnectionTask::Copying(copy) => {
                    ready!(Pin::new(copy).poll(cx));
                    // Dropping the copy now closes its sockets and ends its flow.
                    *this = ConnectionTask::Done;
                }
                ConnectionTask::Done => return Poll::Ready(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Counts its drops, to see when the task lets go of a phase.
    struct Probe(Arc<AtomicUsize>);

    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An opening that keeps its state (a probe) until it is dropped, as a boxed `async fn`
    /// that returned would not: only freeing the box lets go of it.
    struct Opening<C> {
        _state: Probe,
        copy: Option<C>,
    }

    impl<C: Unpin> Future for Opening<C> {
        type Output = Option<C>;

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<C>> {
            Poll::Ready(self.get_mut().copy.take())
        }
    }

    #[tokio::test]
    async fn the_opening_is_freed_before_the_copy_runs_and_the_copy_when_it_ends() {
        let opening_drops = Arc::new(AtomicUsize::new(0));
        let copy_drops = Arc::new(AtomicUsize::new(0));
        let copy_probe = Probe(copy_drops.clone());
        let seen_by_copy = opening_drops.clone();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let mut released = Some(released);
        let copy = std::future::poll_fn(move |cx| {
            let _held = &copy_probe;
            // The opening's state is gone by the time the copy first runs.
            assert_eq!(seen_by_copy.load(Ordering::SeqCst), 1);
            match released.as_mut().map(|r| Pin::new(r).poll(cx)) {
                Some(Poll::Ready(_)) => {
                    released = None;
                    Poll::Ready(())
                }
                _ => Poll::Pending,
            }
        });
        let opening = Opening {
            _state: Probe(opening_drops.clone()),
            copy: Some(copy),
        };
        let task = tokio::spawn(ConnectionTask::new(opening));
        release.send(()).expect("the copy is waiting");
        task.await.expect("the task completes");
        assert_eq!(opening_drops.load(Ordering::SeqCst), 1);
        assert_eq!(copy_drops.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_opening_ends_the_task() {
        let opening = async { None::<std::future::Ready<()>> };
        let task = tokio::spawn(ConnectionTask::new(opening));
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the task ends instead of waiting for a copy")
            .expect("the task completes");
    }
}
