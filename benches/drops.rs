//! `make bench` (drops): what the drop counter costs.
//! - Per event: the program's run time over its run count, from the kernel's BPF statistics
//!   (`bpf_stats_enabled`, on while this runs).
//! - Throughput: a pure-drop UDP flood (datagrams to a closed port on loopback, each one a
//!   NO_SOCKET drop) with and without the program attached, in alternating runs, as a ratio.
//! - The floor: both figures for a program that does nothing on the same tracepoint, so that
//!   what the counting costs is told apart from what attaching anything there costs.
//!
//! Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN for the statistics).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use net_exporter::probes::packetloss::AttachMode;
use net_exporter::probes::packetloss::bpf::DropCounter;
use net_exporter::sources::kernel_btf::KernelBtf;

/// Loads and attaches one arm's program.
type Loader<'a> = dyn Fn() -> anyhow::Result<DropCounter> + 'a;

const DATAGRAMS: u32 = 200_000;
const PAIRS: usize = 7;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let btf = &KernelBtf::new("/sys/kernel/btf/vmlinux".into());
    println!(
        "drop counter benchmark: {DATAGRAMS} datagrams to a closed port per run, {PAIRS} alternating pairs"
    );
    println!(
        "{:>16} {:>10} {:>10} {:>8} {:>9} {:>11}",
        "attach", "off_kpps", "on_kpps", "on/off", "ns/event", "over_floor"
    );
    // The floor first: the same attach point with a program that does nothing.
    let mut arms: Vec<(&str, Box<Loader>)> =
        vec![("floor", Box::new(|| DropCounter::load_floor(btf)))];
    for mode in AttachMode::CHAIN {
        arms.push((mode.name(), Box::new(move || DropCounter::load(mode, btf))));
    }
    let mut floor_ns = None;
    for (name, load) in &arms {
        if let Err(e) = load() {
            println!("{name:>16} unavailable: {e:#}");
            continue;
        }
        // Throughput with the statistics off: their timing would only burden the "on" arm.
        let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..PAIRS {
            let o = flood();
            let counter = load().expect("loaded a moment ago");
            let a = flood();
            drop(counter);
            ratios.push(o.as_secs_f64() / a.as_secs_f64());
            off.push(o);
            on.push(a);
        }
        // Per-event cost, with the statistics on for this run only.
        let per_event = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .ok()
            .and_then(|_stats| {
                let counter = load().ok()?;
                let (t0, n0) = counter.run_stats()?;
                flood();
                let (t1, n1) = counter.run_stats()?;
                (n1 > n0).then(|| (t1 - t0).as_nanos() as f64 / (n1 - n0) as f64)
            });
        if *name == "floor" {
            floor_ns = per_event;
        }
        let (off, on) = (median(&mut off), median(&mut on));
        ratios.sort_by(f64::total_cmp);
        let kpps = |d: Duration| f64::from(DATAGRAMS) / d.as_secs_f64() / 1000.0;
        let ns = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |n| format!("{n:.0}"));
        let over = match (per_event, floor_ns) {
            (Some(p), Some(f)) if *name != "floor" => Some(p - f),
            _ => None,
        };
        println!(
            "{:>16} {:>10.0} {:>10.0} {:>8.3} {:>9} {:>11}",
            name,
            kpps(off),
            kpps(on),
            ratios[ratios.len() / 2],
            ns(per_event),
            ns(over)
        );
    }
    println!(
        "on/off: packet rate with the program attached over without it, median of the {PAIRS} adjacent pairs (bpf_stats off);"
    );
    println!(
        "ns/event: run_time/run_cnt from bpf_stats (its own timing, ~50 ns here, is included); over_floor: the same minus the floor's, what counting adds."
    );
    println!(
        "floor: a program that does nothing on the same tracepoint (tp_btf): the cost of the attach point itself, under any counter."
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
