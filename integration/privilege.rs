//! Least privilege, found by test: the agent as a non-root user (uid 65534) with exactly
//! CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_NET_ADMIN and CAP_SYSLOG (ambient, through `setpriv`) runs
//! every probe and every check; without each one in turn, exactly the parts that need it
//! degrade, and say so. CAP_BPF and CAP_PERFMON turn out to add nothing beside CAP_SYS_ADMIN.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// The smallest set (first four) plus the two that CAP_SYS_ADMIN makes redundant, to show it.
const ALL: [&str; 6] = [
    "sys_admin",
    "sys_ptrace",
    "net_admin",
    "syslog",
    "bpf",
    "perfmon",
];
const SMALLEST: [&str; 4] = ["sys_admin", "sys_ptrace", "net_admin", "syslog"];

/// The agent under `setpriv` with `caps`, on a free port; killed on drop.
struct Unprivileged {
    proc: Proc,
    port: u16,
    log: std::path::PathBuf,
}

impl Unprivileged {
    fn start(caps: &[&str]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("net-exporter-{}.log", unique("priv")));
        let list: String = caps
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        if !caps.is_empty() {
            cmd.arg(format!("--inh-caps={list}"));
            cmd.arg(format!("--ambient-caps={list}"));
        }
        cmd.arg("--")
            .arg(env!("CARGO_BIN_EXE_net-exporter"))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--node-name=itest-node")
            .arg("--mode=standalone")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log"),
            );
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd.spawn().expect("setpriv");
        let me = Self {
            proc: Proc { child },
            port,
            log,
        };
        let ready = poll(Duration::from_secs(30), || {
            matches!(http_get(port, "/readyz"), Ok((200, _))).then_some(())
        });
        assert!(ready.is_some(), "agent not ready:\n{}", me.log_text());
        me
    }

    fn scrape(&self) -> Scrape {
        let (status, body) = http_get(self.port, "/metrics").expect("scrape");
        assert_eq!(status, 200);
        Scrape::parse(&body)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = &self.proc;
        let _ = std::fs::remove_file(&self.log);
    }
}

/// (collector successes, check successes) once every check ran at least once.
/// (name, value) of each series of a success metric.
type Successes = Vec<(String, f64)>;

fn successes(agent: &Unprivileged) -> (Successes, Successes) {
    let s = poll(Duration::from_secs(20), || {
        let s = agent.scrape();
        (s.find("netexporter_check_success", &[]).len() >= 5).then_some(s)
    })
    .expect("checks ran");
    let pick = |name: &str, label: &str| -> Vec<(String, f64)> {
        s.find(name, &[])
            .iter()
            .filter_map(|x| Some((x.labels.get(label)?.clone(), x.value)))
            .collect()
    };
    (
        pick("netexporter_scrape_collector_success", "collector"),
        pick("netexporter_check_success", "check"),
    )
}

fn failing(list: &[(String, f64)]) -> Vec<String> {
    list.iter()
        .filter(|(_, v)| *v != 1.0)
        .map(|(n, _)| n.clone())
        .collect()
}

#[test]
fn least_privilege_capability_set() {
    require_root();
    let ns = Netns::new("nxq");
    let agent = Unprivileged::start(&SMALLEST);
    let (collectors, checks) = successes(&agent);
    assert!(
        failing(&collectors).is_empty(),
        "collectors failing with every capability: {collectors:?}\n{}",
        agent.log_text()
    );
    assert!(
        failing(&checks).is_empty(),
        "checks failing with every capability: {checks:?}\n{}",
        agent.log_text()
    );
    let s = agent.scrape();
    assert!(
        s.value("netexporter_sock_inuse", &[("netns", &ns.name)])
            .is_some(),
        "the test's namespace is read"
    );
    assert_eq!(
        s.value("netexporter_packetloss_info", &[("attach", "tp_btf")]),
        Some(1.0)
    );
    let support = socket_storage_support();
    support.say("least_privilege_capability_set");
    assert_eq!(
        s.value(
            "netexporter_tcpsummary_info",
            &[("path", support.auto_path())]
        ),
        Some(1.0),
        "{}",
        agent.log_text()
    );
}

#[test]
fn each_capability_removed_degrades_only_its_part() {
    require_root();
    let ns = Netns::new("nxq");
    // capability removed -> (collectors that must fail, checks that must fail)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str]);
    let cases: [Case; 6] = [
        ("sys_admin", &["netns"], &[]),
        ("sys_ptrace", &[], &[]),
        // CAP_SYS_ADMIN, needed for setns anyway, also grants what CAP_BPF and CAP_PERFMON
        // would (bpf_capable(), perfmon_capable()): neither is needed beside it.
        ("bpf", &[], &[]),
        ("perfmon", &[], &[]),
        ("net_admin", &[], &["IPtablesAbnormal"]),
        ("syslog", &[], &["KernelLog"]),
    ];
    let mut table = Vec::new();
    for (removed, want_collectors, want_checks) in cases {
        let caps: Vec<&str> = ALL.iter().copied().filter(|c| *c != removed).collect();
        let agent = Unprivileged::start(&caps);
        let (collectors, checks) = successes(&agent);
        let (fc, fk) = (failing(&collectors), failing(&checks));
        let s = agent.scrape();
        let read_ns = s
            .value("netexporter_sock_inuse", &[("netns", &ns.name)])
            .is_some();
        let log = agent.log_text();
        table.push(format!(
            "-{removed}: collectors {fc:?}, checks {fk:?}, namespace read: {read_ns}"
        ));
        let mut fc_sorted = fc.clone();
        fc_sorted.sort();
        let mut want: Vec<String> = want_collectors.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(
            fc_sorted, want,
            "without {removed}: failing collectors\n{log}"
        );
        for c in want_checks {
            assert!(
                fk.contains(&c.to_string()),
                "without {removed}: {c} should fail, failing: {fk:?}\n{log}"
            );
        }
        match removed {
            "sys_admin" => assert!(!read_ns, "without sys_admin no namespace can be entered"),
            // Named namespaces stay readable; the namespaces of other users' processes are not
            // (logged once: "needs CAP_SYS_PTRACE").
            "sys_ptrace" => assert!(read_ns),
            "bpf" | "perfmon" => {
                assert!(read_ns);
                assert_eq!(
                    s.value("netexporter_packetloss_info", &[("attach", "tp_btf")]),
                    Some(1.0)
                );
                let path = socket_storage_support().auto_path();
                assert_eq!(
                    s.value("netexporter_tcpsummary_info", &[("path", path)]),
                    Some(1.0),
                    "without {removed}: socket summaries should take the {path} path\n{log}"
                );
            }
            _ => assert!(read_ns),
        }
        // Each degraded part says why, once.
        if let Some(c) = want_collectors.first() {
            assert!(
                log.contains(&format!("collector=\"{c}\""))
                    || log.contains(&format!("collector={c}")),
                "no log line for {c}:\n{log}"
            );
        }
    }
    socket_storage_support().say("each_capability_removed_degrades_only_its_part");
    eprintln!("least privilege:\n{}", table.join("\n"));
}
