//! The `peers` probe on real namespaces: two namespaces A and B joined by a veth, TCP servers in
//! B, exact numbers of connections from A. Each namespace's counters per peer, port and role
//! are the connections, RSTs and bytes the test made, and they sum to the kernel's own counters
//! of that namespace (`nstat`: TcpActiveOpens, TcpPassiveOpens, TcpAttemptFails,
//! TcpEstabResets, TcpRetransSegs).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const A_IP: &str = "10.209.0.1";
const B_IP: &str = "10.209.0.2";
const OPENED: u64 = 7;
const REFUSED: u64 = 5;
const TIMEOUT: u64 = 3;
const RESET: u64 = 4;
/// Connections that exchange data: `PAYLOAD` bytes to the server, `ANSWER` back.
const EXCHANGED: u64 = 3;
const PAYLOAD: usize = 300_000;
const ANSWER: usize = 70_000;

/// Accepts on `port` for ever; with `reset`, each accepted connection is closed at once with
/// `SO_LINGER` 0 (an RST), else closed at once the ordinary way (a FIN).
fn server(ns: &Netns, port: u16, reset: bool) -> Proc {
    server_on(ns, B_IP, port, reset)
}

/// The same on another address of `ns`.
fn server_on(ns: &Netns, addr: &str, port: u16, reset: bool) -> Proc {
    let close = if reset {
        "c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); c.close()"
    } else {
        "c.close()"
    };
    let script = format!(
        "import socket, struct\n\
         l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('{addr}', {port})); l.listen(64)\n\
         while True:\n    c, _ = l.accept(); {close}\n"
    );
    ns.spawn(&["python3", "-c", &script])
}

/// Accepts on `port` for ever; each connection is read to its end, answered with `answer`
/// bytes and closed.
fn exchange_server(ns: &Netns, port: u16, answer: usize) -> Proc {
    let script = format!(
        "import socket, threading\n\
         def serve(c):\n    while c.recv(65536): pass\n    c.sendall(b'r' * {answer}); c.close()\n\
         l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('{B_IP}', {port})); l.listen(64)\n\
         while True:\n    c, _ = l.accept(); threading.Thread(target=serve, args=(c,)).start()\n"
    );
    ns.spawn(&["python3", "-c", &script])
}

/// Connects `n` times (in parallel) to `B_IP:port`, writes `payload` bytes on each, shuts its
/// side down and reads the answer to its end. Prints the bytes each one read.
fn exchange_clients(ns: &Netns, port: u16, n: u64, payload: usize) -> String {
    let script = format!(
        "import socket, threading\n\
         out = []\n\
         def one():\n    s = socket.create_connection(('{B_IP}', {port}))\n    s.sendall(b'p' * {payload}); s.shutdown(socket.SHUT_WR)\n    got = 0\n    while True:\n        b = s.recv(65536)\n        if not b: break\n        got += len(b)\n    s.close(); out.append(str(got))\n\
         ts = [threading.Thread(target=one) for _ in range({n})]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\n\
         print(' '.join(out))\n"
    );
    ns.run(&["python3", "-c", &script])
}

/// Waits until `ns` has no TCP socket but listeners and TIME_WAIT ones: every connection has
/// reached its end, and every retransmit the kernel will count has been made.
fn waits_for_quiet(ns: &Netns) {
    let quiet = poll(Duration::from_secs(60), || {
        ns.run(&[
            "ss",
            "-Htan",
            "exclude",
            "listening",
            "exclude",
            "time-wait",
        ])
        .trim()
        .is_empty()
        .then_some(())
    });
    assert!(
        quiet.is_some(),
        "connections of {} still open:\n{}",
        ns.name,
        ns.run(&["ss", "-tanoi"])
    );
}

/// Connects `n` times (in parallel) to `B_IP:port`; each connection reads until the peer closes
/// or resets, then closes. Prints the outcome of each.
fn clients(ns: &Netns, port: u16, n: u64) -> String {
    clients_to(ns, B_IP, port, n)
}

/// The same to `addr:port`.
fn clients_to(ns: &Netns, addr: &str, port: u16, n: u64) -> String {
    let script = format!(
        "import socket, threading\n\
         out = []\n\
         def one():\n    s = socket.socket()\n    try:\n        s.connect(('{addr}', {port}))\n        s.recv(1)\n        out.append('ok')\n    except OSError as e:\n        out.append(e.__class__.__name__)\n    finally:\n        s.close()\n\
         ts = [threading.Thread(target=one) for _ in range({n})]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\n\
         print(' '.join(sorted(out)))\n"
    );
    ns.run(&["python3", "-c", &script])
}

fn waits_for_listener(ns: &Netns, port: u16) {
    let up = poll(Duration::from_secs(10), || {
        ns.run(&["ss", "-Htln", &format!("sport = :{port}")])
            .contains(&format!(":{port}"))
            .then_some(())
    });
    assert!(up.is_some(), "no listener on {port} in {}", ns.name);
}

fn nstat(ns: &Netns) -> BTreeMap<String, u64> {
    let v: Value = serde_json::from_str(&ns.run(&["nstat", "-asz", "--json"])).expect("nstat");
    v["kernel"]
        .as_object()
        .expect("nstat kernel")
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect()
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, k: &str) -> u64 {
    after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
}

/// The value of a peers series of `ns`, 0 if absent.
fn peer_value(s: &Scrape, metric: &str, ns: &Netns, labels: &[(&str, &str)]) -> u64 {
    let mut want = vec![("netns", ns.name.as_str())];
    want.extend_from_slice(labels);
    s.value(metric, &want).map_or(0, |v| v as u64)
}

/// Sum of `metric` over every series of `ns` that has `labels`.
fn peer_sum(s: &Scrape, metric: &str, ns: &Netns, labels: &[(&str, &str)]) -> u64 {
    let mut want = vec![("netns", ns.name.as_str())];
    want.extend_from_slice(labels);
    s.find(metric, &want).iter().map(|x| x.value as u64).sum()
}

const CONNS: &str = "netexporter_peer_connections_total";
const FAILS: &str = "netexporter_peer_connection_failures_total";
const RETRANS: &str = "netexporter_peer_retransmits_total";
const RESETS: &str = "netexporter_peer_resets_total";
const BYTES: &str = "netexporter_peer_bytes_total";

/// An agent, and namespaces A (`A_IP`) and B (`B_IP`) joined by a veth.
fn agent_and_pair(tag: &str) -> (Agent, Netns, Netns, NsVeth) {
    require_root();
    let agent = Agent::start(&[]);
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    let veth = NsVeth::new(
        &a,
        "eth0",
        &format!("{A_IP}/30"),
        &b,
        "eth0",
        &format!("{B_IP}/30"),
    );
    (agent, a, b, veth)
}

#[test]
fn peers_count_connections_and_failures_per_peer_port_and_role() {
    let (agent, a, b, _veth) = agent_and_pair("nxp");
    let _open = server(&b, 8080, false);
    let _reset = server(&b, 8083, true);
    let _exchange = exchange_server(&b, 8084, ANSWER);
    let _lossy = exchange_server(&b, 8085, ANSWER);
    for port in [8080, 8083, 8084, 8085] {
        waits_for_listener(&b, port);
    }
    // SYNs to 8082 vanish; A gives up after one retry (about 3 s).
    b.run(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8082", "-j", "DROP",
    ]);
    // Every 7th packet from A to 8085 is lost: both ends retransmit (A its data, SYN or FIN;
    // B its answer and SYN-ACK when A's acknowledgements are lost).
    b.run(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "8085",
        "-m",
        "statistic",
        "--mode",
        "nth",
        "--every",
        "7",
        "--packet",
        "3",
        "-j",
        "DROP",
    ]);
    a.run(&["sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"]);
    let (a0, b0) = (nstat(&a), nstat(&b));
    agent.scrape();

    let outcomes = [
        (8080, OPENED, "ok"),
        (8081, REFUSED, "ConnectionRefusedError"),
        (8082, TIMEOUT, "TimeoutError"),
        (8083, RESET, "ConnectionResetError"),
    ];
    for (port, n, want) in outcomes {
        let got = clients(&a, port, n);
        let expected = vec![want; n as usize].join(" ");
        assert_eq!(got.trim(), expected, "port {port}");
    }
    for port in [8084, 8085] {
        let got = exchange_clients(&a, port, EXCHANGED, PAYLOAD);
        let expected = vec![ANSWER.to_string(); EXCHANGED as usize].join(" ");
        assert_eq!(got.trim(), expected, "answers on {port}");
    }
    waits_for_quiet(&a);
    waits_for_quiet(&b);
    let (a1, b1) = (nstat(&a), nstat(&b));
    let s = poll(Duration::from_secs(10), || {
        let s = agent.scrape();
        (peer_sum(&s, CONNS, &a, &[("port", "8083"), ("role", "client")]) == RESET).then_some(s)
    })
    .unwrap_or_else(|| panic!("no peer series for {}:\n{}", a.name, agent.scrape().text));

    let client = |port: &'static str| {
        vec![
            ("role", "client"),
            ("peer", B_IP),
            ("peer_kind", "address"),
            ("port", port),
        ]
    };
    let server_on = |port: &'static str| {
        vec![
            ("role", "server"),
            ("peer", A_IP),
            ("peer_kind", "address"),
            ("port", port),
        ]
    };
    let with = |mut l: Vec<(&'static str, &'static str)>, reason: &'static str| {
        l.push(("reason", reason));
        l
    };
    // A, as the client: exactly what it did, per port.
    assert_eq!(peer_value(&s, CONNS, &a, &client("8080")), OPENED);
    assert_eq!(peer_value(&s, CONNS, &a, &client("8083")), RESET);
    assert_eq!(
        peer_value(&s, FAILS, &a, &with(client("8081"), "refused")),
        REFUSED
    );
    assert_eq!(
        peer_value(&s, FAILS, &a, &with(client("8082"), "timeout")),
        TIMEOUT
    );
    assert_eq!(
        peer_value(&s, FAILS, &a, &with(client("8083"), "reset")),
        RESET
    );
    assert_eq!(peer_value(&s, CONNS, &a, &client("8081")), 0);
    // B, as the server: the connections it accepted, per listening port.
    assert_eq!(peer_value(&s, CONNS, &b, &server_on("8080")), OPENED);
    assert_eq!(peer_value(&s, CONNS, &b, &server_on("8083")), RESET);
    assert_eq!(peer_sum(&s, FAILS, &b, &[]), 0, "B failed nothing");

    // The same totals as the kernel's own counters of each namespace.
    let a_client = peer_sum(&s, CONNS, &a, &[("role", "client")]);
    let a_failed: u64 = ["refused", "timeout", "other"]
        .iter()
        .map(|r| peer_sum(&s, FAILS, &a, &[("role", "client"), ("reason", r)]))
        .sum();
    assert_eq!(
        a_client + a_failed,
        delta(&a0, &a1, "TcpActiveOpens"),
        "A: opened + failed to open = TcpActiveOpens"
    );
    assert_eq!(
        a_failed,
        delta(&a0, &a1, "TcpAttemptFails"),
        "A: TcpAttemptFails"
    );
    assert_eq!(
        peer_sum(&s, FAILS, &a, &[("reason", "reset")]),
        delta(&a0, &a1, "TcpEstabResets"),
        "A: resets = TcpEstabResets"
    );
    assert_eq!(
        peer_sum(&s, CONNS, &b, &[("role", "server")]),
        delta(&b0, &b1, "TcpPassiveOpens"),
        "B: accepted = TcpPassiveOpens"
    );
    // RSTs: each connection B closed with SO_LINGER 0 is one RST sent by B and received by A;
    // each refused connect, one RST received by A (B sent it from no socket: not per peer).
    let dir = |mut l: Vec<(&'static str, &'static str)>, d: &'static str| {
        l.push(("direction", d));
        l
    };
    assert_eq!(
        peer_value(&s, RESETS, &b, &dir(server_on("8083"), "transmit")),
        RESET
    );
    assert_eq!(
        peer_value(&s, RESETS, &a, &dir(client("8083"), "receive")),
        RESET
    );
    assert_eq!(
        peer_value(&s, RESETS, &a, &dir(client("8081"), "receive")),
        REFUSED
    );
    assert_eq!(
        peer_sum(&s, RESETS, &a, &[("direction", "transmit")]),
        0,
        "A sent no RST"
    );
    // Bytes: the payload each side wrote, as the other acknowledged it, lost segments or not.
    for port in ["8084", "8085"] {
        let (sent, answered) = (EXCHANGED * PAYLOAD as u64, EXCHANGED * ANSWER as u64);
        assert_eq!(
            peer_value(&s, BYTES, &a, &dir(client(port), "transmit")),
            sent,
            "A to {port}"
        );
        assert_eq!(
            peer_value(&s, BYTES, &a, &dir(client(port), "receive")),
            answered,
            "A from {port}"
        );
        assert_eq!(
            peer_value(&s, BYTES, &b, &dir(server_on(port), "receive")),
            sent,
            "B on {port} from A"
        );
        assert_eq!(
            peer_value(&s, BYTES, &b, &dir(server_on(port), "transmit")),
            answered,
            "B on {port} to A"
        );
    }
    // Retransmits: per peer they sum to each namespace's TcpRetransSegs; the lossy port has
    // some, the clean one none.
    for (ns, before, after) in [(&a, &a0, &a1), (&b, &b0, &b1)] {
        assert_eq!(
            peer_sum(&s, RETRANS, ns, &[]),
            delta(before, after, "TcpRetransSegs"),
            "{}: retransmits per peer vs TcpRetransSegs",
            ns.name
        );
    }
    // Which of A's packets fall on the dropped positions depends on timing: a pure ACK
    // lost costs no retransmit, a data segment costs A one, an ACK of B's answer may cost B
    // one. Some are lost either way.
    assert!(
        peer_sum(&s, RETRANS, &a, &[("port", "8085")])
            + peer_sum(&s, RETRANS, &b, &[("port", "8085")])
            > 0,
        "nothing lost on the lossy port?"
    );
    assert_eq!(peer_value(&s, RETRANS, &a, &client("8084")), 0);
    // Each timed-out connect retried its SYN (how often is the kernel's business: twice here
    // with tcp_syn_retries=1, its retry deadline being a time, not a count).
    let syn_retries = peer_value(&s, RETRANS, &a, &client("8082"));
    assert!(
        syn_retries >= TIMEOUT && syn_retries.is_multiple_of(TIMEOUT),
        "SYN retries of {TIMEOUT} timed-out connects: {syn_retries}"
    );

    let uncounted = s.value("netexporter_peer_uncounted_total", &[]);
    assert_eq!(uncounted, Some(0.0), "events lost to a full map");

    // A deleted namespace has no peer series at the next collection.
    let name = a.name.clone();
    drop(_veth);
    drop(a);
    agent.scrape();
    let s = agent.scrape();
    assert!(
        s.find(CONNS, &[("netns", &name)]).is_empty(),
        "{name} still has peer series"
    );
}

const CONNECT: &str = "netexporter_peer_connect_latency_seconds";
/// A second address of B, for the timing test.
const SLOW_IP: &str = "10.209.1.2";
const RTT: &str = "netexporter_peer_rtt_seconds";

/// The histogram series of `ns` with `labels`.
fn hist(s: &Scrape, metric: &str, ns: &Netns, labels: &[(&str, &str)]) -> Hist {
    let mut want = vec![("netns", ns.name.as_str())];
    want.extend_from_slice(labels);
    Hist::read(s, metric, &want)
}

/// The smoothed RTT `ss -ti` shows for the one connection of `ns` to or from `port`, in
/// seconds (ss prints srtt in milliseconds with microsecond precision).
fn ss_rtt(ns: &Netns, filter: &str) -> f64 {
    let out = ns.run(&["ss", "-Htni", filter]);
    let rtt = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rtt:"))
        .unwrap_or_else(|| panic!("no rtt in ss output of {}: {out}", ns.name));
    let ms: f64 = rtt.split('/').next().unwrap().parse().expect("rtt ms");
    ms / 1e3
}

/// Connect latency and RTT per peer against the kernel's own clocks: connects whose first SYN
/// is dropped take the initial retransmission timeout (1 s) each; the RTT of an open connection
/// is sampled at every collection and equals the srtt `ss -ti` shows for it.
#[test]
fn peers_time_connects_and_sample_the_rtt_of_open_connections() {
    let (agent, a, b, _veth) = agent_and_pair("nxpt");
    // B has a second address, a peer of its own for A (histograms are per peer, not port).
    b.run(&["ip", "addr", "add", &format!("{SLOW_IP}/32"), "dev", "eth0"]);
    a.run(&[
        "ip",
        "route",
        "add",
        &format!("{SLOW_IP}/32"),
        "dev",
        "eth0",
    ]);
    // Connects to it: every other SYN is lost, so each of these sequential connects loses its
    // first SYN and opens with the retransmitted one, one RTO (1 s) later.
    let _slow = server_on(&b, SLOW_IP, 8087, false);
    let rule = "iptables -A INPUT -p tcp --dport 8087 --syn -m statistic --mode nth --every 2 --packet 0 -j DROP";
    b.run(&rule.split(' ').collect::<Vec<_>>());
    // A long connection to 8086 over a link shaped by tbf: the queue adds tens of ms.
    a.run(&[
        "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "4mbit", "burst", "16kb",
        "latency", "60ms",
    ]);
    let sink = format!(
        "import socket\n\
         l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('{B_IP}', 8086)); l.listen(4)\n\
         c, _ = l.accept()\n\
         while c.recv(65536): pass\n"
    );
    let _sink = b.spawn(&["python3", "-c", &sink]);
    for port in [8086, 8087] {
        waits_for_listener(&b, port);
    }
    let a0 = nstat(&a);
    agent.scrape();

    const SLOW: u64 = 3;
    let script = format!(
        "import socket\n\
         for _ in range({SLOW}):\n    s = socket.create_connection(('{SLOW_IP}', 8087)); s.recv(1); s.close()\n\
         print('done')\n"
    );
    assert_eq!(a.run(&["python3", "-c", &script]).trim(), "done");
    let a1 = nstat(&a);
    // 600 KB through the shaped link, then the connection stays open and idle: its srtt no
    // longer changes, so what ss shows and what the agent samples are the same value.
    const BULK: usize = 600_000;
    let bulk = format!(
        "import socket, time\n\
         s = socket.create_connection(('{B_IP}', 8086)); s.sendall(b'b' * {BULK})\n\
         time.sleep(120)\n"
    );
    let _bulk = a.spawn(&["python3", "-c", &bulk]);
    let flow = format!("dst {B_IP}:8086");
    let sent = poll(Duration::from_secs(30), || {
        let out = a.run(&["ss", "-Htni", &flow]);
        let acked: u64 = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("bytes_acked:"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (acked > BULK as u64).then_some(())
    });
    assert!(
        sent.is_some(),
        "bulk transfer did not finish: {}",
        a.run(&["ss", "-tni"])
    );
    std::thread::sleep(Duration::from_millis(300));

    // Connect latency: one per connection opened, each the initial RTO plus a little.
    let client =
        |peer: &'static str| vec![("role", "client"), ("peer", peer), ("peer_kind", "address")];
    let s1 = agent.scrape();
    let slow = hist(&s1, CONNECT, &a, &client(SLOW_IP));
    assert_eq!(slow.count, SLOW, "{slow:?}");
    assert_eq!(
        slow.in_bucket(1.048576),
        SLOW,
        "each took one RTO: {slow:?}"
    );
    assert!(
        slow.sum >= SLOW as f64 && slow.sum < SLOW as f64 * 1.048576,
        "{slow:?}"
    );
    assert_eq!(
        delta(&a0, &a1, "TcpRetransSegs"),
        SLOW,
        "one SYN retransmitted per slow connect"
    );
    let fast = hist(&s1, CONNECT, &a, &client(B_IP));
    assert_eq!(fast.count, 1);
    assert!(fast.sum < 0.5, "{fast:?}");
    assert!(
        hist(&s1, CONNECT, &b, &[]).count == 0,
        "servers have no connect latency"
    );

    // RTT, sampled while the connection is open: each collection adds exactly one sample of
    // A's open connection, in the bucket of the srtt ss shows, and the sum grows by it.
    let rtt_before = ss_rtt(&a, &flow);
    let h1 = hist(&s1, RTT, &a, &client(B_IP));
    let s2 = agent.scrape();
    let h2 = hist(&s2, RTT, &a, &client(B_IP));
    let rtt_after = ss_rtt(&a, &flow);
    assert_eq!(rtt_before, rtt_after, "the idle connection's srtt moved");
    assert!(
        rtt_before > 0.002,
        "tbf queueing should add milliseconds: {rtt_before}"
    );
    assert_eq!(h2.count - h1.count, 1, "{h1:?} -> {h2:?}");
    assert_eq!(
        h2.grown_since(&h1),
        [(h2.bound_of(rtt_before), 1)],
        "ss rtt {rtt_before}"
    );
    assert!(
        ((h2.sum - h1.sum) - rtt_before).abs() < 2e-6,
        "sum grew by {} (ss: {rtt_before})",
        h2.sum - h1.sum
    );
    // B's end of it, as the server: one sample per collection too.
    let server_on = [("role", "server"), ("peer", A_IP)];
    let b1 = hist(&s1, RTT, &b, &server_on);
    let b2 = hist(&s2, RTT, &b, &server_on);
    assert_eq!(b2.count - b1.count, 1, "{b1:?} -> {b2:?}");
    let b_rtt = ss_rtt(&b, &format!("src {B_IP}:8086"));
    assert!(
        ((b2.sum - b1.sum) - b_rtt).abs() < 2e-6,
        "B: ss rtt {b_rtt}"
    );
}

/// A listener whose accept queue is full: its queue and limit are what `ss -ltn` shows (Recv-Q,
/// Send-Q), and the drops of its port equal the namespace's `TcpExtListenOverflows` delta (and
/// `TcpExtListenDrops`: nothing else drops there).
/// A connection to a translated address is counted under the address (as a peer) and under the
/// backend conntrack sent it to. The topology is kube-proxy's for a Pod: a client namespace C
/// reaches the "Service" address through a node namespace N, whose PREROUTING DNAT rules send
/// it on to a backend namespace B; the client's socket never sees the translation, N's
/// conntrack entry has it. N's own conntrack table (`conntrack -L`) is the independent count.
#[test]
fn peers_follow_translated_connections_to_their_backends() {
    require_root();
    const VIP: &str = "10.96.99.1";
    const C_IP: &str = "10.211.0.1";
    const BACKEND: &str = "10.211.1.2";
    const DIRECT: u64 = 2;
    let agent = Agent::start(&[]);
    let c = Netns::new("nxtc");
    let n = Netns::new("nxtn");
    let b = Netns::new("nxtb");
    let _cn = NsVeth::new(
        &c,
        "eth0",
        &format!("{C_IP}/30"),
        &n,
        "eth0",
        "10.211.0.2/30",
    );
    let _nb = NsVeth::new(
        &n,
        "eth1",
        "10.211.1.1/30",
        &b,
        "eth0",
        &format!("{BACKEND}/30"),
    );
    c.run(&["ip", "route", "add", "default", "via", "10.211.0.2"]);
    b.run(&["ip", "route", "add", "default", "via", "10.211.1.1"]);
    n.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // Service port 80 -> the backend's open 8080, 81 -> its closed 8081, 82 -> 8082 where SYNs
    // vanish.
    for (port, to) in [(80, 8080), (81, 8081), (82, 8082)] {
        n.run(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            VIP,
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{BACKEND}:{to}"),
        ]);
    }
    b.run(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8082", "-j", "DROP",
    ]);
    c.run(&["sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"]);
    let _open = server_on(&b, BACKEND, 8080, false);
    waits_for_listener(&b, 8080);
    agent.scrape();

    let to = |addr: &str, port: u16, n: u64| clients_to(&c, addr, port, n);
    let outcomes = [
        (80, OPENED, "ok"),
        (81, REFUSED, "ConnectionRefusedError"),
        (82, TIMEOUT, "TimeoutError"),
    ];
    for (port, count, want) in outcomes {
        let got = to(VIP, port, count);
        assert_eq!(
            got.trim(),
            vec![want; count as usize].join(" "),
            "port {port}"
        );
    }
    // Straight to the backend: not translated, no backend series.
    assert_eq!(to(BACKEND, 8080, DIRECT).trim(), "ok ok");
    waits_for_quiet(&c);

    const BACKENDS: &str = "netexporter_peer_backend_connections_total";
    const BACKEND_FAILS: &str = "netexporter_peer_backend_connection_failures_total";
    let via = |port: &'static str| {
        vec![
            ("role", "client"),
            ("port", port),
            ("peer", VIP),
            ("peer_kind", "address"),
            ("backend", BACKEND),
            ("backend_kind", "address"),
        ]
    };
    let with = |mut l: Vec<(&'static str, &'static str)>, reason: &'static str| {
        l.push(("reason", reason));
        l
    };
    let s = poll(Duration::from_secs(10), || {
        let s = agent.scrape();
        (peer_value(&s, BACKEND_FAILS, &c, &with(via("82"), "timeout")) == TIMEOUT).then_some(s)
    })
    .unwrap_or_else(|| panic!("no backend series for {}:\n{}", c.name, agent.scrape().text));
    assert_eq!(
        peer_value(&s, BACKENDS, &c, &via("80")),
        OPENED,
        "{}",
        s.text
    );
    assert_eq!(
        peer_value(&s, BACKEND_FAILS, &c, &with(via("81"), "refused")),
        REFUSED
    );
    assert_eq!(
        peer_sum(&s, BACKENDS, &c, &[]),
        OPENED,
        "only translated ones"
    );
    assert_eq!(
        peer_sum(&s, BACKEND_FAILS, &c, &[]),
        REFUSED + TIMEOUT,
        "{}",
        s.text
    );
    // ... and each also under the address connected to, as before.
    let client = [
        ("role", "client"),
        ("port", "80"),
        ("peer", VIP),
        ("peer_kind", "address"),
    ];
    assert_eq!(peer_value(&s, CONNS, &c, &client), OPENED);
    assert_eq!(
        s.value("netexporter_peers_info", &[("translations", "conntrack")]),
        Some(1.0),
        "{}",
        s.text
    );
    // N's conntrack table: the translated connections it saw, by port (entries of opened
    // connections live on in TIME_WAIT for minutes; refused ones for 10 s, so they are
    // checked only when still there).
    let entries = |port: &str| {
        let out = n.run(&[
            "conntrack",
            "-L",
            "-p",
            "tcp",
            "--dst-nat",
            "--orig-dst",
            VIP,
            "--dport",
            port,
        ]);
        out.lines().filter(|l| l.contains("dport=")).count() as u64
    };
    assert_eq!(entries("80"), OPENED, "conntrack of {}", n.name);
}

#[test]
fn peers_listener_overflows_are_the_ports() {
    let (agent, a, b, _veth) = agent_and_pair("nxpl");
    let listener = format!(
        "import socket, time\n\
         l = socket.socket(); l.bind(('{B_IP}', 8089)); l.listen(2)\n\
         time.sleep(600)\n"
    );
    let listener = b.spawn(&["python3", "-c", &listener]);
    waits_for_listener(&b, 8089);
    // A second listener of the port (IPv6 only), which stays when the first closes.
    let v6 = "import socket, time\n\
         l = socket.socket(socket.AF_INET6); l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n\
         l.bind(('::', 8089)); l.listen(5)\n\
         time.sleep(600)\n";
    let _v6 = b.spawn(&["python3", "-c", v6]);
    let both = poll(Duration::from_secs(10), || {
        (b.run(&["ss", "-Htln", "sport = :8089"]).lines().count() == 2).then_some(())
    });
    assert!(both.is_some(), "no IPv6 listener on 8089");
    // A handshake that finds the queue full is answered with an RST (no SYN-ACK retries keep
    // it dropping); A gives up a SYN after one retry.
    b.run(&["sysctl", "-qw", "net.ipv4.tcp_abort_on_overflow=1"]);
    a.run(&["sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"]);
    let b0 = nstat(&b);
    let script = format!(
        "import socket, threading\n\
         out = []; keep = []\n\
         def one():\n    s = socket.socket(); s.settimeout(8)\n    try:\n        s.connect(('{B_IP}', 8089)); keep.append(s); out.append('ok')\n    except OSError as e:\n        out.append(e.__class__.__name__)\n\
         ts = [threading.Thread(target=one) for _ in range(12)]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\n\
         print(' '.join(sorted(out)))\n"
    );
    let outcomes = a.run(&["python3", "-c", &script]);
    // The kernel's counters, read when no drop happens during the scrape. The listener's
    // drops are its sk_drops: every overflow of the full accept queue (ListenOverflows) and
    // any other listen drop (ListenDrops counts both). Usually the two are equal here; a SYN
    // arriving while the SYN queue is full too is a listen drop but no overflow (seen once
    // in CI: 26 drops, 25 overflows), so the exact equality is with ListenDrops.
    let port = [("port", "8089")];
    let (s, overflows, drops) = poll(Duration::from_secs(20), || {
        let before = nstat(&b);
        let s = agent.scrape();
        let after = nstat(&b);
        let drops = delta(&b0, &after, "TcpExtListenDrops");
        (before == after && peer_value(&s, "netexporter_listener_drops_total", &b, &port) == drops)
            .then(|| (s, delta(&b0, &after, "TcpExtListenOverflows"), drops))
    })
    .unwrap_or_else(|| {
        panic!(
            "listener drops never equal TcpExtListenDrops ({}; ListenOverflows {}); clients: {outcomes}\n{}",
            delta(&b0, &nstat(&b), "TcpExtListenDrops"),
            delta(&b0, &nstat(&b), "TcpExtListenOverflows"),
            agent.scrape().text
        )
    });
    assert!(overflows > 0, "the queue never overflowed: {outcomes}");
    assert!(
        overflows <= drops,
        "overflows {overflows} are among the {drops} drops: {outcomes}"
    );
    // The port's two listeners, summed.
    let queues = || {
        let ss = b.run(&["ss", "-Hltn", "sport = :8089"]);
        let sum = |col: usize| -> u64 {
            ss.lines()
                .map(|l| {
                    l.split_whitespace()
                        .nth(col)
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                })
                .sum()
        };
        (sum(1), sum(2), ss.lines().count(), ss.clone())
    };
    let (recv_q, send_q, listeners, ss) = queues();
    assert_eq!(listeners, 2, "{ss}");
    assert_eq!(
        peer_value(&s, "netexporter_listener_accept_queue", &b, &port),
        recv_q,
        "{ss}"
    );
    // listen(2) holds up to three; fewer when a handshake completed on A's side only (the
    // queue was full when B took its last ACK: an overflow, answered with an RST); four when
    // two last ACKs were taken at once on two CPUs (the kernel checks that the queue is full
    // and adds to it without a lock between: seen here about once in five runs).
    assert!((1..=4).contains(&recv_q), "{ss}");
    assert_eq!(
        peer_value(&s, "netexporter_listener_accept_queue_limit", &b, &port),
        send_q
    );
    // The listener that dropped closes; the port still has one, so its series lives on, and
    // the drops stay in it: a counter never goes back.
    drop(listener);
    let s = poll(Duration::from_secs(20), || {
        let s = agent.scrape();
        (peer_value(&s, "netexporter_listener_accept_queue_limit", &b, &port) == 5).then_some(s)
    })
    .unwrap_or_else(|| panic!("the closed listener still counted: {}", queues().3));
    assert_eq!(queues().2, 1);
    assert_eq!(
        peer_value(&s, "netexporter_listener_drops_total", &b, &port),
        drops,
        "a closed listener's drops left its port's count"
    );
    eprintln!(
        "12 connects to a listen(2) that never accepts: {outcomes}; {drops} drops, {overflows} overflows"
    );
}

/// `diagnose --pod NETNS`: the namespace's peers from a live window, worst first, with the
/// connections and failures the test made in the window.
#[test]
fn peers_diagnose_pod_lists_the_worst_peers_of_a_live_window() {
    let (_agent, a, b, _veth) = agent_and_pair("nxpd");
    let _open = server(&b, 8090, false);
    waits_for_listener(&b, 8090);
    a.run(&["ip", "link", "set", "lo", "up"]);
    // A "Service" of A's: 10.96.99.2:80 translated to B's open port in A's OUTPUT chain.
    a.run(&["ip", "route", "add", "10.96.99.2/32", "dev", "eth0"]);
    dnat(&a, "10.96.99.2", 80, &format!("{B_IP}:8090"));
    let diagnose = Diagnose::start(&[
        "--mode=standalone",
        "diagnose",
        "--pod",
        &a.name,
        "--window",
        "6s",
        "--output",
        "json",
    ]);
    assert_eq!(clients(&a, 8090, 4).trim(), "ok ok ok ok");
    assert_eq!(
        clients(&a, 8091, 3).trim(),
        "ConnectionRefusedError ConnectionRefusedError ConnectionRefusedError"
    );
    let loopback_refused = "import socket\n\
         for _ in range(2):\n    try:\n        socket.create_connection(('127.0.0.1', 9))\n    except OSError:\n        pass\n";
    a.run(&["python3", "-c", loopback_refused]);
    assert_eq!(clients_to(&a, "10.96.99.2", 80, 2).trim(), "ok ok");
    let report = diagnose.json();
    let rows: Vec<(String, String, u64, u64)> = report["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|r| {
            let failed: u64 = r["failures"]
                .as_object()
                .map_or(0, |f| f.values().filter_map(Value::as_u64).sum());
            (
                r["role"].as_str().unwrap_or_default().to_string(),
                r["peer"].as_str().unwrap_or_default().to_string(),
                r["opened"].as_u64().unwrap_or(0),
                failed,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("client".to_string(), B_IP.to_string(), 4, 3),
            ("client".to_string(), "loopback".to_string(), 0, 2),
            ("client".to_string(), "10.96.99.2".to_string(), 2, 0),
        ],
        "{report:#}"
    );
    assert_eq!(report["peers"][0]["failures"]["refused"], 3);
    // The Service's connections, by the backend they reached.
    let backends = &report["backends"];
    assert_eq!(backends.as_array().map(Vec::len), Some(1), "{report:#}");
    assert_eq!(backends[0]["peer"], "10.96.99.2");
    assert_eq!(backends[0]["backend"], B_IP);
    assert_eq!(backends[0]["opened"], 2);
}

/// Connections to an address of this node's own namespace (a Pod's to its node: the kubelet,
/// a hostNetwork server, a node-local cache) are counted under the node, by its name.
#[test]
fn peers_connections_to_this_node_are_the_node() {
    require_root();
    const N: u64 = 3;
    let agent = Agent::start(&[]);
    let a = Netns::new("nxnd");
    let _veth = Veth::new(&a, "10.214.0.1/30", "10.214.0.2/30");
    let listener = std::net::TcpListener::bind("10.214.0.1:0").expect("listen");
    let port = listener.local_addr().expect("local address").port();
    let server = std::thread::spawn(move || {
        for _ in 0..N {
            if let Ok((c, _)) = listener.accept() {
                drop(c);
            }
        }
    });
    assert_eq!(
        clients_to(&a, "10.214.0.1", port, N).trim(),
        vec!["ok"; N as usize].join(" ")
    );
    server.join().expect("server");
    let port = port.to_string();
    let labels = [
        ("role", "client"),
        ("port", port.as_str()),
        ("peer", "itest-node"),
        ("peer_kind", "node"),
    ];
    let s = poll(Duration::from_secs(10), || {
        let s = agent.scrape();
        (peer_value(&s, CONNS, &a, &labels) == N).then_some(s)
    });
    assert!(
        s.is_some(),
        "{}",
        agent
            .scrape()
            .text
            .lines()
            .filter(|l| l.starts_with(CONNS) && l.contains(&a.name))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
