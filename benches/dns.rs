//! `make bench` (dns): what the DNS counter costs the traffic it sees, as ratios of alternating
//! runs with its programs attached and detached (medians of `PAIRS` pairs), between two
//! network namespaces joined by a veth (a "Pod" and its resolver or peer):
//! - non-DNS traffic through the Pod's veth: bulk TCP (MiB/s, GSO segments: one program run per
//!   64 KiB or so) and small UDP datagrams (packets/s: a program run per datagram), what the
//!   programs see of a Pod's traffic and leave after a few loads and compares;
//! - DNS queries per second: one client asking a resolver one query at a time (a program run
//!   per query and per answer, each a map update).
//!
//! Then the programs' own cost per run, from the kernel's statistics (bpf_stats).
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN: it makes namespaces and a veth).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use net_exporter::probes::dns::bpf::DnsCounter;

#[path = "common/ratios.rs"]
mod ratios;
use ratios::Ratios;

const BULK_BYTES: usize = 256 << 20;
const DATAGRAMS: u32 = 200_000;
const QUERIES: u32 = 20_000;
const PAIRS: usize = 7;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let cgroup = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .map(PathBuf::from)
        .into_iter()
        .find(|d| d.join("cgroup.controllers").exists());
    let Some(cgroup) = cgroup else {
        println!("DNS counter benchmark: unavailable: no cgroup v2 root under /sys/fs/cgroup");
        return;
    };
    let timeout = Duration::from_secs(5);
    if let Err(e) = DnsCounter::load(&cgroup, timeout) {
        println!("DNS counter benchmark: unavailable: {e:#}");
        return;
    }
    let pair = Pair::new();
    println!(
        "DNS counter benchmark: through a veth between two namespaces, {} MiB bulk TCP, {DATAGRAMS} UDP datagrams, {QUERIES} DNS queries per run, {PAIRS} alternating pairs",
        BULK_BYTES >> 20
    );
    let mut bulk = Ratios::default();
    let mut udp = Ratios::default();
    let mut dns = Ratios::default();
    for i in 0..PAIRS {
        let arm = |on: bool| {
            let counter = on.then(|| DnsCounter::load(&cgroup, timeout).expect("loaded before"));
            let r = (pair.bulk(), pair.datagrams(), pair.queries());
            drop(counter);
            r
        };
        let (off, on, again) = ratios::pair(i, arm);
        bulk.add(off.0, on.0, again.0);
        udp.add(off.1, on.1, again.1);
        dns.add(off.2, on.2, again.2);
    }
    ratios::header();
    bulk.print("bulk TCP MiB/s", ">= 0.99");
    udp.print("UDP datagrams/s", ">= 0.99");
    dns.print("DNS queries/s", ">= 0.98");
    println!(
        "on/off: median of the per-pair ratios (attached / detached); off/off: two detached runs of the same pair (the noise)."
    );

    // Per run, from the kernel's statistics: robust where the ratios drown in the noise.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    match (&stats, DnsCounter::load(&cgroup, timeout)) {
        (Ok(_), Ok(counter)) => {
            for (what, run) in [
                (
                    "UDP datagram (not DNS)",
                    &(|| pair.datagrams()) as &dyn Fn() -> f64,
                ),
                ("DNS query and answer", &|| pair.queries()),
            ] {
                let before = counter.program_stats();
                let rate = run();
                let after = counter.program_stats();
                let (runs, ns) = after.iter().fold((0u64, 0f64), |(r, t), (name, at, an)| {
                    match before.iter().find(|(b, _, _)| b == name) {
                        Some((_, bt, bn)) => (r + (an - bn), t + (*at - *bt).as_nanos() as f64),
                        None => (r, t),
                    }
                });
                let events = if what.starts_with("UDP") {
                    DATAGRAMS
                } else {
                    QUERIES
                };
                let per_event = ns / f64::from(events);
                println!(
                    "per {what} (bpf_stats, their own timing included): {:.1} program runs, {:.0} ns per run, {per_event:.0} ns, {:.2} % of its time",
                    runs as f64 / f64::from(events),
                    ns / runs.max(1) as f64,
                    per_event / (1e9 / rate) * 100.0
                );
            }
        }
        (Err(e), _) => println!("per run: bpf_stats unavailable: {e}"),
        (_, Err(e)) => println!("per run: {e:#}"),
    }
}

/// Two namespaces joined by a veth: the client's at `CLIENT`, the server's at `SERVER`.
/// Removed when dropped.
struct Pair {
    names: [String; 2],
}

impl Pair {
    fn new() -> Self {
        let tag = std::process::id() % 10_000;
        let names = [format!("nbdnsc{tag}"), format!("nbdnss{tag}")];
        let pair = Self { names };
        let [c, s] = &pair.names;
        for ns in [c, s] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link", "add", "eth0", "netns", c, "type", "veth", "peer", "name", "eth0", "netns", s,
        ]);
        for (ns, addr) in [(c, CLIENT), (s, SERVER)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        pair
    }

    /// Runs `f` on a thread inside namespace `i` (0: the client's, 1: the server's).
    fn within<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.names[i]);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// One TCP connection carrying `BULK_BYTES` from the client to the server; MiB/s.
    fn bulk(&self) -> f64 {
        let listener = self
            .within(1, || TcpListener::bind((SERVER, 0)).expect("bind"))
            .join()
            .expect("listener");
        let addr = listener.local_addr().expect("local addr");
        let sink = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0;
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got += n;
            }
            got
        });
        let elapsed = self
            .within(0, move || {
                let chunk = vec![1u8; 1 << 20];
                let t = Instant::now();
                let mut c = TcpStream::connect(addr).expect("connect");
                for _ in 0..BULK_BYTES / chunk.len() {
                    c.write_all(&chunk).expect("write");
                }
                drop(c);
                t
            })
            .join()
            .expect("client");
        let got = sink.join().expect("sink");
        assert_eq!(got, BULK_BYTES, "the sink got everything");
        (BULK_BYTES >> 20) as f64 / elapsed.elapsed().as_secs_f64()
    }

    /// `DATAGRAMS` 64-byte UDP datagrams from the client, each answered by the server before
    /// the next (no loss: a datagram dropped by a full buffer would time the benchmark, not the
    /// programs); datagrams/s.
    fn datagrams(&self) -> f64 {
        self.ping_pong(9000, DATAGRAMS, &[0u8; 64])
    }

    /// `QUERIES` DNS queries (an A question) to port 53, each answered before the next;
    /// queries/s.
    fn queries(&self) -> f64 {
        let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["api", "shop", "svc", "cluster", "local"] {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        self.ping_pong(53, QUERIES, &query)
    }

    /// `n` exchanges of `message` with a server on `port` that answers each with the same
    /// bytes, the QR bit set (a DNS answer to a query); exchanges/s.
    fn ping_pong(&self, port: u16, n: u32, message: &[u8]) -> f64 {
        let server = self
            .within(1, move || UdpSocket::bind((SERVER, port)).expect("bind"))
            .join()
            .expect("server");
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            for _ in 0..n {
                let Ok((len, peer)) = server.recv_from(&mut buf) else {
                    return;
                };
                if len > 2 {
                    buf[2] |= 0x80;
                }
                let _ = server.send_to(&buf[..len], peer);
            }
        });
        let message = message.to_vec();
        let elapsed = self
            .within(0, move || {
                let c = UdpSocket::bind((CLIENT, 0)).expect("bind");
                c.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let to = SocketAddr::from((SERVER, port));
                let mut buf = [0u8; 512];
                let t = Instant::now();
                for _ in 0..n {
                    c.send_to(&message, to).expect("send");
                    c.recv(&mut buf).expect("answer");
                }
                t.elapsed()
            })
            .join()
            .expect("client");
        let _ = echo.join();
        f64::from(n) / elapsed.as_secs_f64()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {}", args.join(" "));
}
