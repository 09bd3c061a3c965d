//! `PolicyRoute` (pluggable, off unless configured): Pods of a CNI that routes them with
//! policy-routing rules (`checks.PolicyRoute.cnis`) whose rule is missing on the node.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::RouteHeader;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Build, Check, CheckContext, Environment, Problem, target_attributes, target_name};
use crate::sources::routes::{Route, Rule, global_v4, parse_routes, parse_rules, prefix_contains};
use crate::sources::with_namespace;

/// `checks.PolicyRoute`.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyRouteOptions {
    /// CNIs whose Pods need a policy-routing rule (`ip rule from <Pod IP>`) on the node. None
    /// (the default): the check is unavailable.
    pub cnis: Vec<PolicyRouteCni>,
}

/// A CNI whose Pods are routed by policy-routing rules on the node.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyRouteCni {
    /// The CNI's name, as messages show it (`vpc-cni`).
    pub name: String,
    /// Name prefixes of the node-side interfaces the CNI routes its Pods through: a Pod whose
    /// host route (the node's most specific main-table route to its IP) goes out one of them
    /// is one of this CNI's Pods, and needs an `ip rule from <its IP>` on the node.
    pub interface_prefixes: Vec<String>,
}

/// A Pod as [`missing_rules`] sees it: its name, attributes and global IPv4 addresses.
pub struct PodAddrs {
    pub name: String,
    pub attributes: Vec<(&'static str, String)>,
    pub ips: Vec<Ipv4Addr>,
}

/// The Pods of the configured CNIs without a rule whose source selector holds their IP.
pub fn missing_rules(
    cnis: &[PolicyRouteCni],
    pods: &[PodAddrs],
    node_routes: &[Route],
    node_links: &HashMap<u32, String>,
    node_rules: &[Rule],
) -> Vec<Problem> {
    let mut out = Vec::new();
    for pod in pods {
        for ip in &pod.ips {
            // The most specific main-table route to the Pod (not the default route).
            let host_route = node_routes
                .iter()
                .filter(|r| {
                    r.dst_len > 0
                        && r.table == u32::from(RouteHeader::RT_TABLE_MAIN)
                        && r.contains(*ip)
                })
                .max_by_key(|r| r.dst_len);
            let Some(oif) = host_route
                .and_then(|r| r.oif)
                .and_then(|i| node_links.get(&i))
            else {
                continue;
            };
            let Some(cni) = cnis.iter().find(|c| {
                c.interface_prefixes
                    .iter()
                    .any(|p| oif.starts_with(p.as_str()))
            }) else {
                continue;
            };
            let covered = node_rules.iter().any(|r| match r.src {
                Some(IpAddr::V4(s)) => r.src_len > 0 && prefix_contains(s, r.src_len, *ip),
                _ => false,
            });
            if !covered {
                let mut object = vec![("cni", cni.name.clone()), ("interface", oif.clone())];
                object.extend(pod.attributes.iter().cloned());
                out.push(Problem {
                    kind: "PolicyRoute",
                    msg: format!("rule of {} pod {} is not created.", cni.name, pod.name),
                    object,
                });
                // One event per Pod, whatever the number of its addresses.
                break;
            }
        }
    }
    out
}

/// `PolicyRoute`: Pods of a policy-routing CNI whose rule is missing. Unavailable unless
/// `cnis` names a CNI.
pub struct PolicyRoute {
    options: PolicyRouteOptions,
}

impl Build for PolicyRoute {
    const NAME: &'static str = "PolicyRoute";
    const PROBE: &'static str = "route";
    const TYPES: &'static [&'static str] = &["PolicyRoute"];
    type Options = PolicyRouteOptions;

    fn new(options: PolicyRouteOptions) -> Result<Self> {
        Ok(Self { options })
    }
}

impl Check for PolicyRoute {
    fn prerequisites(&self, _: &Environment) -> Result<(), String> {
        if self.options.cnis.is_empty() {
            Err("no policy-routing CNI configured (checks.PolicyRoute.cnis)".into())
        } else {
            Ok(())
        }
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let cnis = &self.options.cnis;
        let node = ctx.node()?;
        let (routes, links, rules) = with_namespace(&ctx.procfs, node.ns_path.as_deref(), |src| {
            let routes = parse_routes(&src.routes(AddressFamily::Inet)?)?;
            let links = crate::sources::links::names(&src.links()?).context("RTM_GETLINK")?;
            let rules = parse_rules(&src.rules(AddressFamily::Inet)?)?;
            Ok((routes, links, rules))
        })
        .context("routes and rules of the node")?;
        let mut pods = Vec::new();
        for t in ctx.pods() {
            match with_namespace(&ctx.procfs, t.ns_path.as_deref(), global_v4) {
                Ok(addrs) => pods.push(PodAddrs {
                    name: target_name(t),
                    attributes: target_attributes(t),
                    ips: addrs
                        .iter()
                        .filter_map(|a| match a.ip {
                            IpAddr::V4(v4) => Some(v4),
                            IpAddr::V6(_) => None,
                        })
                        .collect(),
                }),
                Err(e) => {
                    tracing::debug!(target = %target_name(t), error = %format!("{e:#}"), "addresses not read");
                }
            }
        }
        Ok(missing_rules(cnis, &pods, &routes, &links, &rules))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteType;

    #[test]
    fn policy_route_finds_pods_without_rules() {
        let cnis = vec![PolicyRouteCni {
            name: "vpc-cni".into(),
            interface_prefixes: vec!["eni".into()],
        }];
        let route = |dst: [u8; 4], len: u8, oif: u32| Route {
            dst: Some(IpAddr::V4(Ipv4Addr::from(dst))),
            dst_len: len,
            table: 254,
            kind: RouteType::Unicast,
            oif: Some(oif),
        };
        let routes = vec![
            route([0, 0, 0, 0], 0, 1),
            route([10, 0, 0, 0], 24, 1),
            route([10, 1, 0, 5], 32, 2),
            route([10, 1, 0, 6], 32, 3),
            route([10, 1, 0, 7], 32, 4),
        ];
        let links: HashMap<u32, String> = [(1, "eth0"), (2, "eni1"), (3, "eni2"), (4, "cali1")]
            .map(|(i, n)| (i, n.to_string()))
            .into();
        let rules = vec![
            Rule {
                src: None,
                src_len: 0,
            },
            Rule {
                src: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 5))),
                src_len: 32,
            },
        ];
        let pod = |name: &str, ip: [u8; 4]| PodAddrs {
            name: name.into(),
            attributes: vec![],
            ips: vec![Ipv4Addr::from(ip)],
        };
        let pods = vec![
            pod("with-rule/default", [10, 1, 0, 5]),
            pod("vpc-cni-ng-0/default", [10, 1, 0, 6]),
            pod("other-cni/default", [10, 1, 0, 7]),
            pod("unrouted/default", [192, 168, 9, 9]),
        ];
        let found = missing_rules(&cnis, &pods, &routes, &links, &rules);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].msg,
            "rule of vpc-cni pod vpc-cni-ng-0/default is not created."
        );
        assert!(missing_rules(&[], &pods, &routes, &links, &rules).is_empty());
    }
}
