//! What this node's daemon has captured, kept in a small file so that a restarted daemon can
//! take back the rules of pods that left while it was down (their namespaces may outlive them,
//! e.g. a pod being torn down, or one moved out of the mesh).
//!
//! Each entry names the namespace by path and by (dev, inode): a path such as
//! `/proc/<pid>/ns/net` can come to mean another namespace once the pid is reused, so rules are
//! only removed from the very namespace they were installed in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::netns::{NetNs, NetNsId};

/// One captured pod as remembered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// `namespace/name`, for logs.
    pub pod: String,
    /// Namespace path the rules were installed through.
    pub netns: PathBuf,
    /// Device of that namespace.
    pub dev: u64,
    /// Inode of that namespace.
    pub ino: u64,
}

impl Remembered {
    /// The entry for a pod captured in `ns`.
    pub fn new(pod: String, ns: &NetNs) -> Self {
        let NetNsId { dev, ino } = ns.id();
        Remembered {
            pod,
            netns: ns.path().to_path_buf(),
            dev,
            ino,
        }
    }

    /// Reopens the namespace if it still exists and is the same one.
    pub fn reopen(&self) -> Option<NetNs> {
        let ns = NetNs::open(&self.netns).ok()?;
        (ns.id()
            == NetNsId {
                dev: self.dev,
                ino: self.ino,
            })
        .then_some(ns)
    }
}

/// Name of the memory file in the state directory.
pub const MEMORY_FILE: &str = "captured.json";

/// Where the memory of a state directory is kept.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(MEMORY_FILE)
}

/// The memory file exists but cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Reading failed.
    #[error("cannot read the capture memory {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a JSON map of pod UID to captured namespace.
    #[error(
        "the capture memory {path} is not a JSON map of pod UID to captured namespace: {source}"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Reads the remembered captures (by pod UID): empty if the file does not exist, an error if
/// it exists but cannot be used.
pub fn read(path: &Path) -> Result<BTreeMap<String, Remembered>, MemoryError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(MemoryError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes).map_err(|source| MemoryError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the remembered captures (by pod UID); a missing or unreadable file is an empty memory.
pub fn load(path: &Path) -> BTreeMap<String, Remembered> {
    read(path).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ignoring unreadable capture memory");
        BTreeMap::new()
    })
}

/// Writes the memory atomically (temp file + rename).
pub fn save(path: &Path, entries: &BTreeMap<String, Remembered>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(entries).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_identity_check() {
        let dir = std::env::temp_dir().join(format!("ambit-mem-{}", std::process::id()));
        let path = dir.join("captured.json");
        let own = NetNs::current().unwrap();
        let mut entries = BTreeMap::new();
        entries.insert("u1".to_string(), Remembered::new("ns/p".into(), &own));
        save(&path, &entries).unwrap();
        let back = load(&path);
        assert_eq!(back, entries);
        assert!(back["u1"].reopen().is_some());
        let mut wrong = back["u1"].clone();
        wrong.ino += 1;
        assert!(
            wrong.reopen().is_none(),
            "a different inode is not the same namespace"
        );
        std::fs::write(&path, "not json").unwrap();
        assert!(load(&path).is_empty());
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("captured.json") && e.contains("JSON map"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert!(
            read(&path).unwrap().is_empty(),
            "a missing file is an empty memory"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
