//! Applying, removing, listing and counting the sidecar rules in a pod's namespace.

use super::super::exec::{run, run_ok};
use super::super::iptables::{family_label, installed_chains, restore, target, tools};
use super::super::{
    nftables, ApplyOutcome, Backend, Families, Family, InstalledSection, RulesError,
};
use super::saved::{is_istio, render_removal, render_restore, Saved};
use super::{SidecarRuleSet, PASSTHROUGH_SOURCE_V6};
use crate::capture::CaptureOptions;
use crate::netns::NetNs;

fn save(ns: &NetNs, family: Family) -> Result<Saved, RulesError> {
    Ok(Saved::parse(&run_ok(ns, tools(family).0, &[], None)?))
}

fn apply_family(ns: &NetNs, set: &SidecarRuleSet) -> Result<ApplyOutcome, RulesError> {
    let saved = save(ns, set.family)?;
    if saved.difference(set).is_none() {
        return Ok(ApplyOutcome::Unchanged);
    }
    restore(ns, set.family, &render_restore(set, &saved))?;
    if let Some(detail) = save(ns, set.family)?.difference(set) {
        return Err(RulesError::Verify {
            netns: ns.path().to_path_buf(),
            what: format!("{} sidecar rules", family_label(set.family)),
            detail,
        });
    }
    Ok(match saved.tables.is_empty() {
        true => ApplyOutcome::Installed,
        false => ApplyOutcome::Repaired,
    })
}

/// Removes every Istio chain and jump of one family; `Ok(true)` if there was any. A failing
/// save (no IPv6 in the kernel) means nothing can be there, unless `required`.
fn remove_family(ns: &NetNs, family: Family, required: bool) -> Result<bool, RulesError> {
    let saved = match save(ns, family) {
        Ok(saved) => saved,
        Err(e) if required => return Err(e),
        Err(_) => return Ok(false),
    };
    let mut text = String::new();
    for (name, found) in &saved.tables {
        render_removal(name, found, &mut text);
    }
    if text.is_empty() {
        return Ok(false);
    }
    restore(ns, family, &text)?;
    Ok(true)
}

/// `ip -6 addr add ::6/128 dev lo`, as istio-iptables does when IPv6 is on (§1.5): Envoy's
/// inbound passthrough binds `::6`, and IPv6 `lo` only has `::1`. Never removed (Istio keeps it
/// too; it is harmless without the rules).
fn ensure_passthrough_v6(ns: &NetNs) -> Result<ApplyOutcome, RulesError> {
    let addr = format!("{PASSTHROUGH_SOURCE_V6}/128");
    let shown = run_ok(ns, "ip", &["-6", "-o", "addr", "show", "dev", "lo"], None)?;
    if shown.contains(&format!("inet6 {addr} ")) {
        return Ok(ApplyOutcome::Unchanged);
    }
    let out = run(ns, "ip", &["-6", "addr", "add", &addr, "dev", "lo"], None)?;
    if !out.success && !out.stderr.contains("File exists") {
        out.check(ns)?;
    }
    Ok(ApplyOutcome::Installed)
}

fn refuse_nft(backend: Backend, what: &'static str) -> Result<(), RulesError> {
    match backend {
        Backend::Iptables => Ok(()),
        Backend::Nftables => Err(RulesError::Unsupported { backend, what }),
    }
}

/// Installs (or verifies, or repairs) Istio's sidecar rules for `opts` in `ns`, for the
/// selected families, with the proxy running as `proxy_uid`/`proxy_gid`.
///
/// Families not selected lose any Istio rules; Istio chains of other modes (ambient, TPROXY,
/// DNS) are removed in the same transaction, and so are ambit's ambient nft tables, so nothing
/// captures twice. Only [`Backend::Iptables`] is supported.
pub fn apply_sidecar(
    ns: &NetNs,
    backend: Backend,
    opts: &CaptureOptions,
    families: Families,
    proxy_uid: u32,
    proxy_gid: u32,
) -> Result<ApplyOutcome, RulesError> {
    refuse_nft(backend, "the sidecar rule set")?;
    let mut parts = Vec::new();
    if families.v6 {
        parts.push(ensure_passthrough_v6(ns)?);
    }
    for family in [Family::V4, Family::V6] {
        if families.contains(family) {
            let set = SidecarRuleSet::build(opts, family, proxy_uid, proxy_gid);
            parts.push(apply_family(ns, &set)?);
        } else if remove_family(ns, family, false)? {
            parts.push(ApplyOutcome::Repaired);
        }
    }
    if nftables::remove_if_available(ns)? {
        parts.push(ApplyOutcome::Repaired);
    }
    Ok(ApplyOutcome::combine(parts))
}

/// Removes every Istio chain (`ISTIO_*` in nat, mangle, raw) and every jump to one, both
/// families. Parts already gone are fine; IPv6 tools failing means nothing to remove there.
/// The ambient policy route is not touched (see [`crate::rules::remove`]).
pub fn remove_sidecar(ns: &NetNs, backend: Backend) -> Result<(), RulesError> {
    refuse_nft(backend, "the sidecar rule set")?;
    remove_family(ns, Family::V4, true)?;
    remove_family(ns, Family::V6, false)?;
    Ok(())
}

/// The Istio sidecar chains as installed, per family and table, in `iptables-save` form.
pub fn installed(ns: &NetNs) -> Result<Vec<InstalledSection>, RulesError> {
    installed_chains(ns, is_istio)
}

/// Strips a leading `[packets:bytes] ` (from `iptables-save -c`).
pub(super) fn split_counters(line: &str) -> (Option<(u64, u64)>, &str) {
    let parsed = line.strip_prefix('[').and_then(|rest| {
        let (counts, rule) = rest.split_once("] ")?;
        let (p, b) = counts.split_once(':')?;
        Some(((p.parse().ok()?, b.parse().ok()?), rule))
    });
    match parsed {
        Some((c, rule)) => (Some(c), rule),
        None => (None, line),
    }
}

/// One rule's packet and byte counters, from `iptables-save -c`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleCounter {
    /// `nat`, `mangle`, ...
    pub table: String,
    /// Chain the rule is in.
    pub chain: String,
    /// The rule as rendered, without `-A CHAIN` (same text as `iptables::render_rule`).
    pub rule: String,
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched.
    pub bytes: u64,
}

/// Counters of every rule in an Istio chain or jumping to one (any table, ambient or sidecar),
/// in `iptables-save` order. Note nat rules only see the first packet of each connection.
pub fn counters(ns: &NetNs, family: Family) -> Result<Vec<RuleCounter>, RulesError> {
    let dump = run_ok(ns, tools(family).0, &["-c"], None)?;
    let mut out = Vec::new();
    let mut table = String::new();
    for line in dump.lines().map(str::trim_end) {
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_string();
            continue;
        }
        let (counts, rest) = split_counters(line);
        let Some(rule) = rest.strip_prefix("-A ") else {
            continue;
        };
        let (chain, text) = rule.split_once(' ').unwrap_or((rule, ""));
        if !is_istio(chain) && !target(rest).is_some_and(is_istio) {
            continue;
        }
        let (packets, bytes) = counts.unwrap_or_default();
        out.push(RuleCounter {
            table: table.clone(),
            chain: chain.to_string(),
            rule: text.to_string(),
            packets,
            bytes,
        });
    }
    Ok(out)
}
