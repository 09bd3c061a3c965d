//! What operators look at (README, "What operators look at"): the Grafana dashboards of
//! `deploy/grafana/`, the Prometheus rules of `deploy/prometheus/`, the OpenTelemetry Collector
//! configurations of `otel-config/` and the documents that go with them.
//!
//! - Every PromQL query of every dashboard panel runs against a real Prometheus that scrapes a
//!   real agent (standalone) reading two namespaces with TCP traffic, a listener whose accept
//!   queue is full, and planted drops (UDP to a closed port: NO_SOCKET; an iptables DROP rule:
//!   NETFILTER_DROP), with the rules loaded. For the Pod peers dashboard the client namespace
//!   also has refused connects, RSTs both ways, retransmits (an iptables `statistic` rule) and a
//!   listener of its own with a connection in its accept queue; the service map's edges are
//!   checked label by label. The template variables get the values their own
//!   `label_values` queries return (the agent's node, the namespace with the drops, its
//!   interface...), then "All"; each query must return data. The few panels of Kubernetes-mode
//!   metrics (podip, kubernetes_*) cannot have data here: they must parse and return nothing.
//! - The dashboards are checked structurally: schema version, datasource variables and no
//!   hard-coded datasource, variables defined before use and chained, metric and label names
//!   that the agent exports, the panels the issue asks for, a layout without overlaps.
//! - `promtool check rules` and `promtool test rules` (a test per alert: fires and stays quiet),
//!   and the live rules: loaded, evaluated without error, the drop alert pending on the planted
//!   drops.
//! - LogQL (Loki panels, docs/events.md) is parsed with Grafana's own LogQL grammar
//!   (`@grafana/lezer-logql`, installed with npm into `.cache/` on first use): no Loki here.
//! - The Collector configurations structurally: no Collector build can be installed here
//!   (otel-config/README.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn yaml(rel: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

/// Fails with every problem at once.
fn report(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ---- Names the agent exports ----

/// Every label an agent series can carry (docs/metrics.md), plus the scrape's own.
const LABELS: &[&str] = &[
    "k8s_node",
    "k8s_namespace",
    "k8s_pod",
    "netns",
    "if_name",
    "reason",
    "collector",
    "type",
    "check",
    "probe",
    "family",
    "attach",
    "role",
    "port",
    "peer",
    "peer_kind",
    "backend",
    "backend_kind",
    "resolver",
    "resolver_kind",
    "protocol",
    "rcode",
    "direction",
    "le",
    "program",
    "map",
    "version",
    "exporter",
    "signal",
    "job",
    "instance",
    "shared",
];

/// Metrics that exist in Kubernetes mode only (docs/kubernetes.md): a standalone agent has no
/// series of them.
const KUBERNETES_ONLY: &[&str] = &["netexporter_podip_", "netexporter_kubernetes_"];

/// The metric names of docs/metrics.md (generated from the code) and of the spec; a histogram's
/// series `_bucket`, `_sum` and `_count` too.
fn documented_metrics() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for row in read("docs/metrics.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
    {
        let Some((name, rest)) = row.split_once('`') else {
            continue;
        };
        if !name.starts_with("netexporter_") {
            continue;
        }
        out.insert(name.to_string());
        let kind = rest.trim_start_matches([' ', '|']).split('|').next();
        if kind.is_some_and(|k| k.trim() == "histogram") {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{suffix}"));
            }
        }
    }
    assert!(out.len() > 90, "docs/metrics.md lists only {}", out.len());
    out.extend(spec_metrics().into_iter().map(|m| m.name));
    out
}

/// `s` with the insides of string literals blanked, so that scanners see only the expression.
fn without_strings(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                    out.push(' ');
                } else if c == '\\' {
                    escaped = true;
                    out.push(' ');
                } else if c == q {
                    quote = None;
                    out.push(c);
                } else {
                    out.push(' ');
                }
            }
            None => {
                if c == '"' || c == '\'' || c == '`' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Identifiers of a PromQL expression (outside strings), in order.
fn identifiers(expr: &str) -> Vec<(usize, String)> {
    let s = without_strings(expr);
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices().chain([(s.len(), ' ')]) {
        match (start, is_ident(c) || (c == '$' && start.is_none())) {
            (None, true) => start = Some(i),
            (Some(b), false) => {
                let id = &s[b..i];
                if !id.starts_with('$') && !id.starts_with(|c: char| c.is_ascii_digit()) {
                    out.push((b, id.to_string()));
                }
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// Metric names (`netexporter_*`, recording rules `netexporter:*`, `up`) of a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    identifiers(expr)
        .into_iter()
        .map(|(_, id)| id)
        .filter(|id| id.starts_with("netexporter") || id == "up")
        .collect()
}

/// Label names of a PromQL expression: matchers inside `{...}` and the lists of `by`,
/// `without`, `on`, `ignoring`, `group_left`, `group_right`.
fn promql_labels(expr: &str) -> BTreeSet<String> {
    let s = without_strings(expr);
    let mut out = BTreeSet::new();
    // Matchers.
    let mut rest = s.as_str();
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').unwrap_or(after.len());
        for m in after[..close].split(',') {
            let name: String = m.trim().chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
        rest = &after[close..];
    }
    // Grouping lists.
    let ids = identifiers(expr);
    for (pos, id) in &ids {
        if ![
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&id.as_str())
        {
            continue;
        }
        let tail = s[pos + id.len()..].trim_start();
        if let Some(list) = tail.strip_prefix('(') {
            let list = &list[..list.find(')').unwrap_or(list.len())];
            for l in list.split(',') {
                let l = l.trim();
                if !l.is_empty() {
                    out.insert(l.to_string());
                }
            }
        }
    }
    out
}

// ---- Grafana template variables ----

/// Grafana's own variables, substituted by Grafana itself.
const GRAFANA_BUILTINS: &[&str] = &[
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__auto",
    "__from",
    "__to",
];

/// Names referenced as `$name`, `${name}`, `${name:format}` or `[[name]]`, with their spans.
/// `$1`, `${2}`: a regular expression's groups (label_replace), which Grafana leaves alone (no
/// variable name starts with a digit).
fn var_refs(s: &str) -> Vec<(std::ops::Range<usize>, String)> {
    var_refs_all(s)
        .into_iter()
        .filter(|(_, name)| !name.starts_with(|c: char| c.is_ascii_digit()))
        .collect()
}

fn var_refs_all(s: &str) -> Vec<(std::ops::Range<usize>, String)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            if b.get(i + 1) == Some(&b'{') {
                if let Some(end) = s[i..].find('}') {
                    let inner = &s[i + 2..i + end];
                    let name = inner.split(':').next().unwrap_or("").to_string();
                    out.push((i..i + end + 1, name));
                    i += end + 1;
                    continue;
                }
            } else {
                let len = s[i + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(s.len() - i - 1);
                if len > 0 {
                    out.push((i..i + 1 + len, s[i + 1..i + 1 + len].to_string()));
                    i += 1 + len;
                    continue;
                }
            }
        } else if b[i] == b'['
            && b.get(i + 1) == Some(&b'[')
            && let Some(end) = s[i..].find("]]")
        {
            let name = s[i + 2..i + end]
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            out.push((i..i + end + 2, name));
            i += end + 2;
            continue;
        }
        i += 1;
    }
    out
}

/// `s` with every variable that `values` names replaced by its value.
fn substitute(s: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (span, name) in var_refs(s) {
        if let Some(v) = values.get(&name) {
            out.push_str(&s[last..span.start]);
            out.push_str(v);
            last = span.end;
        }
    }
    out.push_str(&s[last..]);
    out
}

#[derive(Debug, Clone)]
struct Var {
    name: String,
    /// `datasource`, `query`, `custom`...
    kind: String,
    /// The query (`label_values(...)`), the datasource plugin, or the custom values.
    query: String,
    include_all: bool,
    all_value: Option<String>,
    /// The datasource of a query variable.
    datasource: Option<Value>,
    /// The current value of a custom variable.
    current: Option<String>,
}

#[derive(Debug, Clone)]
struct Target {
    panel: String,
    panel_type: String,
    ds_type: String,
    expr: String,
    instant: bool,
}

struct Dashboard {
    file: String,
    json: Value,
}

const DASHBOARD_FILES: &[&str] = &[
    "drops.json",
    "events.json",
    "node-network.json",
    "pod-network.json",
    "pod-peers.json",
];

fn dashboards() -> Vec<Dashboard> {
    let dir = repo().join("deploy/grafana/dashboards");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files, DASHBOARD_FILES,
        "deploy/grafana/dashboards/ holds other files than the tested dashboards"
    );
    files
        .into_iter()
        .map(|f| {
            let text = read(&format!("deploy/grafana/dashboards/{f}"));
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("deploy/grafana/dashboards/{f}: not JSON: {e}"));
            Dashboard { file: f, json }
        })
        .collect()
}

fn vars(d: &Value) -> Vec<Var> {
    d["templating"]["list"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|v| {
                    let query = match &v["query"] {
                        Value::String(s) => s.clone(),
                        Value::Object(o) => o
                            .get("query")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        _ => String::new(),
                    };
                    Var {
                        name: v["name"].as_str().unwrap_or("").to_string(),
                        kind: v["type"].as_str().unwrap_or("").to_string(),
                        query,
                        include_all: v["includeAll"].as_bool().unwrap_or(false),
                        all_value: v["allValue"].as_str().map(str::to_string),
                        datasource: v.get("datasource").cloned(),
                        current: v["current"]["value"].as_str().map(str::to_string),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every panel, those inside (collapsed) rows included; rows themselves too.
fn all_panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        for inner in p["panels"].as_array().into_iter().flatten() {
            out.push(inner);
        }
    }
    out
}

fn targets(d: &Value) -> Vec<Target> {
    let mut out = Vec::new();
    for p in all_panels(d) {
        if p["type"] == "row" {
            continue;
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let ds = if t["datasource"].is_object() {
                &t["datasource"]
            } else {
                &p["datasource"]
            };
            out.push(Target {
                panel: p["title"].as_str().unwrap_or("").to_string(),
                panel_type: p["type"].as_str().unwrap_or("").to_string(),
                ds_type: ds["type"].as_str().unwrap_or("").to_string(),
                expr: t["expr"].as_str().unwrap_or("").to_string(),
                instant: t["instant"] == true || t["queryType"] == "instant",
            });
        }
    }
    out
}

/// `label_values(selector, label)` → (selector, label).
fn label_values_query(q: &str) -> Option<(String, String)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (sel, label) = inner.rsplit_once(',')?;
    Some((sel.trim().to_string(), label.trim().to_string()))
}

/// `{"type": T, "uid": "${var}"}` where `var` is a datasource variable of plugin T.
fn is_ds_variable(ds: &Value, ds_vars: &BTreeMap<String, String>) -> bool {
    let ty = ds["type"].as_str().unwrap_or("");
    let var = ds["uid"]
        .as_str()
        .and_then(|u| u.strip_prefix("${"))
        .and_then(|u| u.strip_suffix('}'))
        .unwrap_or("");
    ds_vars.get(var).is_some_and(|plugin| plugin == ty)
}

/// The metrics each dashboard must show (the issue's list) and the dashboard's title.
const REQUIRED: &[(&str, &str, &[&str])] = &[
    (
        "node-network.json",
        "Node network",
        &[
            "netexporter_conntrack_entries",
            "netexporter_conntrack_maxentries",
            "netexporter_conntrack_insertfailed",
            "netexporter_conntrack_drop",
            "netexporter_conntrack_earlydrop",
            "netexporter_softnet_dropped",
            "netexporter_qdisc_drops",
            "netexporter_qdisc_overlimits",
            "netexporter_qdisc_backlog",
            "netexporter_qdisc_qlen",
            "netexporter_arp_entries",
            "netexporter_arp_maxentries",
            "netexporter_packetloss_reason",
            "netexporter_events",
            "netexporter_bpf_map_entries",
            "netexporter_bpf_map_max_entries",
            "netexporter_bpf_map_uncounted_total",
        ],
    ),
    (
        "pod-network.json",
        "Pod network",
        &[
            "netexporter_netdev_rxbytes",
            "netexporter_netdev_txbytes",
            "netexporter_tcp_retransseg",
            "netexporter_tcp_estabresets",
            "netexporter_tcp_outrsts",
            "netexporter_tcpext_tcptimeouts",
            "netexporter_tcpext_listenoverflows",
            "netexporter_sockbacklog_recvq",
            "netexporter_sock_inuse",
            "netexporter_sock_inuse_udp",
            "netexporter_packetloss_reason",
            "netexporter_dns_queries_total",
            "netexporter_dns_answers_total",
            "netexporter_dns_timeouts_total",
            "netexporter_dns_empty_answers_total",
            "netexporter_dns_malformed_total",
            "netexporter_dns_latency_seconds_bucket",
        ],
    ),
    (
        "drops.json",
        "Drops",
        &[
            "netexporter_packetloss_reason",
            "netexporter_packetloss_total",
        ],
    ),
    ("events.json", "Events", &["netexporter_events"]),
    (
        "pod-peers.json",
        "Pod peers",
        &[
            "netexporter_peer_connections_total",
            "netexporter_peer_connection_failures_total",
            "netexporter_peer_backend_connections_total",
            "netexporter_peer_backend_connection_failures_total",
            "netexporter_peer_retransmits_total",
            "netexporter_peer_resets_total",
            "netexporter_peer_bytes_total",
            "netexporter_peer_connect_latency_seconds_bucket",
            "netexporter_peer_rtt_seconds_bucket",
            "netexporter_listener_accept_queue",
            "netexporter_listener_accept_queue_limit",
            "netexporter_listener_drops_total",
        ],
    ),
];

/// The dashboards as provisioned files: schema, datasources, variables, names, layout and the
/// panels the issue asks for.
#[test]
fn surfaces_dashboards_are_provisionable_and_complete() {
    let documented = documented_metrics();
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    for d in dashboards() {
        let f = &d.file;
        let j = &d.json;
        let mut p = |m: String| problems.push(format!("{f}: {m}"));
        if j["schemaVersion"].as_u64() != Some(39) {
            p(format!(
                "schemaVersion {} (expected 39)",
                j["schemaVersion"]
            ));
        }
        let uid = j["uid"].as_str().unwrap_or("");
        if !uid.starts_with("net-exporter-") || !uids.insert(uid.to_string()) {
            p(format!("uid {uid:?}: not net-exporter-* or not unique"));
        }
        if j.get("__inputs").is_some() || j.get("id").is_some_and(|v| !v.is_null()) {
            p("has __inputs or a fixed id: not a provisionable file".into());
        }
        if j.to_string().contains("${DS_") {
            p("uses an import placeholder ${DS_...}".into());
        }
        if !j["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "net-exporter"))
        {
            p("no net-exporter tag (the dashboards' links select by it)".into());
        }
        let (_, title, required) = REQUIRED
            .iter()
            .find(|(file, _, _)| file == f)
            .expect("every dashboard has its requirements");
        if !j["title"].as_str().unwrap_or("").ends_with(title) {
            p(format!("title {} does not end with {title:?}", j["title"]));
        }

        // Variables: datasource ones, defined before use.
        let vs = vars(j);
        let ds_vars: BTreeMap<String, String> = vs
            .iter()
            .filter(|v| v.kind == "datasource")
            .map(|v| (v.name.clone(), v.query.clone()))
            .collect();
        if ds_vars.get("datasource").map(String::as_str) != Some("prometheus") {
            p("no `datasource` variable of type datasource for Prometheus".into());
        }
        let mut defined: BTreeSet<String> = BTreeSet::new();
        for v in &vs {
            if v.kind == "query" {
                if v.datasource.as_ref().and_then(|d| d["uid"].as_str()) != Some("${datasource}") {
                    p(format!(
                        "variable {}: datasource is not ${{datasource}}",
                        v.name
                    ));
                }
                match label_values_query(&v.query) {
                    None => p(format!(
                        "variable {}: not label_values(...): {}",
                        v.name, v.query
                    )),
                    Some((sel, label)) => {
                        if !LABELS.contains(&label.as_str()) {
                            p(format!("variable {}: unknown label {label}", v.name));
                        }
                        for m in metric_names(&sel) {
                            if !documented.contains(&m) {
                                p(format!("variable {}: metric {m} is not exported", v.name));
                            }
                        }
                    }
                }
                if v.include_all && v.all_value.as_deref() != Some(".*") {
                    p(format!(
                        "variable {}: All must be .* (matches a missing label)",
                        v.name
                    ));
                }
            }
            for (_, r) in var_refs(&v.query) {
                if !defined.contains(&r) {
                    p(format!(
                        "variable {} uses ${r}, not defined before it",
                        v.name
                    ));
                }
            }
            defined.insert(v.name.clone());
        }
        let refs_of = |name: &str| -> BTreeSet<String> {
            vs.iter()
                .find(|v| v.name == name)
                .map(|v| var_refs(&v.query).into_iter().map(|(_, n)| n).collect())
                .unwrap_or_default()
        };
        if f != "node-network.json" {
            // The chain node → namespace → pod, and netns for standalone agents.
            let want: [(&str, &[&str]); 3] = [
                ("k8s_namespace", &["k8s_node"]),
                ("k8s_pod", &["k8s_node", "k8s_namespace"]),
                ("netns", &["k8s_node"]),
            ];
            for (v, deps) in want {
                let got = refs_of(v);
                if !vs.iter().any(|x| x.name == v) {
                    p(format!("no {v} variable"));
                } else if !deps.iter().all(|d| got.contains(*d)) {
                    p(format!(
                        "variable {v} is not chained to {deps:?}: refers to {got:?}"
                    ));
                }
            }
        }

        // Panels: datasources by variable only; ids unique; no overlap.
        let mut ids = BTreeSet::new();
        let mut boxes: Vec<(String, u64, u64, u64, u64)> = Vec::new();
        for panel in all_panels(j) {
            let title = panel["title"].as_str().unwrap_or("").to_string();
            if !ids.insert(panel["id"].as_u64().unwrap_or(0)) {
                p(format!("panel {title:?}: duplicate id {}", panel["id"]));
            }
            let g = &panel["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_u64().unwrap_or(99),
                g["y"].as_u64().unwrap_or(0),
                g["w"].as_u64().unwrap_or(0),
                g["h"].as_u64().unwrap_or(0),
            );
            if w == 0 || h == 0 || x + w > 24 {
                p(format!("panel {title:?}: gridPos {g}"));
            }
            for (other, ox, oy, ow, oh) in &boxes {
                if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                    p(format!("panel {title:?} overlaps {other:?}"));
                }
            }
            boxes.push((title.clone(), x, y, w, h));
            if panel["type"] == "row" {
                continue;
            }
            for (_, r) in var_refs(&title) {
                if !defined.contains(&r) {
                    p(format!("panel {title:?}: title uses undefined ${r}"));
                }
            }
            if !is_ds_variable(&panel["datasource"], &ds_vars) {
                p(format!(
                    "panel {title:?}: datasource {} is not a ${{...}} datasource variable of its type",
                    panel["datasource"]
                ));
            }
            for t in panel["targets"].as_array().into_iter().flatten() {
                if t["datasource"].is_object() {
                    if !is_ds_variable(&t["datasource"], &ds_vars) {
                        p(format!(
                            "panel {title:?}: a target's datasource {} is not a ${{...}} datasource variable of its type",
                            t["datasource"]
                        ));
                    }
                    if t["datasource"]["type"] != panel["datasource"]["type"] {
                        p(format!(
                            "panel {title:?}: a target's datasource type differs"
                        ));
                    }
                }
                if t["refId"].as_str().is_none_or(str::is_empty) {
                    p(format!("panel {title:?}: a target without refId"));
                }
            }
        }

        // Queries: variables defined, metrics and labels exported.
        let ts = targets(j);
        let mut used = BTreeSet::new();
        for t in &ts {
            if t.expr.trim().is_empty() {
                p(format!("panel {:?}: empty query", t.panel));
            }
            for (_, r) in var_refs(&t.expr) {
                if !defined.contains(&r) && !GRAFANA_BUILTINS.contains(&r.as_str()) {
                    p(format!("panel {:?}: ${r} is not a variable", t.panel));
                }
            }
            if t.ds_type == "loki" {
                if ds_vars.get("loki").map(String::as_str) != Some("loki") {
                    p("Loki panels without a `loki` datasource variable".into());
                }
                continue;
            }
            for m in metric_names(&t.expr) {
                if !documented.contains(&m) {
                    p(format!(
                        "panel {:?}: {m} is not in docs/metrics.md",
                        t.panel
                    ));
                }
                used.insert(m);
            }
            for l in promql_labels(&t.expr) {
                if !LABELS.contains(&l.as_str()) {
                    p(format!(
                        "panel {:?}: label {l} is not one the agent sets",
                        t.panel
                    ));
                }
            }
        }
        for m in *required {
            if !used.contains(*m) {
                p(format!("no panel shows {m}"));
            }
        }
        match f.as_str() {
            "drops.json" => {
                if !ts.iter().any(|t| t.expr.contains("topk(")) {
                    p("no top-k panel".into());
                }
                if !ts.iter().any(|t| {
                    t.expr
                        .contains("by (k8s_node, k8s_namespace, k8s_pod, netns, reason)")
                }) {
                    p("no reason × Pod panel".into());
                }
            }
            "pod-peers.json" => {
                if !ts
                    .iter()
                    .any(|t| t.panel_type == "table" && t.instant && t.expr.contains("topk("))
                {
                    p("no top-k table of peers".into());
                }
                // The service map: a node graph fed by one instant table query whose rows are
                // the edges (the live test checks their labels), the value renamed mainstat.
                let maps: Vec<&Value> = all_panels(j)
                    .into_iter()
                    .filter(|x| x["type"] == "nodeGraph")
                    .collect();
                if maps.len() != 1 {
                    p(format!("{} node graph panels (expected 1)", maps.len()));
                }
                for m in maps {
                    let tgts = m["targets"].as_array().cloned().unwrap_or_default();
                    let ok = tgts.len() == 1
                        && tgts[0]["instant"] == true
                        && tgts[0]["format"] == "table"
                        && ["\"id\"", "\"source\"", "\"target\""]
                            .iter()
                            .all(|l| tgts[0]["expr"].as_str().unwrap_or("").contains(l));
                    if !ok {
                        p("the node graph's query is not one instant table query making id, source and target".into());
                    }
                    let renamed = m["transformations"].as_array().is_some_and(|ts| {
                        ts.iter().any(|t| {
                            t["id"] == "organize"
                                && t["options"]["renameByName"]["Value"] == "mainstat"
                                && ["id", "source", "target"]
                                    .iter()
                                    .all(|f| t["options"]["excludeByName"][f] != true)
                        })
                    });
                    if !renamed {
                        p("the node graph's transformations do not make the edge fields (Value → mainstat)".into());
                    }
                }
            }
            "events.json" => {
                if !ts
                    .iter()
                    .any(|t| t.ds_type == "loki" && t.panel_type == "logs")
                {
                    p("no Loki logs panel".into());
                }
                if !ts.iter().any(|t| {
                    t.ds_type == "loki"
                        && t.expr.contains("count_over_time")
                        && t.expr.contains("by (type)")
                }) {
                    p("no LogQL count by type".into());
                }
            }
            _ => {}
        }
    }

    // The provisioning example.
    let prov = yaml("deploy/grafana/provisioning/dashboards.yaml");
    if prov["apiVersion"].as_u64() != Some(1) {
        problems.push("provisioning/dashboards.yaml: apiVersion is not 1".into());
    }
    let ok = prov["providers"].as_sequence().is_some_and(|ps| {
        ps.iter()
            .any(|p| p["type"] == "file" && p["options"]["path"].as_str().is_some())
    });
    if !ok {
        problems.push("provisioning/dashboards.yaml: no file provider with options.path".into());
    }
    report("dashboards", &problems);
}

// ---- LogQL: Grafana's grammar ----

const LEZER_LOGQL: &str = "@grafana/lezer-logql";
const LEZER_LOGQL_VERSION: &str = "0.4.2";

/// Loki labels of the agent's event records: the resource's attributes (service.name,
/// k8s.node.name, host.name, service.version) and the record's (type, probe and the objects'
/// attributes, src/checks/), dots turned into underscores as Loki's OTLP ingestion does.
const LOKI_LABELS: &[&str] = &[
    "service_name",
    "service_version",
    "host_name",
    "k8s_node_name",
    "type",
    "probe",
    "event_name",
    "interface",
    "sysctl",
    "netns",
    "k8s_namespace_name",
    "k8s_pod_name",
    "k8s_pods",
    "k8s_node_pod_cidr",
    "k8s_configmap_name",
    "iptables_chain",
    "iptables_policy",
    "failure",
    "log_pattern",
    "process_pid",
    "process_executable_name",
    "severity_text",
];

#[derive(Debug, serde::Deserialize)]
struct LogqlParse {
    /// Offsets of the parser's error nodes.
    errors: Vec<usize>,
    /// The text of every stream selector.
    selectors: Vec<String>,
    /// Every label name (matchers, label filters, grouping).
    identifiers: Vec<String>,
}

/// The grammar's node_modules, installed into `.cache/` with npm on first use.
fn lezer_logql() -> PathBuf {
    let dir = repo().join(".cache/lezer-logql");
    let modules = dir.join("node_modules");
    let pkg = modules.join(LEZER_LOGQL).join("package.json");
    if !pkg.exists() {
        std::fs::create_dir_all(&dir).expect("create .cache/lezer-logql");
        let out = Command::new("npm")
            .args([
                "install",
                "--prefix",
                &dir.to_string_lossy(),
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--loglevel=error",
                &format!("{LEZER_LOGQL}@{LEZER_LOGQL_VERSION}"),
            ])
            .output()
            .expect("run npm (Node.js and npm come with the machine's image)");
        assert!(
            out.status.success(),
            "npm install {LEZER_LOGQL}@{LEZER_LOGQL_VERSION} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(&pkg).expect("package.json"))
        .expect("package.json is JSON");
    assert_eq!(meta["version"], LEZER_LOGQL_VERSION, "{}", pkg.display());
    modules
}

/// Parses each query with Grafana's LogQL grammar.
fn logql_parse(queries: &[String]) -> Vec<LogqlParse> {
    use std::io::Write;
    const SCRIPT: &str = r#"
const { parser } = require('@grafana/lezer-logql');
const qs = JSON.parse(require('fs').readFileSync(0, 'utf8'));
console.log(JSON.stringify(qs.map((q) => {
  const out = { errors: [], selectors: [], identifiers: [] };
  parser.parse(q).iterate({ enter: (n) => {
    if (n.type.isError) out.errors.push(n.from);
    if (n.name === 'Selector') out.selectors.push(q.slice(n.from, n.to));
    if (n.name === 'Identifier') out.identifiers.push(q.slice(n.from, n.to));
  } });
  return out;
})));
"#;
    let modules = lezer_logql();
    let mut child = Command::new("node")
        .args(["-e", SCRIPT])
        .env("NODE_PATH", &modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(queries).expect("JSON").as_bytes())
        .expect("write queries to node");
    let out = child.wait_with_output().expect("node output");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<LogqlParse> =
        serde_json::from_slice(&out.stdout).expect("the parse script's JSON");
    assert_eq!(parsed.len(), queries.len());
    parsed
}

/// The ```logql blocks of a Markdown file, one query per line (`#` lines are comments).
fn logql_blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in markdown.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            inside = t == "```logql";
            continue;
        }
        if inside && !t.is_empty() && !t.starts_with('#') {
            out.push(t.to_string());
        }
    }
    out
}

/// The Loki queries of the Events dashboard and of docs/events.md parse with Grafana's LogQL
/// grammar, select the agent's stream by the label its resource becomes (`service_name`),
/// filter only on labels its records carry, and (dashboard) apply the node and Pod variables.
#[test]
fn surfaces_logql_parses_and_uses_the_labels_loki_makes() {
    let mut queries = Vec::new(); // (where, raw, substituted)
    let values: BTreeMap<String, String> = [
        ("k8s_node", "node-1"),
        ("k8s_namespace", ".*"),
        ("k8s_pod", ".*"),
        ("netns", ".*"),
        ("type", "(KernelLog|MTUAbnormal)"),
        ("__range", "1h"),
        ("__interval", "1m"),
        ("__auto", "1m"),
        ("__rate_interval", "1m"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut problems = Vec::new();
    for d in dashboards() {
        for t in targets(&d.json).into_iter().filter(|t| t.ds_type == "loki") {
            for v in ["k8s_node", "k8s_namespace", "k8s_pod", "netns"] {
                if !var_refs(&t.expr).iter().any(|(_, n)| n == v) {
                    problems.push(format!(
                        "{} {:?}: the ${v} variable is not applied",
                        d.file, t.panel
                    ));
                }
            }
            if !t.expr.contains("k8s_node_name=~\"$k8s_node\"") {
                problems.push(format!(
                    "{} {:?}: the node is not matched on k8s_node_name",
                    d.file, t.panel
                ));
            }
            queries.push((
                format!("{} {:?}", d.file, t.panel),
                substitute(&t.expr, &values),
            ));
        }
    }
    let from_dashboards = queries.len();
    assert!(
        from_dashboards >= 2,
        "the Events dashboard has no Loki query"
    );
    let docs = logql_blocks(&read("docs/events.md"));
    assert!(
        docs.len() >= 5,
        "docs/events.md has {} LogQL queries in ```logql blocks",
        docs.len()
    );
    queries.extend(docs.into_iter().map(|q| ("docs/events.md".to_string(), q)));
    let parsed = logql_parse(&queries.iter().map(|(_, q)| q.clone()).collect::<Vec<_>>());
    for ((place, q), r) in queries.iter().zip(&parsed) {
        if !r.errors.is_empty() {
            problems.push(format!("{place}: {q}: syntax error at {:?}", r.errors));
        }
        if r.selectors.is_empty()
            || !r
                .selectors
                .iter()
                .all(|s| s.starts_with("{service_name=\"net-exporter\""))
        {
            problems.push(format!(
                "{place}: {q}: the stream selector must be {{service_name=\"net-exporter\"...}}, got {:?}",
                r.selectors
            ));
        }
        for id in &r.identifiers {
            if !LOKI_LABELS.contains(&id.as_str()) {
                problems.push(format!(
                    "{place}: {q}: label {id} is not one the agent's records become"
                ));
            }
        }
    }
    // The grammar is live: a broken query is reported.
    let broken = logql_parse(&["{service_name=\"net-exporter\" | type=".to_string()]);
    assert!(!broken[0].errors.is_empty(), "the parser accepts anything");
    report("LogQL", &problems);
}

// ---- Prometheus rules ----

fn promtool(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .expect("run promtool (scripts/install-deps.sh installs it)");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `name{a="b",...}` of a promtool input series → (name, labels).
fn parse_series(s: &str) -> (String, BTreeMap<String, String>) {
    let (name, rest) = s.split_once('{').unwrap_or((s, "}"));
    let mut labels = BTreeMap::new();
    for pair in rest.trim_end_matches('}').split(',') {
        if let Some((k, v)) = pair.split_once('=') {
            labels.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    (name.trim().to_string(), labels)
}

/// `promtool check rules` is clean; `promtool test rules` passes; every alert explains itself
/// and has a unit test in which it fires and a healthy series that does not fire it; the rules
/// use only metrics the agent exports.
#[test]
fn surfaces_prometheus_rules_check_and_unit_tests() {
    let (code, out) = promtool(&["check", "rules", "rules.yaml"]);
    assert!(
        code == Some(0) && out.contains("SUCCESS") && !out.contains("WARNING"),
        "promtool check rules: {code:?}\n{out}"
    );
    let (code, out) = promtool(&["test", "rules", "rules_test.yaml"]);
    assert!(
        code == Some(0) && out.contains("SUCCESS"),
        "promtool test rules: {code:?}\n{out}"
    );

    let documented = documented_metrics();
    let rules = yaml("deploy/prometheus/rules.yaml");
    let mut problems = Vec::new();
    let mut alerts = BTreeSet::new();
    let mut recorded = BTreeSet::new();
    let all: Vec<&serde_yaml::Value> = rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .collect();
    for r in &all {
        if let Some(n) = r["record"].as_str() {
            recorded.insert(n.to_string());
        }
    }
    for r in &all {
        let expr = r["expr"].as_str().unwrap_or("");
        let name = r["alert"]
            .as_str()
            .or(r["record"].as_str())
            .unwrap_or("?")
            .to_string();
        for m in metric_names(expr) {
            if !documented.contains(&m) && !recorded.contains(&m) && m != "up" {
                problems.push(format!("{name}: {m} is neither exported nor recorded"));
            }
        }
        for l in promql_labels(expr) {
            if !LABELS.contains(&l.as_str()) {
                problems.push(format!("{name}: label {l} is not one the agent sets"));
            }
        }
        if r["alert"].is_string() {
            alerts.insert(name.clone());
            for a in ["summary", "description"] {
                if r["annotations"][a]
                    .as_str()
                    .is_none_or(|s| s.trim().len() < 20)
                {
                    problems.push(format!("{name}: no {a} annotation"));
                }
            }
            if !matches!(
                r["labels"]["severity"].as_str(),
                Some("warning" | "critical")
            ) {
                problems.push(format!("{name}: severity is not warning or critical"));
            }
            if r["for"].as_str().is_none() {
                problems.push(format!("{name}: no `for`: one bad sample would page"));
            }
        }
    }
    assert!(alerts.len() >= 12, "only {} alerts", alerts.len());

    // Each alert: a test where it fires with a healthy series beside the firing one(s).
    let tests = yaml("deploy/prometheus/rules_test.yaml");
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests["tests"].as_sequence().expect("tests") {
        let series: Vec<BTreeMap<String, String>> = t["input_series"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|s| parse_series(s["series"].as_str().unwrap_or("")).1)
            .collect();
        for a in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = a["alertname"].as_str().unwrap_or("").to_string();
            if !alerts.contains(&name) {
                problems.push(format!("rules_test.yaml tests {name}, which is no alert"));
            }
            let expected: Vec<BTreeMap<String, String>> = a["exp_alerts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|e| {
                    e["exp_labels"]
                        .as_mapping()
                        .into_iter()
                        .flatten()
                        .filter(|(k, _)| k.as_str() != Some("severity"))
                        .map(|(k, v)| {
                            (
                                k.as_str().unwrap_or("").to_string(),
                                v.as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .collect();
            if expected.is_empty() {
                if !series.is_empty() {
                    quiet.insert(name.clone());
                }
                continue;
            }
            fires.insert(name.clone());
            // A healthy series: one whose labels do not carry any expected alert's labels.
            let healthy = series.iter().any(|s| {
                expected
                    .iter()
                    .all(|e| !e.iter().all(|(k, v)| s.get(k) == Some(v)))
            });
            if healthy {
                quiet.insert(name);
            }
        }
    }
    for a in &alerts {
        if !fires.contains(a) {
            problems.push(format!("{a}: no unit test in which it fires"));
        }
        if !quiet.contains(a) {
            problems.push(format!(
                "{a}: no unit test with a healthy series that stays quiet"
            ));
        }
    }
    report("deploy/prometheus", &problems);
}

// ---- OpenTelemetry Collector configurations ----

/// Components of the otelcol-contrib distribution that configurations here may use, with the
/// signals each handles (the distribution's manifest has many more; add a component here only
/// after checking it is in otelcol-contrib).
const CONTRIB: &[(&str, &str, &[&str])] = &[
    ("receivers", "otlp", &["metrics", "logs", "traces"]),
    ("receivers", "prometheus", &["metrics"]),
    ("processors", "batch", &["metrics", "logs", "traces"]),
    (
        "processors",
        "memory_limiter",
        &["metrics", "logs", "traces"],
    ),
    ("processors", "resource", &["metrics", "logs", "traces"]),
    ("processors", "attributes", &["metrics", "logs", "traces"]),
    ("processors", "transform", &["metrics", "logs", "traces"]),
    ("processors", "filter", &["metrics", "logs", "traces"]),
    (
        "processors",
        "k8sattributes",
        &["metrics", "logs", "traces"],
    ),
    ("exporters", "otlp", &["metrics", "logs", "traces"]),
    ("exporters", "otlphttp", &["metrics", "logs", "traces"]),
    ("exporters", "prometheusremotewrite", &["metrics"]),
    ("exporters", "prometheus", &["metrics"]),
    ("exporters", "debug", &["metrics", "logs", "traces"]),
    ("extensions", "health_check", &[]),
    ("extensions", "pprof", &[]),
    ("extensions", "zpages", &[]),
];

const OTEL_CONFIGS: &[&str] = &[
    "agent-to-loki.yaml",
    "agent-to-prometheus-scrape.yaml",
    "agent-to-prometheus.yaml",
    "gateway.yaml",
];

fn component_type(id: &str) -> &str {
    id.split('/').next().unwrap_or(id)
}

fn ystr(v: &serde_yaml::Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// The Collector configurations, structurally (no Collector can be installed here): YAML;
/// pipelines that name only declared components and declared components that are used; only
/// otelcol-contrib components, each suited to its pipeline's signal; the options that keep
/// the agent's names on the Prometheus exporters; Loki's /otlp endpoint; the OTLP ports.
#[test]
fn surfaces_otel_collector_configs_are_consistent() {
    let dir = repo().join("otel-config");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("otel-config/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .collect();
    files.sort();
    assert_eq!(
        files, OTEL_CONFIGS,
        "otel-config/ holds other configurations"
    );
    let readme = read("otel-config/README.md");
    let mut problems = Vec::new();
    let mut exporters_seen = BTreeSet::new();
    for f in OTEL_CONFIGS {
        let text = read(&format!("otel-config/{f}"));
        let mut p = |m: String| problems.push(format!("{f}: {m}"));
        if !readme.contains(&format!("`{f}`")) {
            p("not described in otel-config/README.md".into());
        }
        for (i, _) in text.match_indices("${") {
            if !text[i..].starts_with("${env:") {
                p(format!(
                    "`{}`: use ${{env:NAME}}",
                    &text[i..(i + 20).min(text.len())]
                ));
            }
        }
        let c: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{f}: not YAML: {e}"));
        let mut declared: BTreeMap<(String, String), bool> = BTreeMap::new();
        for section in [
            "receivers",
            "processors",
            "exporters",
            "extensions",
            "connectors",
        ] {
            for (id, _) in c[section].as_mapping().into_iter().flatten() {
                let id = ystr(id);
                if !CONTRIB
                    .iter()
                    .any(|(s, ty, _)| *s == section && *ty == component_type(&id))
                {
                    p(format!(
                        "{section}.{id}: not an otelcol-contrib component of the list"
                    ));
                }
                declared.insert((section.to_string(), id), false);
            }
        }
        for ext in c["service"]["extensions"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            match declared.get_mut(&("extensions".to_string(), ystr(ext))) {
                Some(used) => *used = true,
                None => p(format!("service.extensions: {} is not declared", ystr(ext))),
            }
        }
        let pipelines = c["service"]["pipelines"].as_mapping();
        if pipelines.is_none_or(|m| m.is_empty()) {
            p("no pipelines".into());
        }
        for (pid, pipe) in pipelines.into_iter().flatten() {
            let pid = ystr(pid);
            let signal = component_type(&pid).to_string();
            if !["metrics", "logs", "traces"].contains(&signal.as_str()) {
                p(format!("pipeline {pid}: unknown signal"));
            }
            for section in ["receivers", "processors", "exporters"] {
                let ids = pipe[section].as_sequence();
                if section != "processors" && ids.is_none_or(|s| s.is_empty()) {
                    p(format!("pipeline {pid}: no {section}"));
                }
                for id in ids.into_iter().flatten() {
                    let id = ystr(id);
                    match declared.get_mut(&(section.to_string(), id.clone())) {
                        Some(used) => *used = true,
                        None => p(format!("pipeline {pid}: {section} {id} is not declared")),
                    }
                    let ok = CONTRIB.iter().any(|(s, ty, signals)| {
                        *s == section
                            && *ty == component_type(&id)
                            && signals.contains(&signal.as_str())
                    });
                    if !ok {
                        p(format!("pipeline {pid}: {id} does not handle {signal}"));
                    }
                }
            }
            let procs: Vec<String> = pipe["processors"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(ystr)
                .collect();
            if procs.first().map(|s| component_type(s)) != Some("memory_limiter") {
                p(format!("pipeline {pid}: memory_limiter must come first"));
            }
        }
        for ((section, id), used) in &declared {
            if !used {
                p(format!("{section}.{id} is declared but in no pipeline"));
            }
        }
        // The OTLP receiver: the agent's default ports, on every address (a Pod).
        for (id, r) in c["receivers"].as_mapping().into_iter().flatten() {
            if component_type(&ystr(id)) == "otlp" {
                for (proto, port) in [("grpc", ":4317"), ("http", ":4318")] {
                    let ep = ystr(&r["protocols"][proto]["endpoint"]);
                    if !ep.starts_with("0.0.0.0") || !ep.ends_with(port) {
                        p(format!("receiver {}: {proto} endpoint {ep:?}", ystr(id)));
                    }
                }
            }
        }
        // Exporters: names kept; Loki on /otlp.
        for (id, e) in c["exporters"].as_mapping().into_iter().flatten() {
            let id = ystr(id);
            let ty = component_type(&id).to_string();
            exporters_seen.insert(ty.clone());
            let no_resource_labels =
                e["resource_to_telemetry_conversion"]["enabled"].as_bool() == Some(false);
            match ty.as_str() {
                "prometheusremotewrite" => {
                    if e["add_metric_suffixes"].as_bool() != Some(false) {
                        p(format!("{id}: add_metric_suffixes must be false"));
                    }
                    if e["target_info"]["enabled"].as_bool() != Some(false) {
                        p(format!("{id}: target_info.enabled must be false"));
                    }
                    if !no_resource_labels {
                        p(format!(
                            "{id}: resource_to_telemetry_conversion.enabled must be false"
                        ));
                    }
                }
                "prometheus" => {
                    let keeps = e["add_metric_suffixes"].as_bool() == Some(false)
                        || e["translation_strategy"].as_str()
                            == Some("UnderscoreEscapingWithoutSuffixes");
                    if !keeps {
                        p(format!("{id}: suffixes are not turned off"));
                    }
                    if !no_resource_labels {
                        p(format!(
                            "{id}: resource_to_telemetry_conversion.enabled must be false"
                        ));
                    }
                }
                "otlphttp" if id.contains("loki") && !ystr(&e["endpoint"]).ends_with("/otlp") => {
                    p(format!("{id}: Loki's OTLP endpoint is <loki>/otlp"));
                }
                _ => {}
            }
        }
    }
    for ty in ["prometheusremotewrite", "prometheus", "otlphttp"] {
        if !exporters_seen.contains(ty) {
            problems.push(format!("no configuration uses the {ty} exporter"));
        }
    }
    report("otel-config", &problems);
}

/// The operator's documents exist and point where they should.
#[test]
fn surfaces_documents_point_to_each_other() {
    let readme = read("README.md");
    let section = readme
        .split("## What operators look at")
        .nth(1)
        .expect("README.md has a \"What operators look at\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let ops = read("docs/operations.md");
    let mut problems = Vec::new();
    for want in [
        "deploy/grafana/",
        "deploy/prometheus/",
        "otel-config/",
        "docs/operations.md",
    ] {
        if !section.contains(want) {
            problems.push(format!("README's section does not point to {want}"));
        }
        if !repo().join(want).exists() {
            problems.push(format!("{want} does not exist"));
        }
    }
    for want in [
        "architecture.md",
        "deploy.md",
        "netexporter_scrape_collector_success",
        "collector failed; its series are left out until it recovers",
        "conntrack",
        "BTF",
        "IPv6",
        "--collector.disable",
    ] {
        if !ops.contains(want) {
            problems.push(format!("docs/operations.md does not mention {want}"));
        }
    }
    for heading in [
        "## Install",
        "## Sizing",
        "## Capabilities",
        "## Upgrading",
        "## A collector fails",
    ] {
        if !ops.contains(heading) {
            problems.push(format!("docs/operations.md has no {heading:?} section"));
        }
    }
    if !read("docs/events.md").contains("## Finding events in Loki") {
        problems.push("docs/events.md has no \"Finding events in Loki\" section".into());
    }
    report("documents", &problems);
}

// ---- The live test ----

/// The event type the agent is made to emit (`checks.expect_tcp_sack` set to the opposite of
/// the machine's `net.ipv4.tcp_sack`).
const EVENT: &str = "TCPSackKernelParam";
/// The rules' job name (deploy/prometheus/rules.yaml).
const JOB: &str = "net-exporter";
/// How long the traffic runs at most (it is stopped with the test).
const TRAFFIC_SECS: u32 = 300;

/// Traffic of namespace A, run inside it: a TCP echo server on 10.207.0.1:7777 for B's
/// client, which resets (SO_LINGER 0) the connections whose data starts with `r`; a listener
/// with a backlog of 0 that never accepts, behind which connections pile up (a full accept
/// queue: ListenOverflows, Recv-Q); UDP to a closed port of its own loopback (NO_SOCKET in A)
/// and to B's port 5555, which B's firewall drops (NETFILTER_DROP in B).
const TRAFFIC_A: &str = r#"
import socket, struct, sys, threading, time
deadline = time.time() + float(sys.argv[1])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 7777))
srv.listen(64)
srv.settimeout(1)
def serve():
    while time.time() < deadline:
        try:
            c, _ = srv.accept()
        except OSError:
            continue
        try:
            c.settimeout(2)
            data = c.recv(65536)
            if data.startswith(b"r"):
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                c.sendall(data)
        except OSError:
            pass
        c.close()
threading.Thread(target=serve, daemon=True).start()
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dns.bind(("10.207.0.1", 53))
dns.settimeout(1)
def resolve():
    while time.time() < deadline:
        try:
            q, peer = dns.recvfrom(512)
        except OSError:
            continue
        # NOERROR without records for odd ids, NXDOMAIN for even ones.
        rcode = 3 if q[1] % 2 == 0 else 0
        dns.sendto(q[:2] + struct.pack(">HHHHH", 0x8180 | rcode, 1, 0, 0, 0) + q[12:], peer)
threading.Thread(target=resolve, daemon=True).start()
stuck = socket.socket()
stuck.bind(("127.0.0.1", 7778))
stuck.listen(0)
waiting = []
for _ in range(4):
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", 7778))
    waiting.append(c)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while time.time() < deadline:
    for _ in range(10):
        try:
            u.sendto(b"x", ("127.0.0.1", 9))
        except OSError:
            pass
    for _ in range(6):
        try:
            u.sendto(b"x", ("10.207.0.2", 5555))
        except OSError:
            pass
    time.sleep(0.1)
"#;

/// Traffic of namespace B (the namespace the variables choose): a TCP client of A's echo
/// server, a connection every 50 ms, of which every 7th asks A for an RST (an RST received, a
/// reset failure) and every 5th closes with SO_LINGER 0 (an RST sent); A's firewall drops every
/// 10th packet to the echo server (retransmits, connect latency); every 10th round also
/// connects to A's closed port 7779 (refused). A listener of its own on 8888 with a backlog of 0
/// that never accepts: a connection waits in its accept queue, the SYNs of the others are
/// dropped (listener drops).
const TRAFFIC_B: &str = r#"
import socket, struct, sys, time
deadline = time.time() + float(sys.argv[1])
lst = socket.socket()
lst.bind(("127.0.0.1", 8888))
lst.listen(0)
held = []
for _ in range(3):
    h = socket.socket()
    h.setblocking(False)
    h.connect_ex(("127.0.0.1", 8888))
    held.append(h)
linger0 = struct.pack("ii", 1, 0)
query = b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03api\x04test\x00\x00\x01\x00\x01"
i = 0
while time.time() < deadline:
    i += 1
    try:
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.settimeout(1)
        r.sendto(struct.pack(">H", i % 65536) + query[2:], ("10.207.0.1", 53))
        r.recv(512)
        r.close()
    except OSError:
        pass
    if i % 10 == 0:
        for addr in (("10.207.0.1", 7779), ("10.96.207.1", 81)):
            try:
                socket.create_connection(addr, timeout=2).close()
            except OSError:
                pass
    try:
        c = socket.create_connection(("10.96.207.1", 80) if i % 3 == 0 else ("10.207.0.1", 7777), timeout=2)
        c.sendall((b"r" if i % 7 == 0 else b"y") * 2048)
        c.recv(65536)
        if i % 5 == 0:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
        c.close()
    except OSError:
        pass
    time.sleep(0.05)
"#;

/// Values for Grafana's own variables: ranges short enough for the minute of data there is.
fn builtins() -> BTreeMap<String, String> {
    [
        ("__rate_interval", "1m"),
        ("__interval", "5s"),
        ("__interval_ms", "5000"),
        ("__range", "1m"),
        ("__range_s", "60"),
        ("__range_ms", "60000"),
        ("__auto", "5s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn result_has_data(data: &Value) -> bool {
    let finite = |v: &Value| {
        v[1].as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    };
    data["result"].as_array().is_some_and(|rs| {
        rs.iter().any(|r| {
            finite(&r["value"])
                || r["values"]
                    .as_array()
                    .is_some_and(|vs| vs.iter().any(finite))
        })
    })
}

fn result_is_empty(data: &Value) -> bool {
    data["result"].as_array().is_some_and(|r| r.is_empty())
}

/// A node graph's edges from one instant query in table format: every row has `id`, `source`
/// and `target` labels, `id` is `source -> target`, and `want` (source, target) is among them.
fn node_graph_edges_problems(data: &Value, want: Option<(&str, &str)>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut edges = Vec::new();
    for r in data["result"].as_array().into_iter().flatten() {
        let label = |l: &str| r["metric"][l].as_str().unwrap_or("").to_string();
        let (id, source, target) = (label("id"), label("source"), label("target"));
        if source.is_empty() || target.is_empty() || id != format!("{source} -> {target}") {
            problems.push(format!(
                "an edge without id, source or target: {}",
                r["metric"]
            ));
        }
        edges.push((source, target));
    }
    if let Some((source, target)) = want
        && !edges.iter().any(|(s, t)| s == source && t == target)
    {
        problems.push(format!("no edge {source} -> {target} among {edges:?}"));
    }
    problems
}

/// Every PromQL query of every panel against a real Prometheus scraping a real agent, with the
/// variables set from their own queries: each returns data. The rules load, evaluate without
/// error, and the drop alert goes pending on the planted drops; the agent alerts stay quiet.
#[test]
fn surfaces_every_panel_query_returns_data_from_a_live_agent() {
    require_root();
    let started = std::time::Instant::now();
    let a = Netns::new("nxsa");
    let b = Netns::new("nxsb");
    run(&[
        "ip", "link", "add", "eth0", "netns", &a.name, "type", "veth", "peer", "name", "eth0",
        "netns", &b.name,
    ]);
    a.run(&["ip", "addr", "add", "10.207.0.1/30", "dev", "eth0"]);
    a.run(&["ip", "link", "set", "eth0", "up"]);
    b.run(&["ip", "addr", "add", "10.207.0.2/30", "dev", "eth0"]);
    b.run(&["ip", "link", "set", "eth0", "up"]);
    // Removed with the namespace.
    b.run(&[
        "iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", "5555", "-j", "DROP",
    ]);
    // B's packets to A's echo server: every 10th is lost (B retransmits). Removed with A.
    a.run(&[
        "iptables",
        "-w",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "-s",
        "10.207.0.2",
        "--dport",
        "7777",
        "-m",
        "statistic",
        "--mode",
        "nth",
        "--every",
        "10",
        "--packet",
        "0",
        "-j",
        "DROP",
    ]);

    // A "Service" for B (Pod peers' backends panel): 10.96.207.1:80 translated to A's echo
    // server, :81 to A's closed 7779, by DNAT rules in B's OUTPUT chain. Removed with B.
    b.run(&["ip", "route", "add", "10.96.207.1/32", "dev", "eth0"]);
    for (port, to) in [("80", "10.207.0.1:7777"), ("81", "10.207.0.1:7779")] {
        b.run(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "10.96.207.1",
            "-p",
            "tcp",
            "--dport",
            port,
            "-j",
            "DNAT",
            "--to-destination",
            to,
        ]);
    }
    let sack = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_sack").expect("tcp_sack");
    let expect = if sack.trim() == "0" { 1 } else { 0 };
    let config = tempfile::Builder::new()
        .prefix("net-exporter-surfaces")
        .tempdir()
        .expect("temp dir");
    let config_file = config.path().join("config.yaml");
    std::fs::write(
        &config_file,
        format!("checks:\n  KernelParam:\n    expect_tcp_sack: {expect}\n"),
    )
    .expect("write config");
    let flag = format!("--config.file={}", config_file.display());
    let agent = Agent::start(&["--mode=standalone", flag.as_str()]);
    let rules = repo().join("deploy/prometheus/rules.yaml");
    let prom = PromServer::start(JOB, agent.port, &[rules.as_path()]);
    // Processes go before the namespaces they run in (reverse declaration order).
    let secs = TRAFFIC_SECS.to_string();
    let _traffic_a = a.spawn(&["python3", "-c", TRAFFIC_A, &secs]);
    let _traffic_b = b.spawn(&["python3", "-c", TRAFFIC_B, &secs]);

    // Until the planted conditions are in Prometheus, then enough samples for the windows.
    let present = |sel: &str| {
        prom.query_at(sel, unix_now())
            .map(|d| result_has_data(&d))
            .unwrap_or(false)
    };
    let wanted = [
        format!("up{{job=\"{JOB}\"}} == 1"),
        format!(
            "netexporter_packetloss_reason{{netns=\"{}\",reason=\"NO_SOCKET\"}}",
            a.name
        ),
        format!(
            "netexporter_packetloss_reason{{netns=\"{}\",reason=\"NETFILTER_DROP\"}}",
            b.name
        ),
        format!("netexporter_events{{type=\"{EVENT}\"}}"),
        format!(
            "netexporter_netdev_rxbytes{{netns=\"{}\",if_name=\"eth0\"}} > 0",
            b.name
        ),
        format!("netexporter_sockbacklog_recvq{{netns=\"{}\"}} > 0", a.name),
        // The peers of B (Pod peers): each series with a few samples, for the rates.
        format!(
            "count_over_time(netexporter_peer_connections_total{{netns=\"{}\",role=\"client\"}}[1m]) >= 5",
            b.name
        ),
        format!(
            "count_over_time(netexporter_peer_connection_failures_total{{netns=\"{}\",reason=\"refused\"}}[1m]) >= 5",
            b.name
        ),
        format!(
            "count_over_time(netexporter_peer_backend_connections_total{{netns=\"{}\"}}[1m]) >= 5",
            b.name
        ),
        format!(
            "count_over_time(netexporter_peer_backend_connection_failures_total{{netns=\"{}\"}}[1m]) >= 5",
            b.name
        ),
        format!(
            "count_over_time(netexporter_peer_retransmits_total{{netns=\"{}\"}}[1m]) >= 5",
            b.name
        ),
        format!(
            "count_over_time(netexporter_peer_resets_total{{netns=\"{}\"}}[1m]) >= 5",
            b.name
        ),
        format!(
            "count_over_time(netexporter_peer_rtt_seconds_count{{netns=\"{}\"}}[1m]) >= 5",
            b.name
        ),
        format!(
            "count_over_time(netexporter_peer_connect_latency_seconds_count{{netns=\"{}\"}}[1m]) >= 5",
            b.name
        ),
        format!(
            "netexporter_listener_accept_queue{{netns=\"{}\",port=\"8888\"}} > 0",
            b.name
        ),
        // B's DNS to A's resolver (Pod network, DNS row).
        format!(
            "count_over_time(netexporter_dns_latency_seconds_count{{netns=\"{}\"}}[1m]) >= 5",
            b.name
        ),
    ];
    let seen = poll(Duration::from_secs(60), || {
        wanted.iter().all(|w| present(w)).then_some(())
    });
    if seen.is_none() {
        let missing: Vec<&String> = wanted.iter().filter(|w| !present(w)).collect();
        panic!(
            "not in Prometheus after 60s: {missing:?}\nagent log:\n{}\nprometheus log:\n{}",
            agent.log_text(),
            prom.log()
        );
    }
    let enough = poll(Duration::from_secs(60), || {
        present(&format!("count_over_time(up{{job=\"{JOB}\"}}[1m]) >= 20")).then_some(())
    });
    assert!(enough.is_some(), "fewer than 20 scrapes in a minute");

    let now = unix_now();
    let (start, step) = (now - 30.0, 5.0);
    let mut problems = Vec::new();
    let mut kubernetes_only = Vec::new();
    let mut ran = 0;
    for d in dashboards() {
        let vs = vars(&d.json);
        // Variables from their own queries, in order (a chained query sees the earlier ones).
        let mut chosen = builtins();
        let mut all = builtins();
        for v in &vs {
            match v.kind.as_str() {
                "query" => {
                    let (sel, label) =
                        label_values_query(&v.query).expect("label_values (checked elsewhere)");
                    let got =
                        prom.label_values(&label, &substitute(&sel, &chosen), now - 60.0, now);
                    let values = match got {
                        Ok(values) => values,
                        Err(e) => {
                            problems.push(format!("{}: variable {}: {e}", d.file, v.name));
                            Vec::new()
                        }
                    };
                    let prefer = match v.name.as_str() {
                        "k8s_node" => Some("itest-node".to_string()),
                        "netns" => Some(b.name.clone()),
                        "if_name" => Some("eth0".to_string()),
                        "reason" => Some("NETFILTER_DROP".to_string()),
                        "type" => Some(EVENT.to_string()),
                        _ => None,
                    };
                    let value = match (&prefer, v.name.as_str()) {
                        (_, "k8s_namespace" | "k8s_pod") => {
                            // Standalone: no Pods. Grafana then offers only "All".
                            if !values.is_empty() {
                                problems.push(format!(
                                    "{}: variable {} found {values:?} on a standalone agent",
                                    d.file, v.name
                                ));
                            }
                            ".*".to_string()
                        }
                        (Some(p), _) if values.contains(p) => p.clone(),
                        _ => {
                            problems.push(format!(
                                "{}: variable {} found {values:?}, expected {prefer:?} among them",
                                d.file, v.name
                            ));
                            values.first().cloned().unwrap_or_else(|| ".*".into())
                        }
                    };
                    chosen.insert(v.name.clone(), value);
                    all.insert(
                        v.name.clone(),
                        v.all_value.clone().unwrap_or_else(|| ".*".into()),
                    );
                }
                "custom" => {
                    let value = v.current.clone().unwrap_or_default();
                    chosen.insert(v.name.clone(), value.clone());
                    all.insert(v.name.clone(), value);
                }
                _ => {}
            }
        }
        for t in targets(&d.json)
            .into_iter()
            .filter(|t| t.ds_type == "prometheus")
        {
            let names = metric_names(&t.expr);
            let k8s_only = !names.is_empty()
                && names
                    .iter()
                    .all(|n| KUBERNETES_ONLY.iter().any(|p| n.starts_with(p)));
            for (pass, values) in [("chosen", &chosen), ("All", &all)] {
                let expr = substitute(&t.expr, values);
                let got = if t.instant {
                    prom.query_at(&expr, now)
                } else {
                    prom.query_range(&expr, start, now, step)
                };
                ran += 1;
                let place = format!("{} {:?} ({pass} variables): {expr}", d.file, t.panel);
                match got {
                    Err(e) => problems.push(format!("{place}: {e}")),
                    Ok(data) if k8s_only => {
                        if !result_is_empty(&data) {
                            problems.push(format!(
                                "{place}: Kubernetes-mode data on a standalone agent"
                            ));
                        }
                        if pass == "chosen" {
                            kubernetes_only.push(format!("{} {:?}", d.file, t.panel));
                        }
                    }
                    Ok(data) => {
                        if !result_has_data(&data) {
                            problems.push(format!("{place}: no data: {}", data["result"]));
                        }
                        if t.panel_type == "nodeGraph" {
                            let want =
                                (pass == "chosen").then_some((b.name.as_str(), "10.207.0.1"));
                            for m in node_graph_edges_problems(&data, want) {
                                problems.push(format!("{place}: {m}"));
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "ran {ran} panel queries; Kubernetes-mode only (parsed, no data on a standalone agent): {kubernetes_only:?}"
    );
    assert!(ran > 150, "only {ran} queries ran");

    // The rules: loaded, evaluated, no errors.
    let groups = yaml("deploy/prometheus/rules.yaml")["groups"]
        .as_sequence()
        .map_or(0, |g| g.len());
    let evaluated = poll(Duration::from_secs(20), || {
        let (_, v) = prom.api("/api/v1/rules");
        let gs = v["data"]["groups"].as_array().cloned().unwrap_or_default();
        let rules: Vec<Value> = gs
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (gs.len() == groups && rules.iter().all(|r| r["health"] == "ok")).then_some(rules)
    });
    match evaluated {
        None => {
            let (_, v) = prom.api("/api/v1/rules");
            problems.push(format!("rules not all loaded and healthy: {v}"));
        }
        Some(rules) => {
            for r in rules {
                if r["lastError"].as_str().is_some_and(|e| !e.is_empty()) {
                    problems.push(format!("rule {}: {}", r["name"], r["lastError"]));
                }
            }
        }
    }

    // The drop alert sees the planted drops (pending: it needs 10 minutes to fire).
    let want_alerts = [
        (a.name.clone(), "NO_SOCKET"),
        (b.name.clone(), "NETFILTER_DROP"),
    ];
    let active = |v: &Value, name: &str| -> Vec<Value> {
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["labels"]["alertname"] == name)
            .cloned()
            .collect()
    };
    let pending = poll(Duration::from_secs(30), || {
        let (_, v) = prom.api("/api/v1/alerts");
        let rising = active(&v, "NetExporterPodDropReasonRising");
        want_alerts
            .iter()
            .all(|(ns, reason)| {
                rising.iter().any(|x| {
                    x["labels"]["netns"] == ns.as_str()
                        && x["labels"]["reason"] == *reason
                        && x["labels"]["k8s_node"] == "itest-node"
                })
            })
            .then_some(v)
    });
    match pending {
        None => {
            let (_, v) = prom.api("/api/v1/alerts");
            problems.push(format!(
                "NetExporterPodDropReasonRising is not active for {want_alerts:?}: {v}"
            ));
        }
        Some(v) => {
            for quiet in [
                "NetExporterDown",
                "NetExporterAbsent",
                "NetExporterCollectorFailing",
                "NetExporterExportFailing",
                "NetExporterPodIPsLeaked",
            ] {
                let got = active(&v, quiet);
                if !got.is_empty() {
                    problems.push(format!("{quiet} is active on a healthy agent: {got:?}"));
                }
            }
            let names: BTreeSet<String> = v["data"]["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| x["labels"]["alertname"].as_str().unwrap_or("").to_string())
                .collect();
            eprintln!("active alerts: {names:?}");
        }
    }
    eprintln!("live surfaces test took {:?}", started.elapsed());
    if !problems.is_empty() {
        eprintln!("prometheus log:\n{}", prom.log());
    }
    report("panels and rules on a live agent", &problems);
}

#[test]
fn surfaces_variable_substitution() {
    let values: BTreeMap<String, String> = [("a", "1"), ("ab", "2"), ("__range", "1m")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        substitute("x $a $ab ${a} ${ab:regex} [[a]] $c [$__range]", &values),
        "x 1 2 1 2 1 $c [1m]"
    );
    assert!(
        var_refs(r#"label_replace(m, "a", "$1 ${2}", "b", "(.*)")"#).is_empty(),
        "a regular expression's groups are no variables"
    );
    let names: Vec<String> = var_refs("$k8s_node ${netns:pipe}")
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["k8s_node", "netns"]);
    assert_eq!(
        promql_labels(
            r#"sum by (k8s_node, reason) (rate(m{netns=~"a,b}", if_name!="x"}[1m])) and on (k8s_pod) up"#
        ),
        ["if_name", "k8s_node", "k8s_pod", "netns", "reason"]
            .into_iter()
            .map(str::to_string)
            .collect()
    );
    assert_eq!(
        metric_names(
            r#"rate(netexporter_tcp_insegs{netns="netexporter_x"}[1m]) / netexporter:a:b"#
        ),
        ["netexporter:a:b", "netexporter_tcp_insegs"]
            .into_iter()
            .map(str::to_string)
            .collect()
    );
    assert_eq!(
        label_values_query(r#"label_values(m{a=~"$b"}, c)"#),
        Some((r#"m{a=~"$b"}"#.to_string(), "c".to_string()))
    );
}
