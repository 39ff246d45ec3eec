//! Which of a workload's policies can match a given connection, worked out once per snapshot
//! so that a decision walks only those.
//!
//! Why: with many policies in scope, most name destination ports (`to.operation.ports`,
//! `when destination.port`) or source namespaces (`from.source.namespaces`, exact principals,
//! which carry the namespace), and a connection can only match the few that name its port and
//! its client's namespace, or name none. Skipping the others never changes a decision: a policy
//! that cannot match is irrelevant to DENY and to ALLOW alike, and the rest keep their order,
//! so the first match (the policy the decision names) is the one a full walk finds.
//!
//! Only positive conditions narrow: `notPorts`, `notNamespaces` and patterns other than an
//! exact value leave a policy a candidate for every port or namespace, and it is then matched
//! in full as before.

use std::collections::{BTreeSet, HashMap};

use super::model::{Clause, CompiledPolicy, Match, Rule};
use super::pattern::StrPat;

/// Policies naming more (port, namespace) pairs than this are indexed by port alone.
const MAX_PAIRS: usize = 64;

/// The values of one attribute that a policy, rule, clause or alternative can match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Narrow<T: Ord> {
    /// Any value may match.
    Any,
    /// Only these values can match (empty: none can).
    Only(BTreeSet<T>),
}

impl<T: Ord + Clone> Narrow<T> {
    fn none() -> Self {
        Narrow::Only(BTreeSet::new())
    }

    fn union(self, other: Self) -> Self {
        match (self, other) {
            (Narrow::Only(mut a), Narrow::Only(b)) => {
                a.extend(b);
                Narrow::Only(a)
            }
            _ => Narrow::Any,
        }
    }

    fn intersect(self, other: Self) -> Self {
        match (self, other) {
            (Narrow::Any, x) | (x, Narrow::Any) => x,
            (Narrow::Only(a), Narrow::Only(b)) => Narrow::Only(&a & &b),
        }
    }

    /// A positive condition: one of `values` must hold, each narrowing as `each` says.
    fn one_of<V>(values: &[V], each: impl Fn(&V) -> Narrow<T>) -> Self {
        if values.is_empty() {
            return Narrow::Any;
        }
        values.iter().map(each).fold(Narrow::none(), Narrow::union)
    }

    /// What a policy can match: any of its rules, each the intersection of its clauses, each
    /// the union of its alternatives.
    fn of_policy(policy: &CompiledPolicy, of_match: &impl Fn(&Match) -> Self) -> Self {
        let rule = |r: &Rule| {
            r.clauses
                .iter()
                .map(|c: &Clause| {
                    c.alternatives
                        .iter()
                        .map(of_match)
                        .fold(Narrow::none(), Narrow::union)
                })
                .fold(Narrow::Any, Narrow::intersect)
        };
        policy
            .rules
            .iter()
            .map(rule)
            .fold(Narrow::none(), Narrow::union)
    }
}

/// Destination ports an alternative can match.
fn ports_of(m: &Match) -> Narrow<u16> {
    Narrow::one_of(&m.ports.pos, |p| Narrow::Only(BTreeSet::from([*p])))
}

/// Client namespaces an alternative can match. Identity parts never contain `/`, so an exact
/// principal matches only an identity of the namespace between its `/ns/` and `/sa/`.
fn namespaces_of(m: &Match) -> Narrow<String> {
    let exact = |p: &StrPat| match p {
        StrPat::Exact(ns) => Narrow::Only(BTreeSet::from([ns.clone()])),
        _ => Narrow::Any,
    };
    let principal = |p: &StrPat| match p {
        StrPat::Exact(e) => match e.split('/').collect::<Vec<_>>().as_slice() {
            [_, "ns", ns, "sa", _] => Narrow::Only(BTreeSet::from([ns.to_string()])),
            _ => Narrow::Any,
        },
        _ => Narrow::Any,
    };
    let account = |(ns, _): &(String, String)| Narrow::Only(BTreeSet::from([ns.clone()]));
    Narrow::one_of(&m.namespaces.pos, exact)
        .intersect(Narrow::one_of(&m.principals.pos, principal))
        .intersect(Narrow::one_of(&m.service_accounts.pos, account))
}

/// For one ordered list of policies: the positions of those that can match a port and a
/// client namespace.
#[derive(Debug, Default)]
pub(crate) struct PolicyIndex {
    /// Any port, any client (plaintext included).
    any: Vec<u32>,
    /// Named ports, any client.
    by_port: HashMap<u16, Vec<u32>>,
    /// Any port, clients of named namespaces.
    by_namespace: HashMap<String, Vec<u32>>,
    /// Named ports and namespaces: port, then namespace.
    by_both: HashMap<u16, HashMap<String, Vec<u32>>>,
}

impl PolicyIndex {
    /// Indexes `list` (its order is the evaluation order). Positions go in ascending.
    pub(crate) fn build(list: &[std::sync::Arc<CompiledPolicy>]) -> PolicyIndex {
        let mut index = PolicyIndex::default();
        for (pos, policy) in list.iter().enumerate() {
            let pos = u32::try_from(pos).unwrap_or(u32::MAX);
            let ports = Narrow::of_policy(policy, &ports_of);
            let namespaces = Narrow::of_policy(policy, &namespaces_of);
            match (ports, namespaces) {
                (Narrow::Any, Narrow::Any) => index.any.push(pos),
                (Narrow::Only(ports), Narrow::Only(nss))
                    if ports.len().saturating_mul(nss.len()) <= MAX_PAIRS =>
                {
                    for port in ports {
                        let at = index.by_both.entry(port).or_default();
                        for ns in &nss {
                            at.entry(ns.clone()).or_default().push(pos);
                        }
                    }
                }
                (Narrow::Only(ports), _) => {
                    for port in ports {
                        index.by_port.entry(port).or_default().push(pos);
                    }
                }
                (Narrow::Any, Narrow::Only(nss)) => {
                    for ns in nss {
                        index.by_namespace.entry(ns).or_default().push(pos);
                    }
                }
            }
        }
        index
    }

    /// Positions of the policies that can match a connection to `port` from a client of
    /// `namespace` (`None`: plaintext, no identity), in list order.
    pub(crate) fn candidates(
        &self,
        port: u16,
        namespace: Option<&str>,
    ) -> impl Iterator<Item = usize> + '_ {
        let none: &[u32] = &[];
        let port_list = self.by_port.get(&port).map_or(none, Vec::as_slice);
        let (ns_list, both_list) = match namespace {
            Some(ns) => (
                self.by_namespace.get(ns).map_or(none, Vec::as_slice),
                self.by_both
                    .get(&port)
                    .and_then(|m| m.get(ns))
                    .map_or(none, Vec::as_slice),
            ),
            // A positive identity condition never holds without an identity.
            None => (none, none),
        };
        Merge {
            lists: [&self.any, port_list, ns_list, both_list],
        }
        .map(|p| p as usize)
    }
}

/// Ascending lists merged into one ascending sequence. A policy sits in one list only.
struct Merge<'a> {
    lists: [&'a [u32]; 4],
}

impl Iterator for Merge<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let (_, side) = self
            .lists
            .iter_mut()
            .filter_map(|l| l.first().copied().map(|head| (head, l)))
            .min_by_key(|(head, _)| *head)?;
        let (first, rest) = side.split_first()?;
        *side = rest;
        Some(*first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Action, Cond, PolicyRef, RefKind};
    use std::sync::Arc;

    fn alt(pos: &[u16], neg: &[u16]) -> Match {
        Match {
            ports: Cond {
                pos: pos.to_vec(),
                neg: neg.to_vec(),
            },
            ..Match::default()
        }
    }

    fn rule(clauses: Vec<Vec<Match>>) -> Rule {
        Rule {
            clauses: clauses
                .into_iter()
                .map(|alternatives| Clause { alternatives })
                .collect(),
        }
    }

    fn policy(name: &str, rules: Vec<Rule>) -> Arc<CompiledPolicy> {
        Arc::new(CompiledPolicy {
            id: Arc::new(PolicyRef {
                kind: RefKind::AuthorizationPolicy,
                namespace: "ns".into(),
                name: name.into(),
            }),
            action: Action::Deny,
            dry_run: false,
            rules,
            fail_closed: None,
        })
    }

    fn only(ports: &[u16]) -> Narrow<u16> {
        Narrow::Only(ports.iter().copied().collect())
    }

    fn ports(p: &CompiledPolicy) -> Narrow<u16> {
        Narrow::of_policy(p, &ports_of)
    }

    fn namespaces(p: &CompiledPolicy) -> Narrow<String> {
        Narrow::of_policy(p, &namespaces_of)
    }

    fn exact(v: &[&str]) -> Cond<StrPat> {
        Cond {
            pos: v.iter().map(|s| StrPat::Exact(s.to_string())).collect(),
            neg: Vec::new(),
        }
    }

    #[test]
    fn a_policy_matches_the_union_of_its_rules_ports() {
        let p = policy(
            "p",
            vec![
                rule(vec![vec![alt(&[80], &[])]]),
                rule(vec![vec![alt(&[443, 8443], &[])]]),
            ],
        );
        assert_eq!(ports(&p), only(&[80, 443, 8443]));
    }

    #[test]
    fn clauses_of_a_rule_intersect_and_alternatives_unite() {
        // to: ports 80 or 81; when destination.port in [81, 82] → only 81.
        let r = rule(vec![
            vec![alt(&[80], &[]), alt(&[81], &[])],
            vec![alt(&[81, 82], &[])],
        ]);
        assert_eq!(ports(&policy("p", vec![r])), only(&[81]));
        // An alternative without ports makes the clause admit any port.
        let r = rule(vec![vec![alt(&[80], &[]), alt(&[], &[])]]);
        assert_eq!(ports(&policy("p", vec![r])), Narrow::Any);
    }

    #[test]
    fn not_ports_and_empty_rules_admit_any_port_and_no_rules_admit_none() {
        let p = policy("p", vec![rule(vec![vec![alt(&[], &[22])]])]);
        assert_eq!(ports(&p), Narrow::Any);
        assert_eq!(ports(&policy("all", vec![Rule::default()])), Narrow::Any);
        assert_eq!(ports(&policy("none", vec![])), only(&[]));
        let rejected = CompiledPolicy::fail_closed(policy("bad", vec![]).id.clone(), "x".into());
        assert_eq!(ports(&rejected), Narrow::Any);
    }

    #[test]
    fn namespaces_come_from_namespaces_exact_principals_and_service_accounts() {
        let from = |m: Match| policy("p", vec![rule(vec![vec![m]])]);
        let ns = |v: &[&str]| Narrow::Only(v.iter().map(|s| s.to_string()).collect());
        let by_ns = from(Match {
            namespaces: exact(&["a", "b"]),
            ..Match::default()
        });
        assert_eq!(namespaces(&by_ns), ns(&["a", "b"]));
        let by_principal = from(Match {
            principals: exact(&["td/ns/a/sa/x", "td/ns/c/sa/y"]),
            namespaces: exact(&["a", "b"]),
            ..Match::default()
        });
        assert_eq!(namespaces(&by_principal), ns(&["a"]));
        let by_account = from(Match {
            service_accounts: Cond {
                pos: vec![("d".into(), "sa".into())],
                neg: Vec::new(),
            },
            ..Match::default()
        });
        assert_eq!(namespaces(&by_account), ns(&["d"]));
        // A pattern, a malformed principal or a negative condition narrows nothing.
        for m in [
            Match {
                namespaces: Cond {
                    pos: vec![StrPat::Prefix("team-".into())],
                    neg: Vec::new(),
                },
                ..Match::default()
            },
            Match {
                principals: exact(&["td/ns/a/sa/x/extra"]),
                ..Match::default()
            },
            Match {
                namespaces: Cond {
                    pos: Vec::new(),
                    neg: vec![StrPat::Exact("a".into())],
                },
                ..Match::default()
            },
        ] {
            assert_eq!(namespaces(&from(m)), Narrow::Any);
        }
    }

    #[test]
    fn candidates_keep_list_order_and_skip_other_ports_and_namespaces() {
        let ns_port = |name: &str, namespace: &str, port: u16| {
            let m = Match {
                namespaces: exact(&[namespace]),
                ports: Cond {
                    pos: vec![port],
                    neg: Vec::new(),
                },
                ..Match::default()
            };
            policy(name, vec![rule(vec![vec![m]])])
        };
        let ns_only = |name: &str, namespace: &str| {
            let m = Match {
                namespaces: exact(&[namespace]),
                ..Match::default()
            };
            policy(name, vec![rule(vec![vec![m]])])
        };
        let list = vec![
            policy("a", vec![rule(vec![vec![alt(&[80], &[])]])]),
            policy("b", vec![Rule::default()]),
            ns_port("c", "x", 80),
            ns_only("d", "x"),
            policy("e", vec![rule(vec![vec![alt(&[80, 443], &[])]])]),
            ns_port("f", "y", 80),
            policy("g", vec![]),
        ];
        let index = PolicyIndex::build(&list);
        let at = |port, ns| index.candidates(port, ns).collect::<Vec<_>>();
        assert_eq!(at(80, Some("x")), vec![0, 1, 2, 3, 4]);
        assert_eq!(at(80, Some("y")), vec![0, 1, 4, 5]);
        assert_eq!(at(443, Some("x")), vec![1, 3, 4]);
        assert_eq!(at(9, Some("z")), vec![1]);
        // Plaintext: no namespace, so no namespace-bound policy.
        assert_eq!(at(80, None), vec![0, 1, 4]);
    }

    /// The index never changes a decision: for every connection, the first policy it finds
    /// matching is the first a full walk finds.
    #[test]
    fn the_first_match_is_the_full_walks_first_match() {
        use crate::identity::Identity;
        use crate::policy::model::Facts;
        let mut list = Vec::new();
        for (i, (ns, port)) in [("a", 80), ("b", 80), ("a", 81), ("b", 82)]
            .into_iter()
            .enumerate()
        {
            let m = Match {
                principals: exact(&[&format!("td/ns/{ns}/sa/s")]),
                ports: Cond {
                    pos: vec![port],
                    neg: Vec::new(),
                },
                ..Match::default()
            };
            list.push(policy(&format!("p{i}"), vec![rule(vec![vec![m]])]));
            list.push(policy(
                &format!("q{i}"),
                vec![rule(vec![vec![alt(&[port], &[])]])],
            ));
        }
        list.push(policy("all", vec![Rule::default()]));
        let index = PolicyIndex::build(&list);
        let ids: Vec<Option<Identity>> = vec![
            None,
            Identity::new("td", "a", "s").ok(),
            Identity::new("td", "b", "s").ok(),
            Identity::new("td", "c", "s").ok(),
        ];
        for id in &ids {
            for port in [79, 80, 81, 82] {
                let facts = Facts {
                    src_ip: "10.0.0.1".parse().unwrap(),
                    dst_ip: "10.0.0.2".parse().unwrap(),
                    dst_port: port,
                    identity: id.as_ref(),
                };
                let full = list.iter().position(|p| p.matches(&facts));
                let ns = id.as_ref().map(|i| i.namespace());
                let indexed = index
                    .candidates(port, ns)
                    .find(|i| list[*i].matches(&facts));
                assert_eq!(indexed, full, "{id:?} port {port}");
            }
        }
    }
}
