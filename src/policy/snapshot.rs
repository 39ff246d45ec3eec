//! [`PolicySnapshot`]: every policy resource of a workload [`Snapshot`] compiled once, with
//! each pod's applicable policies and mTLS modes worked out in advance.
//!
//! A snapshot is immutable; a new one is built whenever the workload snapshot changes, and
//! swapped in whole. Building does the expensive parts (parsing, scope matching, PeerAuthentication
//! inheritance) once per distinct (namespace, labels) group of pods, so a decision on the data
//! path is a hash lookup by pod UID and a walk over that pod's few policies.

use std::collections::HashMap;
use std::sync::Arc;

use super::index::PolicyIndex;
use super::intake::flatten;
use super::model::{Action, CompiledPolicy, PolicyRef, RefKind};
use super::peer_auth::{self, Level, MtlsMode, MtlsTable, PeerAuth};
use super::scope::{EndpointIps, Scope};
use super::{PolicyConfig, PolicyWarning, RejectedPolicy};
use crate::workload::{Pod, Snapshot};

/// The policies that apply to one group of pods, split by what they do.
#[derive(Debug)]
pub(crate) struct WorkloadPolicies {
    /// Rejected policies standing in as deny-all first, then DENY policies.
    pub deny: Vec<Arc<CompiledPolicy>>,
    /// ALLOW policies.
    pub allow: Vec<Arc<CompiledPolicy>>,
    /// AUDIT and dry-run policies: evaluated for the log only.
    pub logged: Vec<Arc<CompiledPolicy>>,
    /// PeerAuthentication outcome per port.
    pub mtls: MtlsTable,
    /// Which of `deny` can match a port and a client namespace.
    pub deny_index: PolicyIndex,
    /// Which of `allow` can match a port and a client namespace.
    pub allow_index: PolicyIndex,
}

/// A compiled AuthorizationPolicy and the workloads it covers.
#[derive(Debug)]
pub(super) struct Scoped {
    pub(super) policy: Arc<CompiledPolicy>,
    pub(super) scope: Scope,
}

/// All policy resources of one workload snapshot, compiled. See the module documentation.
#[derive(Debug)]
pub struct PolicySnapshot {
    pub(super) config: PolicyConfig,
    pub(super) authz: Vec<Scoped>,
    /// Indices into `authz` whose scope is one namespace, by namespace.
    pub(super) authz_by_ns: HashMap<String, Vec<usize>>,
    /// Indices into `authz` whose scope spans namespaces.
    pub(super) authz_mesh: Vec<usize>,
    /// Valid PeerAuthentications, oldest first.
    pub(super) peer_auths: Vec<PeerAuth>,
    /// Rejected PeerAuthentications: STRICT for what they cover.
    pub(super) forced_strict: Vec<(Scope, Arc<PolicyRef>)>,
    /// Namespace label `ambit.io/mtls-mode`, where set.
    pub(super) ns_labels: HashMap<String, Level>,
    /// The daemon's `--mtls-mode`.
    pub(super) default_level: Level,
    pub(super) endpoints: EndpointIps,
    pub(super) by_uid: HashMap<String, Arc<WorkloadPolicies>>,
    pub(super) rejected: Vec<RejectedPolicy>,
    pub(super) warnings: Vec<PolicyWarning>,
}

impl PolicySnapshot {
    /// A snapshot without any policy resource: everything allowed, plaintext as `config` says.
    pub fn empty(config: &PolicyConfig) -> Self {
        Self::build(&Snapshot::default(), config)
    }

    /// Compiles the `istio` resources of `snapshot` and resolves them for its pods (those of
    /// `config.node` only, when set). Never fails: a bad resource is listed in
    /// [`PolicySnapshot::rejected`] and, if it could grant access, denies its scope instead.
    pub fn build(snapshot: &Snapshot, config: &PolicyConfig) -> Self {
        let mut snap = PolicySnapshot {
            config: config.clone(),
            authz: Vec::new(),
            authz_by_ns: HashMap::new(),
            authz_mesh: Vec::new(),
            peer_auths: Vec::new(),
            forced_strict: Vec::new(),
            ns_labels: HashMap::new(),
            default_level: Level {
                mode: config.default_mtls,
                origin: Arc::new(PolicyRef {
                    kind: RefKind::MtlsDefault,
                    namespace: String::new(),
                    name: format!("--mtls-mode {}", mode_word(config.default_mtls)),
                }),
            },
            endpoints: EndpointIps::new(),
            by_uid: HashMap::new(),
            rejected: Vec::new(),
            warnings: Vec::new(),
        };
        let mut resources = Vec::new();
        for value in &snapshot.istio {
            flatten(value, &mut resources);
        }
        for value in resources {
            snap.add_resource(value);
        }
        snap.namespace_labels(snapshot);
        snap.index(snapshot);
        snap
    }

    /// Sorts what was read and precomputes every (selected) pod's policies.
    fn index(&mut self, snapshot: &Snapshot) {
        self.peer_auths
            .sort_by(|a, b| a.age_key().cmp(&b.age_key()));
        let wanted: Vec<(&str, &str)> = self
            .authz
            .iter()
            .filter_map(|s| match &s.scope {
                Scope::Endpoints {
                    namespace,
                    services,
                } => Some((namespace, services)),
                _ => None,
            })
            .flat_map(|(ns, svcs)| svcs.iter().map(move |s| (ns.as_str(), s.as_str())))
            .collect();
        for svc in &snapshot.services {
            if wanted.contains(&(svc.namespace.as_str(), svc.name.as_str())) {
                let ips = svc.endpoints.iter().map(|e| e.ip).collect();
                self.endpoints
                    .insert((svc.namespace.clone(), svc.name.clone()), ips);
            }
        }
        type GroupKey<'a> = (
            &'a str,
            &'a std::collections::BTreeMap<String, String>,
            Vec<usize>,
        );
        let mut groups: HashMap<GroupKey<'_>, Arc<WorkloadPolicies>> = HashMap::new();
        for pod in &snapshot.pods {
            if self.config.node.as_ref().is_some_and(|n| *n != pod.node) {
                continue;
            }
            let hits = self.covering(pod);
            let key = (pod.namespace.as_str(), &pod.labels, hits);
            let found = match groups.get(&key) {
                Some(found) => found.clone(),
                None => {
                    let computed = Arc::new(self.assemble(pod, &key.2));
                    groups.insert(key, computed.clone());
                    computed
                }
            };
            self.by_uid.insert(pod.uid.clone(), found);
        }
    }

    /// Indices of the AuthorizationPolicies covering `pod`.
    fn covering(&self, pod: &Pod) -> Vec<usize> {
        let local = self.authz_by_ns.get(&pod.namespace).into_iter().flatten();
        let mut hits: Vec<usize> = self
            .authz_mesh
            .iter()
            .chain(local)
            .copied()
            .filter(|i| self.authz[*i].scope.covers(pod, &self.endpoints))
            .collect();
        hits.sort_unstable();
        hits
    }

    /// The policies at `hits`, split by action, and `pod`'s mTLS table.
    fn assemble(&self, pod: &Pod, hits: &[usize]) -> WorkloadPolicies {
        let mut w = WorkloadPolicies {
            deny: Vec::new(),
            allow: Vec::new(),
            logged: Vec::new(),
            mtls: self.mtls_for(pod),
            deny_index: PolicyIndex::default(),
            allow_index: PolicyIndex::default(),
        };
        for p in hits.iter().map(|i| &self.authz[*i].policy) {
            match (p.dry_run, p.action) {
                (true, _) | (false, Action::Audit) => w.logged.push(p.clone()),
                (false, Action::Deny) => w.deny.push(p.clone()),
                (false, Action::Allow) => w.allow.push(p.clone()),
            }
        }
        // Rejected policies first, so a denial names the invalid policy; then by name.
        w.deny.sort_by(|a, b| {
            (a.fail_closed.is_none(), &a.id.namespace, &a.id.name).cmp(&(
                b.fail_closed.is_none(),
                &b.id.namespace,
                &b.id.name,
            ))
        });
        w.allow
            .sort_by(|a, b| (&a.id.namespace, &a.id.name).cmp(&(&b.id.namespace, &b.id.name)));
        w.deny_index = PolicyIndex::build(&w.deny);
        w.allow_index = PolicyIndex::build(&w.allow);
        w
    }

    /// Resolves PeerAuthentication for `pod` (see `peer_auth`).
    fn mtls_for(&self, pod: &Pod) -> MtlsTable {
        let root = self.config.root_namespace.as_str();
        let level_pa = |ns: &str| {
            // `peer_auths` is oldest first, so the first found wins a conflict.
            self.peer_auths
                .iter()
                .find(|p| p.id.namespace == ns && p.labels.is_none())
                .map(Level::of)
        };
        let mesh = level_pa(root);
        let namespace = if pod.namespace == root {
            None
        } else {
            level_pa(&pod.namespace)
        }
        .or_else(|| self.ns_labels.get(&pod.namespace).cloned());
        let workload = self.peer_auths.iter().find(|p| {
            p.id.namespace == pod.namespace
                && p.labels
                    .as_ref()
                    .is_some_and(|l| l.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
        });
        let forced = self
            .forced_strict
            .iter()
            .find(|(scope, _)| scope.covers(pod, &self.endpoints))
            .map(|(_, id)| id.clone());
        peer_auth::resolve(&self.default_level, mesh, namespace, workload, forced)
    }

    /// `pod`'s policies: precomputed, or worked out now for a pod the snapshot did not index.
    pub(super) fn workload<'a>(&'a self, pod: &Pod) -> Found<'a> {
        match self.by_uid.get(pod.uid.as_str()) {
            Some(w) => Found::Indexed(w),
            None => Found::Computed(Box::new(self.assemble(pod, &self.covering(pod)))),
        }
    }

    /// Number of AuthorizationPolicies compiled (rejected ones standing in as deny-all included).
    pub fn authorization_policy_count(&self) -> usize {
        self.authz.len()
    }

    /// Every AuthorizationPolicy and PeerAuthentication in force (rejected ones standing in
    /// for their scope included), as `Kind namespace/name`, sorted. Resources that were only
    /// ignored are in [`PolicySnapshot::rejected`] alone.
    pub fn resources(&self) -> Vec<String> {
        let authz = self.authz.iter().map(|s| &s.policy.id);
        let peer = self.peer_auths.iter().map(|p| &p.id);
        let forced = self.forced_strict.iter().map(|(_, id)| id);
        let mut all: Vec<String> = authz
            .chain(peer)
            .chain(forced)
            .map(|id| id.to_string())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// A pod's policies, borrowed from the index or computed for the occasion.
pub(super) enum Found<'a> {
    Indexed(&'a WorkloadPolicies),
    Computed(Box<WorkloadPolicies>),
}

impl std::ops::Deref for Found<'_> {
    type Target = WorkloadPolicies;
    fn deref(&self) -> &WorkloadPolicies {
        match self {
            Found::Indexed(w) => w,
            Found::Computed(w) => w,
        }
    }
}

fn mode_word(mode: MtlsMode) -> &'static str {
    if mode == MtlsMode::Strict {
        "strict"
    } else {
        "permissive"
    }
}
