//! `CIDRConflict` (Kubernetes mode): any two of the node network (VPC), Service, Pod and
//! docker0 CIDRs overlap, so some traffic goes to the wrong place.

use anyhow::{Context, Result};
use ipnet::IpNet;

use super::{Build, Check, CheckContext, Environment, Problem, needs_kubernetes};
use crate::component::NoOptions;
use crate::sources::routes::parse_addresses;

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
    let node = ctx.node()?;
    let reply = crate::sources::with_namespace(&ctx.procfs, node.ns_path.as_deref(), |src| {
        src.addresses(netlink_packet_route::AddressFamily::Inet)
    })
    .context("addresses of the node")?;
    let addrs = parse_addresses(&reply)?;
    Ok(addrs
        .into_iter()
        .find(|a| a.label.as_deref() == Some("docker0"))
        .and_then(|a| IpNet::new(a.ip, a.prefix_len).ok())
        .map(|n| n.trunc()))
}

impl Build for CidrConflictCheck {
    const NAME: &'static str = "CIDRConflict";
    const PROBE: &'static str = "k8sconfig";
    const TYPES: &'static [&'static str] = &["CIDRConflict"];
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Check for CidrConflictCheck {
    fn prerequisites(&self, env: &Environment) -> Result<(), String> {
        needs_kubernetes(env)
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let Some(cluster) = ctx.cluster.as_ref() else {
            return Ok(Vec::new());
        };
        let msg = cidr_conflict_msg(
            ctx.node.vpc_cidr,
            ctx.node.service_cidr,
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
    fn message_keeps_the_spec_shape() {
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
}
