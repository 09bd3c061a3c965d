//! The agent as Prometheus sees it: a real Prometheus server scraping it, `promtool check
//! metrics` on a real scrape, and the scrape against the spec's metric table.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const JOB: &str = "net-exporter-itest";

/// An instant PromQL query through the HTTP API: `(labels, value)` per series.
fn query(prom: &PromServer, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let data = prom
        .query_at(promql, unix_now())
        .unwrap_or_else(|e| panic!("query {promql:?}: {e}"));
    assert_eq!(data["resultType"], "vector", "query {promql:?}: {data}");
    data["result"]
        .as_array()
        .expect("result array")
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .expect("metric object")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_string()))
                .collect();
            let value = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("query {promql:?}: bad value in {r}"));
            (labels, value)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Prometheus scrapes the agent; PromQL returns each namespace's Pod-scope series with its
/// labels, and the value of a stable gauge equals the kernel's.
#[test]
fn prometheus_scrapes_pod_series_of_each_namespace() {
    require_root();
    let a = Netns::new("nxpa");
    let b = Netns::new("nxpb");
    // Different, stable socket counts per namespace, so that a series carrying the wrong
    // namespace's label shows up as a wrong value.
    let _listen_a = a.tcp_listeners(1);
    let _listen_b = b.tcp_listeners(2);
    let agent = Agent::start(&[]);
    let prom = PromServer::start(JOB, agent.port, &[]);
    let instance = format!("127.0.0.1:{}", agent.port);

    let scraped = poll(Duration::from_secs(30), || {
        let up = query(&prom, &format!("up{{job=\"{JOB}\"}}"));
        let seen = [&a, &b].iter().all(|ns| {
            query(&prom, &format!("netexporter_sock_inuse{{netns=\"{}\"}}", ns.name))
                .len()
                == 1
        });
        (up.len() == 1 && seen).then_some(up)
    })
    .unwrap_or_else(|| {
        panic!(
            "prometheus has not scraped the agent after 30s; targets: {:?}\nprometheus log:\n{}\nagent log:\n{}",
            http_get(prom.port, "/api/v1/targets"),
            prom.log(),
            agent.log_text()
        )
    });
    assert_eq!(
        scraped,
        vec![(
            labels(&[("__name__", "up"), ("instance", &instance), ("job", JOB)]),
            1.0
        )],
        "up of the agent's target"
    );

    for (ns, listeners) in [(&a, 1), (&b, 2)] {
        let kernel = ns.sockstat_tcp_inuse();
        assert_eq!(
            kernel, listeners,
            "sockstat of {} should count the test's listeners",
            ns.name
        );
        let got = query(
            &prom,
            &format!("netexporter_sock_inuse{{netns=\"{}\"}}", ns.name),
        );
        let want_labels = labels(&[
            ("__name__", "netexporter_sock_inuse"),
            ("instance", &instance),
            ("job", JOB),
            ("k8s_node", "itest-node"),
            ("netns", &ns.name),
        ]);
        assert_eq!(
            got,
            vec![(want_labels, kernel as f64)],
            "netexporter_sock_inuse of {}",
            ns.name
        );
    }

    // A counter, unfiltered: one series per namespace of the test, each with exactly the
    // agent's labels plus the target's, and one for the host's own namespace.
    let insegs = query(&prom, &format!("netexporter_tcp_insegs{{job=\"{JOB}\"}}"));
    for ns in [&a, &b] {
        let mine: Vec<_> = insegs
            .iter()
            .filter(|(l, _)| l.get("netns") == Some(&ns.name))
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "netexporter_tcp_insegs of {}: {insegs:?}",
            ns.name
        );
        let (l, v) = mine[0];
        assert_eq!(
            l,
            &labels(&[
                ("__name__", "netexporter_tcp_insegs"),
                ("instance", &instance),
                ("job", JOB),
                ("k8s_node", "itest-node"),
                ("netns", &ns.name),
            ])
        );
        assert!(*v >= 0.0 && v.fract() == 0.0, "insegs of {}: {v}", ns.name);
    }
    let host: Vec<_> = insegs
        .iter()
        .filter(|(l, _)| !l.contains_key("netns"))
        .map(|(l, _)| l)
        .collect();
    assert_eq!(
        host,
        vec![&labels(&[
            ("__name__", "netexporter_tcp_insegs"),
            ("instance", &instance),
            ("job", JOB),
            ("k8s_node", "itest-node"),
        ])],
        "the host namespace's series"
    );
}

/// `promtool check metrics` on a real scrape finds nothing but the accepted `_total` finding
/// on the spec's counters.
#[test]
fn promtool_finds_only_the_accepted_total_suffix() {
    require_root();
    let _ns = Netns::new("nxpl");
    let agent = Agent::start(&[]);
    let scrape = agent.scrape();
    let spec: BTreeSet<String> = spec_metrics()
        .into_iter()
        .map(|m| m.name)
        .chain(ISSUE_NAMED_COUNTERS.iter().map(|n| n.to_string()))
        .collect();

    let out = promtool_check(&scrape.text);
    let accepted_suffix = " counter metrics should have \"_total\" suffix";
    let mut rejected = Vec::new();
    let mut accepted = BTreeSet::new();
    for line in out.text.lines().filter(|l| !l.trim().is_empty()) {
        match line.strip_suffix(accepted_suffix) {
            Some(name) if spec.contains(name) => {
                accepted.insert(name.to_string());
            }
            _ => rejected.push(line),
        }
    }
    assert!(
        rejected.is_empty(),
        "promtool findings other than the spec counters' \"_total\":\n{}",
        rejected.join("\n")
    );
    // Exit status 3 means lint findings (those above), 0 none; anything else is an error.
    assert!(
        out.status == Some(0) || (out.status == Some(3) && !accepted.is_empty()),
        "promtool exited with {:?}:\n{}",
        out.status,
        out.text
    );
    // The check is live: the scrape's spec counters are exactly the accepted findings.
    let types = scrape.types();
    let counters: BTreeSet<String> = types
        .iter()
        .filter(|(n, k)| *k == "counter" && spec.contains(*n) && !n.ends_with("_total"))
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(accepted, counters, "promtool's _total findings");
}

struct ToolOutput {
    status: Option<i32>,
    /// stdout and stderr (promtool prints its findings on stderr).
    text: String,
}

fn promtool_check(text: &str) -> ToolOutput {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (scripts/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    ToolOutput {
        status: out.status.code(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Every implemented metric of the spec is in the scrape with the spec's kind and its exact
/// name: no `_total` or unit suffix, no `otel_scope_*` labels; Pod-scope metrics have a series
/// for a named namespace.
#[test]
fn scrape_has_every_spec_metric_with_its_kind() {
    require_root();
    let ns = Netns::new("nxpk");
    let agent = Agent::start(&[]);
    let scrape = agent.scrape();
    let types = scrape.types();
    let spec = spec_metrics();
    let spec_names: BTreeSet<&str> = spec.iter().map(|m| m.name.as_str()).collect();

    let mut problems = Vec::new();
    for m in spec_metrics_implemented() {
        match types.get(&m.name) {
            None => problems.push(format!("{}: missing", m.name)),
            Some(k) if *k != m.kind => {
                problems.push(format!("{}: # TYPE {k}, spec says {}", m.name, m.kind))
            }
            Some(_) => {}
        }
        if m.is_pod() {
            let series = scrape.find(&m.name, &[("netns", &ns.name)]);
            if series.is_empty() {
                problems.push(format!("{}: no series for netns {}", m.name, ns.name));
            }
            for s in series {
                let mut want: BTreeSet<&str> = ["k8s_node", "netns"].into();
                want.extend(m.extra_labels());
                let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
                if got != want || s.labels["k8s_node"] != "itest-node" {
                    problems.push(format!("{}: labels {:?}", m.name, s.labels));
                }
            }
        }
    }
    // Names: every family and sample name is either a spec name or not a spec name plus a
    // suffix (`netexporter_tcp_insegs_total`, `netexporter_qdisc_bytes_bytes`, ...).
    let names: BTreeSet<&str> = types
        .keys()
        .map(String::as_str)
        .chain(scrape.samples.iter().map(|s| s.name.as_str()))
        .collect();
    for n in &names {
        if spec_names.contains(n) {
            continue;
        }
        if let Some(base) = spec_names
            .iter()
            .find(|s| n.strip_prefix(**s).is_some_and(|r| r.starts_with('_')))
        {
            problems.push(format!("{n}: the spec's {base} with a suffix"));
        }
    }
    let histogram_family = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .any(|f| types.get(f).is_some_and(|k| k == "histogram"))
    };
    for s in &scrape.samples {
        if !types.contains_key(&s.name) && !histogram_family(&s.name) {
            problems.push(format!(
                "sample {} has no # TYPE of its own name (nor of a histogram it belongs to)",
                s.name
            ));
        }
        if let Some(l) = s.labels.keys().find(|l| l.starts_with("otel_scope_")) {
            problems.push(format!("{}: label {l}", s.name));
        }
    }
    assert!(
        problems.is_empty(),
        "scrape against the spec:\n{}\n\nscrape:\n{}",
        problems.join("\n"),
        scrape.text
    );
}
