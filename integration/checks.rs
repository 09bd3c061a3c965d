//! The configuration checks and their events, each against the real condition.
//!
//! A test builds a node: a network namespace the agent runs in as its node (uplink `eth0` to a
//! gateway namespace, default route through it), with Pods (namespaces behind veths
//! `nxc<i>` ↔ `eth0`, default route through the node), everything healthy: tcp_syncookies,
//! tcp_sack and nf_conntrack_tcp_be_liberal on, rp_filter off on the Pod-facing veths, proxy
//! ARP off on the uplink, MTUs 1500, iptables FORWARD policy ACCEPT. A test then creates one
//! problem and runs `net-exporter diagnose --output json` inside the node, in a PID namespace of
//! its own (it sees only the processes the test starts there) with `--path.netns` pointing at
//! the test's Pods only: then the events printed are exactly the problem's, and the exit code
//! is 1; with the problem removed again, nothing is printed and the exit code is 0.
//!
//! The kernel log is the machine's: kernel log lines carry a unique tag so that a test sees
//! its own lines, and the diagnoses of healthy nodes use a pattern nothing writes.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::*;

/// Every check, by its configuration name.
const ALL_CHECKS: &[&str] = &[
    "KernelParam",
    "IRQBalance",
    "DefaultRoute",
    "PolicyRoute",
    "VpcRoute",
    "MTUAbnormal",
    "IPtablesAbnormal",
    "KubeProxyAbnormal",
    "KernelLog",
];

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// A tag no earlier kernel log line holds (the log outlives test runs).
fn tag() -> String {
    format!("nxtest-{}-{}", std::process::id(), now_ns())
}

/// One event line as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ev {
    timestamp: u128,
    kind: String,
    msg: String,
}

/// Parses an event line, checking its exact shape: `{"timestamp":<ns>,"type":..,"msg":..}`,
/// these three keys in this order, nothing else.
fn parse_event(line: &str) -> Ev {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"));
    assert_eq!(obj.len(), 3, "keys of {line}");
    let ts = obj
        .get("timestamp")
        .and_then(|t| t.as_u64())
        .unwrap_or_else(|| panic!("timestamp is not an integer: {line}"));
    let kind = obj
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or_else(|| panic!("type is not a string: {line}"));
    let msg = obj
        .get("msg")
        .and_then(|t| t.as_str())
        .unwrap_or_else(|| panic!("msg is not a string: {line}"));
    let exact = format!(
        "{{\"timestamp\":{ts},\"type\":{},\"msg\":{}}}",
        serde_json::Value::from(kind),
        serde_json::Value::from(msg)
    );
    assert_eq!(line, exact, "key order or spacing");
    Ev {
        timestamp: u128::from(ts),
        kind: kind.to_string(),
        msg: msg.to_string(),
    }
}

/// The event lines of an agent's log (its stdout and stderr: stderr lines are not JSON).
fn log_events(log: &str) -> Vec<Ev> {
    log.lines()
        .filter(|l| l.starts_with("{\"timestamp\""))
        .map(parse_event)
        .collect()
}

/// The `checks:` section of a config file, by dotted key: `interval` (of every check),
/// `node.uplink`, `MTUAbnormal.floor` (a check's own section).
#[derive(Clone)]
struct Opts(Vec<(String, String)>);

impl Opts {
    /// The Pod veths are `nxc<i>`; the kernel log is matched against a pattern nothing writes.
    fn new() -> Self {
        Self(vec![
            ("node.pod_interface_prefixes".into(), "[nxc]".into()),
            (
                "KernelLog.patterns".into(),
                format!("[\"{} never written\"]", tag()),
            ),
        ])
    }

    fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.into(), value.into()));
        self
    }

    fn unset(mut self, key: &str) -> Self {
        self.0.retain(|(k, _)| k != key);
        self
    }

    /// Leaves only `keep` of the checks on.
    fn only(self, keep: &[&str]) -> Self {
        ALL_CHECKS
            .iter()
            .filter(|c| !keep.contains(c))
            .fold(self, |o, c| o.set(&format!("{c}.enabled"), "false"))
    }

    fn yaml(&self) -> String {
        let mut sections: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
        let mut s = String::from("checks:\n");
        for (k, v) in &self.0 {
            match k.split_once('.') {
                None => s.push_str(&format!("  {k}: {v}\n")),
                Some((section, key)) => match sections.iter_mut().find(|(n, _)| *n == section) {
                    Some((_, keys)) => keys.push((key, v)),
                    None => sections.push((section, vec![(key, v)])),
                },
            }
        }
        for (section, keys) in sections {
            s.push_str(&format!("  {section}:\n"));
            for (k, v) in keys {
                s.push_str(&format!("    {k}: {v}\n"));
            }
        }
        s
    }
}

/// What one `diagnose` printed.
#[derive(Debug)]
struct Diagnosis {
    code: Option<i32>,
    events: Vec<Ev>,
    #[expect(dead_code, reason = "shown in failure messages")]
    stdout: String,
    stderr: String,
}

impl Diagnosis {
    fn pairs(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .events
            .iter()
            .map(|e| (e.kind.clone(), e.msg.clone()))
            .collect();
        v.sort();
        v
    }

    /// Exactly these events (in any order), the exit code that goes with them, and every
    /// check could run.
    fn assert_exactly(&self, want: &[(&str, &str)]) {
        let mut want: Vec<(String, String)> = want
            .iter()
            .map(|(k, m)| (k.to_string(), m.to_string()))
            .collect();
        want.sort();
        assert_eq!(self.pairs(), want, "events; {self:#?}");
        let code = if want.is_empty() { 0 } else { 1 };
        assert_eq!(self.code, Some(code), "exit code; {self:#?}");
        self.assert_every_check_ran();
    }

    fn assert_clean(&self) {
        self.assert_exactly(&[]);
    }

    fn assert_every_check_ran(&self) {
        assert!(
            !self.stderr.contains("could not check"),
            "a check failed: {self:#?}"
        );
    }

    fn has(&self, kind: &str, msg: &str) -> bool {
        self.events.iter().any(|e| e.kind == kind && e.msg == msg)
    }
}

/// One Pod: its namespace behind a veth `nxc<i>` (node) ↔ `eth0` (Pod), `10.88.<i>.0/24`.
struct Pod {
    _veth: NsVeth,
    ns: Netns,
    gateway: String,
}

/// The node the agent runs in, healthy until a test breaks something. Fields drop in order:
/// veths, then namespaces, then the directories.
struct Node {
    pods: Vec<Pod>,
    _uplink: NsVeth,
    gw: Netns,
    ns: Netns,
    /// `--path.netns`: links to the Pods' namespaces, nothing else.
    netns_dir: tempfile::TempDir,
    /// Config files and fake binaries.
    work: tempfile::TempDir,
}

impl Node {
    fn new(pods: usize) -> Self {
        require_root();
        let ns = Netns::new("nxn");
        let gw = Netns::new("nxg");
        let uplink = NsVeth::new(&ns, "eth0", "10.77.0.2/24", &gw, "eth0", "10.77.0.1/24");
        ns.run(&["ip", "route", "add", "default", "via", "10.77.0.1"]);
        let mut node = Self {
            pods: Vec::new(),
            _uplink: uplink,
            gw,
            ns,
            netns_dir: tempfile::tempdir().expect("netns dir"),
            work: tempfile::tempdir().expect("work dir"),
        };
        // nf_conntrack_tcp_be_liberal exists once conntrack is there.
        require_conntrack();
        assert!(
            node.ns
                .sh("test -e /proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal && echo yes")
                .contains("yes"),
            "nf_conntrack is not available"
        );
        node.sysctl("net/ipv4/tcp_syncookies", "1");
        node.sysctl("net/ipv4/tcp_sack", "1");
        node.sysctl("net/netfilter/nf_conntrack_tcp_be_liberal", "1");
        node.sysctl("net/ipv4/conf/eth0/proxy_arp", "0");
        for _ in 0..pods {
            node.add_pod();
        }
        node
    }

    fn add_pod(&mut self) {
        let i = self.pods.len() + 1;
        let ns = Netns::new("nxq");
        let node_if = format!("nxc{i}");
        let gateway = format!("10.88.{i}.1");
        let veth = NsVeth::new(
            &self.ns,
            &node_if,
            &format!("{gateway}/24"),
            &ns,
            "eth0",
            &format!("10.88.{i}.2/24"),
        );
        ns.run(&["ip", "route", "add", "default", "via", &gateway]);
        self.sysctl(&format!("net/ipv4/conf/{node_if}/rp_filter"), "0");
        // The agent names the Pod after the link: `pod-<i>`.
        std::os::unix::fs::symlink(
            format!("/run/netns/{}", ns.name),
            self.netns_dir.path().join(format!("pod-{i}")),
        )
        .expect("link to the Pod's namespace");
        self.pods.push(Pod {
            _veth: veth,
            ns,
            gateway,
        });
    }

    /// Sets a sysctl inside the node's namespace (`net/ipv4/tcp_sack`): gone with it.
    fn sysctl(&self, rel: &str, value: &str) {
        self.ns.sh(&format!("echo {value} > /proc/sys/{rel}"));
        assert_eq!(self.ns.sh(&format!("cat /proc/sys/{rel}")).trim(), value);
    }

    fn write_config(&self, opts: &Opts) -> PathBuf {
        let path = self.work.path().join(format!("{}.yaml", unique("cfg")));
        std::fs::write(&path, opts.yaml()).expect("write config");
        path
    }

    /// The agent's arguments but `--node-name` (which [`NsAgent`] sets itself).
    fn agent_args(&self, opts: &Opts) -> Vec<String> {
        vec![
            format!("--path.netns={}", self.netns_dir.path().display()),
            format!("--config.file={}", self.write_config(opts).display()),
        ]
    }

    /// `diagnose --output <output>` inside the node, after `prelude` (shell, run in the PID
    /// namespace the agent gets).
    fn diagnose_raw(&self, opts: &Opts, prelude: &str, output: &str) -> Output {
        let mut args = self.agent_args(opts);
        args.push("--node-name=itest-node".into());
        args.extend(["diagnose".into(), "--output".into(), output.into()]);
        isolated_agent_command(&self.ns, prelude, &args)
            .output()
            .expect("run diagnose")
    }

    fn diagnose_with(&self, opts: &Opts, prelude: &str) -> Diagnosis {
        let before = now_ns();
        let out = self.diagnose_raw(opts, prelude, "json");
        let after = now_ns();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let events: Vec<Ev> = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(parse_event)
            .collect();
        for e in &events {
            assert!(
                (before..=after).contains(&e.timestamp),
                "timestamp {} not within the run [{before}, {after}]: {stdout}",
                e.timestamp
            );
        }
        Diagnosis {
            code: out.status.code(),
            events,
            stdout,
            stderr,
        }
    }

    fn diagnose(&self, opts: &Opts) -> Diagnosis {
        self.diagnose_with(opts, "")
    }

    /// A copy of `sleep` named `name` (its comm), to stand for a process of that name.
    fn fake_binary(&self, name: &str) -> PathBuf {
        let path = self.work.path().join(name);
        std::fs::copy("/bin/sleep", &path).expect("copy sleep");
        path
    }

    /// Shell that starts a process named `name` inside the node (the agent's PID namespace),
    /// waits until /proc shows it (exit 97 if it never does) and, with `stop`, kills it again.
    fn fake_process_prelude(&self, name: &str, stop: bool) -> String {
        let bin = self.fake_binary(name);
        let mut s = format!(
            "ip netns exec {ns} {bin} 600 &\n\
             for i in $(seq 200); do grep -qx {name} /proc/[0-9]*/comm 2>/dev/null && break; sleep 0.05; done\n\
             grep -qx {name} /proc/[0-9]*/comm 2>/dev/null || {{ echo 'fake {name} never ran' >&2; exit 97; }}\n",
            ns = shell_quote(&self.ns.name),
            bin = shell_quote(&bin.display().to_string()),
        );
        if stop {
            s.push_str(&format!(
                "kill $!; wait $! 2>/dev/null\n\
                 ! grep -qx {name} /proc/[0-9]*/comm 2>/dev/null || {{ echo 'fake {name} still runs' >&2; exit 98; }}\n"
            ));
        }
        s
    }
}

// ---- A healthy node ----

#[test]
fn healthy_node_has_no_problem() {
    let node = Node::new(2);
    // Standalone mode: KubeProxyAbnormal does not look (no kube-proxy runs here); PolicyRoute
    // has no CNI configured; VpcRoute has no provider.
    node.diagnose(&Opts::new()).assert_clean();
    let out = node.diagnose_raw(&Opts::new(), "", "table");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no problem found\n");
}

/// A namespace that is no Pod and has no interface up but `lo` (a process run with `unshare
/// -n`, as any systemd service with `PrivateNetwork=yes` runs) has no route to miss and no MTU
/// to compare: diagnose stays clean. One with an interface up and no default route is
/// reported, so the check still looks at namespaces found by their processes.
#[test]
fn loopback_only_namespace_held_by_a_process_is_no_problem() {
    let node = Node::new(1);
    // Inside the agent's PID namespace (the prelude runs there): a process in a namespace of
    // its own, found through /proc/PID/ns/net; diagnose waits until /proc shows it.
    let held = "unshare -n sleep 600 &\n\
                for i in $(seq 200); do [ \"$(readlink /proc/$!/ns/net)\" != \"$(readlink /proc/self/ns/net)\" ] && break; sleep 0.05; done\n";
    node.diagnose_with(&Opts::new(), held).assert_clean();
    // The same process's namespace with an interface up and no route: reported.
    let with_dummy_up = "unshare -n sh -c 'ip link add nxv0 type veth peer name nxv1; ip link set nxv0 up; sleep 600' &\n\
                         for i in $(seq 200); do nsenter -t $! -n ip link show nxv0 >/dev/null 2>&1 && break; sleep 0.05; done\n";
    let d = node.diagnose_with(&Opts::new().only(&["DefaultRoute"]), with_dummy_up);
    assert_eq!(d.events.len(), 1, "{d:#?}");
    assert_eq!(d.events[0].kind, "DefaultRoute", "{d:#?}");
    assert!(
        d.events[0]
            .msg
            .starts_with("default route of pod don't exist(pid-"),
        "{d:#?}"
    );
}

// ---- KernelParam: each of its five sysctls ----

/// (sysctl under /proc/sys, bad value, good value, event type, message)
type ParamCase = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const RP_FILTER: ParamCase = (
    "net/ipv4/conf/nxc1/rp_filter",
    "1",
    "0",
    "RPFilterKernelParam",
    "net.ipv4.conf.nxc1.rp_filter:current_value=1,expect_value=0",
);
const SYNCOOKIES: ParamCase = (
    "net/ipv4/tcp_syncookies",
    "0",
    "1",
    "TCPSyncookiesKernelParam",
    "net.ipv4.tcp_syncookies:current_value=0,expect_value=1",
);
const BE_LIBERAL: ParamCase = (
    "net/netfilter/nf_conntrack_tcp_be_liberal",
    "0",
    "1",
    "LiberalKernelParam",
    "net.netfilter.nf_conntrack_tcp_be_liberal:current_value=0,expect_value=1",
);
const SACK: ParamCase = (
    "net/ipv4/tcp_sack",
    "0",
    "1",
    "TCPSackKernelParam",
    "net.ipv4.tcp_sack:current_value=0,expect_value=1",
);
const PROXY_ARP: ParamCase = (
    "net/ipv4/conf/eth0/proxy_arp",
    "1",
    "0",
    "ProxyARPKernelParam",
    "net.ipv4.conf.eth0.proxy_arp:current_value=1,expect_value=0",
);

fn kernel_param_reported((sysctl, bad, _, kind, msg): ParamCase) {
    let node = Node::new(1);
    node.sysctl(sysctl, bad);
    node.diagnose(&Opts::new()).assert_exactly(&[(kind, msg)]);
}

fn kernel_param_fixed((sysctl, bad, good, kind, msg): ParamCase) {
    let node = Node::new(1);
    node.sysctl(sysctl, bad);
    assert!(node.diagnose(&Opts::new()).has(kind, msg));
    node.sysctl(sysctl, good);
    node.diagnose(&Opts::new()).assert_clean();
}

#[test]
fn kernel_param_rp_filter_on_pod_interface_is_reported() {
    kernel_param_reported(RP_FILTER);
}

#[test]
fn kernel_param_rp_filter_fixed_is_not_reported() {
    kernel_param_fixed(RP_FILTER);
}

#[test]
fn kernel_param_tcp_syncookies_off_is_reported() {
    kernel_param_reported(SYNCOOKIES);
}

#[test]
fn kernel_param_tcp_syncookies_fixed_is_not_reported() {
    kernel_param_fixed(SYNCOOKIES);
}

#[test]
fn kernel_param_tcp_be_liberal_off_is_reported() {
    kernel_param_reported(BE_LIBERAL);
}

#[test]
fn kernel_param_tcp_be_liberal_fixed_is_not_reported() {
    kernel_param_fixed(BE_LIBERAL);
}

#[test]
fn kernel_param_tcp_sack_off_is_reported() {
    kernel_param_reported(SACK);
}

#[test]
fn kernel_param_tcp_sack_fixed_is_not_reported() {
    kernel_param_fixed(SACK);
}

#[test]
fn kernel_param_proxy_arp_on_uplink_is_reported() {
    kernel_param_reported(PROXY_ARP);
}

#[test]
fn kernel_param_proxy_arp_fixed_is_not_reported() {
    kernel_param_fixed(PROXY_ARP);
}

// ---- IRQBalance ----

const IRQBALANCE_MSG: &str =
    "system irqbalance service is running, please stop it and use ksc-queue.";

#[test]
fn irqbalance_running_is_reported() {
    let node = Node::new(0);
    let prelude = node.fake_process_prelude("irqbalance", false);
    node.diagnose_with(&Opts::new(), &prelude)
        .assert_exactly(&[("IRQBalance", IRQBALANCE_MSG)]);
}

#[test]
fn irqbalance_stopped_is_not_reported() {
    let node = Node::new(0);
    let prelude = node.fake_process_prelude("irqbalance", true);
    node.diagnose_with(&Opts::new(), &prelude).assert_clean();
}

// ---- KernelLog ----

#[test]
fn kernel_log_matching_line_is_reported_by_diagnose() {
    let node = Node::new(0);
    let line = format!("neighbour: arp_cache: neighbor table overflow! {}", tag());
    kmsg(&line);
    // The default patterns: the log may hold older matching lines, so only this one is looked
    // for; every event is a KernelLog one (the node is otherwise healthy).
    let d = node.diagnose(&Opts::new().unset("KernelLog.patterns"));
    assert!(d.has("KernelLog", &format!("['{line}']")), "{d:#?}");
    assert!(d.events.iter().all(|e| e.kind == "KernelLog"), "{d:#?}");
    assert_eq!(d.code, Some(1));
    d.assert_every_check_ran();
}

#[test]
fn kernel_log_without_matching_line_is_not_reported() {
    let node = Node::new(0);
    let t = tag();
    // A pattern only this test writes, so that older lines cannot match.
    let opts = Opts::new().set(
        "KernelLog.patterns",
        format!("[\"neighbor table overflow! {t}\"]"),
    );
    kmsg(&format!("neighbour: arp_cache: neighbor table fine {t}"));
    node.diagnose(&opts).assert_clean();
    let line = format!("neighbour: arp_cache: neighbor table overflow! {t}");
    kmsg(&line);
    node.diagnose(&opts)
        .assert_exactly(&[("KernelLog", &format!("['{line}']"))]);
}

#[test]
fn kernel_log_is_followed_by_the_running_agent_with_noise_control() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("checks.yaml");
    let opts = Opts::new()
        .unset("KernelLog.patterns")
        .only(&["KernelLog"])
        .set("repeat_interval", "1h");
    std::fs::write(&cfg, opts.yaml()).expect("write config");
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);
    let t = tag();
    let kernel_log = |agent: &Agent| -> Vec<Ev> {
        log_events(&agent.log_text())
            .into_iter()
            .filter(|e| e.kind == "KernelLog")
            .collect()
    };
    let mine = |agent: &Agent, what: &str| -> Vec<Ev> {
        kernel_log(agent)
            .into_iter()
            .filter(|e| e.msg.contains(&format!("{t} {what}'")))
            .collect()
    };
    // The follower starts beside the HTTP server: write until it sees a line.
    let mut i = 0;
    poll(Duration::from_secs(20), || {
        i += 1;
        kmsg(&format!(
            "neighbour: arp_cache: neighbor table overflow! {t} warmup-{i}"
        ));
        std::thread::sleep(Duration::from_millis(200));
        kernel_log(&agent)
            .iter()
            .any(|e| e.msg.contains(&format!("{t} warmup-")))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no warm-up line seen; log:\n{}", agent.log_text()));

    let a = format!("neighbour: arp_cache: neighbor table overflow! {t} A");
    let before = now_ns();
    kmsg(&a);
    let got = poll(Duration::from_secs(10), || {
        let v = mine(&agent, "A");
        (!v.is_empty()).then_some(v)
    })
    .unwrap_or_else(|| panic!("line A not followed; log:\n{}", agent.log_text()));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].msg, format!("['{a}']"));
    assert!(got[0].timestamp >= before && got[0].timestamp <= now_ns());

    // The same line again, within the repeat interval: held back.
    kmsg(&a);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mine(&agent, "A").len(), 1, "{}", agent.log_text());

    // Another matching line: at once.
    let b = format!("neighbour: arp_cache: neighbor table overflow! {t} B");
    kmsg(&b);
    let got = poll(Duration::from_secs(10), || {
        let v = mine(&agent, "B");
        (!v.is_empty()).then_some(v)
    })
    .unwrap_or_else(|| panic!("line B not followed; log:\n{}", agent.log_text()));
    assert_eq!(got[0].msg, format!("['{b}']"));

    // netexporter_events counts what went out.
    let n_before = kernel_log(&agent).len() as f64;
    let s = agent.scrape();
    let n_after = kernel_log(&agent).len() as f64;
    let counted = s
        .find("netexporter_events", &[("type", "KernelLog")])
        .first()
        .map(|x| x.value)
        .unwrap_or_else(|| panic!("no netexporter_events{{type=\"KernelLog\"}}:\n{}", s.text));
    assert!(
        (n_before..=n_after).contains(&counted),
        "counted {counted}, printed {n_before}..{n_after}"
    );
}

// ---- DefaultRoute ----

#[test]
fn default_route_missing_on_node_is_reported() {
    let node = Node::new(1);
    node.ns.run(&["ip", "route", "del", "default"]);
    // Named by its address (the uplink's: the first interface with a global address).
    node.diagnose(&Opts::new()).assert_exactly(&[(
        "DefaultRoute",
        "default route of node don't exist(10.77.0.2)",
    )]);
    // Without any address, by its name.
    node.ns.run(&["ip", "addr", "flush", "dev", "eth0"]);
    node.ns.run(&["ip", "addr", "flush", "dev", "nxc1"]);
    node.diagnose(&Opts::new()).assert_exactly(&[(
        "DefaultRoute",
        "default route of node don't exist(itest-node)",
    )]);
}

#[test]
fn default_route_missing_in_pods_is_reported_as_a_capped_list() {
    let node = Node::new(4);
    for p in &node.pods {
        p.ns.run(&["ip", "route", "del", "default"]);
    }
    node.diagnose(&Opts::new()).assert_exactly(&[(
        "DefaultRoute",
        "default route of pod don't exist(pod-1/-,pod-2/-,pod-3/-,...)",
    )]);
    for p in &node.pods[..3] {
        p.ns.run(&["ip", "route", "add", "default", "via", &p.gateway]);
    }
    node.diagnose(&Opts::new())
        .assert_exactly(&[("DefaultRoute", "default route of pod don't exist(pod-4/-)")]);
}

#[test]
fn default_route_restored_is_not_reported() {
    let node = Node::new(1);
    let pod = &node.pods[0];
    node.ns.run(&["ip", "route", "del", "default"]);
    pod.ns.run(&["ip", "route", "del", "default"]);
    assert_eq!(node.diagnose(&Opts::new()).events.len(), 2);
    node.ns
        .run(&["ip", "route", "add", "default", "via", "10.77.0.1"]);
    pod.ns
        .run(&["ip", "route", "add", "default", "via", &pod.gateway]);
    node.diagnose(&Opts::new()).assert_clean();
}

// ---- MTUAbnormal ----

fn mtu_msg(ifname: &str, mtu: u32) -> String {
    format!("{ifname} mtu is {mtu} which is abnormal, please check.")
}

#[test]
fn mtu_below_floor_on_node_is_reported() {
    let node = Node::new(1);
    node.ns.run(&["ip", "link", "set", "nxc1", "mtu", "1000"]);
    node.diagnose(&Opts::new())
        .assert_exactly(&[("MTUAbnormal", &mtu_msg("nxc1", 1000))]);
    // The floor is configurable.
    node.diagnose(&Opts::new().set("MTUAbnormal.floor", "900"))
        .assert_clean();
}

#[test]
fn mtu_below_floor_in_pod_is_reported() {
    let node = Node::new(2);
    node.pods[1]
        .ns
        .run(&["ip", "link", "set", "eth0", "mtu", "1100"]);
    node.diagnose(&Opts::new())
        .assert_exactly(&[("MTUAbnormal", &mtu_msg("eth0", 1100))]);
}

#[test]
fn pod_mtu_above_the_uplinks_is_reported() {
    let node = Node::new(2);
    node.gw.run(&["ip", "link", "set", "eth0", "mtu", "1450"]);
    node.ns.run(&["ip", "link", "set", "eth0", "mtu", "1450"]);
    let both = [
        ("MTUAbnormal", mtu_msg("eth0", 1500)),
        ("MTUAbnormal", mtu_msg("eth0", 1500)),
    ];
    let both: Vec<(&str, &str)> = both.iter().map(|(k, m)| (*k, m.as_str())).collect();
    // The uplink found by the default route, then named.
    node.diagnose(&Opts::new()).assert_exactly(&both);
    node.diagnose(&Opts::new().set("node.uplink", "eth0"))
        .assert_exactly(&both);
    // Another uplink, as big as the Pods' MTU: fine.
    node.diagnose(&Opts::new().set("node.uplink", "nxc1"))
        .assert_clean();
    // A floor above the uplink's MTU: the uplink too.
    let uplink_low = mtu_msg("eth0", 1450);
    let mut three = both.clone();
    three.push(("MTUAbnormal", &uplink_low));
    node.diagnose(&Opts::new().set("MTUAbnormal.floor", "1460"))
        .assert_exactly(&three);
}

#[test]
fn mtu_restored_is_not_reported() {
    let node = Node::new(1);
    node.ns.run(&["ip", "link", "set", "eth0", "mtu", "1400"]);
    node.pods[0]
        .ns
        .run(&["ip", "link", "set", "eth0", "mtu", "1200"]);
    assert_eq!(node.diagnose(&Opts::new()).events.len(), 1);
    node.ns.run(&["ip", "link", "set", "eth0", "mtu", "1500"]);
    node.pods[0]
        .ns
        .run(&["ip", "link", "set", "eth0", "mtu", "1500"]);
    node.diagnose(&Opts::new()).assert_clean();
}

// ---- IPtablesAbnormal ----

/// Sets the FORWARD policy inside a namespace; back to ACCEPT on drop.
struct ForwardPolicy<'a>(&'a Netns);

impl<'a> ForwardPolicy<'a> {
    fn set(ns: &'a Netns, policy: &str) -> Self {
        ns.run(&["iptables", "-w", "-P", "FORWARD", policy]);
        Self(ns)
    }
}

impl Drop for ForwardPolicy<'_> {
    fn drop(&mut self) {
        let _ = output(&[
            "ip",
            "netns",
            "exec",
            &self.0.name,
            "iptables",
            "-w",
            "-P",
            "FORWARD",
            "ACCEPT",
        ]);
    }
}

#[test]
fn iptables_forward_drop_is_reported() {
    let node = Node::new(0);
    let _p = ForwardPolicy::set(&node.ns, "DROP");
    node.diagnose(&Opts::new())
        .assert_exactly(&[("IPtablesAbnormal", "FORWARD drop default.")]);
}

#[test]
fn iptables_forward_accept_is_not_reported() {
    let node = Node::new(0);
    let p = ForwardPolicy::set(&node.ns, "DROP");
    assert!(
        node.diagnose(&Opts::new())
            .has("IPtablesAbnormal", "FORWARD drop default.")
    );
    drop(p);
    node.diagnose(&Opts::new()).assert_clean();
}

#[test]
fn iptables_missing_is_a_check_error_not_a_problem() {
    let node = Node::new(0);
    let _p = ForwardPolicy::set(&node.ns, "DROP");
    let d = node.diagnose(&Opts::new().set("IPtablesAbnormal.command", "/nonexistent/iptables"));
    assert!(d.events.is_empty(), "{d:#?}");
    assert_eq!(d.code, Some(0), "{d:#?}");
    assert!(
        d.stderr.contains("could not check IPtablesAbnormal")
            && d.stderr.contains("/nonexistent/iptables"),
        "{d:#?}"
    );
}

// ---- KubeProxyAbnormal ----

const KUBE_PROXY_MSG: &str = "kube-proxy looks abnormal, please check it.";

/// An HTTP server answering every request with `status`, on `127.0.0.1:port` inside a
/// namespace; stopped on drop.
struct HealthServer {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthServer {
    fn start(ns: &Netns, port: u16, status: &'static str) -> Self {
        use std::io::{Read, Write};
        let listener = ns
            .within(move || std::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("bind the health endpoint");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let (stop2, served2) = (Arc::clone(&stop), Arc::clone(&served));
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    c,
                    "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                served2.fetch_add(1, Ordering::Relaxed);
            }
        });
        Self {
            stop,
            served,
            thread: Some(thread),
        }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn kube_proxy_not_running_is_reported() {
    let node = Node::new(0);
    let opts = Opts::new().set("KubeProxyAbnormal.standalone", "true");
    node.diagnose(&opts)
        .assert_exactly(&[("KubeProxy", KUBE_PROXY_MSG)]);
    // Running, but its health endpoint (the default one) is not there.
    let prelude = node.fake_process_prelude("kube-proxy", false);
    node.diagnose_with(&opts, &prelude)
        .assert_exactly(&[("KubeProxy", KUBE_PROXY_MSG)]);
}

#[test]
fn kube_proxy_unhealthy_is_reported() {
    let node = Node::new(0);
    let server = HealthServer::start(&node.ns, 10256, "503 Service Unavailable");
    let prelude = node.fake_process_prelude("kube-proxy", false);
    node.diagnose_with(
        &Opts::new().set("KubeProxyAbnormal.standalone", "true"),
        &prelude,
    )
    .assert_exactly(&[("KubeProxy", KUBE_PROXY_MSG)]);
    assert!(server.served.load(Ordering::Relaxed) >= 1);
}

#[test]
fn kube_proxy_running_and_healthy_is_not_reported() {
    let node = Node::new(0);
    let port = 10299;
    let server = HealthServer::start(&node.ns, port, "200 OK");
    let opts = Opts::new().set("KubeProxyAbnormal.standalone", "true").set(
        "KubeProxyAbnormal.healthz",
        format!("http://127.0.0.1:{port}/healthz"),
    );
    let prelude = node.fake_process_prelude("kube-proxy", false);
    node.diagnose_with(&opts, &prelude).assert_clean();
    assert!(server.served.load(Ordering::Relaxed) >= 1);
    // Stopped again: reported.
    let prelude = node.fake_process_prelude("kube-proxy", true);
    node.diagnose_with(&opts, &prelude)
        .assert_exactly(&[("KubeProxy", KUBE_PROXY_MSG)]);
}

// ---- Noise control and self-metrics, on the running agent ----

#[test]
fn running_agent_repeats_persisting_problems_and_reports_changes_at_once() {
    let node = Node::new(1);
    node.sysctl("net/ipv4/conf/nxc1/rp_filter", "1");
    let opts = Opts::new()
        .only(&["KernelParam", "IPtablesAbnormal"])
        // A check that cannot run: its success metric is 0.
        .set("IPtablesAbnormal.command", "/nonexistent/iptables")
        .set("interval", "1s")
        .set("repeat_interval", "3s");
    let agent = NsAgent::start(&node.ns, "", &node.agent_args(&opts));
    let rp = |agent: &NsAgent| -> Vec<Ev> {
        log_events(&agent.log_text())
            .into_iter()
            .filter(|e| e.kind == "RPFilterKernelParam")
            .collect()
    };
    let first = poll(Duration::from_secs(10), || rp(&agent).first().cloned())
        .unwrap_or_else(|| panic!("no event; log:\n{}", agent.log_text()));
    assert_eq!(
        first.msg,
        "net.ipv4.conf.nxc1.rp_filter:current_value=1,expect_value=0"
    );
    // Persisting: again once the repeat interval passed (checks run every second), not before.
    // Judged by the events' own timestamps, not by when this test happened to read the log: a
    // loaded CI machine can start reading late, and the second event is the next one printed.
    let second = poll(Duration::from_secs(8), || rp(&agent).get(1).cloned())
        .unwrap_or_else(|| panic!("not repeated; log:\n{}", agent.log_text()));
    assert_eq!(second.msg, first.msg);
    let gap = Duration::from_nanos((second.timestamp - first.timestamp) as u64);
    assert!(
        gap >= Duration::from_millis(2900) && gap <= Duration::from_millis(5000),
        "repeated after {gap:?}"
    );
    // Changed: at once, not at the next repeat.
    node.sysctl("net/ipv4/conf/nxc1/rp_filter", "2");
    let changed_at = now_ns();
    let changed = poll(Duration::from_secs(3), || {
        rp(&agent)
            .into_iter()
            .find(|e| e.msg.contains("current_value=2"))
    })
    .unwrap_or_else(|| panic!("change not reported; log:\n{}", agent.log_text()));
    assert_eq!(
        changed.msg,
        "net.ipv4.conf.nxc1.rp_filter:current_value=2,expect_value=0"
    );
    let after = Duration::from_nanos((changed.timestamp - changed_at) as u64);
    assert!(
        after < Duration::from_millis(2500),
        "change reported after {after:?}"
    );

    // Self-metrics: emitted events by type; whether each check could run.
    let printed = |agent: &NsAgent| rp(agent).len() as f64;
    let n_before = printed(&agent);
    let s = agent.scrape(&node.ns);
    let n_after = printed(&agent);
    let one = |name: &str, label: (&str, &str)| -> f64 {
        let found = s.find(name, &[label]);
        assert_eq!(found.len(), 1, "{name} {label:?}:\n{}", s.text);
        found[0].value
    };
    let counted = one("netexporter_events", ("type", "RPFilterKernelParam"));
    assert!(
        (n_before..=n_after).contains(&counted),
        "counted {counted}, printed {n_before}..{n_after}"
    );
    assert_eq!(
        one("netexporter_check_success", ("check", "KernelParam")),
        1.0
    );
    assert_eq!(
        one("netexporter_check_problems", ("check", "KernelParam")),
        1.0
    );
    assert_eq!(
        one("netexporter_check_success", ("check", "IPtablesAbnormal")),
        0.0
    );
    assert!(
        s.find("netexporter_check_success", &[("check", "DefaultRoute")])
            .is_empty(),
        "a disabled check has no series"
    );
}
