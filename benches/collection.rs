//! `make bench`: what a scrape costs against the raw cost of the kernel reads it needs.
//!
//! For 10, 100 and 250 busy network namespaces (each with a veth, a listener with one
//! connection waiting in its accept queue and two established connections), prints:
//! - the agent's (release binary) median scrape latency and CPU per scrape;
//! - the raw floor: the same /proc files and netlink dumps read once, single-threaded, from
//!   sockets opened beforehand, with no parsing or encoding, in this process;
//! - their ratios (latency / floor, CPU / floor), and the agent's RSS.
//!
//! Figures are ratios against a floor measured in the same run: the machines are noisy.
//! Needs root. Everything it creates is removed at the end (and on panic, by guards).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use net_exporter::probes::tcpsummary;
use net_exporter::sources::TargetSources;
use net_exporter::sources::netns::{NetFile, NetnsSession};
use net_exporter::sources::socket_storage::SocketStorage;
use netlink_packet_route::AddressFamily;
use netlink_packet_sock_diag::inet::StateFlags;

const SIZES: [usize; 3] = [10, 100, 250];
const SCRAPES: usize = 20;
const FLOOR_RUNS: usize = 20;

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it (and
    // with --list when listing): only a real benchmark run builds the namespaces.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    assert!(
        is_root(),
        "the benchmark creates network namespaces: run it as root"
    );
    let tag = format!("nb{}", std::process::id() % 1000);
    let mut world = World {
        tag,
        count: 0,
        sockets: Vec::new(),
    };
    println!(
        "net-exporter collection benchmark ({} CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "netns",
        "path",
        "scrape_ms",
        "cpu_ms",
        "floor_ms",
        "series",
        "lat/flr",
        "cpu/flr",
        "rss_mib"
    );
    let mut socket_rows = Vec::new();
    for n in SIZES {
        world.grow_to(n);
        let floor = floor(&world);
        for path in ["bpf", "sock_diag"] {
            let m = measure(path);
            println!(
                "{:>5} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>8.2} {:>8.2} {:>8.1}",
                n,
                path,
                ms(m.scrape),
                ms(m.cpu),
                ms(floor),
                m.series,
                ms(m.scrape) / ms(floor),
                ms(m.cpu) / ms(floor),
                m.rss_kib as f64 / 1024.0
            );
        }
        if n >= 100 {
            socket_rows.push((n, socket_part(&world)));
        }
    }
    println!(
        "scrape_ms: median wall time of {SCRAPES} scrapes; cpu_ms: agent CPU (user+sys) per scrape;"
    );
    println!(
        "floor_ms: median of {FLOOR_RUNS} naive raw reads of the same sources (sock_diag dumps), one thread, no parsing."
    );
    println!();
    println!("socket summaries alone, every namespace (median of {FLOOR_RUNS}):");
    println!(
        "{:>5} {:>13} {:>9} {:>8}",
        "netns", "sock_diag_ms", "bpf_ms", "ratio"
    );
    for (n, (diag, bpf)) in socket_rows {
        match bpf {
            Some(b) => println!(
                "{:>5} {:>13.3} {:>9.3} {:>8.0}",
                n,
                ms(diag),
                ms(b),
                ms(diag) / ms(b).max(1e-6)
            ),
            None => println!("{:>5} {:>13.3} {:>9} {:>8}", n, ms(diag), "n/a", "-"),
        }
    }
    println!();
    connection_setup();
}

struct Measured {
    scrape: Duration,
    cpu: Duration,
    series: usize,
    rss_kib: u64,
}

/// The agent with the given socket summary path: median scrape, CPU per scrape, RSS.
fn measure(path: &str) -> Measured {
    let config = std::env::temp_dir().join(format!(
        "net-exporter-bench-{}-{path}.yaml",
        std::process::id()
    ));
    std::fs::write(
        &config,
        format!("probes:\n  tcpsummary:\n    socket_path: {path}\n"),
    )
    .expect("write config");
    let agent = Agent::start(&config);
    // Warm-up: the first collection opens every namespace's session (and sweeps them).
    for _ in 0..3 {
        agent.scrape();
    }
    let cpu_before = agent.cpu_time();
    let mut latencies = Vec::with_capacity(SCRAPES);
    let mut series = 0;
    for _ in 0..SCRAPES {
        let t = Instant::now();
        let body = agent.scrape();
        latencies.push(t.elapsed());
        series = body.lines().filter(|l| !l.starts_with('#')).count();
    }
    let cpu = (agent.cpu_time() - cpu_before) / SCRAPES as u32;
    let rss_kib = agent.rss_kib();
    drop(agent);
    let _ = std::fs::remove_file(&config);
    Measured {
        scrape: median(&mut latencies),
        cpu,
        series,
        rss_kib,
    }
}

/// The socket-summary part alone, for every namespace: sock_diag dumps (established and
/// time-wait, both families, plus listeners) against one BPF socket-storage pass.
fn socket_part(world: &World) -> (Duration, Option<Duration>) {
    let procfs = Path::new("/proc");
    let mut sessions: Vec<(NetnsSession, bool)> = vec![(NetnsSession::open_own(procfs), true)];
    for i in 0..world.count {
        let path = format!("/run/netns/{}", world.name(i));
        sessions.push((
            NetnsSession::open_in(Path::new(&path), procfs).expect("session"),
            false,
        ));
    }
    let mut diag = Vec::new();
    for _ in 0..FLOOR_RUNS {
        let t = Instant::now();
        for (session, is_node) in &mut sessions {
            let mut src = TargetSources::new(session, procfs, *is_node);
            for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                let _ = src.tcp_sockets(family, StateFlags::ESTABLISHED | StateFlags::TIME_WAIT);
                let _ = src.tcp_sockets(family, StateFlags::LISTEN);
            }
        }
        diag.push(t.elapsed());
    }
    let bpf = SocketStorage::load(Path::new("/sys/kernel/btf/vmlinux"))
        .ok()
        .map(|mut storage| {
            // Sweep every namespace once (collection 1), then time passes.
            for (i, (session, is_node)) in sessions.iter_mut().enumerate() {
                let mut src = TargetSources::new(session, procfs, *is_node);
                src.inode = i as u64 + 1;
                let _ = storage.summary(src.inode, src.ns_file(), 1);
            }
            let mut runs = Vec::new();
            for c in 0..FLOOR_RUNS as u64 {
                let t = Instant::now();
                let _ = storage.summary(1, None, c + 2);
                runs.push(t.elapsed());
            }
            median(&mut runs)
        });
    (median(&mut diag), bpf)
}

/// Connections per second through loopback with and without the tagging tracepoint, from
/// alternating runs.
fn connection_setup() {
    const CONNS: usize = 3000;
    let run = || {
        let l = TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = l.local_addr().expect("addr");
        let t = Instant::now();
        for _ in 0..CONNS {
            let c = TcpStream::connect(addr).expect("connect");
            let (a, _) = l.accept().expect("accept");
            drop(c);
            drop(a);
        }
        CONNS as f64 / t.elapsed().as_secs_f64()
    };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        off.push(run());
        let storage = SocketStorage::load(Path::new("/sys/kernel/btf/vmlinux"));
        if storage.is_err() {
            println!("connection setup: BPF socket storage unavailable");
            return;
        }
        on.push(run());
        drop(storage);
    }
    off.sort_by(f64::total_cmp);
    on.sort_by(f64::total_cmp);
    let (off, on) = (off[off.len() / 2], on[on.len() / 2]);
    println!(
        "connection setup through loopback: {off:.0}/s without, {on:.0}/s with the tagging tracepoint: {:.1} % fewer",
        (1.0 - on / off) * 100.0
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The benchmark's namespaces and the sockets that keep them busy.
struct World {
    tag: String,
    count: usize,
    sockets: Vec<Vec<std::os::fd::OwnedFd>>,
}

impl World {
    fn name(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn grow_to(&mut self, n: usize) {
        let mut batch = String::new();
        for i in self.count..n {
            let ns = self.name(i);
            batch.push_str(&format!(
                "netns add {ns}\nlink add {ns}h type veth peer name eth0 netns {ns}\nlink set {ns}h up\n"
            ));
        }
        let mut ip = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("ip -batch");
        ip.stdin
            .take()
            .expect("stdin")
            .write_all(batch.as_bytes())
            .expect("write batch");
        assert!(ip.wait().expect("ip").success(), "ip -batch failed");
        for i in self.count..n {
            let ns = self.name(i);
            for dev in ["lo", "eth0"] {
                let ok = Command::new("ip")
                    .args(["-n", &ns, "link", "set", dev, "up"])
                    .status();
                assert!(
                    ok.is_ok_and(|s| s.success()),
                    "ip -n {ns} link set {dev} up"
                );
            }
            let path = format!("/run/netns/{}", self.name(i));
            self.sockets.push(busy_sockets(Path::new(&path)));
        }
        self.count = n;
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.sockets.clear();
        let batch: String = (0..self.count)
            .map(|i| format!("netns del {}\n", self.name(i)))
            .collect();
        if let Ok(mut ip) = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
        {
            if let Some(mut stdin) = ip.stdin.take() {
                let _ = stdin.write_all(batch.as_bytes());
            }
            let _ = ip.wait();
        }
    }
}

/// A listener with one connection waiting in its accept queue and two accepted connections,
/// created inside the namespace by a thread that entered it.
fn busy_sockets(ns: &Path) -> Vec<std::os::fd::OwnedFd> {
    let ns_file = std::fs::File::open(ns).expect("open netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let l = TcpListener::bind("127.0.0.1:8080").expect("listen");
            let c1 = TcpStream::connect("127.0.0.1:8080").expect("connect");
            let c2 = TcpStream::connect("127.0.0.1:8080").expect("connect");
            let (a1, _) = l.accept().expect("accept");
            let (a2, _) = l.accept().expect("accept");
            let waiting = TcpStream::connect("127.0.0.1:8080").expect("connect");
            vec![
                l.into(),
                c1.into(),
                c2.into(),
                a1.into(),
                a2.into(),
                waiting.into(),
            ]
        })
        .join()
        .expect("socket thread")
    })
}

/// The raw reads of one collection, from sessions opened beforehand (as the agent keeps them).
fn floor(world: &World) -> Duration {
    let procfs = Path::new("/proc");
    let mut sessions: Vec<(NetnsSession, bool)> = vec![(NetnsSession::open_own(procfs), true)];
    for i in 0..world.count {
        let path = format!("/run/netns/{}", world.name(i));
        sessions.push((
            NetnsSession::open_in(Path::new(&path), procfs).expect("session"),
            false,
        ));
    }
    let mut runs = Vec::with_capacity(FLOOR_RUNS);
    for _ in 0..FLOOR_RUNS {
        let t = Instant::now();
        let mut bytes = 0usize;
        for (session, is_node) in &mut sessions {
            let is_node = *is_node;
            let mut src = TargetSources::new(session, procfs, is_node);
            for f in NetFile::ALL {
                bytes += src.net_file(f).map_or(0, |v| v.len());
            }
            bytes += src.links().map_or(0, |v| v.len());
            for family in tcpsummary::families_to_dump(&mut src) {
                bytes += src
                    .tcp_sockets(family, StateFlags::ESTABLISHED | StateFlags::TIME_WAIT)
                    .map_or(0, |v| v.len());
            }
            for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                bytes += src
                    .tcp_sockets(family, StateFlags::LISTEN)
                    .map_or(0, |v| v.len());
            }
            if is_node {
                bytes += src.qdiscs().map_or(0, |v| v.len());
                bytes += src.neighbours(AddressFamily::Inet).map_or(0, |v| v.len());
                for f in [
                    "net/softnet_stat",
                    "net/stat/nf_conntrack",
                    "sys/net/netfilter/nf_conntrack_count",
                    "sys/net/netfilter/nf_conntrack_max",
                    "sys/net/ipv4/neigh/default/gc_thresh3",
                    "net/stat/arp_cache",
                ] {
                    bytes += src.node_file(f).map_or(0, |v| v.len());
                }
            }
        }
        runs.push(t.elapsed());
        assert!(bytes > 0);
    }
    median(&mut runs)
}

struct Agent {
    child: Child,
    port: u16,
}

impl Agent {
    fn start(config: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_net-exporter"))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .arg(format!("--config.file={}", config.display()))
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("start agent");
        let agent = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(port, "/readyz").map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "agent not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    fn scrape(&self) -> String {
        let (status, body) = get(self.port, "/metrics").expect("scrape");
        assert_eq!(status, 200);
        body
    }

    /// User + system CPU of the whole process (exited worker threads included).
    fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("stat");
        let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = after_comm
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // Fields 14 and 15 of stat(5) are utime and stime; after ")" they are at 11 and 12.
        let ticks = f[11] + f[12];
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_nanos(ticks * 1_000_000_000 / hz)
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}
