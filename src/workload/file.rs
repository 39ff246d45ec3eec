//! The local workload source: a JSON file of pods and namespaces, watched for changes.
//!
//! The lab writes this file (atomically, by rename); on a real node it could be produced by any
//! tool. A change is noticed by polling the file's identity (inode, size, mtime), which costs one
//! `stat` per interval and works on every filesystem, including bind mounts where inotify does not.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Snapshot;

/// Errors from reading the workload file.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("cannot read workload file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid workload document.
    #[error("workload file {path} is not valid (expected JSON {{\"namespaces\": [...], \"pods\": [...], \"services\": [...], \"istio\": [...]}}): {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser rejected, with line and column.
        source: serde_json::Error,
    },
}

/// What the source currently offers: the last good snapshot, and the error that keeps a newer
/// one from being read, if any.
#[derive(Clone, Debug, Default)]
pub struct SourceState {
    /// Last snapshot that was read successfully (empty before the first success).
    pub snapshot: Arc<Snapshot>,
    /// Whether at least one snapshot has been read.
    pub synced: bool,
    /// Why the current file contents could not be used.
    pub error: Option<String>,
}

/// The file's shape before each pod is checked on its own, so that one malformed pod entry
/// is rejected alone instead of hiding every other pod.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    #[serde(default)]
    namespaces: Vec<super::Namespace>,
    #[serde(default)]
    pods: Vec<serde_json::Value>,
    #[serde(default)]
    services: Vec<super::Service>,
    /// Istio policy objects, kept raw: each is checked on its own by the policy engine.
    #[serde(default)]
    istio: Vec<serde_json::Value>,
}

/// Reads and parses the workload file once. Malformed pod entries land in
/// [`Snapshot::rejected`]; only a malformed document as a whole is an error.
pub fn load(path: &Path) -> Result<Snapshot, SourceError> {
    let bytes = std::fs::read(path).map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let raw: RawDocument = serde_json::from_slice(&bytes).map_err(|source| SourceError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let mut snapshot = Snapshot {
        namespaces: raw.namespaces,
        services: raw.services,
        istio: raw.istio,
        ..Snapshot::default()
    };
    for (index, value) in raw.pods.into_iter().enumerate() {
        let name = super::describe_raw_pod(&value, index);
        match serde_json::from_value(value) {
            Ok(pod) => snapshot.pods.push(pod),
            Err(e) => snapshot.rejected.push(super::RejectedPod {
                pod: name,
                error: format!("invalid pod entry in {}: {e}", path.display()),
            }),
        }
    }
    Ok(snapshot)
}

/// Identity of the file's current contents, cheap to compare.
fn fingerprint(path: &Path) -> Option<(u64, u64, i64, i64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// Watches `path`, publishing a new [`SourceState`] whenever its contents change. Runs until the
/// receiver side is gone.
pub fn watch_file(path: PathBuf, interval: Duration) -> watch::Receiver<SourceState> {
    let (tx, rx) = watch::channel(SourceState::default());
    tokio::spawn(async move {
        let mut last_seen = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if tx.is_closed() {
                return;
            }
            let seen = fingerprint(&path);
            if seen.is_some() && seen == last_seen {
                continue;
            }
            last_seen = seen;
            let result = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || load(&path)).await
            };
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(join) => {
                    tracing::error!(error = %join, "workload file reader failed");
                    continue;
                }
            };
            tx.send_modify(|state| match outcome {
                Ok(snapshot) => {
                    if let Some(old) = state.error.take() {
                        tracing::info!(path = %path.display(), "workload file readable again (was: {old})");
                    }
                    state.snapshot = Arc::new(snapshot);
                    state.synced = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "keeping the last good workload snapshot");
                    state.error = Some(e.to_string());
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_minimal_document() {
        let dir = std::env::temp_dir().join(format!("ambit-wl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ok.json");
        std::fs::write(
            &path,
            r#"{"namespaces":[{"name":"a","labels":{"istio.io/dataplane-mode":"ambient"}}],
                "pods":[{"uid":"1","name":"p","namespace":"a","node":"n1","ips":["10.0.0.2","fd00::2"]}]}"#,
        )
        .unwrap();
        let snap = load(&path).unwrap();
        assert_eq!(snap.pods[0].service_account, "default");
        assert_eq!(snap.pods[0].ips.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = std::env::temp_dir().join(format!("ambit-wl-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.json");
        std::fs::write(&path, r#"{"pods": [}"#).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("line 1"), "{err}");
        std::fs::write(
            &path,
            r#"{"pods":[{"uid":"1","name":"p","namespace":"a","node":"n1","ips":["nope"]},
                        {"uid":"2","name":"q","namespace":"a","node":"n1","ips":["10.0.0.3"]}]}"#,
        )
        .unwrap();
        let snap = load(&path).unwrap();
        assert_eq!(snap.pods.len(), 1, "the good pod survives");
        assert_eq!(snap.rejected[0].pod, "a/p");
        assert!(
            snap.rejected[0].error.contains("nope"),
            "{:?}",
            snap.rejected
        );
        let err = load(&dir.join("missing.json")).unwrap_err().to_string();
        assert!(err.contains("missing.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keeps_istio_objects_raw_so_a_bad_one_hides_nothing() {
        let dir = std::env::temp_dir().join(format!("ambit-wl-istio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("istio.json");
        std::fs::write(
            &path,
            r#"{"pods":[{"uid":"1","name":"p","namespace":"a","node":"n1","ips":["10.0.0.2"]}],
                "istio":[{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy",
                          "metadata":{"name":"deny","namespace":"a"},"spec":{"action":"DENY","rules":[{}]}},
                         {"kind":"AuthorizationPolicy","spec":{"rulez":[]}}, 7]}"#,
        )
        .unwrap();
        let snap = load(&path).unwrap();
        assert_eq!(snap.pods.len(), 1);
        assert_eq!(
            snap.istio.len(),
            3,
            "kept as written; the policy engine judges each"
        );
        let policies =
            crate::policy::PolicySnapshot::build(&snap, &crate::policy::PolicyConfig::default());
        assert_eq!(policies.rejected().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
