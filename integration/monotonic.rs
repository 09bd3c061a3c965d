//! Node-scope counters never go backwards when Pods go away. A node-wide counter that sums over
//! things that come and go (the root qdiscs of the Pods' host-side veths, drop-counter entries
//! of namespaces) must keep what the departed ones counted: Prometheus reads any fall as a
//! counter reset, and `rate()` then shows a spike the size of the node's traffic.
//!
//! "Pods" here are namespaces behind veths whose host side carries a root `tbf` qdisc (as the
//! bandwidth CNI plugin sets one) and traffic through it. Every counter series of the scrape
//! without a `netns` label (node scope) is compared before and after they go, one by one.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// A Pod: a namespace behind a veth whose host side (`<prefix><i>`) carries a tbf root qdisc.
/// Dropping it deletes the namespace, and with it the veth pair.
struct Pod {
    host: String,
    ns: Netns,
}

impl Pod {
    fn new(prefix: &str, i: usize) -> Self {
        let ns = Netns::new("nxm");
        let host = format!("{prefix}{i}");
        let peer = unique("nxmp");
        let net = format!("10.213.{}", i % 250);
        run(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
        ]);
        let pod = Self { host, ns };
        run(&["ip", "link", "set", &peer, "netns", &pod.ns.name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{net}.1/30"),
            "dev",
            &pod.host,
        ]);
        run(&["ip", "link", "set", &pod.host, "up"]);
        pod.ns
            .run(&["ip", "addr", "add", &format!("{net}.2/30"), "dev", &peer]);
        pod.ns.run(&["ip", "link", "set", &peer, "up"]);
        run(&[
            "tc", "qdisc", "add", "dev", &pod.host, "root", "tbf", "rate", "100mbit", "burst",
            "64kb", "latency", "50ms",
        ]);
        pod
    }

    /// Sends `n` datagrams of 1000 bytes from the host through the veth (its root qdisc).
    fn traffic(&self, i: usize, n: usize) {
        let script = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             for _ in range({n}): s.sendto(b'x'*1000, ('10.213.{}.2', 9))",
            i % 250
        );
        let ok = Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "traffic to pod {i} ({})", self.ns.name);
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // The namespace's guard deletes the pair; this one covers a failed move into it.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .stderr(Stdio::null())
            .status();
    }
}

/// A node counter series: name and labels.
type Key = (String, BTreeMap<String, String>);

/// Every counter series of the node (no `netns` label) -> value.
fn node_counters(s: &Scrape) -> BTreeMap<Key, f64> {
    let types = s.types();
    s.samples
        .iter()
        .filter(|x| types.get(&x.name).map(String::as_str) == Some("counter"))
        .filter(|x| !x.labels.contains_key("netns"))
        .map(|x| ((x.name.clone(), x.labels.clone()), x.value))
        .collect()
}

/// Every series of `before` is in `after`, and not lower. A series of one device (`if_name`)
/// may end with its device, and a listening port's (`netexporter_listener_*`) with its
/// listener (the count lives with the socket: any process of the node may close one); a sum
/// over devices may not.
fn assert_none_went_back(before: &BTreeMap<Key, f64>, after: &BTreeMap<Key, f64>, when: &str) {
    let device_exists = |name: &str| {
        Command::new("ip")
            .args(["link", "show", "dev", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let listening = |port: &str| {
        Command::new("ss")
            .args(["-Htln", &format!("sport = :{port}")])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    };
    let back: Vec<String> = before
        .iter()
        .filter_map(
            |((name, labels), v)| match after.get(&(name.clone(), labels.clone())) {
                Some(a) if a >= v => None,
                Some(a) => Some(format!("{name}{labels:?}: {v} -> {a}")),
                None if labels.get("if_name").is_some_and(|d| !device_exists(d)) => None,
                None if name.starts_with("netexporter_listener_")
                    && labels.get("port").is_some_and(|p| !listening(p)) =>
                {
                    None
                }
                None => Some(format!("{name}{labels:?}: {v} -> gone")),
            },
        )
        .collect();
    assert!(
        back.is_empty(),
        "{when}: node counters went back:\n{}",
        back.join("\n")
    );
}

fn agent(prefix: &str) -> (Agent, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!("probes:\n  qdisc:\n    device_prefixes: [{prefix}]\nchecks:\n  enabled: false\n"),
    )
    .expect("write config");
    (
        Agent::start(&[&format!("--config.file={}", cfg.display())]),
        dir,
    )
}

#[test]
fn node_counters_never_go_back_when_pods_go_away() {
    require_root();
    let prefix = format!("nxq{}m", std::process::id() % 1000);
    let (agent, _cfg) = agent(&prefix);
    let mut pods: Vec<Pod> = (0..6).map(|i| Pod::new(&prefix, i)).collect();
    for (i, p) in pods.iter().enumerate() {
        p.traffic(i, 2000);
    }
    let before = agent.scrape();
    let bytes_before = before
        .value("netexporter_qdisc_bytes", &[])
        .expect("qdisc bytes");
    assert!(bytes_before >= 6.0 * 2000.0 * 1000.0, "{bytes_before}");
    // Half the Pods go away (their veths, qdiscs and namespaces with them).
    pods.truncate(3);
    let after = agent.scrape();
    assert_none_went_back(
        &node_counters(&before),
        &node_counters(&after),
        "pods deleted",
    );
    assert!(
        after
            .value("netexporter_qdisc_bytes", &[])
            .expect("qdisc bytes")
            >= bytes_before,
        "qdisc bytes fell"
    );
    // The gauges are of the devices present.
    assert_eq!(after.value("netexporter_qdisc_qlen", &[]), Some(0.0));
    // More traffic on the survivors counts on top.
    for (i, p) in pods.iter().enumerate() {
        p.traffic(i, 500);
    }
    let later = agent.scrape();
    assert!(
        later
            .value("netexporter_qdisc_bytes", &[])
            .expect("qdisc bytes")
            >= bytes_before + 3.0 * 500.0 * 1000.0
    );
    assert_none_went_back(
        &node_counters(&after),
        &node_counters(&later),
        "more traffic",
    );
}

/// Hundreds of Pods come and go in waves while the agent is scraped; no node counter ever
/// falls from one scrape to the next.
#[test]
fn node_counters_never_go_back_over_a_churn_of_pods() {
    require_root();
    let prefix = format!("nxc{}m", std::process::id() % 1000);
    let (agent, _cfg) = agent(&prefix);
    let mut last = node_counters(&agent.scrape());
    let mut next = 0;
    let mut alive: Vec<Pod> = Vec::new();
    for wave in 0..10 {
        for _ in 0..30 {
            let p = Pod::new(&prefix, next);
            p.traffic(next, 100);
            alive.push(p);
            next += 1;
        }
        let now = node_counters(&agent.scrape());
        assert_none_went_back(&last, &now, &format!("wave {wave}: pods added"));
        last = now;
        // Two thirds go.
        let keep = alive.len() / 3;
        alive.drain(..alive.len() - keep);
        std::thread::sleep(Duration::from_millis(100));
        let now = node_counters(&agent.scrape());
        assert_none_went_back(&last, &now, &format!("wave {wave}: pods deleted"));
        last = now;
    }
    assert!(next >= 300);
}
