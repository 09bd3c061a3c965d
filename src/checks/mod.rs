//! Checks: what finds problems in the node's network configuration. Each check is one file and
//! one line in [`CHECKS`]; it looks at the node (and its Pods' namespaces) and returns the
//! problems it sees, which `events` turns into events. A check that cannot look (no
//! permission, a missing tool) says so with an error, never with a made-up problem; one that
//! does not apply here (a Kubernetes check in standalone mode, a provider check without a
//! provider) finds nothing, so that `netexporter_check_success` stays 1 on such nodes.

pub mod iptables;
pub mod ipvs;
pub mod irqbalance;
pub mod k8s_config;
pub mod kernel_log;
pub mod kernel_param;
pub mod kube_proxy;
pub mod mtu;
pub mod route;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::inventory::{ClusterView, Target};

/// Every check, one line each.
pub static CHECKS: &[&dyn Check] = &[
    &kernel_param::KernelParam,
    &irqbalance::IrqBalance,
    &route::DefaultRoute,
    &route::PolicyRoute,
    &route::VPC_ROUTE,
    &route::PodRoute,
    &mtu::MtuAbnormal,
    &iptables::IptablesAbnormal,
    &kube_proxy::KubeProxyAbnormal,
    &ipvs::IpvsRulesAbnormal,
    &k8s_config::NetworkPolicyCheck,
    &k8s_config::TrafficPolicyCheck,
    &k8s_config::IpMasqAgentCheck,
    &k8s_config::CidrConflictCheck,
];

/// The kernel log is not polled like the others: the agent follows it (`kernel_log.rs`).
pub const KERNEL_LOG: &str = "KernelLog";

/// Looks a check up by its name.
pub fn by_name(name: &str) -> Option<&'static dyn Check> {
    CHECKS.iter().copied().find(|c| c.name() == name)
}

/// One problem found: an event to emit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The event type (the spec's "emitted type").
    pub kind: &'static str,
    /// The message, in the spec's shape.
    pub msg: String,
    /// What it is about, as OpenTelemetry attributes (`interface`, `sysctl`, `k8s.pod.name`...).
    pub object: Vec<(&'static str, String)>,
}

/// What a check may look at.
pub struct CheckContext {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub options: CheckOptions,
    /// The node's namespace and the Pods' (or every namespace's, standalone).
    pub targets: Vec<Target>,
    /// Kubernetes mode: the node's Pods and CIDRs.
    pub cluster: Option<Arc<ClusterView>>,
    /// Kubernetes mode: a client for checks that read other objects.
    pub kube: Option<kube::Client>,
}

impl CheckContext {
    /// A file under procfs, as text.
    pub fn proc_text(&self, rel: &str) -> anyhow::Result<String> {
        let p = self.procfs.join(rel);
        std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()))
    }

    /// A sysctl under procfs (`net.ipv4.tcp_sack` → `sys/net/ipv4/tcp_sack`), trimmed.
    pub fn sysctl(&self, name: &str) -> anyhow::Result<String> {
        Ok(self
            .proc_text(&format!("sys/{}", name.replace('.', "/")))?
            .trim()
            .to_string())
    }
}

pub trait Check: Sync + Send {
    /// The check's name, used in configuration (`checks.disabled`, `checks.intervals`) and logs.
    fn name(&self) -> &'static str;
    /// The spec's probe it belongs to (`KernelParam`, `nodeconfig`, ...): the `probe`
    /// attribute of its events.
    fn probe(&self) -> &'static str {
        self.name()
    }
    /// The event types it can emit.
    fn kinds(&self) -> &'static [&'static str];
    /// Runs once; problems found now (none: healthy). Errors: it could not look.
    fn run(&self, ctx: &CheckContext) -> anyhow::Result<Vec<Problem>>;
}

/// Options of the checks, from `checks:` in the config file.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct CheckOptions {
    /// How often each check runs.
    #[serde(with = "humantime_serde_opt")]
    pub interval: Duration,
    /// Per-check intervals, by check name (`KernelParam: 5m`).
    pub intervals: std::collections::BTreeMap<String, String>,
    /// A persisting problem is repeated at most this often; a new or changed one at once.
    #[serde(with = "humantime_serde_opt")]
    pub repeat_interval: Duration,
    /// `false` turns every check off (no events at all).
    pub enabled: bool,
    /// Checks to leave off.
    pub disabled: Vec<String>,
    /// Name prefixes of the node's Pod-facing interfaces (the host ends of Pod veths).
    pub pod_interface_prefixes: Vec<String>,
    /// Expected values of the kernel parameters the KernelParam check reads.
    pub expect_rp_filter: u32,
    pub expect_tcp_syncookies: u32,
    pub expect_tcp_be_liberal: u32,
    pub expect_tcp_sack: u32,
    pub expect_proxy_arp: u32,
    /// The node's uplink (default: the interface of the default route).
    pub uplink: Option<String>,
    /// The kernel log to follow, and the lines in it that are events.
    pub kernel_log_path: PathBuf,
    pub kernel_log_patterns: Vec<String>,
    /// MTUAbnormal: an interface (node's or a Pod's, `lo` aside) with an MTU below this is
    /// abnormal. 1280 is the least IPv6 works with.
    pub mtu_floor: u32,
    /// PolicyRoute: CNIs whose Pods need a policy-routing rule (`ip rule from <Pod IP>`) on the
    /// node, each `{name, interface_prefixes}`. Empty (the default): the check does nothing.
    pub policy_route_cnis: Vec<route::PolicyRouteCni>,
    /// IPtablesAbnormal: the iptables command to run (`iptables-legacy` where the node's rules
    /// are in the legacy backend and the agent's `iptables` is the nft one).
    pub iptables_command: String,
    /// KubeProxyAbnormal: unset, it runs in Kubernetes mode only; `true` always; `false` never
    /// (clusters without kube-proxy).
    pub kube_proxy: Option<bool>,
    /// KubeProxyAbnormal: kube-proxy's health endpoint, plain http, expected to answer 200
    /// within 2 s.
    pub kube_proxy_healthz: String,
    /// IPMasqAgentConf and CIDRConflict: the node network's (VPC's) CIDR; unset, the first
    /// is not checked and the second leaves it out.
    pub vpc_cidr: Option<ipnet::IpNet>,
    /// CIDRConflict: the cluster's Service CIDR (not published by the API server).
    pub service_cidr: Option<ipnet::IpNet>,
    /// IPVSRulesAbnormal: `auto` (the kernel has IPVS and the node kube-proxy's `kube-ipvs0`),
    /// `true` (always; an error without IPVS) or `false` (never).
    pub ipvs: ipvs::IpvsMode,
}

impl CheckOptions {
    /// How often `check` runs.
    pub fn interval_of(&self, check: &str) -> Duration {
        self.intervals
            .get(check)
            .and_then(|s| humantime::parse_duration(s).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(self.interval)
    }

    /// Problems in the options: unknown check names, bad per-check intervals.
    pub fn validate(&self) -> Result<(), String> {
        let known = |n: &str| n == KERNEL_LOG || by_name(n).is_some();
        for n in &self.disabled {
            if !known(n) {
                return Err(format!("checks.disabled: unknown check {n:?}"));
            }
        }
        for (n, v) in &self.intervals {
            if !known(n) {
                return Err(format!("checks.intervals: unknown check {n:?}"));
            }
            match humantime::parse_duration(v) {
                Ok(d) if !d.is_zero() => {}
                _ => {
                    return Err(format!(
                        "checks.intervals.{n}: {v:?} is not a duration above zero"
                    ));
                }
            }
        }
        if let Err(e) = kube_proxy::parse_http_url(&self.kube_proxy_healthz) {
            return Err(format!("checks.kube_proxy_healthz: {e:#}"));
        }
        if self.iptables_command.trim().is_empty() {
            return Err("checks.iptables_command: empty".into());
        }
        Ok(())
    }

    pub fn enabled(&self, check: &str) -> bool {
        self.enabled && !self.disabled.iter().any(|d| d == check)
    }
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            repeat_interval: Duration::from_secs(600),
            enabled: true,
            disabled: Vec::new(),
            pod_interface_prefixes: vec!["cali".into(), "veth".into(), "lxc".into(), "cni".into()],
            expect_rp_filter: 0,
            expect_tcp_syncookies: 1,
            expect_tcp_be_liberal: 1,
            expect_tcp_sack: 1,
            expect_proxy_arp: 0,
            uplink: None,
            intervals: Default::default(),
            kernel_log_path: "/dev/kmsg".into(),
            kernel_log_patterns: kernel_log::default_patterns(),
            mtu_floor: 1280,
            policy_route_cnis: Vec::new(),
            iptables_command: "iptables".into(),
            kube_proxy: None,
            kube_proxy_healthz: "http://127.0.0.1:10256/healthz".into(),
            vpc_cidr: None,
            service_cidr: None,
            ipvs: ipvs::IpvsMode::Auto,
        }
    }
}

/// Durations written as `30s`, `10m` in the config file.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        let v = humantime::parse_duration(&s).map_err(serde::de::Error::custom)?;
        if v.is_zero() {
            return Err(serde::de::Error::custom("must be greater than zero"));
        }
        Ok(v)
    }
}

/// The interface of the node's IPv4 default route, from /proc/net/route.
pub fn default_route_interface(ctx: &CheckContext) -> Option<String> {
    let text = ctx.proc_text("net/route").ok()?;
    text.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.len() > 7 && cols[1] == "00000000" && cols[7] == "00000000")
            .then(|| cols[0].to_string())
    })
}

/// Node interface names (from /proc/net/dev: no netlink needed for names).
pub fn node_interfaces(ctx: &CheckContext) -> anyhow::Result<Vec<String>> {
    let text = ctx.proc_text("net/dev")?;
    Ok(text
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .collect())
}
