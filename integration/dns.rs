//! The `dns` probe on real namespaces: a client namespace P (the "Pod") queries, through a veth,
//! a real resolver (dnsmasq) and a small test resolver (answers by the name asked: SERVFAIL,
//! REFUSED, a fixed delay, or one past the timeout) in a resolver namespace R, and an address
//! there whose DNS packets are dropped. The client's own record of every answer (its rcode
//! and record count, or that it got none) is the independent truth: the agent's counters per
//! resolver, type, rcode and protocol must equal it exactly.

use std::time::Duration;

use net_exporter::probes::dns::bpf::DnsCounter;

use crate::harness::*;

const P_IP: &str = "10.212.0.1";
/// dnsmasq.
const DNSMASQ: &str = "10.212.0.2";
/// The test resolver: every answer after `DELAY_MS`, those to `late.test` after `LATE_MS`.
const DELAYED: &str = "10.212.0.3";
/// DNS packets to it are dropped.
const SILENT: &str = "10.212.0.4";
const DELAY_MS: u64 = 300;
const LATE_MS: u64 = 1500;
/// The agent's `probes.dns.timeout`.
const TIMEOUT: &str = "1s";
/// Rounds of search-path expansion: two NXDOMAINs, then the name resolved.
const EXPANDED: u64 = 3;

/// Asks `server` `count` times, each from a new socket with a random id, for `name` of type
/// `qtype` over `proto` (udp: sendto on an unconnected socket, as musl and dig do;
/// udp-connected: connect then send, as glibc does; tcp), waiting `wait` seconds for each
/// answer. Prints, per
/// query, `RCODE/ANCOUNT` or `none`.
fn ask(
    ns: &Netns,
    server: &str,
    name: &str,
    qtype: u16,
    proto: &str,
    count: u32,
    wait: f64,
) -> String {
    let script = format!(
        "import random, socket, struct\n\
         def recvall(s, n):\n    b = b''\n    while len(b) < n:\n        c = s.recv(n - len(b))\n        if not c: raise OSError('closed')\n        b += c\n    return b\n\
         def one():\n    q = struct.pack('>HHHHHH', random.randrange(65536), 0x0100, 1, 0, 0, 0)\n    for l in '{name}'.split('.'):\n        q += bytes([len(l)]) + l.encode()\n    q += b'\\0' + struct.pack('>HH', {qtype}, 1)\n    try:\n        if '{proto}' == 'udp':\n            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout({wait})\n            s.sendto(q, ('{server}', 53)); a = s.recv(4096)\n        elif '{proto}' == 'udp-connected':\n            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout({wait})\n            s.connect(('{server}', 53)); s.send(q); a = s.recv(4096)\n        else:\n            s = socket.create_connection(('{server}', 53), timeout={wait})\n            s.sendall(struct.pack('>H', len(q)) + q)\n            a = recvall(s, struct.unpack('>H', recvall(s, 2))[0])\n        s.close()\n    except OSError:\n        return 'none'\n    return '%d/%d' % (a[3] & 15, struct.unpack('>H', a[6:8])[0])\n\
         print(' '.join(one() for _ in range({count})))\n"
    );
    ns.run(&["python3", "-c", &script]).trim().to_string()
}

/// The test resolver on `DELAYED`: SERVFAIL to `servfail.*`, REFUSED to `refused.*`, no answer
/// to `silent.*`, else one A record; each after `DELAY_MS` (`late.*`: `LATE_MS`).
fn delayed_resolver(ns: &Netns) -> Proc {
    let script = format!(
        "import socket, struct, threading, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('{DELAYED}', 53))\n\
         def answer(q, peer):\n    i, labels = 12, []\n    while q[i]:\n        labels.append(q[i + 1:i + 1 + q[i]].decode()); i += 1 + q[i]\n    name = '.'.join(labels)\n    rcode = 2 if name.startswith('servfail') else 5 if name.startswith('refused') else 0\n    time.sleep(({LATE_MS} if name.startswith('late') else {DELAY_MS}) / 1000)\n    an = 1 if rcode == 0 else 0\n    a = q[:2] + struct.pack('>HHHHH', 0x8180 | rcode, 1, an, 0, 0) + q[12:i + 5]\n    if an:\n        a += b'\\xc0\\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + bytes([10, 1, 2, 3])\n    s.sendto(a, peer)\n\
         while True:\n    q, peer = s.recvfrom(4096)\n    threading.Thread(target=answer, args=(q, peer)).start()\n"
    );
    ns.spawn(&["python3", "-c", &script])
}

/// dnsmasq on `DNSMASQ` in `r`: `known.test` (A and AAAA) and `v4only.test` (A) known, any other
/// name under `test` NXDOMAIN, nothing forwarded.
fn dnsmasq(r: &Netns) -> Proc {
    r.spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        &format!("--listen-address={DNSMASQ}"),
        "--user=root",
        "--pid-file=",
        "--local=/test/",
        "--host-record=known.test,10.1.2.3,fd00::1",
        "--host-record=v4only.test,10.1.2.4",
    ])
}

/// The client namespace P and the resolvers' namespace R, joined by a veth: R has dnsmasq's,
/// the test resolver's and the silent address (DNS packets to it dropped); nothing runs yet.
struct Resolvers {
    p: Netns,
    r: Netns,
    veth: NsVeth,
}

impl Resolvers {
    fn new(tag: &str) -> Self {
        let p = Netns::new(&format!("{tag}p"));
        let r = Netns::new(&format!("{tag}r"));
        let veth = NsVeth::new(
            &p,
            "eth0",
            &format!("{P_IP}/29"),
            &r,
            "eth0",
            &format!("{DNSMASQ}/29"),
        );
        for addr in [DELAYED, SILENT] {
            r.run(&["ip", "addr", "add", &format!("{addr}/29"), "dev", "eth0"]);
        }
        r.run(&[
            "iptables", "-A", "INPUT", "-d", SILENT, "-p", "udp", "--dport", "53", "-j", "DROP",
        ]);
        Self { p, r, veth }
    }
}

/// A configuration file with the test's `probes.dns.timeout`.
fn timeout_config() -> std::path::PathBuf {
    let config = std::env::temp_dir().join(format!("{}.yaml", unique("dns")));
    std::fs::write(
        &config,
        format!("probes:\n  dns:\n    timeout: {TIMEOUT}\n"),
    )
    .expect("config");
    config
}

fn value(s: &Scrape, metric: &str, ns: &Netns, labels: &[(&str, &str)]) -> u64 {
    let mut want = vec![("netns", ns.name.as_str())];
    want.extend_from_slice(labels);
    s.value(metric, &want).map_or(0, |v| v as u64)
}

/// The series of `ns`, as lines of the exposition (its `netns` label included).
fn series_of(s: &Scrape, ns: &Netns) -> Vec<String> {
    let label = format!("netns=\"{}\"", ns.name);
    let mut out: Vec<String> = s
        .text
        .lines()
        .filter(|l| l.starts_with("netexporter_dns_") && l.contains(&label))
        .map(str::to_string)
        .collect();
    out.sort();
    out
}

#[test]
fn dns_queries_answers_timeouts_and_latency_per_resolver() {
    require_root();
    let Resolvers { p, r, veth: _veth } = Resolvers::new("dns");
    let _dnsmasq = dnsmasq(&r);
    let _delayed = delayed_resolver(&r);
    // Both answer before the agent starts: what the test counts is only what follows.
    poll(Duration::from_secs(10), || {
        (ask(&p, DNSMASQ, "known.test", 1, "udp", 1, 0.5) == "0/1"
            && ask(&p, DELAYED, "known.test", 1, "udp", 1, 1.0) == "0/1")
            .then_some(())
    })
    .expect("the resolvers answer");
    let config = timeout_config();
    let agent = Agent::start(&[&format!("--config.file={}", config.display())]);
    let _ = std::fs::remove_file(&config);

    // dnsmasq: names it knows (A and AAAA), a name it does not, an IPv4-only name's AAAA
    // (NOERROR without records), and A over TCP.
    let a = ask(&p, DNSMASQ, "known.test", 1, "udp", 4, 2.0);
    assert_eq!(a, ["0/1"; 4].join(" "));
    let aaaa = ask(&p, DNSMASQ, "known.test", 28, "udp", 3, 2.0);
    assert_eq!(aaaa, ["0/1"; 3].join(" "));
    let nx = ask(&p, DNSMASQ, "nothere.test", 1, "udp", 2, 2.0);
    assert_eq!(nx, ["3/0"; 2].join(" "));
    let empty = ask(&p, DNSMASQ, "v4only.test", 28, "udp", 2, 2.0);
    assert_eq!(empty, ["0/0"; 2].join(" "));
    let tcp = ask(&p, DNSMASQ, "known.test", 1, "tcp", 2, 2.0);
    assert_eq!(tcp, ["0/1"; 2].join(" "));
    // Search-path expansion, as a resolver with `search a.test b.test` and ndots tries
    // `known`: known.a.test and known.b.test are NXDOMAIN, then known.test resolves. Three
    // times: six NXDOMAINs that are expansion; nothere.test's above are not (never resolved).
    for _ in 0..EXPANDED {
        assert_eq!(ask(&p, DNSMASQ, "known.a.test", 1, "udp", 1, 2.0), "3/0");
        assert_eq!(ask(&p, DNSMASQ, "known.b.test", 1, "udp", 1, 2.0), "3/0");
        assert_eq!(ask(&p, DNSMASQ, "known.test", 1, "udp", 1, 2.0), "0/1");
    }
    // The test resolver: SERVFAIL, REFUSED, a PTR and an SRV answered, all after DELAY_MS;
    // and one answered after the timeout.
    let servfail = ask(&p, DELAYED, "servfail.test", 1, "udp", 2, 2.0);
    assert_eq!(servfail, ["2/0"; 2].join(" "));
    let refused = ask(&p, DELAYED, "refused.test", 1, "udp", 3, 2.0);
    assert_eq!(refused, ["5/0"; 3].join(" "));
    assert_eq!(
        ask(&p, DELAYED, "3.2.1.10.in-addr.arpa", 12, "udp", 1, 2.0),
        "0/1"
    );
    assert_eq!(
        ask(&p, DELAYED, "_dns._udp.known.test", 33, "udp", 1, 2.0),
        "0/1"
    );
    assert_eq!(ask(&p, DELAYED, "late.test", 1, "udp", 1, 3.0), "0/1");
    // An address that never answers.
    let silent = ask(&p, SILENT, "known.test", 1, "udp", 3, 0.2);
    assert_eq!(silent, ["none"; 3].join(" "));

    const Q: &str = "netexporter_dns_queries_total";
    const A: &str = "netexporter_dns_answers_total";
    const EMPTY: &str = "netexporter_dns_empty_answers_total";
    const TIMEOUTS: &str = "netexporter_dns_timeouts_total";
    const MALFORMED: &str = "netexporter_dns_malformed_total";
    const EXPANSIONS: &str = "netexporter_dns_search_expansions_total";
    let at = |resolver: &'static str, proto: &'static str| {
        vec![
            ("resolver", resolver),
            ("resolver_kind", "address"),
            ("protocol", proto),
        ]
    };
    let with = |mut l: Vec<(&'static str, &'static str)>, k: &'static str, v: &'static str| {
        l.push((k, v));
        l
    };
    // The silent address's queries time out after TIMEOUT, at the next collection.
    let s = poll(Duration::from_secs(15), || {
        let s = agent.scrape();
        (value(&s, TIMEOUTS, &p, &at(SILENT, "udp")) == 3).then_some(s)
    })
    .unwrap_or_else(|| panic!("no timeouts for {SILENT}:\n{}", agent.scrape().text));
    let udp = at(DNSMASQ, "udp");
    type Labels = Vec<(&'static str, &'static str)>;
    let checks: Vec<(&str, Labels, u64)> = vec![
        (Q, with(udp.clone(), "type", "A"), 4 + 2 + 3 * EXPANDED),
        (Q, with(udp.clone(), "type", "AAAA"), 3 + 2),
        (
            A,
            with(udp.clone(), "rcode", "NOERROR"),
            4 + 3 + 2 + EXPANDED,
        ),
        (A, with(udp.clone(), "rcode", "NXDOMAIN"), 2 + 2 * EXPANDED),
        (EXPANSIONS, udp.clone(), 2 * EXPANDED),
        (EMPTY, udp.clone(), 2),
        (TIMEOUTS, udp.clone(), 0),
        (MALFORMED, udp.clone(), 0),
        (Q, with(at(DNSMASQ, "tcp"), "type", "A"), 2),
        (A, with(at(DNSMASQ, "tcp"), "rcode", "NOERROR"), 2),
        (Q, with(at(DELAYED, "udp"), "type", "A"), 2 + 3 + 1),
        (Q, with(at(DELAYED, "udp"), "type", "PTR"), 1),
        (Q, with(at(DELAYED, "udp"), "type", "SRV"), 1),
        (A, with(at(DELAYED, "udp"), "rcode", "SERVFAIL"), 2),
        (A, with(at(DELAYED, "udp"), "rcode", "REFUSED"), 3),
        (A, with(at(DELAYED, "udp"), "rcode", "NOERROR"), 2),
        (TIMEOUTS, at(DELAYED, "udp"), 1),
        (Q, with(at(SILENT, "udp"), "type", "A"), 3),
    ];
    for (metric, labels, want) in &checks {
        assert_eq!(
            value(&s, metric, &p, labels),
            *want,
            "{metric} {labels:?}:\n{}",
            series_of(&s, &p).join("\n")
        );
    }
    // No answer from the silent address; the late one is not an answer.
    assert!(
        s.find(A, &[("netns", &p.name), ("resolver", SILENT)])
            .is_empty()
    );
    // Latency: the delayed resolver's 7 answers within the timeout all took DELAY_MS, in
    // (0.262144, 0.524288]; dnsmasq's answers came within 64 ms.
    let bucket = |resolver: &'static str, le: &'static str| {
        value(
            &s,
            "netexporter_dns_latency_seconds_bucket",
            &p,
            &with(at(resolver, "udp"), "le", le),
        )
    };
    assert_eq!(
        bucket(DELAYED, "0.262144"),
        0,
        "{}",
        series_of(&s, &p).join("\n")
    );
    assert_eq!(bucket(DELAYED, "0.524288"), 7);
    assert_eq!(bucket(DELAYED, "+Inf"), 7);
    assert_eq!(bucket(DNSMASQ, "0.065536"), 4 + 3 + 2 + 2 + 3 * EXPANDED);

    // Malformed packets to dnsmasq: shorter than a header, and a question whose first label
    // claims more bytes than a label may have. Counted as malformed; nothing else moves.
    let before: Vec<String> = series_of(&s, &p)
        .into_iter()
        .filter(|l| !l.starts_with(MALFORMED))
        .collect();
    p.run(&[
        "python3",
        "-c",
        &format!(
            "import socket\n\
             for m in [b'\\x01\\x02\\x03', b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x50abc\\x00\\x00\\x01\\x00\\x01']:\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(m, ('{DNSMASQ}', 53))\n"
        ),
    ]);
    let s = poll(Duration::from_secs(10), || {
        let s = agent.scrape();
        (value(&s, MALFORMED, &p, &udp) == 2).then_some(s)
    })
    .unwrap_or_else(|| panic!("no malformed packets counted:\n{}", agent.scrape().text));
    let after: Vec<String> = series_of(&s, &p)
        .into_iter()
        .filter(|l| !l.starts_with(MALFORMED))
        .collect();
    assert_eq!(before, after, "malformed packets changed other series");

    // The namespace deleted: its series are gone at the next collection.
    let name = p.name.clone();
    drop(_veth);
    drop(p);
    let s = poll(Duration::from_secs(10), || {
        let s = agent.scrape();
        s.find(Q, &[("netns", &name)]).is_empty().then_some(s)
    })
    .unwrap_or_else(|| panic!("series of {name} still there"));
    assert!(
        !s.text
            .lines()
            .any(|l| l.starts_with("netexporter_dns_") && l.contains(&name)),
        "{}",
        s.text
    );
}

/// NAT in the client's own namespace (kube-proxy's DNAT of a ClusterIP in OUTPUT, as for the
/// node's own processes) shows the program a query after translation and its answer before:
/// answers are still matched to their queries. A connected socket (glibc's) is counted under
/// the address it asked for, the ClusterIP; an unconnected one under the address its packets
/// went to.
#[test]
fn dns_answers_through_nat_in_the_clients_namespace_are_matched() {
    require_root();
    const VIP: &str = "10.96.0.10";
    let Resolvers { p, r, veth: _veth } = Resolvers::new("dnsn");
    let _dnsmasq = dnsmasq(&r);
    p.run(&["ip", "route", "add", &format!("{VIP}/32"), "dev", "eth0"]);
    for proto in ["udp", "tcp"] {
        dnat_proto(&p, proto, VIP, 53, &format!("{DNSMASQ}:53"));
    }
    poll(Duration::from_secs(10), || {
        (ask(&p, DNSMASQ, "known.test", 1, "udp", 1, 0.5) == "0/1").then_some(())
    })
    .expect("dnsmasq answers");
    let config = timeout_config();
    let agent = Agent::start(&[&format!("--config.file={}", config.display())]);
    let _ = std::fs::remove_file(&config);
    assert_eq!(
        ask(&p, VIP, "known.test", 1, "udp-connected", 3, 2.0),
        "0/1 0/1 0/1"
    );
    assert_eq!(ask(&p, VIP, "known.test", 1, "udp", 2, 2.0), "0/1 0/1");
    assert_eq!(ask(&p, VIP, "known.test", 1, "tcp", 2, 2.0), "0/1 0/1");
    let at = |resolver: &'static str, proto: &'static str, extra: (&'static str, &'static str)| {
        vec![
            ("resolver", resolver),
            ("resolver_kind", "address"),
            ("protocol", proto),
            extra,
        ]
    };
    let want = [
        (
            "netexporter_dns_queries_total",
            at(VIP, "udp", ("type", "A")),
            3,
        ),
        (
            "netexporter_dns_answers_total",
            at(VIP, "udp", ("rcode", "NOERROR")),
            3,
        ),
        (
            "netexporter_dns_queries_total",
            at(DNSMASQ, "udp", ("type", "A")),
            2,
        ),
        (
            "netexporter_dns_answers_total",
            at(DNSMASQ, "udp", ("rcode", "NOERROR")),
            2,
        ),
        (
            "netexporter_dns_queries_total",
            at(VIP, "tcp", ("type", "A")),
            2,
        ),
        (
            "netexporter_dns_answers_total",
            at(VIP, "tcp", ("rcode", "NOERROR")),
            2,
        ),
    ];
    // Past the timeout: a query whose answer was not matched would be a timeout by now.
    std::thread::sleep(Duration::from_secs(2));
    let s = poll(Duration::from_secs(10), || {
        let s = agent.scrape();
        want.iter()
            .all(|(m, l, n)| value(&s, m, &p, l) == *n)
            .then_some(s)
    })
    .unwrap_or_else(|| panic!("{}", series_of(&agent.scrape(), &p).join("\n")));
    let timeouts: u64 = s
        .find("netexporter_dns_timeouts_total", &[("netns", &p.name)])
        .iter()
        .map(|x| x.value as u64)
        .sum();
    assert_eq!(timeouts, 0, "{}", series_of(&s, &p).join("\n"));
}

/// `diagnose --pod NETNS` over a live window: the resolver that never answers comes first,
/// with its queries all timeouts, and is reported as not answering; the one that answers has
/// its answers.
#[test]
fn dns_diagnose_pod_reports_a_resolver_that_does_not_answer() {
    require_root();
    let Resolvers { p, r, veth: _veth } = Resolvers::new("dnsd");
    let _delayed = delayed_resolver(&r);
    poll(Duration::from_secs(10), || {
        (ask(&p, DELAYED, "known.test", 1, "udp", 1, 1.0) == "0/1").then_some(())
    })
    .expect("the test resolver answers");
    let config = timeout_config();
    let diagnose = Diagnose::start(&[
        "--mode=standalone",
        &format!("--config.file={}", config.display()),
        "diagnose",
        "--pod",
        &p.name,
        "--window",
        "5s",
        "--output",
        "json",
    ]);
    assert_eq!(
        ask(&p, SILENT, "known.test", 1, "udp", 3, 0.2),
        "none none none"
    );
    assert_eq!(ask(&p, DELAYED, "known.test", 1, "udp", 2, 2.0), "0/1 0/1");
    let report = diagnose.json();
    let _ = std::fs::remove_file(&config);
    let resolvers = &report["resolvers"];
    assert_eq!(resolvers.as_array().map(Vec::len), Some(2), "{report:#}");
    assert_eq!(resolvers[0]["resolver"], SILENT, "{report:#}");
    assert_eq!(resolvers[0]["queries"], 3);
    assert_eq!(resolvers[0]["timeouts"], 3);
    assert_eq!(
        resolvers[0]["problem"],
        "does not answer: 3 queries timed out, none answered"
    );
    assert_eq!(resolvers[1]["resolver"], DELAYED);
    assert_eq!(resolvers[1]["answers"]["NOERROR"], 2);
    assert_eq!(resolvers[1]["timeouts"], 0);
    assert!(resolvers[1]["problem"].is_null());
}

/// The BPF program's parser against a reference parser written here from RFC 1035 (its
/// independent twin), on crafted packets run through the kernel (`BPF_PROG_TEST_RUN`, the
/// programs loaded but attached nowhere, so only these packets reach their maps): queries
/// well-formed and mutated (truncated anywhere, label lengths past 63 or past the packet,
/// compression pointers, QDCOUNT other than 1, names past 255 bytes, random bytes), over UDP and
/// TCP, then answers to some of them. Every packet must be let through, and the counters by
/// type, rcode and malformed must be the reference's exactly.
#[test]
fn dns_program_counts_crafted_packets_as_a_reference_parser_does() {
    require_root();
    const PACKETS: usize = 4000;
    let counter = DnsCounter::load_detached(Duration::from_secs(5)).expect("load");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut want = Expected::default();
    for i in 0..PACKETS {
        let tcp = i % 4 == 3;
        let message = crafted_query(&mut rng);
        let client_port = 20_000 + (i % 30_000) as u16;
        let packet = ipv4(tcp, client_port, 53, &message);
        assert_eq!(
            counter.run_egress(&packet).expect("test run"),
            1,
            "let through"
        );
        let classified = reference_query(&message);
        want.add_query(tcp, classified);
        // An answer to every third well-formed query, with a crafted rcode and answer count.
        if let Query::Type(_) = classified
            && i % 3 == 0
        {
            let mut answer = message.clone();
            let rcode = (rng.next() % 16) as u8;
            answer[2] |= 0x80;
            answer[3] = (answer[3] & 0xf0) | rcode;
            let records = (rng.next() % 2) as u8;
            answer[7] = records;
            let packet = ipv4(tcp, 53, client_port, &answer);
            assert_eq!(counter.run_ingress(&packet).expect("test run"), 1);
            want.add_answer(tcp, rcode, records);
        }
    }
    // A retry (the same id from the same port while the first is in flight) is a query; the
    // one answer counts once, and a second copy of it matches nothing.
    let retried = [
        0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'a', b'p', b'i', 0, 0, 1, 0, 1,
    ];
    for _ in 0..2 {
        let packet = ipv4(false, 61_000, 53, &retried);
        assert_eq!(counter.run_egress(&packet).expect("test run"), 1);
        want.add_query(false, reference_query(&retried));
    }
    let mut answer = retried;
    answer[2] |= 0x80;
    for _ in 0..2 {
        let packet = ipv4(false, 53, 61_000, &answer);
        assert_eq!(counter.run_ingress(&packet).expect("test run"), 1);
    }
    want.add_answer(false, 0, 0);
    // Short or garbage answers from port 53: malformed if shorter than a header, else matched
    // to nothing (no query in flight has their id and port) and not counted.
    for n in [0usize, 1, 11, 12, 40] {
        let garbage: Vec<u8> = (0..n).map(|_| rng.next() as u8 | 0x80).collect();
        let packet = ipv4(false, 53, 65_000, &garbage);
        assert_eq!(counter.run_ingress(&packet).expect("test run"), 1);
        if n < 12 {
            want.udp.malformed += 1;
        }
    }
    let (entries, _) = counter.read().expect("read");
    let mut got = Expected::default();
    for (key, c) in &entries {
        assert_eq!(&key.addr[..4], &RESOLVER, "only the crafted resolver");
        let side = if key.proto == 6 {
            &mut got.tcp
        } else {
            &mut got.udp
        };
        side.queries = c.queries;
        side.answers = c.answers;
        side.empty = c.empty;
        side.malformed = c.malformed;
    }
    assert_eq!(got.udp, want.udp, "UDP");
    assert_eq!(got.tcp, want.tcp, "TCP");
    assert!(want.udp.malformed > 100 && want.udp.queries.iter().sum::<u64>() > 1000);
}

const CLIENT: [u8; 4] = [192, 0, 2, 1];
const RESOLVER: [u8; 4] = [192, 0, 2, 53];

/// A deterministic generator: the same packets at every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// An ethernet frame (what `BPF_PROG_TEST_RUN` takes) carrying IPv4 and UDP, or TCP with the
/// message's 2-byte length first.
fn ipv4(tcp: bool, sport: u16, dport: u16, message: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if tcp {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        l4.extend_from_slice(&(message.len() as u16).to_be_bytes());
    } else {
        l4.extend_from_slice(&((8 + message.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(message);
    let (src, dst) = if dport == 53 {
        (CLIENT, RESOLVER)
    } else {
        (RESOLVER, CLIENT)
    };
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&[0x08, 0x00]); // ethertype IPv4
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, if tcp { 6 } else { 17 }, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&l4);
    p
}

/// A query, well-formed or mutated in one of the ways a parser can be caught out.
fn crafted_query(rng: &mut XorShift) -> Vec<u8> {
    let id = (rng.next() as u16).to_be_bytes();
    let mut m = vec![id[0], id[1], 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let labels = rng.next() % 6;
    for _ in 0..labels {
        let len = 1 + rng.next() % 20;
        m.push(len as u8);
        m.extend((0..len).map(|_| b'a' + (rng.next() % 26) as u8));
    }
    m.push(0);
    let qtype = [1u16, 28, 33, 12, 15, 255][(rng.next() % 6) as usize];
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    match rng.next() % 10 {
        0 => {
            let at = (rng.next() as usize) % (m.len() + 1);
            m.truncate(at);
        }
        1 if m.len() > 12 => m[12] = 64 + (rng.next() % 192) as u8, // > 63, or a pointer
        2 => m[5] = (rng.next() % 4) as u8,                         // QDCOUNT 0..3
        3 => {
            // A name of 63-byte labels past 255 bytes.
            m.truncate(12);
            for _ in 0..5 {
                m.push(63);
                m.extend(std::iter::repeat_n(b'x', 63));
            }
            m.extend_from_slice(&[0, 0, 1, 0, 1]);
        }
        4 if m.len() > 12 => m[12] = 60, // a label longer than what follows
        5 => {
            let n = (rng.next() % 300) as usize;
            m.truncate(12);
            m.extend((0..n).map(|_| rng.next() as u8));
        }
        _ => {}
    }
    m
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Query {
    /// The kernel's type slot: A, AAAA, SRV, PTR, other.
    Type(usize),
    Malformed,
    /// An answer's QR bit: not a client's query, not counted.
    Ignored,
}

/// RFC 1035, section 4.1: a 12-byte header, QDCOUNT questions; a question is a name (labels of
/// at most 63 bytes, at most 255 bytes in all, ending with the empty label; a length byte over
/// 63 is a compression pointer or reserved, neither belongs in a question) then its type and
/// class.
fn reference_query(m: &[u8]) -> Query {
    if m.len() < 12 {
        return Query::Malformed;
    }
    if m[2] & 0x80 != 0 {
        return Query::Ignored;
    }
    if u16::from_be_bytes([m[4], m[5]]) != 1 {
        return Query::Malformed;
    }
    let mut pos = 12;
    loop {
        let Some(&len) = m.get(pos) else {
            return Query::Malformed;
        };
        if pos - 12 > 255 {
            return Query::Malformed;
        }
        if len == 0 {
            break;
        }
        if len > 63 {
            return Query::Malformed;
        }
        pos += 1 + len as usize;
    }
    // The name with its final empty label: 255 bytes at most.
    if pos - 12 + 1 > 255 || m.len() < pos + 5 {
        return Query::Malformed;
    }
    Query::Type(match u16::from_be_bytes([m[pos + 1], m[pos + 2]]) {
        1 => 0,
        28 => 1,
        33 => 2,
        12 => 3,
        _ => 4,
    })
}

#[derive(Default, Debug, PartialEq)]
struct Side {
    queries: [u64; 5],
    answers: [u64; 5],
    empty: u64,
    malformed: u64,
}

#[derive(Default)]
struct Expected {
    udp: Side,
    tcp: Side,
}

impl Expected {
    fn side(&mut self, tcp: bool) -> &mut Side {
        if tcp { &mut self.tcp } else { &mut self.udp }
    }

    fn add_query(&mut self, tcp: bool, q: Query) {
        match q {
            Query::Type(t) => self.side(tcp).queries[t] += 1,
            Query::Malformed => self.side(tcp).malformed += 1,
            Query::Ignored => {}
        }
    }

    fn add_answer(&mut self, tcp: bool, rcode: u8, records: u8) {
        let slot = match rcode {
            0 => 0,
            3 => 1,
            2 => 2,
            5 => 3,
            _ => 4,
        };
        let side = self.side(tcp);
        side.answers[slot] += 1;
        if rcode == 0 && records == 0 {
            side.empty += 1;
        }
    }
}
