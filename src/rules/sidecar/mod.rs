//! Istio's classic **sidecar** redirect rules (REDIRECT mode, `reference/istio-rules.md` §1.2,
//! §1.5, annotations §2), built from the same rule model as the ambient set
//! ([`Rule`](super::model::Rule)) and rendered by the same iptables renderer, in `iptables-save`
//! canonical form.
//!
//! Everything lives in the nat table: `ISTIO_INBOUND` (jumped to from `PREROUTING -p tcp`),
//! `ISTIO_IN_REDIRECT` (→ 15006), `ISTIO_OUTPUT` (jumped to from `OUTPUT`, all protocols) and
//! `ISTIO_REDIRECT` (→ 15001). The proxy's own traffic is told apart by socket owner (uid/gid),
//! not by mark.
//!
//! Applying is idempotent and atomic per family, like the ambient set: `iptables-save` is
//! compared with the expected rules; equal → nothing written; otherwise one
//! `iptables-restore --noflush` rewrites our chains and jumps and removes every other Istio
//! chain (`ISTIO_*` in nat, mangle and raw, e.g. an ambient set or a TPROXY leftover), as Istio's
//! own reconcile does (§3.6, `HasIstioLeftovers`).
//!
//! Only the iptables backend is supported (Istio's native nft sidecar tables `inet
//! istio-proxy-*`, §6, are not written); [`Backend::Nftables`](super::Backend::Nftables) is
//! refused with [`RulesError::Unsupported`](super::RulesError::Unsupported). DNS capture (§1.4),
//! TPROXY (§1.3), virtual and excluded interfaces (`-k`, `-c`) and the owner-group env filters
//! are not part of this set.
//!
//! Layout: `model` builds the rule set, `saved` parses `iptables-save` output and renders
//! `iptables-restore` input, `apply` talks to the kernel.

mod apply;
#[cfg(test)]
mod kernel_tests;
mod model;
mod saved;
#[cfg(test)]
mod tests;

pub use apply::{apply_sidecar, counters, installed, remove_sidecar, RuleCounter};
pub use model::{excluded_inbound_ports, SidecarRuleSet};
pub use saved::render_script;

/// Inbound chain, jumped to from nat `PREROUTING` for TCP.
pub const INBOUND_CHAIN: &str = "ISTIO_INBOUND";
/// Inbound redirect to the proxy's inbound listener (15006).
pub const IN_REDIRECT_CHAIN: &str = "ISTIO_IN_REDIRECT";
/// Outbound chain, jumped to from nat `OUTPUT` for every protocol.
pub const OUTPUT_CHAIN: &str = "ISTIO_OUTPUT";
/// Outbound redirect to the proxy's outbound listener (15001).
pub const REDIRECT_CHAIN: &str = "ISTIO_REDIRECT";
pub use crate::config::{
    PROXY_GID, PROXY_UID, SIDECAR_EXCLUDED_INBOUND_PORTS as LEADING_EXCLUDED_INBOUND_PORTS,
    SIDECAR_INBOUND_SOURCE_V4 as PASSTHROUGH_SOURCE_V4,
    SIDECAR_INBOUND_SOURCE_V6 as PASSTHROUGH_SOURCE_V6, STATUS_PORT,
};
