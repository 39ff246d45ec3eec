//! What the CA flags (defined in `config::ca`) turn into: the issuer a proxy uses and the
//! CA service's settings.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::client::CaClient;
use super::policy::Account;
use super::serve::{AuthMode, ServeConfig};
pub use crate::config::ca::{CaClientArgs, CaServeArgs, CaSource};
use crate::identity::issuer::Issuer;
use crate::identity::Ca;

impl CaSource {
    /// The issuer for this source (loads the local CA, or prepares the client).
    pub fn issuer(&self) -> anyhow::Result<Arc<dyn Issuer>> {
        match self {
            CaSource::Service(config) => Ok(Arc::new(
                CaClient::new(config.clone())
                    .with_context(|| format!("CA service client for {}", config.address))?,
            )),
            CaSource::InsecureLocal(dir) => {
                tracing::warn!(ca_dir = %dir.display(),
                    "INSECURE: signing workload certificates with a local CA key \
                     (--insecure-local-ca-dir); this node can mint any identity of the mesh. \
                     Use --ca-address outside development.");
                Ok(Arc::new(Ca::load(dir).with_context(|| {
                    format!("loading the mesh CA from {}", dir.display())
                })?))
            }
        }
    }
}

impl CaServeArgs {
    /// The service configuration, with the flags checked.
    pub fn config(self) -> anyhow::Result<ServeConfig> {
        let trusted_node_accounts = self
            .trusted_node_accounts
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| Account::parse(s).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("--trusted-node-accounts")?;
        anyhow::ensure!(
            self.max_validity > 0,
            "--max-validity must be at least 1 second"
        );
        let auth = match (self.kube, self.node_tokens, self.workloads) {
            (true, _, _) => AuthMode::Kube {
                kubeconfig: self.kubeconfig,
                audiences: self.token_audiences,
            },
            (false, Some(node_tokens), Some(workloads)) => AuthMode::Files {
                node_tokens,
                workloads,
            },
            _ => anyhow::bail!("give --kube, or --node-tokens with --workloads"),
        };
        Ok(ServeConfig {
            ca_dir: self.ca_dir,
            listen: self.listen,
            metrics: self.metrics,
            trust_domain: self.trust_domain,
            max_validity: Duration::from_secs(self.max_validity),
            trusted_node_accounts,
            server_names: self.server_names,
            server_ips: self.server_ips,
            auth,
            poll_interval: Duration::from_millis(200),
            threads: self.threads,
        })
    }
}
