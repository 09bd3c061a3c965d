//! `IPVS` (check `IPVSRulesAbnormal`): in kube-proxy's IPVS mode, Services whose IPVS virtual
//! server is missing or whose real servers are not the Service's ready endpoints.
//!
//! - **When it looks**: in Kubernetes mode (standalone, there are no Services to compare
//!   with), where the kernel has the IPVS generic netlink family *and* the node has
//!   kube-proxy's `kube-ipvs0` dummy interface (the family alone only says that `ip_vs` is
//!   loaded, which many nodes in iptables mode have); elsewhere it is unavailable. With
//!   `require_ipvs: true` it always looks, and a kernel without IPVS is an error.
//! - **The IPVS side** is read over generic netlink in the agent's (the node's) namespace:
//!   `CTRL_CMD_GETFAMILY "IPVS"` resolves the family id (no such family: not applicable), an
//!   `IPVS_CMD_GET_SERVICE` dump lists the virtual servers, and one `IPVS_CMD_GET_DEST` dump per
//!   virtual server that a Service expects lists its real servers (`ipvsadm -Ln` does the same;
//!   `sources::ipvs`). Real servers of weight 0 are being drained by kube-proxy (their endpoint
//!   went away) and do not count.
//! - **The API side**, from the agent's watches of Services and EndpointSlices
//!   (`inventory::objects`; no list per run): each Service's `spec.clusterIP` (its primary
//!   family) with each port and protocol, and the ready addresses of its EndpointSlices (every
//!   slice labelled with its name: a Service with thousands of endpoints is whole, unlike in
//!   the core/v1 Endpoints truncated at 1000) on the matching port (by port name) of the same
//!   family; `internalTrafficPolicy: Local` keeps those of this node. Left out: headless and
//!   ExternalName Services, Services of another proxy
//!   (`service.kubernetes.io/service-proxy-name`), Services with topology-aware routing
//!   (`spec.trafficDistribution`, the `service.kubernetes.io/topology-mode` annotation), whose
//!   real servers are a subset the slices' hints decide. Only the cluster IPs' virtual servers
//!   are compared, not those of NodePorts, external or load-balancer IPs.
//! - kube-proxy applies changes within a moment: a Service found abnormal is looked at again
//!   [`CONFIRM_AFTER`] later and reported only if it still is.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Build, Check, CheckContext, Environment, Problem, capped_list, interfaces_in, needs_kubernetes,
    node_name,
};
use crate::inventory::objects::ClusterObjects;
use crate::sources::ipvs::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IpvsReader, IpvsTable};

/// A Service found abnormal is looked at again this much later (kube-proxy may be applying a
/// change right now).
pub const CONFIRM_AFTER: Duration = Duration::from_secs(2);

/// kube-proxy's dummy interface in IPVS mode.
pub const KUBE_IPVS_INTERFACE: &str = "kube-ipvs0";

/// `checks.IPVSRulesAbnormal`.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IpvsOptions {
    /// Look even where the node shows no sign of kube-proxy's IPVS mode; a kernel without
    /// IPVS is then an error.
    pub require_ipvs: bool,
}

/// One port of a Service as IPVS should have it: the virtual server and its real servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedPort {
    pub protocol: u16,
    pub vip: IpAddr,
    pub port: u16,
    pub reals: BTreeSet<(IpAddr, u16)>,
}

/// A Service (`<namespace>/<name>`) and its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedService {
    pub name: String,
    pub ports: Vec<ExpectedPort>,
}

fn protocol_number(p: Option<&str>) -> Option<u16> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(IPPROTO_TCP),
        "UDP" => Some(IPPROTO_UDP),
        "SCTP" => Some(IPPROTO_SCTP),
        _ => None,
    }
}

/// What IPVS should hold for each Service (see the module documentation for what is left
/// out); `node`: this node's name, for `internalTrafficPolicy: Local`. A Service's endpoints
/// are those of every EndpointSlice labelled with its name (a Service with more than 100
/// endpoints has several slices), ready (a condition left unset counts as ready, as the API
/// says), of the Service IP's family.
pub fn expected_services(
    services: &[&Service],
    slices: &[&EndpointSlice],
    node: Option<&str>,
) -> Vec<ExpectedService> {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        if let Some(owner) = owner {
            let ns = slice.metadata.namespace.as_deref().unwrap_or("");
            by_service
                .entry((ns, owner.as_str()))
                .or_default()
                .push(slice);
        }
    }
    let mut out = Vec::new();
    for s in services {
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        let Some(name) = s.metadata.name.as_deref() else {
            continue;
        };
        let Some(spec) = s.spec.as_ref() else {
            continue;
        };
        let label = |k: &str| s.metadata.labels.as_ref().and_then(|l| l.get(k));
        let annotation = |k: &str| {
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .map(String::as_str)
        };
        let topology = [
            "service.kubernetes.io/topology-mode",
            "service.kubernetes.io/topology-aware-hints",
        ]
        .iter()
        .any(|k| {
            annotation(k).is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("disabled"))
        });
        if spec.type_.as_deref() == Some("ExternalName")
            || label("service.kubernetes.io/service-proxy-name").is_some()
            || spec.traffic_distribution.is_some()
            || topology
        {
            continue;
        }
        let Some(vip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let family = if vip.is_ipv4() { "IPv4" } else { "IPv6" };
        let slices: Vec<&EndpointSlice> = by_service
            .get(&(ns, name))
            .into_iter()
            .flatten()
            .copied()
            .filter(|sl| sl.address_type == family)
            .collect();
        let local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let mut ports = Vec::new();
        for sp in spec.ports.iter().flatten() {
            let (Some(protocol), Ok(port)) = (
                protocol_number(sp.protocol.as_deref()),
                u16::try_from(sp.port),
            ) else {
                continue;
            };
            let pname = sp.name.as_deref().unwrap_or("");
            let mut reals = BTreeSet::new();
            for slice in &slices {
                let Some(target) = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| {
                        p.name.as_deref().unwrap_or("") == pname
                            && protocol_number(p.protocol.as_deref()) == Some(protocol)
                    })
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                for e in &slice.endpoints {
                    let ready = e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                    if !ready || (local && e.node_name.as_deref() != node) {
                        continue;
                    }
                    for a in &e.addresses {
                        if let Ok(ip) = a.parse::<IpAddr>() {
                            reals.insert((ip, target));
                        }
                    }
                }
            }
            ports.push(ExpectedPort {
                protocol,
                vip,
                port,
                reals,
            });
        }
        if !ports.is_empty() {
            out.push(ExpectedService {
                name: format!("{ns}/{name}"),
                ports,
            });
        }
    }
    out
}

/// The Services (`<namespace>/<name>`, sorted) whose virtual server is missing from `table` or
/// whose real servers (weight above 0) are not the expected ones.
pub fn abnormal_services(expected: &[ExpectedService], table: &IpvsTable) -> Vec<String> {
    let index: HashMap<(u16, IpAddr, u16), BTreeSet<(IpAddr, u16)>> = table
        .iter()
        .filter(|(vs, _)| vs.fwmark == 0)
        .map(|(vs, reals)| {
            (
                (vs.protocol, vs.addr, vs.port),
                reals
                    .iter()
                    .filter(|r| r.weight > 0)
                    .map(|r| (r.addr, r.port))
                    .collect(),
            )
        })
        .collect();
    let mut out: Vec<String> = expected
        .iter()
        .filter(|s| {
            s.ports.iter().any(|p| {
                index
                    .get(&(p.protocol, p.vip, p.port))
                    .is_none_or(|reals| *reals != p.reals)
            })
        })
        .map(|s| s.name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `svc(<ns>/<name>,...) ipvs rules are abnormal, please check it.`
pub fn ipvs_msg(names: &[String]) -> String {
    format!(
        "svc({}) ipvs rules are abnormal, please check it.",
        capped_list(names)
    )
}

/// `IPVSRulesAbnormal`.
pub struct IpvsRulesAbnormal {
    options: IpvsOptions,
}

impl IpvsRulesAbnormal {
    /// The abnormal Services now.
    fn look(&self, ctx: &CheckContext, objects: &ClusterObjects) -> Result<Vec<String>> {
        let Some(mut reader) = IpvsReader::open()? else {
            bail!(
                "the kernel has no IPVS (no \"IPVS\" generic netlink family: ip_vs is not loaded)"
            );
        };
        let services = objects.services()?;
        let slices = objects.endpoint_slices()?;
        let node = ctx.node().ok().and_then(node_name);
        let services: Vec<&Service> = services.iter().map(|s| &**s).collect();
        let slices: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
        let expected = expected_services(&services, &slices, node);
        let wanted: HashSet<(u16, IpAddr, u16)> = expected
            .iter()
            .flat_map(|s| s.ports.iter().map(|p| (p.protocol, p.vip, p.port)))
            .collect();
        let table = reader
            .table(|vs| vs.fwmark == 0 && wanted.contains(&(vs.protocol, vs.addr, vs.port)))?;
        Ok(abnormal_services(&expected, &table))
    }
}

impl Build for IpvsRulesAbnormal {
    const NAME: &'static str = "IPVSRulesAbnormal";
    const PROBE: &'static str = "IPVS";
    const TYPES: &'static [&'static str] = &["IPVS"];
    type Options = IpvsOptions;

    fn new(options: IpvsOptions) -> Result<Self> {
        Ok(Self { options })
    }
}

impl Check for IpvsRulesAbnormal {
    fn prerequisites(&self, env: &Environment) -> Result<(), String> {
        needs_kubernetes(env)?;
        if self.options.require_ipvs {
            return Ok(());
        }
        match IpvsReader::open() {
            Ok(Some(_)) => {}
            Ok(None) => return Err("the kernel has no IPVS: kube-proxy is not in IPVS mode".into()),
            Err(e) => return Err(format!("cannot ask the kernel about IPVS: {e:#}")),
        }
        let ifaces = interfaces_in(&env.procfs).map_err(|e| format!("{e:#}"))?;
        if ifaces.iter().any(|n| n == KUBE_IPVS_INTERFACE) {
            Ok(())
        } else {
            Err(format!(
                "no {KUBE_IPVS_INTERFACE} interface: kube-proxy is not in IPVS mode"
            ))
        }
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let objects = ctx.objects()?;
        let first = self.look(ctx, objects)?;
        if first.is_empty() {
            return Ok(Vec::new());
        }
        std::thread::sleep(CONFIRM_AFTER);
        let again = self.look(ctx, objects)?;
        let names: Vec<String> = first.into_iter().filter(|n| again.contains(n)).collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![Problem {
            kind: "IPVS",
            msg: ipvs_msg(&names),
            object: vec![("k8s.services", names.join(","))],
        }])
    }
}

#[cfg(test)]
mod tests {
    //! The comparison on the IPVS table of the fixtures `sources::ipvs` tests its parsers on
    //! (`tests/fixtures/ipvs/`), against Services and Endpoints as the API server returns them.

    use std::path::PathBuf;

    use super::*;
    use crate::sources::ipvs::{parse_dests, parse_services};

    /// The IPVS family id of the fixtures.
    const FAMILY: u16 = 0x22;

    fn fixture(name: &str) -> Vec<u8> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ipvs")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The table of the fixtures: each virtual server with the real servers of its dump.
    fn fixture_table() -> IpvsTable {
        let f = FAMILY;
        parse_services(&fixture("services.bin"), f)
            .unwrap()
            .into_iter()
            .filter(|v| v.fwmark == 0 && v.port != 30000)
            .map(|v| {
                let proto = if v.protocol == IPPROTO_UDP {
                    "udp"
                } else {
                    "tcp"
                };
                let addr = v.addr.to_string().replace(':', ".");
                let reals = parse_dests(
                    &fixture(&format!("dests-{proto}-{addr}-{}.bin", v.port)),
                    f,
                    v.af,
                )
                .unwrap();
                (v, reals)
            })
            .collect()
    }

    fn objects<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Vec<T> {
        serde_json::from_value(v).unwrap()
    }

    /// The cluster the fixtures were built for (objects as the API server returns them).
    fn cluster() -> (serde_json::Value, serde_json::Value) {
        let services = serde_json::json!([
            { "metadata": { "namespace": "default", "name": "kubernetes" },
              "spec": { "type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                        "ports": [{ "name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443 }] } },
            { "metadata": { "namespace": "kube-system", "name": "kube-dns" },
              "spec": { "type": "ClusterIP", "clusterIP": "10.96.0.10",
                        "ports": [{ "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53 },
                                  { "name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53 },
                                  { "name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153 }] } },
            { "metadata": { "namespace": "shop", "name": "web" },
              "spec": { "type": "NodePort", "clusterIP": "10.96.100.7", "clusterIPs": ["10.96.100.7", "fd00:10:96::7"],
                        "ipFamilies": ["IPv4", "IPv6"], "internalTrafficPolicy": "Cluster",
                        "ports": [{ "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30000 }] } },
            { "metadata": { "namespace": "shop", "name": "headless" },
              "spec": { "type": "ClusterIP", "clusterIP": "None", "ports": [{ "port": 80 }] } },
            { "metadata": { "namespace": "shop", "name": "ext" },
              "spec": { "type": "ExternalName", "externalName": "example.org" } },
        ]);
        // Each Service's EndpointSlices; kube-dns's endpoints spread over two slices.
        let slice = |ns: &str,
                     name: &str,
                     service: &str,
                     family: &str,
                     endpoints: serde_json::Value,
                     ports: serde_json::Value| {
            serde_json::json!({
                "metadata": { "namespace": ns, "name": name,
                              "labels": { "kubernetes.io/service-name": service } },
                "addressType": family, "endpoints": endpoints, "ports": ports })
        };
        let dns_ports = serde_json::json!([{ "name": "dns", "port": 53, "protocol": "UDP" },
                                           { "name": "dns-tcp", "port": 53, "protocol": "TCP" },
                                           { "name": "metrics", "port": 9153, "protocol": "TCP" }]);
        let slices = serde_json::json!([
            slice(
                "default",
                "kubernetes",
                "kubernetes",
                "IPv4",
                serde_json::json!([{ "addresses": ["192.0.2.10"], "conditions": { "ready": true } }]),
                serde_json::json!([{ "name": "https", "port": 6443, "protocol": "TCP" }])
            ),
            slice(
                "kube-system",
                "kube-dns-a1",
                "kube-dns",
                "IPv4",
                serde_json::json!([{ "addresses": ["10.244.0.5"], "nodeName": "node-a", "conditions": { "ready": true } }]),
                dns_ports.clone()
            ),
            slice(
                "kube-system",
                "kube-dns-b2",
                "kube-dns",
                "IPv4",
                serde_json::json!([{ "addresses": ["10.244.1.7"], "nodeName": "node-b" }]),
                dns_ports
            ),
            slice(
                "shop",
                "web-x1",
                "web",
                "IPv4",
                serde_json::json!([{ "addresses": ["10.244.0.9"], "nodeName": "node-a", "conditions": { "ready": true } },
                                     { "addresses": ["10.244.2.4"], "nodeName": "node-c", "conditions": { "ready": true } },
                                     { "addresses": ["10.244.1.3"], "nodeName": "node-b", "conditions": { "ready": false } }]),
                serde_json::json!([{ "name": "", "port": 8080, "protocol": "TCP" }])
            ),
            // The web Service's IPv6 slice: not of its primary family.
            slice(
                "shop",
                "web-x6",
                "web",
                "IPv6",
                serde_json::json!([{ "addresses": ["fd00:10:244::9"], "nodeName": "node-a" }]),
                serde_json::json!([{ "name": "", "port": 8080, "protocol": "TCP" }])
            ),
            slice(
                "shop",
                "headless-h1",
                "headless",
                "IPv4",
                serde_json::json!([{ "addresses": ["10.244.0.77"] }]),
                serde_json::json!([{ "port": 80, "protocol": "TCP" }])
            ),
        ]);
        (services, slices)
    }

    fn expected(
        services: serde_json::Value,
        slices: serde_json::Value,
        node: Option<&str>,
    ) -> Vec<ExpectedService> {
        let services: Vec<Service> = objects(services);
        let slices: Vec<EndpointSlice> = objects(slices);
        let services: Vec<&Service> = services.iter().collect();
        let slices: Vec<&EndpointSlice> = slices.iter().collect();
        expected_services(&services, &slices, node)
    }

    fn abnormal(
        services: serde_json::Value,
        slices: serde_json::Value,
        node: Option<&str>,
    ) -> Vec<String> {
        abnormal_services(&expected(services, slices, node), &fixture_table())
    }

    #[test]
    fn matching_rules_are_normal() {
        let (services, endpoints) = cluster();
        let expected = expected(services.clone(), endpoints.clone(), Some("node-a"));
        let names: Vec<&str> = expected.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["default/kubernetes", "kube-system/kube-dns", "shop/web"]
        );
        assert_eq!(
            expected[2].ports,
            vec![ExpectedPort {
                protocol: IPPROTO_TCP,
                vip: v4("10.96.100.7"),
                port: 80,
                reals: [(v4("10.244.0.9"), 8080), (v4("10.244.2.4"), 8080)].into(),
            }]
        );
        assert_eq!(
            abnormal(services, endpoints, Some("node-a")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn differences_make_services_abnormal() {
        let (services, endpoints) = cluster();
        // A ready endpoint IPVS does not have.
        let mut e = endpoints.clone();
        e[3]["endpoints"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "addresses": ["10.244.3.3"] }));
        assert_eq!(abnormal(services.clone(), e, None), ["shop/web"]);
        // A real server whose endpoint is gone (and that kube-proxy did not drain): one of
        // kube-dns's two slices is gone.
        let mut e = endpoints.clone();
        e.as_array_mut().unwrap().remove(2);
        assert_eq!(
            abnormal(services.clone(), e, None),
            ["kube-system/kube-dns"]
        );
        // No EndpointSlices at all: the virtual servers must have no real server.
        let e = serde_json::json!([endpoints[0], endpoints[1], endpoints[2]]);
        assert_eq!(abnormal(services.clone(), e, None), ["shop/web"]);
        // A Service without its virtual server; and one of its ports without one.
        let mut s = services.clone();
        s.as_array_mut().unwrap().push(serde_json::json!(
            { "metadata": { "namespace": "shop", "name": "cart" },
              "spec": { "type": "ClusterIP", "clusterIP": "10.96.100.8", "ports": [{ "port": 80, "protocol": "TCP" }] } }
        ));
        s[0]["spec"]["ports"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "name": "alt", "port": 8443, "protocol": "TCP" }));
        assert_eq!(
            abnormal(s, endpoints.clone(), None),
            ["default/kubernetes", "shop/cart"]
        );
    }

    #[test]
    fn services_ipvs_cannot_be_compared_with_are_left_out() {
        let (services, endpoints) = cluster();
        let mut e = endpoints.clone();
        e[3]["endpoints"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "addresses": ["10.244.3.3"] }));
        // Topology-aware routing, another proxy: not compared.
        for (path, value) in [
            (
                "/spec/trafficDistribution",
                serde_json::json!("PreferClose"),
            ),
            (
                "/metadata/annotations",
                serde_json::json!({ "service.kubernetes.io/topology-mode": "Auto" }),
            ),
            (
                "/metadata/labels",
                serde_json::json!({ "service.kubernetes.io/service-proxy-name": "other" }),
            ),
        ] {
            let mut s = services.clone();
            let (parent, key) = path.rsplit_once('/').unwrap();
            s[2].pointer_mut(parent).unwrap()[key] = value;
            assert!(abnormal(s, e.clone(), None).is_empty(), "{path}");
        }
        // internalTrafficPolicy Local: only this node's endpoints are real servers.
        let mut s = services.clone();
        s[2]["spec"]["internalTrafficPolicy"] = "Local".into();
        let expected = expected(s.clone(), endpoints.clone(), Some("node-c"));
        assert_eq!(
            expected[2].ports[0].reals,
            [(v4("10.244.2.4"), 8080)].into()
        );
        assert_eq!(abnormal(s, endpoints, Some("node-c")), ["shop/web"]);
    }

    /// A Service of 2,500 endpoints, in three slices as the EndpointSlice controller cuts
    /// them (at most 1,000 each), against an IPVS table with all of them: normal. The core/v1
    /// Endpoints object would have held only the first 1,000.
    #[test]
    fn a_service_of_thousands_of_endpoints_is_whole() {
        use crate::sources::ipvs::{RealServer, VirtualServer};
        let ip = |i: usize| format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
        let services = serde_json::json!([
            { "metadata": { "namespace": "shop", "name": "big" },
              "spec": { "type": "ClusterIP", "clusterIP": "10.96.200.1",
                        "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080 }] } },
        ]);
        let slices: Vec<serde_json::Value> = [(0, 1000), (1000, 2000), (2000, 2500)]
            .iter()
            .enumerate()
            .map(|(n, (from, to))| {
                let endpoints: Vec<serde_json::Value> = (*from..*to)
                    .map(|i| serde_json::json!({ "addresses": [ip(i)], "conditions": { "ready": true } }))
                    .collect();
                serde_json::json!({
                    "metadata": { "namespace": "shop", "name": format!("big-{n}"),
                                  "labels": { "kubernetes.io/service-name": "big" } },
                    "addressType": "IPv4", "endpoints": endpoints,
                    "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }] })
            })
            .collect();
        let vs = VirtualServer {
            af: libc::AF_INET as u16,
            protocol: IPPROTO_TCP,
            addr: v4("10.96.200.1"),
            port: 80,
            fwmark: 0,
            scheduler: "rr".into(),
        };
        let reals = |n: usize| -> Vec<RealServer> {
            (0..n)
                .map(|i| RealServer {
                    addr: v4(&ip(i)),
                    port: 8080,
                    fwd_method: 0,
                    weight: 1,
                })
                .collect()
        };
        let expected = expected(services.clone(), serde_json::json!(slices), None);
        assert_eq!(expected[0].ports[0].reals.len(), 2500);
        let table: IpvsTable = vec![(vs.clone(), reals(2500))];
        assert!(abnormal_services(&expected, &table).is_empty());
        // IPVS with only the first 1,000 (what a reader of Endpoints would expect): abnormal.
        let table: IpvsTable = vec![(vs, reals(1000))];
        assert_eq!(abnormal_services(&expected, &table), ["shop/big"]);
    }

    #[test]
    fn message_keeps_the_spec_shape() {
        let names: Vec<String> = ["kube-system/nginx-11222", "a/b", "c/d", "e/f"]
            .map(String::from)
            .into();
        assert_eq!(
            ipvs_msg(&names[..1]),
            "svc(kube-system/nginx-11222) ipvs rules are abnormal, please check it."
        );
        assert_eq!(
            ipvs_msg(&names),
            "svc(kube-system/nginx-11222,a/b,c/d,...) ipvs rules are abnormal, please check it."
        );
    }

    #[test]
    fn options() {
        let o = |y: &str| serde_yaml::from_str::<IpvsOptions>(y).map(|o| o.require_ipvs);
        assert!(!o("{}").unwrap());
        assert!(o("require_ipvs: true").unwrap());
        assert!(o("ipvs: true").is_err());
    }

    #[test]
    fn unavailable_standalone() {
        let env = Environment {
            procfs: "/proc".into(),
            kubernetes: false,
            node: Default::default(),
        };
        let check = IpvsRulesAbnormal::new(IpvsOptions { require_ipvs: true }).unwrap();
        assert!(
            check
                .prerequisites(&env)
                .unwrap_err()
                .contains("standalone")
        );
    }
}
