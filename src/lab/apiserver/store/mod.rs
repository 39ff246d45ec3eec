//! The stand-in's storage: JSON objects keyed by resource, namespace and name; one global
//! resourceVersion; a bounded history of changes for watches; the state file.
//!
//! Every mutation happens under the one lock around [`Store`], which also numbers the change,
//! records it, persists the state and broadcasts it to open watches, so watchers see changes
//! in resourceVersion order and never miss one between their catch-up and their subscription.
//!
//! The store lives here with its reads, its watch subscription and [`Store::commit`], the one
//! place a change is numbered and published. Around it: `error` (API errors as `Status`
//! objects), `object` (metadata checks and defaults), `patch` (merge and JSON patches),
//! `mutate` (create, replace, patch, delete) and `persist` (the state file).

mod error;
mod mutate;
mod object;
mod patch;
mod persist;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::select::Filter;
use super::{HISTORY_LIMIT, RESOURCES};

pub(crate) use error::ApiError;
pub(crate) use object::meta_str;
pub(crate) use patch::{merge_patch, strip_nulls, Patch};
pub(crate) use persist::write_atomic;

/// Capacity of the broadcast channel feeding open watches; a watch that falls this far behind
/// is closed (the client resumes from its last resourceVersion).
const BROADCAST_CAPACITY: usize = 4096;

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One numbered change, as kept in the history and sent to watches.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub res: usize,
    pub kind: ChangeKind,
    /// The object after the change (for a deletion: its last state, with the deletion's rv).
    pub object: Arc<Value>,
    /// The object before a modification (decides ADDED/DELETED for filtered watches).
    pub prev: Option<Arc<Value>>,
}

/// Object key: resource index, namespace (empty when cluster-scoped), name.
type Key = (usize, String, String);

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// `resourceVersion` unset or `"0"`: the current objects as synthetic ADDED events first.
    Current,
    /// After this resourceVersion: the changes since, from the history.
    After(u64),
}

/// What a new watch gets from the store under its lock.
pub(crate) struct WatchStart {
    /// Events to send before live ones (synthetic ADDED, or history).
    pub backlog: Vec<(&'static str, Arc<Value>)>,
    /// Live changes from here on.
    pub live: broadcast::Receiver<Arc<Change>>,
    /// The resourceVersion the backlog brings the watcher to.
    pub rv: u64,
}

/// The stand-in's state.
pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    /// Each object's JSON, kept so that persisting after a change re-encodes only that object.
    encoded: BTreeMap<Key, Vec<u8>>,
    history: VecDeque<Arc<Change>>,
    /// Watches from a resourceVersion below this get `410`: the history before it is gone.
    floor: u64,
    state_file: Option<PathBuf>,
    tx: broadcast::Sender<Arc<Change>>,
}

impl Store {
    /// The state file, if the store persists (the TokenReview registry lives beside it).
    pub fn state_file(&self) -> Option<&Path> {
        self.state_file.as_deref()
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Number of changes kept for watches.
    #[cfg(test)]
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Forgets the history. The resourceVersion moves on by one (as a real cluster's does,
    /// written by everything else going on in it), so every watcher that has not seen this
    /// version, however up to date, gets `410` when it resumes.
    pub fn expire_history(&mut self) {
        self.history.clear();
        self.rv += 1;
        self.floor = self.rv;
        self.persist();
    }

    pub fn get(&self, res: usize, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        self.objects
            .get(&(res, ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&RESOURCES[res], name))
    }

    /// Objects of `res` (in `ns`, or everywhere) that pass `filter`, and the resourceVersion.
    pub fn list(&self, res: usize, ns: Option<&str>, filter: &Filter) -> (Vec<Arc<Value>>, u64) {
        let items = self
            .objects
            .iter()
            .filter(|((r, n, _), _)| *r == res && ns.is_none_or(|ns| ns == n))
            .filter(|(_, obj)| filter.matches(obj))
            .map(|(_, obj)| obj.clone())
            .collect();
        (items, self.rv)
    }

    /// Checks a watch's start against the history and subscribes it to live changes.
    pub fn watch(&self, res: usize, start: Start, filter: &Filter) -> Result<WatchStart, ApiError> {
        let backlog = match start {
            Start::Current => self
                .objects
                .iter()
                .filter(|((r, _, _), obj)| *r == res && filter.matches(obj))
                .map(|(_, obj)| ("ADDED", obj.clone()))
                .collect(),
            Start::After(from) => {
                if from < self.floor {
                    return Err(ApiError::expired(from, self.floor));
                }
                self.history
                    .iter()
                    .filter(|c| c.rv > from && c.res == res)
                    .filter_map(|c| filter.convert(c))
                    .collect()
            }
        };
        Ok(WatchStart {
            backlog,
            live: self.tx.subscribe(),
            rv: self.rv,
        })
    }

    /// Numbers, stores, records, persists and broadcasts one change.
    fn commit(
        &mut self,
        key: Key,
        kind: ChangeKind,
        mut body: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        body["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let object = Arc::new(body);
        if kind == ChangeKind::Deleted {
            self.objects.remove(&key);
            self.encoded.remove(&key);
        } else {
            self.objects.insert(key.clone(), object.clone());
            let json = serde_json::to_vec(&*object).unwrap_or_default();
            self.encoded.insert(key.clone(), json);
        }
        let change = Arc::new(Change {
            rv: self.rv,
            res: key.0,
            kind,
            object: object.clone(),
            prev,
        });
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(evicted) = self.history.pop_front() {
                self.floor = evicted.rv;
            }
        }
        self.persist();
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
        object
    }
}
