//! Probes: each one reads one part of the kernel's network state for one target and turns it
//! into series. A probe is one file (or a folder, when it has BPF C beside its Rust) and one
//! line in [`PROBES`]; its metrics, its options section and its state are its own.
//!
//! The life of a probe: [`Build::new`] from its options section when the configuration is
//! read (an error there is a configuration error); [`Probe::prerequisites`] asks the node
//! whether it has what the probe needs (a probe without them is *unavailable*: said once,
//! shown in `netexporter_probe_available`, never counted as a failure, and asked again at each
//! collection); [`Probe::start`] sets it up once they hold; then, at every collection,
//! [`Probe::prepare`] once and [`Probe::collect`] for every target.

pub mod arp;
pub mod conntrack;
pub mod dns;
pub mod format;
pub mod netdev;
pub mod packetloss;
pub mod peers;
pub mod podip;
pub mod qdisc;
pub mod sock;
pub mod sockbacklog;
pub mod softnet;
pub mod tcp;
pub mod tcpext;
pub mod tcphash;
pub mod tcpsummary;
pub mod udp;

use anyhow::Result;
use schemars::Schema;

use crate::component::{self, Keys, Options, SectionError};
use crate::sources::{Collection, Node, TargetSources};

/// Every probe, in the order their metrics are listed. One line per probe.
pub static PROBES: &[Registration] = &[
    Registration::of::<conntrack::Conntrack>(),
    Registration::of::<qdisc::Qdisc>(),
    Registration::of::<netdev::Netdev>(),
    Registration::of::<tcp::Tcp>(),
    Registration::of::<tcpext::TcpExt>(),
    Registration::of::<sock::Sock>(),
    Registration::of::<softnet::Softnet>(),
    Registration::of::<tcpsummary::TcpSummary>(),
    Registration::of::<tcphash::TcpHash>(),
    Registration::of::<arp::Arp>(),
    Registration::of::<sockbacklog::SockBacklog>(),
    Registration::of::<packetloss::PacketLoss>(),
    Registration::of::<podip::PodIp>(),
    Registration::of::<udp::Udp>(),
    Registration::of::<peers::Peers>(),
    Registration::of::<dns::Dns>(),
];

/// Looks a probe up by its name.
pub fn by_name(name: &str) -> Option<&'static Registration> {
    PROBES.iter().find(|p| p.name == name)
}

/// A built probe, as the collector drives it.
pub trait Probe: Send + Sync {
    /// What this node must have for the probe to run (`Err`: why it is unavailable here).
    /// Cheap: it is asked again at every collection until it holds.
    fn prerequisites(&self, _node: &Node) -> Result<(), String> {
        Ok(())
    }

    /// Setup, once the prerequisites hold (loading a BPF program, opening what it keeps). An
    /// error fails the probe at every collection from then on, with this error.
    fn start(&mut self, _node: &Node) -> Result<()> {
        Ok(())
    }

    /// Once per collection, before any target is read: state that every target's
    /// [`Probe::collect`] reads (a BPF map read once, not once per namespace).
    fn prepare(&self, _collection: &Collection) {}

    /// Reads this probe's sources for one target. Errors carry the source that failed.
    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>>;

    /// Its BPF maps that can fill up, as the last [`Probe::prepare`] read them (the agent's
    /// self-metrics `netexporter_bpf_map_*`).
    fn bpf_maps(&self) -> Vec<crate::sources::bpf_programs::BpfMapFill> {
        Vec::new()
    }
}

/// How a probe is made: its name, scope and metrics, its options, its constructor.
pub trait Build: Probe + Sized + 'static {
    const NAME: &'static str;
    const SCOPE: Scope;
    /// Its metrics, in the order of the values of its [`Series`].
    const METRICS: &'static [MetricDef];
    /// Its section of the configuration file (`probes.NAME`), beside `enabled`.
    type Options: Options;

    /// Builds the probe from its options; an error is a configuration error. Nothing here
    /// reads the kernel: that is for [`Probe::prerequisites`] and [`Probe::start`].
    fn new(options: Self::Options) -> Result<Self>;
}

/// A probe in the registry: what is known of it without building it.
pub struct Registration {
    pub name: &'static str,
    pub scope: Scope,
    pub metrics: &'static [MetricDef],
    build: Builder,
    schema: fn() -> Schema,
}

/// Builds a probe from its section: whether the section enables it, and the probe.
type Builder = fn(Option<&serde_yaml::Value>) -> Result<(bool, Box<dyn Probe>), SectionError>;

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Registration {
    pub const fn of<P: Build>() -> Self {
        Self {
            name: P::NAME,
            scope: P::SCOPE,
            metrics: P::METRICS,
            build: build::<P>,
            schema: schema::<P>,
        }
    }

    /// Builds the probe from its section (`probes.NAME` of the file, `None` if absent):
    /// whether the section enables it, and the probe.
    pub fn build(
        &self,
        section: Option<&serde_yaml::Value>,
    ) -> Result<(bool, Box<dyn Probe>), SectionError> {
        (self.build)(section)
    }

    /// Its options, as `docs/configuration.md` lists them.
    pub fn reference(&self) -> String {
        component::reference(
            &format!("probes.{}", self.name),
            &(self.schema)(),
            Some(Keys::Probe),
        )
    }
}

fn schema<P: Build>() -> Schema {
    schemars::schema_for!(P::Options)
}

fn build<P: Build>(
    section: Option<&serde_yaml::Value>,
) -> Result<(bool, Box<dyn Probe>), SectionError> {
    let path = format!("probes.{}", P::NAME);
    let (common, options) = component::parse::<P::Options>(&path, section, Keys::Probe)?;
    let probe = P::new(options).map_err(|e| SectionError::new(&path, format!("{e:#}")))?;
    Ok((common.enabled.unwrap_or(true), Box::new(probe)))
}

/// docs/metrics.md, generated from the code's own lists (a test keeps the file current).
pub fn reference_markdown(self_metrics: &[MetricDef]) -> String {
    let kind = |k: Kind| match k {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let mut out = String::from(
        "# Metrics\n\nGenerated from the code by `UPDATE_GOLDEN=1 cargo test --test golden docs`; \
         do not edit by hand. Every series carries `k8s_node`. Pod-scope series carry `netns` \
         (standalone; the node's own namespace has no `netns`), and netdev series `if_name`. \
         Names are exactly as scraped: no `_total` or unit suffix is added to the spec's names.\n",
    );
    for p in PROBES {
        let scope = match p.scope {
            Scope::Node => "node",
            Scope::Pod => "pod",
        };
        out.push_str(&format!(
            "\n## {} ({scope} scope)\n\n| metric | kind | meaning |\n|---|---|---|\n",
            p.name
        ));
        for m in p.metrics {
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
    /// Counted into buckets in the kernel: its values are [`Histogram`]s (`Series::histograms`).
    Histogram,
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
    /// A histogram's bucket bounds (upper, inclusive, ascending); empty for the others.
    pub bounds: &'static [f64],
}

/// Declares a probe's metric list: `metrics![counter "name" "help", gauge "name" "help",
/// histogram(&BOUNDS) "name" "help"]`.
#[macro_export]
macro_rules! metrics {
    ($($kind:ident $(($bounds:expr))? $name:literal $help:literal),* $(,)?) => {
        &[$($crate::probes::MetricDef {
            name: $name,
            kind: $crate::metrics!(@kind $kind),
            help: $help,
            bounds: $crate::metrics!(@bounds $($bounds)?),
        }),*]
    };
    (@bounds) => { &[] };
    (@bounds $b:expr) => { $b };
    (@kind counter) => { $crate::probes::Kind::Counter };
    (@kind gauge) => { $crate::probes::Kind::Gauge };
    (@kind histogram) => { $crate::probes::Kind::Histogram };
}

/// Attributes named after the OpenTelemetry semantic conventions (what OTLP carries) and the
/// label each is in the Prometheus format, whose names are the contract; `None`: an attribute
/// that only OTLP carries (it repeats a label's value, so no series is merged without it).
pub const SEMCONV_LABELS: &[(&str, Option<&str>)] = &[
    ("k8s.node.name", Some("k8s_node")),
    ("k8s.namespace.name", Some("k8s_namespace")),
    ("k8s.pod.name", Some("k8s_pod")),
    ("server.port", Some("port")),
    ("network.transport", Some("protocol")),
    ("network.peer.address", None),
];

/// The attribute name (OTLP) of the Prometheus label `label`: its semantic-convention name
/// where [`SEMCONV_LABELS`] has one, else the label itself.
pub fn attribute_name(label: &'static str) -> &'static str {
    SEMCONV_LABELS
        .iter()
        .find(|(_, l)| *l == Some(label))
        .map_or(label, |(otel, _)| otel)
}

/// A label's value: OpenTelemetry's string, which is a `&'static str` (`"client"`,
/// `"transmit"`), a shared `Arc<str>` (a peer's name, in each of its series) or an owned string:
/// the attribute is made from it without a copy, and most cost no allocation at all (a peer
/// series had ~8 before: 100 namespaces x 50 peers are ~30,000 series).
pub type LabelValue = opentelemetry::StringValue;

/// A series' own labels, shared: a probe that makes several series of one label set (the
/// peers' bucket: its connections, its bytes each way, at every collection) clones a pointer,
/// and the collection keeps it as it is, beside the target's attributes, instead of copying
/// both into one set per series.
pub type Labels = std::sync::Arc<[(&'static str, LabelValue)]>;

/// One set of values from a probe for one target: `values[i]` belongs to `METRICS[i]`, and
/// metrics past its end have none (a series of one metric carries no slots for the rest: the
/// peers' ~30,000 series at 100 namespaces have one value each of 14 metrics). `None` means
/// the running kernel does not have that counter (the series is left out, never
/// reported as a made-up zero). `labels` are the extra labels of multi-series probes
/// (`if_name`; `role`, `peer`, `port` ...), in the order they are exported. `histograms` holds
/// the values of the histogram metrics, by index in `METRICS` (their `values` are `None`).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub values: Vec<Option<u64>>,
    pub histograms: Vec<(usize, Histogram)>,
}

/// A histogram as counted since the probe started (cumulative): how many values fell in each
/// bucket, and their sum, in the unit of the bounds (seconds for durations).
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Upper bounds, inclusive and ascending; the last bucket (`+Inf`) has none.
    pub bounds: &'static [f64],
    /// Per bucket, not cumulative: `bounds.len() + 1` counts.
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Data points it takes in the Prometheus format: a line per bucket, `_sum` and `_count`.
    pub fn points(&self) -> usize {
        self.counts.len() + 2
    }
}

impl Series {
    pub fn new(values: Vec<Option<u64>>) -> Self {
        Self {
            labels: Labels::default(),
            values,
            histograms: Vec::new(),
        }
    }

    /// `values` with one extra label.
    pub fn labelled(label: (&'static str, LabelValue), values: Vec<Option<u64>>) -> Self {
        Self {
            labels: Labels::from([label]),
            values,
            histograms: Vec::new(),
        }
    }

    /// A series with only histogram metric `index` of `len` set.
    pub fn histogram(
        len: usize,
        index: usize,
        histogram: Histogram,
        labels: impl Into<Labels>,
    ) -> Self {
        Self {
            labels: labels.into(),
            values: Vec::new(),
            histograms: if index < len {
                vec![(index, histogram)]
            } else {
                Vec::new()
            },
        }
    }

    /// Data points this series takes (what `collection.max_series` counts).
    pub fn points(&self) -> usize {
        self.values.iter().flatten().count()
            + self
                .histograms
                .iter()
                .map(|(_, h)| h.points())
                .sum::<usize>()
    }

    /// A series with only the value of metric `index` of `len` set (info metrics, one
    /// series per label value).
    pub fn one(len: usize, index: usize, value: u64, label: (&'static str, LabelValue)) -> Self {
        Self::only(len, index, value, vec![label])
    }

    /// The same with any number of labels.
    pub fn only(len: usize, index: usize, value: u64, labels: impl Into<Labels>) -> Self {
        let mut values = Vec::new();
        if index < len {
            values.resize(index, None);
            values.push(Some(value));
        }
        Self {
            labels: labels.into(),
            values,
            histograms: Vec::new(),
        }
    }

    /// The value of label `key`, if the series has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = PROBES
            .iter()
            .flat_map(|p| p.metrics.iter().map(|m| m.name))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(n, names.len());
        let mut probes: Vec<&str> = PROBES.iter().map(|p| p.name).collect();
        probes.sort_unstable();
        probes.dedup();
        assert_eq!(probes.len(), PROBES.len());
    }
}
