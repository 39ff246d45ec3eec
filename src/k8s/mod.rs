//! The Kubernetes side of ambit: watching the cluster ([`source`], Istio policies in
//! [`policies`]), converting objects to the workload model ([`convert`]), and reporting capture
//! back as annotations and Events ([`status`]).

pub mod convert;
pub mod policies;
pub mod source;
pub mod status;

use std::path::Path;

/// Builds a client from `kubeconfig`, or from the in-cluster service account when `None`.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster()
            .context("no --kubeconfig given and not running in a pod (in-cluster config)")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}
