//! `udp`: the UDP counters of the namespace, IPv4 (the `Udp` section of /proc/net/snmp) and
//! IPv6 (the `Udp6` lines of /proc/net/snmp6), one series per family (label `family`).
//! Receive-buffer errors are a common root cause of lost DNS answers: a resolver or a Pod that
//! cannot keep up drops datagrams the network delivered.

use anyhow::{Context, Result};

use super::{Build, MetricDef, Probe, Scope, Series, format};
use crate::component::NoOptions;
use crate::metrics;
use crate::sources::TargetSources;
use crate::sources::netns::NetFile;

pub struct Udp;

/// Kernel field names, in the order of `METRICS` (`Udp6` + the name in snmp6).
pub const FIELDS: &[&str] = &[
    "InDatagrams",
    "NoPorts",
    "InErrors",
    "OutDatagrams",
    "RcvbufErrors",
    "SndbufErrors",
    "InCsumErrors",
    "MemErrors",
];

const METRICS: &[MetricDef] = metrics![
    counter "netexporter_udp_indatagrams_total" "UDP datagrams delivered to sockets (Udp/Udp6: InDatagrams). Label family: ipv4, ipv6.",
    counter "netexporter_udp_noports_total" "UDP datagrams for a port no socket listens on (Udp/Udp6: NoPorts).",
    counter "netexporter_udp_inerrors_total" "UDP datagrams received but not delivered, receive-buffer and checksum errors included (Udp/Udp6: InErrors).",
    counter "netexporter_udp_outdatagrams_total" "UDP datagrams sent (Udp/Udp6: OutDatagrams).",
    counter "netexporter_udp_rcvbuferrors_total" "UDP datagrams dropped because the socket's receive buffer was full (Udp/Udp6: RcvbufErrors).",
    counter "netexporter_udp_sndbuferrors_total" "UDP datagrams not sent because the send buffer was full (Udp/Udp6: SndbufErrors).",
    counter "netexporter_udp_incsumerrors_total" "UDP datagrams received with a bad checksum (Udp/Udp6: InCsumErrors).",
    counter "netexporter_udp_memerrors_total" "UDP datagrams dropped because memory for them could not be charged (Udp/Udp6: MemErrors).",
];

/// The IPv4 series from /proc/net/snmp.
pub fn parse_v4(snmp: &[u8]) -> Result<Series> {
    Ok(Series::labelled(
        ("family", "ipv4".into()),
        format::snmp_section(snmp, "Udp", FIELDS)?,
    ))
}

/// The IPv6 series from /proc/net/snmp6.
pub fn parse_v6(snmp6: &[u8]) -> Result<Series> {
    let names: Vec<String> = FIELDS.iter().map(|f| format!("Udp6{f}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(Series::labelled(
        ("family", "ipv6".into()),
        format::name_value_lines(snmp6, &names)?,
    ))
}

impl Build for Udp {
    const NAME: &'static str = "udp";
    const SCOPE: Scope = Scope::Pod;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Probe for Udp {
    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        let mut out = vec![parse_v4(&src.net_file(NetFile::Snmp)?).context("/proc/net/snmp")?];
        // A namespace without IPv6 has no snmp6: its IPv4 series stands alone.
        if src.has_ipv6() {
            out.push(parse_v6(&src.net_file(NetFile::Snmp6)?).context("/proc/net/snmp6")?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! The fixture (`tests/fixtures/udp/`) was captured in a namespace with UDP traffic of
    //! every kind counted here, `nstat -asz --json` read at the same moment.

    use super::*;

    fn fixture(file: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/udp")
            .join(file);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn both_families_equal_nstat() {
        let nstat: serde_json::Value =
            serde_json::from_slice(&fixture("nstat.json")).expect("nstat JSON");
        let kernel = &nstat["kernel"];
        let mut nonzero = 0;
        for (series, prefix) in [
            (parse_v4(&fixture("snmp")).unwrap(), "Udp"),
            (parse_v6(&fixture("snmp6")).unwrap(), "Udp6"),
        ] {
            for (field, value) in FIELDS.iter().zip(&series.values) {
                let want = kernel[format!("{prefix}{field}")]
                    .as_u64()
                    .unwrap_or_else(|| panic!("nstat has no {prefix}{field}"));
                assert_eq!(*value, Some(want), "{prefix}{field}");
                nonzero += usize::from(want > 0);
            }
        }
        assert!(nonzero >= 6, "the fixture should exercise the counters");
    }
}
