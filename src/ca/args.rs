//! What the CA flags (defined in `config::ca`) turn into: the issuer a proxy uses and the
//! CA service's settings.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::client::CaClient;
use super::policy::Account;
use super::serve::{AuthMode, ServeConfig};
pub use crate::config::ca::{CaClientArgs, CaRevokeArgs, CaServeArgs, CaSource, RevokeReason};
use crate::identity::crl::{sign, Serial};
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

impl CaSource {
    /// The file holding the mesh roots: what peers and CRLs are verified against.
    pub fn root_file(&self) -> std::path::PathBuf {
        match self {
            CaSource::Service(config) => config.root.clone(),
            CaSource::InsecureLocal(dir) => dir.join(crate::identity::ca::ROOT_CERT),
        }
    }
}

impl CaRevokeArgs {
    /// Adds the serials to `<ca dir>/ca-crl.pem`, re-signed with the CA key, and says what
    /// was written.
    pub fn run(self) -> anyhow::Result<()> {
        let serials = self
            .serials
            .iter()
            .map(|s| s.parse::<Serial>())
            .collect::<Result<Vec<_>, _>>()?;
        let reason = self.reason.map(|r| {
            use rcgen::RevocationReason as R;
            match r {
                RevokeReason::Unspecified => R::Unspecified,
                RevokeReason::KeyCompromise => R::KeyCompromise,
                RevokeReason::CaCompromise => R::CaCompromise,
                RevokeReason::AffiliationChanged => R::AffiliationChanged,
                RevokeReason::Superseded => R::Superseded,
                RevokeReason::CessationOfOperation => R::CessationOfOperation,
                RevokeReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            }
        });
        let validity = Duration::from_secs(self.validity_days * 24 * 3600);
        let signed = sign::revoke(
            &self.ca_dir,
            &serials,
            reason,
            validity,
            std::time::SystemTime::now(),
        )?;
        let path = self.ca_dir.join(crate::identity::ca::CA_CRL);
        for s in &serials {
            let state = if signed.added.contains(s) {
                "revoked"
            } else {
                "already revoked"
            };
            println!("{s}: {state}");
        }
        println!(
            "{}: CRL number {}, {} revoked serial(s), next update {}",
            path.display(),
            signed.number,
            signed.revoked,
            crate::identity::ca::fmt_time(signed.next_update)
        );
        Ok(())
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
        let publish_crl_configmap = match &self.publish_crl_configmap {
            None => None,
            Some(s) => match s.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Some((ns.to_string(), name.to_string()))
                }
                _ => anyhow::bail!(
                    "--publish-crl-configmap {s:?}: expected NAMESPACE/NAME, e.g. \
                     istio-system/istio-ca-crl"
                ),
            },
        };
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
            publish_crl: self.publish_crl,
            publish_crl_configmap,
        })
    }
}
