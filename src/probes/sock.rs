//! `sock`: the TCP and UDP lines of the namespace's /proc/net/sockstat.

use anyhow::{Context, Result};

use super::{MetricDef, Probe, Scope, Series, format};
use crate::config::ProbeOptions;
use crate::metrics;
use crate::sources::TargetSources;
use crate::sources::netns::NetFile;

pub struct Sock;

const METRICS: &[MetricDef] = metrics![
    gauge "netexporter_sock_inuse" "TCP sockets in use (sockstat TCP: inuse).",
    gauge "netexporter_sock_orphan" "Orphaned TCP sockets (sockstat TCP: orphan).",
    gauge "netexporter_sock_tw" "TCP sockets in TIME_WAIT (sockstat TCP: tw).",
    gauge "netexporter_sock_alloc" "TCP sockets allocated (sockstat TCP: alloc).",
    gauge "netexporter_sock_mem" "Pages used by TCP sockets (sockstat TCP: mem).",
    gauge "netexporter_sock_inuse_udp" "UDP sockets in use (sockstat UDP: inuse).",
    gauge "netexporter_sock_mem_udp" "Pages used by UDP sockets (sockstat UDP: mem).",
];

pub fn parse(sockstat: &[u8]) -> Result<Vec<Series>> {
    let mut values =
        format::keyed_line(sockstat, "TCP", &["inuse", "orphan", "tw", "alloc", "mem"])?;
    values.extend(format::keyed_line(sockstat, "UDP", &["inuse", "mem"])?);
    Ok(vec![Series::new(values)])
}

impl Probe for Sock {
    fn name(&self) -> &'static str {
        "sock"
    }
    fn scope(&self) -> Scope {
        Scope::Pod
    }
    fn metrics(&self) -> &'static [MetricDef] {
        METRICS
    }
    fn collect(&self, src: &mut TargetSources, _: &ProbeOptions) -> Result<Vec<Series>> {
        parse(&src.net_file(NetFile::Sockstat)?).context("/proc/net/sockstat")
    }
}
