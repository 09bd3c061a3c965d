//! `KernelParam`: kernel parameters that break Pod networking when set the wrong way:
//! strict reverse-path filtering on Pod-facing interfaces, SYN cookies off, conntrack strict
//! about TCP windows, selective ACK off, proxy ARP on the uplink. Expected values are options.

use anyhow::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Build, Check, CheckContext, Problem, node_interfaces, uplink};
use crate::sources::sysctl::dotted;

pub struct KernelParam {
    options: KernelParamOptions,
}

/// `checks.KernelParam`: the value each parameter should have.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KernelParamOptions {
    /// `net.ipv4.conf.<Pod-facing interface>.rp_filter`.
    pub expect_rp_filter: u32,
    /// `net.ipv4.tcp_syncookies`.
    pub expect_tcp_syncookies: u32,
    /// `net.netfilter.nf_conntrack_tcp_be_liberal` (when conntrack is loaded).
    pub expect_tcp_be_liberal: u32,
    /// `net.ipv4.tcp_sack`.
    pub expect_tcp_sack: u32,
    /// `net.ipv4.conf.<uplink>.proxy_arp`.
    pub expect_proxy_arp: u32,
}

impl Default for KernelParamOptions {
    fn default() -> Self {
        Self {
            expect_rp_filter: 0,
            expect_tcp_syncookies: 1,
            expect_tcp_be_liberal: 1,
            expect_tcp_sack: 1,
            expect_proxy_arp: 0,
        }
    }
}

fn problem(kind: &'static str, sysctl: &str, current: &str, expect: u32) -> Problem {
    Problem {
        kind,
        msg: format!("{sysctl}:current_value={current},expect_value={expect}"),
        object: vec![("sysctl", sysctl.to_string())],
    }
}

impl Build for KernelParam {
    const NAME: &'static str = "KernelParam";
    const PROBE: &'static str = "KernelParam";
    const TYPES: &'static [&'static str] = &[
        "RPFilterKernelParam",
        "TCPSyncookiesKernelParam",
        "LiberalKernelParam",
        "TCPSackKernelParam",
        "ProxyARPKernelParam",
    ];
    type Options = KernelParamOptions;

    fn new(options: KernelParamOptions) -> Result<Self> {
        Ok(Self { options })
    }
}

impl Check for KernelParam {
    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let o = &self.options;
        let mut out = Vec::new();
        for ifname in node_interfaces(ctx)? {
            if !ctx
                .node
                .pod_interface_prefixes
                .iter()
                .any(|p| ifname.starts_with(p.as_str()))
            {
                continue;
            }
            let name = ["net", "ipv4", "conf", &ifname, "rp_filter"];
            // An interface that vanished since the listing is not a problem.
            let Ok(v) = ctx.sysctl(&name) else { continue };
            if v != o.expect_rp_filter.to_string() {
                let mut p = problem(
                    "RPFilterKernelParam",
                    &dotted(&name),
                    &v,
                    o.expect_rp_filter,
                );
                p.object.push(("interface", ifname.clone()));
                out.push(p);
            }
        }
        let node_wide: [(&'static str, &[&str], u32, bool); 3] = [
            (
                "TCPSyncookiesKernelParam",
                &["net", "ipv4", "tcp_syncookies"],
                o.expect_tcp_syncookies,
                false,
            ),
            // Exists only with the conntrack module loaded.
            (
                "LiberalKernelParam",
                &["net", "netfilter", "nf_conntrack_tcp_be_liberal"],
                o.expect_tcp_be_liberal,
                true,
            ),
            (
                "TCPSackKernelParam",
                &["net", "ipv4", "tcp_sack"],
                o.expect_tcp_sack,
                false,
            ),
        ];
        for (kind, name, expect, optional) in node_wide {
            match ctx.sysctl(name) {
                Ok(v) if v != expect.to_string() => {
                    out.push(problem(kind, &dotted(name), &v, expect))
                }
                Ok(_) => {}
                Err(_) if optional => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(uplink) = uplink(ctx) {
            let name = ["net", "ipv4", "conf", &uplink, "proxy_arp"];
            if let Ok(v) = ctx.sysctl(&name)
                && v != o.expect_proxy_arp.to_string()
            {
                let mut p = problem(
                    "ProxyARPKernelParam",
                    &dotted(&name),
                    &v,
                    o.expect_proxy_arp,
                );
                p.object.push(("interface", uplink));
                out.push(p);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::NodeFacts;

    /// A procfs tree of a node whose interfaces have dots in their names (a VLAN uplink
    /// `eth0.100`, a Pod interface `cali1.5`): their sysctls are read from their own
    /// directories, and the messages name them as `sysctl` does.
    #[test]
    fn interfaces_with_dots_in_their_names() {
        let proc = tempfile::tempdir().unwrap();
        let put = |rel: &str, v: &str| {
            let p = proc.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        };
        put(
            "net/dev",
            "Inter-|   Receive\n face |bytes\n    lo: 0 0\neth0.100: 0 0\ncali1.5: 0 0\n",
        );
        put("sys/net/ipv4/conf/eth0.100/proxy_arp", "1");
        put("sys/net/ipv4/conf/cali1.5/rp_filter", "1");
        put("sys/net/ipv4/tcp_syncookies", "1");
        put("sys/net/ipv4/tcp_sack", "1");
        let ctx = CheckContext {
            procfs: proc.path().to_path_buf(),
            sysfs: "/nonexistent".into(),
            node: NodeFacts {
                uplink: Some("eth0.100".into()),
                pod_interface_prefixes: vec!["cali".into()],
                ..NodeFacts::default()
            },
            targets: Vec::new(),
            cluster: None,
            objects: None,
        };
        let check = KernelParam::new(KernelParamOptions::default()).unwrap();
        let mut msgs: Vec<String> = check
            .run(&ctx)
            .unwrap()
            .into_iter()
            .map(|p| p.msg)
            .collect();
        msgs.sort();
        assert_eq!(
            msgs,
            [
                "net.ipv4.conf.cali1.5.rp_filter:current_value=1,expect_value=0",
                "net.ipv4.conf.eth0.100.proxy_arp:current_value=1,expect_value=0",
            ]
        );
    }
}
