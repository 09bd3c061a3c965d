//! `IPMasqAgentConf` (Kubernetes mode, with `checks.node.vpc_cidr`): the ip-masq-agent
//! ConfigMap does not exempt the VPC CIDR from masquerading, so Pod traffic inside the VPC is
//! NATed for nothing. Read from the agent's watch of that one ConfigMap
//! (`inventory::objects`).

use anyhow::{Context, Result};
use ipnet::IpNet;

use super::{Build, Check, CheckContext, Environment, Problem, needs_kubernetes};
use crate::component::NoOptions;

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

impl Build for IpMasqAgentCheck {
    const NAME: &'static str = "IPMasqAgentConf";
    const PROBE: &'static str = "k8sconfig";
    const TYPES: &'static [&'static str] = &["IPMasqAgentConf"];
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Check for IpMasqAgentCheck {
    fn prerequisites(&self, env: &Environment) -> Result<(), String> {
        needs_kubernetes(env)?;
        match env.node.vpc_cidr {
            Some(_) => Ok(()),
            None => Err("the node network's CIDR is not configured (checks.node.vpc_cidr)".into()),
        }
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let Some(vpc) = ctx.node.vpc_cidr else {
            return Ok(Vec::new());
        };
        // No ip-masq-agent on this cluster: nothing to check.
        let Some(cm) = ctx.objects()?.ip_masq_agent()? else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
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
