//! The **stand-in API server**: a small in-memory Kubernetes API server for tests and the lab.
//!
//! No real kube-apiserver can run where the lab runs, so this module speaks the real
//! Kubernetes REST and watch wire protocol over real HTTP/1.1, and ambit's production kube-rs
//! client code runs against it unchanged. It is a *stand-in*: it stores JSON objects and keeps
//! the API's contracts that clients depend on (resource versions, list + watch, bookmarks,
//! `410 Expired`, Status errors), not the cluster's behaviour (no scheduling, no controllers).
//!
//! What it serves (JSON only):
//! * core `v1` `pods`, `namespaces` (cluster-scoped), `services`, `events`;
//!   `discovery.k8s.io/v1` `endpointslices`; `events.k8s.io/v1` `events`; Istio's
//!   `security.istio.io/v1` `authorizationpolicies` and `peerauthentications` (as if the CRDs
//!   were installed) — under the real paths (`/api/v1/namespaces/{ns}/pods/{name}`,
//!   `/apis/discovery.k8s.io/v1/endpointslices`);
//! * GET, LIST (field and label selectors), WATCH (`?watch=true`), POST, PUT, PATCH (merge,
//!   strategic-merge treated as merge, JSON patch, apply treated as merge), DELETE;
//! * `authentication.k8s.io/v1` `tokenreviews` (create only), for tokens the lab minted into
//!   [`tokenreview::TOKENS_FILE`] beside the state file;
//! * discovery documents: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}[/{version}]`;
//! * test controls outside the Kubernetes paths: `POST /standin/drop-watches` (end every open
//!   watch now) and `POST /standin/expire-history` (forget the event history, so a watch
//!   resuming from any earlier resourceVersion gets `410 Expired`), `POST
//!   /standin/withdraw-group?group=G` (every path under `/apis/G` answers `404`, as when a
//!   group's CRDs are not installed; open watches end) and `POST /standin/restore-group?group=G`.
//!
//! One global resourceVersion counter is bumped on every change; the last
//! [`HISTORY_LIMIT`] changes are kept for watches. Every change is written (atomically) to the
//! state file, so a restarted stand-in keeps its objects and its resourceVersion.
//!
//! Where it differs from a real API server (on purpose, or because nothing here needs more):
//! * a client-provided `metadata.uid` is kept on create (the lab assigns pod UIDs); status is
//!   accepted on create; no defaulting beyond uid, creationTimestamp, resourceVersion and a
//!   Namespace's `kubernetes.io/metadata.name` label and `status.phase`;
//! * no validation beyond names, kinds and namespaces; a namespaced object may be created in a
//!   namespace that has no Namespace object; deleting a Namespace deletes only it, at once;
//!   deleting a Pod is immediate (no graceful `deletionTimestamp` phase);
//! * strategic merge patch and server-side apply are plain JSON merge patches (lists are
//!   replaced, no field ownership); `status` subresources act on the whole object;
//! * `limit`/`continue` are ignored (lists are never paged); a list with
//!   `resourceVersionMatch=Exact` at an older version gets `410`; `dryRun` is refused;
//! * core `v1` Events and `events.k8s.io/v1` Events are separate collections;
//! * the watch history is not persisted: after a restart, watches resume from the current
//!   resourceVersion only (as after a real server's watch cache was rebuilt);
//! * no authentication or authorization; bookmarks are sent every second.

mod http;
mod lab;
mod publish;
mod publish_policies;
mod select;
mod store;
pub mod tokenreview;
mod watch;

#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub(crate) use lab::ApiServerProcess;
pub use lab::{APISERVER_PORT, KUBECONFIG_FILE, STATE_FILE};
pub use publish::{
    block_on_in_netns, client_from_kubeconfig, desired_objects, sync, DesiredObject, SyncReport,
};

/// How many changes the stand-in remembers for watches resuming from a resourceVersion.
pub const HISTORY_LIMIT: usize = 1000;
/// How often an open watch that asked for bookmarks gets one.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// Kubernetes version the stand-in reports on `/version` (matches the k8s-openapi feature).
pub const VERSION: (&str, &str) = ("1", "33");

/// One kind of object the stand-in serves.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ResourceType {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural resource name, as in the URL.
    pub plural: &'static str,
    /// Singular name (discovery).
    pub singular: &'static str,
    /// Object kind.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names (discovery).
    pub short_names: &'static [&'static str],
}

impl ResourceType {
    /// `v1` or `group/version`: the objects' `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Kind of a list of these objects (`PodList`).
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Key in the state file: `v1/pods`, `discovery.k8s.io/v1/endpointslices`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.api_version(), self.plural)
    }
}

/// Every resource the stand-in serves. Adding one here is enough for storage, the REST paths,
/// watches and discovery.
pub(crate) const RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
    },
    ResourceType {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
    },
    // Istio's security CRDs, as if installed: stored and served like any other kind (no schema
    // validation; ambit's policy engine does its own).
    ResourceType {
        group: "security.istio.io",
        version: "v1",
        plural: "authorizationpolicies",
        singular: "authorizationpolicy",
        kind: "AuthorizationPolicy",
        namespaced: true,
        short_names: &["ap"],
    },
    ResourceType {
        group: "security.istio.io",
        version: "v1",
        plural: "peerauthentications",
        singular: "peerauthentication",
        kind: "PeerAuthentication",
        namespaced: true,
        short_names: &["pa"],
    },
];

/// Index into [`RESOURCES`] of `group`/`version`/`plural`.
pub(crate) fn find_resource(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// A stand-in API server running in this process (on the current tokio runtime).
///
/// Dropping it stops serving; [`ApiServer::shutdown`] also waits for that.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<http::Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// Loads `state_file` if it exists (objects and resourceVersion), binds `listen` and starts
    /// serving. Without a state file, nothing is persisted.
    pub async fn start(listen: SocketAddr, state_file: Option<PathBuf>) -> anyhow::Result<Self> {
        let store = store::Store::open(state_file)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("stand-in API server: cannot bind {listen}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(http::Shared::new(store));
        let task = tokio::spawn(http::accept_loop(listener, shared.clone()));
        Ok(ApiServer {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// The address it listens on (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the `server` of a kubeconfig pointing at it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.resource_version()
    }

    /// Ends every open watch stream now (what `POST /standin/drop-watches` does).
    pub fn drop_watches(&self) {
        self.shared.drop_watches();
    }

    /// Forgets the event history (what `POST /standin/expire-history` does).
    pub fn expire_history(&self) {
        self.shared.expire_history();
    }

    /// Stops accepting, ends open watches and closes every connection.
    pub async fn shutdown(mut self) {
        self.shared.drop_watches();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.drop_watches();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `ambit lab apiserver`: serves on `listen` with its state in `state_file` until the process
/// is killed. It also exits by itself once the state file's directory is removed (a removed
/// lab takes its stand-in along, whichever way it was removed).
pub async fn serve(listen: SocketAddr, state_file: PathBuf) -> anyhow::Result<()> {
    let dir = match state_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let server = ApiServer::start(listen, Some(state_file.clone())).await?;
    tracing::info!(
        addr = %server.local_addr(),
        state = %state_file.display(),
        resource_version = server.resource_version(),
        "stand-in API server listening"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("stand-in API server: SIGTERM, exiting");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if !dir.exists() {
                    tracing::info!(dir = %dir.display(), "stand-in API server: state directory removed, exiting");
                    break;
                }
            }
        }
    }
    server.shutdown().await;
    Ok(())
}

/// Writes a kubeconfig (atomically) whose only cluster, user and context point at
/// `server_url` (`http://…`). The user has no credentials: the stand-in does not authenticate.
pub fn write_kubeconfig(path: &Path, server_url: &str) -> std::io::Result<()> {
    let text = format!(
        "# Written by ambit for its stand-in API server.\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: ambit-standin\n  \
           cluster:\n    \
             server: {server_url}\n\
         users:\n\
         - name: ambit-standin\n  \
           user: {{}}\n\
         contexts:\n\
         - name: ambit-standin\n  \
           context:\n    \
             cluster: ambit-standin\n    \
             user: ambit-standin\n    \
             namespace: default\n\
         current-context: ambit-standin\n\
         preferences: {{}}\n"
    );
    store::write_atomic(path, text.as_bytes())
}
