//! `conntrack`: the node's connection-tracking statistics (/proc/net/stat/nf_conntrack, summed
//! over CPUs) and the table's fill level (nf_conntrack_count / nf_conntrack_max).

use anyhow::{Context, Result};

use super::{Build, MetricDef, Probe, Scope, Series, format};
use crate::component::NoOptions;
use crate::metrics;
use crate::sources::{Node, TargetSources};

pub struct Conntrack;

/// Column names of /proc/net/stat/nf_conntrack, in the order of the first `METRICS`.
const STAT_COLUMNS: &[&str] = &[
    "found",
    "invalid",
    "ignore",
    "insert",
    "insert_failed",
    "drop",
    "early_drop",
    "icmp_error",
    "search_restart",
];

const METRICS: &[MetricDef] = metrics![
    counter "netexporter_conntrack_found" "Conntrack lookups that found an existing entry.",
    counter "netexporter_conntrack_invalid" "Packets for which no conntrack entry could be created, but which were not dropped.",
    counter "netexporter_conntrack_ignore" "Packets skipped by conntrack because they already had an entry or their protocol needs none.",
    counter "netexporter_conntrack_insert" "Conntrack entries inserted (modern kernels no longer count this).",
    counter "netexporter_conntrack_insertfailed" "Conntrack inserts that failed (e.g. NAT picked a source tuple already in use).",
    counter "netexporter_conntrack_drop" "Packets dropped because their conntrack entry could not be created.",
    counter "netexporter_conntrack_earlydrop" "Unreplied conntrack entries evicted because the table was full.",
    counter "netexporter_conntrack_error" "ICMP(v6) packets that matched no existing connection.",
    counter "netexporter_conntrack_searchrestart" "Conntrack lookups restarted after a hash resize or concurrent change.",
    gauge "netexporter_conntrack_entries" "Conntrack entries in the table now (nf_conntrack_count).",
    gauge "netexporter_conntrack_maxentries" "Conntrack table capacity (nf_conntrack_max).",
];

pub fn parse(stat: &[u8], count: &[u8], max: &[u8]) -> Result<Vec<Series>> {
    let mut values = format::percpu_table(stat, STAT_COLUMNS).context("stat/nf_conntrack")?;
    values.push(Some(
        format::single_number(count).context("nf_conntrack_count")?,
    ));
    values.push(Some(
        format::single_number(max).context("nf_conntrack_max")?,
    ));
    Ok(vec![Series::new(values)])
}

impl Build for Conntrack {
    const NAME: &'static str = "conntrack";
    const SCOPE: Scope = Scope::Node;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Probe for Conntrack {
    fn prerequisites(&self, node: &Node) -> Result<(), String> {
        let stat = node.procfs.join("net/stat/nf_conntrack");
        if stat.exists() {
            Ok(())
        } else {
            Err(format!(
                "no connection tracking on this node: {} is missing (nf_conntrack not loaded)",
                stat.display()
            ))
        }
    }

    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        parse(
            &src.node_file("net/stat/nf_conntrack")?,
            &src.node_file("sys/net/netfilter/nf_conntrack_count")?,
            &src.node_file("sys/net/netfilter/nf_conntrack_max")?,
        )
    }
}
