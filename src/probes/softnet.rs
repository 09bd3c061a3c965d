//! `softnet`: /proc/net/softnet_stat, summed over CPUs. The file is not per network namespace,
//! so this is a node-scope probe.

use anyhow::{Context, Result};

use super::{Build, MetricDef, Probe, Scope, Series, format};
use crate::component::NoOptions;
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

impl Build for Softnet {
    const NAME: &'static str = "softnet";
    const SCOPE: Scope = Scope::Node;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Probe for Softnet {
    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        parse(&src.node_file("net/softnet_stat")?).context("net/softnet_stat")
    }
}
