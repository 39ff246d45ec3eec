//! `ambit explain SRC DST`: what happens to a new connection from a pod of this node to an
//! address, read from the live daemon — the rule that decides capture in the pod's netns (with
//! its kernel counters), the listener, the route, the destination's listener and policy
//! decision, and the flows seen between the two.
//!
//! Every answer comes from the code paths the traffic itself takes: the rule model the rules
//! were installed from ([`crate::rules::trace`]), the outbound decision
//! ([`crate::proxy::outbound::decide_in`]) and the policy snapshot in force.

pub mod text;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::capture::CaptureOptions;
use crate::flows::FlowTable;
use crate::identity::Identity;
use crate::policy::{ConnInfo, PolicySnapshot};
use crate::proxy::outbound::{decide_in, Route};
use crate::reconcile::{CapturedPod, PodStatus, StatusBoard};
use crate::rules::model::{Action, Chain, Rule, RuleSet, Table};
use crate::rules::trace::{first_match, Packet};
use crate::rules::{counters, iptables, nftables, Backend, Family};
use crate::workload::{Directory, Pod};

/// The daemon's live state that an explanation reads.
#[derive(Clone)]
pub struct Explainer {
    /// This node's name.
    pub node: String,
    /// Trust domain of the mesh.
    pub trust_domain: String,
    /// Local pods and what is captured.
    pub board: Arc<StatusBoard>,
    /// Workloads and Services.
    pub directory: watch::Receiver<Arc<Directory>>,
    /// The security policy in force.
    pub policy: watch::Receiver<Arc<PolicySnapshot>>,
    /// Flow records of this daemon.
    pub flows: Arc<FlowTable>,
}

/// Why no explanation could be given.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The destination is not an address with a port.
    #[error("destination {0:?} is not ip:port (e.g. 10.0.2.5:8080 or [fd00::5]:8080)")]
    BadDestination(String),
    /// The source is not a pod of this node.
    #[error("source {given:?} is not a pod of node {node} (by name, namespace/name or IP); local pods: {known}; run explain on the source pod's node")]
    UnknownSource {
        /// What was asked.
        given: String,
        /// This node.
        node: String,
        /// The local pods.
        known: String,
    },
    /// The source names more than one local pod.
    #[error("source {given:?} names several pods ({matches}); use namespace/name")]
    Ambiguous {
        /// What was asked.
        given: String,
        /// The pods it names.
        matches: String,
    },
}

/// The whole answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Explanation {
    /// The node that answered.
    pub node: String,
    /// The source pod, `namespace/name`.
    pub source: String,
    /// The source address the connection leaves from (the pod's address of the family).
    pub source_ip: Option<IpAddr>,
    /// The destination asked about.
    pub destination: SocketAddr,
    /// Step 1: capture in the source pod's netns.
    pub capture: Capture,
    /// Step 2: what the proxy (or the kernel, when not captured) does with it.
    pub route: RouteStep,
    /// Step 3: the destination side, when the destination is a known pod.
    pub at_destination: Option<AtDestination>,
    /// Flows of this daemon between the two, newest last.
    pub flows: Vec<FlowLine>,
}

/// Capture in the source pod's namespace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Capture {
    /// Whether 15001 receives the connection.
    pub captured: bool,
    /// Why (or why not), in a sentence.
    pub why: String,
    /// The chain walked (`iptables nat ISTIO_OUTPUT`, `inet istio-ambient-nat istio-output`).
    pub chain: Option<String>,
    /// The deciding rule.
    pub rule: Option<RuleHit>,
}

/// The rule that decided, with the kernel's counters for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleHit {
    /// Position in the chain, from 1 (as `iptables -L --line-numbers` counts).
    pub number: usize,
    /// The rule in the backend's syntax.
    pub text: String,
    /// Packets the kernel counted on it so far.
    pub packets: Option<u64>,
    /// Bytes the kernel counted on it so far.
    pub bytes: Option<u64>,
    /// Why the counters are missing, if they are.
    pub counters_error: Option<String>,
}

/// The route decision.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteStep {
    /// How the connection is carried on.
    pub kind: RouteKind,
    /// The Service the destination is a ClusterIP of.
    pub service: Option<String>,
    /// Where the connection is carried to.
    pub target: Option<SocketAddr>,
    /// HBONE: the peer dialled (`<pod IP>:15008`).
    pub peer: Option<SocketAddr>,
    /// HBONE: the identity the peer must present.
    pub expected_identity: Option<String>,
    /// The decision in a sentence.
    pub why: String,
}

/// The route a connection takes, as the outbound listener (or the kernel) decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// HBONE to the destination pod's 15008.
    Hbone,
    /// Plain TCP from the pod's own address.
    Passthrough,
    /// Refused by the outbound listener.
    Refused,
    /// Not captured: the kernel delivers it directly.
    Direct,
}

impl std::fmt::Display for RouteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RouteKind::Hbone => "hbone",
            RouteKind::Passthrough => "passthrough",
            RouteKind::Refused => "refused",
            RouteKind::Direct => "direct",
        })
    }
}

/// What the destination's side does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AtDestination {
    /// The destination pod, `namespace/name`.
    pub pod: String,
    /// Its node.
    pub node: String,
    /// Whether it is in the mesh.
    pub in_mesh: bool,
    /// The listener that receives the connection there (`15008 (HBONE)`, `15006 (inbound
    /// plaintext)`, or the app directly).
    pub listener: String,
    /// The policy decision, when the mesh decides.
    pub policy: Option<String>,
    /// Whether the connection reaches the app.
    pub allowed: bool,
}

/// One flow, as listed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowLine {
    /// Flow id.
    pub id: u64,
    /// The pod whose listener took it.
    pub pod: String,
    /// Listener name.
    pub listener: String,
    /// Client address.
    pub src: SocketAddr,
    /// Original destination.
    pub dst: SocketAddr,
    /// Route taken.
    pub route: String,
    /// Bytes client → server.
    pub bytes_sent: u64,
    /// Bytes server → client.
    pub bytes_received: u64,
    /// Whether it ended.
    pub finished: bool,
    /// Its error, if any.
    pub error: Option<String>,
    /// Its policy decision, if any.
    pub policy: Option<String>,
}

impl Explainer {
    /// Explains a new connection from the local pod `src` to `dst`.
    pub fn explain(&self, src: &str, dst: &str) -> Result<Explanation, ExplainError> {
        let destination: SocketAddr = dst
            .trim()
            .parse()
            .map_err(|_| ExplainError::BadDestination(dst.to_string()))?;
        let status = self.find_source(src.trim())?;
        let source = status.pod.clone();
        let directory = self.directory.borrow().clone();
        let captured = self.board.captured(&source);
        let source_pod = captured.as_ref().map(|c| c.pod.clone()).or_else(|| {
            let (pod, _) = status.ips.iter().find_map(|ip| directory.lookup(*ip))?;
            Some((**pod).clone())
        });
        let own: Vec<IpAddr> = source_pod
            .as_ref()
            .map(|p| p.ips.clone())
            .unwrap_or_default();
        let source_ip = Packet::from_app(&own, destination).src;
        let source_ip = own.contains(&source_ip).then_some(source_ip);

        let capture = match &captured {
            Some(c) => capture_step(c, destination),
            None => Capture {
                captured: false,
                why: not_captured_why(&status),
                chain: None,
                rule: None,
            },
        };
        let route = if capture.captured {
            route_step(&directory, &self.trust_domain, &own, destination)
        } else {
            RouteStep {
                kind: RouteKind::Direct,
                service: None,
                target: Some(destination),
                peer: None,
                expected_identity: None,
                why: "not captured: the kernel delivers it as the app sent it, outside the mesh"
                    .into(),
            }
        };
        let at_destination = source_pod.as_ref().and_then(|from| {
            self.destination_step(&directory, from, source_ip, &route, destination)
        });
        let flows = self.flows_between(&source, source_ip, destination, &at_destination);
        Ok(Explanation {
            node: self.node.clone(),
            source,
            source_ip,
            destination,
            capture,
            route,
            at_destination,
            flows,
        })
    }

    /// The local pod `given` names: `namespace/name`, a unique name, or one of its IPs.
    fn find_source(&self, given: &str) -> Result<PodStatus, ExplainError> {
        let pods = self.board.pods();
        let ip: Option<IpAddr> = given.parse().ok();
        let found: Vec<&PodStatus> = pods
            .iter()
            .filter(|p| {
                p.pod == given
                    || p.pod
                        .rsplit_once('/')
                        .is_some_and(|(_, name)| name == given)
                    || ip.is_some_and(|ip| p.ips.contains(&ip))
            })
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ExplainError::UnknownSource {
                given: given.to_string(),
                node: self.node.clone(),
                known: names(pods.iter().map(|p| p.pod.as_str())),
            }),
            many => Err(ExplainError::Ambiguous {
                given: given.to_string(),
                matches: names(many.iter().map(|p| p.pod.as_str())),
            }),
        }
    }

    fn destination_step(
        &self,
        directory: &Directory,
        from: &Pod,
        source_ip: Option<IpAddr>,
        route: &RouteStep,
        destination: SocketAddr,
    ) -> Option<AtDestination> {
        let target = route.target.unwrap_or(destination);
        let (pod, in_mesh) = directory.lookup(target.ip())?;
        let mut step = AtDestination {
            pod: pod.key(),
            node: pod.node.clone(),
            in_mesh,
            listener: format!("the app's port {} directly", target.port()),
            policy: None,
            allowed: route.kind != RouteKind::Refused,
        };
        if from.ips.contains(&target.ip()) {
            // Local traffic over lo meets no nat PREROUTING rule (conntrack decided NAT at
            // OUTPUT), so the pod's own port answers.
            step.listener = format!(
                "port {} of the pod itself, over lo (a pod's traffic to itself is not captured inbound)",
                target.port()
            );
            return Some(step);
        }
        if !in_mesh || route.kind == RouteKind::Refused {
            return Some(step);
        }
        let policy = self.policy.borrow().clone();
        let src_ip = source_ip.unwrap_or(target.ip());
        let identity = Identity::new(&self.trust_domain, &from.namespace, &from.service_account);
        let decision = match (route.kind, identity) {
            (RouteKind::Hbone, Ok(identity)) => {
                step.listener = "15008 (HBONE)".into();
                policy.decide(pod, &conn(src_ip, Some(&identity), target))
            }
            _ => {
                // Plaintext: the destination's own PREROUTING rules decide whether 15006 sees it.
                match inbound_rule(pod, src_ip, target) {
                    Some(Action::Redirect(port)) => {
                        step.listener = format!("{port} (inbound plaintext)")
                    }
                    _ => {
                        step.listener = format!(
                            "the app's port {} directly (inbound capture excluded by the pod's rules)",
                            target.port()
                        );
                        return Some(step);
                    }
                }
                policy.decide(pod, &conn(src_ip, None, target))
            }
        };
        step.allowed = decision.allowed;
        step.policy = Some(decision.to_string());
        Some(step)
    }

    fn flows_between(
        &self,
        source: &str,
        source_ip: Option<IpAddr>,
        destination: SocketAddr,
        at: &Option<AtDestination>,
    ) -> Vec<FlowLine> {
        let to_dst = |f: &crate::flows::FlowRecord| {
            f.pod == source && (f.dst == destination || f.upstream == Some(destination))
        };
        let at_dst = |f: &crate::flows::FlowRecord| {
            at.as_ref().is_some_and(|a| a.pod == f.pod)
                && source_ip.is_some_and(|ip| f.src.ip() == ip)
        };
        let mut out: Vec<FlowLine> = self
            .flows
            .snapshot()
            .into_iter()
            .filter(|f| to_dst(f) || at_dst(f))
            .map(|f| FlowLine {
                id: f.id,
                pod: f.pod,
                listener: f.listener.as_str().to_string(),
                src: f.src,
                dst: f.dst,
                route: f.route,
                bytes_sent: f.bytes_sent,
                bytes_received: f.bytes_received,
                finished: f.finished,
                error: f.error,
                policy: f.policy,
            })
            .collect();
        let keep = out.len().saturating_sub(MAX_FLOWS);
        out.drain(..keep);
        out
    }
}

/// Flows listed at most (the newest).
const MAX_FLOWS: usize = 20;

fn conn(src_ip: IpAddr, identity: Option<&Identity>, dst: SocketAddr) -> ConnInfo<'_> {
    ConnInfo {
        src_ip,
        src_identity: identity,
        dst_ip: dst.ip(),
        dst_port: dst.port(),
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = it.collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

/// Step 1 for a pod that is not captured: why, from its status.
fn not_captured_why(status: &PodStatus) -> String {
    match (status.state, &status.error) {
        ("failed", error) => format!(
            "the pod is not captured: capture failed ({}); its traffic is not proxied",
            error.as_deref().unwrap_or_default()
        ),
        _ => format!(
            "the pod is not enrolled in the mesh ({}): no rules in its netns",
            status.reason
        ),
    }
}

/// Step 1 for a captured pod: the nat OUTPUT chain walked for the connection's first packet.
fn capture_step(c: &CapturedPod, dst: SocketAddr) -> Capture {
    let family = if dst.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let set = RuleSet::build(&c.options, family);
    // nftables keeps both families in one chain, v4 first: the v6 rules start after these.
    let v4_rules = match family {
        Family::V4 => set.nat_output.len(),
        Family::V6 => RuleSet::build(&c.options, Family::V4).nat_output.len(),
    };
    let chain = match c.backend {
        Backend::Iptables => format!(
            "{} nat ISTIO_OUTPUT",
            if family == Family::V4 {
                "iptables"
            } else {
                "ip6tables"
            }
        ),
        Backend::Nftables => format!("inet {} istio-output", nftables::NAT_TABLE),
    };
    let packet = Packet::from_app(&c.pod.ips, dst);
    let Some((index, rule)) = first_match(&set.nat_output, &packet) else {
        return Capture {
            captured: false,
            why: "no rule of the chain matches (loopback or an address family without capture): the connection is not captured".into(),
            chain: Some(chain),
            rule: None,
        };
    };
    let counted = counters::chain_counters(
        &c.netns,
        c.backend,
        family,
        Table::Nat,
        Chain::Output,
        v4_rules,
    );
    let (packets, bytes, counters_error) = match counted {
        Ok(list) if list.len() == set.nat_output.len() => {
            (Some(list[index].packets), Some(list[index].bytes), None)
        }
        Ok(list) => (
            None,
            None,
            Some(format!(
            "the chain holds {} rules where {} were installed: it drifted (the daemon repairs it)",
            list.len(), set.nat_output.len()
        )),
        ),
        Err(e) => (None, None, Some(e.to_string())),
    };
    let (captured, why) = match rule.action {
        Action::Redirect(port) => (true, format!("redirected to {port} (outbound listener)")),
        Action::Accept => (
            false,
            "accepted: leaves the pod directly, not through the proxy".to_string(),
        ),
        other => (false, format!("rule action {other:?}: not redirected")),
    };
    Capture {
        captured,
        why,
        chain: Some(chain),
        rule: Some(RuleHit {
            number: index + 1,
            text: render(rule, c.backend, family),
            packets,
            bytes,
            counters_error,
        }),
    }
}

fn render(rule: &Rule, backend: Backend, family: Family) -> String {
    match backend {
        Backend::Iptables => format!("-A ISTIO_OUTPUT {}", iptables::render_rule(rule)),
        Backend::Nftables => nftables::render_rule(rule, family),
    }
}

/// Step 2 for a captured connection: the outbound listener's own decision.
fn route_step(
    directory: &Directory,
    trust_domain: &str,
    own: &[IpAddr],
    dst: SocketAddr,
) -> RouteStep {
    let service = directory.service(dst.ip()).map(|s| s.key());
    let via = service
        .as_ref()
        .map(|s| format!(" (Service {s}: one of its ready endpoints, round robin)"))
        .unwrap_or_default();
    let step = |kind, target, why| RouteStep {
        kind,
        service: service.clone(),
        target,
        peer: None,
        expected_identity: None,
        why,
    };
    match decide_in(directory, trust_domain, own, dst, 0) {
        Ok(Route::Hbone {
            target,
            peer,
            identity,
        }) => RouteStep {
            peer: Some(peer),
            expected_identity: Some(identity.to_string()),
            ..step(
                RouteKind::Hbone,
                Some(target),
                format!("{target} is a mesh workload{via}: HBONE (mTLS) to {peer}, which must present {identity}"),
            )
        },
        Ok(Route::Passthrough { target }) => step(
            RouteKind::Passthrough,
            Some(target),
            format!("{target} is not a mesh workload{via}: plain TCP from the pod's own address"),
        ),
        Err(refusal) => step(RouteKind::Refused, None, refusal.to_string()),
    }
}

/// The verdict of the destination pod's nat PREROUTING chain for a plaintext connection.
fn inbound_rule(pod: &Pod, src: IpAddr, dst: SocketAddr) -> Option<Action> {
    let options = CaptureOptions::from_annotations(&pod.annotations).ok()?;
    let family = if dst.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let set = RuleSet::build(&options, family);
    let mut packet = Packet::from_app(&pod.ips, dst);
    packet.src = src;
    packet.via_loopback = false;
    first_match(&set.nat_prerouting, &packet).map(|(_, r)| r.action)
}

#[cfg(test)]
mod tests;
