//! The binary's surface: configuration errors, namespace naming, health endpoints and
//! coalescing of concurrent scrapes.

use std::process::Command;

use crate::harness::*;

/// Runs the binary with `args` and `env`; returns (exit code, stderr).
fn run_agent(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_net-exporter"));
    cmd.args(args).env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run net-exporter");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write config");
        format!("--config.file={}", p.display())
    };
    let typo = write("typo.yaml", "web:\n  listen_adress: ':1'\n");
    let probe = write("probe.yaml", "probes:\n  conntrak:\n    enabled: false\n");
    let prefixes = write(
        "prefixes.yaml",
        "probes:\n  qdisc:\n    device_prefixes: 5\n",
    );
    // (flags, environment, what stderr must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec![&typo], vec![], "listen_adress"),
        (vec![&probe], vec![], "probes.conntrak"),
        (vec![&prefixes], vec![], "device_prefixes"),
        (
            vec!["--config.file=/nonexistent/net-exporter.yaml"],
            vec![],
            "--config.file",
        ),
        (
            vec!["--web.listen-address=nohost"],
            vec![],
            "web.listen-address",
        ),
        (vec!["--collector.disable=bogus"], vec![], "bogus"),
        (vec!["--no-such-flag"], vec![], "--no-such-flag"),
        (
            vec![],
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            vec![],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    ];
    for (args, env, field) in cases {
        let (code, stderr) = run_agent(&args, &env);
        assert_eq!(
            code,
            Some(2),
            "{args:?} {env:?}: exit {code:?}, stderr: {stderr}"
        );
        assert!(
            stderr.contains(field),
            "{args:?} {env:?}: stderr should name {field:?}: {stderr}"
        );
    }
}

#[test]
fn unnamed_namespace_is_labelled_by_its_lowest_pid() {
    require_root();
    let agent = Agent::start(&[]);
    let holder = Proc::spawn(&["unshare", "--net", "sleep", "120"]);
    let label = format!("pid-{}", holder.child.id());
    let seen = poll(std::time::Duration::from_secs(10), || {
        let s = agent.scrape();
        s.value("netexporter_sock_inuse", &[("netns", &label)])
            .map(|_| s)
    });
    let s = seen.unwrap_or_else(|| panic!("no series for {label}"));
    // Its loopback is its only interface.
    assert!(
        s.value(
            "netexporter_netdev_rxbytes",
            &[("netns", &label), ("if_name", "lo")]
        )
        .is_some()
    );
    drop(holder);
    let s = agent.scrape();
    assert!(
        s.find("netexporter_sock_inuse", &[("netns", &label)])
            .is_empty(),
        "{label} still scraped after its process exited"
    );
}

#[test]
fn health_endpoints_and_index() {
    require_root();
    let agent = Agent::start(&[]);
    assert_eq!(http_get(agent.port, "/healthz").expect("healthz").0, 200);
    assert_eq!(http_get(agent.port, "/readyz").expect("readyz").0, 200);
    let (status, body) = http_get(agent.port, "/").expect("index");
    assert_eq!(status, 200);
    assert!(body.contains("/metrics"));
    assert_eq!(http_get(agent.port, "/nope").expect("404").0, 404);
}

#[test]
fn custom_telemetry_path() {
    require_root();
    let agent = Agent::start(&["--web.telemetry-path=/custom"]);
    let (status, body) = http_get(agent.port, "/custom").expect("custom path");
    assert_eq!(status, 200);
    assert!(body.contains("netexporter_tcp_insegs"));
    assert_eq!(http_get(agent.port, "/metrics").expect("old path").0, 404);
}

#[test]
fn concurrent_scrapes_share_collections() {
    require_root();
    // Enough namespaces that a collection takes a while, so that scrapes overlap.
    let namespaces: Vec<Netns> = (0..30).map(|_| Netns::new("nxc")).collect();
    let agent = Agent::start(&[]);
    let total = |s: &Scrape| {
        s.value("netexporter_collections_total", &[])
            .expect("collections_total")
    };
    let before = total(&agent.scrape());
    const N: usize = 20;
    let bodies: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| s.spawn(|| http_get(agent.port, "/metrics").expect("scrape")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scrape thread"))
            .collect()
    });
    for (status, body) in &bodies {
        assert_eq!(*status, 200);
        for ns in &namespaces {
            assert!(
                body.contains(&format!("netns=\"{}\"", ns.name)),
                "a scrape lacks {}",
                ns.name
            );
        }
    }
    let after = total(&agent.scrape());
    // `after` counts the N concurrent scrapes' collections plus this last scrape's own.
    let used = after - before - 1.0;
    assert!(
        used >= 1.0 && used < N as f64,
        "{N} concurrent scrapes ran {used} collections: none were shared"
    );
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let p = dir.path().join("config.yaml");
    std::fs::write(&p, text).expect("write config");
    format!("--config.file={}", p.display())
}

#[test]
fn namespaces_can_be_included_and_excluded_by_name() {
    require_root();
    let keep = Netns::new("nxi");
    let skip = Netns::new("nxe");
    let dir = tempfile::tempdir().expect("tempdir");
    let pattern = format!("{}*", &skip.name[..3]);
    let cfg = config_file(
        &dir,
        &format!("collection:\n  include_netns: [\"nx*\"]\n  exclude_netns: [\"{pattern}\"]\n"),
    );
    let agent = Agent::start(&[&cfg]);
    let s = agent.scrape();
    assert!(
        s.value("netexporter_sock_inuse", &[("netns", &keep.name)])
            .is_some()
    );
    assert!(
        s.find("netexporter_sock_inuse", &[("netns", &skip.name)])
            .is_empty()
    );
    // Everything not matching the include pattern (other namespaces on the machine) is out.
    assert!(
        s.find("netexporter_sock_inuse", &[])
            .iter()
            .all(|x| x.labels.get("netns").is_none_or(|n| n.starts_with("nx"))),
        "a namespace outside include_netns was read"
    );
}

#[test]
fn series_ceiling_leaves_whole_namespaces_out_and_says_so() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    // What the node alone produces, measured with no other namespace admitted.
    let only_node = config_file(
        &dir,
        "collection:\n  include_netns: [\"nothing-matches\"]\n",
    );
    let node_series = {
        let agent = Agent::start(&[&only_node]);
        agent
            .scrape()
            .value("netexporter_series", &[])
            .expect("netexporter_series")
    };
    let namespaces: Vec<Netns> = (0..3).map(|_| Netns::new("nxm")).collect();
    // Room for the node and one namespace (~60 series each), not three.
    let ceiling = node_series as usize + 100;
    let cfg = config_file(
        &dir,
        &format!("collection:\n  include_netns: [\"nxm*\"]\n  max_series: {ceiling}\n"),
    );
    let agent = Agent::start(&[&cfg]);
    let s = agent.scrape();
    let read: Vec<&Netns> = namespaces
        .iter()
        .filter(|n| {
            s.value("netexporter_sock_inuse", &[("netns", &n.name)])
                .is_some()
        })
        .collect();
    assert_eq!(
        read.len(),
        1,
        "exactly one namespace fits under the ceiling"
    );
    for n in &namespaces {
        let tcp = s
            .value("netexporter_tcp_insegs", &[("netns", &n.name)])
            .is_some();
        let sock = s
            .value("netexporter_sock_inuse", &[("netns", &n.name)])
            .is_some();
        assert_eq!(tcp, sock, "{}: a namespace is in or out whole", n.name);
    }
    let series = s.value("netexporter_series", &[]).expect("series");
    assert!(
        series <= ceiling as f64,
        "{series} series over the ceiling {ceiling}"
    );
    assert!(
        s.value("netexporter_series_dropped_total", &[])
            .expect("dropped")
            > 0.0
    );
    assert!(
        poll(std::time::Duration::from_secs(5), || agent
            .log_text()
            .contains("series ceiling reached")
            .then_some(()))
        .is_some(),
        "no log line about the ceiling:\n{}",
        agent.log_text()
    );
}
