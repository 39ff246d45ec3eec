//! Which rule of a chain a packet meets first: the rule model walked for one hypothetical
//! packet, so `ambit explain` can say which rule decides a connection without sending one.
//!
//! Only what our chains match on is modelled (addresses, `lo`, TCP ports, owner, marks); the
//! first rule whose every match holds decides, as netfilter does for terminal verdicts.

use std::net::{IpAddr, SocketAddr};

use super::model::{AddrMatch, MarkMatch, OwnerKind, Proto, Rule};

/// The first packet of a new TCP connection, as a chain sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Whether the packet leaves through `lo` (the pod's own addresses and loopback).
    pub via_loopback: bool,
    /// Packet mark (0 for an application's new connection).
    pub mark: u32,
    /// Connection mark (0 for a new connection).
    pub connmark: u32,
    /// Owner uid and gid of the sending socket (sidecar chains match on them).
    pub owner: (u32, u32),
}

impl Packet {
    /// A new connection opened by an application in a pod that owns `own`, towards `dst`.
    pub fn from_app(own: &[IpAddr], dst: SocketAddr) -> Packet {
        let same_family = own.iter().find(|ip| ip.is_ipv4() == dst.is_ipv4());
        let src = same_family.copied().unwrap_or(dst.ip());
        Packet {
            src,
            dst,
            via_loopback: dst.ip().is_loopback() || own.contains(&dst.ip()),
            mark: 0,
            connmark: 0,
            owner: (0, 0),
        }
    }
}

/// The index and rule of the first rule of `rules` that `packet` matches, if any.
pub fn first_match<'a>(rules: &'a [Rule], packet: &Packet) -> Option<(usize, &'a Rule)> {
    rules.iter().enumerate().find(|(_, r)| matches(r, packet))
}

/// Whether every match of `rule` holds for `packet`.
pub fn matches(rule: &Rule, packet: &Packet) -> bool {
    let addr = |m: &Option<AddrMatch>, ip: IpAddr| {
        m.as_ref()
            .is_none_or(|m| m.net.contains(&ip) != m.negate && same_family(m, ip))
    };
    let mark = |m: &Option<MarkMatch>, value: u32| {
        m.as_ref()
            .is_none_or(|m| ((value & m.mask) == m.value) != m.negate)
    };
    let iface = rule
        .out_iface
        .is_none_or(|name| (name == "lo") == packet.via_loopback);
    let proto = match rule.proto {
        Proto::Any | Proto::Tcp | Proto::TcpPort(None) => true,
        Proto::TcpPort(Some((port, negate))) => (packet.dst.port() == port) != negate,
        Proto::UdpPort(_) => false,
    };
    let owner = rule.owner.as_ref().is_none_or(|o| {
        let id = match o.kind {
            OwnerKind::Uid => packet.owner.0,
            OwnerKind::Gid => packet.owner.1,
        };
        (id == o.id) != o.negate
    });
    addr(&rule.src, packet.src)
        && addr(&rule.dst, packet.dst.ip())
        && iface
        && proto
        && owner
        && mark(&rule.mark, packet.mark)
        && mark(&rule.connmark, packet.connmark)
}

/// A negated match of another family never matches: the rule set is built per family, and
/// `!` on a v4 network says nothing about v6 packets (they never meet the v4 chain).
fn same_family(m: &AddrMatch, ip: IpAddr) -> bool {
    matches!(
        (m.net, ip),
        (ipnet::IpNet::V4(_), IpAddr::V4(_)) | (ipnet::IpNet::V6(_), IpAddr::V6(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{CaptureOptions, Selection};
    use crate::rules::model::{Action, RuleSet};
    use crate::rules::Family;

    const POD: &str = "10.1.0.5";

    fn out(opts: &CaptureOptions, dst: &str) -> (usize, Action) {
        let set = RuleSet::build(opts, Family::V4);
        let own = [POD.parse().unwrap()];
        let packet = Packet::from_app(&own, dst.parse().unwrap());
        let (i, rule) = first_match(&set.nat_output, &packet).expect("a rule matches");
        (i, rule.action)
    }

    #[test]
    fn an_app_connection_to_another_pod_is_redirected_to_15001() {
        let (_, action) = out(&CaptureOptions::default(), "10.2.0.9:8080");
        assert_eq!(action, Action::Redirect(15001));
    }

    #[test]
    fn an_excluded_port_is_accepted_before_the_redirect() {
        let opts = CaptureOptions {
            exclude_outbound_ports: vec![9000],
            ..Default::default()
        };
        let (i, action) = out(&opts, "10.2.0.9:9000");
        assert_eq!(action, Action::Accept);
        let (j, action) = out(&opts, "10.2.0.9:8080");
        assert_eq!(action, Action::Redirect(15001));
        assert!(i < j);
    }

    #[test]
    fn the_pods_own_address_leaves_over_lo_uncaptured() {
        let (_, action) = out(&CaptureOptions::default(), "10.1.0.5:8080");
        assert_eq!(action, Action::Accept);
    }

    #[test]
    fn loopback_matches_no_rule_and_is_not_captured() {
        let set = RuleSet::build(&CaptureOptions::default(), Family::V4);
        let packet = Packet::from_app(&[POD.parse().unwrap()], "127.0.0.1:8080".parse().unwrap());
        assert_eq!(first_match(&set.nat_output, &packet), None);
    }

    #[test]
    fn include_ranges_capture_only_inside_them() {
        let opts = CaptureOptions {
            include_outbound_ip_ranges: Selection::Only(vec!["10.2.0.0/16".parse().unwrap()]),
            ..Default::default()
        };
        assert_eq!(out(&opts, "10.2.0.9:80").1, Action::Redirect(15001));
        let set = RuleSet::build(&opts, Family::V4);
        let packet = Packet::from_app(&[POD.parse().unwrap()], "10.3.0.9:80".parse().unwrap());
        assert_eq!(first_match(&set.nat_output, &packet), None);
    }

    #[test]
    fn the_proxys_own_mark_is_never_redirected() {
        let set = RuleSet::build(&CaptureOptions::default(), Family::V4);
        let mut packet =
            Packet::from_app(&[POD.parse().unwrap()], "10.2.0.9:8080".parse().unwrap());
        packet.mark = crate::config::MARK;
        let hit = first_match(&set.nat_output, &packet).map(|(_, r)| r.action);
        assert_ne!(hit, Some(Action::Redirect(15001)));
    }

    #[test]
    fn v6_packets_pass_v4_negations_untouched() {
        let set = RuleSet::build(&CaptureOptions::default(), Family::V6);
        let own: [IpAddr; 1] = ["fd00::5".parse().unwrap()];
        let packet = Packet::from_app(&own, "[fd00::9]:8080".parse().unwrap());
        let hit = first_match(&set.nat_output, &packet).map(|(_, r)| r.action);
        assert_eq!(hit, Some(Action::Redirect(15001)));
    }
}
