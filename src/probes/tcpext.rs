//! `tcpext`: the TcpExt section of the namespace's /proc/net/netstat.

use anyhow::{Context, Result};

use super::{Build, MetricDef, Probe, Scope, Series, format};
use crate::component::NoOptions;
use crate::metrics;
use crate::sources::TargetSources;
use crate::sources::netns::NetFile;

pub struct TcpExt;

/// Kernel field names, in the order of `METRICS`.
pub const FIELDS: &[&str] = &[
    "ListenOverflows",
    "ListenDrops",
    "TCPSynRetrans",
    "TCPFastRetrans",
    "TCPRetransFail",
    "TCPTimeouts",
    "TCPAbortOnClose",
    "TCPAbortOnMemory",
    "TCPAbortOnTimeout",
    "TCPAbortOnLinger",
    "TCPAbortOnData",
    "TCPAbortFailed",
    "TCPACKSkippedSynRecv",
    "TCPACKSkippedPAWS",
    "TCPACKSkippedSeq",
    "TCPACKSkippedFinWait2",
    "TCPACKSkippedTimeWait",
    "TCPACKSkippedChallenge",
    "TCPRcvQDrop",
    "PAWSEstab",
    "TCPWinProbe",
    "TCPKeepAlive",
    "TCPMTUPFail",
    "TCPMTUPSuccess",
    "TCPZeroWindowDrop",
    "TCPBacklogDrop",
    "PFMemallocDrop",
    "TCPWqueueTooBig",
    "EmbryonicRsts",
    "TCPMemoryPressures",
    "TCPMemoryPressuresChrono",
];

const METRICS: &[MetricDef] = metrics![
    counter "netexporter_tcpext_listenoverflows" "Times the accept queue overflowed when a connection completed (TcpExt: ListenOverflows).",
    counter "netexporter_tcpext_listendrops" "SYN_RECV sockets that could not be created (TcpExt: ListenDrops).",
    counter "netexporter_tcpext_tcpsynretrans" "SYNs retransmitted (TcpExt: TCPSynRetrans).",
    counter "netexporter_tcpext_tcpfastretrans" "Fast retransmits (TcpExt: TCPFastRetrans).",
    counter "netexporter_tcpext_tcpretransfail" "Retransmits that failed with an error other than EBUSY (TcpExt: TCPRetransFail).",
    counter "netexporter_tcpext_tcptimeouts" "Retransmission timer expiries, unanswered SYNs included (TcpExt: TCPTimeouts).",
    counter "netexporter_tcpext_tcpabortonclose" "RSTs sent because unread data was left at close (TcpExt: TCPAbortOnClose).",
    counter "netexporter_tcpext_tcpabortonmemory" "RSTs sent because TCP ran out of memory (TcpExt: TCPAbortOnMemory).",
    counter "netexporter_tcpext_tcpabortontimeout" "RSTs sent after keepalive, window-probe or retransmit limits (TcpExt: TCPAbortOnTimeout).",
    counter "netexporter_tcpext_tcpabortonlinger" "RSTs sent when reaping FIN_WAIT2 under linger2 (TcpExt: TCPAbortOnLinger).",
    counter "netexporter_tcpext_tcpabortondata" "RSTs sent on data after close under linger (TcpExt: TCPAbortOnData).",
    counter "netexporter_tcpext_tcpabortfailed" "RSTs that could not be sent (TcpExt: TCPAbortFailed).",
    counter "netexporter_tcpext_tcpackskippedsynrecv" "ACKs not sent in SYN_RECV because of the rate limit (TcpExt: TCPACKSkippedSynRecv).",
    counter "netexporter_tcpext_tcpackskippedpaws" "ACKs not sent after PAWS because of the rate limit (TcpExt: TCPACKSkippedPAWS).",
    counter "netexporter_tcpext_tcpackskippedseq" "ACKs not sent for out-of-window sequences because of the rate limit (TcpExt: TCPACKSkippedSeq).",
    counter "netexporter_tcpext_tcpackskippedfinwait2" "ACKs not sent in FIN_WAIT2 because of the rate limit (TcpExt: TCPACKSkippedFinWait2).",
    counter "netexporter_tcpext_tcpackskippedtimewait" "ACKs not sent in TIME_WAIT because of the rate limit (TcpExt: TCPACKSkippedTimeWait).",
    counter "netexporter_tcpext_tcpackskippedchallenge" "Challenge ACKs not sent because of the rate limit (TcpExt: TCPACKSkippedChallenge).",
    counter "netexporter_tcpext_tcprcvqdrop" "Segments dropped because the receive queue could not get memory (TcpExt: TCPRcvQDrop).",
    counter "netexporter_tcpext_pawsestab" "Segments rejected by PAWS on established connections (TcpExt: PAWSEstab).",
    counter "netexporter_tcpext_tcpwinprobe" "Zero-window probes sent (TcpExt: TCPWinProbe).",
    counter "netexporter_tcpext_tcpkeepalive" "Keepalive probes sent (TcpExt: TCPKeepAlive).",
    counter "netexporter_tcpext_tcpmtupfail" "Path MTU probes that failed (TcpExt: TCPMTUPFail).",
    counter "netexporter_tcpext_tcpmtupsuccess" "Path MTU probes that succeeded (TcpExt: TCPMTUPSuccess).",
    counter "netexporter_tcpext_tcpzerowindowdrop" "Segments dropped because the receive window was zero (TcpExt: TCPZeroWindowDrop).",
    counter "netexporter_tcpext_tcpbacklogdrop" "Segments dropped because the socket backlog was full (TcpExt: TCPBacklogDrop).",
    counter "netexporter_tcpext_pfmemallocdrop" "Segments dropped under PF_MEMALLOC memory pressure (TcpExt: PFMemallocDrop).",
    counter "netexporter_tcpext_tcpwqueuetoobig" "Sends refused because the write queue was too big (TcpExt: TCPWqueueTooBig).",
    counter "netexporter_tcpext_embryonicrsts" "RSTs received on half-open SYN_RECV connections (TcpExt: EmbryonicRsts).",
    counter "netexporter_tcpext_tcpmemorypressures" "Times TCP entered memory pressure (TcpExt: TCPMemoryPressures).",
    counter "netexporter_tcpext_tcpmemorypressureschrono" "Milliseconds spent under TCP memory pressure (TcpExt: TCPMemoryPressuresChrono).",
];

pub fn parse(netstat: &[u8]) -> Result<Vec<Series>> {
    Ok(vec![Series::new(format::snmp_section(
        netstat, "TcpExt", FIELDS,
    )?)])
}

impl Build for TcpExt {
    const NAME: &'static str = "tcpext";
    const SCOPE: Scope = Scope::Pod;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Probe for TcpExt {
    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        parse(&src.net_file(NetFile::Netstat)?).context("/proc/net/netstat")
    }
}
