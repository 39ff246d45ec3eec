//! Which of a workload's policies can match a given destination port, worked out once per
//! snapshot so that a decision walks only those.
//!
//! Why: with many policies in scope, most of them name ports (`to.operation.ports`,
//! `when destination.port`), and a connection to one port can only match the few that name it
//! or name no port at all. Skipping the others never changes a decision: a policy that cannot
//! match is irrelevant to DENY and to ALLOW alike, and the order of the rest is kept, so the
//! first match (the policy the decision names) is the same as in a full walk.

use std::collections::{BTreeSet, HashMap};

use super::model::{Clause, CompiledPolicy, Match, Rule};

/// The destination ports a policy, rule, clause or alternative can match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PortSet {
    /// No positive port condition: any port may match (a `notPorts` list alone counts here,
    /// since it excludes a few ports and admits the rest).
    Any,
    /// Only these ports can match (empty: none can).
    Only(BTreeSet<u16>),
}

impl PortSet {
    fn union(self, other: PortSet) -> PortSet {
        match (self, other) {
            (PortSet::Only(mut a), PortSet::Only(b)) => {
                a.extend(b);
                PortSet::Only(a)
            }
            _ => PortSet::Any,
        }
    }

    fn intersect(self, other: PortSet) -> PortSet {
        match (self, other) {
            (PortSet::Any, x) | (x, PortSet::Any) => x,
            (PortSet::Only(a), PortSet::Only(b)) => PortSet::Only(&a & &b),
        }
    }

    /// The ports `policy` can match: any of its rules may.
    pub(crate) fn of_policy(policy: &CompiledPolicy) -> PortSet {
        policy
            .rules
            .iter()
            .map(PortSet::of_rule)
            .fold(PortSet::Only(BTreeSet::new()), PortSet::union)
    }

    /// Every clause of a rule must hold.
    fn of_rule(rule: &Rule) -> PortSet {
        rule.clauses
            .iter()
            .map(PortSet::of_clause)
            .fold(PortSet::Any, PortSet::intersect)
    }

    /// One alternative of a clause must hold.
    fn of_clause(clause: &Clause) -> PortSet {
        clause
            .alternatives
            .iter()
            .map(PortSet::of_match)
            .fold(PortSet::Only(BTreeSet::new()), PortSet::union)
    }

    fn of_match(m: &Match) -> PortSet {
        if m.ports.pos.is_empty() {
            PortSet::Any
        } else {
            PortSet::Only(m.ports.pos.iter().copied().collect())
        }
    }
}

/// For one ordered list of policies: the positions of those that can match each port.
#[derive(Debug, Default)]
pub(crate) struct PortIndex {
    /// Positions of policies that may match any port, ascending.
    any: Vec<u32>,
    /// Positions of policies limited to named ports, by port, ascending.
    by_port: HashMap<u16, Vec<u32>>,
}

impl PortIndex {
    /// Indexes `list` (its order is the evaluation order).
    pub(crate) fn build(list: &[std::sync::Arc<CompiledPolicy>]) -> PortIndex {
        let mut index = PortIndex::default();
        for (pos, policy) in list.iter().enumerate() {
            let pos = u32::try_from(pos).unwrap_or(u32::MAX);
            match PortSet::of_policy(policy) {
                PortSet::Any => index.any.push(pos),
                PortSet::Only(ports) => {
                    for port in ports {
                        index.by_port.entry(port).or_default().push(pos);
                    }
                }
            }
        }
        index
    }

    /// Positions of the policies that can match `port`, in list order.
    pub(crate) fn candidates(&self, port: u16) -> impl Iterator<Item = usize> + '_ {
        let named = self.by_port.get(&port).map(Vec::as_slice).unwrap_or(&[]);
        Merge {
            a: &self.any,
            b: named,
        }
        .map(|p| p as usize)
    }
}

/// Two ascending lists merged into one ascending sequence.
struct Merge<'a> {
    a: &'a [u32],
    b: &'a [u32],
}

impl Iterator for Merge<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(a), Some(b)) => a <= b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let side = if take_a { &mut self.a } else { &mut self.b };
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

    fn only(ports: &[u16]) -> PortSet {
        PortSet::Only(ports.iter().copied().collect())
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
        assert_eq!(PortSet::of_policy(&p), only(&[80, 443, 8443]));
    }

    #[test]
    fn clauses_of_a_rule_intersect_and_alternatives_unite() {
        // to: ports 80 or 81; when destination.port in [81, 82] → only 81.
        let r = rule(vec![
            vec![alt(&[80], &[]), alt(&[81], &[])],
            vec![alt(&[81, 82], &[])],
        ]);
        assert_eq!(PortSet::of_rule(&r), only(&[81]));
        // An alternative without ports makes the clause admit any port.
        let r = rule(vec![vec![alt(&[80], &[]), alt(&[], &[])]]);
        assert_eq!(PortSet::of_rule(&r), PortSet::Any);
    }

    #[test]
    fn not_ports_and_empty_rules_admit_any_port_and_no_rules_admit_none() {
        let p = policy("p", vec![rule(vec![vec![alt(&[], &[22])]])]);
        assert_eq!(PortSet::of_policy(&p), PortSet::Any);
        assert_eq!(
            PortSet::of_policy(&policy("all", vec![Rule::default()])),
            PortSet::Any
        );
        assert_eq!(PortSet::of_policy(&policy("none", vec![])), only(&[]));
        let rejected = CompiledPolicy::fail_closed(policy("bad", vec![]).id.clone(), "x".into());
        assert_eq!(PortSet::of_policy(&rejected), PortSet::Any);
    }

    #[test]
    fn candidates_keep_list_order_and_skip_other_ports() {
        let list = vec![
            policy("a", vec![rule(vec![vec![alt(&[80], &[])]])]),
            policy("b", vec![Rule::default()]),
            policy("c", vec![rule(vec![vec![alt(&[443], &[])]])]),
            policy("d", vec![rule(vec![vec![alt(&[80, 443], &[])]])]),
            policy("e", vec![]),
        ];
        let index = PortIndex::build(&list);
        let at = |port| index.candidates(port).collect::<Vec<_>>();
        assert_eq!(at(80), vec![0, 1, 3]);
        assert_eq!(at(443), vec![1, 2, 3]);
        assert_eq!(at(9), vec![1]);
    }
}
