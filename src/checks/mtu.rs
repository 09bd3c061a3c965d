//! `mtu` / MTUAbnormal: interface MTUs that break traffic.
//!
//! - Any interface of the node or of a Pod (`lo` aside) with an MTU below `checks.mtu_floor`
//!   (default 1280, the least IPv6 works with).
//! - A Pod interface whose MTU is above the node uplink's (`checks.uplink`, else the interface
//!   of the node's default route): the Pod sends packets the node cannot forward unfragmented.
//!
//! MTUs are IFLA_MTU of an RTM_GETLINK dump inside each namespace. Interfaces that are down
//! carry no traffic and are skipped: every namespace holds the fallback tunnel devices
//! (`tunl0`, `sit0`, `ip6tnl0`...) down, with MTUs of their own.

use anyhow::{Context, Result, anyhow};

use super::route::{target_attributes, target_name};
use super::{Check, CheckContext, Problem, default_route_interface};
use crate::sources::links::{self, Link};
use crate::sources::with_namespace;

pub struct MtuAbnormal;

fn links_of(ctx: &CheckContext, t: &crate::inventory::Target) -> Result<Vec<Link>> {
    with_namespace(&ctx.procfs, t.ns_path.as_deref(), |src| {
        links::links(&src.links()?).context("RTM_GETLINK")
    })
}

/// Up interfaces other than `lo`, with their MTU.
fn checked(links: Vec<Link>) -> impl Iterator<Item = (String, u32)> {
    links
        .into_iter()
        .filter(|l| l.up && l.name != "lo")
        .filter_map(|l| Some((l.name, l.mtu?)))
}

fn problem(ifname: String, mtu: u32, mut object: Vec<(&'static str, String)>) -> Problem {
    object.insert(0, ("interface", ifname.clone()));
    Problem {
        kind: "MTUAbnormal",
        msg: format!("{ifname} mtu is {mtu} which is abnormal, please check."),
        object,
    }
}

impl Check for MtuAbnormal {
    fn name(&self) -> &'static str {
        "MTUAbnormal"
    }

    fn probe(&self) -> &'static str {
        "mtu"
    }

    fn kinds(&self) -> &'static [&'static str] {
        &["MTUAbnormal"]
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let floor = ctx.options.mtu_floor;
        let node = ctx
            .targets
            .iter()
            .find(|t| t.is_node())
            .ok_or_else(|| anyhow!("no node namespace among the targets"))?;
        let node_links = links_of(ctx, node).context("interfaces of the node")?;
        let uplink = ctx
            .options
            .uplink
            .clone()
            .or_else(|| default_route_interface(ctx));
        let uplink_mtu = uplink
            .as_deref()
            .and_then(|u| node_links.iter().find(|l| l.name == u))
            .and_then(|l| l.mtu);
        let mut out = Vec::new();
        for (name, mtu) in checked(node_links) {
            if mtu < floor {
                out.push(problem(name, mtu, Vec::new()));
            }
        }
        for t in ctx.targets.iter().filter(|t| !t.is_node()) {
            let links = match links_of(ctx, t) {
                Ok(l) => l,
                // A Pod's namespace that went away since discovery has no interfaces to check.
                Err(e) => {
                    tracing::debug!(target = %target_name(t), error = %format!("{e:#}"), "interfaces not read");
                    continue;
                }
            };
            for (name, mtu) in checked(links) {
                if mtu < floor || uplink_mtu.is_some_and(|u| mtu > u) {
                    out.push(problem(name, mtu, target_attributes(t)));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_shape() {
        let p = problem("eth0".into(), 900, vec![("netns", "a".into())]);
        assert_eq!(p.msg, "eth0 mtu is 900 which is abnormal, please check.");
        assert_eq!(
            p.object,
            vec![("interface", "eth0".into()), ("netns", "a".into())]
        );
    }
}
