//! Kubernetes mode: the real agent and its real `kube` client against a fake API server
//! (`fake_apiserver.rs`) that lists and watches Pods and Nodes as the real one does, and real
//! Pods on this machine: each a network namespace with a veth to the host, a process in it, and
//! that process in a cgroup named the way the kubelet names it (systemd or cgroupfs driver,
//! cgroup v2, and v1 where a v1 hierarchy is mounted). Pod-scope values are compared with what
//! the kernel says inside the Pod's namespace.
//!
//! Every namespace, veth, process, cgroup, temporary file and server made here is removed by a
//! guard, also when an assertion fails.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fake_apiserver::{self, FakeApiServer, Kind};
use crate::harness::*;
use crate::pods::{CGROUP1_PIDS, Driver, PodCgroup, new_uid};

const NODE: &str = "itest-node";
const POD_CIDR: &str = "10.207.0.0/24";
/// For changes the agent learns through an open watch.
const DEADLINE: Duration = Duration::from_secs(30);
/// For recoveries that wait on the watcher's backoff (up to 30 s between attempts).
const OUTAGE_DEADLINE: Duration = Duration::from_secs(60);

const API_UP: &str = "netexporter_kubernetes_api_up";
const UNREACHABLE_LOG: &str = "Kubernetes API unreachable";
const REACHABLE_LOG: &str = "Kubernetes API reachable";

/// (metric, direction, key in `stats64` of `ip -s -j link`).
const NETDEV: [(&str, &str, &str); 4] = [
    ("netexporter_netdev_rxbytes", "rx", "bytes"),
    ("netexporter_netdev_rxpackets", "rx", "packets"),
    ("netexporter_netdev_txbytes", "tx", "bytes"),
    ("netexporter_netdev_txpackets", "tx", "packets"),
];

// ---- Pods: namespaces, veths, processes and kubelet-style cgroups ----

static SUBNET: AtomicU32 = AtomicU32::new(0);

/// A veth pair between the host and `ns` on the next /30 of the Pod CIDR (host `.4k+1`,
/// namespace `.4k+2`), with IPv6 off on both ends (no router solicitations or DAD to move
/// the counters compared here). Returns the host's and the namespace's address.
fn pod_veth(ns: &Netns) -> (Veth, String, String) {
    let k = SUBNET.fetch_add(1, Ordering::Relaxed) % 40 + 2;
    let host_ip = format!("10.207.0.{}", 4 * k + 1);
    let pod_ip = format!("10.207.0.{}", 4 * k + 2);
    let v = Veth {
        host: unique("nxh"),
        peer: unique("nxp"),
    };
    run(&[
        "ip", "link", "add", &v.host, "type", "veth", "peer", "name", &v.peer,
    ]);
    run(&["ip", "link", "set", &v.peer, "netns", &ns.name]);
    let host_v6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", v.host);
    if Path::new(&host_v6).exists() {
        std::fs::write(&host_v6, "1").expect("disable IPv6 on the host end");
        ns.sh(&format!(
            "echo 1 > /proc/sys/net/ipv6/conf/{}/disable_ipv6",
            v.peer
        ));
    }
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{host_ip}/30"),
        "dev",
        &v.host,
    ]);
    run(&["ip", "link", "set", &v.host, "up"]);
    ns.run(&["ip", "addr", "add", &format!("{pod_ip}/30"), "dev", &v.peer]);
    ns.run(&["ip", "link", "set", &v.peer, "up"]);
    (v, host_ip, pod_ip)
}

/// A Pod of this machine. Fields drop in order: listeners, the process, its cgroups, the
/// veth, the namespace.
struct PodEnv {
    namespace: String,
    name: String,
    uid: String,
    /// The Pod's IP (its end of the veth; the node's for a hostNetwork Pod).
    ip: String,
    host_ip: String,
    host_network: bool,
    _listeners: Vec<std::net::TcpListener>,
    proc: Proc,
    _cgroup: PodCgroup,
    veth: Option<Veth>,
    ns: Option<Netns>,
}

impl PodEnv {
    /// A Pod with a network namespace of its own, `listeners` TCP listeners in it and one
    /// process in the cgroup `driver` puts it in.
    fn new(namespace: &str, name: &str, driver: Driver, listeners: usize) -> Self {
        let ns = Netns::new("nxk");
        let (veth, host_ip, ip) = pod_veth(&ns);
        let proc = ns.spawn(&["sleep", "600"]);
        let pid = proc.child.id();
        let inode = ns.inode();
        let entered = poll(Duration::from_secs(10), || {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .ok()
                .filter(|m| m.ino() == inode)
        });
        assert!(entered.is_some(), "process {pid} never entered {}", ns.name);
        let uid = new_uid();
        let (mount, rel) = driver.cgroup(&uid);
        let cgroup = PodCgroup::enter(mount, &rel, pid);
        let listeners = ns.tcp_listeners(listeners);
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid,
            ip,
            host_ip,
            host_network: false,
            _listeners: listeners,
            proc,
            _cgroup: cgroup,
            veth: Some(veth),
            ns: Some(ns),
        }
    }

    /// A hostNetwork Pod: its process is in a kubepods cgroup but in the node's namespace.
    fn host_network(namespace: &str, name: &str) -> Self {
        let proc = Proc::spawn(&["sleep", "600"]);
        let uid = new_uid();
        let (mount, rel) = Driver::SystemdV2.cgroup(&uid);
        let cgroup = PodCgroup::enter(mount, &rel, proc.child.id());
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid,
            ip: "192.0.2.10".into(),
            host_ip: String::new(),
            host_network: true,
            _listeners: Vec::new(),
            proc,
            _cgroup: cgroup,
            veth: None,
            ns: None,
        }
    }

    fn ns(&self) -> &Netns {
        self.ns.as_ref().expect("a Pod of its own namespace")
    }

    /// The Pod as the API server returns it.
    fn json(&self, node: &str) -> Value {
        fake_apiserver::pod(
            &self.namespace,
            &self.name,
            &self.uid,
            node,
            self.host_network,
            Some(&self.ip),
        )
    }

    fn labels(&self) -> [(&str, &str); 2] {
        [("k8s_namespace", &self.namespace), ("k8s_pod", &self.name)]
    }

    fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.proc.child.id())).exists()
    }

    /// A few UDP datagrams from the host to the Pod (to a closed port: the Pod answers with
    /// ICMP), so that both directions of its veth have counted something.
    fn traffic(&self) {
        let sock = std::net::UdpSocket::bind((self.host_ip.as_str(), 0)).expect("udp socket");
        for _ in 0..5 {
            sock.send_to(&[0u8; 200], (self.ip.as_str(), 9))
                .expect("send to the Pod");
        }
    }
}

// ---- The kernel's values in a Pod ----

struct Kernel {
    /// `TCP: inuse` of /proc/net/sockstat.
    inuse: u64,
    /// Interface -> the values of [`NETDEV`].
    links: BTreeMap<String, [u64; 4]>,
}

fn kernel(ns: &Netns) -> Kernel {
    let text = ns.run(&["ip", "-s", "-j", "link", "show"]);
    let links: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip -s -j link: {e}\n{text}"));
    let links = links
        .as_array()
        .expect("ip link: array")
        .iter()
        .map(|l| {
            let name = l["ifname"].as_str().expect("ifname").to_string();
            let v = NETDEV.map(|(_, dir, key)| {
                l["stats64"][dir][key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no stats64.{dir}.{key} on {name}"))
            });
            (name, v)
        })
        .collect();
    Kernel {
        inuse: ns.sockstat_tcp_inuse(),
        links,
    }
}

/// Rounds of "kernel, scrape, kernel" until no gauge moved in between: in that round each
/// Pod's `netexporter_sock_inuse` must equal the kernel's and each netdev counter of each of
/// its interfaces must lie between the two kernel reads (and no other interface be there).
fn assert_pods_match_kernel(agent: &Agent, pods: &[&PodEnv]) -> Scrape {
    for _ in 0..8 {
        let before: Vec<Kernel> = pods.iter().map(|p| kernel(p.ns())).collect();
        let s = agent.scrape();
        let after: Vec<Kernel> = pods.iter().map(|p| kernel(p.ns())).collect();
        if before.iter().zip(&after).any(|(b, a)| b.inuse != a.inuse) {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        for (i, p) in pods.iter().enumerate() {
            let labels = p.labels();
            assert_eq!(
                s.value("netexporter_sock_inuse", &labels),
                Some(before[i].inuse as f64),
                "sock_inuse of Pod {} (the kernel's TCP inuse in {}: {}):\n{}",
                p.name,
                p.ns().name,
                before[i].inuse,
                s.text
            );
            for (ifname, b) in &before[i].links {
                let a = after[i].links.get(ifname).expect("interface vanished");
                for (j, (metric, _, _)) in NETDEV.iter().enumerate() {
                    let mut want = labels.to_vec();
                    want.push(("if_name", ifname));
                    let got = s.value(metric, &want).unwrap_or_else(|| {
                        panic!("no {metric}{want:?} in the scrape:\n{}", s.text)
                    });
                    assert!(
                        b[j] as f64 <= got && got <= a[j] as f64,
                        "{metric} of {} {ifname}: scraped {got}, the kernel had {} before and {} after",
                        p.name,
                        b[j],
                        a[j]
                    );
                }
            }
            let scraped: BTreeSet<&str> = s
                .find("netexporter_netdev_rxbytes", &[("k8s_pod", &p.name)])
                .iter()
                .filter_map(|x| x.labels.get("if_name").map(String::as_str))
                .collect();
            let kernel: BTreeSet<&str> = before[i].links.keys().map(String::as_str).collect();
            assert_eq!(scraped, kernel, "interfaces of Pod {}", p.name);
        }
        return s;
    }
    panic!("the TCP sockets of the Pods kept changing in every round");
}

// ---- The agent and the scrape ----

struct K8sAgent {
    agent: Agent,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for K8sAgent {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

/// The agent in Kubernetes mode with a kubeconfig for `server`, and `config` (YAML) as its
/// configuration file if given.
fn start_agent(server: &FakeApiServer, config: Option<&str>) -> K8sAgent {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = server.write_kubeconfig(dir.path());
    let mut args = vec![
        "--mode=kubernetes".to_string(),
        format!("--kubeconfig={}", kubeconfig.display()),
    ];
    if let Some(yaml) = config {
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).expect("config file");
        args.push(format!("--config.file={}", path.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    K8sAgent {
        agent: Agent::start(&args),
        _dir: dir,
    }
}

/// Scrapes until `ok` holds, for at most `limit`; fails with the last scrape, the agent's
/// log and the API server's requests.
fn wait_for(
    agent: &Agent,
    server: &FakeApiServer,
    what: &str,
    limit: Duration,
    mut ok: impl FnMut(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + limit;
    loop {
        let s = agent.scrape();
        if ok(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what}: not within {limit:?}\n\nlast scrape:\n{}\n\nagent log:\n{}\n\nAPI requests:\n{}",
                s.text,
                agent.log_text(),
                server.requests().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The Pods (by `k8s_pod`) that have any series.
fn pods_in(s: &Scrape) -> BTreeSet<String> {
    s.samples
        .iter()
        .filter_map(|x| x.labels.get("k8s_pod").cloned())
        .collect()
}

fn has_pod(s: &Scrape, pod: &PodEnv) -> bool {
    s.value("netexporter_sock_inuse", &pod.labels()).is_some()
}

fn api_up(s: &Scrape) -> Option<f64> {
    s.value(API_UP, &[])
}

/// Requests for the whole state of this node's Pods so far: lists, and watches that stream
/// the initial state (`sendInitialEvents`), as the agent makes where the server offers them.
fn pod_lists(server: &FakeApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with("GET /api/v1/pods?")
                && (!r.contains("watch=true") || r.contains("sendInitialEvents=true"))
        })
        .count()
}

/// The node's own series and the last known Pods' are served while the API is away.
fn assert_still_serving(s: &Scrape, pods: &[&PodEnv]) {
    assert!(
        s.value("netexporter_sock_inuse", &[]).is_some(),
        "no node series:\n{}",
        s.text
    );
    assert!(
        !s.find("netexporter_netdev_rxbytes", &[("if_name", "lo")])
            .is_empty(),
        "no netdev series:\n{}",
        s.text
    );
    for p in pods {
        assert!(
            has_pod(s, p),
            "Pod {} lost while the API is away:\n{}",
            p.name,
            s.text
        );
    }
}

fn new_server(cidrs: &[&str]) -> FakeApiServer {
    let server = FakeApiServer::start();
    server.apply(Kind::Node, fake_apiserver::node(NODE, &new_uid(), cidrs));
    server
}

// ---- Tests ----

/// Two Pods (systemd and cgroupfs drivers) are targets with their labels and the kernel's
/// values; a hostNetwork Pod, a namespace of no Pod and a Pod of another node are not.
#[test]
fn kubernetes_pods_are_targets_with_their_labels() {
    require_root();
    let server = new_server(&[POD_CIDR]);
    server.apply(
        Kind::Node,
        fake_apiserver::node("other-node", &new_uid(), &["10.207.1.0/24"]),
    );
    let a = PodEnv::new("shop", "web-a", Driver::SystemdV2, 2);
    let b = PodEnv::new("kube-system", "dns-b", Driver::CgroupfsV2, 1);
    let host = PodEnv::host_network("kube-system", "proxy-h");
    // A Pod of another node with a real namespace and process: only the field selector keeps
    // it out.
    let other = PodEnv::new("shop", "web-other", Driver::SystemdV2, 3);
    let plain = Netns::new("nxk");
    let (plain_veth, _, _) = pod_veth(&plain);
    for p in [&a, &b, &host] {
        server.apply(Kind::Pod, p.json(NODE));
    }
    server.apply(Kind::Pod, other.json("other-node"));
    a.traffic();
    b.traffic();

    let agent = start_agent(&server, None);
    wait_for(&agent, &server, "both Pods", DEADLINE, |s| {
        has_pod(s, &a) && has_pod(s, &b)
    });
    let s = assert_pods_match_kernel(&agent, &[&a, &b]);

    assert_eq!(
        pods_in(&s),
        BTreeSet::from([a.name.clone(), b.name.clone()]),
        "Pods with series:\n{}",
        s.text
    );
    for x in &s.samples {
        assert!(
            !x.labels.contains_key("netns"),
            "a netns label in Kubernetes mode: {} {:?}",
            x.name,
            x.labels
        );
        assert_eq!(x.labels.get("k8s_node").map(String::as_str), Some(NODE));
        if let Some(pod) = x.labels.get("k8s_pod") {
            let want = if *pod == a.name { &a } else { &b };
            assert_eq!(
                x.labels.get("k8s_namespace"),
                Some(&want.namespace),
                "{} {:?}",
                x.name,
                x.labels
            );
        }
    }
    // One sock_inuse series for the node and one per Pod: the namespace of no Pod and the
    // other node's Pod are not targets.
    assert_eq!(
        s.find("netexporter_sock_inuse", &[]).len(),
        3,
        "sock_inuse series:\n{}",
        s.text
    );
    for gone in [&plain_veth.peer, &other.veth.as_ref().expect("veth").peer] {
        assert!(
            s.find("netexporter_netdev_rxbytes", &[("if_name", gone)])
                .is_empty(),
            "interface {gone} of no Pod of this node is reported"
        );
    }
    // The host ends of the Pods' veths are the node's, with only k8s_node.
    let a_host = &a.veth.as_ref().expect("veth").host;
    assert!(
        s.value("netexporter_netdev_rxbytes", &[("if_name", a_host)])
            .is_some(),
        "no node series of {a_host}:\n{}",
        s.text
    );
    assert_eq!(
        s.value(
            "netexporter_scrape_collector_success",
            &[("collector", "netns")]
        ),
        Some(1.0)
    );
    assert_eq!(api_up(&s), Some(1.0));
    // This node's Pods as the API lists them: a, b and the hostNetwork one.
    assert_eq!(s.value("netexporter_kubernetes_pods", &[]), Some(3.0));
    assert!(a.alive() && b.alive() && host.alive() && other.alive());

    let requests = server.requests();
    eprintln!("requests of the kube client:\n{}", requests.join("\n"));
    assert!(
        requests.iter().any(|r| r.starts_with("GET /api/v1/pods?")
            && r.contains("fieldSelector=spec.nodeName%3Ditest-node")
            && r.contains("watch=true")),
        "no watch of this node's Pods: {requests:#?}"
    );
}

/// A Pod added through the watch while the agent runs appears; a deleted one disappears
/// while its process still runs.
#[test]
fn kubernetes_watch_adds_and_deletes_pods() {
    require_root();
    let server = new_server(&[POD_CIDR]);
    let a = PodEnv::new("shop", "web-a", Driver::SystemdV2, 1);
    server.apply(Kind::Pod, a.json(NODE));
    let agent = start_agent(&server, None);
    wait_for(&agent, &server, "Pod web-a", DEADLINE, |s| has_pod(s, &a));

    // Guaranteed Pod of the systemd driver, in a cgroup v1 hierarchy where one is mounted.
    let v1 = Path::new(CGROUP1_PIDS).join("cgroup.procs").exists();
    let driver = if v1 {
        Driver::SystemdV1
    } else {
        Driver::SystemdV2
    };
    let c = PodEnv::new("shop", "web-c", driver, 2);
    c.traffic();
    // Its process is in a kubepods cgroup, but no Pod of the API has its UID yet.
    let s = agent.scrape();
    assert_eq!(
        pods_in(&s),
        BTreeSet::from([a.name.clone()]),
        "before the API has web-c:\n{}",
        s.text
    );
    let lists = pod_lists(&server);

    server.apply(Kind::Pod, c.json(NODE));
    wait_for(&agent, &server, "Pod web-c after ADDED", DEADLINE, |s| {
        has_pod(s, &c)
    });
    let s = assert_pods_match_kernel(&agent, &[&a, &c]);
    assert_eq!(s.value("netexporter_kubernetes_pods", &[]), Some(2.0));
    assert_eq!(
        pod_lists(&server),
        lists,
        "the agent listed the Pods again instead of following the watch: {:#?}",
        server.requests()
    );

    assert!(server.delete(Kind::Pod, "shop", "web-a"));
    let s = wait_for(&agent, &server, "web-a gone after DELETED", DEADLINE, |s| {
        !pods_in(s).contains(&a.name)
    });
    assert!(
        a.alive(),
        "web-a's process is gone: this test proves nothing"
    );
    assert!(has_pod(&s, &c), "web-c lost:\n{}", s.text);
    assert_eq!(s.value("netexporter_kubernetes_pods", &[]), Some(1.0));
    assert_pods_match_kernel(&agent, &[&c]);

    // Bookmarks on the open watches are taken in stride: no relist, no outage.
    let seen = server.bookmarks();
    assert!(
        poll(DEADLINE, || (server.bookmarks() >= seen + 4).then_some(())).is_some(),
        "no bookmarks sent"
    );
    let s = agent.scrape();
    assert_eq!(api_up(&s), Some(1.0));
    assert_eq!(pod_lists(&server), lists, "{:#?}", server.requests());
    assert!(!agent.log_text().contains(UNREACHABLE_LOG));
}

/// The API server stops: the agent keeps serving its last view, says so (api_up 0, a log
/// line), and catches up when the server is back, with its history (a Pod added while down
/// appears) or without it (a Pod deleted while down disappears); a watch whose history is
/// gone (410 Gone) makes the agent list again without an outage; a server that answers only
/// 503 is an outage.
#[test]
fn kubernetes_api_outage_keeps_the_last_view_and_catches_up() {
    require_root();
    let mut server = new_server(&[POD_CIDR]);
    let a = PodEnv::new("shop", "web-a", Driver::SystemdV2, 1);
    server.apply(Kind::Pod, a.json(NODE));
    let agent = start_agent(&server, None);
    wait_for(&agent, &server, "api_up 1 and web-a", DEADLINE, |s| {
        api_up(s) == Some(1.0) && has_pod(s, &a)
    });

    // 1. Down, a Pod added meanwhile, back with the history: the watch resumes.
    server.stop();
    wait_for(
        &agent,
        &server,
        "api_up 0 with the server stopped",
        OUTAGE_DEADLINE,
        |s| {
            assert_still_serving(s, &[&a]);
            api_up(s) == Some(0.0)
        },
    );
    assert!(
        agent.log_text().contains(UNREACHABLE_LOG),
        "no log line about the API:\n{}",
        agent.log_text()
    );
    let d = PodEnv::new("shop", "web-d", Driver::CgroupfsV2, 1);
    server.apply(Kind::Pod, d.json(NODE));
    let s = agent.scrape();
    assert_still_serving(&s, &[&a]);
    assert!(!has_pod(&s, &d), "web-d known with the API down?");
    assert_eq!(api_up(&s), Some(0.0));

    server.restart();
    wait_for(
        &agent,
        &server,
        "api_up 1 and web-d after the server came back",
        OUTAGE_DEADLINE,
        |s| {
            assert_still_serving(s, &[&a]);
            api_up(s) == Some(1.0) && has_pod(s, &d)
        },
    );
    assert!(
        agent.log_text().contains(REACHABLE_LOG),
        "no log line about the API being back:\n{}",
        agent.log_text()
    );
    assert_pods_match_kernel(&agent, &[&a, &d]);

    // 2. Down, web-a deleted meanwhile, back without the history: the agent must list again.
    let lists = pod_lists(&server);
    server.stop();
    wait_for(&agent, &server, "api_up 0 again", OUTAGE_DEADLINE, |s| {
        assert_still_serving(s, &[&a, &d]);
        api_up(s) == Some(0.0)
    });
    assert!(server.delete(Kind::Pod, "shop", "web-a"));
    server.compact();
    server.restart();
    let s = wait_for(
        &agent,
        &server,
        "api_up 1 and web-a gone after a relist",
        OUTAGE_DEADLINE,
        |s| api_up(s) == Some(1.0) && !pods_in(s).contains(&a.name),
    );
    assert!(has_pod(&s, &d), "web-d lost:\n{}", s.text);
    assert!(a.alive());
    assert!(
        pod_lists(&server) > lists,
        "no new list after the outage: {:#?}",
        server.requests()
    );

    // 3. No outage, but the history behind the open watches is dropped and they are closed
    //    (web-d's deletion went with it): watching again gets 410 Gone, the agent lists again,
    //    which is no outage (no log line).
    let lists = pod_lists(&server);
    let outages = agent.log_text().matches(UNREACHABLE_LOG).count();
    assert!(server.forget(Kind::Pod, "shop", "web-d"));
    server.expire_watches();
    wait_for(
        &agent,
        &server,
        "web-d gone after 410 Gone and a relist",
        OUTAGE_DEADLINE,
        |s| {
            assert_eq!(api_up(s), Some(1.0), "api_up after 410 Gone:\n{}", s.text);
            !pods_in(s).contains(&d.name)
        },
    );
    assert!(d.alive());
    assert!(pod_lists(&server) > lists);
    assert_eq!(
        agent.log_text().matches(UNREACHABLE_LOG).count(),
        outages,
        "410 Gone reported as an outage:\n{}",
        agent.log_text()
    );

    // 4. The server answers, but only 503 (as with no healthy backend behind a load
    //    balancer), and the open watches are closed: that is an outage too.
    server.fail_with(Some(503));
    server.expire_watches();
    wait_for(&agent, &server, "api_up 0 on 503", OUTAGE_DEADLINE, |s| {
        assert_still_serving(s, &[]);
        api_up(s) == Some(0.0)
    });
    assert!(
        agent.log_text().matches(UNREACHABLE_LOG).count() > outages,
        "no log line about the 503s:\n{}",
        agent.log_text()
    );
    server.fail_with(None);
    wait_for(
        &agent,
        &server,
        "api_up 1 after the 503s",
        OUTAGE_DEADLINE,
        |s| api_up(s) == Some(1.0),
    );
    eprintln!(
        "requests of the kube client:\n{}",
        server.requests().join("\n")
    );
}

/// An API server that fails every request from the start (500 from etcd; not a status the
/// kube client retries by itself, so each failure reaches the agent): the agent serves the
/// node, reports api_up 0 all along and never claims the API reachable, then catches up once
/// the server answers.
#[test]
fn kubernetes_api_failing_at_start_is_never_reported_up() {
    require_root();
    let server = new_server(&[POD_CIDR]);
    let a = PodEnv::new("shop", "web-a", Driver::CgroupfsV2, 1);
    server.apply(Kind::Pod, a.json(NODE));
    server.fail_with(Some(500));
    let agent = start_agent(&server, None);

    // Three list attempts of the Pods, i.e. two retries after failures.
    wait_for(
        &agent,
        &server,
        "three failed Pod lists",
        OUTAGE_DEADLINE,
        |s| {
            assert_ne!(api_up(s), Some(1.0), "api_up 1 with every request failing");
            assert!(pods_in(s).is_empty(), "Pods without an API:\n{}", s.text);
            assert!(s.value("netexporter_sock_inuse", &[]).is_some());
            pod_lists(&server) >= 3
        },
    );
    let log = agent.log_text();
    assert!(log.contains(UNREACHABLE_LOG), "no log line:\n{log}");
    assert!(
        !log.contains(REACHABLE_LOG),
        "the agent says the API is reachable while every request fails:\n{log}"
    );
    // One line per watch (Pods, Node, and the kinds the checks watch), not one per retry.
    let mut watches: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(UNREACHABLE_LOG))
        .filter_map(|l| l.split("watch=\"").nth(1)?.split('"').next())
        .collect();
    let lines = watches.len();
    watches.sort();
    watches.dedup();
    assert_eq!(lines, watches.len(), "one line per watch expected:\n{log}");

    server.fail_with(None);
    wait_for(
        &agent,
        &server,
        "api_up 1 and web-a",
        OUTAGE_DEADLINE,
        |s| api_up(s) == Some(1.0) && has_pod(s, &a),
    );
    assert!(agent.log_text().contains(REACHABLE_LOG));
}

/// podip: the Node's CIDRs, host-local IPAM files and the Pods' IPs, also as they change.
#[test]
fn kubernetes_podip_accounts_cidrs_ipam_files_and_pods() {
    require_root();
    let node_uid = new_uid();
    let server = FakeApiServer::start();
    server.apply(
        Kind::Node,
        fake_apiserver::node(NODE, &node_uid, &[POD_CIDR]),
    );
    let pod = |ns: &str, name: &str, host: bool, ip: Option<&str>| {
        fake_apiserver::pod(ns, name, &new_uid(), NODE, host, ip)
    };
    server.apply(Kind::Pod, pod("shop", "web-a", false, Some("10.207.0.21")));
    server.apply(Kind::Pod, pod("shop", "web-b", false, Some("10.207.0.22")));
    server.apply(Kind::Pod, pod("shop", "web-out", false, Some("10.208.0.5")));
    server.apply(
        Kind::Pod,
        pod("kube-system", "proxy-h", true, Some("192.0.2.10")),
    );
    server.apply(Kind::Pod, pod("shop", "web-pending", false, None));
    let mut done = pod("shop", "job-done", false, Some("10.207.0.23"));
    done["status"]["phase"] = "Succeeded".into();
    server.apply(Kind::Pod, done);
    // Pods of another node count nowhere.
    server.apply(
        Kind::Pod,
        fake_apiserver::pod(
            "shop",
            "elsewhere",
            &new_uid(),
            "other-node",
            false,
            Some("10.207.0.99"),
        ),
    );

    let ipam = tempfile::tempdir().expect("temp dir");
    let net = ipam.path().join("k8s-pod-network");
    std::fs::create_dir(&net).expect("ipam network dir");
    for f in [
        "10.207.0.21",
        "10.207.0.22",
        "10.207.0.200",
        "lock",
        "last_reserved_ip.0",
    ] {
        std::fs::write(net.join(f), "x").expect("ipam file");
    }
    let config = format!(
        "probes:\n  podip:\n    ipam_dir: {}\n",
        ipam.path().display()
    );
    let agent = start_agent(&server, Some(&config));

    let podip = |s: &Scrape| {
        ["maxentries", "entries", "redisuals", "notinpodcidrs"]
            .map(|m| s.value(&format!("netexporter_podip_{m}"), &[]))
    };
    let s = wait_for(&agent, &server, "podip metrics", DEADLINE, |s| {
        podip(s)[0].is_some()
    });
    assert_eq!(
        podip(&s),
        [Some(256.0), Some(3.0), Some(1.0), Some(1.0)],
        "podip maxentries, entries, redisuals, notinpodcidrs:\n{}",
        s.text
    );
    assert_eq!(
        s.value(
            "netexporter_scrape_collector_success",
            &[("collector", "podip")]
        ),
        Some(1.0)
    );

    // web-b deleted: its address file stays behind, leaked.
    assert!(server.delete(Kind::Pod, "shop", "web-b"));
    wait_for(&agent, &server, "web-b's IP leaked", DEADLINE, |s| {
        podip(s) == [Some(256.0), Some(2.0), Some(2.0), Some(1.0)]
    });
    // The Node gains a second CIDR that holds web-out's address.
    server.apply(
        Kind::Node,
        fake_apiserver::node(NODE, &node_uid, &[POD_CIDR, "10.208.0.0/24"]),
    );
    wait_for(&agent, &server, "the Node's second CIDR", DEADLINE, |s| {
        podip(s) == [Some(512.0), Some(2.0), Some(2.0), Some(0.0)]
    });
}

/// Without a mode, a kubeconfig or KUBERNETES_SERVICE_HOST the agent is standalone; an
/// explicit `--mode=standalone` wins over a kubeconfig.
#[test]
fn standalone_stays_the_default() {
    require_root();
    let ns = Netns::new("nxk");
    let server = new_server(&[POD_CIDR]);
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = server.write_kubeconfig(dir.path());
    let explicit = format!("--kubeconfig={}", kubeconfig.display());
    let cases: [(&str, Vec<&str>); 2] = [
        ("no Kubernetes settings", vec![]),
        (
            "--mode=standalone with a kubeconfig",
            vec!["--mode=standalone", &explicit],
        ),
    ];
    for (case, args) in cases {
        let agent = Agent::start_without_env(
            &args,
            &[
                "KUBERNETES_SERVICE_HOST",
                "KUBERNETES_SERVICE_PORT",
                "KUBECONFIG",
            ],
        );
        let s = poll(DEADLINE, || {
            let s = agent.scrape();
            s.value("netexporter_sock_inuse", &[("netns", &ns.name)])
                .is_some()
                .then_some(s)
        })
        .unwrap_or_else(|| {
            panic!(
                "{case}: namespace {} missing; log:\n{}",
                ns.name,
                agent.log_text()
            )
        });
        let names = s.family_names();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("netexporter_podip_")
                    || n.starts_with("netexporter_kubernetes_")),
            "{case}: Kubernetes families in standalone mode: {names:?}"
        );
        assert!(
            !s.text.contains("netexporter_podip_") && !s.text.contains(API_UP),
            "{case}: Kubernetes families announced:\n{}",
            s.text
        );
        assert!(pods_in(&s).is_empty(), "{case}: Pod labels:\n{}", s.text);
        assert!(
            !agent.log_text().contains("Kubernetes mode: watching"),
            "{case}:\n{}",
            agent.log_text()
        );
    }
    assert!(
        server.requests().is_empty(),
        "a standalone agent asked the API server: {:#?}",
        server.requests()
    );
}

/// A direct link between two Pods' namespaces (the /30 at `net`), each reaching the other's
/// Pod IP over it from its own Pod IP (the node does not forward here), and a server on
/// `server`'s Pod IP at `port` that accepts and closes, listening when this returns.
fn link_and_serve(client: &PodEnv, server: &PodEnv, net: &str, port: u16) -> (NsVeth, Proc) {
    let base: std::net::Ipv4Addr = net.parse().expect("an IPv4 /30");
    let at = |i: u32| format!("{}/30", std::net::Ipv4Addr::from(u32::from(base) + i));
    let link = NsVeth::new(client.ns(), "eth9", &at(1), server.ns(), "eth9", &at(2));
    for (from, to) in [(client, server), (server, client)] {
        from.ns().run(&[
            "ip",
            "route",
            "add",
            &format!("{}/32", to.ip),
            "dev",
            "eth9",
            "src",
            &from.ip,
        ]);
    }
    let script = format!(
        "import socket\nl = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('{}', {port})); l.listen(16)\nwhile True:\n    c, _ = l.accept(); c.close()\n",
        server.ip
    );
    let proc = server.ns().spawn(&["python3", "-c", &script]);
    let up = poll(Duration::from_secs(10), || {
        server
            .ns()
            .run(&["ss", "-Htln", &format!("sport = :{port}")])
            .contains(&port.to_string())
            .then_some(())
    });
    assert!(up.is_some(), "no listener in {}", server.name);
    (link, proc)
}

/// A Pod owned by a ReplicaSet of a Deployment, as the API server returns it.
fn deployment_pod(pod: &PodEnv, deployment: &str, hash: &str) -> Value {
    let mut j = pod.json(NODE);
    j["metadata"]["labels"]["pod-template-hash"] = Value::from(hash);
    j["metadata"]["ownerReferences"] = serde_json::json!([{
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": format!("{deployment}-{hash}"),
        "uid": new_uid(),
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    j
}

/// Pod to Pod: the peers probe names each side's peer by the other Pod's workload (namespace,
/// `Deployment/NAME`), with exactly the connections made; a deleted Pod's series go.
#[test]
fn kubernetes_peers_are_the_other_pods_workload() {
    require_root();
    const N: u64 = 6;
    let server = new_server(&[POD_CIDR]);
    let web = PodEnv::new("shop", "web-a", Driver::SystemdV2, 0);
    let dns = PodEnv::new("kube-system", "coredns-b", Driver::CgroupfsV2, 0);
    let _served = link_and_serve(&web, &dns, "10.208.9.0", 5353);
    server.apply(Kind::Pod, deployment_pod(&web, "web", "5d8f7c9b4"));
    server.apply(Kind::Pod, deployment_pod(&dns, "coredns", "7db6d8ff4d"));
    let agent = start_agent(&server, None);
    wait_for(&agent, &server, "both Pods", DEADLINE, |s| {
        has_pod(s, &web) && has_pod(s, &dns)
    });

    let connect = format!(
        "import socket\nfor _ in range({N}):\n    s = socket.create_connection(('{}', 5353)); s.recv(1); s.close()\n",
        dns.ip
    );
    web.ns().run(&["python3", "-c", &connect]);
    let conns = "netexporter_peer_connections_total";
    let client = [
        ("k8s_pod", "web-a"),
        ("role", "client"),
        ("port", "5353"),
        ("peer", "kube-system/Deployment/coredns"),
        ("peer_kind", "workload"),
    ];
    let server_side = [
        ("k8s_pod", "coredns-b"),
        ("role", "server"),
        ("port", "5353"),
        ("peer", "shop/Deployment/web"),
        ("peer_kind", "workload"),
    ];
    // The one series with these labels (and the node's and Pod's namespace).
    let value = |s: &Scrape, labels: &[(&str, &str)]| {
        let found = s.find(conns, labels);
        (found.len() == 1).then(|| found[0].value)
    };
    let s = wait_for(&agent, &server, "the peers of both Pods", DEADLINE, |s| {
        value(s, &client).is_some() && value(s, &server_side).is_some()
    });
    assert_eq!(value(&s, &client), Some(N as f64), "{}", s.text);
    assert_eq!(value(&s, &server_side), Some(N as f64), "{}", s.text);
    assert!(
        s.find(conns, &[("k8s_pod", "web-a"), ("peer_kind", "address")])
            .is_empty(),
        "web-a's peer left as an address:\n{}",
        s.text
    );

    // web-a deleted: its peer series are gone at the next collection.
    assert!(server.delete(Kind::Pod, "shop", "web-a"));
    drop(web);
    let s = wait_for(&agent, &server, "web-a gone", DEADLINE, |s| {
        !pods_in(s).contains("web-a")
    });
    assert!(
        s.find(conns, &[("k8s_pod", "web-a")]).is_empty(),
        "{}",
        s.text
    );
    assert_eq!(value(&s, &server_side), Some(N as f64));
}

/// A Pod IP reused by another workload: the connections made before stay with the first
/// workload's series (which ends there: it never counts the new Pod's), those made after go
/// to the new one's; exact.
#[test]
fn kubernetes_peers_follow_a_reused_pod_ip_to_its_new_workload() {
    require_root();
    const BEFORE: u64 = 4;
    const AFTER: u64 = 3;
    let server = new_server(&[POD_CIDR]);
    let web = PodEnv::new("shop", "web-r", Driver::SystemdV2, 0);
    let db = PodEnv::new("shop", "db-r", Driver::CgroupfsV2, 0);
    let _served = link_and_serve(&web, &db, "10.208.9.4", 5432);
    server.apply(Kind::Pod, deployment_pod(&web, "web", "5d8f7c9b4"));
    server.apply(Kind::Pod, deployment_pod(&db, "postgres", "7db6d8ff4d"));
    let agent = start_agent(&server, None);
    wait_for(&agent, &server, "both Pods", DEADLINE, |s| {
        has_pod(s, &web) && has_pod(s, &db)
    });
    let connect = |n: u64| {
        let s = format!(
            "import socket\nfor _ in range({n}):\n    s = socket.create_connection(('{}', 5432)); s.recv(1); s.close()\n",
            db.ip
        );
        web.ns().run(&["python3", "-c", &s]);
    };
    let to = |s: &Scrape, peer: &str| {
        let found = s.find(
            "netexporter_peer_connections_total",
            &[
                ("k8s_pod", "web-r"),
                ("role", "client"),
                ("port", "5432"),
                ("peer", peer),
                ("peer_kind", "workload"),
            ],
        );
        (found.len() == 1).then(|| found[0].value as u64)
    };
    connect(BEFORE);
    let s = wait_for(&agent, &server, "the first workload", DEADLINE, |s| {
        to(s, "shop/Deployment/postgres") == Some(BEFORE)
    });
    assert_eq!(
        to(&s, "shop/Deployment/postgres"),
        Some(BEFORE),
        "{}",
        s.text
    );

    // The Pod is replaced in the API by a StatefulSet's Pod with the same IP (its old
    // processes serve on: the kernel sees the same address).
    assert!(server.delete(Kind::Pod, "shop", "db-r"));
    let mut reused = fake_apiserver::pod("shop", "cache-0", &new_uid(), NODE, false, Some(&db.ip));
    reused["metadata"]["ownerReferences"] = serde_json::json!([{
        "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "cache",
        "uid": new_uid(), "controller": true, "blockOwnerDeletion": true,
    }]);
    server.apply(Kind::Pod, reused);
    // The collection that first sees the new name moves the key: the new workload's series
    // appears at 0, and the first one's, whose only key it was, ends at what it had (no
    // other key keeps it: its value never grows with the new Pod's connections).
    let s = wait_for(&agent, &server, "the key moved", DEADLINE, |s| {
        to(s, "shop/StatefulSet/cache").is_some()
    });
    assert_eq!(to(&s, "shop/StatefulSet/cache"), Some(0), "{}", s.text);
    assert_eq!(to(&s, "shop/Deployment/postgres"), None, "{}", s.text);
    connect(AFTER);
    let s = wait_for(&agent, &server, "the connections after", DEADLINE, |s| {
        to(s, "shop/StatefulSet/cache") == Some(AFTER)
    });
    assert_eq!(to(&s, "shop/StatefulSet/cache"), Some(AFTER), "{}", s.text);
    assert_eq!(to(&s, "shop/Deployment/postgres"), None, "{}", s.text);
}

/// Peers beyond this node's Pods: a connection to a Service's ClusterIP (translated by an
/// iptables DNAT rule, as kube-proxy writes them) is counted under the Service, and under the
/// Service and the backend's workload it was translated to; one straight to
/// a backend of another node (known from the Service's EndpointSlice) under its Deployment;
/// another node's address under that Node's name; a Pod of another node that backs no Service
/// under its controller (`kubernetes.watch_all_pods`); an address outside `cluster_networks` is
/// `external`.
#[test]
fn kubernetes_peers_name_services_backends_and_external_addresses() {
    require_root();
    const VIA_SERVICE: u64 = 4;
    const DIRECT: u64 = 3;
    const OUTSIDE: u64 = 2;
    const TO_NODE: u64 = 5;
    const TO_POD: u64 = 6;
    let server = new_server(&[POD_CIDR]);
    let web = PodEnv::new("shop", "web-c", Driver::SystemdV2, 0);
    // A backend on "another node": a namespace the API does not list as a Pod of this node,
    // and an "internet" address beside it.
    let remote = Netns::new("nxkr");
    let _link = NsVeth::new(
        web.ns(),
        "eth9",
        "10.208.10.1/30",
        &remote,
        "eth0",
        "10.208.10.2/30",
    );
    // 10.208.20.5 and .6: two other nodes (their kubelet's port); .7 a Pod of another node
    // that backs no Service.
    for addr in [
        "198.51.100.7/32",
        "10.208.20.5/32",
        "10.208.20.6/32",
        "10.208.20.7/32",
    ] {
        remote.run(&["ip", "addr", "add", addr, "dev", "eth0"]);
    }
    for dst in ["198.51.100.7/32", "10.96.50.10/32", "10.208.20.0/29"] {
        web.ns().run(&["ip", "route", "add", dst, "dev", "eth9"]);
    }
    let script = "import socket, threading\n\
         def serve(addr, port):\n    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n    l.bind((addr, port)); l.listen(16)\n    while True:\n        c, _ = l.accept(); c.close()\n\
         threading.Thread(target=serve, args=('10.208.10.2', 8080)).start()\n\
         def resolve():\n    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('10.208.10.2', 53))\n    while True:\n        q, peer = u.recvfrom(512); u.sendto(q[:2] + bytes([0x81, 0x80]) + q[4:], peer)\n\
         threading.Thread(target=resolve).start()\n\
         threading.Thread(target=serve, args=('0.0.0.0', 10250)).start()\n\
         serve('198.51.100.7', 443)\n";
    let _backend = remote.spawn(&["python3", "-c", script]);
    // kube-proxy's rule for the Service, in the client's namespace (its OUTPUT chain).
    dnat(web.ns(), "10.96.50.10", 80, "10.208.10.2:8080");
    server.apply(Kind::Pod, deployment_pod(&web, "web", "5d8f7c9b4"));
    server.apply(
        Kind::Service,
        fake_apiserver::service(
            "shop",
            "api",
            "ClusterIP",
            Some("10.96.50.10"),
            &[("http", 80, "TCP", 8080)],
        ),
    );
    let mut slice = fake_apiserver::endpoint_slice(
        "shop",
        "api",
        "k2x7q",
        &[("10.208.10.2", "other-node", true)],
        &[("http", 8080, "TCP")],
    );
    slice["endpoints"][0]["targetRef"]["name"] = "api-7c9d8f6b5d-x2x9k".into();
    server.apply(Kind::EndpointSlice, slice);
    let other_node = |name: &str, ip: &str| {
        let mut n = fake_apiserver::node(name, &new_uid(), &["10.244.5.0/24"]);
        n["status"]["addresses"] = serde_json::json!([
            { "type": "InternalIP", "address": ip },
            { "type": "Hostname", "address": name },
        ]);
        n
    };
    server.apply(Kind::Node, other_node("other-node", "10.208.20.5"));
    let mut worker = fake_apiserver::pod(
        "batch",
        "worker-x2x9k",
        &new_uid(),
        "other-node",
        false,
        Some("10.208.20.7"),
    );
    worker["metadata"]["ownerReferences"] = serde_json::json!([{
        "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "worker",
        "uid": new_uid(), "controller": true, "blockOwnerDeletion": true,
    }]);
    server.apply(Kind::Pod, worker);
    let config = "kubernetes:\n  watch_all_pods: true\nprobes:\n  peers:\n    cluster_networks: [10.0.0.0/8]\n";
    let agent = start_agent(&server, Some(config));
    wait_for(&agent, &server, "the Pod", DEADLINE, |s| has_pod(s, &web));
    for port in [8080, 443, 10250] {
        let up = poll(Duration::from_secs(10), || {
            remote
                .run(&["ss", "-Htln", &format!("sport = :{port}")])
                .contains(&port.to_string())
                .then_some(())
        });
        assert!(up.is_some(), "no listener on {port}");
    }
    let connect = |addr: &str, port: u16, n: u64| {
        let s = format!(
            "import socket\nfor _ in range({n}):\n    s = socket.create_connection(('{addr}', {port})); s.recv(1); s.close()\n"
        );
        web.ns().run(&["python3", "-c", &s]);
    };
    connect("10.96.50.10", 80, VIA_SERVICE);
    connect("10.208.10.2", 8080, DIRECT);
    connect("198.51.100.7", 443, OUTSIDE);
    connect("10.208.20.5", 10250, TO_NODE);
    connect("10.208.20.7", 10250, TO_POD);
    let conns = "netexporter_peer_connections_total";
    let want = [
        ("80", "shop/Service/api", "service", VIA_SERVICE),
        ("8080", "shop/Deployment/api", "workload", DIRECT),
        ("443", "external", "external", OUTSIDE),
        ("10250", "other-node", "node", TO_NODE),
        ("10250", "batch/DaemonSet/worker", "workload", TO_POD),
    ];
    let value = |s: &Scrape, port: &str, peer: &str, kind: &str| {
        let found = s.find(
            conns,
            &[
                ("k8s_pod", "web-c"),
                ("role", "client"),
                ("port", port),
                ("peer", peer),
                ("peer_kind", kind),
            ],
        );
        (found.len() == 1).then(|| found[0].value as u64)
    };
    let s = wait_for(&agent, &server, "the three peers", DEADLINE, |s| {
        want.iter()
            .all(|(port, peer, kind, _)| value(s, port, peer, kind).is_some())
    });
    for (port, peer, kind, n) in want {
        assert_eq!(value(&s, port, peer, kind), Some(n), "{peer}:\n{}", s.text);
    }
    // The connections to the Service, by the backend conntrack translated them to: named by
    // the backend's workload from the EndpointSlice.
    let via = s.find(
        "netexporter_peer_backend_connections_total",
        &[
            ("k8s_pod", "web-c"),
            ("port", "80"),
            ("peer", "shop/Service/api"),
            ("peer_kind", "service"),
            ("backend", "shop/Deployment/api"),
            ("backend_kind", "workload"),
        ],
    );
    assert_eq!(
        via.iter().map(|v| v.value as u64).collect::<Vec<_>>(),
        [VIA_SERVICE],
        "{}",
        s.text
    );

    // A Service created while the agent runs is named too: the watch event rebuilds what the
    // agent names addresses by (it is not rebuilt at every collection).
    web.ns()
        .run(&["ip", "route", "add", "10.96.50.11/32", "dev", "eth9"]);
    dnat(web.ns(), "10.96.50.11", 81, "10.208.10.2:8080");
    server.apply(
        Kind::Service,
        fake_apiserver::service(
            "shop",
            "cart",
            "ClusterIP",
            Some("10.96.50.11"),
            &[("http", 81, "TCP", 8080)],
        ),
    );
    // The agent has an object once a connection to its address is named; connections made
    // before the watch event reached it are counted under the address, so connect until then.
    let named_after = |what: &str, addr: &str, port: u16, peer: &str, kind: &str| {
        let named = |s: &Scrape| value(s, &port.to_string(), peer, kind).is_some();
        let s = wait_for(&agent, &server, what, DEADLINE, |s| {
            if !named(s) {
                connect(addr, port, 1);
            }
            named(s)
        });
        assert!(named(&s), "{what}:\n{}", s.text);
    };
    named_after(
        "the new Service",
        "10.96.50.11",
        81,
        "shop/Service/cart",
        "service",
    );
    // So is a Node that joins: the watch of every Node names its address.
    server.apply(Kind::Node, other_node("node-3", "10.208.20.6"));
    named_after("the new Node", "10.208.20.6", 10250, "node-3", "node");
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/nodes?") && !r.contains("fieldSelector")),
        "no watch of every Node: {:#?}",
        server.requests()
    );

    // DNS to the cluster DNS Service (a connected UDP socket, as glibc's, to its ClusterIP,
    // DNAT'd to a resolver on the other node) is counted under the Service by name.
    const QUERIES: u64 = 3;
    web.ns()
        .run(&["ip", "route", "add", "10.96.0.10/32", "dev", "eth9"]);
    dnat_proto(web.ns(), "udp", "10.96.0.10", 53, "10.208.10.2:53");
    server.apply(
        Kind::Service,
        fake_apiserver::service(
            "kube-system",
            "kube-dns",
            "ClusterIP",
            Some("10.96.0.10"),
            &[("dns", 53, "UDP", 53)],
        ),
    );
    let resolver = [
        ("k8s_pod", "web-c"),
        ("resolver", "kube-system/Service/kube-dns"),
        ("resolver_kind", "service"),
        ("protocol", "udp"),
    ];
    let dns = |s: &Scrape, metric: &str, extra: (&str, &str)| {
        let mut want = resolver.to_vec();
        want.push(extra);
        let found = s.find(metric, &want);
        (found.len() == 1).then(|| found[0].value as u64)
    };
    // Queried once the Service is in the agent's view (the key is named at its first
    // collection), then QUERIES more.
    let query = |n: u64| {
        let s = format!(
            "import socket\nfor i in range({n}):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n    s.connect(('10.96.0.10', 53))\n    s.send(bytes([0, i]) + bytes.fromhex('01000001000000000000') + b'\\x03api\\x04shop\\x00\\x00\\x01\\x00\\x01')\n    s.recv(512); s.close()\n"
        );
        web.ns().run(&["python3", "-c", &s]);
    };
    let s = wait_for(&agent, &server, "the DNS Service", DEADLINE, |s| {
        let seen = dns(s, "netexporter_dns_queries_total", ("type", "A")).is_some();
        if !seen {
            query(1);
        }
        seen
    });
    let before = dns(&s, "netexporter_dns_queries_total", ("type", "A")).unwrap_or(0);
    let answered = dns(&s, "netexporter_dns_answers_total", ("rcode", "NOERROR")).unwrap_or(0);
    query(QUERIES);
    let s = wait_for(&agent, &server, "the queries", DEADLINE, |s| {
        dns(s, "netexporter_dns_answers_total", ("rcode", "NOERROR")) == Some(answered + QUERIES)
    });
    assert_eq!(
        dns(&s, "netexporter_dns_queries_total", ("type", "A")),
        Some(before + QUERIES),
        "{}",
        s.text
    );
}
