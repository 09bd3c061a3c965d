//! Checks: what finds problems in the node's network configuration. Each check is one file and
//! one line in [`CHECKS`]; it looks at the node (and its Pods' namespaces) and returns the
//! problems it sees, which `events` turns into events.
//!
//! Like a probe, a check is a component: [`Build::new`] from its own options section
//! (`checks.NAME`, beside the `enabled` and `interval` every check has), [`Check::prerequisites`]
//! apart from running (a check that does not apply on this node, e.g. a Kubernetes check in
//! standalone mode or a provider check without a provider, is *unavailable*: said once, shown
//! in `netexporter_check_available`, never run), and [`Check::run`]. A check that could not
//! look (no permission, a missing tool) says so with an error, never with a made-up problem.

pub mod cidr_conflict;
pub mod default_route;
pub mod iptables;
pub mod ipvs;
pub mod irqbalance;
pub mod kernel_log;
pub mod kernel_param;
pub mod kube_proxy;
pub mod masquerade;
pub mod mtu;
pub mod network_policy;
pub mod pod_route;
pub mod policy_route;
pub mod traffic_policy;
pub mod vpc_route;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use crate::component::{self, Keys, Options, SectionError};
use crate::inventory::objects::ClusterObjects;
use crate::inventory::{ClusterView, Target};

/// Every check, one line each.
pub static CHECKS: &[Registration] = &[
    Registration::of::<kernel_param::KernelParam>(),
    Registration::of::<irqbalance::IrqBalance>(),
    Registration::of::<default_route::DefaultRoute>(),
    Registration::of::<policy_route::PolicyRoute>(),
    Registration::of::<vpc_route::VpcRoute>(),
    Registration::of::<pod_route::PodRoute>(),
    Registration::of::<mtu::MtuAbnormal>(),
    Registration::of::<iptables::IptablesAbnormal>(),
    Registration::of::<kube_proxy::KubeProxyAbnormal>(),
    Registration::of::<ipvs::IpvsRulesAbnormal>(),
    Registration::of::<network_policy::NetworkPolicyCheck>(),
    Registration::of::<traffic_policy::TrafficPolicyCheck>(),
    Registration::of::<masquerade::IpMasqAgentCheck>(),
    Registration::of::<cidr_conflict::CidrConflictCheck>(),
    Registration::of::<kernel_log::KernelLog>(),
];

/// Looks a check up by its name.
pub fn by_name(name: &str) -> Option<&'static Registration> {
    CHECKS.iter().find(|c| c.name == name)
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

/// What a check may ask of the node before it runs.
pub struct Environment {
    pub procfs: PathBuf,
    /// Kubernetes mode: the agent has an API client and a view of the node's Pods.
    pub kubernetes: bool,
    pub node: NodeFacts,
}

/// What a check may look at when it runs.
pub struct CheckContext {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub node: NodeFacts,
    /// The node's namespace and the Pods' (or every namespace's, standalone).
    pub targets: Vec<Target>,
    /// Kubernetes mode: the node's Pods and CIDRs.
    pub cluster: Option<Arc<ClusterView>>,
    /// Kubernetes mode: the cluster objects some checks compare the node with, watched once
    /// a check asks for a kind.
    pub objects: Option<Arc<ClusterObjects>>,
}

impl CheckContext {
    /// A file under procfs, as text.
    pub fn proc_text(&self, rel: &str) -> Result<String> {
        let p = self.procfs.join(rel);
        std::fs::read_to_string(&p).map_err(|e| anyhow!("read {}: {e}", p.display()))
    }

    /// A sysctl, by the components of its name (`["net", "ipv4", "conf", "eth0.100",
    /// "rp_filter"]`): an interface name may hold dots.
    pub fn sysctl(&self, name: &[&str]) -> Result<String> {
        crate::sources::sysctl::read(&self.procfs, name)
    }

    /// The node's own target.
    pub fn node(&self) -> Result<&Target> {
        self.targets
            .iter()
            .find(|t| t.is_node())
            .ok_or_else(|| anyhow!("no node namespace among the targets"))
    }

    /// The targets that are not the node's.
    pub fn pods(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().filter(|t| !t.is_node())
    }

    /// The cluster objects, for checks that require Kubernetes mode.
    pub fn objects(&self) -> Result<&ClusterObjects> {
        self.objects
            .as_deref()
            .ok_or_else(|| anyhow!("no Kubernetes API (standalone)"))
    }
}

/// A built check, as the runner drives it.
pub trait Check: Send + Sync {
    /// Whether this check applies on this node (`Err`: why not). Asked again before each run
    /// until it holds.
    fn prerequisites(&self, _env: &Environment) -> Result<(), String> {
        Ok(())
    }

    /// Runs once; problems found now (none: healthy). Errors: it could not look.
    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>>;

    /// Whether the check follows a stream (the kernel log) as it is written instead of
    /// running on an interval (`diagnose` still runs it once, on what the stream holds now).
    fn follows(&self) -> bool {
        false
    }

    /// For a check that [follows](Check::follows): runs on a thread of its own until the
    /// stream fails, handing each problem to `found`.
    fn follow(&self, _found: &dyn Fn(Problem)) -> Result<()> {
        Ok(())
    }
}

/// How a check is made.
pub trait Build: Check + Sized + 'static {
    const NAME: &'static str;
    /// The spec's probe it belongs to: the `probe` attribute of its events.
    const PROBE: &'static str;
    /// The event types it can emit (the spec's "emitted type"; a test holds them to
    /// `docs/spec/events.tsv`).
    const TYPES: &'static [&'static str];
    /// Its section (`checks.NAME`), beside `enabled` and `interval`.
    type Options: Options;

    /// Builds the check from its options; an error is a configuration error.
    fn new(options: Self::Options) -> Result<Self>;
}

/// A built check with its schedule.
pub struct Built {
    pub enabled: bool,
    pub interval: Option<Duration>,
    pub check: Box<dyn Check>,
}

/// A check in the registry: what is known of it without building it.
pub struct Registration {
    pub name: &'static str,
    pub probe: &'static str,
    pub types: &'static [&'static str],
    build: fn(Option<&serde_yaml::Value>) -> Result<Built, SectionError>,
    schema: fn() -> Schema,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Registration {
    pub const fn of<C: Build>() -> Self {
        Self {
            name: C::NAME,
            probe: C::PROBE,
            types: C::TYPES,
            build: build::<C>,
            schema: schema::<C>,
        }
    }

    /// Builds the check from its section (`checks.NAME`, `None` if absent).
    pub fn build(&self, section: Option<&serde_yaml::Value>) -> Result<Built, SectionError> {
        (self.build)(section)
    }

    /// Its options, as `docs/configuration.md` lists them.
    pub fn reference(&self) -> String {
        component::reference(
            &format!("checks.{}", self.name),
            &(self.schema)(),
            Some(Keys::Check),
        )
    }
}

fn schema<C: Build>() -> Schema {
    schemars::schema_for!(C::Options)
}

fn build<C: Build>(section: Option<&serde_yaml::Value>) -> Result<Built, SectionError> {
    let path = format!("checks.{}", C::NAME);
    let (common, options) = component::parse::<C::Options>(&path, section, Keys::Check)?;
    let check = C::new(options).map_err(|e| SectionError::new(&path, format!("{e:#}")))?;
    Ok(Built {
        enabled: common.enabled.unwrap_or(true),
        interval: common.interval,
        check: Box::new(check),
    })
}

/// `checks:` in the configuration file: the schedule of every check, facts about the node
/// that several checks use, and each check's own section by its name (`checks.KernelParam`).
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct ChecksOptions {
    /// `false` turns every check off (no events at all).
    pub enabled: bool,
    /// How often each check runs (a check's own `interval` wins).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::component::DurationText")]
    pub interval: Duration,
    /// A persisting problem is repeated at most this often; a new or changed one at once.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::component::DurationText")]
    pub repeat_interval: Duration,
    /// What several checks need to know about the node.
    pub node: NodeFacts,
    /// Each check's section, by check name: `enabled`, `interval` and its own options.
    #[serde(flatten)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub sections: BTreeMap<String, serde_yaml::Value>,
}

impl Default for ChecksOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(60),
            repeat_interval: Duration::from_secs(600),
            node: NodeFacts::default(),
            sections: BTreeMap::new(),
        }
    }
}

/// `checks.node`: facts about the node that several checks use.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeFacts {
    /// The node's uplink [default: the interface of the default route].
    pub uplink: Option<String>,
    /// Name prefixes of the node's Pod-facing interfaces (the host ends of Pod veths).
    pub pod_interface_prefixes: Vec<String>,
    /// The node network's (VPC's) CIDR; unset, IPMasqAgentConf is unavailable and
    /// CIDRConflict leaves it out.
    pub vpc_cidr: Option<ipnet::IpNet>,
    /// The cluster's Service CIDR (the API server does not publish it), for CIDRConflict.
    pub service_cidr: Option<ipnet::IpNet>,
}

impl Default for NodeFacts {
    fn default() -> Self {
        Self {
            uplink: None,
            pod_interface_prefixes: vec!["cali".into(), "veth".into(), "lxc".into(), "cni".into()],
            vpc_cidr: None,
            service_cidr: None,
        }
    }
}

/// A check to run, with its schedule.
pub struct Scheduled {
    pub registration: &'static Registration,
    pub interval: Duration,
    pub check: Box<dyn Check>,
}

impl ChecksOptions {
    /// The enabled checks, built; every section is checked (unknown check names, bad
    /// options) even when all checks are off.
    pub fn build(&self) -> Result<Vec<Scheduled>, SectionError> {
        for name in self.sections.keys() {
            if by_name(name).is_none() {
                let known: Vec<&str> = CHECKS.iter().map(|c| c.name).collect();
                return Err(SectionError::new(
                    format!("checks.{name}"),
                    format!("unknown check; known checks: {}", known.join(", ")),
                ));
            }
        }
        for (field, d) in [
            ("checks.interval", self.interval),
            ("checks.repeat_interval", self.repeat_interval),
        ] {
            if d.is_zero() {
                return Err(SectionError::new(field, "must be greater than zero"));
            }
        }
        let mut out = Vec::new();
        for registration in CHECKS {
            let built = registration.build(self.sections.get(registration.name))?;
            if self.enabled && built.enabled {
                out.push(Scheduled {
                    registration,
                    interval: built.interval.unwrap_or(self.interval),
                    check: built.check,
                });
            }
        }
        Ok(out)
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

/// The node's uplink: configured, else the interface of its default route.
pub fn uplink(ctx: &CheckContext) -> Option<String> {
    ctx.node
        .uplink
        .clone()
        .or_else(|| default_route_interface(ctx))
}

/// Node interface names (from /proc/net/dev: no netlink needed for names).
pub fn node_interfaces(ctx: &CheckContext) -> Result<Vec<String>> {
    interfaces_in(&ctx.procfs)
}

/// Interface names of the namespace whose procfs is `procfs` (its `net/dev`).
pub fn interfaces_in(procfs: &std::path::Path) -> Result<Vec<String>> {
    let p = procfs.join("net/dev");
    let text = std::fs::read_to_string(&p).map_err(|e| anyhow!("read {}: {e}", p.display()))?;
    Ok(text
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .collect())
}

/// Processes whose command name is `comm`, by pid.
pub fn processes_named(procfs: &std::path::Path, comm: &str) -> Result<Vec<u32>> {
    let dir = std::fs::read_dir(procfs)?;
    Ok(dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(procfs.join(format!("{pid}/comm")))
                .is_ok_and(|c| c.trim_end() == comm)
        })
        .collect())
}

/// How many names a message lists before `...`.
pub const LIST_CAP: usize = 3;

/// `a,b,c` or, past [`LIST_CAP`] names, `a,b,c,...`: how the spec's messages list names.
pub fn capped_list(names: &[String]) -> String {
    let mut out: Vec<&str> = names.iter().take(LIST_CAP).map(String::as_str).collect();
    if names.len() > LIST_CAP {
        out.push("...");
    }
    out.join(",")
}

fn label<'a>(t: &'a Target, name: &str) -> Option<&'a str> {
    t.labels
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

/// A non-node target as messages name it: a Pod as `<pod>/<namespace>` (Kubernetes mode); in
/// standalone mode, where namespaces are not Pods, as `<netns>/-`, the target's `netns` label
/// (`/run/netns` name or `pid-<pid>`) with `-` for "no Kubernetes namespace".
pub fn target_name(t: &Target) -> String {
    match (label(t, "k8s_pod"), label(t, "k8s_namespace")) {
        (Some(pod), Some(ns)) => format!("{pod}/{ns}"),
        _ => match label(t, "netns") {
            Some(n) => format!("{n}/-"),
            None => format!("inode-{}/-", t.inode),
        },
    }
}

/// Whether the target is a Pod (Kubernetes mode), not just a namespace found on the host.
pub fn is_pod(t: &Target) -> bool {
    label(t, "k8s_pod").is_some()
}

/// The node's name (`k8s_node` of its target).
pub fn node_name(t: &Target) -> Option<&str> {
    label(t, "k8s_node")
}

/// A target's identity as event attributes (`k8s.pod.name`/`k8s.namespace.name`, or `netns`).
pub fn target_attributes(t: &Target) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (k, v) in &t.labels {
        match *k {
            "k8s_pod" => out.push(("k8s.pod.name", v.clone())),
            "k8s_namespace" => out.push(("k8s.namespace.name", v.clone())),
            "netns" => out.push(("netns", v.clone())),
            _ => {}
        }
    }
    out
}

/// Kubernetes checks are unavailable standalone.
pub fn needs_kubernetes(env: &Environment) -> Result<(), String> {
    if env.kubernetes {
        Ok(())
    } else {
        Err("standalone: there is no Kubernetes API to read".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sections_are_checked() {
        let mut names: Vec<&str> = CHECKS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CHECKS.len());

        let all = ChecksOptions::default().build().unwrap();
        assert_eq!(all.len(), CHECKS.len());
        let o: ChecksOptions = serde_yaml::from_str(
            "interval: 30s\nKernelParam:\n  interval: 5m\nIRQBalance:\n  enabled: false\n",
        )
        .unwrap();
        let built = o.build().unwrap();
        assert_eq!(built.len(), CHECKS.len() - 1);
        let interval = |n: &str| {
            built
                .iter()
                .find(|s| s.registration.name == n)
                .unwrap()
                .interval
        };
        assert_eq!(interval("KernelParam"), Duration::from_secs(300));
        assert_eq!(interval("DefaultRoute"), Duration::from_secs(30));
        let off: ChecksOptions = serde_yaml::from_str("enabled: false\n").unwrap();
        assert!(off.build().unwrap().is_empty());

        for (yaml, want) in [
            ("KernelParm: {}\n", "checks.KernelParm: unknown check"),
            (
                "KernelParam:\n  interval: soon\n",
                "checks.KernelParam.interval",
            ),
            (
                "KernelParam:\n  expect_rp_filtr: 1\n",
                "checks.KernelParam.expect_rp_filtr",
            ),
            (
                "enabled: false\nMTUAbnormal:\n  floor: x\n",
                "checks.MTUAbnormal.floor",
            ),
            ("node:\n  uplnk: eth0\n", "unknown field `uplnk`"),
        ] {
            let e = serde_yaml::from_str::<ChecksOptions>(yaml)
                .map_err(|e| e.to_string())
                .and_then(|o| o.build().map(|_| ()).map_err(|e| e.to_string()))
                .unwrap_err();
            assert!(e.contains(want), "{yaml:?}: {e:?} should mention {want:?}");
        }
    }

    #[test]
    fn targets_are_named() {
        let t = |labels: Vec<(&'static str, &str)>| Target {
            inode: 7,
            ns_path: Some("/x".into()),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
        };
        let pod = t(vec![
            ("k8s_node", "n"),
            ("k8s_namespace", "default"),
            ("k8s_pod", "ng-1"),
        ]);
        assert_eq!(target_name(&pod), "ng-1/default");
        assert_eq!(
            target_attributes(&pod),
            vec![
                ("k8s.namespace.name", "default".to_string()),
                ("k8s.pod.name", "ng-1".to_string())
            ]
        );
        assert_eq!(
            target_name(&t(vec![("k8s_node", "n"), ("netns", "a")])),
            "a/-"
        );
        assert_eq!(target_name(&t(vec![("k8s_node", "n")])), "inode-7/-");
    }

    /// Every (probe, event type) the spec lists is one a registered check declares, and the
    /// other way round: the spec's events table and the registry are one.
    #[test]
    fn checks_emit_the_spec_event_types() {
        let spec = include_str!("../../docs/spec/events.tsv");
        let mut from_spec: Vec<(String, String)> = spec
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let cols: Vec<&str> = l.split('\t').collect();
                (cols[0].to_string(), cols[2].to_string())
            })
            .collect();
        let mut from_code: Vec<(String, String)> = CHECKS
            .iter()
            .flat_map(|c| c.types.iter().map(|t| (c.probe.to_string(), t.to_string())))
            .collect();
        from_spec.sort();
        from_code.sort();
        assert_eq!(from_code, from_spec);
    }

    #[test]
    fn lists_are_capped() {
        let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        assert_eq!(capped_list(&names[..2]), "a,b");
        assert_eq!(capped_list(&names[..3]), "a,b,c");
        assert_eq!(capped_list(&names), "a,b,c,...");
    }
}
