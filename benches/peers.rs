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

/// What the programs cost per connection, from the kernel's statistics.
fn per_connection(btf: &KernelBtf) {
    // What the programs cost per connection, from the kernel's statistics: robust where the
    // ratios above drown in this machine's noise. Their share of a connection's time is the
    // throughput a CPU-bound connection loop loses to them.
    let per_connection = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .ok()
        .and_then(|_stats| {
            let counter = PeerCounter::load(btf, true).ok()?;
            let before = counter.program_stats();
            let (t0, n0) = counter.run_stats();
            let rate = connections_per_second();
            let (t1, n1) = counter.run_stats();
            let after = counter.program_stats();
            let runs = (n1 - n0) as f64 / f64::from(CONNECTIONS);
            let ns = (t1 - t0).as_nanos() as f64 / f64::from(CONNECTIONS);
            let programs: Vec<String> = after
                .iter()
                .filter_map(|(name, t, n)| {
                    let (_, t_before, n_before) = before.iter().find(|(b, _, _)| b == name)?;
                    let runs = n - n_before;
                    (runs > 0).then(|| {
                        let per_event = (*t - *t_before).as_nanos() as f64 / runs as f64;
                        format!("{name} {per_event:.0} ns/event ({runs} runs)")
                    })
                })
                .collect();
            Some((runs, ns, ns / (1e9 / rate), programs))
        });
    match per_connection {
        Some((runs, ns, share, programs)) => {
            println!(
                "per connection (bpf_stats, their own timing included): {runs:.1} program runs, {ns:.0} ns, {:.2} % of the connection's time",
                share * 100.0
            );
            println!("per program: {}", programs.join("; "));
        }
        None => println!("per connection: bpf_stats unavailable"),
    }
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
