//! The stand-in's storage: JSON objects keyed by resource, namespace and name; one global
//! resourceVersion; a bounded history of changes for watches; the state file.
//!
//! Every mutation happens under the one lock around [`Store`], which also numbers the change,
//! records it, persists the state and broadcasts it to open watches, so watchers see changes
//! in resourceVersion order and never miss one between their catch-up and their subscription.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::select::Filter;
use super::{ResourceType, HISTORY_LIMIT, RESOURCES};

/// Capacity of the broadcast channel feeding open watches; a watch that falls this far behind
/// is closed (the client resumes from its last resourceVersion).
const BROADCAST_CAPACITY: usize = 4096;

/// An API error, rendered as a `Status` object with `code` as the HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the Status: name, group, kind (plural).
    pub details: Option<(String, String, String)>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn about(mut self, res: &ResourceType, name: &str) -> Self {
        self.details = Some((
            name.to_string(),
            res.group.to_string(),
            res.plural.to_string(),
        ));
        self
    }

    pub fn not_found(res: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(res)),
        )
        .about(res, name)
    }

    fn already_exists(res: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(res)),
        )
        .about(res, name)
    }

    fn conflict(res: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(res)
            ),
        )
        .about(res, name)
    }

    /// `410 Expired` for a resourceVersion older than the retained history.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, group, kind)) = &self.details {
            let mut details = Map::new();
            details.insert("name".into(), json!(name));
            if !group.is_empty() {
                details.insert("group".into(), json!(group));
            }
            details.insert("kind".into(), json!(kind));
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// `pods` or `endpointslices.discovery.k8s.io`, as the real server names resources in messages.
fn qualified(res: &ResourceType) -> String {
    if res.group.is_empty() {
        res.plural.to_string()
    } else {
        format!("{}.{}", res.plural, res.group)
    }
}

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

/// The state file's shape (written by [`Store::persist`]).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    resource_version: String,
    /// Resource id (`v1/pods`) -> objects.
    objects: BTreeMap<String, Vec<Value>>,
}

impl Store {
    /// Loads `state_file` if it exists; an empty store otherwise.
    pub fn open(state_file: Option<PathBuf>) -> anyhow::Result<Self> {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let mut store = Store {
            rv: 0,
            objects: BTreeMap::new(),
            encoded: BTreeMap::new(),
            history: VecDeque::new(),
            floor: 0,
            state_file,
            tx,
        };
        let Some(path) = store.state_file.clone() else {
            return Ok(store);
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let persisted: Persisted = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing stand-in state {}", path.display()))?;
        store.rv = persisted
            .resource_version
            .parse()
            .with_context(|| format!("{}: bad resourceVersion", path.display()))?;
        for (id, objects) in persisted.objects {
            let Some(res) = RESOURCES.iter().position(|r| r.id() == id) else {
                anyhow::bail!("{}: unknown resource {id:?}", path.display());
            };
            for obj in objects {
                let ns = meta_str(&obj, "namespace").unwrap_or_default().to_string();
                let name = meta_str(&obj, "name")
                    .with_context(|| format!("{}: a {id} object has no name", path.display()))?
                    .to_string();
                let key = (res, ns, name);
                store.encoded.insert(key.clone(), serde_json::to_vec(&obj)?);
                store.objects.insert(key, Arc::new(obj));
            }
        }
        // The history is not persisted: resuming is possible from the current version only.
        store.floor = store.rv;
        Ok(store)
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

    /// Creates `body` as `res` in `ns` (`""` for cluster-scoped).
    pub fn create(
        &mut self,
        res: usize,
        ns: &str,
        mut body: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        check_type(rt, &mut body)?;
        let meta = metadata_mut(&mut body)?;
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
                _ => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                            rt.kind
                        ),
                    ))
                }
            },
        };
        validate_name(rt, &name)?;
        check_namespace(rt, meta, ns)?;
        let key = (res, ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        meta.insert("name".into(), json!(name));
        // Differs from a real API server: a client-provided uid is kept (the lab assigns pod
        // UIDs and needs them to stay what it assigned).
        if meta
            .get("uid")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            meta.insert("uid".into(), json!(random_uuid()));
        }
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.remove("deletionTimestamp");
        drop_empty(meta);
        if rt.kind == "Namespace" && rt.group.is_empty() {
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            if body.get("status").and_then(|s| s.get("phase")).is_none() {
                body["status"] = json!({"phase": "Active"});
            }
        }
        Ok(self.commit(key, ChangeKind::Added, body, None))
    }

    /// Replaces the object named `name` with `body` (PUT).
    pub fn replace(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        mut body: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        check_type(rt, &mut body)?;
        let key = (res, ns.to_string(), name.to_string());
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let meta = metadata_mut(&mut body)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n == name => {}
            None | Some("") => {
                meta.insert("name".into(), json!(name));
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({other}) does not match the name on the URL ({name})"
                )))
            }
        }
        check_namespace(rt, meta, ns)?;
        self.check_preconditions(rt, name, &old, meta)?;
        self.update(key, old, body)
    }

    /// Applies a patch to the object (PATCH). With `create_missing` (server-side apply), a
    /// missing object is created from the patch.
    pub fn patch(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        patch: &Patch,
        create_missing: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        let key = (res, ns.to_string(), name.to_string());
        let Some(old) = self.objects.get(&key).cloned() else {
            if create_missing {
                let Patch::Merge(body) = patch else {
                    return Err(ApiError::not_found(rt, name));
                };
                let mut body = body.clone();
                strip_nulls(&mut body);
                let meta = metadata_mut(&mut body)?;
                meta.insert("name".into(), json!(name));
                return self.create(res, ns, body);
            }
            return Err(ApiError::not_found(rt, name));
        };
        let mut body = (*old).clone();
        match patch {
            Patch::Merge(p) => {
                if !p.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                merge_patch(&mut body, p);
            }
            Patch::Json(ops) => json_patch(&mut body, ops)?,
        }
        check_type(rt, &mut body)?;
        let meta = metadata_mut(&mut body)?;
        if meta.get("name").and_then(Value::as_str) != Some(name) {
            return Err(ApiError::bad_request(
                "metadata.name cannot be changed by a patch",
            ));
        }
        check_namespace(rt, meta, ns)?;
        // A resourceVersion in the patch is a precondition, as on a real server.
        self.check_preconditions(rt, name, &old, meta)?;
        self.update(key, old, body)
    }

    /// Deletes the object; `preconditions` from DeleteOptions (`uid`, `resourceVersion`).
    pub fn delete(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        preconditions: Option<&Value>,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = &RESOURCES[res];
        let key = (res, ns.to_string(), name.to_string());
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(pre) = preconditions {
            if let Some(uid) = pre.get("uid").and_then(Value::as_str) {
                if meta_str(&old, "uid") != Some(uid) {
                    return Err(ApiError::conflict(
                        rt,
                        name,
                        &format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            meta_str(&old, "uid").unwrap_or_default()
                        ),
                    ));
                }
            }
            if let Some(rv) = pre.get("resourceVersion").and_then(Value::as_str) {
                if meta_str(&old, "resourceVersion") != Some(rv) {
                    return Err(ApiError::conflict(
                        rt,
                        name,
                        &format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                            meta_str(&old, "resourceVersion").unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        let body = (*old).clone();
        Ok(self.commit(key, ChangeKind::Deleted, body, Some(old)))
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

    /// `412`-like checks shared by PUT and PATCH: uid and resourceVersion in the new body.
    fn check_preconditions(
        &self,
        rt: &ResourceType,
        name: &str,
        old: &Value,
        meta: &Map<String, Value>,
    ) -> Result<(), ApiError> {
        if let Some(rv) = meta.get("resourceVersion").and_then(Value::as_str) {
            if !rv.is_empty() && meta_str(old, "resourceVersion") != Some(rv) {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
        }
        if let Some(uid) = meta.get("uid").and_then(Value::as_str) {
            if !uid.is_empty() && meta_str(old, "uid") != Some(uid) {
                return Err(ApiError::conflict(
                    rt,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(old, "uid").unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Stores `body` in place of `old`, keeping what a client cannot change. A body equal to
    /// the stored object is not a change: no new resourceVersion, no event (as on a real
    /// server).
    fn update(
        &mut self,
        key: Key,
        old: Arc<Value>,
        mut body: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let meta = metadata_mut(&mut body)?;
        drop_empty(meta);
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            match old.get("metadata").and_then(|m| m.get(field)) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        if body == *old {
            return Ok(old);
        }
        Ok(self.commit(key, ChangeKind::Modified, body, Some(old)))
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

    /// Writes the state file (atomically). A failure is logged: the change stands in memory.
    fn persist(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        // The document is assembled from the objects' cached JSON (keys are ordered by
        // resource first, so each resource's objects are contiguous).
        let mut doc =
            Vec::with_capacity(self.encoded.values().map(|v| v.len() + 1).sum::<usize>() + 256);
        doc.extend_from_slice(
            format!("{{\"resourceVersion\":\"{}\",\"objects\":{{", self.rv).as_bytes(),
        );
        for (res, rt) in RESOURCES.iter().enumerate() {
            if res > 0 {
                doc.push(b',');
            }
            doc.extend_from_slice(format!("{}:[", json!(rt.id())).as_bytes());
            let range = self.encoded.range(
                (res, String::new(), String::new())..(res + 1, String::new(), String::new()),
            );
            for (i, (_, json)) in range.enumerate() {
                if i > 0 {
                    doc.push(b',');
                }
                doc.extend_from_slice(json);
            }
            doc.push(b']');
        }
        doc.extend_from_slice(b"}}");
        let result = write_atomic(path, &doc);
        if let Err(e) = result {
            tracing::error!(path = %path.display(), error = %e, "stand-in API server: cannot persist state");
        }
    }
}

/// A parsed PATCH body.
pub(crate) enum Patch {
    /// JSON merge patch (also used for strategic merge patch and apply).
    Merge(Value),
    /// JSON patch (RFC 6902) operations.
    Json(Vec<Value>),
}

/// `metadata.<field>` as a string.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// The body's `metadata` object (created when missing); a body that is not an object is a 400.
fn metadata_mut(body: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let obj = body
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be a JSON object"))
}

/// Leaves out empty metadata maps and lists, as the real server's encoding does (`omitempty`):
/// removing the last annotation leaves no `annotations` field.
fn drop_empty(meta: &mut Map<String, Value>) {
    for field in [
        "labels",
        "annotations",
        "finalizers",
        "ownerReferences",
        "managedFields",
    ] {
        let empty = match meta.get(field) {
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            meta.remove(field);
        }
    }
}

/// Checks `kind`/`apiVersion` of a body against the resource, filling them in when absent.
fn check_type(rt: &ResourceType, body: &mut Value) -> Result<(), ApiError> {
    let obj = body
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let api_version = rt.api_version();
    for (field, want) in [("kind", rt.kind), ("apiVersion", api_version.as_str())] {
        match obj.get(field).and_then(Value::as_str) {
            None | Some("") => {
                obj.insert(field.into(), json!(want));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the object ({got}) does not match the resource ({want}, {})",
                    rt.plural
                )))
            }
        }
    }
    Ok(())
}

/// A namespaced object gets the URL's namespace; a body naming another is a 400. A
/// cluster-scoped object has none.
fn check_namespace(
    rt: &ResourceType,
    meta: &mut Map<String, Value>,
    ns: &str,
) -> Result<(), ApiError> {
    if !rt.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(ns));
            Ok(())
        }
        Some(n) if n == ns => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
    }
}

/// Names: non-empty, at most 253 characters, no `/` or `%`, not `.` or `..`.
fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.contains(['/', '%'])
        && name != "."
        && name != "..";
    if ok {
        return Ok(());
    }
    Err(ApiError::new(
        422,
        "Invalid",
        format!(
            "{} \"{name}\" is invalid: metadata.name: Invalid value",
            rt.kind
        ),
    ))
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(target) = target else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Removes `null` members (a merge patch used as a new object).
pub(crate) fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
fn json_patch(doc: &mut Value, ops: &[Value]) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::new(422, "Invalid", m);
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("json patch operation without path: {op}")))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| bad(format!("json patch {kind} without value: {op}")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("json patch {kind} without from: {op}")))
        };
        match kind {
            "add" => pointer_add(doc, path, value()?).map_err(bad)?,
            "remove" => {
                pointer_remove(doc, path).map_err(bad)?;
            }
            "replace" => {
                let v = value()?;
                let slot = doc
                    .pointer_mut(path)
                    .ok_or_else(|| bad(format!("json patch replace: {path} does not exist")))?;
                *slot = v;
            }
            "move" => {
                let v = pointer_remove(doc, from()?).map_err(bad)?;
                pointer_add(doc, path, v).map_err(bad)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| bad(format!("json patch copy: {op} source does not exist")))?;
                pointer_add(doc, path, v).map_err(bad)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(bad(format!("json patch test failed at {path}")));
                }
            }
            other => return Err(bad(format!("unknown json patch operation {other:?}"))),
        }
    }
    Ok(())
}

/// Splits a JSON pointer into its parent pointer and unescaped last token.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| format!("bad JSON pointer {path:?}"))?;
    let token = path[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..idx], token))
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            if token == "-" {
                items.push(value);
                return Ok(());
            }
            let i: usize = token
                .parse()
                .map_err(|_| format!("bad array index in {path}"))?;
            if i > items.len() {
                return Err(format!("array index out of range in {path}"));
            }
            items.insert(i, value);
            Ok(())
        }
        _ => Err(format!("json patch add: parent of {path} does not exist")),
    }
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, token) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map
            .remove(&token)
            .ok_or_else(|| format!("json patch remove: {path} does not exist")),
        Some(Value::Array(items)) => {
            let i: usize = token
                .parse()
                .map_err(|_| format!("bad array index in {path}"))?;
            if i >= items.len() {
                return Err(format!("array index out of range in {path}"));
            }
            Ok(items.remove(i))
        }
        _ => Err(format!("json patch remove: {path} does not exist")),
    }
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A random version-4 UUID.
fn random_uuid() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Five characters for `generateName`, from the same alphabet as the real server's.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes(5)
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// `len` random bytes (from the kernel; a time-seeded fallback if that fails).
fn random_bytes(len: usize) -> Vec<u8> {
    crate::lab::state::random_bytes(len).unwrap_or_else(|_| {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        (0..len)
            .map(|i| (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151))
            .collect()
    })
}

/// Now as RFC 3339 in UTC with seconds (`2026-11-21T11:32:49Z`), as `creationTimestamp` is.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
