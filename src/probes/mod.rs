//! Probes: each one reads one part of the kernel's network state for one target and turns it
//! into series. A probe is one file and one line in [`PROBES`]; its metrics are declared next to
//! the code that produces them, in the order of the values it returns.

pub mod arp;
pub mod conntrack;
pub mod format;
pub mod netdev;
pub mod packetloss;
pub mod podip;
pub mod qdisc;
pub mod sock;
pub mod sockbacklog;
pub mod softnet;
pub mod tcp;
pub mod tcpext;
pub mod tcpsummary;

use crate::config::ProbeOptions;
use crate::sources::TargetSources;

/// Every probe, in the order their metrics are listed. One line per probe.
pub static PROBES: &[&dyn Probe] = &[
    &conntrack::Conntrack,
    &qdisc::Qdisc,
    &netdev::Netdev,
    &tcp::Tcp,
    &tcpext::TcpExt,
    &sock::Sock,
    &softnet::Softnet,
    &tcpsummary::TcpSummary,
    &arp::Arp,
    &sockbacklog::SockBacklog,
    &packetloss::PacketLoss,
    &podip::PodIp,
];

/// Looks a probe up by its name.
pub fn by_name(name: &str) -> Option<&'static dyn Probe> {
    PROBES.iter().copied().find(|p| p.name() == name)
}

/// docs/metrics.md, generated from the code's own lists (a test keeps the file current).
pub fn reference_markdown(self_metrics: &[MetricDef]) -> String {
    let kind = |k: Kind| match k {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    let mut out = String::from(
        "# Metrics\n\nGenerated from the code by `UPDATE_GOLDEN=1 cargo test --test golden docs`; \
         do not edit by hand. Every series carries `k8s_node`. Pod-scope series carry `netns` \
         (standalone; the node's own namespace has no `netns`), and netdev series `if_name`. \
         Names are exactly as scraped: no `_total` or unit suffix is added to the spec's names.\n",
    );
    for p in PROBES {
        let scope = match p.scope() {
            Scope::Node => "node",
            Scope::Pod => "pod",
        };
        out.push_str(&format!(
            "\n## {} ({scope} scope)\n\n| metric | kind | meaning |\n|---|---|---|\n",
            p.name()
        ));
        for m in p.metrics() {
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                m.name,
                kind(m.kind),
                m.help
            ));
        }
    }
    out.push_str("\n## The agent itself\n\n| metric | kind | meaning |\n|---|---|---|\n");
    for m in self_metrics {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            m.name,
            kind(m.kind),
            m.help
        ));
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// `Node`: one series per node, read in the node's (the agent's) namespace.
/// `Pod`: one series per network namespace, the node's own included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Node,
    Pod,
}

#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// Declares a probe's metric list: `metrics![counter "name" "help", gauge "name" "help"]`.
#[macro_export]
macro_rules! metrics {
    ($($kind:ident $name:literal $help:literal),* $(,)?) => {
        &[$($crate::probes::MetricDef {
            name: $name,
            kind: $crate::metrics!(@kind $kind),
            help: $help,
        }),*]
    };
    (@kind counter) => { $crate::probes::Kind::Counter };
    (@kind gauge) => { $crate::probes::Kind::Gauge };
}

/// One set of values from a probe for one target: `values[i]` belongs to `metrics()[i]`.
/// `None` means the running kernel does not have that counter (the series is left out, never
/// reported as a made-up zero). `label` is the extra label of multi-series probes (`if_name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    pub label: Option<(&'static str, String)>,
    pub values: Vec<Option<u64>>,
}

impl Series {
    pub fn new(values: Vec<Option<u64>>) -> Self {
        Self {
            label: None,
            values,
        }
    }
}

pub trait Probe: Sync + Send {
    fn name(&self) -> &'static str;
    fn scope(&self) -> Scope;
    fn metrics(&self) -> &'static [MetricDef];
    /// Reads this probe's sources for one target. Errors carry the source that failed.
    fn collect(&self, src: &mut TargetSources, opts: &ProbeOptions) -> anyhow::Result<Vec<Series>>;

    /// Whether the probe reads the Kubernetes view (it is skipped without one).
    fn needs_cluster(&self) -> bool {
        false
    }

    /// Called once all targets of a collection were read, with the inodes of the namespaces
    /// that exist: node-wide state of namespaces that are gone can be dropped.
    fn after_collection(&self, _live: &std::collections::HashSet<u64>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = PROBES
            .iter()
            .flat_map(|p| p.metrics().iter().map(|m| m.name))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(n, names.len());
    }
}
