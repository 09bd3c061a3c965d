//! The agent's load on the Kubernetes API server, counted by the fake API server
//! (`fake_apiserver.rs`: every request, who sent it, when, and the bytes of its answer).
//!
//! A cluster of a few hundred Services (each with its EndpointSlice), Pods of other nodes and
//! the ip-masq-agent's ConfigMap; the agent in Kubernetes mode with the checks that read
//! cluster objects (NetworkPolicy, SVCTrafficPolicy, IPMasqAgentConf) every 5 s:
//!
//! - each kind is watched once (a streaming list, or a list from the watch cache where the
//!   server refuses streaming), and in a steady state no list call is made at all while the
//!   checks still see every change;
//! - after an API outage the agents come back at jittered times, not in step.
//!
//! - every request is one that the RBAC of `deploy/base/rbac.yaml` authorizes.
//!
//! The figures behind the sizing table of `docs/kubernetes.md` come from
//! `api_requests_of_one_agent_start_steady_restart` (printed on stderr).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::fake_apiserver::{self, FakeApiServer, Kind, Logged};
use crate::harness::*;
use crate::pods::new_uid;

const NODE: &str = "itest-node";
const VPC: &str = "10.212.0.0/16";
/// The checks that read cluster objects.
const CHECKS: &[&str] = &["NetworkPolicy", "SVCTrafficPolicy", "IPMasqAgentConf"];
const SERVICES: usize = 300;
const NETWORK_POLICY_MSG: &str = "network policy is configured,please use it carefully.";

/// A kind the agent watches, by the path of its requests and, where one path serves two
/// watches (this node's Node, every Node), whether they carry a field selector.
struct Watched {
    kind: &'static str,
    prefix: &'static str,
    selected: Option<bool>,
}

impl Watched {
    const fn new(kind: &'static str, prefix: &'static str) -> Self {
        Self {
            kind,
            prefix,
            selected: None,
        }
    }

    fn asks(&self, line: &str) -> bool {
        line.starts_with(self.prefix)
            && self
                .selected
                .is_none_or(|s| line.contains("fieldSelector=") == s)
    }

    fn of<'a>(&self, log: &'a [Logged]) -> Vec<&'a Logged> {
        log.iter().filter(|r| self.asks(&r.line)).collect()
    }
}

/// Each kind the agent watches with these checks.
const WATCHED: &[Watched] = &[
    Watched::new("pods", "GET /api/v1/pods?"),
    Watched {
        kind: "node",
        prefix: "GET /api/v1/nodes?",
        selected: Some(true),
    },
    // The peers and dns probes name other nodes' addresses (kubernetes.watch_nodes).
    Watched {
        kind: "nodes",
        prefix: "GET /api/v1/nodes?",
        selected: Some(false),
    },
    Watched::new("services", "GET /api/v1/services?"),
    // The peers probe names Services and the Pods behind them on other nodes.
    Watched::new(
        "endpointslices",
        "GET /apis/discovery.k8s.io/v1/endpointslices?",
    ),
    Watched::new(
        "networkpolicies",
        "GET /apis/networking.k8s.io/v1/networkpolicies?",
    ),
    Watched::new(
        "ip-masq-agent",
        "GET /api/v1/namespaces/kube-system/configmaps?",
    ),
];

/// A cluster: this node, `SERVICES` Services with one EndpointSlice each (three endpoints on
/// other nodes), 100 Pods of other nodes, the ip-masq-agent's ConfigMap (exempting the VPC).
fn cluster() -> FakeApiServer {
    let server = FakeApiServer::start();
    server.apply(
        Kind::Node,
        fake_apiserver::node(NODE, &new_uid(), &["10.212.1.0/24"]),
    );
    for i in 0..SERVICES {
        let (ns, name) = (format!("team-{}", i % 20), format!("svc-{i}"));
        server.apply(
            Kind::Service,
            fake_apiserver::service(
                &ns,
                &name,
                "ClusterIP",
                Some(&format!("10.96.{}.{}", i / 250, i % 250 + 1)),
                &[("http", 80, "TCP", 8080)],
            ),
        );
        let ips: Vec<String> = (0..3)
            .map(|j| format!("10.212.{}.{}", 2 + j, i % 250 + 1))
            .collect();
        let endpoints: Vec<(&str, &str, bool)> = ips
            .iter()
            .map(|ip| (ip.as_str(), "other-node", true))
            .collect();
        server.apply(
            Kind::EndpointSlice,
            fake_apiserver::endpoint_slice(
                &ns,
                &name,
                "a1b2c",
                &endpoints,
                &[("http", 8080, "TCP")],
            ),
        );
    }
    for i in 0..100 {
        server.apply(
            Kind::Pod,
            fake_apiserver::pod(
                "team-0",
                &format!("elsewhere-{i}"),
                &new_uid(),
                "other-node",
                false,
                Some(&format!("10.212.9.{}", i + 1)),
            ),
        );
    }
    server.apply(
        Kind::ConfigMap,
        fake_apiserver::config_map(
            "kube-system",
            "ip-masq-agent",
            &[("config", "nonMasqueradeCIDRs:\n  - 10.212.0.0/16\n")],
        ),
    );
    server
}

/// A config file in `dir`: only `CHECKS` on, every 5 s.
fn config(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "checks:\n  interval: 5s\n  node:\n    vpc_cidr: {VPC}\n{}",
            checks_off_but(CHECKS)
        ),
    )
    .expect("write config");
    path
}

fn start_agent(server: &FakeApiServer, dir: &std::path::Path, token: &str, config: &str) -> Agent {
    let kubeconfig = server.write_kubeconfig_as(dir, token);
    Agent::start(&[
        "--mode=kubernetes",
        &format!("--kubeconfig={}", kubeconfig.display()),
        &format!("--config.file={config}"),
    ])
}

/// Waits until every one of `CHECKS` has run successfully and the API is up.
fn wait_checked(agent: &Agent, server: &FakeApiServer) {
    let ok = poll(Duration::from_secs(60), || {
        let s = agent.scrape();
        (s.value("netexporter_kubernetes_api_up", &[]) == Some(1.0)
            && CHECKS
                .iter()
                .all(|c| s.value("netexporter_check_success", &[("check", c)]) == Some(1.0)))
        .then_some(())
    });
    assert!(
        ok.is_some(),
        "checks not run within 60 s; log:\n{}\nrequests:\n{}",
        agent.log_text(),
        server.requests().join("\n")
    );
}

/// Waits until the agent's log shows an event of `check` with `message`.
fn wait_event(agent: &Agent, check: &str, message: &str) {
    let needle = format!("\"type\":\"{check}\"");
    let ok = poll(Duration::from_secs(20), || {
        agent
            .log_text()
            .lines()
            .any(|l| l.contains(&needle) && l.contains(message))
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "no {check} event within 20 s; log:\n{}",
        agent.log_text()
    );
}

/// Requests, lists among them, and bytes answered, of `log`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Load {
    requests: usize,
    lists: usize,
    bytes: u64,
}

fn load(log: &[Logged]) -> Load {
    Load {
        requests: log.len(),
        lists: log.iter().filter(|r| r.is_list()).count(),
        bytes: log.iter().map(|r| r.bytes).sum(),
    }
}

/// The load between two snapshots of the log: the requests made after `before`, and the
/// bytes answered meanwhile (open watches included).
fn between(before: &[Logged], after: &[Logged]) -> Load {
    let bytes_before: u64 = before.iter().map(|r| r.bytes).sum();
    let bytes_after: u64 = after.iter().map(|r| r.bytes).sum();
    let new = &after[before.len()..];
    Load {
        bytes: bytes_after - bytes_before,
        ..load(new)
    }
}

/// One rule of `deploy/base/rbac.yaml`: where it holds (`None`: a ClusterRole's, everywhere).
struct Rule {
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
    verbs: Vec<String>,
}

fn rbac_rules() -> Vec<Rule> {
    use serde::Deserialize;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/base/rbac.yaml");
    let text = std::fs::read_to_string(path).expect("read rbac.yaml");
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let mut rules = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let o = serde_yaml::Value::deserialize(doc).expect("rbac.yaml document");
        let namespace = match o["kind"].as_str() {
            Some("ClusterRole") => None,
            Some("Role") => Some(
                o["metadata"]["namespace"]
                    .as_str()
                    .expect("namespace")
                    .to_string(),
            ),
            _ => continue,
        };
        for r in o["rules"].as_sequence().into_iter().flatten() {
            rules.push(Rule {
                namespace: namespace.clone(),
                groups: strings(&r["apiGroups"]),
                resources: strings(&r["resources"]),
                names: strings(&r["resourceNames"]),
                verbs: strings(&r["verbs"]),
            });
        }
    }
    rules
}

/// Whether a request (`GET <path>?<query>`) is one that `rules` authorize, as the API
/// server's RBAC authorizer decides: group, resource, namespace, verb (`list`, `watch`,
/// `get`) and, for a list or watch with a `metadata.name` field selector, the name.
fn authorized(rules: &[Rule], line: &str) -> bool {
    let Some(target) = line.strip_prefix("GET ") else {
        return false;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // `/api/v1/<rest>` (the core group) or `/apis/<group>/<version>/<rest>`.
    let (group, rest) = if let Some(rest) = path.strip_prefix("/api/v1") {
        ("", rest)
    } else if let Some(apis) = path.strip_prefix("/apis/") {
        let mut parts = apis.splitn(3, '/');
        let (group, _version) = (parts.next().unwrap_or(""), parts.next());
        (group, parts.next().unwrap_or(""))
    } else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let (namespace, resource, name) = match parts.as_slice() {
        ["namespaces", ns, res] => (Some(*ns), *res, None),
        ["namespaces", ns, res, name] => (Some(*ns), *res, Some(name.to_string())),
        [res] => (None, *res, None),
        [res, name] => (None, *res, Some(name.to_string())),
        _ => return false,
    };
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (&name, watch) {
        (Some(_), _) => "get",
        (None, true) => "watch",
        (None, false) => "list",
    };
    let name = name.or_else(|| {
        query
            .split('&')
            .filter_map(|p| p.strip_prefix("fieldSelector="))
            .flat_map(|v| v.split("%2C"))
            .find_map(|t| t.strip_prefix("metadata.name%3D").map(String::from))
    });
    rules.iter().any(|r| {
        r.namespace
            .as_deref()
            .is_none_or(|ns| namespace == Some(ns))
            && r.groups.iter().any(|g| g == group)
            && r.resources.iter().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
            && (r.names.is_empty() || name.as_ref().is_some_and(|n| r.names.contains(n)))
    })
}

/// Every request of `log` is one the agent's RBAC allows.
fn assert_authorized(log: &[Logged]) {
    let rules = rbac_rules();
    for r in log {
        assert!(
            authorized(&rules, &r.line),
            "deploy/base/rbac.yaml does not authorize {}",
            r.line
        );
    }
}

#[test]
fn the_rbac_check_of_these_tests_refuses_what_is_not_granted() {
    let rules = rbac_rules();
    for ok in [
        "GET /api/v1/pods?&watch=true&fieldSelector=spec.nodeName%3Dn",
        "GET /api/v1/services?&resourceVersion=0",
        "GET /apis/discovery.k8s.io/v1/endpointslices?&watch=true",
        "GET /api/v1/namespaces/kube-system/configmaps?&watch=true&fieldSelector=metadata.name%3Dip-masq-agent",
    ] {
        assert!(authorized(&rules, ok), "{ok}");
    }
    for refused in [
        "GET /api/v1/endpoints?&watch=true",
        "GET /api/v1/secrets?&watch=true",
        "GET /api/v1/namespaces/kube-system/configmaps?&watch=true",
        "GET /api/v1/namespaces/default/configmaps?&watch=true&fieldSelector=metadata.name%3Dip-masq-agent",
        "GET /api/v1/namespaces/kube-system/configmaps/ip-masq-agent",
        "GET /api/v1/nodes/itest-node",
    ] {
        assert!(!authorized(&rules, refused), "{refused}");
    }
}

fn of<'a>(log: &'a [Logged], prefix: &str) -> Vec<&'a Logged> {
    log.iter().filter(|r| r.line.starts_with(prefix)).collect()
}

/// Start, steady state with the checks every 5 s, and an API server restart (its history
/// gone, as with a fresh watch cache): each kind watched once with a streaming list, no list
/// call in the steady state while changes still reach the checks, one streaming relist per
/// kind after the restart. Prints the figures of `docs/kubernetes.md`.
#[test]
fn api_requests_of_one_agent_start_steady_restart() {
    require_root();
    let mut server = cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path());
    let started = Instant::now();
    let agent = start_agent(&server, dir.path(), "", &cfg.display().to_string());
    wait_checked(&agent, &server);
    let synced = started.elapsed();
    let at_start = server.log();

    // Start: one watch per kind, its initial state streamed over it; nothing listed.
    for w in WATCHED {
        let (kind, asked) = (w.kind, w.of(&at_start));
        assert_eq!(asked.len(), 1, "{kind}: {asked:#?}");
        assert!(
            !asked[0].is_list() && asked[0].line.contains("sendInitialEvents=true"),
            "{kind}: {asked:#?}"
        );
    }
    assert!(
        of(&at_start, "GET /apis/networking.k8s.io/v1/networkpolicies")[0].metadata_only,
        "NetworkPolicies asked for whole"
    );
    assert_eq!(load(&at_start).lists, 0, "{at_start:#?}");
    assert!(of(&at_start, "GET /api/v1/endpoints").is_empty());

    // Steady state: 30 s of checks every 5 s; a NetworkPolicy and a Service with a Local
    // traffic policy created meanwhile are seen from the watches.
    std::thread::sleep(Duration::from_secs(10));
    server.apply(
        Kind::NetworkPolicy,
        fake_apiserver::network_policy("team-3", "deny-others"),
    );
    let mut local = fake_apiserver::service(
        "team-4",
        "edge",
        "LoadBalancer",
        Some("10.96.9.9"),
        &[("http", 80, "TCP", 8080)],
    );
    local["spec"]["externalTrafficPolicy"] = serde_json::json!("Local");
    server.apply(Kind::Service, local);
    wait_event(&agent, "NetworkPolicy", NETWORK_POLICY_MSG);
    wait_event(&agent, "LocalTrafficPolicy", "svc(edge/team-4)");
    let rest = Duration::from_secs(30).saturating_sub(started.elapsed() - synced);
    std::thread::sleep(rest);
    let steady_window = started.elapsed() - synced;
    let at_steady = server.log();
    let steady = between(&at_start, &at_steady);
    assert_eq!(
        steady.lists,
        0,
        "list calls in a steady state: {:#?}",
        &at_steady[at_start.len()..]
    );
    let s = agent.scrape();
    for c in CHECKS {
        assert_eq!(
            s.value("netexporter_check_success", &[("check", c)]),
            Some(1.0),
            "{c}"
        );
    }

    // Restart with a fresh watch cache: the watches come back, one relist (streamed) each.
    server.stop();
    server.compact();
    std::thread::sleep(Duration::from_secs(2));
    let restarted = Instant::now();
    server.restart();
    let back = poll(Duration::from_secs(60), || {
        let log = server.log();
        let after = &log[at_steady.len()..];
        WATCHED
            .iter()
            .all(|w| {
                after
                    .iter()
                    .any(|r| w.asks(&r.line) && r.line.contains("sendInitialEvents=true"))
            })
            .then_some(())
    });
    assert!(
        back.is_some(),
        "not every kind watched again; requests:\n{}",
        server.requests().join("\n")
    );
    std::thread::sleep(Duration::from_secs(5));
    let at_restart = server.log();
    let restart = between(&at_steady, &at_restart);
    assert_eq!(restart.lists, 0, "{:#?}", &at_restart[at_steady.len()..]);
    wait_checked(&agent, &server);
    assert_authorized(&server.log());

    let per_kind_bytes: Vec<String> = WATCHED
        .iter()
        .map(|w| {
            let b: u64 = w.of(&at_start).iter().map(|r| r.bytes).sum();
            format!("{} {b} B", w.kind)
        })
        .collect();
    eprintln!(
        "API load of one agent ({SERVICES} Services, 100 Pods elsewhere, checks every 5 s):\n\
         start ({synced:.1?}): {} requests, {} lists, {} bytes ({})\n\
         steady ({steady_window:.1?}): {} requests, {} lists, {} bytes\n\
         restart (until {:.1?} after): {} requests, {} lists, {} bytes",
        load(&at_start).requests,
        load(&at_start).lists,
        load(&at_start).bytes,
        per_kind_bytes.join(", "),
        steady.requests,
        steady.lists,
        steady.bytes,
        restarted.elapsed(),
        restart.requests,
        restart.lists,
        restart.bytes,
    );
}

/// A server that refuses streaming lists (WatchList off): each kind is listed once from the
/// watch cache (`resourceVersion=0`) and then watched; the refusal is said once and is no
/// outage.
#[test]
fn initial_lists_come_from_the_watch_cache_where_streaming_is_refused() {
    require_root();
    let server = cluster();
    server.refuse_streaming_lists(true);
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path());
    let agent = start_agent(&server, dir.path(), "", &cfg.display().to_string());
    wait_checked(&agent, &server);
    std::thread::sleep(Duration::from_secs(12));
    let log = server.log();
    for w in WATCHED {
        let (kind, asked) = (w.kind, w.of(&log));
        let refused = asked
            .iter()
            .filter(|r| r.line.contains("sendInitialEvents"))
            .count();
        let lists: Vec<_> = asked.iter().filter(|r| r.is_list()).collect();
        assert!(refused <= 1, "{kind}: {asked:#?}");
        assert_eq!(lists.len(), 1, "{kind}: {asked:#?}");
        assert!(
            lists[0].line.contains("resourceVersion=0"),
            "{kind}: not from the watch cache: {asked:#?}"
        );
        assert!(
            asked
                .iter()
                .any(|r| !r.is_list() && !r.line.contains("sendInitialEvents")),
            "{kind}: never watched: {asked:#?}"
        );
    }
    assert_authorized(&log);
    let text = agent.log_text();
    assert_eq!(
        text.matches("does not offer streaming lists").count(),
        1,
        "{text}"
    );
    assert!(!text.contains("Kubernetes API unreachable"), "{text}");
}

/// Four agents, their watches closed at once and every request failing (500) for 14 s: each
/// retries after a growing backoff (never sooner than 0.8 s), and at times of its own, so that
/// a cluster's agents do not come back in step; all are back once the server answers.
#[test]
fn reconnects_after_an_api_outage_are_jittered() {
    require_root();
    let server = FakeApiServer::start();
    server.apply(
        Kind::Node,
        fake_apiserver::node(NODE, &new_uid(), &["10.212.1.0/24"]),
    );
    let dirs: Vec<tempfile::TempDir> = (0..4)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let agents: Vec<Agent> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let cfg = d.path().join("config.yaml");
            std::fs::write(&cfg, "checks:\n  enabled: false\n").expect("config");
            start_agent(
                &server,
                d.path(),
                &format!("agent-{i}"),
                &cfg.display().to_string(),
            )
        })
        .collect();
    for a in &agents {
        let up = poll(Duration::from_secs(30), || {
            (a.scrape().value("netexporter_kubernetes_api_up", &[]) == Some(1.0)).then_some(())
        });
        assert!(up.is_some(), "agent never up:\n{}", a.log_text());
    }

    server.fail_with(Some(500));
    let failing = Instant::now();
    let before = server.log().len();
    server.expire_watches();
    std::thread::sleep(Duration::from_secs(14));
    server.fail_with(None);
    let log = server.log();

    // For each agent, the times (after the failures began) of its Pod watch's requests.
    let times: Vec<Vec<f64>> = (0..4)
        .map(|i| {
            let who = format!("agent-{i}");
            log[before..]
                .iter()
                .filter(|r| r.who == who && r.line.starts_with("GET /api/v1/pods?"))
                .map(|r| r.at.duration_since(failing).as_secs_f64())
                .filter(|t| *t < 14.0)
                .collect()
        })
        .collect();
    eprintln!("retry times of the Pod watch, per agent (s): {times:.2?}");
    let gaps: Vec<Vec<f64>> = times
        .iter()
        .map(|t| t.windows(2).map(|w| w[1] - w[0]).collect())
        .collect();
    for (i, g) in gaps.iter().enumerate() {
        assert!(g.len() >= 3, "agent-{i}: too few retries: {times:?}");
        assert!(
            g.iter().all(|d| *d >= 0.75),
            "agent-{i} retried sooner than the backoff allows: {g:?}"
        );
        assert!(
            g[1] > g[0] && g[2] > g[1],
            "agent-{i}: no growing backoff: {g:?}"
        );
    }
    // In step, the k-th delay would be the same for every agent (within a few ms); jittered,
    // each is drawn between the base delay and twice it.
    let spread = |k: usize| {
        let v: Vec<f64> = gaps.iter().map(|g| g[k]).collect();
        v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min)
    };
    assert!(
        (0..3).any(|k| spread(k) > 0.1),
        "the agents retried in step: {gaps:.3?}"
    );

    for a in &agents {
        let up = poll(Duration::from_secs(90), || {
            (a.scrape().value("netexporter_kubernetes_api_up", &[]) == Some(1.0)).then_some(())
        });
        assert!(up.is_some(), "agent not back:\n{}", a.log_text());
    }
}

/// The cost of `kubernetes.watch_all_pods`: a cluster with 5,000 real-shaped Pods on other
/// nodes (the CoreDNS replica of `tests/fixtures/kubernetes/pod.json`, renamed): one watch
/// more, the bytes it receives, and the agent's memory with and without it (each Pod is
/// trimmed to what names it as it arrives). Prints the figures of `docs/kubernetes.md`.
#[test]
fn every_pod_watched_is_one_watch_and_trimmed_in_memory() {
    require_root();
    const PODS: usize = 5000;
    let server = cluster();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kubernetes/pod.json"
    );
    let template: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("pod fixture")).expect("json");
    // What the Pods weigh as JSON: the watch has streamed them all once it received that.
    let mut weight = 0;
    for i in 0..PODS {
        let mut p = template.clone();
        let ip = format!("10.213.{}.{}", i / 250, i % 250 + 1);
        p["metadata"]["name"] = format!("coredns-7c65d6cfc9-{i:05}").into();
        p["metadata"]["uid"] = new_uid().into();
        p["spec"]["nodeName"] = format!("worker-{}", i % 50).into();
        p["status"]["podIP"] = ip.clone().into();
        p["status"]["podIPs"] = serde_json::json!([{ "ip": ip }]);
        weight += p.to_string().len() as u64;
        server.apply(Kind::Pod, p);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let every_pod = Watched {
        kind: "every pod",
        prefix: "GET /api/v1/pods?",
        selected: Some(false),
    };
    let mut figures = Vec::new();
    for all in [false, true] {
        let cfg = dir.path().join(format!("all-{all}.yaml"));
        let checks = std::fs::read_to_string(config(dir.path())).expect("config");
        std::fs::write(
            &cfg,
            format!("kubernetes:\n  watch_all_pods: {all}\n{checks}"),
        )
        .expect("write config");
        let before = server.log().len();
        let agent = start_agent(&server, dir.path(), "", &cfg.display().to_string());
        wait_checked(&agent, &server);
        // The peers probe asks for the directory at each collection; the watch streams every
        // Pod once, then settles (bookmarks only: this fake sends one per second per watch).
        let bytes = || -> u64 {
            every_pod
                .of(&server.log()[before..])
                .iter()
                .map(|r| r.bytes)
                .sum()
        };
        let mut last = u64::MAX;
        let settled = poll(Duration::from_secs(60), || {
            agent.scrape();
            std::thread::sleep(Duration::from_secs(1));
            let now = bytes();
            let done = now.saturating_sub(last) < 1024 && (!all || now >= weight);
            last = now;
            done.then_some(now)
        });
        let received = settled.expect("the Pods watch did not settle");
        let watches = every_pod.of(&server.log()[before..]).len();
        assert_eq!(watches, usize::from(all), "watches of every Pod, all={all}");
        for _ in 0..3 {
            agent.scrape();
        }
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("agent status");
        let kib = |k: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        figures.push((all, received, kib("VmRSS:"), kib("VmHWM:")));
    }
    let (_, received, rss_off, hwm_off) = figures[0];
    assert_eq!(
        received, 0,
        "Pods of other nodes received without watch_all_pods"
    );
    let (_, received, rss_on, hwm_on) = figures[1];
    eprintln!(
        "watch_all_pods with {PODS} Pods of other nodes: watch received {received} bytes \
         ({} per Pod); agent VmRSS {rss_off} -> {rss_on} KiB ({:+} KiB, {:+.0} bytes per Pod), \
         VmHWM {hwm_off} -> {hwm_on} KiB",
        received / PODS as u64,
        rss_on as i64 - rss_off as i64,
        (rss_on as f64 - rss_off as f64) * 1024.0 / PODS as f64,
    );
    assert!(
        received >= weight,
        "{received} bytes for {PODS} Pods of {weight} bytes"
    );
}
