//! The agent's own cost as it reports it: its BPF programs' runs and run time on `/metrics`
//! agree with the kernel's program statistics as `bpftool prog show` prints them.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};

use serde_json::Value;

use crate::harness::*;

/// `kernel.bpf_stats_enabled` set for the test, and put back as it was.
struct BpfStats(String);

impl BpfStats {
    fn on() -> Self {
        let was = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .expect("kernel.bpf_stats_enabled")
            .trim()
            .to_string();
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").expect("enable bpf_stats");
        Self(was)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// `bpftool prog show`: (run_cnt, run_time_ns) of each program named in `names`; each name
/// must belong to exactly one loaded program (the agent's).
fn bpftool(names: &[String]) -> BTreeMap<String, (u64, u64)> {
    let progs: Value =
        serde_json::from_str(&run(&["bpftool", "prog", "show", "--json"])).expect("bpftool json");
    let mut out = BTreeMap::new();
    for name in names {
        let same: Vec<&Value> = progs
            .as_array()
            .expect("program list")
            .iter()
            .filter(|p| p["name"].as_str() == Some(name))
            .collect();
        assert_eq!(same.len(), 1, "programs named {name}: {same:?}");
        let n = |k: &str| same[0][k].as_u64().unwrap_or(0);
        out.insert(name.clone(), (n("run_cnt"), n("run_time_ns")));
    }
    out
}

#[test]
fn bpf_program_statistics_equal_bpftools() {
    require_root();
    let _stats = BpfStats::on();
    let agent = Agent::start(&[]);
    // Connections through loopback: the peer counter's state-change program runs.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    for _ in 0..20 {
        let _c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let _ = l.accept().expect("accept");
    }
    let first = agent.scrape();
    let names: Vec<String> = first
        .find("netexporter_bpf_program_runs_total", &[])
        .iter()
        .filter_map(|s| s.labels.get("program").cloned())
        .collect();
    for want in ["peer_state", "peer_retransmit", "kfree_skb_btf"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} not among {names:?}"
        );
    }
    assert_eq!(first.value("netexporter_bpf_stats_enabled", &[]), Some(1.0));

    let before = bpftool(&names);
    let s = agent.scrape();
    let after = bpftool(&names);
    for name in &names {
        let runs = s
            .value("netexporter_bpf_program_runs_total", &[("program", name)])
            .expect("runs") as u64;
        let ns = (s
            .value(
                "netexporter_bpf_program_run_seconds_total",
                &[("program", name)],
            )
            .expect("run time")
            * 1e9)
            .round() as u64;
        let ((r0, t0), (r1, t1)) = (before[name], after[name]);
        assert!(
            (r0..=r1).contains(&runs),
            "{name}: runs {runs} not within bpftool's {r0}..={r1}"
        );
        assert!(
            (t0..=t1).contains(&ns),
            "{name}: run time {ns} ns not within bpftool's {t0}..={t1}"
        );
    }
    let state = before["peer_state"].0;
    assert!(
        state >= 40,
        "20 connections, two ends: peer_state ran {state} times"
    );
}
