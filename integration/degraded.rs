//! Degraded kernels: a probe whose kernel source is missing reports
//! `netexporter_scrape_collector_success 0`, says why once in the log, and every other probe
//! goes on. The conditions are made with a copy of the fixture /proc tree with parts removed or
//! unreadable, and by pointing the BPF probes at a missing BTF.

use std::path::Path;

use crate::harness::*;

/// A copy of `tests/fixtures/e2e/proc` in a temp dir, to damage.
fn fixture_proc() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2e/proc");
    run(&[
        "cp",
        "-a",
        &format!("{}/.", src.display()),
        &dir.path().display().to_string(),
    ]);
    dir
}

fn start(procfs: &Path, extra_config: &str) -> (Agent, tempfile::TempDir) {
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let cfg = cfg_dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "checks:\n  disabled: [KernelParam, IRQBalance, KernelLog, DefaultRoute, MTUAbnormal, IPtablesAbnormal]\n{extra_config}"
        ),
    )
    .expect("write config");
    let agent = Agent::start(&[
        &format!("--path.procfs={}", procfs.display()),
        "--path.netns=/nonexistent",
        &format!("--config.file={}", cfg.display()),
    ]);
    (agent, cfg_dir)
}

fn success(s: &Scrape, collector: &str) -> f64 {
    s.value(
        "netexporter_scrape_collector_success",
        &[("collector", collector)],
    )
    .unwrap_or_else(|| panic!("no success series for {collector}"))
}

#[test]
fn without_conntrack_only_conntrack_fails() {
    require_root();
    let proc = fixture_proc();
    std::fs::remove_file(proc.path().join("net/stat/nf_conntrack")).expect("rm");
    std::fs::remove_dir_all(proc.path().join("sys/net/netfilter")).expect("rm");
    let (agent, _cfg) = start(proc.path(), "");
    let s = agent.scrape();
    assert_eq!(success(&s, "conntrack"), 0.0);
    assert!(s.find("netexporter_conntrack_found", &[]).is_empty());
    for ok in ["tcp", "tcpext", "sock", "softnet", "arp", "netdev"] {
        assert_eq!(success(&s, ok), 1.0, "{ok} should work without conntrack");
    }
    assert!(s.value("netexporter_tcp_insegs", &[]).is_some());
    // Said once, with the cause, however many collections fail.
    for _ in 0..3 {
        agent.scrape();
    }
    let log = agent.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("collector failed") && l.contains("conntrack"))
        .count();
    assert_eq!(
        lines, 1,
        "conntrack's failure should be logged once:\n{log}"
    );
    assert!(
        log.contains("nf_conntrack"),
        "the log names the missing file:\n{log}"
    );
}

#[test]
fn without_ipv6_socket_probes_still_work() {
    require_root();
    // The fixture tree has no sockstat6 (a kernel without IPv6): the socket probes use IPv4.
    let proc = fixture_proc();
    assert!(!proc.path().join("net/sockstat6").exists());
    let (agent, _cfg) = start(proc.path(), "");
    let s = agent.scrape();
    for ok in ["sock", "tcp", "tcpsummary", "sockbacklog"] {
        assert_eq!(success(&s, ok), 1.0, "{ok} without IPv6");
    }
}

#[test]
fn unreadable_proc_sys_fails_only_its_readers() {
    require_root();
    let proc = fixture_proc();
    // A /proc/sys that cannot be read (root bypasses modes: replace the files by directories,
    // which read as EISDIR, as a read-only or half-mounted /proc/sys would fail differently but
    // just as hard).
    let thresh = proc.path().join("sys/net/ipv4/neigh/default/gc_thresh3");
    std::fs::remove_file(&thresh).expect("rm");
    std::fs::create_dir(&thresh).expect("mkdir");
    let (agent, _cfg) = start(proc.path(), "");
    let s = agent.scrape();
    assert_eq!(success(&s, "arp"), 0.0);
    for ok in ["conntrack", "tcp", "softnet", "sock"] {
        assert_eq!(success(&s, ok), 1.0, "{ok} does not read gc_thresh3");
    }
}

#[test]
fn garbage_proc_files_fail_their_probe_without_crashing() {
    require_root();
    let proc = fixture_proc();
    std::fs::write(
        proc.path().join("net/snmp"),
        b"\xff\xfegarbage\nTcp: a b\nTcp: 1\n",
    )
    .expect("write");
    std::fs::write(proc.path().join("net/softnet_stat"), b"").expect("write");
    let (agent, _cfg) = start(proc.path(), "");
    let s = agent.scrape();
    assert_eq!(success(&s, "tcp"), 0.0);
    assert_eq!(success(&s, "softnet"), 0.0);
    assert_eq!(success(&s, "tcpext"), 1.0);
    assert_eq!(http_get(agent.port, "/healthz").expect("healthz").0, 200);
}

#[test]
fn without_btf_the_bpf_probes_degrade_and_the_rest_serves() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "probes:\n  packetloss:\n    attach: tp_btf\n    btf_path: /nonexistent\n  tcpsummary:\n    socket_path: auto\n",
    )
    .expect("write config");
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);
    let s = agent.scrape();
    assert_eq!(success(&s, "packetloss"), 0.0, "forced tp_btf without BTF");
    // Socket summaries fall back to sock_diag and keep working.
    assert_eq!(success(&s, "tcpsummary"), 1.0);
    assert_eq!(
        s.value("netexporter_tcpsummary_info", &[("path", "sock_diag")]),
        Some(1.0)
    );
    for ok in [
        "tcp",
        "tcpext",
        "sock",
        "netdev",
        "qdisc",
        "arp",
        "softnet",
        "sockbacklog",
    ] {
        assert_eq!(success(&s, ok), 1.0, "{ok} without BTF");
    }
}
