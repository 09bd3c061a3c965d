//! Socket summaries (`tcpsummary`, `sockbacklog`) on both of their paths: BPF socket storage
//! and the sock_diag fallback. Every value either path reports for a namespace must equal what
//! `ss` shows inside that namespace, and the two paths must agree with each other.
//!
//! The scenes mix what each half of the BPF path has to get right: sockets older than the
//! agent (only the per-namespace `iter/tcp` sweep can tag them), sockets made after it started
//! in namespaces it had already swept (only the `inet_sock_set_state` tracepoint can tag them),
//! IPv4 and IPv6, listeners whose accept queues are full, connections with megabytes queued
//! both ways, TIME-WAIT sockets, and a namespace deleted (and its name reused) while the
//! agents run.
//!
//! Values are compared only when the scene holds still: a round reads `ss` in every namespace,
//! scrapes every agent, reads `ss` again, and is repeated (until a deadline) while anything
//! moved or differs. Every namespace, veth and process made here is removed by a guard.

use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;

const NODE: &str = "itest-node";

/// Backlogs of the full listeners of a scene: IPv4 and IPv6 on loopback, IPv4 over the veth.
const BACKLOG_V4: u64 = 2;
const BACKLOG_V6: u64 = 1;
const BACKLOG_VETH: u64 = 3;
/// TIME-WAIT sockets made by [`time_wait`] per call: IPv4, IPv6.
const TIME_WAIT_V4: u64 = 2;
const TIME_WAIT_V6: u64 = 1;

/// The five values compared, as `ss` reads them in a namespace or an agent reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sockets {
    established: u64,
    time_wait: u64,
    tx_queue: u64,
    rx_queue: u64,
    accept_queue: u64,
}

/// The metrics of [`Sockets`], field by field.
const METRICS: [&str; 5] = [
    "netexporter_tcpsummary_tcpestablishedconn",
    "netexporter_tcpsummary_tcptimewaitconn",
    "netexporter_tcpsummary_tcptxqueue",
    "netexporter_tcpsummary_tcprxqueue",
    "netexporter_sockbacklog_recvq",
];

impl Sockets {
    /// What `ss` shows inside `ns` (it sees that namespace only).
    fn read(ns: &Netns) -> Self {
        // With one state filter ss prints no State column: Recv-Q and Send-Q come first.
        let (established, rx_queue, tx_queue) =
            ss_sums(&ns.run(&["ss", "-tanH", "state", "established"]), 0);
        let (time_wait, _, _) = ss_sums(&ns.run(&["ss", "-tanH", "state", "time-wait"]), 0);
        // Listeners: State, then Recv-Q (the accept queue) and Send-Q (the backlog).
        let (_, accept_queue, _) = ss_sums(&ns.run(&["ss", "-tlnH"]), 1);
        Self {
            established,
            time_wait,
            tx_queue,
            rx_queue,
            accept_queue,
        }
    }

    /// The values an agent reports for namespace `ns`; an error names what is missing.
    fn scraped(s: &Scrape, ns: &str) -> Result<Self, String> {
        let mut v = [0u64; 5];
        for (slot, metric) in v.iter_mut().zip(METRICS) {
            let x = s
                .value(metric, &[("netns", ns)])
                .ok_or_else(|| format!("{metric}{{netns={ns}}} missing"))?;
            if x < 0.0 || x.fract() != 0.0 {
                return Err(format!("{metric}{{netns={ns}}} is {x}, not a count"));
            }
            *slot = x as u64;
        }
        Ok(Self {
            established: v[0],
            time_wait: v[1],
            tx_queue: v[2],
            rx_queue: v[3],
            accept_queue: v[4],
        })
    }
}

// ---- Agents ----

/// An agent and the socket path it is expected to take.
struct Running<'a> {
    path: &'static str,
    agent: &'a Agent,
}

/// Starts the agent with `yaml` as its configuration file (written to `files`).
fn agent(files: &Files, yaml: &str) -> Agent {
    let config = files.dir.path().join(format!("{}.yaml", unique("agent")));
    std::fs::write(&config, yaml).expect("write the agent's config");
    Agent::start(&[&format!("--config.file={}", config.display())])
}

/// The agent whose socket summaries should come from BPF socket storage, and the path it must
/// report: forced to `bpf` where the kernel loads the programs (`socket_storage_support`); where
/// the kernel refuses them, an `auto` agent, which must fall back to sock_diag and log why.
fn bpf_agent(files: &Files, test: &str) -> (Agent, &'static str) {
    let support = socket_storage_support();
    support.say(test);
    match support {
        SocketStorageSupport::Loads => (agent(files, "sources:\n  socket_path: bpf\n"), "bpf"),
        SocketStorageSupport::Refused(_) => {
            let a = agent(files, "sources:\n  socket_path: auto\n");
            let said = poll(Duration::from_secs(10), || {
                let log = a.log_text();
                log.contains("BPF socket storage unavailable").then_some(())
            });
            assert!(
                said.is_some(),
                "the auto agent on a kernel that refuses the programs does not say why it \
                 takes sock_diag; agent log:\n{}",
                a.log_text()
            );
            (a, "sock_diag")
        }
    }
}

/// The value of `netexporter_scrape_collector_success` for `collector`.
fn collector_success(s: &Scrape, collector: &str) -> Option<f64> {
    s.value(
        "netexporter_scrape_collector_success",
        &[("collector", collector)],
    )
}

/// tcpsummary and sockbacklog succeeded, and the info metric names `path` (and no other).
fn check_path(s: &Scrape, who: &Running, when: &str) {
    for c in ["tcpsummary", "sockbacklog"] {
        assert_eq!(
            collector_success(s, c),
            Some(1.0),
            "{when}: collector {c} of the {} agent did not succeed; agent log:\n{}",
            who.path,
            who.agent.log_text()
        );
    }
    let info: Vec<String> = s
        .find("netexporter_tcpsummary_info", &[])
        .iter()
        .map(|x| format!("{:?} {}", x.labels, x.value))
        .collect();
    assert_eq!(
        s.value("netexporter_tcpsummary_info", &[("path", who.path)]),
        Some(1.0),
        "{when}: the {} agent's info: {info:?}; agent log:\n{}",
        who.path,
        who.agent.log_text()
    );
    assert_eq!(info.len(), 1, "{when}: info series {info:?}");
}

/// Repeats rounds (ss in every namespace, a scrape of every agent, ss again) until one in
/// which nothing moved and every agent reports exactly what ss shows, for at most `limit`.
/// Returns ss's values of that round, one per namespace.
fn settle(agents: &[Running], namespaces: &[&Netns], limit: Duration) -> Vec<Sockets> {
    let mut last = Vec::new();
    let mut rounds = 0;
    let found = poll(limit, || {
        rounds += 1;
        let before: Vec<Sockets> = namespaces.iter().map(|n| Sockets::read(n)).collect();
        let scrapes: Vec<Scrape> = agents.iter().map(|a| a.agent.scrape()).collect();
        let after: Vec<Sockets> = namespaces.iter().map(|n| Sockets::read(n)).collect();
        let mut problems = Vec::new();
        for (a, s) in agents.iter().zip(&scrapes) {
            check_path(s, a, &format!("round {rounds}"));
        }
        for (i, ns) in namespaces.iter().enumerate() {
            if before[i] != after[i] {
                problems.push(format!(
                    "{}: ss moved during the round: {:?} -> {:?}",
                    ns.name, before[i], after[i]
                ));
                continue;
            }
            for (a, s) in agents.iter().zip(&scrapes) {
                match Sockets::scraped(s, &ns.name) {
                    Ok(v) if v == before[i] => {}
                    Ok(v) => problems.push(format!(
                        "{}: the {} path reports {v:?}, ss shows {:?}",
                        ns.name, a.path, before[i]
                    )),
                    Err(e) => problems.push(format!("{}: {} path: {e}", ns.name, a.path)),
                }
            }
        }
        if problems.is_empty() {
            for (ns, v) in namespaces.iter().zip(&before) {
                eprintln!("round {rounds}: {} = {v:?} on every path", ns.name);
            }
            return Some(before);
        }
        last = problems;
        None
    });
    found.unwrap_or_else(|| {
        let logs: Vec<String> = agents
            .iter()
            .map(|a| format!("--- {} agent ---\n{}", a.path, a.agent.log_text()))
            .collect();
        panic!(
            "no round in {limit:?} ({rounds} rounds) where ss held still and every path matched \
             it; the last round:\n{}\n\n{}",
            last.join("\n"),
            logs.join("\n")
        )
    })
}

/// No series of any family carries `netns="<name>"` in the scrapes of `agents`.
fn assert_gone(agents: &[Running], name: &str) {
    for a in agents {
        let s = a.agent.scrape();
        check_path(&s, a, "after the deletion");
        let left: Vec<String> = s
            .samples
            .iter()
            .filter(|x| x.labels.get("netns").map(String::as_str) == Some(name))
            .map(|x| format!("{} {:?} {}", x.name, x.labels, x.value))
            .collect();
        assert!(
            left.is_empty(),
            "the {} agent still has series of the deleted namespace {name}:\n{}",
            a.path,
            left.join("\n")
        );
    }
}

/// Scrapes every agent until each has the series of `ns` (a collection saw it).
fn wait_seen(agents: &[Running], ns: &Netns) {
    for a in agents {
        let seen = poll(Duration::from_secs(20), || {
            Sockets::scraped(&a.agent.scrape(), &ns.name).ok()
        });
        assert!(
            seen.is_some(),
            "the {} agent never reported namespace {}; log:\n{}",
            a.path,
            ns.name,
            a.agent.log_text()
        );
    }
}

// ---- Scenes ----

/// The scripts and configuration files, in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        for (name, text) in [
            ("scene.py", SCENE),
            ("host.py", HOST),
            ("tw.py", TW),
            ("half.py", HALF),
        ] {
            std::fs::write(dir.path().join(name), format!("{COMMON}{text}"))
                .expect("write a script");
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// A fresh marker path (the file a script creates once its sockets are in place).
    fn marker(&self) -> PathBuf {
        self.dir.path().join(unique("ready"))
    }
}

/// Waits until `marker` exists; fails if the process exits first.
fn wait_ready(p: &mut Proc, marker: &std::path::Path, what: &str) {
    let done = poll(Duration::from_secs(90), || {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("{what}: the script exited early with {status}");
        }
        marker.exists().then_some(())
    });
    assert!(
        done.is_some(),
        "{what}: {} never appeared",
        marker.display()
    );
}

/// The sockets of one `scene.py` in a namespace (and, with a veth, of `host.py` feeding its
/// veth listeners from the host), held open by those processes until the guard drops.
struct Scene {
    /// Dropped first: the host's clients go before the namespace's side.
    _host: Option<Proc>,
    _ns_side: Proc,
    /// ESTABLISHED sockets and accept-queue length the scene makes in its namespace.
    established: u64,
    accept_queue: u64,
}

impl Scene {
    /// Ports `base`..`base+11` in `ns`; `veth`: the namespace's address on a veth to the host,
    /// whose listeners the host then fills.
    fn start(files: &Files, ns: &Netns, base: u16, veth: Option<&str>) -> Self {
        let ready = files.marker();
        let ready_s = ready.to_string_lossy().into_owned();
        let (b4, b6, bv, base_s) = (
            BACKLOG_V4.to_string(),
            BACKLOG_V6.to_string(),
            BACKLOG_VETH.to_string(),
            base.to_string(),
        );
        let scene = files.path("scene.py");
        let mut cmd = vec!["python3", &scene, &ready_s, &b4, &b6, &base_s];
        if let Some(addr) = veth {
            cmd.extend_from_slice(&[addr, &bv]);
        }
        let mut ns_side = ns.spawn(&cmd);
        wait_ready(&mut ns_side, &ready, &format!("scene in {}", ns.name));
        // Full queues: clients and accepted children, all ESTABLISHED; bulk and one-way pairs
        // (IPv4 and IPv6 each): two sockets each.
        let mut established = 2 * (BACKLOG_V4 + 1) + 2 * (BACKLOG_V6 + 1) + 4 + 4;
        let mut accept_queue = (BACKLOG_V4 + 1) + (BACKLOG_V6 + 1);
        let host = veth.map(|addr| {
            let ready = files.marker();
            let host_py = files.path("host.py");
            let (full, bulk) = ((base + 10).to_string(), (base + 11).to_string());
            let mut p = Proc::spawn(&[
                "python3",
                &host_py,
                &ready.to_string_lossy(),
                &ns.name,
                addr,
                &full,
                &bv,
                &bulk,
            ]);
            wait_ready(&mut p, &ready, &format!("host side of {}", ns.name));
            p
        });
        if host.is_some() {
            // The namespace's side only: the accepted-never children, one of them holding the
            // host's bulk bytes.
            established += (BACKLOG_VETH + 1) + 1;
            accept_queue += (BACKLOG_VETH + 1) + 1;
        }
        Self {
            _host: host,
            _ns_side: ns_side,
            established,
            accept_queue,
        }
    }
}

/// Makes [`TIME_WAIT_V4`] + [`TIME_WAIT_V6`] TIME-WAIT sockets in `ns` (they outlive the
/// script, for 60 s).
fn time_wait(files: &Files, ns: &Netns) {
    ns.run(&[
        "python3",
        &files.path("tw.py"),
        &TIME_WAIT_V4.to_string(),
        &TIME_WAIT_V6.to_string(),
    ]);
}

/// The scene as ss read it is the one built: exact counts, megabytes queued.
fn assert_scene(ns: &Netns, v: &Sockets, established: u64, accept_queue: u64, time_wait: u64) {
    assert_eq!(v.established, established, "{}: {v:?}", ns.name);
    assert_eq!(v.accept_queue, accept_queue, "{}: {v:?}", ns.name);
    assert_eq!(v.time_wait, time_wait, "{}: {v:?}", ns.name);
    assert!(v.tx_queue > 1 << 20, "{}: {v:?}", ns.name);
    assert!(v.rx_queue > 1 << 20, "{}: {v:?}", ns.name);
}

// ---- The tests ----

/// The BPF path and the sock_diag path, scraped in the same rounds, both equal ss in every
/// namespace: one older than the agents (swept) that gets more sockets afterwards (tagged by
/// the tracepoint), one made after the agents had swept it empty (tracepoint only), one
/// deleted while they run (its series go at the next scrape), and a new one under the deleted
/// one's name once the kernel freed it (nothing of the old one shows).
#[test]
fn bpf_path_equals_ss_and_sock_diag_in_every_namespace() {
    require_root();
    let files = Files::new();

    // Before the agents: only the sweep can tag these sockets.
    let ns_pre = Netns::new("nxka");
    let _veth_pre = Veth::new(&ns_pre, "10.209.1.1/30", "10.209.1.2/30");
    let scene_pre = Scene::start(&files, &ns_pre, 7100, Some("10.209.1.2"));
    let ns_gone = Netns::new("nxkg");
    let veth_gone = Veth::new(&ns_gone, "10.209.3.1/30", "10.209.3.2/30");
    let scene_gone = Scene::start(&files, &ns_gone, 7100, Some("10.209.3.2"));

    let (bpf, bpf_path) = bpf_agent(
        &files,
        "bpf_path_equals_ss_and_sock_diag_in_every_namespace",
    );
    let diag = agent(&files, "sources:\n  socket_path: sock_diag\n");
    let agents = [
        Running {
            path: bpf_path,
            agent: &bpf,
        },
        Running {
            path: "sock_diag",
            agent: &diag,
        },
    ];

    // After: a namespace both agents have seen (and swept) empty, then its sockets, which only
    // the tracepoint can tag; and more sockets in the old namespace.
    let ns_post = Netns::new("nxkb");
    let _veth_post = Veth::new(&ns_post, "10.209.2.1/30", "10.209.2.2/30");
    wait_seen(&agents, &ns_post);
    let scene_post = Scene::start(&files, &ns_post, 7100, Some("10.209.2.2"));
    let scene_pre_late = Scene::start(&files, &ns_pre, 7200, None);
    for ns in [&ns_pre, &ns_post, &ns_gone] {
        time_wait(&files, ns);
    }
    let tw = TIME_WAIT_V4 + TIME_WAIT_V6;

    let values = settle(
        &agents,
        &[&ns_pre, &ns_post, &ns_gone],
        Duration::from_secs(45),
    );
    assert_scene(
        &ns_pre,
        &values[0],
        scene_pre.established + scene_pre_late.established,
        scene_pre.accept_queue + scene_pre_late.accept_queue,
        tw,
    );
    assert_scene(
        &ns_post,
        &values[1],
        scene_post.established,
        scene_post.accept_queue,
        tw,
    );
    assert_scene(
        &ns_gone,
        &values[2],
        scene_gone.established,
        scene_gone.accept_queue,
        tw,
    );

    // Deleted while the agents run: gone from the next scrape of both.
    let gone = ns_gone.name.clone();
    let gone_inode = ns_gone.inode();
    drop(scene_gone);
    drop(ns_gone);
    assert_gone(&agents, &gone);
    // The kernel frees the namespace (its veth goes with it): nothing holds it any more.
    let freed = poll(Duration::from_secs(30), || {
        (!output(&["ip", "link", "show", "dev", &veth_gone.host])
            .status
            .success())
        .then_some(())
    });
    assert!(
        freed.is_some(),
        "namespace {gone} is still alive after its deletion (its veth {} exists)",
        veth_gone.host
    );

    // The same name again (and, when the kernel hands it out again, the same inode): empty at
    // first, then a scene of its own; nothing of the old namespace shows.
    run(&["ip", "netns", "add", &gone]);
    let ns_new = Netns { name: gone };
    ns_new.run(&["ip", "link", "set", "lo", "up"]);
    eprintln!(
        "reused name {}: inode {} (the deleted namespace's was {gone_inode})",
        ns_new.name,
        ns_new.inode()
    );
    let _veth_new = Veth::new(&ns_new, "10.209.4.1/30", "10.209.4.2/30");
    let values = settle(&agents, &[&ns_new], Duration::from_secs(45));
    assert_eq!(values[0], Sockets::default(), "{}", ns_new.name);
    let scene_new = Scene::start(&files, &ns_new, 7300, Some("10.209.4.2"));
    time_wait(&files, &ns_new);
    let values = settle(
        &agents,
        &[&ns_pre, &ns_post, &ns_new],
        Duration::from_secs(45),
    );
    assert_scene(
        &ns_new,
        &values[2],
        scene_new.established,
        scene_new.accept_queue,
        tw,
    );
}

/// The sock_diag path when configured, and when the BPF path cannot load (no kernel BTF at
/// the configured path) under `auto`: both say so in the info metric and equal ss. Forced to
/// `bpf` without BTF, tcpsummary and sockbacklog fail (and leave their series out) while every
/// other collector succeeds.
#[test]
fn sock_diag_when_configured_or_when_bpf_cannot_load() {
    require_root();
    let files = Files::new();
    let ns = Netns::new("nxkf");
    let _veth = Veth::new(&ns, "10.209.5.1/30", "10.209.5.2/30");
    let scene = Scene::start(&files, &ns, 7100, Some("10.209.5.2"));

    let configured = agent(&files, "sources:\n  socket_path: sock_diag\n");
    let no_btf = "sources:\n  btf_path: /nonexistent\n  socket_path:";
    let auto = agent(&files, &format!("{no_btf} auto\n"));
    let forced = agent(&files, &format!("{no_btf} bpf\n"));
    let agents = [
        Running {
            path: "sock_diag",
            agent: &configured,
        },
        Running {
            path: "sock_diag",
            agent: &auto,
        },
    ];
    time_wait(&files, &ns);
    let values = settle(&agents, &[&ns], Duration::from_secs(45));
    assert_scene(
        &ns,
        &values[0],
        scene.established,
        scene.accept_queue,
        TIME_WAIT_V4 + TIME_WAIT_V6,
    );

    let s = forced.scrape();
    let success = s.find(
        "netexporter_scrape_collector_success",
        &[("k8s_node", NODE)],
    );
    let collectors: Vec<&str> = success
        .iter()
        .filter_map(|x| x.labels.get("collector").map(String::as_str))
        .collect();
    for c in [
        "netns",
        "tcp",
        "sock",
        "packetloss",
        "tcpsummary",
        "sockbacklog",
    ] {
        assert!(
            collectors.contains(&c),
            "no collector_success for {c}: {collectors:?}"
        );
    }
    for x in &success {
        let c = x.labels.get("collector").map(String::as_str).unwrap_or("");
        let want = if c == "tcpsummary" || c == "sockbacklog" {
            0.0
        } else {
            1.0
        };
        assert_eq!(
            x.value,
            want,
            "collector {c} with socket_path bpf and no BTF; agent log:\n{}",
            forced.log_text()
        );
    }
    let left: Vec<String> = s
        .samples
        .iter()
        .filter(|x| {
            x.name.starts_with("netexporter_tcpsummary_")
                || x.name == "netexporter_sockbacklog_recvq"
        })
        .map(|x| format!("{} {:?}", x.name, x.labels))
        .collect();
    assert!(
        left.is_empty(),
        "failed collectors still report series:\n{}",
        left.join("\n")
    );
}

/// A connection closed by one side only: that side, orphaned, waits in FIN-WAIT-2 (for
/// `tcp_fin_timeout`, 60 s) as a timewait socket whose sub-state is FIN_WAIT2, which
/// /proc/net/sockstat's `tw` counts. ss (and sock_diag) shows it as FIN-WAIT-2, not TIME-WAIT,
/// so neither path may count it as TIME-WAIT beside the real ones made alongside.
#[test]
fn orphaned_fin_wait2_is_not_time_wait() {
    require_root();
    let files = Files::new();
    let ns = Netns::new("nxkh");
    let fin_timeout = ns.run(&["cat", "/proc/sys/net/ipv4/tcp_fin_timeout"]);
    assert_eq!(
        fin_timeout.trim(),
        "60",
        "tcp_fin_timeout of a new namespace"
    );
    let (bpf, bpf_path) = bpf_agent(&files, "orphaned_fin_wait2_is_not_time_wait");
    let diag = agent(&files, "sources:\n  socket_path: sock_diag\n");
    let agents = [
        Running {
            path: bpf_path,
            agent: &bpf,
        },
        Running {
            path: "sock_diag",
            agent: &diag,
        },
    ];

    let ready = files.marker();
    let mut half = ns.spawn(&["python3", &files.path("half.py"), &ready.to_string_lossy()]);
    wait_ready(&mut half, &ready, "half-closed connection");
    time_wait(&files, &ns);
    // Well within the 60 s the orphan lives.
    let values = settle(&agents, &[&ns], Duration::from_secs(20));
    let (fin_wait2, _, _) = ss_sums(&ns.run(&["ss", "-tanH", "state", "fin-wait-2"]), 0);
    assert_eq!(
        fin_wait2, 1,
        "the orphan left FIN-WAIT-2 before the comparison"
    );
    assert_eq!(
        values[0].time_wait,
        TIME_WAIT_V4 + TIME_WAIT_V6,
        "{values:?}"
    );
}

// ---- Scripts ----

/// Shared by every script.
const COMMON: &str = r#"
import errno, fcntl, signal, socket, struct, subprocess, sys, termios, time

SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
keep = []

def until(cond, what, limit=60):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            sys.exit("%s: timed out waiting for %s" % (sys.argv[0], what))
        time.sleep(0.05)

def out(*cmd):
    return subprocess.run(list(cmd), capture_output=True, text=True, check=True).stdout

def accept_queue(port, prefix=()):
    text = out(*prefix, "ss", "-tlnH", "sport = :%d" % port)
    return sum(int(line.split()[1]) for line in text.splitlines() if line.strip())

def outq(s):
    return struct.unpack("i", fcntl.ioctl(s, termios.TIOCOUTQ, b"\0" * 4))[0]

def inq(s):
    return struct.unpack("i", fcntl.ioctl(s, termios.FIONREAD, b"\0" * 4))[0]

def hold_still(socks):
    # Zero-window probes can still move a few bytes: wait until the queues of every socket
    # held still for a second.
    last, still = None, 0
    deadline = time.monotonic() + 60
    while still < 10:
        if time.monotonic() > deadline:
            sys.exit("%s: queues never held still" % sys.argv[0])
        now = [(outq(s), inq(s)) for s in socks]
        still = still + 1 if now == last else 0
        last = now
        time.sleep(0.1)

def fill(socks):
    # Every socket writes (non-blocking, 4 MiB send buffers) until its send buffer is full;
    # nobody ever reads.
    chunk = b"x" * 65536
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 << 20)
        s.setblocking(False)
    full = set()
    while len(full) < len(socks):
        for i, s in enumerate(socks):
            if i in full:
                continue
            try:
                s.send(chunk)
            except BlockingIOError:
                full.add(i)
    hold_still(socks)

def extra_clients(family, addr, port, n=2):
    # Their SYNs are dropped while the accept queue is full: they stay in SYN-SENT.
    for _ in range(n):
        s = socket.socket(family)
        s.setblocking(False)
        err = s.connect_ex((addr, port))
        if err != errno.EINPROGRESS:
            sys.exit("connect to a full accept queue: %s" % errno.errorcode.get(err, err))
        keep.append(s)

def forever():
    while True:
        signal.pause()
"#;

/// Inside a namespace: full accept queues (IPv4 and IPv6), a bulk pair per family with
/// megabytes queued both ways, a pair per family with a few unread bytes, and optionally two
/// listeners on the veth address for `host.py` (one to fill, one whose never-accepted child
/// receives the host's bulk bytes).
const SCENE: &str = r#"
ready, b4, b6, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
veth, bv = (sys.argv[5], int(sys.argv[6])) if len(sys.argv) > 6 else (None, 0)
V4, V6 = (socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")

def listener(fam, port, backlog, rcvbuf=None):
    family, addr = fam
    l = socket.socket(family)
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        l.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    l.bind((addr, port))
    l.listen(backlog)
    keep.append(l)
    return l

def full_queue(fam, port, backlog):
    family, addr = fam
    listener(fam, port, backlog)
    # backlog + 1 connections fit in a Linux accept queue.
    for _ in range(backlog + 1):
        keep.append(socket.create_connection((addr, port), timeout=10))
    until(lambda: accept_queue(port) == backlog + 1, "the accept queue of port %d" % port)
    extra_clients(family, addr, port)

def pair(fam, port, rcvbuf=None):
    family, addr = fam
    l = listener(fam, port, 8, rcvbuf)
    c = socket.socket(family)
    if rcvbuf:
        c.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    c.settimeout(10)
    c.connect((addr, port))
    a, _ = l.accept()
    keep.extend([c, a])
    return c, a

full_queue(V4, base, b4)
full_queue(V6, base + 1, b6)
bulk = list(pair(V4, base + 2, 1 << 20)) + list(pair(V6, base + 3, 1 << 20))
fill(bulk)
c4, a4 = pair(V4, base + 4)
c4.sendall(b"y" * 1000)
c6, a6 = pair(V6, base + 5)
c6.sendall(b"y" * 2000)
until(lambda: (inq(a4), inq(a6), outq(c4), outq(c6)) == (1000, 2000, 0, 0), "the unread bytes")
if veth:
    listener((socket.AF_INET, veth), base + 10, bv)
    listener((socket.AF_INET, veth), base + 11, 4)
open(ready, "w").close()
forever()
"#;

/// In the host's namespace: fills the namespace's veth listener's accept queue (and knocks
/// twice more), and writes megabytes to the other one's never-accepted child.
const HOST: &str = r#"
ready, ns, addr = sys.argv[1], sys.argv[2], sys.argv[3]
full_port, backlog, bulk_port = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
in_ns = ("ip", "netns", "exec", ns)
for _ in range(backlog + 1):
    keep.append(socket.create_connection((addr, full_port), timeout=10))
until(lambda: accept_queue(full_port, in_ns) == backlog + 1, "the veth accept queue")
extra_clients(socket.AF_INET, addr, full_port)
c = socket.create_connection((addr, bulk_port), timeout=10)
keep.append(c)
until(lambda: accept_queue(bulk_port, in_ns) == 1, "the bulk connection in the accept queue")
fill([c])
open(ready, "w").close()
forever()
"#;

/// Makes TIME-WAIT sockets (IPv4, IPv6) and exits once ss shows all of them in TIME-WAIT.
const TW: &str = r#"
n4, n6 = int(sys.argv[1]), int(sys.argv[2])
ports = []
for family, addr, n in ((socket.AF_INET, "127.0.0.1", n4), (socket.AF_INET6, "::1", n6)):
    for _ in range(n):
        l = socket.socket(family)
        l.bind((addr, 0))
        l.listen(1)
        c = socket.create_connection(l.getsockname()[:2], timeout=10)
        a, _ = l.accept()
        ports.append(c.getsockname()[1])
        # The client closes first, the server answers with its own FIN: the client's side
        # ends in TIME-WAIT.
        c.close()
        a.settimeout(10)
        if a.recv(1) != b"":
            sys.exit("tw: data instead of the end of the stream")
        a.close()
        l.close()

def all_in_time_wait():
    text = out("ss", "-tanH", "state", "time-wait")
    local = {line.split()[2].rsplit(":", 1)[1] for line in text.splitlines() if line.strip()}
    return all(str(p) in local for p in ports)

until(all_in_time_wait, "the TIME-WAIT sockets")
"#;

/// A connection the client closes and the server never does: the client's side, orphaned,
/// waits in FIN-WAIT-2; the server's in CLOSE-WAIT.
const HALF: &str = r#"
ready = sys.argv[1]
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(1)
c = socket.create_connection(l.getsockname(), timeout=10)
a, _ = l.accept()
port = c.getsockname()[1]
c.close()
keep.extend([l, a])

def orphaned():
    text = out("ss", "-tanH", "state", "fin-wait-2")
    return any(line.split()[2].endswith(":%d" % port) for line in text.splitlines() if line.strip())

until(orphaned, "the orphan in FIN-WAIT-2")
open(ready, "w").close()
forever()
"#;

/// On the sock_diag path a namespace whose TCP sockets in use are all listeners (sockstat's
/// `inuse` counts them) is not dumped: nothing of it is in the node's established hash, and
/// the LISTEN-only dump that says so walks the listening hash alone. Its counts stay what ss
/// shows: none while it only listens (an IPv4 and an IPv6 listener), the connection as soon as
/// it holds one.
#[test]
fn a_namespace_that_only_listens_needs_no_established_dump_and_its_connections_still_count() {
    require_root();
    let files = Files::new();
    let ns = Netns::new("slst");
    let diag = agent(&files, "sources:\n  socket_path: sock_diag\n");
    let running = [Running {
        path: "sock_diag",
        agent: &diag,
    }];
    let (ready, go, connected) = (files.marker(), files.marker(), files.marker());
    let script = r#"
import os, socket, sys, time
ready, go, connected = sys.argv[1:4]
l4 = socket.socket(); l4.bind(("127.0.0.1", 7001)); l4.listen(4)
l6 = socket.socket(socket.AF_INET6); l6.bind(("::1", 7002)); l6.listen(4)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.05)
c = socket.create_connection(("127.0.0.1", 7001)); a, _ = l4.accept()
open(connected, "w").close()
time.sleep(600)
"#;
    let paths = [&ready, &go, &connected].map(|p| p.to_string_lossy().into_owned());
    let mut server = ns.spawn(&["python3", "-c", script, &paths[0], &paths[1], &paths[2]]);
    wait_ready(&mut server, &ready, "listeners");
    // The case the shortcut is for, as the kernel counts it: every socket in use a listener.
    let inuse = |file: &str, prefix: &str| -> String {
        let text = ns.run(&["cat", file]);
        let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or("");
        line.split_whitespace().nth(2).unwrap_or("").to_string()
    };
    assert_eq!(inuse("/proc/net/sockstat", "TCP:"), "1");
    assert_eq!(inuse("/proc/net/sockstat6", "TCP6:"), "1");
    let only_listening = settle(&running, &[&ns], Duration::from_secs(30));
    assert_eq!(only_listening[0].established, 0, "{only_listening:?}");

    std::fs::write(&go, "").expect("go");
    wait_ready(&mut server, &connected, "the connection");
    let connected = settle(&running, &[&ns], Duration::from_secs(30));
    assert_eq!(connected[0].established, 2, "{connected:?}");
}
