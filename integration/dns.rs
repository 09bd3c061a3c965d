//! The `dns` probe on real namespaces: a client namespace P (the "Pod") queries, through a veth,
//! a real resolver (dnsmasq) and a small test resolver (answers by the name asked: SERVFAIL,
//! REFUSED, a fixed delay, or one past the timeout) in a resolver namespace R, and an address
//! there whose DNS packets are dropped. The client's own record of every answer (its rcode
//! and record count, or that it got none) is the independent truth: the agent's counters per
//! resolver, type, rcode and protocol must equal it exactly.

use std::time::Duration;

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

/// Asks `server` `count` times, each from a new socket with a random id, for `name` of type
/// `qtype` over `proto` (udp or tcp), waiting `wait` seconds for each answer. Prints, per
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
         def one():\n    q = struct.pack('>HHHHHH', random.randrange(65536), 0x0100, 1, 0, 0, 0)\n    for l in '{name}'.split('.'):\n        q += bytes([len(l)]) + l.encode()\n    q += b'\\0' + struct.pack('>HH', {qtype}, 1)\n    try:\n        if '{proto}' == 'udp':\n            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout({wait})\n            s.sendto(q, ('{server}', 53)); a = s.recv(4096)\n        else:\n            s = socket.create_connection(('{server}', 53), timeout={wait})\n            s.sendall(struct.pack('>H', len(q)) + q)\n            a = recvall(s, struct.unpack('>H', recvall(s, 2))[0])\n        s.close()\n    except OSError:\n        return 'none'\n    return '%d/%d' % (a[3] & 15, struct.unpack('>H', a[6:8])[0])\n\
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
    let p = Netns::new("dnsp");
    let r = Netns::new("dnsr");
    let _veth = NsVeth::new(
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
    let _dnsmasq = r.spawn(&[
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
    ]);
    let _delayed = delayed_resolver(&r);
    // Both answer before the agent starts: what the test counts is only what follows.
    poll(Duration::from_secs(10), || {
        (ask(&p, DNSMASQ, "known.test", 1, "udp", 1, 0.5) == "0/1"
            && ask(&p, DELAYED, "known.test", 1, "udp", 1, 1.0) == "0/1")
            .then_some(())
    })
    .expect("the resolvers answer");
    let config = std::env::temp_dir().join(format!("{}.yaml", unique("dns")));
    std::fs::write(
        &config,
        format!("probes:\n  dns:\n    timeout: {TIMEOUT}\n"),
    )
    .expect("config");
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
        (Q, with(udp.clone(), "type", "A"), 4 + 2),
        (Q, with(udp.clone(), "type", "AAAA"), 3 + 2),
        (A, with(udp.clone(), "rcode", "NOERROR"), 4 + 3 + 2),
        (A, with(udp.clone(), "rcode", "NXDOMAIN"), 2),
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
    assert_eq!(bucket(DNSMASQ, "0.065536"), 4 + 3 + 2 + 2);

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
