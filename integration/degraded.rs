//! Degraded kernels. A probe whose kernel source is missing or broken reports
//! `netexporter_scrape_collector_success 0`, says why once in the log, and every other probe
//! goes on. A probe whose prerequisites this node lacks altogether (no connection tracking; no
//! BTF and no tracefs for the drop counter) is *unavailable*: no failure, said once, shown as
//! `netexporter_probe_available{reason} 0`, and available again as soon as the node has what it
//! needs. The conditions are made with a copy of the fixture /proc tree with parts removed or
//! unreadable, by pointing the BPF probes at a missing BTF, and by unmounting tracefs in a
//! mount namespace of the agent's own.

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
    std::fs::write(&cfg, format!("checks:\n  enabled: false\n{extra_config}"))
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

/// `netexporter_probe_available` of `probe`: (value, reason label).
fn available(s: &Scrape, probe: &str) -> (f64, Option<String>) {
    let found = s.find("netexporter_probe_available", &[("probe", probe)]);
    assert_eq!(
        found.len(),
        1,
        "one availability series for {probe}: {found:?}"
    );
    (found[0].value, found[0].labels.get("reason").cloned())
}

#[test]
fn without_conntrack_the_probe_is_unavailable_until_it_appears() {
    require_root();
    let proc = fixture_proc();
    let stat = proc.path().join("net/stat/nf_conntrack");
    let saved = std::fs::read(&stat).expect("fixture stat");
    std::fs::remove_file(&stat).expect("rm");
    let (agent, _cfg) = start(proc.path(), "");
    let s = agent.scrape();
    let (value, reason) = available(&s, "conntrack");
    assert_eq!(value, 0.0);
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("nf_conntrack")),
        "the reason names what is missing: {reason:?}"
    );
    assert!(
        s.value(
            "netexporter_scrape_collector_success",
            &[("collector", "conntrack")]
        )
        .is_none(),
        "an unavailable probe is no failing collector"
    );
    assert!(s.find("netexporter_conntrack_found", &[]).is_empty());
    for ok in ["tcp", "tcpext", "sock", "softnet", "arp", "netdev"] {
        assert_eq!(success(&s, ok), 1.0, "{ok} should work without conntrack");
        assert_eq!(available(&s, ok), (1.0, None));
    }
    assert!(s.value("netexporter_tcp_insegs", &[]).is_some());
    // Said once, with the cause, however many collections ask again.
    for _ in 0..3 {
        agent.scrape();
    }
    let log = agent.log_text();
    let said = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what) && l.contains("conntrack"))
            .count()
    };
    assert_eq!(said("probe unavailable"), 1, "said once:\n{log}");
    assert_eq!(said("collector failed"), 0, "no failure:\n{log}");

    // The module is loaded (here: the file comes back): the next collection reads it.
    std::fs::write(&stat, saved).expect("restore");
    let s = agent.scrape();
    assert_eq!(available(&s, "conntrack"), (1.0, None));
    assert_eq!(success(&s, "conntrack"), 1.0);
    assert!(s.value("netexporter_conntrack_found", &[]).is_some());
    assert!(
        agent.log_text().contains("probe available now"),
        "the change is logged:\n{}",
        agent.log_text()
    );
}

/// A node with neither BTF nor tracefs cannot attach the drop counter at all: `auto` makes it
/// unavailable there (nothing anyone can fix on that node), not a collector that fails at
/// every scrape and pages someone; naming an attach point makes the same node a failure.
#[test]
fn without_btf_and_tracefs_the_drop_counter_is_unavailable() {
    require_root();
    let ns = Netns::new("nxdg");
    // Its own mount namespace (see `isolated_agent_command`): tracefs goes away for it only.
    let prelude = "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; \
                   ! test -e /sys/kernel/tracing/events/skb || exit 3";
    for (attach, want_available) in [("auto", false), ("tp_btf", true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("config.yaml");
        std::fs::write(
            &cfg,
            format!(
                "sources:\n  btf_path: /nonexistent\nprobes:\n  packetloss:\n    attach: {attach}\nchecks:\n  enabled: false\n"
            ),
        )
        .expect("write config");
        let agent = NsAgent::start(
            &ns,
            prelude,
            &[
                "--mode=standalone".into(),
                format!("--config.file={}", cfg.display()),
            ],
        );
        let s = agent.scrape(&ns);
        let (value, reason) = available(&s, "packetloss");
        let success = s.value(
            "netexporter_scrape_collector_success",
            &[("collector", "packetloss")],
        );
        if want_available {
            assert_eq!((value, reason), (1.0, None), "attach: {attach}");
            assert_eq!(success, Some(0.0), "attach: {attach} fails, saying why");
        } else {
            assert_eq!(value, 0.0, "attach: {attach}\n{}", agent.log_text());
            assert!(
                reason
                    .as_deref()
                    .is_some_and(|r| r.contains("BTF") && r.contains("tracefs")),
                "{reason:?}"
            );
            assert_eq!(success, None, "attach: {attach}: no failing collector");
        }
        assert_eq!(
            s.value(
                "netexporter_scrape_collector_success",
                &[("collector", "tcp")]
            ),
            Some(1.0)
        );
    }
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
        "probes:\n  packetloss:\n    attach: tp_btf\nsources:\n  btf_path: /nonexistent\n  socket_path: auto\n",
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
