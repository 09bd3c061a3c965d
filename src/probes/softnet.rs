//! `softnet`: /proc/net/softnet_stat, summed over CPUs. The file is not per network namespace,
//! so this is a node-scope probe.

use anyhow::{Context, Result};

use super::{MetricDef, Probe, Scope, Series, format};
use crate::config::ProbeOptions;
use crate::metrics;
use crate::sources::TargetSources;

pub struct Softnet;

const METRICS: &[MetricDef] = metrics![
    counter "netexporter_softnet_processed" "Packets taken from the per-CPU backlogs (softnet_stat column 1, summed over CPUs).",
    counter "netexporter_softnet_dropped" "Packets dropped because a per-CPU backlog was full (softnet_stat column 2, summed over CPUs).",
];

pub fn parse(softnet_stat: &[u8]) -> Result<Vec<Series>> {
    let sums = format::softnet_columns(softnet_stat, 2)?;
    Ok(vec![Series::new(sums.into_iter().map(Some).collect())])
}

impl Probe for Softnet {
    fn name(&self) -> &'static str {
        "softnet"
    }
    fn scope(&self) -> Scope {
        Scope::Node
    }
    fn metrics(&self) -> &'static [MetricDef] {
        METRICS
    }
    fn collect(&self, src: &mut TargetSources, _: &ProbeOptions) -> Result<Vec<Series>> {
        parse(&src.node_file("net/softnet_stat")?).context("net/softnet_stat")
    }
}
