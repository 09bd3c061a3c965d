//! `sock`: the TCP and UDP lines of the namespace's /proc/net/sockstat.

use anyhow::{Context, Result};

use super::{Build, MetricDef, Probe, Scope, Series, format};
use crate::component::NoOptions;
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

impl Build for Sock {
    const NAME: &'static str = "sock";
    const SCOPE: Scope = Scope::Pod;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Probe for Sock {
    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        parse(&src.net_file(NetFile::Sockstat)?).context("/proc/net/sockstat")
    }
}
