//! `DefaultRoute`: the node, or a Pod's network namespace, without a default route. Routes
//! are read with an RTM_GETROUTE dump inside each namespace (a session opened for the run).
//!
//! Which namespaces: the node's and every Pod's (Kubernetes mode), or every namespace found
//! (standalone). Standalone, a namespace whose only interface up is `lo` (a process run with
//! `unshare -n`, a systemd service with `PrivateNetwork=yes`) is left out: it has no route to
//! miss. A Pod always has one, so in Kubernetes mode a Pod without one is reported.
//!
//! How a namespace is named in messages: see [`super::target_name`].

use std::net::IpAddr;

use anyhow::Result;
use netlink_packet_route::AddressFamily;

use super::{Build, Check, CheckContext, Problem, capped_list, is_pod, node_name, target_name};
use crate::component::NoOptions;
use crate::sources::links::links;
use crate::sources::routes::{Route, global_v4, parse_routes};
use crate::sources::{TargetSources, with_namespace};

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

/// Whether the namespace has no interface up but `lo`.
fn loopback_only(src: &mut TargetSources) -> Result<bool> {
    Ok(!links(&src.links()?)?.iter().any(|l| l.up && l.name != "lo"))
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

impl Build for DefaultRoute {
    const NAME: &'static str = "DefaultRoute";
    const PROBE: &'static str = "route";
    const TYPES: &'static [&'static str] = &["DefaultRoute"];
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Check for DefaultRoute {
    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let mut out = Vec::new();
        let mut pods = Vec::new();
        let uplink = ctx.node.uplink.as_deref();
        for t in &ctx.targets {
            let found = with_namespace(&ctx.procfs, t.ns_path.as_deref(), |src| {
                if !t.is_node() && !is_pod(t) && loopback_only(src)? {
                    return Ok(None);
                }
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
                        .or_else(|| node_name(t).map(String::from))
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
