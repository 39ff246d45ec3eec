//! The sidecar rule set and its building from a pod's capture options.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::super::iptables::render_rule;
use super::super::model::{Action, OwnerKind, Proto, Rule};
use super::super::{Family, HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use super::saved::Found;
use super::{
    INBOUND_CHAIN, IN_REDIRECT_CHAIN, LEADING_EXCLUDED_INBOUND_PORTS, OUTPUT_CHAIN,
    PASSTHROUGH_SOURCE_V4, PASSTHROUGH_SOURCE_V6, REDIRECT_CHAIN, STATUS_PORT,
};
use crate::capture::{CaptureOptions, Selection};

/// The sidecar nat rules for one address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarRuleSet {
    /// Family the addresses below belong to.
    pub family: Family,
    /// Rules appended to the built-in nat `PREROUTING` (the jump; none if inbound is off).
    pub prerouting: Vec<Rule>,
    /// Rules appended to the built-in nat `OUTPUT` (the jump).
    pub output: Vec<Rule>,
    /// `ISTIO_INBOUND`.
    pub inbound: Vec<Rule>,
    /// `ISTIO_REDIRECT`.
    pub redirect: Vec<Rule>,
    /// `ISTIO_IN_REDIRECT`.
    pub in_redirect: Vec<Rule>,
    /// `ISTIO_OUTPUT`.
    pub istio_output: Vec<Rule>,
}

fn host(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

fn tcp_port(port: u16, negate: bool) -> Proto {
    Proto::TcpPort(Some((port, negate)))
}

/// The `-d` list istio-init gets: `15090,15021,<excludeInboundPorts>` plus the status port
/// 15020 if not already listed (injector `excludeInboundPort`). Later duplicates are dropped;
/// istio-init would write a second identical RETURN for, say, a pod listing 15090 itself
/// (harmless either way). The CNI plugin path (§1.6) orders them `<pod's>,15020,15021,15090`
/// instead; we follow the injector/istio-init order of the §1.2 golden listing.
pub fn excluded_inbound_ports(opts: &CaptureOptions) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    let all = LEADING_EXCLUDED_INBOUND_PORTS
        .iter()
        .chain(&opts.exclude_inbound_ports)
        .chain(std::iter::once(&STATUS_PORT));
    for &p in all {
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

impl SidecarRuleSet {
    /// Istio's sidecar nat rules (REDIRECT mode) for `opts`, keeping only the address ranges of
    /// `family`, with the proxy running as `proxy_uid`/`proxy_gid` (Istio: 1337/1337).
    pub fn build(
        opts: &CaptureOptions,
        family: Family,
        proxy_uid: u32,
        proxy_gid: u32,
    ) -> SidecarRuleSet {
        let (lo, passthrough) = match family {
            Family::V4 => (
                host(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                host(IpAddr::V4(PASSTHROUGH_SOURCE_V4)),
            ),
            Family::V6 => (
                host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                host(IpAddr::V6(PASSTHROUGH_SOURCE_V6)),
            ),
        };
        let of_family = |net: &&IpNet| Family::of(net) == family;
        let ret = || Rule::new(Action::Return);
        let to_in_redirect = || Rule::new(Action::Jump(IN_REDIRECT_CHAIN));
        let to_redirect = || Rule::new(Action::Jump(REDIRECT_CHAIN));

        // Inbound. The 15008 RETURN is written first and always (even with inbound off).
        let mut inbound = vec![ret().proto(tcp_port(HBONE_PORT, false))];
        let mut prerouting = Vec::new();
        let inbound_on = !matches!(&opts.include_inbound_ports, Selection::Only(p) if p.is_empty());
        if inbound_on {
            prerouting.push(Rule::new(Action::Jump(INBOUND_CHAIN)).proto(Proto::Tcp));
        }
        match &opts.include_inbound_ports {
            Selection::All => {
                for port in excluded_inbound_ports(opts) {
                    inbound.push(ret().proto(tcp_port(port, false)));
                }
                inbound.push(to_in_redirect().proto(Proto::Tcp));
            }
            // A port list ignores the exclusions, the default ones included (§1.2 variants).
            Selection::Only(ports) => {
                for &port in ports {
                    inbound.push(to_in_redirect().proto(tcp_port(port, false)));
                }
            }
        }
        let in_redirect = vec![Rule::new(Action::Redirect(INBOUND_PORT)).proto(Proto::Tcp)];
        let redirect = vec![Rule::new(Action::Redirect(OUTBOUND_PORT)).proto(Proto::Tcp)];

        // Outbound, in run.go's fixed order (§1.2 steps 1-9; steps 4 and 5 produce nothing
        // here: owner-group env filters at their defaults, no DNS capture).
        let output = vec![Rule::new(Action::Jump(OUTPUT_CHAIN))];
        let mut out = Vec::new();
        for &port in &opts.exclude_outbound_ports {
            out.push(ret().proto(tcp_port(port, false)));
            out.push(ret().proto(Proto::UdpPort(Some((port, false)))));
        }
        out.push(ret().src(passthrough).out_iface("lo"));
        // Istio checks both families' include lists (`HasLoopBackIP` of v4 || v6), so a
        // loopback include of either family drops the lo RETURNs in both rule sets. The
        // reference does not say per family or not; this is our reading of run.go.
        let lo_included = match &opts.include_outbound_ip_ranges {
            Selection::All => false,
            Selection::Only(nets) => nets.iter().any(|n| n.addr().is_loopback()),
        };
        for (kind, id) in [(OwnerKind::Uid, proxy_uid), (OwnerKind::Gid, proxy_gid)] {
            // The proxy calling its own pod IP over lo (app → VIP → proxy → own pod).
            out.push(
                to_in_redirect()
                    .dst(lo, true)
                    .out_iface("lo")
                    .proto(tcp_port(HBONE_PORT, true))
                    .owner(kind, id, false),
            );
            // App → app over lo: not captured.
            if !lo_included {
                out.push(ret().out_iface("lo").owner(kind, id, true));
            }
            // The proxy's own traffic, any protocol.
            out.push(ret().owner(kind, id, false));
        }
        out.push(ret().dst(lo, false));
        for &net in opts.exclude_outbound_ip_ranges.iter().filter(of_family) {
            out.push(ret().dst(net, false));
        }
        for &port in &opts.include_outbound_ports {
            out.push(to_redirect().proto(tcp_port(port, false)));
        }
        match &opts.include_outbound_ip_ranges {
            Selection::All => out.push(to_redirect()),
            Selection::Only(nets) => {
                for &net in nets.iter().filter(of_family) {
                    out.push(to_redirect().dst(net, false));
                }
            }
        }

        SidecarRuleSet {
            family,
            prerouting,
            output,
            inbound,
            redirect,
            in_redirect,
            istio_output: out,
        }
    }

    /// Our chains with their rules, in Istio's `-N` order.
    pub fn chains(&self) -> [(&'static str, &[Rule]); 4] {
        [
            (INBOUND_CHAIN, &self.inbound),
            (REDIRECT_CHAIN, &self.redirect),
            (IN_REDIRECT_CHAIN, &self.in_redirect),
            (OUTPUT_CHAIN, &self.istio_output),
        ]
    }

    /// The jumps from the built-in chains, as `-A` lines.
    pub fn jump_lines(&self) -> Vec<String> {
        let hooks = [("PREROUTING", &self.prerouting), ("OUTPUT", &self.output)];
        hooks
            .into_iter()
            .flat_map(|(hook, rules)| rules.iter().map(move |r| line(hook, r)))
            .collect()
    }

    /// Every rule as an `-A` line in `iptables-save` form: the jumps, then each chain.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = self.jump_lines();
        for (chain, rules) in self.chains() {
            lines.extend(rules.iter().map(|r| line(chain, r)));
        }
        lines
    }

    /// What `iptables-save` should show for nat.
    pub(super) fn expected(&self) -> Found {
        let mut found = Found::default();
        for (chain, rules) in self.chains() {
            let lines = rules.iter().map(|r| line(chain, r)).collect();
            found.chains.insert(chain.to_string(), lines);
        }
        found.jumps = self.jump_lines();
        found.jumps.sort();
        found
    }
}

fn line(chain: &str, rule: &Rule) -> String {
    format!("-A {chain} {}", render_rule(rule))
}
