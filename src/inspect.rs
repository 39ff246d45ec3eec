//! `ambit config workloads|services|certs|connections|policies`: the node daemon's state as
//! kubectl-style tables (or its JSON with `-o json`), read from the admin endpoint's
//! `/config_dump` and `/flows` — what `istioctl ztunnel-config` shows for ztunnel.

use serde_json::Value;

/// What `ambit config` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// The node's pods: capture state, addresses, identity.
    Workloads,
    /// Services known to the daemon.
    Services,
    /// Workload certificates: serial, validity, errors.
    Certs,
    /// Live proxied connections, then the pooled HBONE connections.
    Connections,
    /// The compiled policy of each captured pod.
    Policies,
}

/// The admin path a section is read from.
pub fn source_path(section: Section) -> &'static str {
    match section {
        Section::Connections => "/flows",
        _ => "/config_dump",
    }
}

/// The JSON a section shows with `-o json`: its part of the document.
pub fn json_part(section: Section, doc: &Value) -> Value {
    match section {
        Section::Workloads => doc["workloads"].clone(),
        Section::Services => doc["services"].clone(),
        Section::Certs => doc["certificates"].clone(),
        Section::Connections => doc.clone(),
        Section::Policies => doc["policies"].clone(),
    }
}

/// The section as a table. `doc` is what [`source_path`] answered; connections also take the
/// config dump (`pools`) for the HBONE pool.
pub fn table(section: Section, doc: &Value, pools: Option<&Value>) -> String {
    match section {
        Section::Workloads => render(
            &[
                "NAMESPACE/NAME",
                "STATE",
                "IPS",
                "SERVICE ACCOUNT",
                "HBONE",
                "RULES",
            ],
            items(&doc["workloads"]).map(|w| {
                vec![
                    text(&w["pod"]),
                    text(&w["state"]),
                    list(&w["ips"]),
                    text(&w["service_account"]),
                    yes_no(&w["in_mesh"]),
                    text(&w["rules"]),
                ]
            }),
        ),
        Section::Services => render(
            &[
                "NAMESPACE/NAME",
                "HOSTNAME",
                "CLUSTER IPS",
                "PORTS",
                "ENDPOINTS",
            ],
            items(&doc["services"]).map(|s| {
                let ports = items(&s["ports"])
                    .map(|p| text(&p["port"]))
                    .collect::<Vec<_>>()
                    .join(",");
                vec![
                    format!("{}/{}", text(&s["namespace"]), text(&s["name"])),
                    text(&s["hostname"]),
                    list(&s["clusterIps"]),
                    ports,
                    items(&s["endpoints"]).count().to_string(),
                ]
            }),
        ),
        Section::Certs => render(
            &["IDENTITY", "SERIAL", "NOT AFTER", "EXPIRES IN", "STATE"],
            items(&doc["certificates"]).map(|c| {
                let cert = &c["certificate"];
                let state = match (&c["last_error"], cert.is_null()) {
                    (Value::String(e), _) => format!("error: {e}"),
                    (_, true) => "pending".into(),
                    _ => "valid".into(),
                };
                vec![
                    text(&c["identity"]),
                    text(&cert["serial"]),
                    text(&cert["not_after"]),
                    cert["expires_in_secs"]
                        .as_i64()
                        .map(duration)
                        .unwrap_or_else(|| "-".into()),
                    state,
                ]
            }),
        ),
        Section::Connections => {
            let live = render(
                &[
                    "POD",
                    "LISTENER",
                    "SOURCE",
                    "DESTINATION",
                    "ROUTE",
                    "PEER IDENTITY",
                    "SENT",
                    "RECEIVED",
                ],
                items(doc).filter(|f| f["finished"] == false).map(|f| {
                    vec![
                        text(&f["pod"]),
                        text(&f["listener"]),
                        text(&f["src"]),
                        text(&f["dst"]),
                        text(&f["route"]),
                        text(&f["peer_identity"]),
                        text(&f["bytes_sent"]),
                        text(&f["bytes_received"]),
                    ]
                }),
            );
            let pool = render(
                &["POD", "PEER", "PEER IDENTITY", "STREAMS", "AGE", "IDLE"],
                pools
                    .into_iter()
                    .flat_map(|d| items(&d["connections"]))
                    .flat_map(|p| items(&p["connections"]).map(move |c| (p, c)))
                    .map(|(p, c)| {
                        vec![
                            text(&p["pod"]),
                            text(&c["peer"]),
                            text(&c["identity"]),
                            text(&c["streams"]),
                            c["age_secs"].as_i64().map(duration).unwrap_or_default(),
                            c["idle_secs"]
                                .as_i64()
                                .map(duration)
                                .unwrap_or_else(|| "-".into()),
                        ]
                    }),
            );
            format!("{live}\nHBONE pool:\n{pool}")
        }
        Section::Policies => {
            let p = &doc["policies"];
            let rows = items(&p["pods"]).flat_map(|w| {
                let pod = text(&w["pod"]);
                let mut rows = Vec::new();
                for (kind, key) in [("DENY", "deny"), ("ALLOW", "allow"), ("LOG", "logged")] {
                    for policy in items(&w[key]) {
                        let rules = items(&policy["rules"]).count();
                        let detail = match &policy["rejected"] {
                            Value::String(why) => format!("REJECTED, denies all: {why}"),
                            _ => format!("{rules} rule(s)"),
                        };
                        rows.push(vec![
                            pod.clone(),
                            kind.into(),
                            text(&policy["policy"]),
                            detail,
                        ]);
                    }
                }
                for m in items(&w["mtls"]) {
                    let port = m["port"]
                        .as_u64()
                        .map_or("all ports".into(), |p| format!("port {p}"));
                    rows.push(vec![
                        pod.clone(),
                        "MTLS".into(),
                        text(&m["origin"]),
                        format!("{} ({port})", text(&m["mode"])),
                    ]);
                }
                rows
            });
            let mut out = render(&["POD", "KIND", "POLICY", "DETAIL"], rows);
            for r in items(&p["rejected"]) {
                out.push_str(&format!("rejected: {r}\n"));
            }
            out
        }
    }
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> String {
    let all: Vec<String> = items(v).map(text).collect();
    if all.is_empty() {
        "-".into()
    } else {
        all.join(",")
    }
}

fn yes_no(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

/// `90061` → `1d1h`, as kubectl prints ages; negative → `expired`.
fn duration(secs: i64) -> String {
    if secs < 0 {
        return "expired".into();
    }
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// Columns padded to their widest cell, separated by three spaces, as kubectl does.
fn render(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut all: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    all.extend(rows);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            all.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &all {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workloads_line_up_under_their_headers() {
        let doc = json!({"workloads": [
            {"pod": "lab/n1-p1", "state": "enrolled", "ips": ["10.0.0.1", "fd00::1"],
             "service_account": "sa-n1-p1", "in_mesh": true, "rules": "installed"},
            {"pod": "lab/legacy", "state": "not-enrolled", "ips": [], "service_account": null,
             "in_mesh": false, "rules": null},
        ]});
        let out = table(Section::Workloads, &doc, None);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NAMESPACE/NAME   STATE"), "{out}");
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][col..col + 8], "enrolled");
        assert!(
            lines[1].contains("10.0.0.1,fd00::1") && lines[2].contains("   no   "),
            "{out}"
        );
    }

    #[test]
    fn certs_show_time_left_and_errors() {
        let doc = json!({"certificates": [
            {"identity": "spiffe://td/ns/a/sa/b", "certificate": {"serial": "0a1b",
             "not_after": "2026-12-02T00:00:00Z", "expires_in_secs": 90061}, "last_error": null},
            {"identity": "spiffe://td/ns/a/sa/c", "certificate": null,
             "last_error": "CA unreachable"},
        ]});
        let out = table(Section::Certs, &doc, None);
        assert!(out.contains("1d1h") && out.contains("valid"), "{out}");
        assert!(out.contains("error: CA unreachable"), "{out}");
    }

    #[test]
    fn connections_list_live_flows_and_the_pool() {
        let flows = json!([
            {"pod": "lab/a", "listener": "outbound", "src": "10.0.0.1:4000", "dst": "10.0.0.2:80",
             "route": "hbone", "peer_identity": "spiffe://td/ns/lab/sa/b", "bytes_sent": 5,
             "bytes_received": 7, "finished": false},
            {"pod": "lab/a", "listener": "outbound", "src": "10.0.0.1:4001", "dst": "10.0.0.2:80",
             "route": "hbone", "finished": true},
        ]);
        let dump = json!({"connections": [{"pod": "lab/a", "identity": "x", "connections": [
            {"peer": "10.0.0.2:15008", "identity": "spiffe://td/ns/lab/sa/b", "streams": 1,
             "age_secs": 65, "idle_secs": null}]}]});
        let out = table(Section::Connections, &flows, Some(&dump));
        assert!(
            out.contains("10.0.0.1:4000") && !out.contains("10.0.0.1:4001"),
            "{out}"
        );
        assert!(
            out.contains("10.0.0.2:15008") && out.contains("1m5s"),
            "{out}"
        );
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(3700), "1h1m");
        assert_eq!(duration(-1), "expired");
    }
}
