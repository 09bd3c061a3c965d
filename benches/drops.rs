//! `make bench` (drops): what the drop counter costs.
//! - Per event: the program's run time over its run count, from the kernel's BPF statistics
//!   (`bpf_stats_enabled`, on while this runs).
//! - Throughput: a pure-drop UDP flood (datagrams to a closed port on loopback, each one a
//!   NO_SOCKET drop) with and without the program attached, in alternating runs, as a ratio.
//!
//! Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN for the statistics).

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use net_exporter::probes::packetloss::AttachMode;
use net_exporter::probes::packetloss::bpf::DropCounter;

const DATAGRAMS: u32 = 200_000;
const PAIRS: usize = 7;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    println!(
        "drop counter benchmark: {DATAGRAMS} datagrams to a closed port per run, {PAIRS} alternating pairs"
    );
    println!(
        "{:>16} {:>12} {:>12} {:>9} {:>10}",
        "attach", "off_kpps", "on_kpps", "loss_%", "ns/event"
    );
    for mode in AttachMode::CHAIN {
        let mut off = Vec::new();
        let mut on = Vec::new();
        let counter = match DropCounter::load(mode, btf) {
            Ok(c) => c,
            Err(e) => {
                println!("{:>16} unavailable: {e:#}", mode.name());
                continue;
            }
        };
        // Throughput with the statistics off: their timing would only burden the "on" arm.
        drop(counter);
        for _ in 0..PAIRS {
            off.push(flood());
            let counter = DropCounter::load(mode, btf).expect("loaded a moment ago");
            on.push(flood());
            drop(counter);
        }
        // Per-event cost, with the statistics on for this run only.
        let per_event = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .ok()
            .and_then(|_stats| {
                let counter = DropCounter::load(mode, btf).ok()?;
                let (t0, n0) = counter.run_stats()?;
                flood();
                let (t1, n1) = counter.run_stats()?;
                (n1 > n0).then(|| (t1 - t0).as_nanos() as f64 / (n1 - n0) as f64)
            });
        let (off, on) = (median(&mut off), median(&mut on));
        let kpps = |d: Duration| f64::from(DATAGRAMS) / d.as_secs_f64() / 1000.0;
        println!(
            "{:>16} {:>12.0} {:>12.0} {:>9.1} {:>10}",
            mode.name(),
            kpps(off),
            kpps(on),
            (1.0 - kpps(on) / kpps(off)) * 100.0,
            per_event.map_or_else(|| "-".to_string(), |n| format!("{n:.0}"))
        );
    }
    println!(
        "loss_%: throughput lost with the program attached (medians of alternating runs, bpf_stats off);"
    );
    println!(
        "ns/event: run_time/run_cnt from bpf_stats (its own timing, ~50 ns here, is included)."
    );
}

/// Sends `DATAGRAMS` datagrams to a closed port on loopback; returns the elapsed time.
fn flood() -> Duration {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // Port 9 (discard) with nothing listening: every datagram is a NO_SOCKET drop.
    s.connect("127.0.0.1:9").expect("connect");
    let buf = [0u8; 16];
    let t = Instant::now();
    for _ in 0..DATAGRAMS {
        // ICMP port-unreachable errors come back as ECONNREFUSED on a connected socket.
        let _ = s.send(&buf);
    }
    t.elapsed()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
