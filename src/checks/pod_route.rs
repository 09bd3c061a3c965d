//! `PodRoute` (Kubernetes mode): Pods of this node with their own IP whose host-side route is
//! missing: no unicast route of the node's main table, other than a default route, covers the
//! Pod's IP (per-Pod `/32` routes to the Pod's veth, a connected or a Pod-CIDR route all do; a
//! `blackhole` route of an IPAM block does not).

use std::net::IpAddr;

use anyhow::{Context, Result};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{RouteHeader, RouteType};

use super::{Build, Check, CheckContext, Environment, Problem, capped_list, needs_kubernetes};
use crate::component::NoOptions;
use crate::sources::routes::{Route, parse_routes};
use crate::sources::with_namespace;

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

impl Build for PodRoute {
    const NAME: &'static str = "PodRoute";
    const PROBE: &'static str = "route";
    const TYPES: &'static [&'static str] = &["PodRoute"];
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Check for PodRoute {
    /// Standalone, namespaces are not Pods with IPs the node must route to.
    fn prerequisites(&self, env: &Environment) -> Result<(), String> {
        needs_kubernetes(env)
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
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
        let node = ctx.node()?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
