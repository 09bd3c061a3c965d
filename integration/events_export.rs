//! Events leaving the agent: JSON lines on stdout (the spec's exact shape), OpenTelemetry log
//! records over OTLP (gRPC and HTTP/protobuf) and to Grafana Loki's OTLP endpoint, several
//! sinks at once, a dead logs endpoint, and `net-exporter diagnose`.
//!
//! The agent is made to emit a known event on any machine: `checks.expect_tcp_sack` is set to
//! the opposite of `/proc/sys/net/ipv4/tcp_sack`, which gives a `TCPSackKernelParam` event.
//! Every check but `KernelParam` is turned off (their names are read from the registry), and
//! the assertions look at that one event type only.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};

use crate::harness::*;
use crate::otlp_receiver::{GRPC_LOGS_PATH, LogsReceived, OtlpReceiver, Protocol};

/// The event type every test provokes.
pub(crate) const KIND: &str = "TCPSackKernelParam";
const SYSCTL: &str = "net.ipv4.tcp_sack";

/// A limit for everything the agent does in the background (checks every second, log batches
/// every second).
const WAIT: Duration = Duration::from_secs(30);

fn read_sysctl(rel: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{rel}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// (current value of `net.ipv4.tcp_sack`, the value the tests expect instead).
fn sack() -> (String, u32) {
    let current = read_sysctl("net/ipv4/tcp_sack").expect("read /proc/sys/net/ipv4/tcp_sack");
    let expect = if current == "0" { 1 } else { 0 };
    (current, expect)
}

/// The message of the provoked event.
pub(crate) fn expected_msg() -> String {
    let (current, expect) = sack();
    format!("{SYSCTL}:current_value={current},expect_value={expect}")
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after the epoch")
        .as_nanos()
}

/// `ts` (ns since the epoch) is within a minute of now.
fn recent(ts: u128) -> bool {
    now_ns().abs_diff(ts) < Duration::from_secs(60).as_nanos()
}

/// A config file in a temporary directory, removed on drop.
pub(crate) struct ConfigFile {
    _dir: tempfile::TempDir,
    pub(crate) flag: String,
}

impl ConfigFile {
    pub(crate) fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("net-exporter.yaml");
        std::fs::write(&path, text).expect("write config");
        Self {
            _dir: dir,
            flag: format!("--config.file={}", path.display()),
        }
    }

    /// Only KernelParam, every second, its TCP SACK expectation against the machine, and
    /// `extra_checks` (indented lines under `checks:`) and `rest` (top-level sections)
    /// appended.
    pub(crate) fn disagreeing(extra_checks: &str, rest: &str) -> Self {
        let (_, expect) = sack();
        let off = checks_off_but(&["KernelParam"]);
        Self::new(&format!(
            "checks:\n  interval: 1s\n  KernelParam:\n    expect_tcp_sack: {expect}\n{off}{extra_checks}{rest}"
        ))
    }
}

/// Starts the agent (standalone) with a config file.
fn agent(config: &ConfigFile) -> Agent {
    Agent::start(&["--mode=standalone", &config.flag])
}

/// The event JSON lines of the agent's output: the lines starting with `{`.
fn json_lines(agent: &Agent) -> Vec<String> {
    agent
        .log_text()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_string)
        .collect()
}

/// Checks that `line` is exactly `{"timestamp":<ns>,"type":"...","msg":"..."}` and returns
/// (timestamp, type, msg).
fn parse_event_line(line: &str) -> (u64, String, String) {
    assert!(
        line.starts_with("{\"timestamp\":"),
        "event line does not start with the timestamp: {line}"
    );
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["msg", "timestamp", "type"], "keys of {line}");
    let ts = obj["timestamp"]
        .as_u64()
        .unwrap_or_else(|| panic!("timestamp is not a non-negative integer: {line}"));
    let kind = obj["type"]
        .as_str()
        .unwrap_or_else(|| panic!("type is not a string: {line}"))
        .to_string();
    let msg = obj["msg"]
        .as_str()
        .unwrap_or_else(|| panic!("msg is not a string: {line}"))
        .to_string();
    // Key order and the absence of any whitespace: the line is the canonical rendering.
    let canonical = format!(
        "{{\"timestamp\":{ts},\"type\":{},\"msg\":{}}}",
        serde_json::Value::from(kind.as_str()),
        serde_json::Value::from(msg.as_str())
    );
    assert_eq!(line, canonical, "event line not in the spec's exact shape");
    (ts, kind, msg)
}

/// The agent's event lines of type [`KIND`], each checked for shape, message and time.
pub(crate) fn sack_lines(agent: &Agent) -> Vec<(u64, String)> {
    let want = expected_msg();
    json_lines(agent)
        .iter()
        .map(|l| (l, parse_event_line(l)))
        .filter(|(_, (_, kind, _))| kind == KIND)
        .map(|(l, (ts, _, msg))| {
            assert_eq!(msg, want, "msg of {l}");
            assert!(recent(u128::from(ts)), "timestamp not within a minute: {l}");
            (ts, l.clone())
        })
        .collect()
}

/// Waits until the agent has printed at least one [`KIND`] line.
pub(crate) fn wait_sack_lines(agent: &Agent, at_least: usize) -> Vec<(u64, String)> {
    poll(WAIT, || {
        let lines = sack_lines(agent);
        (lines.len() >= at_least).then_some(lines)
    })
    .unwrap_or_else(|| {
        panic!(
            "fewer than {at_least} {KIND} lines on stdout after {WAIT:?}; agent log:\n{}",
            agent.log_text()
        )
    })
}

pub(crate) fn events_count(s: &Scrape) -> Option<f64> {
    s.value("netexporter_events", &[("type", KIND)])
}

pub(crate) fn logs_failures(s: &Scrape, exporter: &str) -> Option<f64> {
    s.value(
        "netexporter_export_failures_total",
        &[("exporter", exporter), ("signal", "logs")],
    )
}

// ---- The logs endpoints (served by `otlp_receiver.rs`) ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Grpc,
    Http,
    Loki,
}

impl Endpoint {
    /// The path the requests must use.
    fn path(self) -> &'static str {
        match self {
            Endpoint::Grpc => GRPC_LOGS_PATH,
            Endpoint::Http => "/v1/logs",
            Endpoint::Loki => "/otlp/v1/logs",
        }
    }

    fn receiver(self) -> OtlpReceiver {
        OtlpReceiver::start(match self {
            Endpoint::Grpc => Protocol::Grpc,
            Endpoint::Http | Endpoint::Loki => Protocol::HttpProtobuf,
        })
    }
}

/// Waits (at most [`WAIT`]) for a log record whose body is `msg` at `receiver`; returns the
/// request it came in, the record's resource attributes and the record.
fn wait_record(
    receiver: &OtlpReceiver,
    msg: &str,
    agent: &Agent,
) -> (LogsReceived, BTreeMap<String, String>, LogRecord) {
    poll(WAIT, || {
        receiver.logs().into_iter().find_map(|r| {
            find_record(&r.request, msg).map(|(res, rec)| (r.clone(), res, rec))
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no log record with body {msg:?} after {WAIT:?} ({} requests received); refused: {:?}\nagent log:\n{}",
            receiver.logs().len(),
            receiver.refused(),
            agent.log_text()
        )
    })
}

fn value_text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_text(kv.value.as_ref())))
        .collect()
}

/// The first record of `req` with body `msg`, with its resource's attributes.
fn find_record(
    req: &ExportLogsServiceRequest,
    msg: &str,
) -> Option<(BTreeMap<String, String>, LogRecord)> {
    req.resource_logs.iter().find_map(|rl| {
        let rec = rl
            .scope_logs
            .iter()
            .flat_map(|sl| &sl.log_records)
            .find(|r| {
                matches!(
                    r.body.as_ref().and_then(|b| b.value.as_ref()),
                    Some(any_value::Value::StringValue(s)) if s == msg
                )
            })?;
        let res = rl
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        Some((res, rec.clone()))
    })
}

/// The record and its resource are what the spec and the Loki labels need.
fn check_record(resource: &BTreeMap<String, String>, rec: &LogRecord) {
    let msg = expected_msg();
    assert_eq!(value_text(rec.body.as_ref()), msg, "body of {rec:?}");
    assert_eq!(
        rec.severity_number,
        SeverityNumber::Warn as i32,
        "severity_number of {rec:?}"
    );
    assert_eq!(rec.severity_text, "WARN", "severity_text of {rec:?}");
    let a = attrs(&rec.attributes);
    assert!(
        rec.event_name == KIND || a.get("event.name").map(String::as_str) == Some(KIND),
        "neither event_name nor the event.name attribute is {KIND}: {rec:?}"
    );
    for (k, v) in [
        ("type", KIND),
        ("probe", "KernelParam"),
        ("k8s.node.name", "itest-node"),
        ("sysctl", SYSCTL),
    ] {
        assert_eq!(
            a.get(k).map(String::as_str),
            Some(v),
            "record attribute {k}: {a:?}"
        );
    }
    assert!(
        recent(u128::from(rec.time_unix_nano)),
        "record time {} not within a minute of now",
        rec.time_unix_nano
    );
    for (k, v) in [
        ("service.name", "net-exporter"),
        ("k8s.node.name", "itest-node"),
    ] {
        assert_eq!(
            resource.get(k).map(String::as_str),
            Some(v),
            "resource attribute {k}: {resource:?}"
        );
    }
}

pub(crate) fn events_yaml(sinks: &str, otlp: Option<(&str, &str)>, loki: Option<&str>) -> String {
    let mut s = format!("events:\n  sinks: [{sinks}]\n");
    if let Some((endpoint, protocol)) = otlp {
        s += &format!("  otlp_endpoint: {endpoint}\n  otlp_protocol: {protocol}\n");
    }
    if let Some(endpoint) = loki {
        s += &format!("  loki_endpoint: {endpoint}\n");
    }
    s
}

// ---- stdout ----

/// Default sinks: the event is one JSON line of exactly the spec's shape, and
/// `netexporter_events{type}` counts the lines.
#[test]
fn events_stdout_json_line_and_counter() {
    require_root();
    // Repeated every second, so that the counter is compared over several events.
    let config = ConfigFile::disagreeing("  repeat_interval: 1s\n", "");
    let agent = agent(&config);
    wait_sack_lines(&agent, 2);
    // The counter goes up just before the line is written: compare when the lines before
    // and after a scrape agree with it.
    let agreed = poll(WAIT, || {
        let before = sack_lines(&agent).len();
        let count = events_count(&agent.scrape());
        let after = sack_lines(&agent).len();
        (before == after && count == Some(before as f64)).then_some(before)
    });
    assert!(
        agreed.is_some(),
        "netexporter_events{{type={KIND:?}}} ({:?}) never equal to the {KIND} lines on stdout ({}); agent log:\n{}",
        events_count(&agent.scrape()),
        sack_lines(&agent).len(),
        agent.log_text()
    );
    // Every JSON line on stdout is an event of the spec's shape, whatever its type.
    for l in json_lines(&agent) {
        parse_event_line(&l);
    }
}

// ---- OTLP logs ----

fn check_otlp_only(protocol: &str, endpoint: Endpoint) {
    require_root();
    let receiver = endpoint.receiver();
    let config = ConfigFile::disagreeing(
        "",
        &events_yaml("otlp", Some((&receiver.endpoint(), protocol)), None),
    );
    let agent = agent(&config);
    let (req, resource, rec) = wait_record(&receiver, &expected_msg(), &agent);
    check_record(&resource, &rec);
    assert_eq!(req.path, endpoint.path());
    let want_type = if endpoint == Endpoint::Grpc {
        "application/grpc"
    } else {
        "application/x-protobuf"
    };
    assert!(
        req.content_type
            .as_deref()
            .is_some_and(|t| t.starts_with(want_type)),
        "content type {:?}",
        req.content_type
    );
    assert_eq!(receiver.refused(), Vec::<String>::new());
    let s = agent.scrape();
    assert!(
        events_count(&s).is_some_and(|n| n >= 1.0),
        "event not counted:\n{}",
        s.text
    );
    assert_eq!(logs_failures(&s, "otlp"), Some(0.0), "{}", agent.log_text());
    // The stdout sink is not configured: no event line at all.
    assert_eq!(
        json_lines(&agent),
        Vec::<String>::new(),
        "event lines on stdout without the stdout sink"
    );
}

#[test]
fn events_otlp_grpc() {
    check_otlp_only("grpc", Endpoint::Grpc);
}

#[test]
fn events_otlp_http_protobuf() {
    check_otlp_only("http/protobuf", Endpoint::Http);
}

// ---- Loki ----

/// Loki's native OTLP endpoint: `POST <loki>/otlp/v1/logs`, protobuf; the node and service are
/// resource attributes (Loki's labels).
#[test]
fn events_loki_otlp_endpoint() {
    require_root();
    let loki = Endpoint::Loki.receiver();
    let config = ConfigFile::disagreeing("", &events_yaml("loki", None, Some(&loki.endpoint())));
    let agent = agent(&config);
    let (req, resource, rec) = wait_record(&loki, &expected_msg(), &agent);
    assert_eq!(req.path, "/otlp/v1/logs");
    assert_eq!(req.content_type.as_deref(), Some("application/x-protobuf"));
    check_record(&resource, &rec);
    assert_eq!(loki.refused(), Vec::<String>::new());
    let s = agent.scrape();
    assert_eq!(logs_failures(&s, "loki"), Some(0.0), "{}", agent.log_text());
    assert_eq!(json_lines(&agent), Vec::<String>::new());
}

// ---- Several sinks ----

/// `sinks: [stdout, otlp]`: the same event on both, with the same timestamp.
#[test]
fn events_stdout_and_otlp_together() {
    require_root();
    let receiver = Endpoint::Http.receiver();
    let config = ConfigFile::disagreeing(
        "",
        &events_yaml(
            "stdout, otlp",
            Some((&receiver.endpoint(), "http/protobuf")),
            None,
        ),
    );
    let agent = agent(&config);
    let (_, resource, rec) = wait_record(&receiver, &expected_msg(), &agent);
    check_record(&resource, &rec);
    let lines = wait_sack_lines(&agent, 1);
    assert!(
        lines
            .iter()
            .any(|(ts, _)| u128::from(*ts) == u128::from(rec.time_unix_nano)),
        "no stdout line with the record's timestamp {}: {lines:?}",
        rec.time_unix_nano
    );
}

// ---- A dead endpoint ----

/// Nothing listens at the logs endpoints: /metrics keeps being served, events keep going to
/// stdout, and the lost records are counted per exporter.
#[test]
fn events_dead_logs_endpoint_is_counted() {
    require_root();
    for protocol in ["grpc", "http/protobuf"] {
        let dead_otlp = DeadPort::new();
        let dead_loki = DeadPort::new();
        let otlp_url = format!("http://127.0.0.1:{}", dead_otlp.port);
        let loki_url = format!("http://127.0.0.1:{}", dead_loki.port);
        let config = ConfigFile::disagreeing(
            "  repeat_interval: 1s\n",
            &events_yaml(
                "stdout, otlp, loki",
                Some((&otlp_url, protocol)),
                Some(&loki_url),
            ),
        );
        let agent = agent(&config);
        let counted = poll(WAIT, || {
            // Each scrape must succeed while the exports fail (`scrape` asserts 200).
            let s = agent.scrape();
            let otlp = logs_failures(&s, "otlp").unwrap_or(0.0);
            let loki = logs_failures(&s, "loki").unwrap_or(0.0);
            (otlp > 0.0 && loki > 0.0).then_some(())
        });
        assert!(
            counted.is_some(),
            "{protocol}: failed log exports not counted after {WAIT:?}:\n{}\nagent log:\n{}",
            agent.scrape().text,
            agent.log_text()
        );
        // Events still reach stdout after the failures.
        let before = wait_sack_lines(&agent, 1).len();
        wait_sack_lines(&agent, before + 1);
        let (status, _) = http_get(agent.port, "/metrics").expect("scrape after failures");
        assert_eq!(status, 200);
    }
}

// ---- diagnose ----

/// Runs `net-exporter <args>` to its end (at most [`WAIT`]); (exit code, stdout, stderr).
fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_net-exporter"))
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run net-exporter");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for net-exporter") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("{args:?} still running after {WAIT:?}; stdout:\n{stdout}\nstderr:\n{stderr}")
    });
    (status.code(), stdout, stderr)
}

/// `diagnose` with the machine disagreeing: exit 1 and the event as a JSON line (and as a
/// table row); with a config that agrees with the machine: exit 0, `no problem found`.
#[test]
fn events_diagnose_exit_codes_and_output() {
    require_root();
    let config = ConfigFile::disagreeing("", "");
    let base: [&str; 3] = ["--mode=standalone", "--node-name=itest-node", &config.flag];

    let (code, stdout, stderr) =
        run_binary(&[&base[..], &["diagnose", "--output", "json"][..]].concat());
    assert_eq!(code, Some(1), "json: stdout:\n{stdout}\nstderr:\n{stderr}");
    let mut sack = Vec::new();
    for l in stdout.lines() {
        let (ts, kind, msg) = parse_event_line(l);
        if kind == KIND {
            assert_eq!(msg, expected_msg());
            assert!(recent(u128::from(ts)), "timestamp of {l}");
            sack.push(l);
        }
    }
    assert_eq!(sack.len(), 1, "{KIND} lines in:\n{stdout}");

    let (code, stdout, stderr) = run_binary(&[&base[..], &["diagnose"][..]].concat());
    assert_eq!(code, Some(1), "table: stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.lines().next().is_some_and(|h| h.starts_with("TYPE")),
        "table header:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some(KIND) && f.next() == Some(expected_msg().as_str())
        }),
        "no {KIND} row:\n{stdout}"
    );

    // Every expectation of KernelParam equal to the machine: RPFilter looks at no interface,
    // proxy ARP at lo; the conntrack parameter is skipped when its module is not loaded.
    let get = |rel: &str| read_sysctl(rel).unwrap_or_else(|| panic!("read /proc/sys/{rel}"));
    let mut agreeing = format!(
        "checks:\n{}  node:\n    pod_interface_prefixes: [nonexistentprefix]\n    uplink: lo\n  KernelParam:\n    expect_proxy_arp: {}\n    expect_tcp_sack: {}\n    expect_tcp_syncookies: {}\n",
        checks_off_but(&["KernelParam"]),
        get("net/ipv4/conf/lo/proxy_arp"),
        get("net/ipv4/tcp_sack"),
        get("net/ipv4/tcp_syncookies"),
    );
    if let Some(v) = read_sysctl("net/netfilter/nf_conntrack_tcp_be_liberal") {
        agreeing += &format!("    expect_tcp_be_liberal: {v}\n");
    }
    let healthy = ConfigFile::new(&agreeing);
    let (code, stdout, stderr) = run_binary(&[
        "--mode=standalone",
        "--node-name=itest-node",
        &healthy.flag,
        "diagnose",
    ]);
    assert_eq!(
        code,
        Some(0),
        "config:\n{agreeing}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("no problem found"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
