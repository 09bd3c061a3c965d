//! `make bench` (peers): what the peer counter costs the traffic it counts, as ratios of
//! alternating runs with its programs attached and detached (medians of `PAIRS` pairs):
//! - connections per second through loopback: connect, a 1 KiB request, a 1 KiB answer, close
//!   (each connection is four state changes, two per end, and a report at each close);
//! - bulk throughput: one connection carrying `BULK_BYTES` (no event per segment: the
//!   programs run at open, close and retransmit only).
//!
//! The socket-summary path's tagging program shares the `inet_sock_set_state` hook; it is not
//! loaded here (see `benches/collection.rs` for the socket paths).
//!
//! "on" is the default configuration: the translation follower (`net:net_dev_queue`, one run per
//! packet queued) included.
//!
//! Then the cost per connection from the kernel's statistics, beside the floor: programs that do
//! nothing on the same hooks (`-- per-connection` runs only this part).
//!
//! Needs root (CAP_BPF, CAP_PERFMON).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use std::time::Instant;

use net_exporter::probes::peers::bpf::PeerCounter;

#[path = "common/ratios.rs"]
mod ratios;
use net_exporter::sources::kernel_btf::KernelBtf;
use ratios::Ratios;

const CONNECTIONS: u32 = 3_000;
const BULK_BYTES: usize = 512 << 20;
const PAIRS: usize = 7;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let btf = &KernelBtf::new("/sys/kernel/btf/vmlinux".into());
    if let Err(e) = PeerCounter::load(btf, true) {
        println!("peer counter benchmark: unavailable: {e:#}");
        return;
    }
    println!(
        "peer counter benchmark: {CONNECTIONS} connections and {} MiB bulk per run, {PAIRS} alternating pairs",
        BULK_BYTES >> 20
    );
    // `-- per-connection`: only the programs' cost per connection (bpf_stats), a minute
    // instead of the pairs' several.
    if !std::env::args().any(|a| a == "per-connection") {
        ratios_of_pairs(btf);
    }
    per_connection(btf);
}

/// Throughput with the programs attached and detached, in alternating pairs.
fn ratios_of_pairs(btf: &KernelBtf) {
    // Each pair also runs a second detached arm: its ratio to the first (an A/A test) is the
    // noise floor of this machine, printed beside the ratios it qualifies.
    let mut conn = Ratios::default();
    let mut bulk = Ratios::default();
    for i in 0..PAIRS {
        let arm = |on: bool| {
            let counter = on.then(|| PeerCounter::load(btf, true).expect("loaded a moment ago"));
            let r = (connections_per_second(), bulk_mib_per_second());
            drop(counter);
            r
        };
        let (off, on, again) = ratios::pair(i, arm);
        conn.add(off.0, on.0, again.0);
        bulk.add(off.1, on.1, again.1);
    }
    ratios::header();
    conn.print("connections/s", ">= 0.98");
    bulk.print("bulk MiB/s", ">= 0.99");
    println!(
        "on/off: median of the per-pair ratios (attached / detached); off/off: two detached runs of the same pair (the noise)."
    );
}

/// What the programs cost per connection, from the kernel's statistics: robust where the
/// ratios above drown in this machine's noise. Their share of a connection's time is the
/// throughput a CPU-bound connection loop loses to them. The floor (programs that do nothing
/// on the two hooks that fire on every connection) is measured in alternation with them: what
/// the hooks cost before any counting, and what the counting adds (`over floor`), both in the
/// same minutes of this machine's speed.
fn per_connection(btf: &KernelBtf) {
    let Ok(_stats) = aya::sys::enable_stats(aya::sys::Stats::RunTime) else {
        println!("per connection: bpf_stats unavailable");
        return;
    };
    let measure = |counter: PeerCounter| {
        let before = counter.program_stats();
        let rate = connections_per_second();
        let after = counter.program_stats();
        let mut ns = 0.0;
        let mut runs = 0;
        let mut programs = Vec::new();
        for (name, t, n) in &after {
            let Some((_, t0, n0)) = before.iter().find(|(b, _, _)| b == name) else {
                continue;
            };
            if n > n0 {
                let took = (*t - *t0).as_nanos() as f64;
                programs.push(format!(
                    "{name} {:.0} ns/event ({} runs)",
                    took / (n - n0) as f64,
                    n - n0
                ));
                ns += took;
                runs += n - n0;
            }
        }
        let per = f64::from(CONNECTIONS);
        Run {
            runs: runs as f64 / per,
            ns: ns / per,
            // The connection's own time, without the programs': what it costs with none.
            connection_ns: 1e9 / rate - ns / per,
            programs,
        }
    };
    let (mut floor, mut counted) = (Vec::new(), Vec::new());
    let mut last = Vec::new();
    for _ in 0..3 {
        match PeerCounter::load_floor(btf) {
            Ok(c) => floor.push(measure(c)),
            Err(e) => {
                println!("per connection: no floor: {e:#}");
                return;
            }
        }
        let Ok(c) = PeerCounter::load(btf, true) else {
            return;
        };
        let m = measure(c);
        last = m.programs.clone();
        counted.push(m);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let pick = |rows: &[Run], f: fn(&Run) -> f64| median(&mut rows.iter().map(f).collect());
    let connection = pick(&counted, |r| r.connection_ns);
    let (runs, ns) = (pick(&counted, |r| r.runs), pick(&counted, |r| r.ns));
    let (floor_runs, floor_ns) = (pick(&floor, |r| r.runs), pick(&floor, |r| r.ns));
    println!(
        "per connection (bpf_stats, their own timing included; medians of 3 alternating runs; a connection itself {:.1} us):",
        connection / 1e3
    );
    println!(
        "  counter: {runs:.1} program runs, {ns:.0} ns, {:.2} % of the connection's time",
        ns / connection * 100.0
    );
    println!(
        "  floor:   {floor_runs:.1} program runs, {floor_ns:.0} ns, {:.2} % (programs that do nothing on the same hooks)",
        floor_ns / connection * 100.0
    );
    println!(
        "  over floor: {:.0} ns, {:.2} % (what the counting adds)",
        ns - floor_ns,
        (ns - floor_ns) / connection * 100.0
    );
    println!("  per program (last run): {}", last.join("; "));
}

/// One measured run of connections: program runs and their ns per connection, the
/// connection's own ns, and each program's ns per event.
struct Run {
    runs: f64,
    ns: f64,
    connection_ns: f64,
    programs: Vec<String>,
}

/// Connections through loopback, each with a 1 KiB request and a 1 KiB answer, one after the
/// other; connections per second.
fn connections_per_second() -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        for _ in 0..CONNECTIONS {
            let Ok((mut c, _)) = listener.accept() else {
                return;
            };
            if c.read_exact(&mut buf).is_ok() {
                let _ = c.write_all(&buf);
            }
        }
    });
    let request = [7u8; 1024];
    let mut answer = [0u8; 1024];
    let t = Instant::now();
    for _ in 0..CONNECTIONS {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(&request).expect("request");
        c.read_exact(&mut answer).expect("answer");
    }
    let elapsed = t.elapsed();
    let _ = server.join();
    f64::from(CONNECTIONS) / elapsed.as_secs_f64()
}

/// One connection carrying `BULK_BYTES` through loopback; MiB per second.
fn bulk_mib_per_second() -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
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
    let chunk = vec![1u8; 1 << 20];
    let t = Instant::now();
    let mut c = TcpStream::connect(addr).expect("connect");
    for _ in 0..BULK_BYTES / chunk.len() {
        c.write_all(&chunk).expect("write");
    }
    drop(c);
    let got = sink.join().expect("sink");
    let elapsed = t.elapsed();
    assert_eq!(got, BULK_BYTES, "the sink got everything");
    (BULK_BYTES >> 20) as f64 / elapsed.as_secs_f64()
}
