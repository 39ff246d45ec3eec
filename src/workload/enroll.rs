//! Which pods belong in the mesh (Istio ambient's enablement rules, `DESIGN.md` §2).

use super::{Pod, Snapshot};

/// Label, on a pod or a namespace, that selects the data-plane mode.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Annotation that marks a pod as carrying an injected sidecar; sidecars win over ambient.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Label that marks the daemon's own pods, which must never be captured.
pub const DAEMON_APP_LABEL: &str = "app";

pub use crate::config::DaemonIdentity;

/// The outcome of the enrollment rules for one pod, with the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Pod label `istio.io/dataplane-mode=ambient`.
    EnrolledByPodLabel,
    /// Namespace label `istio.io/dataplane-mode=ambient`, pod not opted out.
    EnrolledByNamespaceLabel,
    /// Nothing selects the pod.
    NotSelected,
    /// Pod label `istio.io/dataplane-mode=none`.
    OptedOut,
    /// `hostNetwork: true`: its traffic is the node's.
    HostNetwork,
    /// An injected sidecar handles this pod.
    HasSidecar,
    /// One of the daemon's own pods.
    DaemonPod,
}

impl Decision {
    /// Whether the pod is to be captured.
    pub fn is_enrolled(self) -> bool {
        matches!(
            self,
            Decision::EnrolledByPodLabel | Decision::EnrolledByNamespaceLabel
        )
    }

    /// Whether the pod terminates HBONE on 15008: captured by a node daemon, or served by its
    /// own sidecar.
    pub fn speaks_hbone(self) -> bool {
        self.is_enrolled() || self == Decision::HasSidecar
    }
}

/// Applies the enrollment rules to `pod` in the context of `snapshot`'s namespaces.
pub fn decide(pod: &Pod, snapshot: &Snapshot, daemon: &DaemonIdentity) -> Decision {
    if pod.host_network {
        return Decision::HostNetwork;
    }
    if pod.annotations.contains_key(SIDECAR_STATUS_ANNOTATION) {
        return Decision::HasSidecar;
    }
    if pod.namespace == daemon.namespace
        && pod.labels.get(DAEMON_APP_LABEL).map(String::as_str) == Some(daemon.app.as_str())
    {
        return Decision::DaemonPod;
    }
    match pod.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
        Some("ambient") => return Decision::EnrolledByPodLabel,
        Some("none") => return Decision::OptedOut,
        _ => {}
    }
    let ns_mode = snapshot
        .namespace_labels(&pod.namespace)
        .and_then(|labels| labels.get(DATAPLANE_MODE_LABEL))
        .map(String::as_str);
    if ns_mode == Some("ambient") {
        Decision::EnrolledByNamespaceLabel
    } else {
        Decision::NotSelected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Namespace;

    fn pod(labels: &[(&str, &str)]) -> Pod {
        Pod {
            uid: "u1".into(),
            name: "p".into(),
            namespace: "apps".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Pod::default()
        }
    }

    fn snapshot(ns_mode: Option<&str>) -> Snapshot {
        let mut ns = Namespace {
            name: "apps".into(),
            ..Namespace::default()
        };
        if let Some(mode) = ns_mode {
            ns.labels.insert(DATAPLANE_MODE_LABEL.into(), mode.into());
        }
        Snapshot {
            namespaces: vec![ns],
            ..Snapshot::default()
        }
    }

    fn d(p: &Pod, s: &Snapshot) -> Decision {
        decide(p, s, &DaemonIdentity::default())
    }

    #[test]
    fn pod_label_enrolls_in_any_namespace() {
        let p = pod(&[(DATAPLANE_MODE_LABEL, "ambient")]);
        assert_eq!(d(&p, &snapshot(None)), Decision::EnrolledByPodLabel);
    }

    #[test]
    fn namespace_label_enrolls_unless_pod_opts_out() {
        assert_eq!(
            d(&pod(&[]), &snapshot(Some("ambient"))),
            Decision::EnrolledByNamespaceLabel
        );
        let out = pod(&[(DATAPLANE_MODE_LABEL, "none")]);
        assert_eq!(d(&out, &snapshot(Some("ambient"))), Decision::OptedOut);
        // Any other pod value (not "none") leaves the namespace in charge.
        let odd = pod(&[(DATAPLANE_MODE_LABEL, "sidecar")]);
        assert!(d(&odd, &snapshot(Some("ambient"))).is_enrolled());
    }

    #[test]
    fn unlabelled_pod_in_unlabelled_namespace_is_not_selected() {
        assert_eq!(d(&pod(&[]), &snapshot(None)), Decision::NotSelected);
        assert_eq!(d(&pod(&[]), &snapshot(Some("none"))), Decision::NotSelected);
    }

    #[test]
    fn host_network_sidecar_and_daemon_pods_are_never_enrolled() {
        let mut p = pod(&[(DATAPLANE_MODE_LABEL, "ambient")]);
        p.host_network = true;
        assert_eq!(d(&p, &snapshot(Some("ambient"))), Decision::HostNetwork);

        let mut p = pod(&[(DATAPLANE_MODE_LABEL, "ambient")]);
        p.annotations
            .insert(SIDECAR_STATUS_ANNOTATION.into(), "{}".into());
        assert_eq!(d(&p, &snapshot(None)), Decision::HasSidecar);

        let mut p = pod(&[(DATAPLANE_MODE_LABEL, "ambient"), ("app", "ambit")]);
        p.namespace = "istio-system".into();
        assert_eq!(d(&p, &snapshot(None)), Decision::DaemonPod);
    }
}
