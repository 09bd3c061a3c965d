//! `tcp`: the Tcp section of the namespace's /proc/net/snmp.

use anyhow::{Context, Result};

use super::{Build, MetricDef, Probe, Scope, Series, format};
use crate::component::NoOptions;
use crate::metrics;
use crate::sources::TargetSources;
use crate::sources::netns::NetFile;

pub struct Tcp;

/// Kernel field names, in the order of `METRICS`.
pub const FIELDS: &[&str] = &[
    "CurrEstab",
    "AttemptFails",
    "EstabResets",
    "InErrs",
    "InSegs",
    "OutRsts",
    "OutSegs",
    "ActiveOpens",
    "PassiveOpens",
    "RetransSegs",
];

const METRICS: &[MetricDef] = metrics![
    gauge "netexporter_tcp_currestab" "TCP connections in ESTABLISHED or CLOSE_WAIT now (Tcp: CurrEstab).",
    counter "netexporter_tcp_attemptfails" "TCP connection attempts that failed (Tcp: AttemptFails).",
    counter "netexporter_tcp_estabresets" "Established TCP connections reset (Tcp: EstabResets).",
    counter "netexporter_tcp_inerrs" "TCP segments received in error (Tcp: InErrs).",
    counter "netexporter_tcp_insegs" "TCP segments received (Tcp: InSegs).",
    counter "netexporter_tcp_outrsts" "TCP RST segments sent (Tcp: OutRsts).",
    counter "netexporter_tcp_outsegs" "TCP segments sent (Tcp: OutSegs).",
    counter "netexporter_tcp_activeopens" "SYNs sent to open TCP connections (Tcp: ActiveOpens).",
    counter "netexporter_tcp_passiveopens" "TCP connections accepted from a completed handshake (Tcp: PassiveOpens).",
    counter "netexporter_tcp_retransseg" "TCP segments retransmitted (Tcp: RetransSegs).",
];

pub fn parse(snmp: &[u8]) -> Result<Vec<Series>> {
    Ok(vec![Series::new(format::snmp_section(
        snmp, "Tcp", FIELDS,
    )?)])
}

impl Build for Tcp {
    const NAME: &'static str = "tcp";
    const SCOPE: Scope = Scope::Pod;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Probe for Tcp {
    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        parse(&src.net_file(NetFile::Snmp)?).context("/proc/net/snmp")
    }
}
