//! The policy route of source-preserving inbound (`reference/istio-rules.md` §3.2): replies of
//! the app to connections the proxy opened carry connmark 0x111, get it back as a packet mark,
//! and `ip rule fwmark 0x111/0xfff lookup 100` sends them to the local route of table 100,
//! that is back to the proxy on `lo`.
//!
//! `ip` is spawned inside the namespace through its fd, so no named netns is needed.

use super::exec::{run, run_ok};
use super::{
    ApplyOutcome, Families, Family, RulesError, CONNMARK, MARK_MASK, ROUTE_TABLE, RULE_PREF,
};
use crate::netns::NetNs;

fn flag(family: Family) -> &'static str {
    match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

fn fwmark() -> String {
    format!("{CONNMARK:#x}/{MARK_MASK:#x}")
}

/// Our ip rules as `ip rule show` prints them (`32764:\tfrom all fwmark 0x111/0xfff lookup 100`).
fn our_rules(ns: &NetNs, family: Family) -> Result<Vec<String>, RulesError> {
    let out = run_ok(ns, "ip", &[flag(family), "rule", "show"], None)?;
    let pref = format!("{RULE_PREF}:");
    let mark = format!("fwmark {}", fwmark());
    let table = format!("lookup {ROUTE_TABLE}");
    Ok(out
        .lines()
        .filter(|l| l.starts_with(&pref) && l.contains(&mark) && l.trim_end().ends_with(&table))
        .map(|l| l.trim_end().to_string())
        .collect())
}

/// Our local default route in table 100 (`local default dev lo ...`), if present.
fn our_routes(ns: &NetNs, family: Family) -> Result<Vec<String>, RulesError> {
    let table = ROUTE_TABLE.to_string();
    let out = run(
        ns,
        "ip",
        &[flag(family), "route", "show", "table", &table],
        None,
    )?;
    // The kernel reports a table that was never used as missing; that is an empty table.
    if !out.success && out.stderr.contains("does not exist") {
        return Ok(Vec::new());
    }
    Ok(out
        .check(ns)?
        .stdout
        .lines()
        .filter(|l| l.starts_with("local default dev lo"))
        .map(|l| l.trim_end().to_string())
        .collect())
}

/// Lets a second daemon take over the pod's listeners without dropping a connection: with
/// `net.ipv4.tcp_migrate_req=1` in the pod's netns, connections queued on a closing SO_REUSEPORT
/// listener move to another listener of its group instead of being reset (Linux 5.14+; the
/// sysctl is per netns and covers IPv6 too). Best effort: an older kernel only loses the
/// upgrade's zero-gap guarantee, so a failure is logged, not returned.
pub fn enable_listener_migration(ns: &NetNs) {
    let result = run(
        ns,
        "sh",
        &["-c", "echo 1 > /proc/sys/net/ipv4/tcp_migrate_req"],
        None,
    );
    match result {
        Ok(out) if out.success => {}
        Ok(out) => tracing::debug!(netns = %ns.path().display(), stderr = %out.stderr.trim(),
            "net.ipv4.tcp_migrate_req not available"),
        Err(e) => tracing::debug!(error = %e, "net.ipv4.tcp_migrate_req not set"),
    }
}

/// Whether IPv6 is usable on `lo` in the namespace. `/proc/sys/net` shows the namespace of the
/// process that opens it, so the file is read by a process spawned inside the namespace.
fn ipv6_enabled(ns: &NetNs) -> Result<bool, RulesError> {
    let out = run(
        ns,
        "cat",
        &["/proc/sys/net/ipv6/conf/lo/disable_ipv6"],
        None,
    )?;
    // A missing file means a kernel without IPv6.
    Ok(out.success && out.stdout.trim() == "0")
}

fn default_net(family: Family) -> &'static str {
    match family {
        Family::V4 => "0.0.0.0/0",
        Family::V6 => "::/0",
    }
}

fn apply_family(ns: &NetNs, family: Family) -> Result<ApplyOutcome, RulesError> {
    let f = flag(family);
    let table = ROUTE_TABLE.to_string();
    let has_rule = !our_rules(ns, family)?.is_empty();
    let has_route = !our_routes(ns, family)?.is_empty();
    if !has_rule {
        let (pref, mark) = (RULE_PREF.to_string(), fwmark());
        let args = [
            f, "rule", "add", "fwmark", &mark, "pref", &pref, "lookup", &table,
        ];
        run_ok(ns, "ip", &args, None)?;
    }
    if !has_route {
        let args = [
            f,
            "route",
            "replace",
            "local",
            default_net(family),
            "dev",
            "lo",
            "table",
            &table,
        ];
        run_ok(ns, "ip", &args, None)?;
    }
    Ok(match (has_rule, has_route) {
        (true, true) => ApplyOutcome::Unchanged,
        (false, false) => ApplyOutcome::Installed,
        _ => ApplyOutcome::Repaired,
    })
}

/// Adds the ip rule and the table-100 local route for the selected families; IPv6 is skipped
/// when it is disabled in the namespace. Present parts are left alone.
pub fn apply(ns: &NetNs, families: Families) -> Result<ApplyOutcome, RulesError> {
    let mut parts = Vec::new();
    for family in families.iter() {
        if family == Family::V6 && !ipv6_enabled(ns)? {
            continue;
        }
        parts.push(apply_family(ns, family)?);
    }
    Ok(ApplyOutcome::combine(parts))
}

fn remove_family(ns: &NetNs, family: Family) -> Result<(), RulesError> {
    let f = flag(family);
    let table = ROUTE_TABLE.to_string();
    let (pref, mark) = (RULE_PREF.to_string(), fwmark());
    for _ in our_rules(ns, family)? {
        let args = [
            f, "rule", "del", "fwmark", &mark, "pref", &pref, "lookup", &table,
        ];
        run_ok(ns, "ip", &args, None)?;
    }
    if !our_routes(ns, family)?.is_empty() {
        let args = [
            f,
            "route",
            "del",
            "local",
            default_net(family),
            "dev",
            "lo",
            "table",
            &table,
        ];
        run_ok(ns, "ip", &args, None)?;
    }
    Ok(())
}

/// Removes our ip rules and routes of both families. IPv6 failing (no IPv6 in the kernel) is
/// not an error.
pub fn remove(ns: &NetNs) -> Result<(), RulesError> {
    remove_family(ns, Family::V4)?;
    if ipv6_enabled(ns)? {
        remove_family(ns, Family::V6)?;
    } else {
        let _ = remove_family(ns, Family::V6);
    }
    Ok(())
}

/// Our ip rules and routes, prefixed by family (`-4 32764: from all fwmark ...`).
pub fn installed(ns: &NetNs) -> Result<Vec<String>, RulesError> {
    let mut lines = Vec::new();
    for family in [Family::V4, Family::V6] {
        let found = our_rules(ns, family).and_then(|mut r| {
            r.extend(our_routes(ns, family)?);
            Ok(r)
        });
        match found {
            Ok(found) => lines.extend(found.into_iter().map(|l| format!("{} {l}", flag(family)))),
            Err(e) if family == Family::V4 => return Err(e),
            Err(_) => {}
        }
    }
    Ok(lines)
}
