//! The agent's own cost as it reports it: its BPF programs' runs and run time on `/metrics`
//! agree with the kernel's program statistics as `bpftool prog show` prints them, and so do the
//! runs the kernel skipped (recursion misses).

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

/// `bpftool prog show`: (run_cnt, run_time_ns, recursion_misses) of each program named in
/// `names`; each name must belong to exactly one loaded program (the agent's). bpftool leaves a
/// field out when it is 0.
fn bpftool(names: &[String]) -> BTreeMap<String, (u64, u64, u64)> {
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
        out.insert(
            name.clone(),
            (n("run_cnt"), n("run_time_ns"), n("recursion_misses")),
        );
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
        let misses = s
            .value(
                "netexporter_bpf_program_recursion_misses_total",
                &[("program", name)],
            )
            .expect("recursion misses") as u64;
        let ((r0, t0, m0), (r1, t1, m1)) = (before[name], after[name]);
        assert!(
            (r0..=r1).contains(&runs),
            "{name}: runs {runs} not within bpftool's {r0}..={r1}"
        );
        assert!(
            (t0..=t1).contains(&ns),
            "{name}: run time {ns} ns not within bpftool's {t0}..={t1}"
        );
        assert!(
            (m0..=m1).contains(&misses),
            "{name}: recursion misses {misses} not within bpftool's {m0}..={m1}"
        );
    }
    let state = before["peer_state"].0;
    assert!(
        state >= 40,
        "20 connections, two ends: peer_state ran {state} times"
    );
}

/// The BPF maps the agent's process holds, by name: (id, max_entries), from its fdinfo (the
/// kernel's own account of each map file descriptor), names from `bpftool map show`.
fn agent_maps(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
    {
        let is_map = std::fs::read_link(fd.path())
            .is_ok_and(|l| l.as_os_str().as_encoded_bytes() == b"anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(max)) = (field("map_id:"), field("max_entries:")) {
            ids.push((id, max));
        }
    }
    let mut out = BTreeMap::new();
    for (id, max) in ids {
        let show: Value = serde_json::from_str(&run(&[
            "bpftool",
            "map",
            "show",
            "id",
            &id.to_string(),
            "--json",
        ]))
        .expect("bpftool map show json");
        assert_eq!(show["max_entries"].as_u64(), Some(max), "map {id}: {show}");
        if let Some(name) = show["name"].as_str() {
            out.insert(name.to_string(), (id, max));
        }
    }
    out
}

/// Entries of map `id` as `bpftool map dump` lists them.
fn bpftool_entries(id: u64) -> u64 {
    let dump: Value = serde_json::from_str(&run(&[
        "bpftool",
        "map",
        "dump",
        "id",
        &id.to_string(),
        "--json",
    ]))
    .expect("bpftool map dump json");
    dump.as_array().map_or(0, |a| a.len() as u64)
}

#[test]
fn bpf_map_fill_equals_bpftools() {
    require_root();
    let agent = Agent::start(&[]);
    // Entries in every map: connections (peers, peer_timings, the socket summary) and a drop
    // (a datagram to a closed port: NO_SOCKET; counted in a slot unless it collides).
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let _held: Vec<_> = (0..3)
        .map(|_| {
            let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
            (c, l.accept().expect("accept"))
        })
        .collect();
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let _ = u.send_to(b"x", ("127.0.0.1", port));

    let first = agent.scrape();
    let maps = agent_maps(agent.pid());
    let mut wanted = vec!["drops", "peers", "peer_timings"];
    if first
        .find("netexporter_tcpsummary_info", &[("path", "bpf")])
        .len()
        == 1
    {
        wanted.push("summary");
    }
    let reported: Vec<String> = first
        .find("netexporter_bpf_map_max_entries", &[])
        .iter()
        .filter_map(|s| s.labels.get("map").cloned())
        .collect();
    for name in &wanted {
        let (id, max) = *maps
            .get(*name)
            .unwrap_or_else(|| panic!("the agent holds no map {name}: {maps:?}"));
        // Capacity: what the kernel created.
        assert_eq!(
            first.value("netexporter_bpf_map_max_entries", &[("map", name)]),
            Some(max as f64),
            "{name}: reported {reported:?}"
        );
        // Entries: bpftool's count between two scrapes lies between their values (the maps
        // change only when a new namespace, peer or drop reason appears, or one goes).
        let before = agent
            .scrape()
            .value("netexporter_bpf_map_entries", &[("map", name)])
            .expect("entries");
        let counted = bpftool_entries(id) as f64;
        let after = agent
            .scrape()
            .value("netexporter_bpf_map_entries", &[("map", name)])
            .expect("entries");
        // `drops` is the hash behind the per-CPU slots: a key reaches it only when its slot
        // is taken by another key, so on a quiet machine it may well be empty.
        assert!(
            counted >= 1.0 || *name == "drops",
            "{name}: bpftool lists no entry"
        );
        assert!(
            before.min(after) <= counted && counted <= before.max(after),
            "{name}: bpftool lists {counted} entries, the agent {before} then {after}"
        );
        assert_eq!(
            first.value("netexporter_bpf_map_uncounted_total", &[("map", name)]),
            Some(0.0),
            "{name}: nothing uncounted while far from full"
        );
    }
}
