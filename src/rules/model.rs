//! The ambient in-pod rule set as data, built once from [`CaptureOptions`] and rendered by both
//! backends, so iptables and nftables cannot drift apart in meaning.
//!
//! The rules follow `reference/istio-rules.md` §3.1 (mangle connmark, nat redirects), §3.3
//! (ingress mode) and §3.4 (IPv6), without the DNS rules (see the note on [`RuleSet`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{
    Family, CONNMARK, HBONE_PORT, INBOUND_PORT, MARK, MARK_MASK, OUTBOUND_PORT, PROBE_SOURCE_V4,
    PROBE_SOURCE_V6,
};
use crate::capture::{CaptureOptions, Selection};

/// Netfilter table a rule lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Marks and connmarks for source-preserving inbound.
    Mangle,
    /// The redirects.
    Nat,
}

/// One of our two chains in each table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chain {
    /// Hooked at prerouting (`ISTIO_PRERT` / `istio-prerouting`).
    Prerouting,
    /// Hooked at output (`ISTIO_OUTPUT` / `istio-output`).
    Output,
}

/// Match on a source or destination address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrMatch {
    /// The network (a host is a /32 or /128).
    pub net: IpNet,
    /// `!`: everything but this network.
    pub negate: bool,
}

/// Protocol part of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Any protocol.
    Any,
    /// `-p tcp` alone.
    Tcp,
    /// `-p tcp -m tcp`, with an optional destination port match `(port, negate)`.
    TcpPort(Option<(u16, bool)>),
    /// `-p udp -m udp`, with an optional destination port match `(port, negate)` (sidecar set).
    UdpPort(Option<(u16, bool)>),
}

/// Which socket owner id an [`OwnerMatch`] compares (sidecar set: the proxy's uid and gid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerKind {
    /// `--uid-owner`.
    Uid,
    /// `--gid-owner`.
    Gid,
}

/// `-m owner [!] --uid-owner N` / `--gid-owner N`: the local socket that sent the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerMatch {
    /// User or group.
    pub kind: OwnerKind,
    /// The id.
    pub id: u32,
    /// `!`: any other owner.
    pub negate: bool,
}

/// Match on a mark (`value/mask`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkMatch {
    /// Value after masking.
    pub value: u32,
    /// Mask.
    pub mask: u32,
    /// `!`: mark differs.
    pub negate: bool,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop here, leave the packet alone.
    Accept,
    /// nat REDIRECT to this local port.
    Redirect(u16),
    /// Set the masked bits of the connmark to this value.
    SetConnmark {
        /// Value.
        value: u32,
        /// Mask of the bits that change.
        mask: u32,
    },
    /// Copy the connmark into the packet mark.
    RestoreMark,
    /// Leave the current chain (sidecar set).
    Return,
    /// Continue in one of our chains, by its iptables name (sidecar set).
    Jump(&'static str),
}

/// One rule; fields are in the order iptables prints matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Source address.
    pub src: Option<AddrMatch>,
    /// Destination address.
    pub dst: Option<AddrMatch>,
    /// Outgoing interface name (only `lo` here).
    pub out_iface: Option<&'static str>,
    /// Protocol and port.
    pub proto: Proto,
    /// Socket owner (sidecar set only; printed after the protocol).
    pub owner: Option<OwnerMatch>,
    /// Packet mark.
    pub mark: Option<MarkMatch>,
    /// Connection mark.
    pub connmark: Option<MarkMatch>,
    /// Verdict or target.
    pub action: Action,
}

impl Rule {
    pub(super) fn new(action: Action) -> Rule {
        Rule {
            src: None,
            dst: None,
            out_iface: None,
            proto: Proto::Any,
            owner: None,
            mark: None,
            connmark: None,
            action,
        }
    }
    pub(super) fn src(mut self, net: IpNet) -> Rule {
        self.src = Some(AddrMatch { net, negate: false });
        self
    }
    pub(super) fn dst(mut self, net: IpNet, negate: bool) -> Rule {
        self.dst = Some(AddrMatch { net, negate });
        self
    }
    pub(super) fn proto(mut self, proto: Proto) -> Rule {
        self.proto = proto;
        self
    }
    /// `-o IFACE`.
    pub(super) fn out_iface(mut self, iface: &'static str) -> Rule {
        self.out_iface = Some(iface);
        self
    }
    /// `-m owner [!] --uid-owner/--gid-owner ID`.
    pub(super) fn owner(mut self, kind: OwnerKind, id: u32, negate: bool) -> Rule {
        self.owner = Some(OwnerMatch { kind, id, negate });
        self
    }
    fn mark(mut self, value: u32, negate: bool) -> Rule {
        let mask = MARK_MASK;
        self.mark = Some(MarkMatch {
            value,
            mask,
            negate,
        });
        self
    }
    /// `! --mark 0x539/0xfff`: never capture the proxy's own sockets.
    fn not_proxy(self) -> Rule {
        self.mark(MARK, true)
    }
}

/// The complete in-pod rule set for one address family.
///
/// DNS capture (the 15053 redirects and the raw-table conntrack zone rules of §3.1) is not part
/// of this set yet: it comes with the DNS proxy, which must be listening before DNS is captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    /// Family the addresses below belong to.
    pub family: Family,
    /// mangle ISTIO_PRERT.
    pub mangle_prerouting: Vec<Rule>,
    /// mangle ISTIO_OUTPUT.
    pub mangle_output: Vec<Rule>,
    /// nat ISTIO_PRERT.
    pub nat_prerouting: Vec<Rule>,
    /// nat ISTIO_OUTPUT.
    pub nat_output: Vec<Rule>,
}

fn host(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

impl RuleSet {
    /// Builds the rules `opts` ask for, keeping only the address ranges of `family`.
    pub fn build(opts: &CaptureOptions, family: Family) -> RuleSet {
        let (probe, lo) = match family {
            Family::V4 => (
                host(IpAddr::V4(PROBE_SOURCE_V4)),
                host(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ),
            Family::V6 => (
                host(IpAddr::V6(PROBE_SOURCE_V6)),
                host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ),
        };
        let of_family = |net: &&IpNet| Family::of(net) == family;

        let mangle_prerouting = vec![Rule::new(Action::SetConnmark {
            value: CONNMARK,
            mask: MARK_MASK,
        })
        .mark(MARK, false)];
        let mut restore = Rule::new(Action::RestoreMark);
        restore.connmark = Some(MarkMatch {
            value: CONNMARK,
            mask: MARK_MASK,
            negate: false,
        });
        let mangle_output = vec![restore];

        let to_inbound = Action::Redirect(INBOUND_PORT);
        let to_outbound = Action::Redirect(OUTBOUND_PORT);
        let tcp_port = |port: u16, negate: bool| Proto::TcpPort(Some((port, negate)));

        // Ingress mode drops the probe exception together with every inbound redirect (§3.3).
        let mut nat_prerouting = Vec::new();
        if !opts.bypass_inbound_capture {
            nat_prerouting.push(
                Rule::new(Action::Accept)
                    .src(probe)
                    .proto(Proto::TcpPort(None)),
            );
            for &port in &opts.exclude_inbound_ports {
                nat_prerouting.push(Rule::new(Action::Accept).proto(tcp_port(port, false)));
            }
            let redirect = |proto| Rule::new(to_inbound).dst(lo, true).proto(proto).not_proxy();
            match &opts.include_inbound_ports {
                Selection::All => nat_prerouting.push(redirect(tcp_port(HBONE_PORT, true))),
                Selection::Only(ports) => nat_prerouting.extend(
                    // HBONE must reach the proxy's own 15008 listener, never the 15006 one.
                    ports
                        .iter()
                        .filter(|&&p| p != HBONE_PORT)
                        .map(|&p| redirect(tcp_port(p, false))),
                ),
            }
        }

        let mut nat_output = vec![
            Rule::new(Action::Accept)
                .dst(probe, false)
                .proto(Proto::TcpPort(None)),
            Rule::new(Action::Accept)
                .proto(Proto::Tcp)
                .mark(CONNMARK, false),
        ];
        let mut own_ip_over_lo = Rule::new(Action::Accept).dst(lo, true);
        own_ip_over_lo.out_iface = Some("lo");
        nat_output.push(own_ip_over_lo);
        for &port in &opts.exclude_outbound_ports {
            nat_output.push(Rule::new(Action::Accept).proto(tcp_port(port, false)));
        }
        // Loopback is still left alone: the pod's localhost services are never the mesh's.
        for &port in &opts.include_outbound_ports {
            let rule = Rule::new(to_outbound)
                .dst(lo, true)
                .proto(tcp_port(port, false));
            nat_output.push(rule.not_proxy());
        }
        for &net in opts.exclude_outbound_ip_ranges.iter().filter(of_family) {
            nat_output.push(Rule::new(Action::Accept).dst(net, false));
        }
        match &opts.include_outbound_ip_ranges {
            Selection::All => {
                let rule = Rule::new(to_outbound).dst(lo, true).proto(Proto::Tcp);
                nat_output.push(rule.not_proxy());
            }
            Selection::Only(nets) => {
                for &net in nets.iter().filter(of_family) {
                    let rule = Rule::new(to_outbound).dst(net, false).proto(Proto::Tcp);
                    nat_output.push(rule.not_proxy());
                }
            }
        }

        RuleSet {
            family,
            mangle_prerouting,
            mangle_output,
            nat_prerouting,
            nat_output,
        }
    }

    /// Our chains with their rules, in a fixed order.
    pub fn chains(&self) -> [(Table, Chain, &[Rule]); 4] {
        [
            (Table::Mangle, Chain::Prerouting, &self.mangle_prerouting),
            (Table::Mangle, Chain::Output, &self.mangle_output),
            (Table::Nat, Chain::Prerouting, &self.nat_prerouting),
            (Table::Nat, Chain::Output, &self.nat_output),
        ]
    }

    /// Rules of one chain.
    pub fn rules(&self, table: Table, chain: Chain) -> &[Rule] {
        match (table, chain) {
            (Table::Mangle, Chain::Prerouting) => &self.mangle_prerouting,
            (Table::Mangle, Chain::Output) => &self.mangle_output,
            (Table::Nat, Chain::Prerouting) => &self.nat_prerouting,
            (Table::Nat, Chain::Output) => &self.nat_output,
        }
    }
}
