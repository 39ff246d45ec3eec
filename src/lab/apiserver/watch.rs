//! Watch streams: newline-delimited JSON events over a chunked HTTP response.
//!
//! A watch first gets its backlog (synthetic ADDED events for the current objects, or the
//! changes after its resourceVersion from the history), then live changes. It ends when its
//! `timeoutSeconds` pass, when `/standin/drop-watches` is called, when the client goes away,
//! or when it falls too far behind; the client then resumes from the last resourceVersion it
//! saw. A resourceVersion older than the history gets one ERROR event (`410 Expired`) and the
//! end of the stream, as from a real API server.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::http::Shared;
use super::select::Filter;
use super::store::{ApiError, Start};
use super::{BOOKMARK_INTERVAL, RESOURCES};

/// Events buffered for a client before the watch waits for it.
const CHANNEL_CAPACITY: usize = 256;

/// A response body fed from a channel, one chunk per event.
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// What a watch request asked for.
pub(crate) struct WatchParams {
    pub res: usize,
    pub filter: Filter,
    pub start: Start,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: end the initial events with an annotated bookmark.
    pub initial_events_end: bool,
    /// `timeoutSeconds`.
    pub timeout: Duration,
}

/// One event line.
fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// A BOOKMARK event: only kind, apiVersion and metadata.resourceVersion.
fn bookmark(res: usize, rv: u64, initial_events_end: bool) -> Bytes {
    let rt = &RESOURCES[res];
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}),
    )
}

/// Starts a watch and returns its response body.
pub(crate) fn start(shared: &Arc<Shared>, params: WatchParams) -> ChannelBody {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let begun = shared
        .store()
        .watch(params.res, params.start, &params.filter);
    match begun {
        Err(err) => {
            // Capacity is far above one: this cannot fail.
            let _ = tx.try_send(error_line(&err));
        }
        Ok(begun) => {
            let drop_rx = shared.drop_signal();
            tokio::spawn(run(tx, begun, params, drop_rx));
        }
    }
    ChannelBody { rx }
}

fn error_line(err: &ApiError) -> Bytes {
    line("ERROR", &err.status())
}

async fn run(
    tx: mpsc::Sender<Bytes>,
    begun: super::store::WatchStart,
    params: WatchParams,
    mut drop_rx: tokio::sync::watch::Receiver<u64>,
) {
    let deadline = Instant::now() + params.timeout;
    let super::store::WatchStart {
        backlog,
        mut live,
        rv,
    } = begun;
    for (kind, obj) in backlog {
        if tx.send(line(kind, &obj)).await.is_err() {
            return;
        }
    }
    // Every change up to `seen` has been sent (or is out of scope): the safe bookmark version.
    let mut seen = rv;
    if params.initial_events_end
        && params.bookmarks
        && tx.send(bookmark(params.res, seen, true)).await.is_err()
    {
        return;
    }
    let mut ticks = tokio::time::interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let out = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = drop_rx.changed() => return,
            _ = tx.closed() => return,
            change = live.recv() => match change {
                Ok(change) => {
                    seen = seen.max(change.rv);
                    if change.res != params.res {
                        continue;
                    }
                    match params.filter.convert(&change) {
                        Some((kind, obj)) => line(kind, &obj),
                        None => continue,
                    }
                }
                // Too slow a reader: close; the client resumes from its resourceVersion.
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticks.tick(), if params.bookmarks => bookmark(params.res, seen, false),
        };
        tokio::select! {
            sent = tx.send(out) => if sent.is_err() { return },
            _ = drop_rx.changed() => return,
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}
