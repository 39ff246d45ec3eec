//! `/config_dump` on the admin endpoint: one JSON document of everything the daemon knows and
//! holds, for an operator (or `istioctl`-like tooling) to read at once: the node's pods and
//! their capture state, the Services known, the security policy in force, the workload
//! certificates (public part only: serial, validity, chain; never a key) and the HBONE
//! connections pooled by each pod.

use serde::Serialize;

use super::routes::{Readiness, State};
use crate::identity::manager::CertView;
use crate::reconcile::{PodPoolView, PodStatus, PoliciesView};

/// The document.
#[derive(Serialize)]
pub(super) struct ConfigDump {
    node: String,
    ready: Readiness,
    workloads: Vec<WorkloadView>,
    services: Vec<ServiceView>,
    policies: PoliciesView,
    certificates: Vec<CertView>,
    connections: Vec<PodPoolView>,
    log_filter: String,
}

/// A pod of this node, as the reconciler sees it and as the source describes it.
#[derive(Serialize)]
struct WorkloadView {
    #[serde(flatten)]
    status: PodStatus,
    /// The pod's service account, from the source (absent if the pod left it meanwhile).
    service_account: Option<String>,
    /// Whether the pod speaks HBONE (an enrolled mesh workload).
    in_mesh: Option<bool>,
}

/// A Service with a ClusterIP.
#[derive(Serialize)]
struct ServiceView {
    hostname: String,
    #[serde(flatten)]
    service: crate::workload::Service,
}

impl ConfigDump {
    /// Reads everything now.
    pub(super) fn collect(s: &State) -> ConfigDump {
        let directory = s.directory.borrow().clone();
        let workloads = s
            .board
            .pods()
            .into_iter()
            .map(|status| {
                let known = status.ips.first().and_then(|ip| directory.lookup(*ip));
                WorkloadView {
                    service_account: known.map(|(p, _)| p.service_account.clone()),
                    in_mesh: known.map(|(_, in_mesh)| in_mesh),
                    status,
                }
            })
            .collect();
        let services = directory
            .services()
            .into_iter()
            .map(|svc| ServiceView {
                hostname: svc.hostname(),
                service: (*svc).clone(),
            })
            .collect();
        ConfigDump {
            node: s.config.reconcile.node.clone(),
            ready: Readiness::of(s),
            workloads,
            services,
            policies: s.board.policies.view(),
            certificates: s.certs.dump(),
            connections: s.board.pools(),
            log_filter: s.log.current(),
        }
    }
}
