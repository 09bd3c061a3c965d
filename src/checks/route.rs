//! `route`: the routes the node and its Pods need.
//!
//! - `DefaultRoute`: the node, or a Pod's network namespace, without a default route. Routes
//!   are read with an RTM_GETROUTE dump inside each namespace (a session opened for the run).
//! - `PolicyRoute` (pluggable, off unless configured): Pods of a CNI that routes them with
//!   policy-routing rules (`checks.policy_route_cnis`) whose rule is missing on the node.
//! - `PodRoute` (Kubernetes mode): Pods of this node with their own IP whose host-side route is
//!   missing: no unicast route of the node's main table, other than a default route, covers
//!   the Pod's IP (per-Pod `/32` routes to the Pod's veth, a connected or a Pod-CIDR route all
//!   do; a `blackhole` route of an IPAM block does not).
//! - `VpcRoute` (pluggable, provider-specific): whether the cloud network routes the node's Pod
//!   CIDR to the node. The check is built on [`VpcRouteProvider`]; the one implementation
//!   here, [`NotApplicable`], finds nothing.
//!
//! How a namespace is named in messages ([`target_name`]): a Pod as `<pod>/<namespace>`
//! (Kubernetes mode); in standalone mode, where namespaces are not Pods, as `<netns>/-`, the
//! target's `netns` label (`/run/netns` name or `pid-<pid>`) with `-` for "no Kubernetes
//! namespace".

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, anyhow};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::address::{AddressAttribute, AddressScope};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteType};
use netlink_packet_route::rule::RuleAttribute;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::Deserialize;

use super::{Check, CheckContext, Problem};
use crate::inventory::Target;
use crate::sources::netlink::messages;
use crate::sources::{TargetSources, with_namespace};

/// How many names a message lists before `...`.
pub const LIST_CAP: usize = 3;

/// `a,b,c` or, past [`LIST_CAP`] entries, `a,b,c,...`.
pub fn capped_list(names: &[String]) -> String {
    let mut out = names
        .iter()
        .take(LIST_CAP)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    if names.len() > LIST_CAP {
        out.push_str(",...");
    }
    out
}

fn label<'a>(t: &'a Target, name: &str) -> Option<&'a str> {
    t.labels
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

/// A non-node target as messages name it: `<pod>/<namespace>` in Kubernetes mode, `<netns>/-`
/// in standalone mode (see the module documentation).
pub fn target_name(t: &Target) -> String {
    match (label(t, "k8s_pod"), label(t, "k8s_namespace")) {
        (Some(pod), Some(ns)) => format!("{pod}/{ns}"),
        _ => match label(t, "netns") {
            Some(n) => format!("{n}/-"),
            None => format!("inode-{}/-", t.inode),
        },
    }
}

/// A target's identity as event attributes (`k8s.pod.name`/`k8s.namespace.name`, or `netns`).
pub fn target_attributes(t: &Target) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (k, v) in &t.labels {
        match *k {
            "k8s_pod" => out.push(("k8s.pod.name", v.clone())),
            "k8s_namespace" => out.push(("k8s.namespace.name", v.clone())),
            "netns" => out.push(("netns", v.clone())),
            _ => {}
        }
    }
    out
}

/// One route of an RTM_GETROUTE dump, as far as the checks need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    /// The table (RTA_TABLE when present: the header's byte cannot hold ids above 255).
    pub table: u32,
    pub kind: RouteType,
    pub oif: Option<u32>,
}

impl Route {
    /// A unicast route to everywhere in the main table (`ip route show default`).
    pub fn is_default(&self) -> bool {
        self.dst_len == 0
            && self.table == u32::from(RouteHeader::RT_TABLE_MAIN)
            && self.kind == RouteType::Unicast
    }

    /// Whether the route's destination prefix holds `ip`.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        match self.dst {
            Some(IpAddr::V4(d)) => prefix_contains(d, self.dst_len, ip),
            None => self.dst_len == 0,
            Some(IpAddr::V6(_)) => false,
        }
    }

    /// Whether the route's destination prefix holds `ip`, of either family (a route without
    /// a destination holds its whole family).
    pub fn covers(&self, ip: IpAddr) -> bool {
        match (self.dst, ip) {
            (Some(IpAddr::V4(d)), IpAddr::V4(ip)) => prefix_contains(d, self.dst_len, ip),
            (Some(IpAddr::V6(d)), IpAddr::V6(ip)) => {
                let len = u32::from(self.dst_len.min(128));
                len == 0 || (u128::from(d) >> (128 - len)) == (u128::from(ip) >> (128 - len))
            }
            (None, _) => self.dst_len == 0,
            _ => false,
        }
    }
}

fn prefix_contains(net: Ipv4Addr, len: u8, ip: Ipv4Addr) -> bool {
    if len == 0 {
        return true;
    }
    let shift = 32 - u32::from(len.min(32));
    (u32::from(net) >> shift) == (u32::from(ip) >> shift)
}

/// Decodes an RTM_GETROUTE dump reply.
pub fn parse_routes(reply: &[u8]) -> Result<Vec<Route>> {
    let mut out = Vec::new();
    for m in messages::<RouteNetlinkMessage>(reply) {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = m?.payload else {
            continue;
        };
        let mut route = Route {
            dst: None,
            dst_len: r.header.destination_prefix_length,
            table: u32::from(r.header.table),
            kind: r.header.kind,
            oif: None,
        };
        for a in r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                    route.dst = Some(IpAddr::V4(v4));
                }
                RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                    route.dst = Some(IpAddr::V6(v6));
                }
                RouteAttribute::Table(t) => route.table = t,
                RouteAttribute::Oif(i) => route.oif = Some(i),
                _ => {}
            }
        }
        out.push(route);
    }
    Ok(out)
}

/// One address of an RTM_GETADDR dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    /// IFA_LABEL: the interface's name (or `name:alias`), IPv4 only.
    pub label: Option<String>,
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub scope: AddressScope,
}

/// Decodes an RTM_GETADDR dump reply (IFA_LOCAL, else IFA_ADDRESS, as `ip addr` shows).
pub fn parse_addresses(reply: &[u8]) -> Result<Vec<Address>> {
    let mut out = Vec::new();
    for m in messages::<RouteNetlinkMessage>(reply) {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) = m?.payload else {
            continue;
        };
        let (mut local, mut address, mut label) = (None, None, None);
        for attr in a.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(ip),
                AddressAttribute::Address(ip) => address = Some(ip),
                AddressAttribute::Label(l) => label = Some(l),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            out.push(Address {
                index: a.header.index,
                label,
                ip,
                prefix_len: a.header.prefix_len,
                scope: a.header.scope,
            });
        }
    }
    Ok(out)
}

/// The source selector of one policy-routing rule (`ip rule ... from <src>/<len>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub src: Option<IpAddr>,
    pub src_len: u8,
}

/// Decodes an RTM_GETRULE dump reply.
pub fn parse_rules(reply: &[u8]) -> Result<Vec<Rule>> {
    let mut out = Vec::new();
    for m in messages::<RouteNetlinkMessage>(reply) {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRule(r)) = m?.payload else {
            continue;
        };
        let src = r.attributes.iter().find_map(|a| match a {
            RuleAttribute::Source(ip) => Some(*ip),
            _ => None,
        });
        out.push(Rule {
            src,
            src_len: r.header.src_len,
        });
    }
    Ok(out)
}

/// Global (universe-scope) IPv4 addresses of the namespace, `lo` aside.
fn global_v4(src: &mut TargetSources) -> Result<Vec<Address>> {
    Ok(parse_addresses(&src.addresses(AddressFamily::Inet)?)?
        .into_iter()
        .filter(|a| a.scope == AddressScope::Universe && !a.ip.is_loopback())
        .collect())
}

/// Whether the namespace has a default route: an IPv4 one, or, in a namespace without any
/// global IPv4 address (IPv6 only), an IPv6 one.
fn has_default_route(src: &mut TargetSources) -> Result<bool> {
    if parse_routes(&src.routes(AddressFamily::Inet)?)?
        .iter()
        .any(Route::is_default)
    {
        return Ok(true);
    }
    // IPv6 may be off in the namespace: then there is no IPv6 default route either.
    let Ok(v6) = src.routes(AddressFamily::Inet6) else {
        return Ok(false);
    };
    if !parse_routes(&v6)?.iter().any(Route::is_default) {
        return Ok(false);
    }
    Ok(global_v4(src)?.is_empty())
}

/// The node's address for messages: the first global IPv4 address of the configured uplink,
/// else of the interface with the lowest index.
fn node_address(src: &mut TargetSources, uplink: Option<&str>) -> Result<Option<IpAddr>> {
    let mut addrs = global_v4(src)?;
    addrs.sort_by_key(|a| a.index);
    let on_uplink = uplink.and_then(|u| {
        addrs.iter().find(|a| {
            a.label
                .as_deref()
                .is_some_and(|l| l == u || l.strip_prefix(u).is_some_and(|r| r.starts_with(':')))
        })
    });
    Ok(on_uplink.or(addrs.first()).map(|a| a.ip))
}

/// `DefaultRoute`: the node or a Pod without a default route.
pub struct DefaultRoute;

impl Check for DefaultRoute {
    fn name(&self) -> &'static str {
        "DefaultRoute"
    }

    fn probe(&self) -> &'static str {
        "route"
    }

    fn kinds(&self) -> &'static [&'static str] {
        &["DefaultRoute"]
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let mut out = Vec::new();
        let mut pods = Vec::new();
        let uplink = ctx.options.uplink.as_deref();
        for t in &ctx.targets {
            let found = with_namespace(&ctx.procfs, t.ns_path.as_deref(), |src| {
                if has_default_route(src)? {
                    return Ok(None);
                }
                Ok(Some(if t.is_node() {
                    node_address(src, uplink)?
                } else {
                    None
                }))
            });
            match found {
                Ok(None) => {}
                Ok(Some(addr)) if t.is_node() => {
                    let node = addr
                        .map(|a| a.to_string())
                        .or_else(|| label(t, "k8s_node").map(String::from))
                        .unwrap_or_else(|| "node".into());
                    out.push(Problem {
                        kind: "DefaultRoute",
                        msg: format!("default route of node don't exist({node})"),
                        object: vec![("node", node)],
                    });
                }
                Ok(Some(_)) => pods.push(target_name(t)),
                Err(e) if t.is_node() => return Err(e.context("routes of the node")),
                // A Pod's namespace that went away since discovery has no routes to check.
                Err(e) => {
                    tracing::debug!(target = %target_name(t), error = %format!("{e:#}"), "routes not read");
                }
            }
        }
        if !pods.is_empty() {
            pods.sort();
            out.push(Problem {
                kind: "DefaultRoute",
                msg: format!("default route of pod don't exist({})", capped_list(&pods)),
                object: vec![("k8s.pods", pods.join(","))],
            });
        }
        Ok(out)
    }
}

/// A CNI whose Pods are routed by policy-routing rules on the node (`checks.policy_route_cnis`).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
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

/// `PolicyRoute`: Pods of a policy-routing CNI whose rule is missing. Does nothing unless
/// `checks.policy_route_cnis` names a CNI.
pub struct PolicyRoute;

impl Check for PolicyRoute {
    fn name(&self) -> &'static str {
        "PolicyRoute"
    }

    fn probe(&self) -> &'static str {
        "route"
    }

    fn kinds(&self) -> &'static [&'static str] {
        &["PolicyRoute"]
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let cnis = &ctx.options.policy_route_cnis;
        if cnis.is_empty() {
            return Ok(Vec::new());
        }
        let node = ctx
            .targets
            .iter()
            .find(|t| t.is_node())
            .ok_or_else(|| anyhow!("no node namespace among the targets"))?;
        let (routes, links, rules) = with_namespace(&ctx.procfs, node.ns_path.as_deref(), |src| {
            let routes = parse_routes(&src.routes(AddressFamily::Inet)?)?;
            let links = crate::sources::links::names(&src.links()?).context("RTM_GETLINK")?;
            let rules = parse_rules(&src.rules(AddressFamily::Inet)?)?;
            Ok((routes, links, rules))
        })
        .context("routes and rules of the node")?;
        let mut pods = Vec::new();
        for t in ctx.targets.iter().filter(|t| !t.is_node()) {
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

/// A Pod as [`pods_without_routes`] sees it: `<pod>/<namespace>` and its IPs.
pub struct PodIps {
    pub name: String,
    pub ips: Vec<IpAddr>,
}

/// The Pods (sorted) one of whose IPs no route of `routes` covers but a default route: only
/// unicast routes of the main table with a prefix count.
pub fn pods_without_routes(pods: &[PodIps], routes: &[Route]) -> Vec<String> {
    let main = u32::from(RouteHeader::RT_TABLE_MAIN);
    let mut out: Vec<String> = pods
        .iter()
        .filter(|p| {
            p.ips.iter().any(|ip| {
                !routes.iter().any(|r| {
                    r.dst_len > 0
                        && r.table == main
                        && r.kind == RouteType::Unicast
                        && r.covers(*ip)
                })
            })
        })
        .map(|p| p.name.clone())
        .collect();
    out.sort();
    out
}

/// `PodRoute`: Pods of this node whose host-side route is missing (Kubernetes mode).
pub struct PodRoute;

impl Check for PodRoute {
    fn name(&self) -> &'static str {
        "PodRoute"
    }

    fn probe(&self) -> &'static str {
        "route"
    }

    fn kinds(&self) -> &'static [&'static str] {
        &["PodRoute"]
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        // Standalone: namespaces are not Pods with IPs the node must route to.
        let Some(cluster) = ctx.cluster.as_ref() else {
            return Ok(Vec::new());
        };
        let pods: Vec<PodIps> = cluster
            .pods
            .iter()
            .filter(|p| !p.host_network && !p.ips.is_empty())
            .map(|p| PodIps {
                name: format!("{}/{}", p.name, p.namespace),
                ips: p.ips.clone(),
            })
            .collect();
        if pods.is_empty() {
            return Ok(Vec::new());
        }
        let node = ctx
            .targets
            .iter()
            .find(|t| t.is_node())
            .ok_or_else(|| anyhow!("no node namespace among the targets"))?;
        let v6 = pods.iter().any(|p| p.ips.iter().any(IpAddr::is_ipv6));
        let routes = with_namespace(&ctx.procfs, node.ns_path.as_deref(), |src| {
            let mut routes = parse_routes(&src.routes(AddressFamily::Inet)?)?;
            if v6 {
                routes.extend(parse_routes(&src.routes(AddressFamily::Inet6)?)?);
            }
            Ok(routes)
        })
        .context("routes of the node")?;
        let missing = pods_without_routes(&pods, &routes);
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![Problem {
            kind: "PodRoute",
            msg: format!("lack routes of pods({}).", capped_list(&missing)),
            object: vec![("k8s.pods", missing.join(","))],
        }])
    }
}

/// What a cloud's route table says about one of the node's Pod CIDRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VpcRouteState {
    /// Routed to this node: fine.
    Exists,
    /// No route for the CIDR.
    Missing,
    /// The route could not be created: another route holds the CIDR.
    Conflict,
}

/// The provider-specific half of `VpcRoute`. A cloud provider plugs in by implementing this
/// trait (asking its VPC route-table API, with the node's Pod CIDRs from
/// `ctx.cluster`'s `node_cidrs`) and registering `VpcRoute::new(&ItsProvider)` in
/// [`super::CHECKS`] instead of [`VPC_ROUTE`]. Errors (API unreachable, no credentials) are
/// the check's errors, never problems.
pub trait VpcRouteProvider: Sync + Send {
    /// The state of each of the node's Pod CIDRs in the cloud network; empty when there is
    /// nothing to check here.
    fn routes(&self, ctx: &CheckContext) -> Result<Vec<(ipnet::IpNet, VpcRouteState)>>;
}

/// Not on a cloud this agent knows: nothing to check, nothing found.
pub struct NotApplicable;

impl VpcRouteProvider for NotApplicable {
    fn routes(&self, _: &CheckContext) -> Result<Vec<(ipnet::IpNet, VpcRouteState)>> {
        Ok(Vec::new())
    }
}

/// `VpcRoute`: the node's Pod CIDR not routed to it by the cloud network.
pub struct VpcRoute {
    provider: &'static dyn VpcRouteProvider,
}

impl VpcRoute {
    pub const fn new(provider: &'static dyn VpcRouteProvider) -> Self {
        Self { provider }
    }
}

/// The registered `VpcRoute`: no provider.
pub static VPC_ROUTE: VpcRoute = VpcRoute::new(&NotApplicable);

impl Check for VpcRoute {
    fn name(&self) -> &'static str {
        "VpcRoute"
    }

    fn probe(&self) -> &'static str {
        "route"
    }

    fn kinds(&self) -> &'static [&'static str] {
        &["VpcRoute"]
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        Ok(self
            .provider
            .routes(ctx)?
            .into_iter()
            .filter_map(|(cidr, state)| {
                let msg = match state {
                    VpcRouteState::Exists => return None,
                    VpcRouteState::Missing => "vpc route does not exist for this node.",
                    VpcRouteState::Conflict => "vpc route creates failed because of conflict.",
                };
                Some(Problem {
                    kind: "VpcRoute",
                    msg: msg.into(),
                    object: vec![("k8s.node.pod_cidr", cidr.to_string())],
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CheckOptions;

    fn ctx(options: CheckOptions) -> CheckContext {
        CheckContext {
            procfs: "/nonexistent-procfs".into(),
            sysfs: "/nonexistent-sysfs".into(),
            options,
            targets: Vec::new(),
            cluster: None,
            kube: None,
        }
    }

    #[test]
    fn lists_are_capped() {
        let names = |n: usize| (1..=n).map(|i| format!("p{i}/-")).collect::<Vec<_>>();
        assert_eq!(capped_list(&names(1)), "p1/-");
        assert_eq!(capped_list(&names(3)), "p1/-,p2/-,p3/-");
        assert_eq!(capped_list(&names(4)), "p1/-,p2/-,p3/-,...");
    }

    #[test]
    fn targets_are_named() {
        let t = |labels: Vec<(&'static str, &str)>| Target {
            inode: 7,
            ns_path: Some("/x".into()),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
        };
        let pod = t(vec![
            ("k8s_node", "n"),
            ("k8s_namespace", "default"),
            ("k8s_pod", "ng-1"),
        ]);
        assert_eq!(target_name(&pod), "ng-1/default");
        assert_eq!(
            target_attributes(&pod),
            vec![
                ("k8s.namespace.name", "default".to_string()),
                ("k8s.pod.name", "ng-1".to_string())
            ]
        );
        assert_eq!(
            target_name(&t(vec![("k8s_node", "n"), ("netns", "a")])),
            "a/-"
        );
        assert_eq!(target_name(&t(vec![("k8s_node", "n")])), "inode-7/-");
    }

    #[test]
    fn policy_route_and_vpc_route_do_nothing_by_default() {
        let c = ctx(CheckOptions::default());
        assert!(c.options.policy_route_cnis.is_empty());
        // No targets at all: a configured PolicyRoute would fail; the default does not look.
        assert_eq!(PolicyRoute.run(&c).unwrap(), Vec::new());
        assert_eq!(VPC_ROUTE.run(&c).unwrap(), Vec::new());
        // Standalone (no cluster view): PodRoute does not look either.
        assert_eq!(PodRoute.run(&c).unwrap(), Vec::new());
    }

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

    #[test]
    fn pod_route_finds_pods_without_host_routes() {
        let route = |dst: &str, len: u8, table: u32, kind: RouteType| Route {
            dst: Some(dst.parse().unwrap()),
            dst_len: len,
            table,
            kind,
            oif: Some(2),
        };
        let routes = vec![
            // The default route and the local table's routes do not count.
            route("0.0.0.0", 0, 254, RouteType::Unicast),
            route("10.1.0.9", 32, 255, RouteType::Local),
            // Calico-style: a per-Pod /32 and the IPAM block's blackhole.
            route("10.1.0.5", 32, 254, RouteType::Unicast),
            route("10.1.0.0", 26, 254, RouteType::BlackHole),
            // Flannel-style: the node's Pod CIDR on the bridge.
            route("10.2.0.0", 24, 254, RouteType::Unicast),
            // A route in another table is not the node's route to the Pod.
            route("10.3.0.7", 32, 100, RouteType::Unicast),
            route("fd00:1::", 64, 254, RouteType::Unicast),
        ];
        let pod = |name: &str, ips: &[&str]| PodIps {
            name: name.into(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        };
        let pods = vec![
            pod("routed/default", &["10.1.0.5"]),
            pod("blackholed/default", &["10.1.0.6"]),
            pod("bridged/default", &["10.2.0.33", "fd00:1::33"]),
            pod("other-table/default", &["10.3.0.7"]),
            pod("v6-unrouted/default", &["10.2.0.34", "fd00:2::34"]),
            pod("local-only/default", &["10.1.0.9"]),
        ];
        assert_eq!(
            pods_without_routes(&pods, &routes),
            vec![
                "blackholed/default",
                "local-only/default",
                "other-table/default",
                "v6-unrouted/default"
            ]
        );
        assert!(pods_without_routes(&pods[..1], &routes).is_empty());
    }

    #[test]
    fn default_route_and_prefixes() {
        let r = Route {
            dst: None,
            dst_len: 0,
            table: 254,
            kind: RouteType::Unicast,
            oif: Some(2),
        };
        assert!(r.is_default());
        assert!(
            !Route {
                table: 100,
                ..r.clone()
            }
            .is_default()
        );
        assert!(
            !Route {
                kind: RouteType::BlackHole,
                ..r.clone()
            }
            .is_default()
        );
        assert!(prefix_contains(
            Ipv4Addr::new(10, 1, 0, 0),
            16,
            Ipv4Addr::new(10, 1, 200, 3)
        ));
        assert!(!prefix_contains(
            Ipv4Addr::new(10, 1, 0, 0),
            16,
            Ipv4Addr::new(10, 2, 0, 3)
        ));
        assert!(prefix_contains(
            Ipv4Addr::new(10, 1, 0, 5),
            32,
            Ipv4Addr::new(10, 1, 0, 5)
        ));
    }
}
