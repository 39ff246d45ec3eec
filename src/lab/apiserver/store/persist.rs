//! The state file: loaded when the stand-in starts (objects and resourceVersion, not the watch
//! history) and rewritten atomically after every change.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::super::RESOURCES;
use super::{meta_str, Store, BROADCAST_CAPACITY};

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

    /// Writes the state file (atomically). A failure is logged: the change stands in memory.
    pub(super) fn persist(&self) {
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
