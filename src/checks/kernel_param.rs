//! `KernelParam`: kernel parameters that break Pod networking when set the wrong way:
//! strict reverse-path filtering on Pod-facing interfaces, SYN cookies off, conntrack strict
//! about TCP windows, selective ACK off, proxy ARP on the uplink. Expected values are
//! configurable (`checks.expect_*`).

use anyhow::Result;

use super::{Check, CheckContext, Problem, default_route_interface, node_interfaces};

pub struct KernelParam;

fn problem(kind: &'static str, sysctl: &str, current: &str, expect: u32) -> Problem {
    Problem {
        kind,
        msg: format!("{sysctl}:current_value={current},expect_value={expect}"),
        object: vec![("sysctl", sysctl.to_string())],
    }
}

impl Check for KernelParam {
    fn name(&self) -> &'static str {
        "KernelParam"
    }

    fn kinds(&self) -> &'static [&'static str] {
        &[
            "RPFilterKernelParam",
            "TCPSyncookiesKernelParam",
            "LiberalKernelParam",
            "TCPSackKernelParam",
            "ProxyARPKernelParam",
        ]
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let o = &ctx.options;
        let mut out = Vec::new();
        for ifname in node_interfaces(ctx)? {
            if !o
                .pod_interface_prefixes
                .iter()
                .any(|p| ifname.starts_with(p.as_str()))
            {
                continue;
            }
            let sysctl = format!("net.ipv4.conf.{ifname}.rp_filter");
            // An interface that vanished since the listing is not a problem.
            let Ok(v) = ctx.sysctl(&sysctl) else { continue };
            if v != o.expect_rp_filter.to_string() {
                let mut p = problem("RPFilterKernelParam", &sysctl, &v, o.expect_rp_filter);
                p.object.push(("interface", ifname.clone()));
                out.push(p);
            }
        }
        for (kind, sysctl, expect, optional) in [
            (
                "TCPSyncookiesKernelParam",
                "net.ipv4.tcp_syncookies",
                o.expect_tcp_syncookies,
                false,
            ),
            // Exists only with the conntrack module loaded.
            (
                "LiberalKernelParam",
                "net.netfilter.nf_conntrack_tcp_be_liberal",
                o.expect_tcp_be_liberal,
                true,
            ),
            (
                "TCPSackKernelParam",
                "net.ipv4.tcp_sack",
                o.expect_tcp_sack,
                false,
            ),
        ] {
            match ctx.sysctl(sysctl) {
                Ok(v) if v != expect.to_string() => out.push(problem(kind, sysctl, &v, expect)),
                Ok(_) => {}
                Err(_) if optional => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(uplink) = o.uplink.clone().or_else(|| default_route_interface(ctx)) {
            let sysctl = format!("net.ipv4.conf.{uplink}.proxy_arp");
            if let Ok(v) = ctx.sysctl(&sysctl)
                && v != o.expect_proxy_arp.to_string()
            {
                let mut p = problem("ProxyARPKernelParam", &sysctl, &v, o.expect_proxy_arp);
                p.object.push(("interface", uplink));
                out.push(p);
            }
        }
        Ok(out)
    }
}
