//! Running Istio's ztunnel standalone for one lab pod, as the bench and the interop tests do:
//! the environment ztunnel reads for a dedicated-mode proxy with a fake CA and a local config
//! file (no istiod), keeping the client's source address and marking its own packets with
//! ambit's mark so the in-pod rules let them out.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use super::{Lab, LabError, LabPod};
use crate::config::DEFAULT_TRUST_DOMAIN;
use crate::rules::MARK;

/// ztunnel's local config (`LOCAL_XDS_PATH`): the pods of `mesh` as HBONE workloads of the
/// default trust domain (the fake CA's), no policies or services, so every other address is
/// passthrough. JSON, which its YAML reader accepts.
pub fn local_config(lab: &Lab, mesh: &[&str]) -> Result<String, LabError> {
    let mut workloads = Vec::new();
    for name in mesh {
        let p = lab.pod(name)?;
        workloads.push(json!({
            "uid": format!("{}//v1/Pod/{}/{}", lab.name(), p.namespace, p.name),
            "name": p.name,
            "namespace": p.namespace,
            "serviceAccount": p.service_account,
            "workloadIps": [p.ipv4.to_string(), p.ipv6.to_string()],
            "protocol": "HBONE",
            "node": p.node,
            "network": "",
            "trustDomain": DEFAULT_TRUST_DOMAIN,
            "services": {},
        }));
    }
    let config = json!({"workloads": workloads, "policies": [], "services": []});
    Ok(format!("{config:#}\n"))
}

/// A `Command` for `binary` serving `pod` from the local config `local_config`; the caller adds
/// its own variables, working directory, output and namespace entry.
pub fn standalone_command(binary: &Path, local_config: &Path, pod: &LabPod) -> Command {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("RUST_LOG", "info")
        .env("FAKE_CA", "true")
        .env("XDS_ADDRESS", "")
        .env("CA_ADDRESS", "")
        .env("LOCAL_XDS_PATH", local_config)
        .env("PROXY_MODE", "dedicated")
        .env(
            "PROXY_WORKLOAD_INFO",
            format!("{}/{}/{}", pod.namespace, pod.name, pod.service_account),
        )
        .env("PACKET_MARK", MARK.to_string())
        .env("ENABLE_ORIG_SRC", "true")
        .env("NODE_NAME", &pod.node);
    cmd
}
