//! Every probe against the kernel itself: the real agent scrapes real namespaces, veth pairs,
//! qdiscs, sockets and conntrack state made here, and every value it reports must equal what a
//! standard tool (`nstat`, `ip`, `ss`, `tc`, `conntrack`, `cat` of /proc) reads in the same
//! namespace. The agent is never compared with itself.
//!
//! Values can move while a test runs (TCP timers, background traffic of the machine), so each
//! comparison reads the kernel before and after the scrape: a counter must lie between the two
//! reads, a gauge must equal both. A round in which a gauge moved is repeated (a few times at
//! most); a counter outside its bounds fails at once.
//!
//! Every namespace, link, iptables rule, conntrack entry and process made here is removed by a
//! guard, also when an assertion fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const NODE: &str = "itest-node";

/// The probes whose metrics this file compares with the kernel. Each of them (and every other
/// collector the agent runs) must report success in every scrape here.
const PROBES: &[&str] = &[
    "conntrack",
    "qdisc",
    "netdev",
    "tcp",
    "tcpext",
    "sock",
    "softnet",
    "tcpsummary",
    "arp",
    "sockbacklog",
    "tcphash",
];

/// Rounds of "read, scrape, read" before a gauge that keeps moving fails the test.
const ROUNDS: usize = 8;

// ---- Where each metric is in the kernel, per the spec ----

/// `Tcp:` fields of `nstat` (named `Tcp<Field>` there). CurrEstab is not here: nstat leaves it
/// out, so it is read from /proc/net/snmp.
const TCP_NSTAT: &[(&str, &str)] = &[
    ("netexporter_tcp_attemptfails", "AttemptFails"),
    ("netexporter_tcp_estabresets", "EstabResets"),
    ("netexporter_tcp_inerrs", "InErrs"),
    ("netexporter_tcp_insegs", "InSegs"),
    ("netexporter_tcp_outrsts", "OutRsts"),
    ("netexporter_tcp_outsegs", "OutSegs"),
    ("netexporter_tcp_activeopens", "ActiveOpens"),
    ("netexporter_tcp_passiveopens", "PassiveOpens"),
    ("netexporter_tcp_retransseg", "RetransSegs"),
];

/// `TcpExt:` fields of `nstat` (named `TcpExt<Field>` there).
const TCPEXT_NSTAT: &[(&str, &str)] = &[
    ("netexporter_tcpext_listenoverflows", "ListenOverflows"),
    ("netexporter_tcpext_listendrops", "ListenDrops"),
    ("netexporter_tcpext_tcpsynretrans", "TCPSynRetrans"),
    ("netexporter_tcpext_tcpfastretrans", "TCPFastRetrans"),
    ("netexporter_tcpext_tcpretransfail", "TCPRetransFail"),
    ("netexporter_tcpext_tcptimeouts", "TCPTimeouts"),
    ("netexporter_tcpext_tcpabortonclose", "TCPAbortOnClose"),
    ("netexporter_tcpext_tcpabortonmemory", "TCPAbortOnMemory"),
    ("netexporter_tcpext_tcpabortontimeout", "TCPAbortOnTimeout"),
    ("netexporter_tcpext_tcpabortonlinger", "TCPAbortOnLinger"),
    ("netexporter_tcpext_tcpabortondata", "TCPAbortOnData"),
    ("netexporter_tcpext_tcpabortfailed", "TCPAbortFailed"),
    (
        "netexporter_tcpext_tcpackskippedsynrecv",
        "TCPACKSkippedSynRecv",
    ),
    ("netexporter_tcpext_tcpackskippedpaws", "TCPACKSkippedPAWS"),
    ("netexporter_tcpext_tcpackskippedseq", "TCPACKSkippedSeq"),
    (
        "netexporter_tcpext_tcpackskippedfinwait2",
        "TCPACKSkippedFinWait2",
    ),
    (
        "netexporter_tcpext_tcpackskippedtimewait",
        "TCPACKSkippedTimeWait",
    ),
    (
        "netexporter_tcpext_tcpackskippedchallenge",
        "TCPACKSkippedChallenge",
    ),
    ("netexporter_tcpext_tcprcvqdrop", "TCPRcvQDrop"),
    ("netexporter_tcpext_pawsestab", "PAWSEstab"),
    ("netexporter_tcpext_tcpwinprobe", "TCPWinProbe"),
    ("netexporter_tcpext_tcpkeepalive", "TCPKeepAlive"),
    ("netexporter_tcpext_tcpmtupfail", "TCPMTUPFail"),
    ("netexporter_tcpext_tcpmtupsuccess", "TCPMTUPSuccess"),
    ("netexporter_tcpext_tcpzerowindowdrop", "TCPZeroWindowDrop"),
    ("netexporter_tcpext_tcpbacklogdrop", "TCPBacklogDrop"),
    ("netexporter_tcpext_pfmemallocdrop", "PFMemallocDrop"),
    ("netexporter_tcpext_tcpwqueuetoobig", "TCPWqueueTooBig"),
    ("netexporter_tcpext_embryonicrsts", "EmbryonicRsts"),
    (
        "netexporter_tcpext_tcpmemorypressures",
        "TCPMemoryPressures",
    ),
    (
        "netexporter_tcpext_tcpmemorypressureschrono",
        "TCPMemoryPressuresChrono",
    ),
];

/// (metric, sockstat line, field).
const SOCKSTAT: &[(&str, &str, &str)] = &[
    ("netexporter_sock_inuse", "TCP", "inuse"),
    ("netexporter_sock_orphan", "TCP", "orphan"),
    ("netexporter_sock_tw", "TCP", "tw"),
    ("netexporter_sock_alloc", "TCP", "alloc"),
    ("netexporter_sock_mem", "TCP", "mem"),
    ("netexporter_sock_inuse_udp", "UDP", "inuse"),
    ("netexporter_sock_mem_udp", "UDP", "mem"),
];

/// (metric, direction, key) in the `stats64` object of `ip -s -s -j link show`.
const NETDEV: &[(&str, &str, &str)] = &[
    ("netexporter_netdev_rxbytes", "rx", "bytes"),
    ("netexporter_netdev_rxerrors", "rx", "errors"),
    ("netexporter_netdev_rxpackets", "rx", "packets"),
    ("netexporter_netdev_rxdropped", "rx", "dropped"),
    ("netexporter_netdev_txbytes", "tx", "bytes"),
    ("netexporter_netdev_txerrors", "tx", "errors"),
    ("netexporter_netdev_rxfifos", "rx", "fifo_errors"),
    ("netexporter_netdev_txfifos", "tx", "fifo_errors"),
    ("netexporter_netdev_rxcrcerrors", "rx", "crc_errors"),
    ("netexporter_netdev_txpackets", "tx", "packets"),
    ("netexporter_netdev_txdropped", "tx", "dropped"),
];

/// Pod-scope metrics read from single sources: CurrEstab from /proc/net/snmp (nstat leaves it
/// out), the others from `ss`.
const POD_OTHERS: &[&str] = &[
    "netexporter_tcp_currestab",
    "netexporter_tcpsummary_tcpestablishedconn",
    "netexporter_tcpsummary_tcptimewaitconn",
    "netexporter_tcpsummary_tcptxqueue",
    "netexporter_tcpsummary_tcprxqueue",
    "netexporter_sockbacklog_recvq",
];

/// (metric, key of `conntrack -S`, column of /proc/net/stat/nf_conntrack). The column is read
/// only when `conntrack -S` does not print the key (it has no `ignore`: the kernel stopped
/// counting it, and its /proc column stays for compatibility).
const CONNTRACK: &[(&str, &str, &str)] = &[
    ("netexporter_conntrack_found", "found", "found"),
    ("netexporter_conntrack_invalid", "invalid", "invalid"),
    ("netexporter_conntrack_ignore", "ignore", "ignore"),
    ("netexporter_conntrack_insert", "insert", "insert"),
    (
        "netexporter_conntrack_insertfailed",
        "insert_failed",
        "insert_failed",
    ),
    ("netexporter_conntrack_drop", "drop", "drop"),
    (
        "netexporter_conntrack_earlydrop",
        "early_drop",
        "early_drop",
    ),
    ("netexporter_conntrack_error", "error", "icmp_error"),
    (
        "netexporter_conntrack_searchrestart",
        "search_restart",
        "search_restart",
    ),
];

/// (metric, key of `tc -s -j qdisc show`).
const QDISC: &[(&str, &str)] = &[
    ("netexporter_qdisc_bytes", "bytes"),
    ("netexporter_qdisc_packets", "packets"),
    ("netexporter_qdisc_drops", "drops"),
    ("netexporter_qdisc_overlimits", "overlimits"),
    ("netexporter_qdisc_backlog", "backlog"),
    ("netexporter_qdisc_qlen", "qlen"),
];

/// Node-scope metrics read from single sources (beside [`CONNTRACK`] and [`QDISC`]).
const NODE_OTHERS: &[&str] = &[
    "netexporter_conntrack_entries",
    "netexporter_conntrack_maxentries",
    "netexporter_arp_maxentries",
    "netexporter_arp_entries",
    "netexporter_arp_unresolveddiscards",
    "netexporter_softnet_processed",
    "netexporter_softnet_dropped",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// The spec's metrics of the probes in [`PROBES`] by scope, with their kind; checked against
/// the tables above, so that a metric added to one of these probes in the spec cannot go
/// untested here. (Other probes, and families the spec does not have, are left to the tests
/// of their own.)
struct Spec {
    pod: BTreeMap<String, Kind>,
    node: BTreeMap<String, Kind>,
}

impl Spec {
    fn load() -> Self {
        let mut pod = BTreeMap::new();
        let mut node = BTreeMap::new();
        for m in spec_metrics()
            .into_iter()
            .filter(|m| PROBES.contains(&m.probe.as_str()))
        {
            let kind = if m.kind == "counter" {
                Kind::Counter
            } else {
                Kind::Gauge
            };
            if m.is_pod() {
                pod.insert(m.name, kind);
            } else {
                node.insert(m.name, kind);
            }
        }
        let tested_pod: BTreeSet<String> = TCP_NSTAT
            .iter()
            .chain(TCPEXT_NSTAT)
            .map(|(m, _)| *m)
            .chain(SOCKSTAT.iter().map(|(m, _, _)| *m))
            .chain(NETDEV.iter().map(|(m, _, _)| *m))
            .chain(POD_OTHERS.iter().copied())
            .map(String::from)
            .collect();
        let tested_node: BTreeSet<String> = CONNTRACK
            .iter()
            .map(|(m, _, _)| *m)
            .chain(QDISC.iter().map(|(m, _)| *m))
            .chain(NODE_OTHERS.iter().copied())
            .map(String::from)
            .collect();
        assert_eq!(
            pod.keys().cloned().collect::<BTreeSet<_>>(),
            tested_pod,
            "the spec's Pod-scope metrics and the ones this file reads from the kernel differ"
        );
        assert_eq!(
            node.keys().cloned().collect::<BTreeSet<_>>(),
            tested_node,
            "the spec's node-scope metrics and the ones this file reads from the kernel differ"
        );
        Self { pod, node }
    }
}

// ---- Reading the kernel with standard tools ----

/// Values of one namespace: (metric, if_name or "") -> value.
type PodValues = BTreeMap<(String, String), u64>;
/// Node-scope values: metric -> value.
type NodeValues = BTreeMap<String, u64>;

fn json(text: &str, what: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: bad JSON ({e}):\n{text}"))
}

/// `name` of the `prefix:` section of /proc/net/snmp or /proc/net/netstat (a header line of
/// names followed by a line of values).
fn snmp_field(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let tag = format!("{prefix}:");
    let mut lines = text
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(&tag));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// `field` of the `line:` line of /proc/net/sockstat (`TCP: inuse 5 orphan 0 ...`).
fn sockstat_field(text: &str, line: &str, field: &str) -> Option<u64> {
    let tag = format!("{line}:");
    let words: Vec<&str> = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&tag))?
        .split_whitespace()
        .skip(1)
        .collect();
    words
        .chunks(2)
        .find(|kv| kv[0] == field)
        .and_then(|kv| kv.get(1)?.parse().ok())
}

/// Column sums of a per-CPU table of hexadecimal values under /proc/net/stat/ (a header line
/// of names, then one row per CPU).
fn percpu_hex_sums(text: &str) -> BTreeMap<String, u64> {
    let mut lines = text.lines();
    let names: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    let mut sums = vec![0u64; names.len()];
    for line in lines.filter(|l| !l.trim().is_empty()) {
        for (s, v) in sums.iter_mut().zip(line.split_whitespace()) {
            *s += u64::from_str_radix(v, 16).unwrap_or_else(|_| panic!("hex {v:?}"));
        }
    }
    names.into_iter().map(String::from).zip(sums).collect()
}

/// Every Pod-scope value of one namespace, read inside it.
fn read_namespace(ns: &Netns) -> PodValues {
    let mut out = PodValues::new();
    let mut put = |metric: &str, if_name: &str, v: u64| {
        out.insert((metric.to_string(), if_name.to_string()), v);
    };

    // Absolute counters, zeros included, without touching nstat's history file.
    let nstat = json(&ns.run(&["nstat", "-asz", "--json"]), "nstat");
    let kernel = &nstat["kernel"];
    for (metric, field) in TCP_NSTAT {
        if let Some(v) = kernel[format!("Tcp{field}")].as_u64() {
            put(metric, "", v);
        }
    }
    for (metric, field) in TCPEXT_NSTAT {
        if let Some(v) = kernel[format!("TcpExt{field}")].as_u64() {
            put(metric, "", v);
        }
    }
    // nstat leaves the CurrEstab gauge out; the kernel's own file has it.
    if let Some(v) = snmp_field(&ns.run(&["cat", "/proc/net/snmp"]), "Tcp", "CurrEstab") {
        put("netexporter_tcp_currestab", "", v);
    }

    let sockstat = ns.run(&["cat", "/proc/net/sockstat"]);
    for (metric, line, field) in SOCKSTAT {
        if let Some(v) = sockstat_field(&sockstat, line, field) {
            put(metric, "", v);
        }
    }

    let links = json(
        &ns.run(&["ip", "-s", "-s", "-j", "link", "show"]),
        "ip link",
    );
    for link in links.as_array().expect("ip link: array") {
        let name = link["ifname"].as_str().expect("ifname");
        let stats = &link["stats64"];
        for (metric, dir, key) in NETDEV {
            let v = stats[dir][key]
                .as_u64()
                .unwrap_or_else(|| panic!("ip -s -s -j link: no stats64.{dir}.{key} on {name}"));
            put(metric, name, v);
        }
    }

    // With one state filter ss prints no State column: Recv-Q and Send-Q come first.
    let (n, recvq, sendq) = ss_sums(&ns.run(&["ss", "-tanH", "state", "established"]), 0);
    put("netexporter_tcpsummary_tcpestablishedconn", "", n);
    put("netexporter_tcpsummary_tcprxqueue", "", recvq);
    put("netexporter_tcpsummary_tcptxqueue", "", sendq);
    let (n, _, _) = ss_sums(&ns.run(&["ss", "-tanH", "state", "time-wait"]), 0);
    put("netexporter_tcpsummary_tcptimewaitconn", "", n);
    // Listeners: State, then Recv-Q (the accept queue) and Send-Q (the backlog limit).
    let (_, accept_queue, _) = ss_sums(&ns.run(&["ss", "-tlnH"]), 1);
    put("netexporter_sockbacklog_recvq", "", accept_queue);
    out
}

/// Every node-scope value, read in the host's namespace. `qdisc_prefix` selects the devices
/// whose root qdiscs are summed, as the agent's configuration does.
fn read_node(qdisc_prefix: &str) -> NodeValues {
    let mut out = NodeValues::new();

    let mut ct = BTreeMap::<String, u64>::new();
    for line in run(&["conntrack", "-S"]).lines() {
        for (k, v) in line.split_whitespace().filter_map(|w| w.split_once('=')) {
            if k != "cpu" {
                *ct.entry(k.to_string()).or_default() += v.parse::<u64>().expect("conntrack -S");
            }
        }
    }
    let proc_ct = percpu_hex_sums(&run(&["cat", "/proc/net/stat/nf_conntrack"]));
    for (metric, key, column) in CONNTRACK {
        let v = ct
            .get(*key)
            .or_else(|| proc_ct.get(*column))
            .unwrap_or_else(|| panic!("neither conntrack -S nor nf_conntrack has {key}"));
        out.insert(metric.to_string(), *v);
    }
    let entries = run(&["conntrack", "-C"]);
    out.insert(
        "netexporter_conntrack_entries".into(),
        entries.trim().parse().expect("conntrack -C"),
    );
    let max = run(&["cat", "/proc/sys/net/netfilter/nf_conntrack_max"]);
    out.insert(
        "netexporter_conntrack_maxentries".into(),
        max.trim().parse().expect("nf_conntrack_max"),
    );

    let qdiscs = json(&run(&["tc", "-s", "-j", "qdisc", "show"]), "tc qdisc");
    let mut sums = [0u64; 6];
    for q in qdiscs.as_array().expect("tc: array") {
        let root = q["root"].as_bool() == Some(true);
        let dev = q["dev"].as_str().unwrap_or_default();
        if root && dev.starts_with(qdisc_prefix) {
            for (s, (_, key)) in sums.iter_mut().zip(QDISC) {
                *s += q[key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("tc: no {key} in {q}"));
            }
        }
    }
    for ((metric, _), s) in QDISC.iter().zip(sums) {
        out.insert(metric.to_string(), s);
    }

    // `ip neigh` leaves out NOARP entries (and ones in no state at all), as /proc/net/arp does.
    let neigh = json(&run(&["ip", "-4", "-j", "neigh", "show"]), "ip neigh");
    out.insert(
        "netexporter_arp_entries".into(),
        neigh.as_array().expect("ip neigh: array").len() as u64,
    );
    let thresh = run(&["cat", "/proc/sys/net/ipv4/neigh/default/gc_thresh3"]);
    out.insert(
        "netexporter_arp_maxentries".into(),
        thresh.trim().parse().expect("gc_thresh3"),
    );
    let arp_cache = percpu_hex_sums(&run(&["cat", "/proc/net/stat/arp_cache"]));
    out.insert(
        "netexporter_arp_unresolveddiscards".into(),
        arp_cache["unresolved_discards"],
    );

    let mut softnet = [0u64; 2];
    for line in run(&["cat", "/proc/net/softnet_stat"]).lines() {
        for (s, v) in softnet.iter_mut().zip(line.split_whitespace()) {
            *s += u64::from_str_radix(v, 16).expect("softnet_stat hex");
        }
    }
    out.insert("netexporter_softnet_processed".into(), softnet[0]);
    out.insert("netexporter_softnet_dropped".into(), softnet[1]);
    out
}

// ---- Scraping without disturbing what is compared ----

/// A kept-alive HTTP/1.1 connection to the agent, opened before the "before" reads and closed
/// after the "after" reads. The scrape's own sockets (and their conntrack entry) thus exist
/// in both reads: sockstat's TCP `alloc`, `orphan` and `mem` count the whole machine, and a
/// connection opened only for the scrape would be in the agent's reading and in neither of
/// the test's.
struct Conn {
    stream: TcpStream,
}

impl Conn {
    fn open(agent: &Agent) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", agent.port)).expect("connect to the agent");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        Self { stream }
    }

    fn scrape(&mut self) -> Scrape {
        write!(
            self.stream,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .expect("send the request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk).expect("read the response");
            assert!(n > 0, "the agent closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "scrape failed:\n{head}{}",
            String::from_utf8_lossy(&buf[head_end..])
        );
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("response without Content-Length:\n{head}"));
        while buf.len() < head_end + len {
            let n = self.stream.read(&mut chunk).expect("read the body");
            assert!(n > 0, "the agent closed the connection mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        Scrape::parse(&String::from_utf8_lossy(&buf[head_end..head_end + len]))
    }
}

// ---- Comparing ----

/// Problems of one round: `hard` ones fail the test at once, `soft` ones (a gauge that moved)
/// make the round be repeated.
#[derive(Default)]
struct Verdict {
    hard: Vec<String>,
    soft: Vec<String>,
}

impl Verdict {
    fn check(
        &mut self,
        what: &str,
        kind: Kind,
        before: Option<u64>,
        after: Option<u64>,
        scraped: Option<f64>,
    ) {
        let scraped = scraped.map(|s| {
            if s < 0.0 || s.fract() != 0.0 {
                self.hard
                    .push(format!("{what}: scraped {s} is not a count"));
            }
            s as u64
        });
        match (before, after, scraped) {
            (None, None, None) => {}
            (None, None, Some(s)) => self
                .hard
                .push(format!("{what}: scraped {s}, the kernel has no such value")),
            (Some(_), None, _) | (None, Some(_), _) => self.soft.push(format!(
                "{what}: appeared or vanished during the round ({before:?} -> {after:?})"
            )),
            (Some(b), Some(a), None) => self.hard.push(format!(
                "{what}: missing from the scrape; the kernel has {b} (before) and {a} (after)"
            )),
            (Some(b), Some(a), Some(s)) => match kind {
                Kind::Counter => {
                    if !(b <= s && s <= a) {
                        self.hard.push(format!(
                            "{what}: scraped {s}, the kernel's counter was {b} before and {a} after"
                        ));
                    }
                }
                Kind::Gauge => {
                    if b != a {
                        self.soft
                            .push(format!("{what}: gauge moved from {b} to {a} in the round"));
                    } else if s != b {
                        self.soft
                            .push(format!("{what}: scraped {s}, the kernel has {b}"));
                    }
                }
            },
        }
    }
}

/// The series of namespace `ns` in a scrape of the spec's Pod-scope families, keyed like
/// [`PodValues`]; checks their labels.
fn scraped_namespace(
    s: &Scrape,
    spec: &Spec,
    ns: &str,
    v: &mut Verdict,
) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for sample in s.samples.iter().filter(|x| {
        x.labels.get("netns").map(String::as_str) == Some(ns) && spec.pod.contains_key(&x.name)
    }) {
        let if_name = sample.labels.get("if_name").cloned();
        let expected_labels = 2 + usize::from(if_name.is_some());
        if sample.labels.get("k8s_node").map(String::as_str) != Some(NODE)
            || sample.labels.len() != expected_labels
            || (if_name.is_some() != sample.name.starts_with("netexporter_netdev_"))
        {
            v.hard
                .push(format!("{} has labels {:?}", sample.name, sample.labels));
        }
        let key = (sample.name.clone(), if_name.unwrap_or_default());
        if out.insert(key.clone(), sample.value).is_some() {
            v.hard.push(format!("{key:?} of netns {ns} twice"));
        }
    }
    out
}

fn compare_namespace(
    v: &mut Verdict,
    spec: &Spec,
    ns: &str,
    before: &PodValues,
    after: &PodValues,
    scrape: &Scrape,
) {
    let scraped = scraped_namespace(scrape, spec, ns, v);
    let keys: BTreeSet<&(String, String)> = before
        .keys()
        .chain(after.keys())
        .chain(scraped.keys())
        .collect();
    for key in keys {
        let (metric, if_name) = key;
        let what = if if_name.is_empty() {
            format!("{metric}{{netns={ns}}}")
        } else {
            format!("{metric}{{netns={ns},if_name={if_name}}}")
        };
        let Some(kind) = spec.pod.get(metric) else {
            v.hard
                .push(format!("{what}: not a Pod-scope metric of the spec"));
            continue;
        };
        v.check(
            &what,
            *kind,
            before.get(key).copied(),
            after.get(key).copied(),
            scraped.get(key).copied(),
        );
    }
}

fn compare_node(
    v: &mut Verdict,
    spec: &Spec,
    before: &NodeValues,
    after: &NodeValues,
    scrape: &Scrape,
) {
    for (metric, kind) in &spec.node {
        let samples = scrape.find(metric, &[]);
        let scraped = match samples.as_slice() {
            [] => None,
            [one] => {
                if one.labels.len() != 1
                    || one.labels.get("k8s_node").map(String::as_str) != Some(NODE)
                {
                    v.hard.push(format!("{metric} has labels {:?}", one.labels));
                }
                Some(one.value)
            }
            many => {
                v.hard
                    .push(format!("{metric}: {} series, one expected", many.len()));
                None
            }
        };
        v.check(
            metric,
            *kind,
            before.get(metric).copied(),
            after.get(metric).copied(),
            scraped,
        );
    }
}

/// Every collector the agent ran (each probe, and namespace discovery) must have succeeded in
/// the scrape, and those of [`PROBES`] must be among them.
fn check_collectors(v: &mut Verdict, scrape: &Scrape) {
    let success = scrape.find(
        "netexporter_scrape_collector_success",
        &[("k8s_node", NODE)],
    );
    for s in &success {
        if s.value != 1.0 || s.labels.len() != 2 {
            v.hard.push(format!(
                "netexporter_scrape_collector_success{:?} is {}, not 1",
                s.labels, s.value
            ));
        }
    }
    for c in PROBES.iter().chain(&["netns"]) {
        if !success
            .iter()
            .any(|s| s.labels.get("collector").map(String::as_str) == Some(*c))
        {
            v.hard
                .push(format!("no netexporter_scrape_collector_success for {c}"));
        }
    }
}

/// One round: kernel reads, a scrape, kernel reads again, all compared. `qdisc_prefix`: also
/// compare the node-scope metrics, with qdiscs summed over devices of this prefix.
fn round(
    agent: &Agent,
    spec: &Spec,
    namespaces: &[&Netns],
    qdisc_prefix: Option<&str>,
) -> (Verdict, Scrape) {
    let mut conn = Conn::open(agent);
    let pod_before: Vec<PodValues> = namespaces.iter().map(|n| read_namespace(n)).collect();
    let node_before = qdisc_prefix.map(read_node);
    let scrape = conn.scrape();
    let node_after = qdisc_prefix.map(read_node);
    let pod_after: Vec<PodValues> = namespaces.iter().map(|n| read_namespace(n)).collect();
    drop(conn);

    let mut v = Verdict::default();
    check_collectors(&mut v, &scrape);
    for (i, ns) in namespaces.iter().enumerate() {
        assert!(
            pod_before[i].len() > 40,
            "too few kernel values read in {}: {:?}",
            ns.name,
            pod_before[i]
        );
        compare_namespace(
            &mut v,
            spec,
            &ns.name,
            &pod_before[i],
            &pod_after[i],
            &scrape,
        );
    }
    if let (Some(b), Some(a)) = (&node_before, &node_after) {
        compare_node(&mut v, spec, b, a, &scrape);
    }
    (v, scrape)
}

/// Repeats [`round`] until no gauge moved; fails at once on a hard problem. Returns the scrape
/// of the clean round.
fn settle(agent: &Agent, spec: &Spec, namespaces: &[&Netns], qdisc_prefix: Option<&str>) -> Scrape {
    let mut last = Vec::new();
    for _ in 0..ROUNDS {
        let (v, scrape) = round(agent, spec, namespaces, qdisc_prefix);
        assert!(
            v.hard.is_empty(),
            "the agent disagrees with the kernel:\n{}\n\nagent log:\n{}",
            v.hard.join("\n"),
            agent.log_text()
        );
        if v.soft.is_empty() {
            return scrape;
        }
        eprintln!(
            "a gauge moved or differs, repeating the round:\n{}",
            v.soft.join("\n")
        );
        last = v.soft;
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "no round in {ROUNDS} where every gauge held still and matched; the last one:\n{}",
        last.join("\n")
    )
}

// ---- Building the scene ----

/// A veth pair like [`Veth::new`], with IPv6 off on both ends before they come up (no router
/// solicitations, MLD reports or DAD probes to move counters while they are compared) and
/// two queues (so that an `mq` root qdisc can sit on it). The host end is named
/// `nxh<tag><pid>x<n>`, so that a qdisc prefix can pick the devices of one test.
fn veth_v4(ns: &Netns, tag: &str, host_addr: &str, peer_addr: &str) -> Veth {
    let host = unique(&format!("nxh{tag}"));
    let peer = unique(&format!("nxp{tag}"));
    run(&[
        "ip",
        "link",
        "add",
        &host,
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        &peer,
    ]);
    let v = Veth { host, peer };
    run(&["ip", "link", "set", &v.peer, "netns", &ns.name]);
    let host_v6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", v.host);
    if Path::new(&host_v6).exists() {
        std::fs::write(&host_v6, "1").expect("disable IPv6 on the host end");
        ns.sh(&format!(
            "echo 1 > /proc/sys/net/ipv6/conf/{}/disable_ipv6",
            v.peer
        ));
    }
    run(&["ip", "addr", "add", host_addr, "dev", &v.host]);
    run(&["ip", "link", "set", &v.host, "up"]);
    ns.run(&["ip", "addr", "add", peer_addr, "dev", &v.peer]);
    ns.run(&["ip", "link", "set", &v.peer, "up"]);
    v
}

/// The MAC address of `dev`, in the host (`ns` None) or in a namespace.
fn mac(ns: Option<&Netns>, dev: &str) -> String {
    let cmd = ["ip", "-j", "link", "show", "dev", dev];
    let out = match ns {
        Some(ns) => ns.run(&cmd),
        None => run(&cmd),
    };
    json(&out, "ip link")[0]["address"]
        .as_str()
        .expect("address")
        .to_string()
}

fn operstate_up(ns: Option<&Netns>, dev: &str) -> bool {
    let cmd = ["ip", "-j", "link", "show", "dev", dev];
    let out = match ns {
        Some(ns) => ns.run(&cmd),
        None => run(&cmd),
    };
    json(&out, "ip link")[0]["operstate"].as_str() == Some("UP")
}

/// Waits until `marker` exists (the script made its sockets); fails if the process exits.
fn wait_ready(p: &mut Proc, marker: &Path) {
    let done = poll(Duration::from_secs(20), || {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("traffic script exited early with {status}");
        }
        marker.exists().then_some(())
    });
    assert!(done.is_some(), "{} never appeared", marker.display());
}

/// An iptables rule of the host, deleted on drop.
struct IptablesRule {
    table: &'static str,
    chain: &'static str,
    spec: Vec<String>,
}

impl IptablesRule {
    fn insert(table: &'static str, chain: &'static str, spec: &[&str]) -> Self {
        let mut cmd = vec!["iptables", "-w", "-t", table, "-I", chain];
        cmd.extend_from_slice(spec);
        run(&cmd);
        Self {
            table,
            chain,
            spec: spec.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Drop for IptablesRule {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-w", "-t", self.table, "-D", self.chain])
            .args(&self.spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The host's conntrack entries to or from these addresses, deleted on drop.
struct ConntrackEntries {
    addrs: Vec<String>,
}

impl Drop for ConntrackEntries {
    fn drop(&mut self) {
        for a in &self.addrs {
            for dir in ["-s", "-d"] {
                let _ = Command::new("conntrack")
                    .args(["-D", dir, a])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// The traffic scripts, written to a temporary directory.
struct Scripts {
    dir: tempfile::TempDir,
}

impl Scripts {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        for (name, text) in [
            ("ns_a.py", NS_A),
            ("host_a.py", HOST_A),
            ("ns_b.py", NS_B),
            ("l2.py", L2),
            ("ns_q.py", NS_Q),
            ("host_q.py", HOST_Q),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write a script");
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Namespace A: listeners that never call accept(), and a UDP socket that never reads.
const NS_A: &str = r#"
import signal, socket, sys
ready, addr = sys.argv[1], sys.argv[2]
# IPv4, fed over the veth by the host's clients: backlog 2 holds 3 connections.
l4 = socket.socket()
l4.bind((addr, 7001))
l4.listen(2)
# IPv6 on ::1 with two clients of its own.
l6 = socket.socket(socket.AF_INET6)
l6.bind(("::1", 7003))
l6.listen(8)
c6 = [socket.create_connection(("::1", 7003)) for _ in range(2)]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((addr, 7002))
open(ready, "w").close()
while True:
    signal.pause()
"#;

/// The host's side of namespace A: fills the accept queue, overflows it once, knocks on a
/// closed port and sends datagrams nobody reads.
const HOST_A: &str = r#"
import socket, sys, time
ready, addr = sys.argv[1], sys.argv[2]
held = [socket.create_connection((addr, 7001), timeout=5) for _ in range(3)]
# Let the last handshake land in the accept queue before overflowing it.
time.sleep(0.3)
late = socket.socket()
late.settimeout(0.5)
try:
    late.connect((addr, 7001))
    sys.exit("a fourth connection got into a full accept queue")
except OSError:
    pass
late.close()
try:
    socket.create_connection((addr, 7009), timeout=5)
    sys.exit("connected to a closed port")
except ConnectionRefusedError:
    pass
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5):
    u.sendto(b"itest %d" % i, (addr, 7002))
open(ready, "w").close()
while True:
    time.sleep(3600)
"#;

/// Namespace B: bytes queued both ways, TIME-WAIT, an abort with unread data, an IPv6
/// connection with unread bytes, and datagrams to the host over the veth.
const NS_B: &str = r#"
import fcntl, select, socket, struct, sys, termios, time
ready, addr, host = sys.argv[1], sys.argv[2], sys.argv[3]
def pair(family, ip, port):
    l = socket.socket(family)
    l.bind((ip, port))
    l.listen(8)
    c = socket.create_connection((ip, port))
    a, _ = l.accept()
    return l, c, a
def readable(s):
    if not select.select([s], [], [], 5)[0]:
        sys.exit("nothing arrived")
# The server never reads; the client writes until its send buffer is full too.
lb, cb, ab = pair(socket.AF_INET, "127.0.0.1", 7101)
cb.setblocking(False)
while True:
    try:
        cb.send(b"x" * 65536)
    except BlockingIOError:
        break
# A zero-window probe or two can still move some bytes: wait until the sender's queue
# (SIOCOUTQ, ss's Send-Q) and the receiver's (SIOCINQ, Recv-Q) held still for a second.
def queued(s, request):
    return struct.unpack("i", fcntl.ioctl(s, request, b"\0" * 4))[0]
last, still = None, 0
while still < 10:
    now = (queued(cb, termios.TIOCOUTQ), queued(ab, termios.FIONREAD))
    still = still + 1 if now == last else 0
    last = now
    time.sleep(0.1)
# The client closes first: its side stays in TIME-WAIT.
for port in (7102, 7103):
    l, c, a = pair(socket.AF_INET, "127.0.0.1", port)
    c.close()
    readable(a)
    a.recv(1)
    a.close()
    l.close()
# The server closes with unread data: a RST (TCPAbortOnClose, EstabResets).
l, c, a = pair(socket.AF_INET, "127.0.0.1", 7104)
c.sendall(b"unread")
readable(a)
a.close()
l.close()
readable(c)
try:
    c.recv(1)
except ConnectionResetError:
    pass
c.close()
l6, c6, a6 = pair(socket.AF_INET6, "::1", 7105)
c6.sendall(b"y" * 1000)
readable(a6)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((addr, 7201))
for i in range(4):
    u.sendto(b"itest", (host, 7202))
open(ready, "w").close()
while True:
    time.sleep(3600)
"#;

/// Sends `count` Ethernet frames of an unassigned EtherType out of `dev`; with `bypass` they
/// skip the qdisc layer and reach the driver even when the link has no carrier.
const L2: &str = r#"
import socket, sys
dev, dst, count, bypass = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), int(sys.argv[3]), sys.argv[4] == "1"
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
if bypass:
    s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS
src = s.getsockname()[4]
for _ in range(count):
    try:
        s.send(dst + src + b"\x88\xb5" + b"net-exporter itest" * 3)
    except OSError:
        pass  # ENOBUFS: the driver dropped it, which is the point
"#;

/// The node test's namespace: a listener that holds the host's TCP connection.
const NS_Q: &str = r#"
import signal, socket, sys
ready, addr = sys.argv[1], sys.argv[2]
l = socket.socket()
l.bind((addr, 7305))
l.listen(8)
open(ready, "w").close()
while True:
    signal.pause()
"#;

/// The host's traffic of the node test, one peer address per veth:
/// 1 pfifo, 2 mq, 3 tbf at 1 byte/s, 4 no ARP answer.
const HOST_Q: &str = r#"
import socket, struct, sys, time
ready, src, p1, p2, p3, p4 = sys.argv[1:7]
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def icmp(kind, code, rest):
    h = struct.pack("!BBH", kind, code, 0) + rest
    return h[:2] + struct.pack("!H", csum(h)) + h[4:]
held = socket.create_connection((p1, 7305), timeout=5)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(10):
    u.sendto(b"itest %d" % i, (p1, 7301))
    u.sendto(b"itest %d" % i, (p2, 7302))
# tbf: the first pass on the initial burst, then 3000 bytes wait, the rest are dropped.
for i in range(10):
    u.sendto(b"q" * 500, (p3, 7303))
# No ARP answer: each datagram pushes the previous one out of the unresolved queue.
for i in range(6):
    u.sendto(b"itest", (p4, 7304))
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
# Echo replies without a request: conntrack "invalid".
for i in range(3):
    raw.sendto(icmp(0, 0, struct.pack("!HH", 0x4e58, i) + b"itest"), (p1, 0))
# Port unreachables about a flow that never existed: conntrack "icmp_error".
for i in range(4):
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, socket.inet_aton(p1), socket.inet_aton(src))
    inner = inner[:10] + struct.pack("!H", csum(inner)) + inner[12:]
    udp = struct.pack("!HHHH", 40000 + i, 9, 8, 0)
    raw.sendto(icmp(3, 3, b"\0\0\0\0" + inner + udp), (p1, 0))
open(ready, "w").close()
while True:
    time.sleep(3600)
"#;

// ---- The tests ----

/// Two namespaces with veths to the host, TCP and UDP over the veths and over loopback, full
/// accept queues, bytes queued both ways, TIME-WAIT, resets and dropped frames: every
/// Pod-scope series of both equals the kernel's value read inside the namespace.
#[test]
fn pod_metrics_equal_kernel_values_in_each_namespace() {
    require_root();
    let spec = Spec::load();
    let scripts = Scripts::new();
    let agent = Agent::start(&[]);

    let ns_a = Netns::new("nxa");
    let veth_a = veth_v4(&ns_a, "a", "10.203.1.1/30", "10.203.1.2/30");
    let ns_b = Netns::new("nxb");
    let veth_b = veth_v4(&ns_b, "b", "10.203.2.1/30", "10.203.2.2/30");

    // Frames of an EtherType nobody handles: dropped on receive by A's end (rx_dropped).
    run(&[
        "python3",
        &scripts.path("l2.py"),
        &veth_a.host,
        &mac(Some(&ns_a), &veth_a.peer),
        "3",
        "0",
    ]);
    // Frames sent by B's end while the host's end is down: dropped by the driver (tx_dropped).
    run(&["ip", "link", "set", &veth_b.host, "down"]);
    ns_b.run(&[
        "python3",
        &scripts.path("l2.py"),
        &veth_b.peer,
        &mac(None, &veth_b.host),
        "2",
        "1",
    ]);
    run(&["ip", "link", "set", &veth_b.host, "up"]);
    assert!(
        poll(Duration::from_secs(10), || {
            (operstate_up(None, &veth_b.host) && operstate_up(Some(&ns_b), &veth_b.peer))
                .then_some(())
        })
        .is_some(),
        "veth {} did not come back up",
        veth_b.host
    );

    let mut server_a = ns_a.spawn(&[
        "python3",
        &scripts.path("ns_a.py"),
        &scripts.path("ready_a"),
        "10.203.1.2",
    ]);
    wait_ready(&mut server_a, &scripts.marker("ready_a"));
    let mut clients_a = Proc::spawn(&[
        "python3",
        &scripts.path("host_a.py"),
        &scripts.path("ready_host_a"),
        "10.203.1.2",
    ]);
    wait_ready(&mut clients_a, &scripts.marker("ready_host_a"));
    let mut traffic_b = ns_b.spawn(&[
        "python3",
        &scripts.path("ns_b.py"),
        &scripts.path("ready_b"),
        "10.203.2.2",
        "10.203.2.1",
    ]);
    wait_ready(&mut traffic_b, &scripts.marker("ready_b"));

    let s = settle(&agent, &spec, &[&ns_a, &ns_b], None);

    // The scene is what it should be: the values compared above are not all zeros.
    let get = |ns: &Netns, metric: &str| {
        s.value(metric, &[("netns", &ns.name)])
            .unwrap_or_else(|| panic!("{metric} of {}", ns.name))
    };
    let dev = |ns: &Netns, metric: &str, if_name: &str| {
        s.value(metric, &[("netns", &ns.name), ("if_name", if_name)])
            .unwrap_or_else(|| panic!("{metric} of {if_name} in {}", ns.name))
    };
    // A: 3 IPv4 connections (from the host) and 2 IPv6 ones wait for accept().
    assert_eq!(get(&ns_a, "netexporter_sockbacklog_recvq"), 5.0);
    assert!(get(&ns_a, "netexporter_tcpext_listenoverflows") >= 1.0);
    assert!(get(&ns_a, "netexporter_tcpext_listendrops") >= 1.0);
    assert!(get(&ns_a, "netexporter_tcp_outrsts") >= 1.0);
    assert_eq!(get(&ns_a, "netexporter_tcpsummary_tcpestablishedconn"), 7.0);
    assert_eq!(get(&ns_a, "netexporter_tcp_currestab"), 7.0);
    assert!(get(&ns_a, "netexporter_sock_inuse_udp") >= 1.0);
    assert!(dev(&ns_a, "netexporter_netdev_rxdropped", &veth_a.peer) >= 3.0);
    assert!(dev(&ns_a, "netexporter_netdev_rxpackets", &veth_a.peer) > 0.0);
    assert!(dev(&ns_a, "netexporter_netdev_txbytes", &veth_a.peer) > 0.0);
    assert!(dev(&ns_a, "netexporter_netdev_rxbytes", "lo") > 0.0);
    // B: bytes queued both ways, two TIME-WAIT sockets, a reset.
    assert!(get(&ns_b, "netexporter_tcpsummary_tcptxqueue") > 0.0);
    assert!(get(&ns_b, "netexporter_tcpsummary_tcprxqueue") > 1000.0);
    assert_eq!(get(&ns_b, "netexporter_tcpsummary_tcptimewaitconn"), 2.0);
    assert_eq!(get(&ns_b, "netexporter_sock_tw"), 2.0);
    assert!(get(&ns_b, "netexporter_tcpext_tcpabortonclose") >= 1.0);
    assert!(get(&ns_b, "netexporter_tcp_estabresets") >= 1.0);
    assert!(get(&ns_b, "netexporter_sock_mem") > 0.0);
    assert!(get(&ns_b, "netexporter_sock_inuse_udp") >= 1.0);
    assert!(dev(&ns_b, "netexporter_netdev_txdropped", &veth_b.peer) >= 2.0);
    assert!(dev(&ns_b, "netexporter_netdev_txpackets", &veth_b.peer) > 0.0);
}

/// Conntrack, qdisc, ARP and softnet of the host lie between reads taken with conntrack, tc,
/// ip and /proc before and after the scrape. Qdiscs are summed over the root qdiscs of this
/// test's host veths only (the agent is configured with their prefix): a pfifo, an mq (whose
/// children must not be added again) and a tbf that holds packets back. A neighbour entry in
/// no state at all (NUD_NONE) is present and must not be counted, as `ip neigh` and
/// /proc/net/arp do not count it.
#[test]
fn node_metrics_match_conntrack_tc_ip_and_proc() {
    require_root();
    let spec = Spec::load();
    let scripts = Scripts::new();
    require_conntrack();
    let prefix = format!("nxhq{}x", std::process::id() % 10000);
    let config = scripts.dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!("probes:\n  qdisc:\n    device_prefixes: [{prefix}]\n"),
    )
    .expect("write the agent's config");
    let agent = Agent::start(&[&format!("--config.file={}", config.display())]);

    let ns = Netns::new("nxq");
    let pfifo = veth_v4(&ns, "q", "10.203.3.1/30", "10.203.3.2/30");
    let mq = veth_v4(&ns, "q", "10.203.3.5/30", "10.203.3.6/30");
    let tbf = veth_v4(&ns, "q", "10.203.3.9/30", "10.203.3.10/30");
    let unresolved = veth_v4(&ns, "q", "10.203.3.13/30", "10.203.3.14/30");
    let none = veth_v4(&ns, "q", "10.203.3.17/30", "10.203.3.18/30");
    for v in [&pfifo, &mq, &tbf, &unresolved, &none] {
        assert!(v.host.starts_with(&prefix), "{} vs {prefix}", v.host);
    }

    run(&["tc", "qdisc", "add", "dev", &pfifo.host, "root", "pfifo"]);
    run(&["tc", "qdisc", "add", "dev", &mq.host, "root", "mq"]);
    // 1 byte/s: what the initial burst does not cover stays queued for minutes.
    run(&[
        "tc", "qdisc", "add", "dev", &tbf.host, "root", "tbf", "rate", "8bit", "burst", "1600",
        "limit", "3000",
    ]);
    // The tbf veth needs no ARP (whose request would sit in the queue too).
    run(&[
        "ip",
        "neigh",
        "add",
        "10.203.3.10",
        "dev",
        &tbf.host,
        "lladdr",
        &mac(Some(&ns), &tbf.peer),
        "nud",
        "permanent",
    ]);
    // The namespace never answers ARP on this veth, and the host keeps one packet waiting.
    ns.sh(&format!(
        "echo 8 > /proc/sys/net/ipv4/conf/{}/arp_ignore",
        unresolved.peer
    ));
    std::fs::write(
        format!(
            "/proc/sys/net/ipv4/neigh/{}/unres_qlen_bytes",
            unresolved.host
        ),
        "1",
    )
    .expect("unres_qlen_bytes");
    // An entry in no NUD state: `ip neigh` and /proc/net/arp leave it out.
    run(&[
        "ip",
        "neigh",
        "add",
        "10.203.3.18",
        "dev",
        &none.host,
        "nud",
        "none",
    ]);

    // Conntrack hooks in the host's namespace (a conntrack match registers them), so that
    // this test's packets go through conntrack.
    let _entries = ConntrackEntries {
        addrs: ["10.203.3.1", "10.203.3.5", "10.203.3.9", "10.203.3.13"]
            .map(String::from)
            .to_vec(),
    };
    let _rule = IptablesRule::insert(
        "filter",
        "OUTPUT",
        &[
            "-o",
            &pfifo.host,
            "-m",
            "conntrack",
            "--ctstate",
            "NEW,ESTABLISHED,RELATED,INVALID",
            "-m",
            "comment",
            "--comment",
            "net-exporter itest",
            "-j",
            "ACCEPT",
        ],
    );

    let mut listener = ns.spawn(&[
        "python3",
        &scripts.path("ns_q.py"),
        &scripts.path("ready_q"),
        "10.203.3.2",
    ]);
    wait_ready(&mut listener, &scripts.marker("ready_q"));
    let mut traffic = Proc::spawn(&[
        "python3",
        &scripts.path("host_q.py"),
        &scripts.path("ready_host_q"),
        "10.203.3.1",
        "10.203.3.2",
        "10.203.3.6",
        "10.203.3.10",
        "10.203.3.14",
    ]);
    wait_ready(&mut traffic, &scripts.marker("ready_host_q"));
    let neigh_all = run(&["ip", "-4", "neigh", "show", "nud", "all", "dev", &none.host]);
    assert!(
        neigh_all.contains("10.203.3.18"),
        "no NUD_NONE entry: {neigh_all}"
    );

    let s = settle(&agent, &spec, &[&ns], Some(&prefix));

    let get = |metric: &str| {
        s.value(metric, &[])
            .unwrap_or_else(|| panic!("{metric} missing"))
    };
    assert!(get("netexporter_conntrack_invalid") >= 3.0);
    assert!(get("netexporter_conntrack_error") >= 4.0);
    assert!(get("netexporter_conntrack_entries") >= 1.0);
    assert!(get("netexporter_conntrack_maxentries") > 0.0);
    assert!(get("netexporter_qdisc_bytes") > 0.0);
    assert!(get("netexporter_qdisc_packets") > 0.0);
    assert!(get("netexporter_qdisc_drops") > 0.0);
    assert!(get("netexporter_qdisc_overlimits") > 0.0);
    assert!(get("netexporter_qdisc_backlog") > 0.0);
    assert!(get("netexporter_qdisc_qlen") > 0.0);
    // 10.203.3.2, .6, .10 and .14 at least; .18 (NUD_NONE) is not counted.
    assert!(get("netexporter_arp_entries") >= 4.0);
    assert!(get("netexporter_arp_maxentries") > 0.0);
    assert!(get("netexporter_arp_unresolveddiscards") >= 5.0);
    assert!(get("netexporter_softnet_processed") > 0.0);
}

/// A namespace deleted between two scrapes has no series in the second one, under its name or
/// any other, and the agent lets it go (its veth disappears with it).
#[test]
fn deleted_namespace_is_gone_from_the_next_scrape() {
    require_root();
    let spec = Spec::load();
    let agent = Agent::start(&[]);
    let ns = Netns::new("nxd");
    let veth = veth_v4(&ns, "d", "10.203.4.1/30", "10.203.4.2/30");
    let sleeper = ns.spawn(&["sleep", "600"]);

    let s = settle(&agent, &spec, &[&ns], None);
    let name = ns.name.clone();
    let families: BTreeSet<&str> = s
        .samples
        .iter()
        .filter(|x| x.labels.get("netns") == Some(&name))
        .map(|x| x.name.as_str())
        .collect();
    for family in spec.pod.keys() {
        assert!(families.contains(family.as_str()), "{family} of {name}");
    }

    drop(sleeper);
    drop(ns);
    let s = agent.scrape();
    let mut v = Verdict::default();
    check_collectors(&mut v, &s);
    assert!(v.hard.is_empty(), "{}", v.hard.join("\n"));
    let left: Vec<String> = s
        .samples
        .iter()
        .filter(|x| {
            x.labels.get("netns") == Some(&name) || x.labels.get("if_name") == Some(&veth.peer)
        })
        .map(|x| format!("{} {:?}", x.name, x.labels))
        .collect();
    assert!(
        left.is_empty(),
        "series of a deleted namespace:\n{}",
        left.join("\n")
    );

    // Nothing holds the namespace any more: the kernel frees it, and its veth with it.
    let gone = poll(Duration::from_secs(20), || {
        let out = output(&["ip", "link", "show", "dev", &veth.host]);
        (!out.status.success()).then_some(())
    });
    assert!(
        gone.is_some(),
        "namespace {name} is still alive after the agent's scrape (its veth {} exists)",
        veth.host
    );
}

/// Restores a host sysctl on drop, so a failing test leaves the machine as it found it.
struct HostSysctl {
    name: &'static str,
    was: String,
}

impl HostSysctl {
    fn set(name: &'static str, value: &str) -> Self {
        let was = run(&["sysctl", "-n", name]).trim().to_string();
        run(&["sysctl", "-qw", &format!("{name}={value}")]);
        Self { name, was }
    }
}

impl Drop for HostSysctl {
    fn drop(&mut self) {
        let _ = output(&["sysctl", "-qw", &format!("{}={}", self.name, self.was)]);
    }
}

/// A namespace made with the host's default shares its TCP hash; one made while
/// `tcp_child_ehash_entries` is set has its own of that size. The agent's gauge says which and
/// how big, as `sysctl net.ipv4.tcp_ehash_entries` reads in each (negative: shared).
#[test]
fn tcp_hash_buckets_say_whether_a_namespace_shares_the_hosts_hash() {
    require_root();
    let sysctl = |ns: Option<&Netns>| -> i64 {
        let v = match ns {
            Some(ns) => ns.run(&["sysctl", "-n", "net.ipv4.tcp_ehash_entries"]),
            None => run(&["sysctl", "-n", "net.ipv4.tcp_ehash_entries"]),
        };
        v.trim().parse().expect("tcp_ehash_entries")
    };
    let shared = {
        let _default = HostSysctl::set("net.ipv4.tcp_child_ehash_entries", "0");
        Netns::new("hsh")
    };
    let own = {
        let _set = HostSysctl::set("net.ipv4.tcp_child_ehash_entries", "1024");
        Netns::new("hown")
    };
    let agent = Agent::start(&[]);
    let scrape = poll(Duration::from_secs(20), || {
        let s = agent.scrape();
        let seen = s.find("netexporter_tcp_hash_buckets", &[("netns", &own.name)]);
        (!seen.is_empty()).then_some(s)
    })
    .expect("the namespaces' tcp_hash_buckets");
    for (ns, want) in [
        (None, "false"),
        (Some(&shared), "true"),
        (Some(&own), "false"),
    ] {
        let truth = sysctl(ns);
        let who = ns.map_or("the node", |n| n.name.as_str());
        let samples: Vec<&Sample> = scrape
            .find("netexporter_tcp_hash_buckets", &[])
            .into_iter()
            .filter(|s| s.labels.get("netns").map(String::as_str) == ns.map(|n| n.name.as_str()))
            .collect();
        assert_eq!(samples.len(), 1, "{who}: {samples:?}");
        assert_eq!(samples[0].value, truth.unsigned_abs() as f64, "{who}");
        assert_eq!(
            samples[0].labels.get("shared").map(String::as_str),
            Some(want),
            "{who}"
        );
        assert_eq!(truth < 0, want == "true", "{who}: sysctl reads {truth}");
    }
    assert_eq!(sysctl(Some(&own)), 1024);
}
