//! `k8sconfig`: cluster configuration that changes how Pod traffic behaves, read from the API
//! server (Kubernetes mode only; elsewhere these checks find nothing):
//! - NetworkPolicy: NetworkPolicy objects exist (traffic may be dropped by policy);
//! - SVCTrafficPolicy: Services with `externalTrafficPolicy`/`internalTrafficPolicy: Local`
//!   (traffic to nodes without a local endpoint is dropped);
//! - IPMasqAgentConf: the ip-masq-agent ConfigMap does not exempt the VPC/cluster CIDR;
//! - CIDRConflict: any two of the node network (VPC), Service, Pod and docker0 CIDRs overlap.

use anyhow::{Context, Result};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::ListParams;

use super::{Check, CheckContext, Problem};

/// Renders names as the spec's messages do: at most 3, then `...`.
pub fn capped(names: &[String]) -> String {
    let mut out: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
    if names.len() > 3 {
        out.push("...");
    }
    out.join(",")
}

/// How long a check waits for one API call: the client's own timeouts are minutes long (made
/// for watches), and the checks run one after the other.
pub const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs an API call on the agent's runtime from a check's (blocking) thread, for at most
/// [`API_TIMEOUT`].
pub(super) fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    let handle =
        tokio::runtime::Handle::try_current().context("no async runtime for the API call")?;
    // Checks run on blocking-pool threads, where blocking on the runtime is allowed.
    handle
        .block_on(async { tokio::time::timeout(API_TIMEOUT, f).await })
        .map_err(|_| anyhow::anyhow!("the API server did not answer within {API_TIMEOUT:?}"))
}

pub struct NetworkPolicyCheck;

impl Check for NetworkPolicyCheck {
    fn name(&self) -> &'static str {
        "NetworkPolicy"
    }
    fn probe(&self) -> &'static str {
        "k8sconfig"
    }
    fn kinds(&self) -> &'static [&'static str] {
        &["NetworkPolicy"]
    }
    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let Some(client) = ctx.kube.clone() else {
            return Ok(Vec::new());
        };
        let api: Api<NetworkPolicy> = Api::all(client);
        let list =
            block_on(api.list(&ListParams::default().limit(1)))?.context("list NetworkPolicies")?;
        Ok(if list.items.is_empty() {
            Vec::new()
        } else {
            vec![Problem {
                kind: "NetworkPolicy",
                msg: "network policy is configured,please use it carefully.".into(),
                object: Vec::new(),
            }]
        })
    }
}

pub struct TrafficPolicyCheck;

/// `externalTrafficPolicy of svc(a/ns,...) is Local, internalTrafficPolicy of svc (b/ns,...) is
/// Local, please check it.` — each half only when some Service has it.
pub fn traffic_policy_msg(external: &[String], internal: &[String]) -> Option<String> {
    let mut parts = Vec::new();
    if !external.is_empty() {
        parts.push(format!(
            "externalTrafficPolicy of svc({}) is Local",
            capped(external)
        ));
    }
    if !internal.is_empty() {
        parts.push(format!(
            "internalTrafficPolicy of svc ({}) is Local",
            capped(internal)
        ));
    }
    (!parts.is_empty()).then(|| format!("{}, please check it.", parts.join(", ")))
}

impl Check for TrafficPolicyCheck {
    fn name(&self) -> &'static str {
        "SVCTrafficPolicy"
    }
    fn probe(&self) -> &'static str {
        "k8sconfig"
    }
    fn kinds(&self) -> &'static [&'static str] {
        &["LocalTrafficPolicy"]
    }
    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let Some(client) = ctx.kube.clone() else {
            return Ok(Vec::new());
        };
        let api: Api<Service> = Api::all(client);
        let list = block_on(api.list(&ListParams::default()))?.context("list Services")?;
        let (mut external, mut internal) = (Vec::new(), Vec::new());
        for s in &list.items {
            let name = format!(
                "{}/{}",
                s.metadata.name.as_deref().unwrap_or(""),
                s.metadata.namespace.as_deref().unwrap_or("")
            );
            let spec = s.spec.as_ref();
            if spec.and_then(|sp| sp.external_traffic_policy.as_deref()) == Some("Local") {
                external.push(name.clone());
            }
            if spec.and_then(|sp| sp.internal_traffic_policy.as_deref()) == Some("Local") {
                internal.push(name);
            }
        }
        external.sort();
        internal.sort();
        Ok(traffic_policy_msg(&external, &internal)
            .map(|msg| Problem {
                kind: "LocalTrafficPolicy",
                msg,
                object: Vec::new(),
            })
            .into_iter()
            .collect())
    }
}

pub struct IpMasqAgentCheck;

/// What the ip-masq-agent does not masquerade when its config does not say
/// (`nonMasqueradeCIDRs` absent, or no config at all): the RFC 1918 ranges.
pub const IP_MASQ_AGENT_DEFAULTS: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

/// The nonMasqueradeCIDRs of an ip-masq-agent config (YAML or JSON, the ConfigMap's `config`
/// entry). As the agent itself reads it, what the config leaves out keeps its default: an
/// empty config, or one without `nonMasqueradeCIDRs`, means [`IP_MASQ_AGENT_DEFAULTS`].
pub fn non_masquerade_cidrs(config: &str) -> Result<Vec<IpNet>> {
    #[derive(serde::Deserialize)]
    struct MasqConfig {
        #[serde(rename = "nonMasqueradeCIDRs", default)]
        non_masquerade_cidrs: Option<Vec<String>>,
    }
    let listed = if config.trim().is_empty() {
        None
    } else {
        let c: MasqConfig = serde_yaml::from_str(config).context("ip-masq-agent config")?;
        c.non_masquerade_cidrs
    };
    let cidrs = listed.unwrap_or_else(|| IP_MASQ_AGENT_DEFAULTS.map(String::from).to_vec());
    cidrs
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .with_context(|| format!("bad CIDR {s:?}"))
        })
        .collect()
}

/// The first and last address of a network, as numbers (IPv4 in the low 32 bits).
fn bounds(n: &IpNet) -> (u128, u128) {
    match n {
        IpNet::V4(v) => (
            u128::from(u32::from(v.network())),
            u128::from(u32::from(v.broadcast())),
        ),
        IpNet::V6(v) => (u128::from(v.network()), u128::from(v.broadcast())),
    }
}

/// Whether every address of `inner` lies in one of `outer`, or in several of them together.
pub fn covered(inner: &IpNet, outer: &[IpNet]) -> bool {
    let mut ranges: Vec<(u128, u128)> = outer
        .iter()
        .filter(|o| o.addr().is_ipv4() == inner.addr().is_ipv4())
        .map(bounds)
        .collect();
    ranges.sort();
    let (start, end) = bounds(inner);
    // Walk the ranges in order, extending what is covered from `start` on.
    let mut reach = start;
    for (lo, hi) in ranges {
        if lo > reach {
            break;
        }
        if hi >= reach {
            if hi >= end {
                return true;
            }
            reach = hi + 1;
        }
    }
    false
}

impl Check for IpMasqAgentCheck {
    fn name(&self) -> &'static str {
        "IPMasqAgentConf"
    }
    fn probe(&self) -> &'static str {
        "k8sconfig"
    }
    fn kinds(&self) -> &'static [&'static str] {
        &["IPMasqAgentConf"]
    }
    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let (Some(client), Some(vpc)) = (ctx.kube.clone(), ctx.options.vpc_cidr) else {
            return Ok(Vec::new());
        };
        let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
        // No ip-masq-agent on this cluster: nothing to check.
        let Some(cm) = block_on(api.get_opt("ip-masq-agent"))?
            .context("get ConfigMap kube-system/ip-masq-agent")?
        else {
            return Ok(Vec::new());
        };
        let config = cm
            .data
            .as_ref()
            .and_then(|d| d.get("config"))
            .cloned()
            .unwrap_or_default();
        let cidrs = non_masquerade_cidrs(&config)?;
        Ok(if covered(&vpc, &cidrs) {
            Vec::new()
        } else {
            vec![Problem {
                kind: "IPMasqAgentConf",
                msg: "NonMasqueradeCIDRs does not contain vpc cidr, it will reduce pod network performance.".into(),
                object: vec![("k8s.configmap.name", "kube-system/ip-masq-agent".into())],
            }]
        })
    }
}

pub struct CidrConflictCheck;

/// `cidr conflicts:vpc cidr A, svc cidr B, pod cidr C, docker cidr D.` when any two of the known
/// CIDRs overlap (unknown ones are left out of the message).
pub fn cidr_conflict_msg(
    vpc: Option<IpNet>,
    svc: Option<IpNet>,
    pods: &[IpNet],
    docker: Option<IpNet>,
) -> Option<String> {
    let mut all: Vec<(&str, IpNet)> = Vec::new();
    all.extend(vpc.map(|c| ("vpc", c)));
    all.extend(svc.map(|c| ("svc", c)));
    all.extend(pods.iter().map(|c| ("pod", *c)));
    all.extend(docker.map(|c| ("docker", c)));
    let overlap = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
    let conflict = all
        .iter()
        .enumerate()
        .any(|(i, (_, a))| all.iter().skip(i + 1).any(|(_, b)| overlap(a, b)));
    if !conflict {
        return None;
    }
    let parts: Vec<String> = all.iter().map(|(k, c)| format!("{k} cidr {c}")).collect();
    Some(format!("cidr conflicts:{}.", parts.join(", ")))
}

/// The IPv4 network of the node's docker0 bridge, if there is one.
fn docker0(ctx: &CheckContext) -> Result<Option<IpNet>> {
    let node = ctx
        .targets
        .iter()
        .find(|t| t.is_node())
        .context("no node namespace among the targets")?;
    let reply = crate::sources::with_namespace(&ctx.procfs, node.ns_path.as_deref(), |src| {
        src.addresses(netlink_packet_route::AddressFamily::Inet)
    })
    .context("addresses of the node")?;
    let addrs = super::route::parse_addresses(&reply)?;
    Ok(addrs
        .into_iter()
        .find(|a| a.label.as_deref() == Some("docker0"))
        .and_then(|a| IpNet::new(a.ip, a.prefix_len).ok())
        .map(|n| n.trunc()))
}

impl Check for CidrConflictCheck {
    fn name(&self) -> &'static str {
        "CIDRConflict"
    }
    fn probe(&self) -> &'static str {
        "k8sconfig"
    }
    fn kinds(&self) -> &'static [&'static str] {
        &["CIDRConflict"]
    }
    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let Some(cluster) = ctx.cluster.as_ref() else {
            return Ok(Vec::new());
        };
        let msg = cidr_conflict_msg(
            ctx.options.vpc_cidr,
            ctx.options.service_cidr,
            &cluster.node_cidrs,
            docker0(ctx)?,
        );
        Ok(msg
            .map(|msg| Problem {
                kind: "CIDRConflict",
                msg,
                object: Vec::new(),
            })
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn messages_keep_the_spec_shape() {
        let names: Vec<String> = ["a/x", "b/x", "c/x", "d/x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            traffic_policy_msg(&names[..1], &names[..1]).unwrap(),
            "externalTrafficPolicy of svc(a/x) is Local, internalTrafficPolicy of svc (a/x) is Local, please check it."
        );
        assert_eq!(
            traffic_policy_msg(&names, &[]).unwrap(),
            "externalTrafficPolicy of svc(a/x,b/x,c/x,...) is Local, please check it."
        );
        assert_eq!(traffic_policy_msg(&[], &[]), None);
        assert_eq!(
            cidr_conflict_msg(
                Some(n("172.31.0.0/16")),
                Some(n("10.254.0.0/16")),
                &[n("192.168.0.0/16")],
                Some(n("172.31.0.0/16"))
            )
            .unwrap(),
            "cidr conflicts:vpc cidr 172.31.0.0/16, svc cidr 10.254.0.0/16, pod cidr 192.168.0.0/16, docker cidr 172.31.0.0/16."
        );
        assert_eq!(
            cidr_conflict_msg(
                Some(n("172.31.0.0/16")),
                Some(n("10.254.0.0/16")),
                &[n("192.168.0.0/16")],
                None
            ),
            None
        );
    }

    #[test]
    fn masquerade_config() {
        let c = "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 172.16.0.0/12\nmasqLinkLocal: false\n";
        let cidrs = non_masquerade_cidrs(c).unwrap();
        assert!(covered(&n("10.1.0.0/16"), &cidrs));
        assert!(!covered(&n("192.168.0.0/16"), &cidrs));
        assert!(non_masquerade_cidrs("nonMasqueradeCIDRs: [nope]").is_err());
        assert!(
            non_masquerade_cidrs("nonMasqueradeCIDRs: []")
                .unwrap()
                .is_empty()
        );
        // What the config leaves out keeps the agent's defaults.
        let defaults: Vec<IpNet> = IP_MASQ_AGENT_DEFAULTS.iter().map(|c| n(c)).collect();
        assert_eq!(non_masquerade_cidrs("{}").unwrap(), defaults);
        assert_eq!(non_masquerade_cidrs("").unwrap(), defaults);
        assert_eq!(
            non_masquerade_cidrs("masqLinkLocal: true\n").unwrap(),
            defaults
        );
        // Covered by several together; not with a gap; families apart.
        let halves = [n("10.1.0.0/17"), n("10.1.128.0/17")];
        assert!(covered(&n("10.1.0.0/16"), &halves));
        assert!(covered(
            &n("10.1.0.0/16"),
            &[n("10.1.0.0/17"), n("10.1.64.0/18"), n("10.1.128.0/17")]
        ));
        assert!(!covered(
            &n("10.1.0.0/16"),
            &[n("10.1.0.0/17"), n("10.1.129.0/24"), n("10.1.130.0/23")]
        ));
        assert!(!covered(&n("10.1.0.0/16"), &[n("10.1.0.0/17")]));
        assert!(covered(
            &n("255.255.255.0/24"),
            &[n("255.255.255.0/25"), n("255.255.255.128/25")]
        ));
        assert!(!covered(&n("10.1.0.0/16"), &[n("::/0")]));
        assert!(covered(
            &n("fd00::/64"),
            &[n("fd00::/65"), n("fd00::8000:0:0:0/65")]
        ));
    }
}
