//! The drop counter (`packetloss`) against drops this file makes the kernel do: a known number
//! of packets, dropped for a known reason in a known network namespace, must show up as exactly
//! that many in that namespace's `netexporter_packetloss_reason` series, and in the node's
//! legacy counters.
//!
//! Only fresh namespaces are counted exactly: nothing else sends to them. The host's own series
//! and the node's legacy counters also see the machine's background drops, so for them a test
//! checks relations that hold whatever the background does (at least N; the node counter moves
//! like the sum of the reason series). Those relations need the set of namespaces to stay the
//! same while they are read (the drops of a namespace that comes or goes between two scrapes are
//! in the node's counters but in no namespace's series): a round in which the set changed is
//! repeated, a few times at most.
//!
//! Every namespace, link, address, neighbour entry, firewall rule, tc filter, sysctl, file and
//! process made here is removed by a guard, also when an assertion fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const N: u64 = 37;
const REASON: &str = "netexporter_packetloss_reason";
const INFO: &str = "netexporter_packetloss_info";
/// Legacy node counters and the drop reason each one counts.
const LEGACY: &[(&str, &str)] = &[
    ("netexporter_packetloss_netfilter", "NETFILTER_DROP"),
    ("netexporter_packetloss_otherhost", "OTHERHOST"),
    ("netexporter_packetloss_nosocket", "NO_SOCKET"),
    ("netexporter_packetloss_iprpfilter", "IP_RPFILTER"),
    ("netexporter_packetloss_nomem", "NOMEM"),
    ("netexporter_packetloss_zerowindow", "TCP_ZEROWINDOW"),
];
const TOTAL: &str = "netexporter_packetloss_total";
/// How long veth traffic may take to reach the counters (it is processed in softirq context).
const SETTLE: Duration = Duration::from_secs(10);
/// Rounds repeated because the set of namespaces changed (other tests on the machine).
const ROUNDS: usize = 6;

// ---- Guards ----

/// Runs a command on drop, ignoring its outcome: the undo of something a test did.
struct Undo(Vec<String>);

impl Undo {
    fn new(cmd: &[&str]) -> Self {
        Self(cmd.iter().map(|s| s.to_string()).collect())
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        let _ = Command::new(&self.0[0])
            .args(&self.0[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `cmd` inside `ns` and returns the guard that runs `undo` there on drop.
fn in_ns_with_undo(ns: &Netns, cmd: &[&str], undo: &[&str]) -> Undo {
    ns.run(cmd);
    let mut full = vec!["ip", "netns", "exec", &ns.name];
    full.extend_from_slice(undo);
    Undo::new(&full)
}

/// Runs `cmd` on the host and returns the guard that runs `undo` on drop.
fn with_undo(cmd: &[&str], undo: &[&str]) -> Undo {
    run(cmd);
    Undo::new(undo)
}

/// Sets sysctls inside `ns` (never on the host) and restores the old values on drop.
fn ns_sysctls(ns: &Netns, settings: &[(&str, &str)]) -> Vec<Undo> {
    settings
        .iter()
        .map(|(key, value)| {
            let old = ns.run(&["sysctl", "-n", key]).trim().to_string();
            let restore = format!("{key}={old}");
            in_ns_with_undo(
                ns,
                &["sysctl", "-w", &format!("{key}={value}")],
                &["sysctl", "-w", &restore],
            )
        })
        .collect()
}

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.yaml", unique("nx-packetloss")));
        std::fs::write(&path, text).expect("write temporary file");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// tracefs at /sys/kernel/tracing (the tracepoint modes read it), mounted if it is not, and
/// unmounted again on drop only if it was mounted here.
struct Tracefs {
    mounted_here: bool,
}

impl Tracefs {
    fn ensure() -> Self {
        if Path::new("/sys/kernel/tracing/events/skb/kfree_skb").exists() {
            return Self {
                mounted_here: false,
            };
        }
        run(&["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"]);
        Self { mounted_here: true }
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = Command::new("umount")
                .arg("/sys/kernel/tracing")
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// An agent whose config file sets the packetloss options; the file lives as long as it.
struct ConfiguredAgent {
    agent: Agent,
    _config: TempFile,
}

fn agent_with(attach: &str, btf_path: Option<&str>) -> ConfiguredAgent {
    let mut yaml = format!("probes:\n  packetloss:\n    attach: {attach}\n");
    if let Some(p) = btf_path {
        yaml.push_str(&format!("sources:\n  btf_path: {p}\n"));
    }
    let config = TempFile::new(&yaml);
    let flag = format!("--config.file={}", config.0.display());
    ConfiguredAgent {
        agent: Agent::start(&[&flag]),
        _config: config,
    }
}

// ---- Making drops ----

/// Sends `n` one-byte UDP datagrams from `bind` to `to`, from inside `ns` (`None`: the host).
/// The sending thread enters the namespace; the test process stays where it is. Every
/// datagram must leave the socket: a local error would make the expected count wrong.
fn send_udp(ns: Option<&Netns>, bind: &str, to: &str, n: u64) {
    let path = ns.map(|ns| format!("/run/netns/{}", ns.name));
    let (bind, to) = (bind.to_string(), to.to_string());
    std::thread::spawn(move || {
        if let Some(path) = &path {
            let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        }
        let sock = UdpSocket::bind(&bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        for i in 0..n {
            let sent = sock
                .send_to(b"x", &to)
                .unwrap_or_else(|e| panic!("datagram {i} from {bind} to {to}: {e}"));
            assert_eq!(sent, 1);
        }
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// Pins the host's neighbour entry of `addr` (the namespace end of `veth`) to that end's MAC,
/// so that no ARP exchange is needed: ARP would be dropped or answered differently by the
/// setups here (rp_filter, a drop-everything filter), and unresolved packets are dropped for
/// other reasons.
fn pin_neighbour(ns: &Netns, veth: &Veth, addr: &str) -> Undo {
    let mac = ns
        .run(&["cat", &format!("/sys/class/net/{}/address", veth.peer)])
        .trim()
        .to_string();
    with_undo(
        &[
            "ip",
            "neigh",
            "replace",
            addr,
            "lladdr",
            &mac,
            "dev",
            &veth.host,
            "nud",
            "permanent",
        ],
        &["ip", "neigh", "del", addr, "dev", &veth.host],
    )
}

/// A veth to `ns` whose namespace end `peer_ip` is reachable from the host without ARP.
fn veth_pinned(ns: &Netns, host_cidr: &str, peer_ip: &str) -> (Veth, Undo) {
    let veth = Veth::new(ns, host_cidr, &format!("{peer_ip}/30"));
    let pin = pin_neighbour(ns, &veth, peer_ip);
    (veth, pin)
}

// ---- Reading scrapes ----

fn int(v: f64) -> u64 {
    assert!(
        v >= 0.0 && v.fract() == 0.0 && v < 9.0e15,
        "not a counter value: {v}"
    );
    v as u64
}

/// The reason series of one target (`None`: the host's, which has no `netns` label), 0 when
/// absent.
fn reason(s: &Scrape, netns: Option<&str>, reason: &str) -> u64 {
    let v = match netns {
        Some(n) => s.value(REASON, &[("netns", n), ("reason", reason)]),
        None => s.value(REASON, &[("reason", reason)]),
    };
    v.map_or(0, int)
}

/// Every reason series of one target.
fn reasons_of(s: &Scrape, netns: Option<&str>) -> BTreeMap<String, u64> {
    s.find(REASON, &[])
        .into_iter()
        .filter(|x| x.labels.get("netns").map(String::as_str) == netns)
        .map(|x| (x.labels["reason"].clone(), int(x.value)))
        .collect()
}

/// The sum of the reason series of every target, of one reason or (`None`) of all.
fn reason_sum(s: &Scrape, reason: Option<&str>) -> u64 {
    s.find(REASON, &[])
        .into_iter()
        .filter(|x| reason.is_none_or(|r| x.labels.get("reason").map(String::as_str) == Some(r)))
        .map(|x| int(x.value))
        .sum()
}

/// How much a counter rose from `before` to `after` (negative if it fell).
fn rise(before: u64, after: u64) -> i128 {
    i128::from(after) - i128::from(before)
}

/// A node series (only `k8s_node` as label).
fn node(s: &Scrape, name: &str) -> u64 {
    int(s
        .value(name, &[])
        .unwrap_or_else(|| panic!("no {name} in the scrape:\n{}", packetloss_lines(s))))
}

/// The targets of a scrape: every `netns` label (the host is always there).
fn targets(s: &Scrape) -> BTreeSet<String> {
    s.samples
        .iter()
        .filter_map(|x| x.labels.get("netns").cloned())
        .collect()
}

/// `attach` labels of the info metric, with their values.
fn attach_modes(s: &Scrape) -> Vec<(String, f64)> {
    s.find(INFO, &[])
        .into_iter()
        .map(|x| (x.labels.get("attach").cloned().unwrap_or_default(), x.value))
        .collect()
}

fn collector_success(s: &Scrape) -> BTreeMap<String, f64> {
    s.find("netexporter_scrape_collector_success", &[])
        .into_iter()
        .map(|x| (x.labels["collector"].clone(), x.value))
        .collect()
}

/// The packetloss lines of a scrape, for failure messages.
fn packetloss_lines(s: &Scrape) -> String {
    s.text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("packetloss"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Scrapes until `netns`'s series of `why` has risen by at least `n` over `before` (veth
/// traffic is processed in softirq context), then checks it rose by exactly `n`, in that scrape
/// and in one more (a late duplicate would show there). Returns the first of the two scrapes.
fn until_risen(agent: &Agent, netns: &str, why: &str, before: u64, n: u64) -> Scrape {
    let mut last = None;
    let reached = poll(SETTLE, || {
        let s = agent.scrape();
        let risen = reason(&s, Some(netns), why) >= before + n;
        last = Some(s);
        risen.then_some(())
    });
    let s = last.expect("at least one scrape");
    assert!(
        reached.is_some(),
        "{netns}: {why} rose by {} within {SETTLE:?}, expected {n}; its series: {:?}",
        rise(before, reason(&s, Some(netns), why)),
        reasons_of(&s, Some(netns))
    );
    assert_eq!(
        rise(before, reason(&s, Some(netns), why)),
        i128::from(n),
        "{netns}: {why} must rise by exactly the {n} packets dropped; its series: {:?}",
        reasons_of(&s, Some(netns))
    );
    let again = agent.scrape();
    assert_eq!(
        rise(before, reason(&again, Some(netns), why)),
        i128::from(n),
        "{netns}: {why} moved on after reaching {n}"
    );
    s
}

/// Checks that the node counter `metric` rose by at least `n` from `s1` to `s2`, unless the
/// set of namespaces changed from `s0` (taken just before `s1`) to `s2` (other tests on the
/// machine can make and delete namespaces at any time; what they drop then is theirs).
fn check_node_rise(s0: &Scrape, s1: &Scrape, s2: &Scrape, metric: &str, n: u64) {
    if targets(s0) != targets(s1) || targets(s1) != targets(s2) {
        eprintln!("the set of namespaces changed; {metric} not compared");
        return;
    }
    let rise = rise(node(s1, metric), node(s2, metric));
    assert!(
        rise >= i128::from(n),
        "{metric} rose by {rise}, less than the {n} dropped here:\n{}\n----\n{}",
        packetloss_lines(s1),
        packetloss_lines(s2)
    );
}

// ---- Tests ----

/// N datagrams to a closed port inside a fresh namespace: its NO_SOCKET rises by exactly N;
/// the node's `nosocket` rises by at least N and by exactly as much as the NO_SOCKET series of
/// all targets together.
/// More keys than a CPU's slots (`DROP_SLOTS`, 64): every drop from one CPU, in 80 namespaces,
/// so that most keys take a slot and the rest (and those whose slot another key holds) the
/// hash; each namespace still counts exactly what it dropped.
#[test]
fn packetloss_more_keys_than_a_cpus_slots_are_counted_exactly() {
    require_root();
    const NAMESPACES: u64 = 80;
    let agent = Agent::start(&[]);
    let spaces: Vec<Netns> = (0..NAMESPACES).map(|_| Netns::new("nxls")).collect();
    // Namespace i drops i + 1 datagrams, all sent (and dropped: loopback's backlog is the
    // sending CPU's) from CPU 0.
    let paths: Vec<String> = spaces
        .iter()
        .map(|ns| format!("/run/netns/{}", ns.name))
        .collect();
    std::thread::spawn(move || {
        let mut cpus = nix::sched::CpuSet::new();
        cpus.set(0).expect("cpu 0");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).expect("pin to cpu 0");
        for (i, path) in paths.iter().enumerate() {
            let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            for _ in 0..=i {
                assert_eq!(sock.send_to(b"x", "127.0.0.1:9").expect("send"), 1);
            }
        }
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let counted = |s: &Scrape| -> Vec<u64> {
        spaces
            .iter()
            .map(|ns| reason(s, Some(&ns.name), "NO_SOCKET"))
            .collect()
    };
    let want: Vec<u64> = (1..=NAMESPACES).collect();
    let mut last = Vec::new();
    for _ in 0..30 {
        last = counted(&agent.scrape());
        if last == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        last, want,
        "NO_SOCKET per namespace, namespace i dropped i + 1"
    );
}

#[test]
fn packetloss_no_socket_in_a_namespace_is_counted_exactly() {
    require_root();
    let agent = Agent::start(&[]);
    let a = Netns::new("nxla");
    for round in 1..=ROUNDS {
        let s0 = agent.scrape();
        let s1 = agent.scrape();
        send_udp(Some(&a), "127.0.0.1:0", "127.0.0.1:9", N);
        let s2 = agent.scrape();

        // The namespace: exact, whatever else happens on the machine.
        let mine = rise(
            reason(&s1, Some(&a.name), "NO_SOCKET"),
            reason(&s2, Some(&a.name), "NO_SOCKET"),
        );
        assert_eq!(
            mine,
            i128::from(N),
            "{}: NO_SOCKET rose by {mine}, {N} datagrams went to a closed port; series: {:?}",
            a.name,
            reasons_of(&s2, Some(&a.name))
        );
        // Nothing but NO_SOCKET was dropped there.
        let others: u64 = reasons_of(&s2, Some(&a.name))
            .iter()
            .filter(|(r, _)| *r != "NO_SOCKET")
            .map(|(_, v)| v)
            .sum();
        assert_eq!(
            others,
            0,
            "{}: unexpected reasons {:?}",
            a.name,
            reasons_of(&s2, Some(&a.name))
        );

        if targets(&s0) != targets(&s1) || targets(&s1) != targets(&s2) {
            eprintln!("round {round}: the set of namespaces changed; again");
            continue;
        }
        let legacy = node(&s2, "netexporter_packetloss_nosocket")
            .checked_sub(node(&s1, "netexporter_packetloss_nosocket"))
            .unwrap_or_else(|| {
                panic!(
                    "netexporter_packetloss_nosocket fell:\n{}\n----\n{}",
                    packetloss_lines(&s1),
                    packetloss_lines(&s2)
                )
            });
        let series = rise(
            reason_sum(&s1, Some("NO_SOCKET")),
            reason_sum(&s2, Some("NO_SOCKET")),
        );
        assert!(
            legacy >= N,
            "netexporter_packetloss_nosocket rose by {legacy}, less than the {N} of {}",
            a.name
        );
        assert_eq!(
            i128::from(legacy),
            series,
            "netexporter_packetloss_nosocket must rise like the NO_SOCKET series of all targets:\n{}\n----\n{}",
            packetloss_lines(&s1),
            packetloss_lines(&s2)
        );
        return;
    }
    panic!("the set of namespaces changed in each of {ROUNDS} rounds");
}

/// A DROP rule in namespace B and N datagrams to it over its veth: B's NETFILTER_DROP rises by
/// exactly N. Namespace A gets N datagrams to the same port without a rule: they are NO_SOCKET
/// there, exactly N, and A's NETFILTER_DROP stays 0.
#[test]
fn packetloss_netfilter_drop_is_counted_in_its_namespace() {
    require_root();
    let agent = Agent::start(&[]);
    let a = Netns::new("nxla");
    let b = Netns::new("nxlb");
    let (_veth_a, _pin_a) = veth_pinned(&a, "10.205.2.1/30", "10.205.2.2");
    let (_veth_b, _pin_b) = veth_pinned(&b, "10.205.2.5/30", "10.205.2.6");
    let rule = ["INPUT", "-p", "udp", "--dport", "5555", "-j", "DROP"];
    let _rule = in_ns_with_undo(
        &b,
        &[&["iptables", "-w", "-A"][..], &rule[..]].concat(),
        &[&["iptables", "-w", "-D"][..], &rule[..]].concat(),
    );

    let s0 = agent.scrape();
    let s1 = agent.scrape();
    let b_before = reason(&s1, Some(&b.name), "NETFILTER_DROP");
    let a_before = reason(&s1, Some(&a.name), "NO_SOCKET");
    let a_nf_before = reason(&s1, Some(&a.name), "NETFILTER_DROP");

    send_udp(None, "0.0.0.0:0", "10.205.2.6:5555", N);
    send_udp(None, "0.0.0.0:0", "10.205.2.2:5555", N);

    until_risen(&agent, &b.name, "NETFILTER_DROP", b_before, N);
    until_risen(&agent, &a.name, "NO_SOCKET", a_before, N);
    let s3 = agent.scrape();
    assert_eq!(
        reason(&s3, Some(&a.name), "NETFILTER_DROP"),
        a_nf_before,
        "{} has no rule, its NETFILTER_DROP must not move: {:?}",
        a.name,
        reasons_of(&s3, Some(&a.name))
    );
    assert_eq!(
        reason(&s3, Some(&b.name), "NO_SOCKET"),
        0,
        "{}: its datagrams were dropped by the rule, not for want of a socket",
        b.name
    );
    check_node_rise(&s0, &s1, &s3, "netexporter_packetloss_netfilter", N);
}

/// Strict rp_filter in namespace C and N datagrams from a source C has no route back to
/// through that interface: C's IP_RPFILTER rises by exactly N.
#[test]
fn packetloss_rp_filter_drop_is_counted_in_its_namespace() {
    require_root();
    let agent = Agent::start(&[]);
    let c = Netns::new("nxlc");
    let (veth, _pin) = veth_pinned(&c, "10.205.3.1/30", "10.205.3.2");
    let _rp = ns_sysctls(
        &c,
        &[
            ("net.ipv4.conf.all.rp_filter", "1"),
            (&format!("net.ipv4.conf.{}.rp_filter", veth.peer), "1"),
        ],
    );
    // The spoofed source: an address of the host end that C has no route to.
    let _spoof = with_undo(
        &["ip", "addr", "add", "10.206.3.1/32", "dev", &veth.host],
        &["ip", "addr", "del", "10.206.3.1/32", "dev", &veth.host],
    );

    let s0 = agent.scrape();
    let s1 = agent.scrape();
    let before = reason(&s1, Some(&c.name), "IP_RPFILTER");
    send_udp(None, "10.206.3.1:0", "10.205.3.2:5555", N);
    let s2 = until_risen(&agent, &c.name, "IP_RPFILTER", before, N);
    check_node_rise(&s0, &s1, &s2, "netexporter_packetloss_iprpfilter", N);
    assert_eq!(
        rise(
            reason(&s1, None, "IP_RPFILTER"),
            reason(&s2, None, "IP_RPFILTER")
        ),
        0,
        "the host's IP_RPFILTER must not take {}'s drops",
        c.name
    );
}

/// In one scrape, `netexporter_packetloss_total` equals the sum of every reason series of every
/// target, and each legacy counter the sum of its reason's series; after drops of several
/// kinds, one of them on the host side of a veth (which the node must leave to the namespace).
#[test]
fn packetloss_total_equals_the_sum_of_all_reason_series() {
    require_root();
    let agent = Agent::start(&[]);
    let p = Netns::new("nxlp");
    let (veth, _pin) = veth_pinned(&p, "10.205.4.1/30", "10.205.4.2");
    let _tc = host_side_drop(&veth.host);
    send_udp(Some(&p), "127.0.0.1:0", "127.0.0.1:9", N);
    send_udp(None, "0.0.0.0:0", "10.205.4.2:5555", N);

    for round in 1..=ROUNDS {
        let s1 = agent.scrape();
        let s2 = agent.scrape();
        let s3 = agent.scrape();
        if targets(&s1) != targets(&s2) || targets(&s2) != targets(&s3) {
            eprintln!("round {round}: the set of namespaces changed; again");
            continue;
        }
        let of_p: u64 = reasons_of(&s2, Some(&p.name)).values().sum();
        assert!(
            of_p >= 2 * N,
            "{} must have at least the {} drops made there:\n{}",
            p.name,
            2 * N,
            packetloss_lines(&s2)
        );
        assert_eq!(
            node(&s2, TOTAL),
            reason_sum(&s2, None),
            "{TOTAL} must equal the sum of every reason series in the same scrape:\n{}",
            packetloss_lines(&s2)
        );
        for (metric, why) in LEGACY {
            assert_eq!(
                node(&s2, metric),
                reason_sum(&s2, Some(why)),
                "{metric} must equal the sum of the {why} series in the same scrape:\n{}",
                packetloss_lines(&s2)
            );
        }
        return;
    }
    panic!("the set of namespaces changed in each of {ROUNDS} rounds");
}

/// A drop-everything filter (IPv4) on the egress of the host end of a veth, as a classic BPF
/// program in direct-action mode (`ret #TC_ACT_SHOT`): it needs only cls_bpf, no gact or
/// matchall. The clsact qdisc (and with it the filter) is removed on drop.
fn host_side_drop(dev: &str) -> Undo {
    let undo = with_undo(
        &["tc", "qdisc", "add", "dev", dev, "clsact"],
        &["tc", "qdisc", "del", "dev", dev, "clsact"],
    );
    run(&[
        "tc",
        "filter",
        "add",
        "dev",
        dev,
        "egress",
        "protocol",
        "ip",
        "bpf",
        "da",
        "bytecode",
        "1,6 0 0 2,",
    ]);
    undo
}

/// Drops on the host side of P's veth (a tc egress filter there): they are P's. The reason the
/// kernel gives them is read from the scrape (the one reason of P that rose); P's series of it
/// rises by exactly N, the host's and another namespace Q's (with its own veth) stay put.
#[test]
fn packetloss_drop_on_the_host_side_of_a_veth_belongs_to_the_namespace() {
    require_root();
    let agent = Agent::start(&[]);
    let p = Netns::new("nxlp");
    let q = Netns::new("nxlq");
    let (veth, _pin_p) = veth_pinned(&p, "10.205.5.1/30", "10.205.5.2");
    let (_veth_q, _pin_q) = veth_pinned(&q, "10.205.5.5/30", "10.205.5.6");
    let _tc = host_side_drop(&veth.host);

    let s1 = agent.scrape();
    let p_before = reasons_of(&s1, Some(&p.name));
    send_udp(None, "0.0.0.0:0", "10.205.5.2:5555", N);

    let mut last = None;
    let risen = poll(SETTLE, || {
        let s = agent.scrape();
        let now = reasons_of(&s, Some(&p.name));
        let up: Vec<String> = now
            .iter()
            .filter(|(r, v)| **v >= p_before.get(*r).copied().unwrap_or(0) + N)
            .map(|(r, _)| r.clone())
            .collect();
        last = Some(s);
        (!up.is_empty()).then_some(up)
    });
    let s2 = last.expect("a scrape");
    let up = risen.unwrap_or_else(|| {
        panic!(
            "no reason of {} rose by {N} within {SETTLE:?}: before {p_before:?}, after {:?}\n{}",
            p.name,
            reasons_of(&s2, Some(&p.name)),
            packetloss_lines(&s2)
        )
    });
    assert_eq!(
        up.len(),
        1,
        "several reasons of {} rose by {N}: {up:?}",
        p.name
    );
    let why = &up[0];
    eprintln!("the kernel drops at tc egress with reason {why}");
    let delta =
        |s: &Scrape, netns: Option<&str>| rise(reason(&s1, netns, why), reason(s, netns, why));
    assert_eq!(
        delta(&s2, Some(&p.name)),
        i128::from(N),
        "{}: {why} must rise by exactly the {N} packets dropped",
        p.name
    );
    let s3 = agent.scrape();
    assert_eq!(delta(&s3, Some(&p.name)), i128::from(N), "{why} moved on");
    assert_eq!(
        delta(&s3, None),
        0,
        "the host's {why} must not take the drops on {}'s veth:\n{}",
        p.name,
        packetloss_lines(&s3)
    );
    assert_eq!(
        delta(&s3, Some(&q.name)),
        0,
        "{} has nothing to do with {}'s veth",
        q.name,
        p.name
    );
}

/// A Pod-like namespace P with drops on the host side of its veth, then deleted with its veth:
/// the host's own series do not take P's drops (the map keys of the gone host device are
/// retired, not left to fall to the host when the veth is no longer P's), and the node's
/// counters keep them (never fall).
#[test]
fn packetloss_drops_of_a_deleted_namespaces_host_veth_stay_out_of_the_hosts_series() {
    require_root();
    let agent = Agent::start(&[]);
    let p = Netns::new("nxlp");
    let (veth, pin) = veth_pinned(&p, "10.205.8.1/30", "10.205.8.2");
    let tc = host_side_drop(&veth.host);
    let s0 = agent.scrape();
    let before = reason(&s0, Some(&p.name), "TC_EGRESS");
    send_udp(None, "0.0.0.0:0", "10.205.8.2:5555", N);
    let s1 = until_risen(&agent, &p.name, "TC_EGRESS", before, N);
    let host_before = reason(&s1, None, "TC_EGRESS");
    let total_before = node(&s1, TOTAL);
    drop(tc);
    drop(pin);
    drop(veth);
    let name = p.name.clone();
    drop(p);
    for _ in 0..3 {
        let s = agent.scrape();
        assert!(
            s.find(REASON, &[("netns", &name)]).is_empty(),
            "{name} still has series"
        );
        let host_rise = rise(host_before, reason(&s, None, "TC_EGRESS"));
        assert!(
            host_rise < i128::from(N),
            "the host's TC_EGRESS rose by {host_rise} when {name} and its veth went:\n{}",
            packetloss_lines(&s)
        );
        assert!(node(&s, TOTAL) >= total_before, "{TOTAL} fell");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// In `tracepoint_nobtf` mode every drop is the host's: N NO_SOCKET drops made in a namespace
/// raise the host's NO_SOCKET by N, and the namespace has no reason series. The host's series
/// also counts the machine's own NO_SOCKET drops, so a round with background drops (more than
/// N, never less) is repeated until one is quiet.
fn check_nobtf_counts(agent: &Agent, ns: &Netns) {
    let mut seen = Vec::new();
    for _ in 0..ROUNDS * 3 {
        let s1 = agent.scrape();
        send_udp(Some(ns), "127.0.0.1:0", "127.0.0.1:9", N);
        let s2 = agent.scrape();
        let delta = rise(
            reason(&s1, None, "NO_SOCKET"),
            reason(&s2, None, "NO_SOCKET"),
        );
        assert!(
            delta >= i128::from(N),
            "the host's NO_SOCKET rose by {delta}, less than the {N} dropped:\n{}",
            packetloss_lines(&s2)
        );
        assert!(
            reasons_of(&s2, Some(&ns.name)).is_empty(),
            "without BTF no namespace is known, yet {} has {:?}",
            ns.name,
            reasons_of(&s2, Some(&ns.name))
        );
        if delta == i128::from(N) {
            return;
        }
        seen.push(delta);
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("the host's NO_SOCKET never rose by exactly {N} (background drops?): {seen:?}");
}

/// Each attach mode forced by the config file: the info metric names it, and N datagrams to a
/// closed port in a namespace count exactly N NO_SOCKET there (in the host's series for
/// `tracepoint_nobtf`, which cannot tell namespaces apart).
#[test]
fn packetloss_every_forced_attach_mode_counts_exactly() {
    require_root();
    let _tracefs = Tracefs::ensure();
    for mode in ["tp_btf", "raw_tracepoint", "tracepoint", "tracepoint_nobtf"] {
        let configured = agent_with(mode, None);
        let agent = &configured.agent;
        let ns = Netns::new("nxlm");
        let s1 = agent.scrape();
        assert_eq!(
            attach_modes(&s1),
            vec![(mode.to_string(), 1.0)],
            "attach {mode} forced; log:\n{}",
            agent.log_text()
        );
        assert_eq!(
            collector_success(&s1).get("packetloss"),
            Some(&1.0),
            "{mode}: packetloss failed; log:\n{}",
            agent.log_text()
        );
        if mode == "tracepoint_nobtf" {
            check_nobtf_counts(agent, &ns);
            continue;
        }
        let s0 = s1;
        let s1 = agent.scrape();
        send_udp(Some(&ns), "127.0.0.1:0", "127.0.0.1:9", N);
        let s2 = agent.scrape();
        assert_eq!(
            reason(&s2, Some(&ns.name), "NO_SOCKET"),
            N,
            "{mode}: {} must have exactly {N} NO_SOCKET: {:?}",
            ns.name,
            reasons_of(&s2, Some(&ns.name))
        );
        check_node_rise(&s0, &s1, &s2, "netexporter_packetloss_nosocket", N);
    }
}

/// `tp_btf` with a BTF file that does not exist cannot work: the packetloss collector reports
/// failure (and has no series), every other collector succeeds and serves the same families as
/// an agent without the fault. `auto` with the same file falls back to `tracepoint_nobtf`
/// (reason names then come from the tracepoint format) and counts.
///
/// The reference agent has the same missing BTF file and differs only in the attach mode: probes
/// that need BTF for themselves (peers) are unavailable in both, so what is compared is what the
/// packetloss failure alone takes away.
#[test]
fn packetloss_forced_failure_and_fallback_without_btf() {
    require_root();
    let _tracefs = Tracefs::ensure();

    let reference = agent_with("auto", Some("/nonexistent"));
    let want: BTreeSet<String> = reference
        .agent
        .scrape()
        .family_names()
        .into_iter()
        // The programs' own statistics exist where programs are loaded: the failed packetloss
        // is the only one here.
        .filter(|f| !f.starts_with("netexporter_packetloss_") && !f.starts_with("netexporter_bpf_"))
        .collect();
    drop(reference);

    let broken = agent_with("tp_btf", Some("/nonexistent"));
    for _ in 0..2 {
        let s = broken.agent.scrape();
        let success = collector_success(&s);
        assert_eq!(
            success.get("packetloss"),
            Some(&0.0),
            "tp_btf without BTF must fail: {success:?}"
        );
        let failed: Vec<&String> = success
            .iter()
            .filter(|(c, v)| *c != "packetloss" && **v != 1.0)
            .map(|(c, _)| c)
            .collect();
        assert!(failed.is_empty(), "other collectors failed: {failed:?}");
        assert!(success.len() > 1, "no other collector: {success:?}");
        let have = s.family_names();
        let missing: Vec<&String> = want.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "families missing beside the failed packetloss: {missing:?}"
        );
        let leaked: Vec<&String> = have
            .iter()
            .filter(|f| f.starts_with("netexporter_packetloss_"))
            .collect();
        assert!(leaked.is_empty(), "series of a failed probe: {leaked:?}");
    }
    assert!(
        broken.agent.log_text().contains("/nonexistent"),
        "the failure should name the missing BTF file; log:\n{}",
        broken.agent.log_text()
    );
    drop(broken);

    let fallback = agent_with("auto", Some("/nonexistent"));
    let s = fallback.agent.scrape();
    assert_eq!(
        attach_modes(&s),
        vec![("tracepoint_nobtf".to_string(), 1.0)],
        "auto without BTF must fall back to tracepoint_nobtf; log:\n{}",
        fallback.agent.log_text()
    );
    assert_eq!(collector_success(&s).get("packetloss"), Some(&1.0));
    let ns = Netns::new("nxlf");
    check_nobtf_counts(&fallback.agent, &ns);
}

// ---- Regressions: agent bugs found and fixed ----

/// The node's legacy counters are counters: they must never fall. The agent prunes the map
/// entries of a namespace that is gone; the node's counters keep what they had counted.
#[test]
fn packetloss_node_counters_never_fall_when_a_namespace_goes() {
    require_root();
    let agent = Agent::start(&[]);
    let x = Netns::new("nxlx");
    send_udp(Some(&x), "127.0.0.1:0", "127.0.0.1:9", 1000);
    let s1 = agent.scrape();
    assert_eq!(reason(&s1, Some(&x.name), "NO_SOCKET"), 1000);
    drop(x);
    let s2 = agent.scrape();
    let s3 = agent.scrape();
    for metric in ["netexporter_packetloss_nosocket", TOTAL] {
        let values = [node(&s1, metric), node(&s2, metric), node(&s3, metric)];
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "{metric} fell after a namespace was deleted: {values:?}"
        );
    }
}

/// Drops on the host side of a veth that appeared since the last collection belong to its
/// namespace in the very first scrape. The agent gives them to no target then: the node
/// leaves them to the namespace (it knows the veth), the namespace does not take them (it
/// reads the node's veths of the previous collection when it is read before the node).
#[test]
fn packetloss_host_side_drops_count_in_the_first_scrape() {
    require_root();
    let agent = Agent::start(&[]);
    let p = Netns::new("nxlp");
    let (veth, _pin) = veth_pinned(&p, "10.205.6.1/30", "10.205.6.2");
    let _tc = host_side_drop(&veth.host);
    send_udp(None, "0.0.0.0:0", "10.205.6.2:5555", N);
    let s = agent.scrape();
    let of_p: u64 = reasons_of(&s, Some(&p.name)).values().sum();
    assert!(
        of_p >= N,
        "{} has {of_p} drops, {N} were made on its veth; total {} vs {} in the series:\n{}",
        p.name,
        node(&s, TOTAL),
        reason_sum(&s, None),
        packetloss_lines(&s)
    );
}

/// A veth between two namespaces Y and Z whose ifindexes equal those of a host veth to X
/// (host end H, X end P; Y end P, Z end H) must not make Y take X's host-side drops. The
/// agent matches peers by ifindex only, without checking that the peer is in the node's
/// namespace (IFLA_LINK_NETNSID), so Y counts them too.
#[test]
fn packetloss_host_side_drops_go_to_one_namespace_only() {
    require_root();
    let agent = Agent::start(&[]);
    let x = Netns::new("nxlx");
    let y = Netns::new("nxly");
    let z = Netns::new("nxlz");
    let (veth, _pin) = veth_pinned(&x, "10.205.7.1/30", "10.205.7.2");
    let host_index = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", veth.host))
        .expect("host ifindex")
        .trim()
        .to_string();
    let x_index = x
        .run(&["cat", &format!("/sys/class/net/{}/ifindex", veth.peer)])
        .trim()
        .to_string();
    let (yname, zname) = (unique("nxp"), unique("nxp"));
    y.run(&[
        "ip",
        "link",
        "add",
        &yname,
        "index",
        &x_index,
        "type",
        "veth",
        "peer",
        "name",
        &zname,
        "netns",
        &z.name,
        "index",
        &host_index,
    ]);
    let _tc = host_side_drop(&veth.host);
    let s1 = agent.scrape();
    send_udp(None, "0.0.0.0:0", "10.205.7.2:5555", N);
    let s2 = agent.scrape();
    assert_eq!(reason(&s2, Some(&x.name), "TC_EGRESS"), N);
    assert_eq!(
        rise(
            reason(&s1, Some(&y.name), "TC_EGRESS"),
            reason(&s2, Some(&y.name), "TC_EGRESS")
        ),
        0,
        "{} took {}'s drops:\n{}",
        y.name,
        x.name,
        packetloss_lines(&s2)
    );
}
