//! The live packet and byte counters of our rules in a pod's namespace, rule by rule in the
//! order of the rule model, for `ambit explain`.

use serde::Serialize;

use super::exec::run_ok;
use super::model::{Chain, Table};
use super::{iptables, nftables, Backend, Family, RulesError};
use crate::netns::NetNs;

/// What the kernel counted for one rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    /// Packets that matched.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

/// The counters of every rule of `family` in our `table`/`chain` of `ns`, in rule order.
///
/// nftables keeps both families in one `inet` chain, v4 rules first: `v4_rules` (the number of
/// v4 rules in that chain, from the rule model) says where the v6 ones start.
pub fn chain_counters(
    ns: &NetNs,
    backend: Backend,
    family: Family,
    table: Table,
    chain: Chain,
    v4_rules: usize,
) -> Result<Vec<Counter>, RulesError> {
    match backend {
        Backend::Iptables => {
            let table = match table {
                Table::Nat => "nat",
                Table::Mangle => "mangle",
            };
            let save = iptables::tools(family).0;
            let dump = run_ok(ns, save, &["-c", "-t", table], None)?;
            Ok(parse_iptables(&dump, iptables::chain_name(chain)))
        }
        Backend::Nftables => {
            let table = match table {
                Table::Nat => nftables::NAT_TABLE,
                Table::Mangle => nftables::MANGLE_TABLE,
            };
            let args = ["list", "chain", "inet", table, nftables::chain_name(chain)];
            let all = parse_nft(&run_ok(ns, "nft", &args, None)?);
            Ok(match family {
                Family::V4 => all.into_iter().take(v4_rules).collect(),
                Family::V6 => all.into_iter().skip(v4_rules).collect(),
            })
        }
    }
}

/// Counters of the `-A CHAIN` lines of an `iptables-save -c` dump, in order.
fn parse_iptables(dump: &str, chain: &str) -> Vec<Counter> {
    let append = format!("-A {chain} ");
    dump.lines()
        .filter_map(|line| {
            let (counts, rule) = line.strip_prefix('[')?.split_once("] ")?;
            rule.starts_with(&append).then_some(())?;
            let (packets, bytes) = counts.split_once(':')?;
            Some(Counter {
                packets: packets.parse().ok()?,
                bytes: bytes.parse().ok()?,
            })
        })
        .collect()
}

/// The `counter packets N bytes M` of each rule of an `nft list chain` listing, in order.
fn parse_nft(listing: &str) -> Vec<Counter> {
    listing
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.windows(2).position(|w| w == ["counter", "packets"])?;
            let packets = words.get(at + 2)?.parse().ok()?;
            let bytes = (words.get(at + 3) == Some(&"bytes"))
                .then(|| words.get(at + 4)?.parse().ok())??;
            Some(Counter { packets, bytes })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_counters_come_from_the_chains_own_lines_in_order() {
        let dump = "*nat\n:OUTPUT ACCEPT [3:180]\n:ISTIO_OUTPUT - [0:0]\n\
            [7:420] -A OUTPUT -j ISTIO_OUTPUT\n\
            [0:0] -A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -j ACCEPT\n\
            [2:120] -A ISTIO_OUTPUT -p tcp -m tcp --dport 9000 -j ACCEPT\n\
            [5:300] -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports 15001\n\
            COMMIT\n";
        let got = parse_iptables(dump, "ISTIO_OUTPUT");
        let packets: Vec<u64> = got.iter().map(|c| c.packets).collect();
        assert_eq!(packets, [0, 2, 5]);
        assert_eq!(got[2].bytes, 300);
    }

    #[test]
    fn nft_counters_are_read_per_rule() {
        let listing = "table inet istio-ambient-nat {\n\tchain istio-output {\n\
            \t\tip daddr 169.254.7.127 meta l4proto tcp counter packets 0 bytes 0 accept\n\
            \t\tip daddr != 127.0.0.1 meta l4proto tcp meta mark & 0x00000fff != 0x00000539 counter packets 4 bytes 240 redirect to :15001\n\
            \t}\n}\n";
        let got = parse_nft(listing);
        assert_eq!(
            got,
            [
                Counter::default(),
                Counter {
                    packets: 4,
                    bytes: 240
                }
            ]
        );
    }
}
