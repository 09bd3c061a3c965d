//! Golden tests: every probe's parser on kernel data captured by `scripts/capture-fixtures.sh`.
//!
//! Each probe has a fixture folder `tests/fixtures/<probe>/` with the raw data and an
//! `expected.txt` golden file (regenerate with `UPDATE_GOLDEN=1 cargo test --test golden`).
//! Where a standard tool saw the same namespace at the same moment (`tests/fixtures/tools/`:
//! `nstat`, `ip -s -s -j link`, `tc -s -j qdisc`, `ip -j neigh`, `ss`), the parsed values are
//! also checked against the tool, so the golden files are not just the code's own output.
//! Every parser is also fed truncated and corrupted copies of its fixtures and must not panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use net_exporter::probes::qdisc::QdiscOptions;
use net_exporter::probes::{
    self, Registration, Scope, Series, sockbacklog, tcp, tcpext, tcpsummary,
};
use net_exporter::sources::TargetSources;
use serde_json::Value;

fn dir(probe: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(probe)
}

fn fixture(probe: &str, file: &str) -> Vec<u8> {
    let p = dir(probe).join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn tool(file: &str) -> String {
    String::from_utf8(fixture("tools", file)).expect("utf-8 tool output")
}

fn json(file: &str) -> Value {
    serde_json::from_str(&tool(file)).expect("tool JSON")
}

/// The probe, built with its default options, collecting from the captured kernel data in
/// `data` (`TargetSources::captured`): the node's target for a node-scope probe, a Pod's
/// otherwise.
fn collect_from(p: &Registration, data: &Path) -> anyhow::Result<Vec<Series>> {
    let (_, probe) = p.build(None)?;
    let mut src = TargetSources::captured(data, p.scope == Scope::Node);
    probe.collect(&mut src)
}

/// Runs the probe on its fixture folder.
fn parse(probe: &str) -> anyhow::Result<Vec<Series>> {
    collect_from(probes::by_name(probe).expect("probe"), &dir(probe))
}

/// Every registered probe with a fixture folder. Those without one are live only:
/// `packetloss` counts in the kernel (its BTF reader has unit tests on built blobs and the
/// running kernel; integration tests count real drops); `podip` reads the Kubernetes API (unit
/// tests on constructed views and IPAM folders; integration tests against a fake API server).
fn fixture_probes() -> impl Iterator<Item = &'static Registration> {
    probes::PROBES.iter().filter(|p| dir(p.name).is_dir())
}

/// `name{label} value` lines, in metric order.
fn render(probe: &str, series: &[Series]) -> String {
    let defs = probes::by_name(probe).expect("probe").metrics;
    let mut out = String::new();
    for s in series {
        assert!(
            s.values.len() <= defs.len(),
            "{probe}: more values than its metric list"
        );
        for (i, def) in defs.iter().enumerate() {
            let v = s.values.get(i).copied().flatten();
            let pairs: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            let label = if pairs.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", pairs.join(","))
            };
            let v = v.map_or_else(|| "absent".to_string(), |v| v.to_string());
            out.push_str(&format!("{}{label} {v}\n", def.name));
        }
    }
    out
}

/// The value of `metric` (with `if_name` when given) in a probe's parse.
fn value(probe: &str, series: &[Series], metric: &str, if_name: Option<&str>) -> u64 {
    let defs = probes::by_name(probe).expect("probe").metrics;
    let i = defs
        .iter()
        .position(|d| d.name == metric)
        .unwrap_or_else(|| panic!("{metric}"));
    let s = series
        .iter()
        .find(|s| s.labels.first().map(|(_, v)| v.as_str()) == if_name)
        .unwrap_or_else(|| panic!("{metric} {if_name:?} not parsed"));
    s.values
        .get(i)
        .copied()
        .flatten()
        .unwrap_or_else(|| panic!("{metric} absent"))
}

/// Every probe with a fixture folder (`tests/fixtures/<probe>/`, raw kernel data named as
/// `TargetSources::captured` reads it) against its golden file `expected.txt`. A new probe
/// needs no line here: its folder is enough.
#[test]
fn every_probe_matches_its_golden_file() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    let mut seen = 0;
    for probe in fixture_probes() {
        seen += 1;
        let name = probe.name;
        let got = render(
            name,
            &parse(name).unwrap_or_else(|e| panic!("{name}: {e:#}")),
        );
        let golden = dir(name).join("expected.txt");
        if update {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failures.push(format!("--- {name}: got\n{got}--- want\n{want}"));
        }
    }
    assert!(seen >= 10, "only {seen} probes have fixture folders");
    assert!(
        failures.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 to accept):\n{}",
        failures.join("\n")
    );
}

#[test]
fn tcp_and_tcpext_equal_nstat() {
    let nstat = json("nstat.json");
    let kernel = &nstat["kernel"];
    for (probe, prefix, fields) in [
        ("tcp", "Tcp", tcp::FIELDS),
        ("tcpext", "TcpExt", tcpext::FIELDS),
    ] {
        let series = parse(probe).expect(probe);
        let defs = probes::by_name(probe).expect("probe").metrics;
        for (def, field) in defs.iter().zip(fields) {
            if *field == "CurrEstab" {
                // nstat leaves gauges out. CurrEstab counts ESTABLISHED and CLOSE_WAIT sockets;
                // the captured namespace has no CLOSE_WAIT one (sockstat's inuse is exactly its
                // listeners plus the established sockets), so it equals ss's established count.
                let (established, _, _) = ss_sums("ss-established.txt", 0);
                assert_eq!(
                    value(probe, &series, def.name, None),
                    established,
                    "CurrEstab vs ss"
                );
                continue;
            }
            let want = kernel[format!("{prefix}{field}")]
                .as_u64()
                .unwrap_or_else(|| panic!("nstat has no {prefix}{field}"));
            assert_eq!(
                value(probe, &series, def.name, None),
                want,
                "{} vs nstat {prefix}{field}",
                def.name
            );
        }
    }
}

#[test]
fn netdev_equals_ip_link() {
    let series = parse("netdev").expect("netdev");
    let links = json("ip-link.json");
    let links = links.as_array().expect("array");
    assert_eq!(series.len(), links.len(), "one series per interface");
    let map = [
        ("netexporter_netdev_rxbytes", "rx", "bytes"),
        ("netexporter_netdev_rxerrors", "rx", "errors"),
        ("netexporter_netdev_rxpackets", "rx", "packets"),
        ("netexporter_netdev_rxdropped", "rx", "dropped"),
        ("netexporter_netdev_txbytes", "tx", "bytes"),
        ("netexporter_netdev_txerrors", "tx", "errors"),
        ("netexporter_netdev_rxfifos", "rx", "fifo_errors"),
        ("netexporter_netdev_txfifos", "tx", "fifo_errors"),
        ("netexporter_netdev_rxcrcerrors", "rx", "crc_errors"),
        ("netexporter_netdev_txpackets", "tx", "packets"),
        ("netexporter_netdev_txdropped", "tx", "dropped"),
    ];
    let mut nonzero = 0;
    for link in links {
        let ifname = link["ifname"].as_str().expect("ifname");
        for (metric, dir, key) in map {
            let want = link["stats64"][dir][key]
                .as_u64()
                .unwrap_or_else(|| panic!("{ifname} {dir}.{key}"));
            let got = value("netdev", &series, metric, Some(ifname));
            assert_eq!(
                got, want,
                "{metric}{{if_name={ifname}}} vs ip link {dir}.{key}"
            );
            nonzero += usize::from(got > 0);
        }
    }
    assert!(nonzero > 0, "the fixture should have traffic");
}

#[test]
fn qdisc_equals_tc() {
    let series = parse("qdisc").expect("qdisc");
    let qdiscs = json("tc-qdisc.json");
    let mut want: HashMap<&str, u64> = HashMap::new();
    for q in qdiscs.as_array().expect("array") {
        let dev = q["dev"].as_str().expect("dev");
        if q["root"].as_bool() != Some(true)
            || !QdiscOptions::default()
                .device_prefixes
                .iter()
                .any(|p| dev.starts_with(p.as_str()))
        {
            continue;
        }
        for key in ["bytes", "packets", "drops", "overlimits", "backlog", "qlen"] {
            *want.entry(key).or_default() += q[key].as_u64().unwrap_or(0);
        }
    }
    assert!(want["packets"] > 0, "the fixture should have qdisc traffic");
    for key in ["bytes", "packets", "drops", "overlimits", "backlog", "qlen"] {
        let metric = format!("netexporter_qdisc_{key}");
        assert_eq!(
            value("qdisc", &series, &metric, None),
            want[key],
            "{metric} vs tc"
        );
    }
}

#[test]
fn arp_entries_equal_ip_neigh() {
    let neigh = json("ip-neigh.json");
    let want = neigh
        .as_array()
        .expect("array")
        .iter()
        .filter(|n| {
            !n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "NOARP"))
        })
        .count() as u64;
    assert!(want > 0);
    assert_eq!(
        value(
            "arp",
            &parse("arp").expect("arp"),
            "netexporter_arp_entries",
            None
        ),
        want
    );
}

/// (lines, sum of Recv-Q, sum of Send-Q) of `ss -H` output; `skip` leading columns.
fn ss_sums(file: &str, skip: usize) -> (u64, u64, u64) {
    let text = tool(file);
    let mut out = (0, 0, 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<u64> = line
            .split_whitespace()
            .skip(skip)
            .take(2)
            .map(|c| c.parse().expect("queue"))
            .collect();
        out.0 += 1;
        out.1 += cols[0];
        out.2 += cols[1];
    }
    out
}

/// A `TCPDIAG_GETSOCK` dump (one walk of the TCP hash for both families) answers with the
/// same `inet_diag_msg` bodies under its own message type: the captured per-family replies,
/// retyped, must sum to the same values.
#[test]
fn tcpsummary_from_one_tcpdiag_dump_equals_per_family_dumps() {
    let mut both = fixture("tcpsummary", "inet.bin");
    both.extend(fixture("tcpsummary", "inet6.bin"));
    let mut retyped = both.clone();
    let mut at = 0;
    while at + 16 <= retyped.len() {
        let len = u32::from_ne_bytes(retyped[at..at + 4].try_into().unwrap()) as usize;
        retyped[at + 4..at + 6]
            .copy_from_slice(&net_exporter::sources::netlink::TCPDIAG_GETSOCK.to_ne_bytes());
        at += (len + 3) & !3;
    }
    assert_ne!(retyped, both);
    let (mut per_family, mut one) = (
        tcpsummary::Summary::default(),
        tcpsummary::Summary::default(),
    );
    per_family.add(&both).unwrap();
    one.add(&retyped).unwrap();
    assert_eq!(one, per_family);
    assert!(one.established > 0 && one.time_wait > 0);
    assert_eq!(
        sockbacklog::accept_queue(&retyped).unwrap(),
        sockbacklog::accept_queue(&both).unwrap()
    );
}

#[test]
fn tcpsummary_and_sockbacklog_equal_ss() {
    let s = parse("tcpsummary").expect("tcpsummary");
    let (established, rx, tx) = ss_sums("ss-established.txt", 0);
    let (time_wait, _, _) = ss_sums("ss-time-wait.txt", 0);
    assert!(
        established > 0 && rx > 0 && tx > 0 && time_wait > 0,
        "fixture should exercise every value"
    );
    assert_eq!(
        value(
            "tcpsummary",
            &s,
            "netexporter_tcpsummary_tcpestablishedconn",
            None
        ),
        established
    );
    assert_eq!(
        value(
            "tcpsummary",
            &s,
            "netexporter_tcpsummary_tcptimewaitconn",
            None
        ),
        time_wait
    );
    assert_eq!(
        value("tcpsummary", &s, "netexporter_tcpsummary_tcprxqueue", None),
        rx
    );
    assert_eq!(
        value("tcpsummary", &s, "netexporter_tcpsummary_tcptxqueue", None),
        tx
    );

    let (_, backlog, _) = ss_sums("ss-listen.txt", 1);
    assert!(backlog > 0);
    assert_eq!(
        value(
            "sockbacklog",
            &parse("sockbacklog").expect("sockbacklog"),
            "netexporter_sockbacklog_recvq",
            None
        ),
        backlog
    );
}

#[test]
fn sock_equals_sockstat_seen_by_the_tool() {
    // The tool's copy was read separately from the probe's (cat inside the namespace).
    let s = parse("sock").expect("sock");
    let text = tool("sockstat");
    let tcp: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .expect("TCP line")
        .split_whitespace()
        .collect();
    for (i, key) in ["inuse", "orphan", "tw", "alloc", "mem"].iter().enumerate() {
        let want: u64 = tcp[2 + 2 * i].parse().expect("number");
        assert_eq!(tcp[1 + 2 * i], *key);
        assert_eq!(
            value(
                "sock",
                &s,
                &format!(
                    "netexporter_sock_{}",
                    if *key == "inuse" { "inuse" } else { key }
                ),
                None
            ),
            want
        );
    }
}

#[test]
fn tcp_hash_equals_what_sysctl_printed_in_the_namespace() {
    // `sysctl -n` ran in the namespace beside the capture: the size, negative when shared.
    let s = parse("tcphash").expect("tcphash");
    let printed: i64 = tool("sysctl-tcp-ehash-entries.txt")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].values, vec![Some(printed.unsigned_abs())]);
    let shared = if printed < 0 { "true" } else { "false" };
    assert_eq!(s[0].label("shared"), Some(shared));
}

#[test]
fn conntrack_counters_are_at_most_the_later_conntrack_s() {
    // `conntrack -S` ran after the capture, over netlink: every counter it shows must be at
    // least what the /proc table said a moment before.
    let s = parse("conntrack").expect("conntrack");
    let text = tool("conntrack-S.txt");
    let mut sums: HashMap<String, u64> = HashMap::new();
    for word in text.split_whitespace() {
        if let Some((k, v)) = word.split_once('=')
            && k != "cpu"
        {
            *sums.entry(k.to_string()).or_default() += v.parse::<u64>().unwrap_or(0);
        }
    }
    for (metric, key) in [
        ("netexporter_conntrack_found", "found"),
        ("netexporter_conntrack_invalid", "invalid"),
        ("netexporter_conntrack_insert", "insert"),
        ("netexporter_conntrack_insertfailed", "insert_failed"),
        ("netexporter_conntrack_drop", "drop"),
        ("netexporter_conntrack_earlydrop", "early_drop"),
        ("netexporter_conntrack_error", "error"),
        ("netexporter_conntrack_searchrestart", "search_restart"),
    ] {
        let got = value("conntrack", &s, metric, None);
        assert!(
            got <= sums[key],
            "{metric} {got} > conntrack -S {key} {}",
            sums[key]
        );
    }
}

/// Every probe on truncated, emptied and corrupted copies of each file of its fixture folder
/// (the others intact): errors are fine, panics are not.
#[test]
fn probes_survive_damaged_input() {
    for probe in fixture_probes() {
        let name = probe.name;
        let files: Vec<String> = std::fs::read_dir(dir(name))
            .expect("fixture dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f != "expected.txt")
            .collect();
        for damaged in &files {
            let work = tempfile::tempdir().expect("tempdir");
            for f in &files {
                std::fs::write(work.path().join(f), fixture(name, f)).expect("copy fixture");
            }
            let original = fixture(name, damaged);
            let mut variants: Vec<Vec<u8>> = vec![Vec::new(), b"garbage\n\xff\x00".to_vec()];
            let step = (original.len() / 64).max(1);
            variants.extend(
                (0..original.len())
                    .step_by(step)
                    .map(|n| original[..n].to_vec()),
            );
            for seed in 0..32u64 {
                let mut v = original.clone();
                if v.is_empty() {
                    break;
                }
                // Deterministic corruption: a few bytes flipped at pseudo-random places.
                let mut x = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                for _ in 0..4 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let i = (x >> 33) as usize % v.len();
                    v[i] ^= (x >> 17) as u8 | 1;
                }
                variants.push(v);
            }
            for v in variants {
                std::fs::write(work.path().join(damaged), &v).expect("write variant");
                let _ = collect_from(probe, work.path());
            }
        }
    }
}

/// Every metric of the spec's table is implemented, by the same probe, with the same kind: a
/// renamed, retyped or lost metric fails here. Probes the code does not have yet are named, so
/// that a missing metric is a decision, not an accident. Metrics beyond the spec (the
/// project's own; every one is listed in docs/metrics.md) are not the spec's business.
#[test]
fn every_spec_metric_is_implemented_as_specified() {
    const NOT_YET: &[&str] = &[];
    let spec_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/spec/metrics.tsv");
    let spec = std::fs::read_to_string(&spec_path)
        .unwrap_or_else(|e| panic!("{}: {e}", spec_path.display()));
    let from_spec: Vec<(String, String, String)> = spec
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (
                cols[0].to_string(),
                cols[1].to_string(),
                cols[2].to_string(),
            )
        })
        .filter(|(probe, _, _)| !NOT_YET.contains(&probe.as_str()))
        .collect();
    assert!(from_spec.len() > 80, "the spec's table is read");
    let from_code: Vec<(String, String, String)> = probes::PROBES
        .iter()
        .flat_map(|p| {
            p.metrics.iter().map(move |m| {
                let kind = match m.kind {
                    probes::Kind::Counter => "counter",
                    probes::Kind::Gauge => "gauge",
                    probes::Kind::Histogram => "histogram",
                };
                (p.name.to_string(), m.name.to_string(), kind.to_string())
            })
        })
        .collect();
    let missing: Vec<&(String, String, String)> = from_spec
        .iter()
        .filter(|m| !from_code.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "spec metrics not implemented as specified (probe, name, kind): {missing:#?}"
    );
}

#[path = "../integration/harness.rs"]
mod harness;

/// The binary on a fixture /proc tree, its whole `/metrics` diffed against a golden file (the
/// netlink and BPF probes are off: they read the live kernel, and have their own tests).
/// Regenerate with `UPDATE_GOLDEN=1`.
#[test]
fn e2e_binary_on_fixture_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2e");
    let procfs = format!("--path.procfs={}", root.join("proc").display());
    let config = format!("--config.file={}", root.join("config.yaml").display());
    let agent = harness::Agent::start(&[
        &procfs,
        &config,
        "--path.netns=/nonexistent",
        "--collector.disable=netdev,qdisc,arp,tcpsummary,sockbacklog,packetloss,peers,dns",
    ]);
    let scrape = agent.scrape();
    // Durations differ at every run; everything else is fixed by the fixture.
    let got: String = scrape
        .text
        .lines()
        .map(|l| {
            if l.starts_with("netexporter_scrape_collector_duration_seconds{") {
                format!("{} <duration>\n", l.rsplit_once(' ').map_or(l, |(s, _)| s))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let golden = root.join("metrics.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(
        got == want,
        "e2e output differs from {} (UPDATE_GOLDEN=1 to accept):\n{got}",
        golden.display()
    );
}

/// docs/metrics.md is generated from the code's lists, so it cannot drift.
#[test]
fn docs_metrics_md_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md");
    let got = probes::reference_markdown(net_exporter::telemetry::SELF_METRICS);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write docs/metrics.md");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "docs/metrics.md is stale: run UPDATE_GOLDEN=1 cargo test --test golden docs"
    );
}

/// docs/configuration.md is generated from the options structs (their doc comments), so it
/// cannot drift from what the agent accepts.
#[test]
fn docs_configuration_md_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let got = net_exporter::config::reference_markdown();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write docs/configuration.md");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "docs/configuration.md is stale: run UPDATE_GOLDEN=1 cargo test --test golden docs"
    );
}
