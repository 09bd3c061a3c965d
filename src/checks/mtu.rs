//! `mtu` / MTUAbnormal: interface MTUs that break traffic.
//!
//! - Any interface of the node or of a Pod (`lo` aside) with an MTU below
//!   `checks.MTUAbnormal.floor` (default 1280, the least IPv6 works with).
//! - A Pod interface whose MTU is above the node uplink's (`checks.node.uplink`, else the
//!   interface of the node's default route): the Pod sends packets the node cannot forward
//!   unfragmented.
//!
//! MTUs are IFLA_MTU of an RTM_GETLINK dump inside each namespace. Interfaces that are down
//! carry no traffic and are skipped: every namespace holds the fallback tunnel devices
//! (`tunl0`, `sit0`, `ip6tnl0`...) down, with MTUs of their own.

use anyhow::{Context, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Build, Check, CheckContext, Problem, target_attributes, target_name, uplink};
use crate::sources::links::{self, Link};
use crate::sources::with_namespace;

pub struct MtuAbnormal {
    options: MtuOptions,
}

/// `checks.MTUAbnormal`.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MtuOptions {
    /// An interface (the node's or a Pod's, `lo` aside) with an MTU below this is abnormal.
    /// 1280 is the least IPv6 works with.
    pub floor: u32,
}

impl Default for MtuOptions {
    fn default() -> Self {
        Self { floor: 1280 }
    }
}

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

impl Build for MtuAbnormal {
    const NAME: &'static str = "MTUAbnormal";
    const PROBE: &'static str = "mtu";
    const TYPES: &'static [&'static str] = &["MTUAbnormal"];
    type Options = MtuOptions;

    fn new(options: MtuOptions) -> Result<Self> {
        Ok(Self { options })
    }
}

impl Check for MtuAbnormal {
    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let floor = self.options.floor;
        let node_links = links_of(ctx, ctx.node()?).context("interfaces of the node")?;
        let uplink_mtu = uplink(ctx)
            .as_deref()
            .and_then(|u| node_links.iter().find(|l| l.name == u))
            .and_then(|l| l.mtu);
        let mut out = Vec::new();
        for (name, mtu) in checked(node_links) {
            if mtu < floor {
                out.push(problem(name, mtu, Vec::new()));
            }
        }
        for t in ctx.pods() {
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
