//! The checks that need Kubernetes (`k8sconfig`: NetworkPolicy, SVCTrafficPolicy,
//! IPMasqAgentConf, CIDRConflict; PodRoute; IPVSRulesAbnormal), each against the real
//! condition: API objects in the fake API server (`fake_apiserver.rs`), read by the agent's
//! real `kube` client, and the node's own state (routes, a `docker0` bridge).
//!
//! A test builds a node: a network namespace with an uplink `eth0` to a gateway namespace and a
//! default route through it, and the fake API server listening on 127.0.0.1 *inside* it (a
//! namespace cannot reach the host's loopback), which holds the Node `itest-node` with Pod CIDR
//! 10.211.1.0/24. Pods, where a test needs them, are built as `kubernetes.rs` builds them: a
//! namespace behind a veth (`nxc<i>` on the node, 10.211.1.(4i+1)/30 ↔ 10.211.1.(4i+2)/30), a
//! process in it, in the cgroup the kubelet (systemd driver, cgroup v2) would give it. The agent
//! runs `diagnose --output json` inside the node in Kubernetes mode (`--mode=kubernetes
//! --kubeconfig=<file>`) with only the checks under test on: the events printed are exactly
//! the condition's and the exit code 1; with the condition removed, nothing and 0. Standalone,
//! the same checks find nothing and count as successful runs.
//!
//! Every namespace, veth, bridge, process, cgroup, file and server is removed by a guard.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_apiserver::{self, FakeApiServer, Kind};
use crate::harness::*;
use crate::pods::{Driver, PodCgroup, new_uid};

const NODE: &str = "itest-node";
const POD_CIDR: &str = "10.211.1.0/24";
/// The node's address on its uplink.
const NODE_IP: &str = "10.211.255.2";
const GATEWAY: &str = "10.211.255.1";

/// The checks of this file, by configuration name.
const K8S_CHECKS: &[&str] = &[
    "NetworkPolicy",
    "SVCTrafficPolicy",
    "IPMasqAgentConf",
    "CIDRConflict",
    "PodRoute",
    "IPVSRulesAbnormal",
];

const NETWORK_POLICY_MSG: &str = "network policy is configured,please use it carefully.";
const MASQ_MSG: &str =
    "NonMasqueradeCIDRs does not contain vpc cidr, it will reduce pod network performance.";

// ---- Pods: namespaces, veths, processes in kubelet cgroups ----

/// A Pod of the node. Fields drop in order: the process, its cgroup, the veth, the namespace.
struct Pod {
    namespace: String,
    name: String,
    uid: String,
    /// Its end of the veth.
    ip: String,
    /// The node's end of the veth (`nxc<i>`) and its /30.
    node_if: String,
    subnet: String,
    proc: Proc,
    _cgroup: PodCgroup,
    _veth: NsVeth,
    _ns: Netns,
}

impl Pod {
    fn json(&self) -> Value {
        fake_apiserver::pod(
            &self.namespace,
            &self.name,
            &self.uid,
            NODE,
            false,
            Some(&self.ip),
        )
    }
}

// ---- The node ----

/// The node the agent runs in. Fields drop in order: the server (inside the node's
/// namespace), the Pods, the uplink, the namespaces, the files.
struct K8sNode {
    server: FakeApiServer,
    pods: Vec<Pod>,
    _uplink: NsVeth,
    _gw: Netns,
    ns: Netns,
    /// Config files, the kubeconfig, the empty `--path.netns`.
    work: tempfile::TempDir,
    kubeconfig: PathBuf,
}

/// What one `diagnose` printed.
#[derive(Debug)]
struct Diagnosis {
    code: Option<i32>,
    /// (type, msg), sorted.
    events: Vec<(String, String)>,
    #[expect(dead_code, reason = "shown in failure messages")]
    stdout: String,
    stderr: String,
}

impl Diagnosis {
    /// Exactly these events, the exit code that goes with them, and every check could run.
    fn assert_exactly(&self, want: &[(&str, &str)]) {
        let mut want: Vec<(String, String)> = want
            .iter()
            .map(|(k, m)| (k.to_string(), m.to_string()))
            .collect();
        want.sort();
        assert_eq!(self.events, want, "events; {self:#?}");
        let code = if want.is_empty() { 0 } else { 1 };
        assert_eq!(self.code, Some(code), "exit code; {self:#?}");
        assert!(
            !self.stderr.contains("could not check"),
            "a check failed: {self:#?}"
        );
    }

    fn assert_clean(&self) {
        self.assert_exactly(&[]);
    }
}

/// Checks the exact shape of an event line, `{"timestamp":<ns>,"type":..,"msg":..}`, and
/// returns (type, msg).
fn parse_event(line: &str) -> (String, String) {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
    let ts = v["timestamp"]
        .as_u64()
        .unwrap_or_else(|| panic!("timestamp: {line}"));
    let kind = v["type"].as_str().unwrap_or_else(|| panic!("type: {line}"));
    let msg = v["msg"].as_str().unwrap_or_else(|| panic!("msg: {line}"));
    let exact = format!(
        "{{\"timestamp\":{ts},\"type\":{},\"msg\":{}}}",
        Value::from(kind),
        Value::from(msg)
    );
    assert_eq!(line, exact, "key order, spacing or extra keys");
    (kind.to_string(), msg.to_string())
}

impl K8sNode {
    fn new() -> Self {
        require_root();
        let ns = Netns::new("nxn");
        let gw = Netns::new("nxg");
        let uplink = NsVeth::new(
            &ns,
            "eth0",
            &format!("{NODE_IP}/24"),
            &gw,
            "eth0",
            &format!("{GATEWAY}/24"),
        );
        ns.run(&["ip", "route", "add", "default", "via", GATEWAY]);
        let server = FakeApiServer::start_in(&ns.name);
        server.apply(
            Kind::Node,
            fake_apiserver::node(NODE, &new_uid(), &[POD_CIDR]),
        );
        let work = tempfile::tempdir().expect("work dir");
        let kubeconfig = server.write_kubeconfig(work.path());
        std::fs::create_dir(work.path().join("netns")).expect("netns dir");
        Self {
            server,
            pods: Vec::new(),
            _uplink: uplink,
            _gw: gw,
            ns,
            work,
            kubeconfig,
        }
    }

    /// A Pod `<namespace>/<name>` of this node, running, known to the API server.
    fn add_pod(&mut self, namespace: &str, name: &str) -> &Pod {
        let i = self.pods.len() + 1;
        assert!(i < 60, "too many Pods for the /24");
        let ns = Netns::new("nxq");
        let node_if = format!("nxc{i}");
        let (node_ip, ip) = (
            format!("10.211.1.{}", 4 * i + 1),
            format!("10.211.1.{}", 4 * i + 2),
        );
        let veth = NsVeth::new(
            &self.ns,
            &node_if,
            &format!("{node_ip}/30"),
            &ns,
            "eth0",
            &format!("{ip}/30"),
        );
        ns.run(&["ip", "route", "add", "default", "via", &node_ip]);
        let proc = ns.spawn(&["sleep", "600"]);
        let pid = proc.child.id();
        let inode = ns.inode();
        let entered = poll(Duration::from_secs(10), || {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .ok()
                .filter(|m| m.ino() == inode)
        });
        assert!(entered.is_some(), "process {pid} never entered {}", ns.name);
        let uid = new_uid();
        let (mount, rel) = Driver::SystemdV2.cgroup(&uid);
        let cgroup = PodCgroup::enter(mount, &rel, pid);
        let pod = Pod {
            namespace: namespace.into(),
            name: name.into(),
            uid,
            ip,
            node_if,
            subnet: format!("10.211.1.{}/30", 4 * i),
            proc,
            _cgroup: cgroup,
            _veth: veth,
            _ns: ns,
        };
        self.server.apply(Kind::Pod, pod.json());
        self.pods.push(pod);
        self.pods.last().expect("pod")
    }

    /// A config file with only `only` of the checks on, and `extra` (indented lines under
    /// `checks:`).
    fn config(&self, only: &[&str], extra: &str) -> PathBuf {
        let path = self.work.path().join(format!("{}.yaml", unique("cfg")));
        std::fs::write(&path, format!("checks:\n{}{extra}", checks_off_but(only)))
            .expect("write config");
        path
    }

    /// `diagnose --output json` inside the node, in Kubernetes mode (`kubernetes: true`) or
    /// standalone, with only `only` of the checks on.
    fn diagnose_mode(&self, kubernetes: bool, only: &[&str], extra: &str) -> Diagnosis {
        let bin = env!("CARGO_BIN_EXE_net-exporter");
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            self.ns.name.clone(),
            bin.into(),
            format!("--node-name={NODE}"),
            format!("--config.file={}", self.config(only, extra).display()),
        ];
        if kubernetes {
            args.push("--mode=kubernetes".into());
            args.push(format!("--kubeconfig={}", self.kubeconfig.display()));
        } else {
            args.push("--mode=standalone".into());
            args.push(format!(
                "--path.netns={}",
                self.work.path().join("netns").display()
            ));
        }
        args.extend(["diagnose".into(), "--output".into(), "json".into()]);
        let out = Command::new("ip")
            .args(&args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("run diagnose");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut events: Vec<(String, String)> = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(parse_event)
            .collect();
        events.sort();
        Diagnosis {
            code: out.status.code(),
            events,
            stdout,
            stderr,
        }
    }

    fn diagnose(&self, only: &[&str], extra: &str) -> Diagnosis {
        self.diagnose_mode(true, only, extra)
    }

    /// Request lines the server got whose path starts with `prefix`.
    fn requests(&self, prefix: &str) -> Vec<String> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.starts_with(prefix))
            .collect()
    }
}

// ---- NetworkPolicy ----

#[test]
fn network_policy_present_is_reported() {
    let node = K8sNode::new();
    node.server.apply(
        Kind::NetworkPolicy,
        fake_apiserver::network_policy("shop", "same-namespace-only"),
    );
    node.diagnose(&["NetworkPolicy"], "")
        .assert_exactly(&[("NetworkPolicy", NETWORK_POLICY_MSG)]);
    // Watched cluster-wide, their metadata only; more policies are still one event.
    let asked: Vec<_> = node
        .server
        .log()
        .into_iter()
        .filter(|r| {
            r.line
                .starts_with("GET /apis/networking.k8s.io/v1/networkpolicies?")
        })
        .collect();
    assert!(
        !asked.is_empty() && asked.iter().all(|r| r.metadata_only),
        "{asked:#?}"
    );
    for name in ["a", "b"] {
        node.server.apply(
            Kind::NetworkPolicy,
            fake_apiserver::network_policy("kube-system", name),
        );
    }
    node.diagnose(&["NetworkPolicy"], "")
        .assert_exactly(&[("NetworkPolicy", NETWORK_POLICY_MSG)]);
}

#[test]
fn network_policy_removed_is_not_reported() {
    let node = K8sNode::new();
    node.diagnose(&["NetworkPolicy"], "").assert_clean();
    for (ns, name) in [("shop", "p1"), ("web", "p2")] {
        node.server.apply(
            Kind::NetworkPolicy,
            fake_apiserver::network_policy(ns, name),
        );
    }
    node.diagnose(&["NetworkPolicy"], "")
        .assert_exactly(&[("NetworkPolicy", NETWORK_POLICY_MSG)]);
    assert!(node.server.delete(Kind::NetworkPolicy, "shop", "p1"));
    assert!(node.server.delete(Kind::NetworkPolicy, "web", "p2"));
    node.diagnose(&["NetworkPolicy"], "").assert_clean();
}

// ---- LocalTrafficPolicy (check SVCTrafficPolicy) ----

fn svc(
    ns: &str,
    name: &str,
    type_: &str,
    ip: &str,
    external: Option<&str>,
    internal: &str,
) -> Value {
    let mut s = fake_apiserver::service(ns, name, type_, Some(ip), &[("http", 80, "TCP", 8080)]);
    if let Some(e) = external {
        s["spec"]["externalTrafficPolicy"] = json!(e);
    }
    s["spec"]["internalTrafficPolicy"] = json!(internal);
    s
}

#[test]
fn local_traffic_policy_is_reported() {
    let node = K8sNode::new();
    let api = &node.server;
    api.apply(
        Kind::Service,
        svc(
            "shop",
            "web",
            "LoadBalancer",
            "10.211.64.10",
            Some("Local"),
            "Cluster",
        ),
    );
    api.apply(
        Kind::Service,
        svc(
            "kube-system",
            "dns",
            "ClusterIP",
            "10.211.64.11",
            None,
            "Local",
        ),
    );
    api.apply(
        Kind::Service,
        svc(
            "default",
            "plain",
            "NodePort",
            "10.211.64.12",
            Some("Cluster"),
            "Cluster",
        ),
    );
    api.apply(
        Kind::Service,
        fake_apiserver::service(
            "default",
            "headless",
            "ClusterIP",
            None,
            &[("", 80, "TCP", 80)],
        ),
    );
    let only = ["SVCTrafficPolicy"];
    node.diagnose(&only, "").assert_exactly(&[(
        "LocalTrafficPolicy",
        "externalTrafficPolicy of svc(web/shop) is Local, internalTrafficPolicy of svc (dns/kube-system) is Local, please check it.",
    )]);
    // Only external ones, more than three: sorted, capped.
    api.apply(
        Kind::Service,
        svc(
            "kube-system",
            "dns",
            "ClusterIP",
            "10.211.64.11",
            None,
            "Cluster",
        ),
    );
    for (i, ns) in ["a", "b", "c"].iter().enumerate() {
        api.apply(
            Kind::Service,
            svc(
                ns,
                "lb",
                "LoadBalancer",
                &format!("10.211.64.{}", 20 + i),
                Some("Local"),
                "Cluster",
            ),
        );
    }
    node.diagnose(&only, "").assert_exactly(&[(
        "LocalTrafficPolicy",
        "externalTrafficPolicy of svc(lb/a,lb/b,lb/c,...) is Local, please check it.",
    )]);
}

#[test]
fn local_traffic_policy_back_to_cluster_is_not_reported() {
    let node = K8sNode::new();
    let api = &node.server;
    api.apply(
        Kind::Service,
        svc(
            "shop",
            "web",
            "NodePort",
            "10.211.64.10",
            Some("Local"),
            "Local",
        ),
    );
    let only = ["SVCTrafficPolicy"];
    node.diagnose(&only, "").assert_exactly(&[(
        "LocalTrafficPolicy",
        "externalTrafficPolicy of svc(web/shop) is Local, internalTrafficPolicy of svc (web/shop) is Local, please check it.",
    )]);
    api.apply(
        Kind::Service,
        svc(
            "shop",
            "web",
            "NodePort",
            "10.211.64.10",
            Some("Cluster"),
            "Cluster",
        ),
    );
    node.diagnose(&only, "").assert_clean();
    assert!(!node.requests("GET /api/v1/services").is_empty());
}

// ---- IPMasqAgentConf ----

/// The node network (VPC): the uplink's 10.211.255.0/24 is in it.
const VPC: &str = "10.211.240.0/20";

fn masq(config: Option<&str>) -> Value {
    let data: Vec<(&str, &str)> = config.map(|c| ("config", c)).into_iter().collect();
    fake_apiserver::config_map("kube-system", "ip-masq-agent", &data)
}

#[test]
fn ip_masq_agent_without_the_vpc_cidr_is_reported() {
    let node = K8sNode::new();
    let only = ["IPMasqAgentConf"];
    let vpc = format!("  node:\n    vpc_cidr: {VPC}\n");
    // The ip-masq-agent's YAML, as its ConfigMap holds it.
    node.server.apply(
        Kind::ConfigMap,
        masq(Some("nonMasqueradeCIDRs:\n  - 10.211.0.0/24\n  - 10.211.1.0/24\nmasqLinkLocal: false\nresyncInterval: 60s\n")),
    );
    node.diagnose(&only, &vpc)
        .assert_exactly(&[("IPMasqAgentConf", MASQ_MSG)]);
    // The same in JSON; and an explicitly empty list.
    node.server.apply(
        Kind::ConfigMap,
        masq(Some(
            r#"{"nonMasqueradeCIDRs":["10.211.0.0/24"],"masqLinkLocal":true}"#,
        )),
    );
    node.diagnose(&only, &vpc)
        .assert_exactly(&[("IPMasqAgentConf", MASQ_MSG)]);
    node.server
        .apply(Kind::ConfigMap, masq(Some("nonMasqueradeCIDRs: []\n")));
    node.diagnose(&only, &vpc)
        .assert_exactly(&[("IPMasqAgentConf", MASQ_MSG)]);
    // One watch of that one ConfigMap per run (a fresh process each time).
    let asked = node.requests("GET /api/v1/namespaces/kube-system/configmaps?");
    assert_eq!(asked.len(), 3, "{:#?}", node.server.requests());
    assert!(
        asked
            .iter()
            .all(|r| r.contains("fieldSelector=metadata.name%3Dip-masq-agent")),
        "{asked:#?}"
    );
}

#[test]
fn ip_masq_agent_exempting_the_vpc_or_absent_is_not_reported() {
    let node = K8sNode::new();
    let only = ["IPMasqAgentConf"];
    let vpc = format!("  node:\n    vpc_cidr: {VPC}\n");
    node.server.apply(
        Kind::ConfigMap,
        masq(Some("nonMasqueradeCIDRs:\n  - 10.211.0.0/24\n")),
    );
    node.diagnose(&only, &vpc)
        .assert_exactly(&[("IPMasqAgentConf", MASQ_MSG)]);
    // Fixed: the VPC inside one of the CIDRs...
    node.server.apply(
        Kind::ConfigMap,
        masq(Some(
            "nonMasqueradeCIDRs:\n  - 10.211.0.0/24\n  - 10.211.0.0/16\n",
        )),
    );
    node.diagnose(&only, &vpc).assert_clean();
    // ...or covered by two of them together.
    node.server.apply(
        Kind::ConfigMap,
        masq(Some(
            "nonMasqueradeCIDRs:\n  - 10.211.240.0/21\n  - 10.211.248.0/21\n",
        )),
    );
    node.diagnose(&only, &vpc).assert_clean();
    // Without the list, or without a config at all, the ip-masq-agent uses its defaults
    // (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16), which hold the VPC.
    node.server
        .apply(Kind::ConfigMap, masq(Some("masqLinkLocal: true\n")));
    node.diagnose(&only, &vpc).assert_clean();
    node.server.apply(Kind::ConfigMap, masq(None));
    node.diagnose(&only, &vpc).assert_clean();
    // No ip-masq-agent ConfigMap (the server answers 404): nothing to check.
    assert!(
        node.server
            .delete(Kind::ConfigMap, "kube-system", "ip-masq-agent")
    );
    node.diagnose(&only, &vpc).assert_clean();
    // Without checks.vpc_cidr the check does not look.
    node.server.apply(
        Kind::ConfigMap,
        masq(Some("nonMasqueradeCIDRs:\n  - 10.211.0.0/24\n")),
    );
    let before = node
        .requests("GET /api/v1/namespaces/kube-system/configmaps")
        .len();
    node.diagnose(&only, "").assert_clean();
    assert_eq!(
        node.requests("GET /api/v1/namespaces/kube-system/configmaps")
            .len(),
        before
    );
}

// ---- CIDRConflict ----

/// VPC, Service and Pod CIDRs apart from each other.
fn cidr_options() -> String {
    format!("  node:\n    vpc_cidr: {VPC}\n    service_cidr: 10.211.64.0/18\n")
}

/// A `docker0` bridge in the node with an address; deleted on drop.
struct Docker0<'a>(&'a Netns);

impl<'a> Docker0<'a> {
    fn new(ns: &'a Netns, addr: &str) -> Self {
        ns.run(&["ip", "link", "add", "docker0", "type", "bridge"]);
        let d = Self(ns);
        ns.run(&["ip", "addr", "add", addr, "dev", "docker0"]);
        ns.run(&["ip", "link", "set", "docker0", "up"]);
        d
    }
}

impl Drop for Docker0<'_> {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.0.name, "link", "del", "docker0"])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn cidr_conflict_of_vpc_service_and_pod_cidrs_is_reported() {
    let node = K8sNode::new();
    let only = ["CIDRConflict"];
    node.diagnose(&only, &cidr_options()).assert_clean();
    // The Pod CIDR inside the VPC.
    node.diagnose(
        &only,
        "  node:\n    vpc_cidr: 10.211.0.0/16\n    service_cidr: 10.211.64.0/18\n",
    )
    .assert_exactly(&[(
        "CIDRConflict",
        "cidr conflicts:vpc cidr 10.211.0.0/16, svc cidr 10.211.64.0/18, pod cidr 10.211.1.0/24.",
    )]);
    // The Node gets a second Pod CIDR inside the Service CIDR.
    node.server.apply(
        Kind::Node,
        fake_apiserver::node(NODE, &new_uid(), &[POD_CIDR, "10.211.96.0/24"]),
    );
    node.diagnose(&only, &cidr_options()).assert_exactly(&[(
        "CIDRConflict",
        "cidr conflicts:vpc cidr 10.211.240.0/20, svc cidr 10.211.64.0/18, pod cidr 10.211.1.0/24, pod cidr 10.211.96.0/24.",
    )]);
    // Without the options, only the Pod CIDRs are known: no conflict between them.
    node.diagnose(&only, "").assert_clean();
}

#[test]
fn cidr_conflict_with_docker0_is_reported() {
    let node = K8sNode::new();
    let only = ["CIDRConflict"];
    let _docker = Docker0::new(&node.ns, "10.211.66.1/24");
    node.diagnose(&only, &cidr_options()).assert_exactly(&[(
        "CIDRConflict",
        "cidr conflicts:vpc cidr 10.211.240.0/20, svc cidr 10.211.64.0/18, pod cidr 10.211.1.0/24, docker cidr 10.211.66.0/24.",
    )]);
    // docker0 against the Pod CIDR alone (no options).
    drop(_docker);
    let _docker = Docker0::new(&node.ns, "10.211.1.129/25");
    node.diagnose(&only, "").assert_exactly(&[(
        "CIDRConflict",
        "cidr conflicts:pod cidr 10.211.1.0/24, docker cidr 10.211.1.128/25.",
    )]);
}

#[test]
fn cidr_conflict_resolved_is_not_reported() {
    let node = K8sNode::new();
    let only = ["CIDRConflict"];
    let docker = Docker0::new(&node.ns, "10.211.66.1/24");
    node.server.apply(
        Kind::Node,
        fake_apiserver::node(NODE, &new_uid(), &["10.211.250.0/24"]),
    );
    assert_eq!(node.diagnose(&only, &cidr_options()).events.len(), 1);
    // docker0 re-addressed out of the way, the Node's Pod CIDR out of the VPC.
    drop(docker);
    let _docker = Docker0::new(&node.ns, "10.211.200.1/24");
    node.server.apply(
        Kind::Node,
        fake_apiserver::node(NODE, &new_uid(), &[POD_CIDR]),
    );
    node.diagnose(&only, &cidr_options()).assert_clean();
}

// ---- PodRoute ----

/// `ip route get <ip>` inside the node: the route the node would use towards a Pod.
fn route_get(node: &K8sNode, ip: &str) -> String {
    node.ns.run(&["ip", "route", "get", ip])
}

/// API-only Pods that must not count: hostNetwork, Pending, finished, another node's.
fn apply_pods_without_routes_of_their_own(node: &K8sNode) {
    let api = &node.server;
    api.apply(
        Kind::Pod,
        fake_apiserver::pod(
            "kube-system",
            "proxy-h",
            &new_uid(),
            NODE,
            true,
            Some(NODE_IP),
        ),
    );
    api.apply(
        Kind::Pod,
        fake_apiserver::pod("shop", "pending", &new_uid(), NODE, false, None),
    );
    let mut done = fake_apiserver::pod(
        "shop",
        "job-done",
        &new_uid(),
        NODE,
        false,
        Some("10.211.1.250"),
    );
    done["status"]["phase"] = json!("Succeeded");
    api.apply(Kind::Pod, done);
    api.apply(
        Kind::Pod,
        fake_apiserver::pod(
            "shop",
            "elsewhere",
            &new_uid(),
            "other-node",
            false,
            Some("10.211.9.9"),
        ),
    );
}

#[test]
fn pod_route_missing_is_reported() {
    let mut node = K8sNode::new();
    for (ns, name) in [
        ("shop", "web-a"),
        ("kube-system", "dns-b"),
        ("shop", "web-c"),
        ("shop", "web-d"),
    ] {
        node.add_pod(ns, name);
    }
    apply_pods_without_routes_of_their_own(&node);
    let only = ["PodRoute"];
    node.diagnose(&only, "").assert_clean();

    // web-a's connected route goes: the node would send its replies out the uplink.
    let a = &node.pods[0];
    assert!(route_get(&node, &a.ip).contains(&format!("dev {}", a.node_if)));
    node.ns
        .run(&["ip", "route", "del", &a.subnet, "dev", &a.node_if]);
    assert!(
        route_get(&node, &a.ip).contains(&format!("via {GATEWAY} dev eth0")),
        "{}",
        route_get(&node, &a.ip)
    );
    node.diagnose(&only, "")
        .assert_exactly(&[("PodRoute", "lack routes of pods(web-a/shop).")]);

    // All four: sorted, three then `...`.
    for p in &node.pods[1..] {
        node.ns
            .run(&["ip", "route", "del", &p.subnet, "dev", &p.node_if]);
    }
    node.diagnose(&only, "").assert_exactly(&[(
        "PodRoute",
        "lack routes of pods(dns-b/kube-system,web-a/shop,web-c/shop,...).",
    )]);
    // A blackhole route over the Pod CIDR (as Calico's IPAM blocks) routes nothing to them.
    node.ns.run(&["ip", "route", "add", "blackhole", POD_CIDR]);
    node.diagnose(&only, "").assert_exactly(&[(
        "PodRoute",
        "lack routes of pods(dns-b/kube-system,web-a/shop,web-c/shop,...).",
    )]);
    assert!(
        node.pods
            .iter()
            .all(|p| Path::new(&format!("/proc/{}", p.proc.child.id())).exists())
    );
}

#[test]
fn pod_route_restored_is_not_reported() {
    let mut node = K8sNode::new();
    node.add_pod("shop", "web-a");
    node.add_pod("shop", "web-b");
    apply_pods_without_routes_of_their_own(&node);
    let only = ["PodRoute"];
    for p in &node.pods {
        node.ns
            .run(&["ip", "route", "del", &p.subnet, "dev", &p.node_if]);
    }
    node.diagnose(&only, "")
        .assert_exactly(&[("PodRoute", "lack routes of pods(web-a/shop,web-b/shop).")]);
    // A per-Pod /32 to its veth (as Calico and most CNIs route Pods)...
    let a = &node.pods[0];
    node.ns.run(&[
        "ip",
        "route",
        "add",
        &format!("{}/32", a.ip),
        "dev",
        &a.node_if,
    ]);
    assert!(route_get(&node, &a.ip).contains(&format!("dev {}", a.node_if)));
    node.diagnose(&only, "")
        .assert_exactly(&[("PodRoute", "lack routes of pods(web-b/shop).")]);
    // ...or a route for the node's Pod CIDR (as bridge CNIs route them).
    let b = &node.pods[1];
    node.ns
        .run(&["ip", "route", "add", POD_CIDR, "dev", &b.node_if]);
    node.diagnose(&only, "").assert_clean();
    // A Pod that is gone from the API is not looked for.
    node.ns
        .run(&["ip", "route", "del", POD_CIDR, "dev", &b.node_if]);
    assert!(node.server.delete(Kind::Pod, "shop", "web-b"));
    node.diagnose(&only, "").assert_clean();
}

// ---- IPVSRulesAbnormal ----

#[test]
fn ipvs_without_the_kernel_family_is_not_applicable() {
    let node = K8sNode::new();
    assert!(
        !Path::new("/proc/net/ip_vs").exists(),
        "this kernel has IPVS: the test expects none"
    );
    let api = &node.server;
    api.apply(
        Kind::Service,
        fake_apiserver::service(
            "shop",
            "web",
            "ClusterIP",
            Some("10.211.64.10"),
            &[("", 80, "TCP", 8080)],
        ),
    );
    api.apply(
        Kind::EndpointSlice,
        fake_apiserver::endpoint_slice(
            "shop",
            "web",
            "x7k2p",
            &[("10.211.1.6", NODE, true)],
            &[("", 8080, "TCP")],
        ),
    );
    // Even with kube-proxy's interface there, no IPVS in the kernel: nothing, no error.
    // (kube-proxy makes a dummy interface; this kernel has no dummy driver: the name is what
    // counts.)
    node.ns
        .run(&["ip", "link", "add", "kube-ipvs0", "type", "bridge"]);
    node.ns
        .run(&["ip", "addr", "add", "10.211.64.10/32", "dev", "kube-ipvs0"]);
    let only = ["IPVSRulesAbnormal"];
    // Not IPVS mode here: the check does not apply, and says why.
    let d = node.diagnose(&only, "");
    d.assert_clean();
    assert!(
        d.stderr.contains("IPVSRulesAbnormal does not apply here") && d.stderr.contains("IPVS"),
        "{d:#?}"
    );
    node.diagnose(&only, "  IPVSRulesAbnormal:\n    enabled: false\n")
        .assert_clean();
    assert!(
        node.requests("GET /apis/discovery.k8s.io/v1/endpointslices")
            .is_empty(),
        "the API was asked although IPVS is absent: {:#?}",
        node.server.requests()
    );
    // Required: the check cannot look, which is an error, not a problem.
    let d = node.diagnose(&only, "  IPVSRulesAbnormal:\n    require_ipvs: true\n");
    assert!(d.events.is_empty(), "{d:#?}");
    assert_eq!(d.code, Some(0), "{d:#?}");
    assert!(
        d.stderr.contains("could not check IPVSRulesAbnormal")
            && d.stderr.contains("no \"IPVS\" generic netlink family"),
        "{d:#?}"
    );
}

// ---- Standalone and API failures ----

/// Standalone, the Kubernetes checks do not apply: `diagnose` finds nothing and says why, and
/// the running agent shows each as unavailable (with its reason), never runs it, never asks
/// the API server.
#[test]
fn k8s_checks_do_not_apply_in_standalone_mode() {
    let mut node = K8sNode::new();
    node.add_pod("shop", "web-a");
    // Conditions that Kubernetes mode reports: a route-less Pod, docker0 in the Service CIDR.
    let a = &node.pods[0];
    node.ns
        .run(&["ip", "route", "del", &a.subnet, "dev", &a.node_if]);
    let _docker = Docker0::new(&node.ns, "10.211.66.1/24");
    node.server.apply(
        Kind::NetworkPolicy,
        fake_apiserver::network_policy("shop", "p"),
    );
    let extra = format!(
        "{}  IPVSRulesAbnormal:\n    require_ipvs: true\n  interval: 1s\n",
        cidr_options()
    );
    node.diagnose(
        K8S_CHECKS,
        &format!(
            "{}  IPVSRulesAbnormal:\n    enabled: false\n",
            cidr_options()
        ),
    )
    .assert_exactly(&[
        ("NetworkPolicy", NETWORK_POLICY_MSG),
        ("PodRoute", "lack routes of pods(web-a/shop)."),
        (
            "CIDRConflict",
            "cidr conflicts:vpc cidr 10.211.240.0/20, svc cidr 10.211.64.0/18, pod cidr 10.211.1.0/24, docker cidr 10.211.66.0/24.",
        ),
    ]);

    // diagnose, standalone: nothing found, nothing failed, each says why it does not apply.
    let requests = node.server.requests().len();
    let d = node.diagnose_mode(false, K8S_CHECKS, &extra);
    d.assert_clean();
    for c in K8S_CHECKS {
        assert!(
            d.stderr
                .contains(&format!("{c} does not apply here: standalone")),
            "{c}: {d:#?}"
        );
    }

    // The running agent, standalone: each check unavailable with its reason, none run.
    let config = node.config(K8S_CHECKS, &extra);
    let args = vec![
        "--mode=standalone".to_string(),
        format!("--path.netns={}", node.work.path().join("netns").display()),
        format!("--config.file={}", config.display()),
    ];
    let agent = NsAgent::start(&node.ns, "", &args);
    let s = poll(Duration::from_secs(20), || {
        let s = agent.scrape(&node.ns);
        K8S_CHECKS
            .iter()
            .all(|c| {
                !s.find("netexporter_check_available", &[("check", c)])
                    .is_empty()
            })
            .then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "no check_available for every check; log:\n{}",
            agent.log_text()
        )
    });
    for c in K8S_CHECKS {
        let found = s.find("netexporter_check_available", &[("check", c)]);
        assert_eq!(found.len(), 1, "{c}:\n{}", s.text);
        assert_eq!(found[0].value, 0.0, "{c}:\n{}", s.text);
        assert!(
            found[0]
                .labels
                .get("reason")
                .is_some_and(|r| r.starts_with("standalone")),
            "{c}: {:?}",
            found[0].labels
        );
        assert!(
            s.find("netexporter_check_success", &[("check", c)])
                .is_empty(),
            "{c} ran standalone:\n{}",
            s.text
        );
    }
    assert!(
        !agent.log_text().contains("{\"timestamp\""),
        "events in standalone mode:\n{}",
        agent.log_text()
    );
    assert_eq!(
        node.server.requests().len(),
        requests,
        "a standalone agent asked the API server"
    );
}

#[test]
fn k8s_checks_report_api_failures_as_check_errors() {
    let node = K8sNode::new();
    node.server.apply(
        Kind::NetworkPolicy,
        fake_apiserver::network_policy("shop", "p"),
    );
    node.server.fail_with(Some(500));
    let d = node.diagnose(
        &["NetworkPolicy", "SVCTrafficPolicy", "IPMasqAgentConf"],
        &format!("  node:\n    vpc_cidr: {VPC}\n"),
    );
    assert!(d.events.is_empty(), "{d:#?}");
    assert_eq!(d.code, Some(0), "{d:#?}");
    for c in ["NetworkPolicy", "SVCTrafficPolicy", "IPMasqAgentConf"] {
        assert!(
            d.stderr.contains(&format!("could not check {c}")),
            "{c}: {d:#?}"
        );
    }
    node.server.fail_with(None);
    node.diagnose(&["NetworkPolicy"], "")
        .assert_exactly(&[("NetworkPolicy", NETWORK_POLICY_MSG)]);
}
