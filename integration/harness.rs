//! Test scaffolding: network namespaces, veth pairs, background processes and the agent,
//! each removed by its guard's `Drop` (also when a test fails), plus a scrape parser.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique name (interface names are at most 15 bytes): `<tag><pid%10000>x<n>`.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 10000)
}

pub fn require_root() {
    assert!(
        nix_is_root(),
        "integration tests create network namespaces and must run as root"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Runs a command, panics with its output if it fails.
pub fn run(cmd: &[&str]) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn output(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn sh(script: &str) -> String {
    run(&["sh", "-c", script])
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace.
    pub fn run(&self, cmd: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run(&full)
    }

    pub fn sh(&self, script: &str) -> String {
        self.run(&["sh", "-c", script])
    }

    /// Starts a background process inside the namespace, killed on drop of the guard.
    pub fn spawn(&self, cmd: &[&str]) -> Proc {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        Proc::spawn(&full)
    }

    /// The namespace's inode, as the agent identifies it.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .map(|m| m.ino())
            .unwrap_or(0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A veth pair between the host and a namespace, deleted on drop (deleting one end deletes
/// both).
pub struct Veth {
    pub host: String,
    pub peer: String,
}

impl Veth {
    /// `host_addr`/`peer_addr` in CIDR notation, e.g. `10.200.1.1/30`.
    pub fn new(ns: &Netns, host_addr: &str, peer_addr: &str) -> Self {
        let host = unique("nxh");
        let peer = unique("nxp");
        run(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
        ]);
        let v = Self { host, peer };
        run(&["ip", "link", "set", &v.peer, "netns", &ns.name]);
        run(&["ip", "addr", "add", host_addr, "dev", &v.host]);
        run(&["ip", "link", "set", &v.host, "up"]);
        ns.run(&["ip", "addr", "add", peer_addr, "dev", &v.peer]);
        ns.run(&["ip", "link", "set", &v.peer, "up"]);
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .stderr(Stdio::null())
            .status();
    }
}

/// A background process, killed (with its process group) on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(cmd: &[&str]) -> Self {
        use std::os::unix::process::CommandExt;
        let child = Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self { child }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) with a process group id; no memory is touched.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The agent binary, started with `args` on a free loopback port; killed on drop.
pub struct Agent {
    pub port: u16,
    proc: Proc,
    pub log: std::path::PathBuf,
}

impl Agent {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_custom(args, env, |_| {})
    }

    /// [`Agent::start_with_env`], with `customize` applied to the command before it spawns.
    pub fn start_custom(
        args: &[&str],
        env: &[(&str, &str)],
        customize: impl FnOnce(&mut Command),
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let log = std::env::temp_dir().join(format!("net-exporter-{}.log", unique("agent")));
        let logfile = std::fs::File::create(&log).expect("agent log file");
        let listen = format!("--web.listen-address=127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_net-exporter"));
        cmd.arg(&listen)
            .arg("--node-name=itest-node")
            .args(args)
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("log fd"))
            .stderr(logfile)
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        customize(&mut cmd);
        let child = cmd.spawn().expect("start net-exporter");
        let agent = Self {
            port,
            proc: Proc { child },
            log,
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http_get(self.port, "/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent not ready after 30s; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn scrape(&self) -> Scrape {
        let (status, body) = http_get(self.port, "/metrics").expect("scrape");
        assert_eq!(status, 200, "scrape failed: {body}");
        Scrape::parse(&body)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A minimal HTTP/1.0 GET on loopback (no client library needed for tests).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` response.
#[derive(Debug)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("sample line");
                let (name, labels) = match series.split_once('{') {
                    None => (series.to_string(), BTreeMap::new()),
                    Some((n, rest)) => (n.to_string(), parse_labels(rest.trim_end_matches('}'))),
                };
                Sample {
                    name,
                    labels,
                    value: value.parse().expect("sample value"),
                }
            })
            .collect();
        Self {
            text: text.to_string(),
            samples,
        }
    }

    /// Samples of `name` whose labels include every pair of `want`.
    pub fn find(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The one sample of `name` with exactly these labels beside `k8s_node`.
    pub fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .find(name, want)
            .into_iter()
            .filter(|s| s.labels.len() == want.len() + 1)
            .collect();
        match found.as_slice() {
            [one] => Some(one.value),
            [] => None,
            many => panic!("{name} {want:?}: {} samples", many.len()),
        }
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once("=\"") else {
            break;
        };
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => val.push('\n'),
                    Some((_, c)) => val.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').to_string(), val);
        rest = after[end..].trim_start_matches(',');
    }
    out
}

// ---- Additions for the Prometheus and OTLP tests ----

impl Netns {
    /// Opens `n` listening TCP sockets on 127.0.0.1 inside the namespace (from a short-lived
    /// thread that enters it, so the test process stays where it is). The sockets belong to
    /// the namespace and count in its `/proc/net/sockstat` until the listeners are dropped;
    /// drop them before the `Netns`.
    pub fn tcp_listeners(&self, n: usize) -> Vec<std::net::TcpListener> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            (0..n)
                .map(|_| {
                    std::net::TcpListener::bind("127.0.0.1:0")
                        .unwrap_or_else(|e| panic!("listen in {path}: {e}"))
                })
                .collect()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// `TCP: inuse` of `/proc/net/sockstat` read inside the namespace.
    pub fn sockstat_tcp_inuse(&self) -> u64 {
        let text = self.run(&["cat", "/proc/net/sockstat"]);
        text.lines()
            .find_map(|l| l.strip_prefix("TCP: "))
            .and_then(|rest| {
                let f: Vec<&str> = rest.split_whitespace().collect();
                f.windows(2)
                    .find(|w| w[0] == "inuse")
                    .and_then(|w| w[1].parse().ok())
            })
            .unwrap_or_else(|| panic!("no TCP inuse in sockstat of {}:\n{text}", self.name))
    }
}

/// A loopback TCP port that refuses connections: a socket bound to it but not listening, so
/// that nothing else can take the port while the guard lives. Closed on drop.
pub struct DeadPort {
    pub port: u16,
    _fd: std::os::fd::OwnedFd,
}

impl DeadPort {
    pub fn new() -> Self {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: plain socket(2)/bind(2)/getsockname(2) on a fresh fd that `OwnedFd` then
        // owns; the sockaddr_in is zero-initialised and its size is passed along.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            );
            assert!(rc == 0, "bind: {}", std::io::Error::last_os_error());
            let rc = libc::getsockname(
                fd.as_raw_fd(),
                (&raw mut addr).cast::<libc::sockaddr>(),
                &mut len,
            );
            assert!(rc == 0, "getsockname: {}", std::io::Error::last_os_error());
            Self {
                port: u16::from_be(addr.sin_port),
                _fd: fd,
            }
        }
    }
}

/// Calls `f` every 100 ms until it returns `Some`, for at most `limit`.
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One row of the product spec's metric table (`docs/spec/metrics.tsv`).
#[derive(Debug, Clone)]
pub struct SpecMetric {
    pub probe: String,
    pub name: String,
    /// `counter` or `gauge`, as Prometheus `# TYPE` spells them.
    pub kind: String,
    /// `node`, `pod` or `pod,if_name`.
    pub scope: String,
}

impl SpecMetric {
    /// One series per network namespace.
    pub fn is_pod(&self) -> bool {
        self.scope.split(',').next() == Some("pod")
    }

    /// Extra labels beside `k8s_node` and `netns` on a Pod-scope series.
    pub fn extra_labels(&self) -> Vec<&str> {
        self.scope.split(',').skip(1).collect()
    }
}

/// Probes of the spec that are not implemented yet (tracked by other issues).
pub const SPEC_PENDING_PROBES: &[&str] = &["podip"];

/// Counters beyond the spec whose names an issue fixed without `_total` (like the spec's own).
pub const ISSUE_NAMED_COUNTERS: &[&str] = &["netexporter_packetloss_reason", "netexporter_events"];

/// Every metric of the spec, read at test time from the repository's copy, `docs/spec/metrics.tsv`.
pub fn spec_metrics() -> Vec<SpecMetric> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/spec/metrics.tsv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the spec {}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("spec header").split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("spec has no {name:?} column: {header:?}"))
    };
    let (probe, metric, kind, scope) = (col("probe"), col("metric"), col("kind"), col("scope"));
    let out: Vec<SpecMetric> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let m = SpecMetric {
                probe: f[probe].to_string(),
                name: f[metric].to_string(),
                kind: f[kind].to_string(),
                scope: f[scope].to_string(),
            };
            assert!(
                m.kind == "counter" || m.kind == "gauge",
                "spec kind of {}: {:?}",
                m.name,
                m.kind
            );
            m
        })
        .collect();
    assert!(out.len() > 50, "spec has only {} metrics", out.len());
    out
}

/// The spec's metrics minus [`SPEC_PENDING_PROBES`].
pub fn spec_metrics_implemented() -> Vec<SpecMetric> {
    spec_metrics()
        .into_iter()
        .filter(|m| !SPEC_PENDING_PROBES.contains(&m.probe.as_str()))
        .collect()
}

impl Scrape {
    /// `# TYPE` of every family: name -> `counter`, `gauge`, ...
    pub fn types(&self) -> BTreeMap<String, String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| {
                let (n, k) = l.split_once(' ')?;
                Some((n.to_string(), k.trim().to_string()))
            })
            .collect()
    }

    /// Names of the families that have at least one sample (a histogram's samples, named
    /// `_bucket`, `_sum` and `_count`, are of the family without the suffix).
    pub fn family_names(&self) -> std::collections::BTreeSet<String> {
        let types = self.types();
        self.samples
            .iter()
            .map(|s| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| s.name.strip_suffix(suffix))
                    .find(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                    .unwrap_or(&s.name)
                    .to_string()
            })
            .collect()
    }
}

// ---- Additions for the Kubernetes-mode tests ----

impl Agent {
    /// Like [`Agent::start_with_env`], with the variables of `remove` taken out of the
    /// environment the agent inherits (e.g. `KUBERNETES_SERVICE_HOST`, `KUBECONFIG`).
    pub fn start_without_env(args: &[&str], remove: &[&str]) -> Self {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let log = std::env::temp_dir().join(format!("net-exporter-{}.log", unique("agent")));
        let logfile = std::fs::File::create(&log).expect("agent log file");
        let listen = format!("--web.listen-address=127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_net-exporter"));
        cmd.arg(&listen)
            .arg("--node-name=itest-node")
            .args(args)
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("log fd"))
            .stderr(logfile)
            .process_group(0);
        for k in remove {
            cmd.env_remove(k);
        }
        let child = cmd.spawn().expect("start net-exporter");
        let agent = Self {
            port,
            proc: Proc { child },
            log,
        };
        agent.wait_ready();
        agent
    }
}

// ---- Additions for the checks tests ----

/// A veth pair between two namespaces, each end with the given name and address there (names
/// only need to be unique inside their namespace: `eth0` on both sides is fine). Deleted on
/// drop; deleting either namespace deletes it too.
pub struct NsVeth {
    pub ns_a: String,
    pub a: String,
    pub ns_b: String,
    pub b: String,
}

impl NsVeth {
    /// `a_addr`/`b_addr` in CIDR notation, e.g. `10.77.0.2/24`.
    pub fn new(a_ns: &Netns, a: &str, a_addr: &str, b_ns: &Netns, b: &str, b_addr: &str) -> Self {
        run(&[
            "ip", "link", "add", a, "netns", &a_ns.name, "type", "veth", "peer", "name", b,
            "netns", &b_ns.name,
        ]);
        let v = Self {
            ns_a: a_ns.name.clone(),
            a: a.to_string(),
            ns_b: b_ns.name.clone(),
            b: b.to_string(),
        };
        for (ns, dev, addr) in [(&v.ns_a, a, a_addr), (&v.ns_b, b, b_addr)] {
            run(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        v
    }
}

impl Drop for NsVeth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.ns_a, "link", "del", &self.a])
            .stderr(Stdio::null())
            .status();
    }
}

impl Netns {
    /// Runs `f` on a short-lived thread inside the namespace (sockets it opens stay there).
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// A minimal HTTP/1.0 GET to `127.0.0.1:port` inside the namespace.
    pub fn http_get(&self, port: u16, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = self.within(move || TcpStream::connect(("127.0.0.1", port)))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }
}

/// Single-quotes `s` for `sh -c`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A `sh -c` script's command that runs `prelude` and then the agent with `args`, inside `ns`
/// (the agent's node: its own namespace) and in a PID namespace of its own with its own /proc,
/// so that the agent sees only the processes started in it (by `prelude`), not the machine's
/// or other tests'. The PID namespace dies with the agent (`--kill-child`: also when the
/// `unshare` parent is killed).
pub fn isolated_agent_command(ns: &Netns, prelude: &str, args: &[String]) -> Command {
    let mut script = String::from(prelude);
    script.push_str("\nexec ip netns exec ");
    script.push_str(&shell_quote(&ns.name));
    script.push(' ');
    script.push_str(&shell_quote(env!("CARGO_BIN_EXE_net-exporter")));
    for a in args {
        script.push(' ');
        script.push_str(&shell_quote(a));
    }
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "sh",
        "-c",
        &script,
    ]);
    cmd
}

/// The agent running in a namespace as its node (see [`isolated_agent_command`]), serving on
/// 127.0.0.1:`port` there; killed on drop. Its stdout and stderr go to `log`.
pub struct NsAgent {
    pub port: u16,
    pub ns: String,
    proc: Proc,
    pub log: std::path::PathBuf,
}

impl NsAgent {
    pub fn start(ns: &Netns, prelude: &str, args: &[String]) -> Self {
        use std::os::unix::process::CommandExt;
        // The namespace is the test's own: nothing else listens in it.
        let port = 9102;
        let log = std::env::temp_dir().join(format!("net-exporter-{}.log", unique("nsagent")));
        let logfile = std::fs::File::create(&log).expect("agent log file");
        let mut all = vec![
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--node-name=itest-node".to_string(),
        ];
        all.extend_from_slice(args);
        let child = isolated_agent_command(ns, prelude, &all)
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("log fd"))
            .stderr(logfile)
            .process_group(0)
            .spawn()
            .expect("start net-exporter in a namespace");
        let mut agent = Self {
            port,
            ns: ns.name.clone(),
            proc: Proc { child },
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = ns.http_get(port, "/readyz") {
                return agent;
            }
            if let Ok(Some(status)) = agent.proc.child.try_wait() {
                panic!("agent exited ({status}); log:\n{}", agent.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent not ready after 30s; log:\n{}", agent.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn scrape(&self, ns: &Netns) -> Scrape {
        let (status, body) = ns.http_get(self.port, "/metrics").expect("scrape");
        assert_eq!(status, 200, "scrape failed: {body}");
        Scrape::parse(&body)
    }
}

impl Drop for NsAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Writes one record to the kernel log.
pub fn kmsg(line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .expect("open /dev/kmsg for writing");
    f.write_all(format!("{line}\n").as_bytes())
        .expect("write /dev/kmsg");
}

// ---- Additions for the operator surfaces tests (dashboards, rules) ----

/// Percent-encodes `s` for a URL query parameter.
pub fn query_param(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Seconds since the epoch, as the Prometheus HTTP API takes times.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A Prometheus server (Debian's, installed by scripts/install-deps.sh) on a free loopback port
/// that scrapes one target every second as `job` and evaluates `rule_files` every second; its
/// config and TSDB live in a temporary directory. Drop kills it (process group), then removes
/// the directory.
pub struct PromServer {
    pub port: u16,
    // Field order is drop order: the process goes before its directory.
    _proc: Proc,
    dir: tempfile::TempDir,
}

impl PromServer {
    pub fn start(job: &str, target_port: u16, rule_files: &[&std::path::Path]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("net-exporter-prom")
            .tempdir()
            .expect("temp dir");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      \
             - targets: ['127.0.0.1:{target_port}']\n"
        );
        if !rule_files.is_empty() {
            config.push_str("rule_files:\n");
            for f in rule_files {
                config.push_str(&format!("  - '{}'\n", f.display()));
            }
        }
        Self::with_config(dir, &config)
    }

    /// Prometheus with `config` (written as prometheus.yml into `dir`, whose TSDB it also
    /// holds), started and ready.
    pub fn with_config(dir: tempfile::TempDir, config: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start prometheus (scripts/install-deps.sh installs it)");
        let prom = Self {
            port,
            _proc: Proc { child },
            dir,
        };
        let ready = poll(Duration::from_secs(30), || {
            matches!(http_get(prom.port, "/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(
            ready.is_some(),
            "prometheus not ready after 30s; log:\n{}",
            prom.log()
        );
        prom
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path_and_query` of the HTTP API: the HTTP status and the JSON body.
    pub fn api(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_get(self.port, path_and_query)
            .unwrap_or_else(|e| panic!("prometheus API {path_and_query}: {e}"));
        let v = serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("prometheus API {path_and_query}: status {status}, not JSON ({e}): {body}")
        });
        (status, v)
    }

    /// `data` of a successful API answer, or the error Prometheus gave (a PromQL parse error is
    /// a 400 with `errorType` `bad_data`).
    fn data(&self, path_and_query: &str) -> Result<serde_json::Value, String> {
        let (status, v) = self.api(path_and_query);
        if status == 200 && v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(format!(
                "status {status}: {} {}",
                v["errorType"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or("")
            ))
        }
    }

    /// An instant query at `time` (seconds since the epoch): its `data` (`resultType`, `result`).
    pub fn query_at(&self, expr: &str, time: f64) -> Result<serde_json::Value, String> {
        self.data(&format!(
            "/api/v1/query?query={}&time={time:.3}",
            query_param(expr)
        ))
    }

    /// A range query from `start` to `end` every `step` seconds: its `data`.
    pub fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<serde_json::Value, String> {
        self.data(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            query_param(expr)
        ))
    }

    /// The values of `label` on the series that `selector` matches between `start` and `end`
    /// (what Grafana's `label_values(selector, label)` asks).
    pub fn label_values(
        &self,
        label: &str,
        selector: &str,
        start: f64,
        end: f64,
    ) -> Result<Vec<String>, String> {
        let data = self.data(&format!(
            "/api/v1/label/{label}/values?match%5B%5D={}&start={start:.3}&end={end:.3}",
            query_param(selector)
        ))?;
        Ok(data
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Agent {
    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// (open file descriptors, threads, RSS in KiB) of the agent's process.
    pub fn figures(&self) -> (usize, usize, u64) {
        proc_figures(self.pid())
    }
}

/// (open file descriptors, threads, RSS in KiB) of process `pid`; 0 for what cannot be read.
pub fn proc_figures(pid: u32) -> (usize, usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (fds, field("Threads:") as usize, field("VmRSS:"))
}

/// (lines, sum of Recv-Q, sum of Send-Q) of `ss -H` output whose queue columns start after
/// `skip` columns.
pub fn ss_sums(text: &str, skip: usize) -> (u64, u64, u64) {
    let mut out = (0, 0, 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<u64> = line
            .split_whitespace()
            .skip(skip)
            .take(2)
            .map(|c| c.parse().unwrap_or_else(|_| panic!("ss line {line:?}")))
            .collect();
        assert_eq!(cols.len(), 2, "ss line {line:?}");
        out.0 += 1;
        out.1 += cols[0];
        out.2 += cols[1];
    }
    out
}

/// What the running kernel does with the socket-summary object's programs, found independently
/// of the agent: `bpftool` (from Debian, installed by `make deps`) loads every program of the
/// committed object. Machines of this kind differ: some refuse every map iterator
/// (`iter/bpf_sk_storage_map`) with EPERM from the verifier, even as root, while `tp_btf` and
/// `iter/tcp` load. Tests of the socket-summary path assert the BPF path where the kernel loads
/// it and the sock_diag fallback where it refuses, and say which one they exercised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketStorageSupport {
    Loads,
    /// The kernel refused a program of the object; bpftool's account of it.
    Refused(String),
}

impl SocketStorageSupport {
    /// The `path` label an agent with `socket_path: auto` reports on this kernel.
    pub fn auto_path(&self) -> &'static str {
        match self {
            Self::Loads => "bpf",
            Self::Refused(_) => "sock_diag",
        }
    }

    /// One line in the test run's output: which path the test exercised, and why. Written to
    /// the process's stderr directly, past the test harness's capture, so that CI's log shows
    /// it for passing tests too.
    pub fn say(&self, test: &str) {
        let line = match self {
            Self::Loads => format!("{test}: socket summaries exercised on the BPF path\n"),
            Self::Refused(why) => format!(
                "{test}: this kernel refuses the BPF socket-summary programs ({why}); \
                 the sock_diag fallback was exercised instead\n"
            ),
        };
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// [`SocketStorageSupport`] of this kernel, found once per test run.
pub fn socket_storage_support() -> SocketStorageSupport {
    static SUPPORT: std::sync::OnceLock<SocketStorageSupport> = std::sync::OnceLock::new();
    SUPPORT
        .get_or_init(|| {
            let object = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/socksummary.bpf.o");
            // bpftool pins what it loaded; a directory of our own on bpffs, removed after.
            let pins = format!("/sys/fs/bpf/{}", unique("nxprobe"));
            let out = output(&["bpftool", "prog", "loadall", object, &pins]);
            let _ = std::fs::remove_dir_all(&pins);
            if out.status.success() {
                return SocketStorageSupport::Loads;
            }
            let log = String::from_utf8_lossy(&out.stderr);
            // libbpf names the program it failed on: "prog 'NAME': BPF program load failed: ERR".
            let refused = log
                .lines()
                .find(|l| l.contains("BPF program load failed"))
                .map(|l| l.trim_start_matches("libbpf: ").trim().to_string());
            match refused {
                Some(line) if line.contains("Operation not permitted") => {
                    SocketStorageSupport::Refused(line)
                }
                _ => panic!(
                    "bpftool could not load {object} for a reason other than the kernel's refusal; \
                     the test cannot tell which socket path to expect:\n{log}"
                ),
            }
        })
        .clone()
}

/// Connection tracking is there (`/proc/net/stat/nf_conntrack`): built in, already loaded, or
/// loaded now with `modprobe` where the kernel has modules (a kernel with it built in has no
/// modules directory at all, and a fresh machine may have no `modprobe`).
pub fn require_conntrack() {
    let stat = std::path::Path::new("/proc/net/stat/nf_conntrack");
    if !stat.exists() {
        let tried = Command::new("modprobe").arg("nf_conntrack").output();
        assert!(
            stat.exists(),
            "connection tracking is not available: no /proc/net/stat/nf_conntrack, and \
             `modprobe nf_conntrack` gave {tried:?}"
        );
    }
}

/// Lines under `checks:` (indented) that turn every check off but those in `keep`.
pub fn checks_off_but(keep: &[&str]) -> String {
    net_exporter::checks::CHECKS
        .iter()
        .filter(|c| !keep.contains(&c.name))
        .map(|c| format!("  {}:\n    enabled: false\n", c.name))
        .collect()
}

// ---- Histograms ----

/// One histogram series as scraped: cumulative bucket counts by bound, sum, count (all zero
/// when the series is absent).
#[derive(Debug, Default)]
pub struct Hist {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Hist {
    /// The series of histogram `metric` whose labels include `want`.
    pub fn read(s: &Scrape, metric: &str, want: &[(&str, &str)]) -> Self {
        let mut buckets: Vec<(f64, u64)> = s
            .find(&format!("{metric}_bucket"), want)
            .iter()
            .map(|b| {
                let le = &b.labels["le"];
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                (le, b.value as u64)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let one = |suffix: &str| {
            let found = s.find(&format!("{metric}{suffix}"), want);
            assert!(found.len() <= 1, "{metric}{suffix} {want:?}: {found:?}");
            found.first().map_or(0.0, |x| x.value)
        };
        Self {
            buckets,
            sum: one("_sum"),
            count: one("_count") as u64,
        }
    }

    /// The values counted in the bucket up to `le` (not cumulative).
    pub fn in_bucket(&self, le: f64) -> u64 {
        let i = self
            .buckets
            .iter()
            .position(|(b, _)| *b == le)
            .expect("bound");
        self.buckets[i].1 - if i == 0 { 0 } else { self.buckets[i - 1].1 }
    }

    /// The upper bound of the bucket that holds `seconds`.
    pub fn bound_of(&self, seconds: f64) -> f64 {
        self.buckets
            .iter()
            .map(|(b, _)| *b)
            .find(|b| seconds <= *b)
            .expect("+Inf holds everything")
    }

    /// Which buckets grew from `before`, and by how much.
    pub fn grown_since(&self, before: &Hist) -> Vec<(f64, u64)> {
        let was = |le: f64| {
            let i = before.buckets.iter().position(|(b, _)| *b == le);
            i.map_or(0, |i| before.in_bucket(before.buckets[i].0))
        };
        self.buckets
            .iter()
            .map(|(le, _)| (*le, self.in_bucket(*le) - was(*le)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// kube-proxy's rule for a ClusterIP Service: `vip:port` translated to `to` (`ADDR:PORT`), in
/// `ns`'s OUTPUT chain (where the node's own connections are translated). Removed with `ns`.
pub fn dnat(ns: &Netns, vip: &str, port: u16, to: &str) {
    dnat_proto(ns, "tcp", vip, port, to);
}

/// [`dnat`] for `proto` (tcp or udp).
pub fn dnat_proto(ns: &Netns, proto: &str, vip: &str, port: u16, to: &str) {
    let port = port.to_string();
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        vip,
        "-p",
        proto,
        "--dport",
        &port,
        "-j",
        "DNAT",
        "--to-destination",
        to,
    ]);
}

/// `net-exporter diagnose --pod ...` running: started, and waited for until its window began
/// (it says "watching" on stderr), so that what the test does next falls in the window.
pub struct Diagnose {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

impl Diagnose {
    pub fn start(args: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(env!("CARGO_BIN_EXE_net-exporter"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run diagnose");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("watching") {
                    let _ = tx.send(());
                }
                log.push_str(&line);
                log.push('\n');
            }
            log
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("diagnose never started watching");
        Self { child, stderr }
    }

    /// Its report (`--output json`), once it has finished successfully.
    pub fn json(self) -> serde_json::Value {
        let out = self.child.wait_with_output().expect("diagnose output");
        let log = self.stderr.join().expect("stderr reader");
        assert!(out.status.success(), "diagnose failed: {log}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}
