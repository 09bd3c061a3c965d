//! Trace export (`docs/tracing.md`): the real agent sends one trace per collection to an OTLP
//! receiver built on the official protobuf definitions, over gRPC and over HTTP/protobuf,
//! with a `netns` span per namespace and a `probe` span per probe, errors on the spans of
//! the probes that failed. Off by default; a hung receiver costs counted spans, not scrapes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use net_exporter::probes::{self, Scope};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use crate::events_export::ConfigFile;
use crate::harness::*;
use crate::otlp_receiver::{OtlpReceiver, Protocol};

/// The checks read the real node: off, they would only add noise to the log.
const CHECKS_OFF: &str = "checks:\n  enabled: false\n";

/// A /proc for the agent: the fixture tree for the node's own files, `self` the agent's
/// own (so discovery finds the node's namespace, and the named ones beside it), and for the
/// other namespaces a `thread-self/net` whose `snmp` is garbage: `tcp` fails in every
/// namespace but the node's, deterministically, and the other probes work.
fn procfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2e/proc");
    run(&[
        "cp",
        "-a",
        &format!("{}/.", fixture.display()),
        &dir.path().display().to_string(),
    ]);
    std::os::unix::fs::symlink("/proc/self", dir.path().join("self")).expect("symlink self");
    let net = dir.path().join("thread-self/net");
    std::fs::create_dir_all(&net).expect("mkdir thread-self/net");
    for f in ["netstat", "sockstat"] {
        std::fs::copy(fixture.join("net").join(f), net.join(f)).expect("copy");
    }
    std::fs::write(net.join("snmp"), b"\xff\xfegarbage\nTcp: a b\nTcp: 1\n").expect("write");
    dir
}

/// The agent with trace export on towards `receiver`, reading the node and `ns` only.
fn traced_agent(
    receiver: &OtlpReceiver,
    protocol: Protocol,
    ns: &Netns,
    proc: &Path,
) -> (Agent, tempfile::TempDir) {
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let cfg = cfg_dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!("{CHECKS_OFF}collection:\n  include_netns: [{}]\n", ns.name),
    )
    .expect("write config");
    // gRPC through the signal's own variable, HTTP through the base URL (the agent appends
    // /v1/traces; the receiver refuses any other path).
    let endpoint = match protocol {
        Protocol::Grpc => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint()),
        Protocol::HttpProtobuf => ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
    };
    let agent = Agent::start_with_env(
        &[
            &format!("--path.procfs={}", proc.display()),
            &format!("--config.file={}", cfg.display()),
        ],
        &[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.flag()),
            (endpoint.0, &endpoint.1),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    (agent, cfg_dir)
}

fn spans(requests: &[ExportTraceServiceRequest]) -> Vec<Span> {
    requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| ss.spans.clone())
        .collect()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr(s: &Span, key: &str) -> Option<String> {
    match attr(&s.attributes, key) {
        Some(Value::StringValue(v)) => Some(v.clone()),
        _ => None,
    }
}

fn int_attr(s: &Span, key: &str) -> Option<i64> {
    match attr(&s.attributes, key) {
        Some(Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

fn bool_attr(s: &Span, key: &str) -> Option<bool> {
    match attr(&s.attributes, key) {
        Some(Value::BoolValue(v)) => Some(*v),
        _ => None,
    }
}

fn status(s: &Span) -> (StatusCode, String) {
    let st = s.status.clone().unwrap_or_default();
    (
        StatusCode::try_from(st.code).unwrap_or(StatusCode::Unset),
        st.message,
    )
}

/// Spans by trace, for the traces whose root (which ends, and is queued, last) has arrived.
fn complete_traces(spans: &[Span]) -> BTreeMap<Vec<u8>, Vec<Span>> {
    let mut by_trace: BTreeMap<Vec<u8>, Vec<Span>> = BTreeMap::new();
    for s in spans {
        by_trace
            .entry(s.trace_id.clone())
            .or_default()
            .push(s.clone());
    }
    by_trace.retain(|_, spans| spans.iter().any(|s| s.parent_span_id.is_empty()));
    by_trace
}

/// Scrapes until a complete trace has a `netns` span for `ns`; returns every complete trace.
fn wait_for_trace(
    agent: &Agent,
    receiver: &OtlpReceiver,
    ns: &Netns,
) -> BTreeMap<Vec<u8>, Vec<Span>> {
    poll(Duration::from_secs(30), || {
        agent.scrape();
        let traces = complete_traces(&spans(&receiver.traces()));
        traces
            .values()
            .flatten()
            .any(|s| s.name == "netns" && str_attr(s, "netns").as_deref() == Some(&ns.name))
            .then_some(traces)
    })
    .unwrap_or_else(|| {
        panic!(
            "no trace with a netns span for {} within 30s; refused: {:?}; log:\n{}",
            ns.name,
            receiver.refused(),
            agent.log_text()
        )
    })
}

fn traces_arrive_with_their_structure(protocol: Protocol) {
    require_root();
    let receiver = OtlpReceiver::start(protocol);
    let ns = Netns::new("trc");
    let proc = procfs();
    let (agent, _cfg) = traced_agent(&receiver, protocol, &ns, proc.path());
    let traces = wait_for_trace(&agent, &receiver, &ns);
    let scrape = agent.scrape();
    let enabled: BTreeSet<String> = scrape
        .find("netexporter_scrape_collector_success", &[])
        .iter()
        .filter_map(|s| s.labels.get("collector").cloned())
        .filter(|c| c != "netns")
        .collect();
    assert!(
        enabled.contains("tcp") && enabled.contains("sock"),
        "{enabled:?}"
    );
    let pod_scope: BTreeSet<String> = enabled
        .iter()
        .filter(|p| probes::by_name(p).is_some_and(|p| p.scope == Scope::Pod))
        .cloned()
        .collect();

    // Every resource says who sent it.
    for rs in receiver.traces().iter().flat_map(|r| &r.resource_spans) {
        let attrs = &rs.resource.as_ref().expect("resource").attributes;
        assert_eq!(
            attr(attrs, "service.name"),
            Some(&Value::StringValue("net-exporter".into()))
        );
        assert_eq!(
            attr(attrs, "k8s.node.name"),
            Some(&Value::StringValue("itest-node".into()))
        );
    }

    let mut collections = BTreeSet::new();
    let mut checked = 0;
    for (trace_id, spans) in &traces {
        assert_eq!(trace_id.len(), 16);
        // One root per trace: the collection, with a number of its own.
        let roots: Vec<&Span> = spans
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "one root per trace: {spans:#?}");
        let root = roots[0];
        assert_eq!(root.name, "collection");
        let n = int_attr(root, "collection").expect("collection number");
        assert!(collections.insert(n), "collection {n} in two traces");
        let by_id: BTreeMap<&[u8], &Span> =
            spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
        let children = |parent: &Span| -> Vec<&Span> {
            spans
                .iter()
                .filter(|s| s.parent_span_id == parent.span_id)
                .collect()
        };
        // Every span hangs off a span of its own trace, the way the collection is built.
        for s in spans.iter().filter(|s| !s.parent_span_id.is_empty()) {
            let parent = by_id
                .get(s.parent_span_id.as_slice())
                .unwrap_or_else(|| panic!("{} without its parent in the trace", s.name));
            let expected_parent = match s.name.as_str() {
                "discover" | "assemble" | "netns" => "collection",
                "probe" => "netns",
                other => panic!("unexpected span {other}"),
            };
            assert_eq!(parent.name, expected_parent, "parent of {}", s.name);
            assert!(s.start_time_unix_nano >= parent.start_time_unix_nano);
            assert!(s.end_time_unix_nano <= parent.end_time_unix_nano);
        }
        let top: BTreeSet<&str> = children(root).iter().map(|s| s.name.as_str()).collect();
        assert_eq!(top, BTreeSet::from(["assemble", "discover", "netns"]));
        let netns: Vec<&Span> = children(root)
            .into_iter()
            .filter(|s| s.name == "netns")
            .collect();
        assert_eq!(netns.len(), 2, "the node and the test's namespace");
        assert_eq!(int_attr(root, "targets"), Some(2));

        let probe_spans = |ns_span: &Span| -> BTreeMap<String, (StatusCode, String, bool)> {
            children(ns_span)
                .into_iter()
                .map(|p| {
                    let (code, message) = status(p);
                    let exception = p.events.iter().any(|e| e.name == "exception");
                    (
                        str_attr(p, "probe").expect("probe attribute"),
                        (code, message, exception),
                    )
                })
                .collect()
        };
        let node = netns
            .iter()
            .find(|s| bool_attr(s, "netns.node") == Some(true))
            .expect("the node's netns span");
        let node_probes = probe_spans(node);
        assert_eq!(
            node_probes.keys().cloned().collect::<BTreeSet<_>>(),
            enabled,
            "the node runs every enabled probe"
        );
        assert_eq!(node_probes["tcp"].0, StatusCode::Unset, "node tcp works");

        let Some(pod) = netns
            .iter()
            .find(|s| str_attr(s, "netns").as_deref() == Some(&ns.name))
        else {
            continue;
        };
        assert_eq!(bool_attr(pod, "netns.node"), Some(false));
        assert_eq!(int_attr(pod, "netns.inode"), Some(ns.inode() as i64));
        let pod_probes = probe_spans(pod);
        assert_eq!(
            pod_probes.keys().cloned().collect::<BTreeSet<_>>(),
            pod_scope,
            "a namespace runs the Pod-scope probes"
        );
        let (code, message, exception) = &pod_probes["tcp"];
        assert_eq!(
            *code,
            StatusCode::Error,
            "tcp on garbage snmp: {pod_probes:?}"
        );
        assert!(
            message.contains("snmp"),
            "the error names its source: {message}"
        );
        assert!(exception, "an exception event on the failed probe");
        assert_eq!(pod_probes["sock"].0, StatusCode::Unset, "sock works");
        assert!(int_attr(pod, "series").is_some_and(|n| n > 0));
        checked += 1;
    }
    assert!(checked > 0);
    assert!(receiver.refused().is_empty(), "{:?}", receiver.refused());
    // Exports worked: nothing lost.
    assert_eq!(
        scrape.value(
            "netexporter_export_failures_total",
            &[("exporter", "otlp"), ("signal", "traces")]
        ),
        Some(0.0)
    );
}

#[test]
fn traces_over_grpc() {
    traces_arrive_with_their_structure(Protocol::Grpc);
}

#[test]
fn traces_over_http_protobuf() {
    traces_arrive_with_their_structure(Protocol::HttpProtobuf);
}

#[test]
fn off_by_default_and_with_none() {
    require_root();
    assert!(
        std::env::var_os("OTEL_TRACES_EXPORTER").is_none(),
        "run the tests without OTEL_TRACES_EXPORTER in the environment"
    );
    let receiver = OtlpReceiver::start(Protocol::HttpProtobuf);
    let url = format!("{}/v1/traces", receiver.endpoint());
    for exporter in [None, Some("none")] {
        let mut env = vec![
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ];
        if let Some(e) = exporter {
            env.push(("OTEL_TRACES_EXPORTER", e));
        }
        let agent = Agent::start_with_env(&[], &env);
        for _ in 0..3 {
            let s = agent.scrape();
            assert!(
                s.value("netexporter_targets", &[])
                    .is_some_and(|n| n >= 1.0)
            );
            assert!(
                s.find("netexporter_export_failures_total", &[("signal", "traces")])
                    .is_empty(),
                "no traces series while trace export is off"
            );
        }
        std::thread::sleep(Duration::from_secs(1));
        assert!(!agent.log_text().contains("trace export on"));
    }
    assert!(receiver.traces().is_empty());
    assert!(receiver.refused().is_empty(), "{:?}", receiver.refused());
}

#[test]
fn bad_trace_configuration_exits_2_naming_the_variable() {
    for (env, field) in [
        (
            vec![("OTEL_TRACES_EXPORTER", "zipkin")],
            "OTEL_TRACES_EXPORTER",
        ),
        (
            vec![
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "localhost:4318"),
            ],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        (
            vec![
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ],
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_net-exporter"));
        cmd.arg("--web.listen-address=127.0.0.1:0")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run net-exporter");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(
            stderr.contains(&format!("net-exporter: configuration error: {field}: ")),
            "{env:?}: {stderr}"
        );
    }
}

/// A receiver that takes connections and never answers, then a real one on the same port:
/// lost spans are counted, scrapes stay fast, the outage is logged once when it starts and
/// once when it ends, and the queue overflow it causes once (its end is logged after a quiet
/// minute, see the unit tests).
#[test]
fn a_hung_receiver_costs_counted_spans_not_scrapes() {
    require_root();
    let hole = OtlpReceiver::black_hole_on(0).expect("black hole");
    let port = hole.port;
    // The node alone: 14 spans or so per collection, within the queue of 32 once exports go.
    let config = node_only_config();
    let url = format!("http://127.0.0.1:{port}/v1/traces");
    let agent = Agent::start_with_env(
        &[&config.flag],
        &[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "32"),
        ],
    );
    let lost = |s: &Scrape| {
        s.value(
            "netexporter_export_failures_total",
            &[("exporter", "otlp"), ("signal", "traces")],
        )
        .unwrap_or(0.0)
    };
    // Scrapes do not wait for exports: each one stays fast while the exporter hangs.
    let started = Instant::now();
    let mut scrapes = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        agent.scrape();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a scrape took {:?}",
            t.elapsed()
        );
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(scrapes > 5);
    let before = lost(&agent.scrape());
    assert!(
        before > 32.0,
        "timed-out exports and queue overflow are counted: {before}"
    );
    let log = agent.log_text();
    let count = |log: &str, what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(count(&log, "trace export failing"), 1, "{log}");
    assert_eq!(count(&log, "trace queue full"), 1, "{log}");

    // The collector comes back on the same port.
    drop(hole);
    let receiver = poll(Duration::from_secs(10), || {
        OtlpReceiver::start_on(Protocol::HttpProtobuf, port).ok()
    })
    .expect("rebind the receiver's port");
    poll(Duration::from_secs(20), || {
        agent.scrape();
        let log = agent.log_text();
        (!receiver.traces().is_empty() && count(&log, "trace export recovered") == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("no recovery; log:\n{}", agent.log_text()));
    let log = agent.log_text();
    assert_eq!(count(&log, "trace export failing"), 1, "{log}");
    assert_eq!(count(&log, "trace queue full"), 1, "{log}");
    assert!(receiver.refused().is_empty(), "{:?}", receiver.refused());
    // Recovered: what arrives is no longer counted as lost. Each scrape's ~15 spans are given
    // time to leave the queue of 32 before the next scrape adds its own (back to back, two
    // fast scrapes overflow it: that is a loss, rightly counted).
    let after = lost(&agent.scrape());
    std::thread::sleep(Duration::from_millis(500));
    agent.scrape();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lost(&agent.scrape()), after);
}

/// Every check off, and no namespace but the node's.
fn node_only_config() -> ConfigFile {
    ConfigFile::new(&format!(
        "{CHECKS_OFF}collection:\n  include_netns: [no-such-namespace]\n"
    ))
}

/// Spans still queued when the agent stops are exported before it exits.
#[test]
fn queued_spans_are_flushed_at_shutdown() {
    require_root();
    let receiver = OtlpReceiver::start(Protocol::Grpc);
    let config = node_only_config();
    let endpoint = receiver.endpoint();
    // Nothing is exported on its own: the batch (512) is never full, the timer is an hour.
    let agent = Agent::start_with_env(
        &[&config.flag],
        &[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
        ],
    );
    agent.scrape();
    std::thread::sleep(Duration::from_millis(500));
    assert!(receiver.traces().is_empty(), "exported before shutdown");
    run(&["kill", "-TERM", &agent.pid().to_string()]);
    let got = poll(Duration::from_secs(15), || {
        let traces = complete_traces(&spans(&receiver.traces()));
        (!traces.is_empty()).then_some(traces)
    })
    .unwrap_or_else(|| panic!("nothing flushed at shutdown; log:\n{}", agent.log_text()));
    assert!(
        got.values()
            .flatten()
            .any(|s| s.name == "probe" && str_attr(s, "probe").as_deref() == Some("tcp"))
    );
    // Stopped cleanly, after the flush.
    let log = poll(Duration::from_secs(10), || {
        let log = agent.log_text();
        log.contains("net-exporter stopped").then_some(log)
    })
    .expect("the agent stops");
    assert!(!log.contains("panicked"), "{log}");
}
