//! `net-exporter diagnose --pod NAMESPACE/NAME`: one Pod's (or standalone namespace's) worst
//! peers and its resolvers, from a live window of the `peers` and `dns` probes. The command loads the probe's programs
//! itself, collects, waits the window and collects again: what it shows is what the Pod's
//! connections did during the window (connections opened before it began are not tagged,
//! so only their RTT samples at close and their failures are seen).

use std::collections::BTreeMap;

use net_exporter::collector::{ObservedSeries, Snapshot};
use net_exporter::probes::{self, Histogram};

/// The target of a report: a Kubernetes Pod (`NAMESPACE/NAME`), a standalone namespace (its
/// `netns` name) or the node's own namespace (`node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pod { namespace: String, name: String },
    Netns(String),
    Node,
}

impl Target {
    pub fn parse(s: &str) -> Self {
        match s.split_once('/') {
            Some((namespace, name)) => Self::Pod {
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
            None if s == "node" => Self::Node,
            None => Self::Netns(s.to_string()),
        }
    }

    fn matches(&self, s: &ObservedSeries) -> bool {
        let attr = |k: &str| s.attr(k);
        match self {
            Self::Pod { namespace, name } => {
                attr("k8s.namespace.name").as_deref() == Some(namespace)
                    && attr("k8s.pod.name").as_deref() == Some(name)
            }
            Self::Netns(n) => attr("netns").as_deref() == Some(n),
            Self::Node => attr("netns").is_none() && attr("k8s.pod.name").is_none(),
        }
    }
}

/// What one peer of the target did, in one role, summed over ports.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct PeerRow {
    pub role: String,
    pub peer: String,
    pub peer_kind: String,
    pub opened: u64,
    pub failures: BTreeMap<String, u64>,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Seconds; `None` without samples.
    pub rtt_p99: Option<f64>,
    pub connect_p99: Option<f64>,
}

impl PeerRow {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// One listening port of the target.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct ListenerRow {
    pub port: String,
    pub queue: u64,
    pub limit: u64,
    pub drops: u64,
}

/// The target's connections to a translated address (a Service's ClusterIP) that went to one
/// backend, summed over ports.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct BackendRow {
    pub peer: String,
    pub peer_kind: String,
    pub backend: String,
    pub backend_kind: String,
    pub opened: u64,
    pub failures: BTreeMap<String, u64>,
}

/// What the target asked one resolver in the window, UDP and TCP summed.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct ResolverRow {
    pub resolver: String,
    pub resolver_kind: String,
    pub queries: u64,
    /// Answers by rcode.
    pub answers: BTreeMap<String, u64>,
    pub timeouts: u64,
    pub malformed: u64,
    pub search_expansions: u64,
    /// Seconds; `None` without answers.
    pub latency_p99: Option<f64>,
    /// What is wrong with it, if anything: it does not answer, or leaves queries unanswered.
    pub problem: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    pub peers: Vec<PeerRow>,
    pub listeners: Vec<ListenerRow>,
    /// Connections to Services by the backend they reached, worst first.
    pub backends: Vec<BackendRow>,
    /// Its resolvers, worst first (timeouts, then SERVFAIL and REFUSED, then queries).
    pub resolvers: Vec<ResolverRow>,
}

/// The target's peers, worst first (failures, then retransmits, then RTT), and its listeners.
pub fn report(snapshot: &Snapshot, target: &Target) -> Report {
    let Some(p) = probes::PROBES.iter().position(|r| r.name == "peers") else {
        return Report::default();
    };
    let metrics = probes::PROBES[p].metrics;
    let index = |name: &str| metrics.iter().position(|m| m.name == name);
    let mut rows: BTreeMap<(String, String), PeerRow> = BTreeMap::new();
    let mut backends: BTreeMap<(String, String), BackendRow> = BTreeMap::new();
    let mut listeners = Vec::new();
    for s in snapshot.series.get(p).into_iter().flatten() {
        if !target.matches(s) {
            continue;
        }
        let label = |k: &str| label_of(s, k);
        let value = |name: &str| value_of(s, metrics, name);
        if index("netexporter_listener_accept_queue")
            .is_some_and(|i| s.values.get(i).copied().flatten().is_some())
        {
            listeners.push(ListenerRow {
                port: label("server.port"),
                queue: value("netexporter_listener_accept_queue"),
                limit: value("netexporter_listener_accept_queue_limit"),
                drops: value("netexporter_listener_drops_total"),
            });
            continue;
        }
        let (role, peer) = (label("role"), label("peer"));
        if peer.is_empty() {
            continue; // the node's uncounted events
        }
        let backend = label("backend");
        if !backend.is_empty() {
            let row = backends
                .entry((peer.clone(), backend.clone()))
                .or_insert_with(|| BackendRow {
                    peer,
                    peer_kind: label("peer_kind"),
                    backend,
                    backend_kind: label("backend_kind"),
                    ..BackendRow::default()
                });
            row.opened += value("netexporter_peer_backend_connections_total");
            let failed = value("netexporter_peer_backend_connection_failures_total");
            if failed > 0 {
                *row.failures.entry(label("reason")).or_default() += failed;
            }
            continue;
        }
        let row = rows
            .entry((role.clone(), peer.clone()))
            .or_insert_with(|| PeerRow {
                role,
                peer,
                peer_kind: label("peer_kind"),
                ..PeerRow::default()
            });
        row.opened += value("netexporter_peer_connections_total");
        let failed = value("netexporter_peer_connection_failures_total");
        if failed > 0 {
            *row.failures.entry(label("reason")).or_default() += failed;
        }
        row.retransmits += value("netexporter_peer_retransmits_total");
        let (resets, bytes) = (
            value("netexporter_peer_resets_total"),
            value("netexporter_peer_bytes_total"),
        );
        if label("direction") == "transmit" {
            row.resets_sent += resets;
            row.bytes_sent += bytes;
        } else {
            row.resets_received += resets;
            row.bytes_received += bytes;
        }
        for (i, h) in &s.histograms {
            let q = quantile(0.99, h);
            match metrics.get(*i).map(|m| m.name) {
                Some("netexporter_peer_rtt_seconds") => row.rtt_p99 = q,
                Some("netexporter_peer_connect_latency_seconds") => row.connect_p99 = q,
                _ => {}
            }
        }
    }
    let mut peers: Vec<PeerRow> = rows.into_values().collect();
    peers.sort_by(|a, b| {
        b.failed()
            .cmp(&a.failed())
            .then(b.retransmits.cmp(&a.retransmits))
            .then(
                b.rtt_p99
                    .unwrap_or(0.0)
                    .total_cmp(&a.rtt_p99.unwrap_or(0.0)),
            )
            .then(b.opened.cmp(&a.opened))
    });
    listeners.sort_by(|a, b| b.drops.cmp(&a.drops).then(b.queue.cmp(&a.queue)));
    let failed = |r: &BackendRow| r.failures.values().sum::<u64>();
    let mut backends: Vec<BackendRow> = backends.into_values().collect();
    backends.sort_by(|a, b| failed(b).cmp(&failed(a)).then(b.opened.cmp(&a.opened)));
    Report {
        peers,
        listeners,
        backends,
        resolvers: resolvers(snapshot, target),
    }
}

/// The target's resolvers from the `dns` probe's series, worst first.
fn resolvers(snapshot: &Snapshot, target: &Target) -> Vec<ResolverRow> {
    let Some(p) = probes::PROBES.iter().position(|r| r.name == "dns") else {
        return Vec::new();
    };
    let metrics = probes::PROBES[p].metrics;
    let mut rows: BTreeMap<String, (ResolverRow, Option<Histogram>)> = BTreeMap::new();
    for s in snapshot.series.get(p).into_iter().flatten() {
        if !target.matches(s) {
            continue;
        }
        let label = |k: &str| label_of(s, k);
        let value = |name: &str| value_of(s, metrics, name);
        let resolver = label("resolver");
        if resolver.is_empty() {
            continue; // the node's uncounted events and info
        }
        let (row, latency) = rows.entry(resolver.clone()).or_insert_with(|| {
            let row = ResolverRow {
                resolver,
                resolver_kind: label("resolver_kind"),
                ..ResolverRow::default()
            };
            (row, None)
        });
        row.queries += value("netexporter_dns_queries_total");
        let answered = value("netexporter_dns_answers_total");
        if answered > 0 {
            *row.answers.entry(label("rcode")).or_default() += answered;
        }
        row.timeouts += value("netexporter_dns_timeouts_total");
        row.malformed += value("netexporter_dns_malformed_total");
        row.search_expansions += value("netexporter_dns_search_expansions_total");
        for (_, h) in &s.histograms {
            match latency {
                None => *latency = Some(h.clone()),
                Some(sum) => {
                    sum.counts
                        .iter_mut()
                        .zip(&h.counts)
                        .for_each(|(a, b)| *a += b);
                    sum.sum += h.sum;
                }
            }
        }
    }
    let mut out: Vec<ResolverRow> = rows
        .into_values()
        .map(|(mut row, latency)| {
            row.latency_p99 = latency.as_ref().and_then(|h| quantile(0.99, h));
            let answered: u64 = row.answers.values().sum();
            row.problem = match (row.timeouts, answered) {
                (0, _) => None,
                (t, 0) => Some(format!(
                    "does not answer: {t} queries timed out, none answered"
                )),
                (t, a) => Some(format!("{t} queries timed out, {a} answered")),
            };
            row
        })
        .collect();
    let refusals = |r: &ResolverRow| {
        ["SERVFAIL", "REFUSED"]
            .iter()
            .filter_map(|c| r.answers.get(*c))
            .sum::<u64>()
    };
    out.sort_by(|a, b| {
        b.timeouts
            .cmp(&a.timeouts)
            .then(refusals(b).cmp(&refusals(a)))
            .then(b.queries.cmp(&a.queries))
    });
    out
}

/// Label `k` of a series, or "".
fn label_of(s: &ObservedSeries, k: &str) -> String {
    s.attr(k).unwrap_or_default()
}

/// The series' value of metric `name` of its probe (`metrics`), or 0.
fn value_of(s: &ObservedSeries, metrics: &[probes::MetricDef], name: &str) -> u64 {
    metrics
        .iter()
        .position(|m| m.name == name)
        .and_then(|i| s.values.get(i).copied().flatten())
        .unwrap_or(0)
}

/// The `q` quantile of a histogram, interpolated linearly inside its bucket as Prometheus'
/// `histogram_quantile` does (the last finite bound for the `+Inf` bucket).
pub fn quantile(q: f64, h: &Histogram) -> Option<f64> {
    let total = h.count();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, n) in h.counts.iter().enumerate() {
        if *n > 0 && (seen + n) as f64 >= rank {
            let Some(upper) = h.bounds.get(i) else {
                return h.bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { h.bounds[i - 1] };
            return Some(lower + (upper - lower) * (rank - seen as f64) / *n as f64);
        }
        seen += n;
    }
    h.bounds.last().copied()
}

fn seconds(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

/// `3 refused, 1 timeout`, or `0`.
fn failures_text(failures: &BTreeMap<String, u64>) -> String {
    if failures.is_empty() {
        return "0".to_string();
    }
    failures
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report as a table, `top` peers at most.
pub fn table(r: &Report, top: usize) -> String {
    let mut out = String::new();
    if r.peers.is_empty() {
        out.push_str("no connections with a peer in the window\n");
    } else {
        let rows: Vec<[String; 9]> = r
            .peers
            .iter()
            .take(top)
            .map(|p| {
                let failed = failures_text(&p.failures);
                [
                    p.role.clone(),
                    format!("{} ({})", p.peer, p.peer_kind),
                    p.opened.to_string(),
                    failed,
                    p.retransmits.to_string(),
                    format!("{}/{}", p.resets_sent, p.resets_received),
                    seconds(p.rtt_p99),
                    seconds(p.connect_p99),
                    format!("{}/{}", p.bytes_sent, p.bytes_received),
                ]
            })
            .collect();
        let header = [
            "ROLE",
            "PEER",
            "OPENED",
            "FAILED",
            "RETRANS",
            "RST OUT/IN",
            "RTT P99",
            "CONNECT P99",
            "BYTES OUT/IN",
        ];
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let mut l: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            if let Some(last) = l.last_mut() {
                *last = last.trim_end().to_string();
            }
            l.join("  ") + "\n"
        };
        out.push_str(&line(header.to_vec()));
        for r in &rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
        }
        if r.peers.len() > top {
            out.push_str(&format!("... and {} more peers\n", r.peers.len() - top));
        }
    }
    if !r.backends.is_empty() {
        out.push_str("\nSERVICE -> BACKEND (translated by conntrack)  OPENED  FAILED\n");
        for b in &r.backends {
            let failed = failures_text(&b.failures);
            out.push_str(&format!(
                "{} ({}) -> {} ({})  {}  {failed}\n",
                b.peer, b.peer_kind, b.backend, b.backend_kind, b.opened
            ));
        }
    }
    if !r.resolvers.is_empty() {
        out.push_str("\nRESOLVER  QUERIES  ANSWERS  TIMEOUTS  LATENCY P99\n");
        for d in &r.resolvers {
            out.push_str(&format!(
                "{} ({})  {}  {}  {}  {}\n",
                d.resolver,
                d.resolver_kind,
                d.queries,
                failures_text(&d.answers),
                d.timeouts,
                seconds(d.latency_p99)
            ));
        }
        for d in r.resolvers.iter().filter(|d| d.problem.is_some()) {
            let problem = d.problem.as_deref().unwrap_or_default();
            out.push_str(&format!("! resolver {} {problem}\n", d.resolver));
        }
    }
    if !r.listeners.is_empty() {
        out.push_str("\nLISTENING PORT  ACCEPT QUEUE  DROPS\n");
        for l in &r.listeners {
            out.push_str(&format!(
                "{:<14}  {:<12}  {}\n",
                l.port,
                format!("{}/{}", l.queue, l.limit),
                l.drops
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;

    const BOUNDS: &[f64] = &[0.001, 0.004, 0.016];

    fn series(labels: &[(&str, &str)], metric: &str, value: u64) -> ObservedSeries {
        let p = probes::PROBES
            .iter()
            .position(|r| r.name == "peers")
            .unwrap();
        let metrics = probes::PROBES[p].metrics;
        let mut values = vec![None; metrics.len()];
        let i = metrics.iter().position(|m| m.name == metric).unwrap();
        let mut histograms = Vec::new();
        if metrics[i].kind == probes::Kind::Histogram {
            let mut counts = vec![0; BOUNDS.len() + 1];
            counts[2] = value;
            histograms.push((
                i,
                Histogram {
                    bounds: BOUNDS,
                    counts,
                    sum: 0.0,
                },
            ));
        } else {
            values[i] = Some(value);
        }
        let mut attrs = vec![KeyValue::new("k8s.node.name", "n1")];
        attrs.extend(
            labels
                .iter()
                .map(|(k, v)| KeyValue::new(k.to_string(), v.to_string())),
        );
        ObservedSeries::with_attrs(attrs, values, histograms)
    }

    #[test]
    fn the_pods_peers_worst_first_and_its_listeners() {
        let pod = [("k8s.namespace.name", "shop"), ("k8s.pod.name", "web-1")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut l = pod.to_vec();
            l.extend_from_slice(extra);
            l
        };
        let db = [
            ("role", "client"),
            ("server.port", "5432"),
            ("peer", "shop/StatefulSet/db"),
            ("peer_kind", "workload"),
        ];
        let api = [
            ("role", "client"),
            ("server.port", "80"),
            ("peer", "shop/Deployment/api"),
            ("peer_kind", "workload"),
        ];
        let list = vec![
            series(&with(&api), "netexporter_peer_connections_total", 50),
            series(&with(&db), "netexporter_peer_connections_total", 10),
            series(
                &with(&[db[0], db[1], db[2], db[3], ("reason", "timeout")]),
                "netexporter_peer_connection_failures_total",
                3,
            ),
            series(
                &with(&[db[0], db[2], db[3]]),
                "netexporter_peer_rtt_seconds",
                4,
            ),
            series(
                &with(&[("server.port", "8080")]),
                "netexporter_listener_accept_queue",
                2,
            ),
            // Connections to a Service, by backend: a table of their own, not peers.
            series(
                &with(&[
                    ("role", "client"),
                    ("server.port", "80"),
                    ("peer", "shop/Service/cart"),
                    ("peer_kind", "service"),
                    ("backend", "shop/Deployment/cart"),
                    ("backend_kind", "workload"),
                ]),
                "netexporter_peer_backend_connections_total",
                6,
            ),
            series(
                &with(&[
                    ("role", "client"),
                    ("server.port", "80"),
                    ("peer", "shop/Service/cart"),
                    ("peer_kind", "service"),
                    ("backend", "10.244.9.9"),
                    ("backend_kind", "address"),
                    ("reason", "refused"),
                ]),
                "netexporter_peer_backend_connection_failures_total",
                2,
            ),
            // Another Pod's peer is not in the report.
            series(
                &[
                    ("k8s.namespace.name", "shop"),
                    ("k8s.pod.name", "web-2"),
                    db[0],
                    db[1],
                    db[2],
                    db[3],
                ],
                "netexporter_peer_connections_total",
                99,
            ),
        ];
        let p = probes::PROBES
            .iter()
            .position(|r| r.name == "peers")
            .unwrap();
        let mut series = vec![Vec::new(); probes::PROBES.len()];
        series[p] = list;
        let snapshot = Snapshot {
            series,
            ..Default::default()
        };
        let r = report(&snapshot, &Target::parse("shop/web-1"));
        let names: Vec<(&str, u64, u64)> = r
            .peers
            .iter()
            .map(|p| (p.peer.as_str(), p.opened, p.failed()))
            .collect();
        assert_eq!(
            names,
            [
                ("shop/StatefulSet/db", 10, 3),
                ("shop/Deployment/api", 50, 0)
            ]
        );
        // Four samples in (4 ms, 16 ms]: the 99th percentile interpolates near its top.
        let rtt = r.peers[0].rtt_p99.unwrap();
        assert!((rtt - (0.004 + 0.012 * 0.99)).abs() < 1e-9, "{rtt}");
        assert_eq!(r.listeners.len(), 1);
        assert_eq!(r.listeners[0].port, "8080");
        let backends: Vec<(&str, u64, u64)> = r
            .backends
            .iter()
            .map(|b| (b.backend.as_str(), b.opened, b.failures.values().sum()))
            .collect();
        assert_eq!(
            backends,
            [("10.244.9.9", 0, 2), ("shop/Deployment/cart", 6, 0)]
        );
        let text = table(&r, 10);
        assert!(
            text.contains("shop/Service/cart (service) -> 10.244.9.9 (address)  0  2 refused"),
            "{text}"
        );
        assert!(text.contains("3 timeout"), "{text}");
        assert!(text.contains("15.9ms"), "{text}");
        assert_eq!(Target::parse("node"), Target::Node);
        assert_eq!(Target::parse("blue"), Target::Netns("blue".into()));
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let h = Histogram {
            bounds: BOUNDS,
            counts: vec![50, 50, 0, 0],
            sum: 0.0,
        };
        assert_eq!(quantile(0.5, &h), Some(0.001));
        assert_eq!(quantile(0.75, &h), Some(0.0025));
        let inf = Histogram {
            bounds: BOUNDS,
            counts: vec![0, 0, 0, 3],
            sum: 0.0,
        };
        assert_eq!(quantile(0.99, &inf), Some(0.016));
        let empty = Histogram {
            bounds: BOUNDS,
            counts: vec![0; 4],
            sum: 0.0,
        };
        assert_eq!(quantile(0.99, &empty), None);
    }

    #[test]
    fn a_resolver_that_does_not_answer_is_reported_first() {
        let p = probes::PROBES.iter().position(|r| r.name == "dns").unwrap();
        let metrics = probes::PROBES[p].metrics;
        let dns = |resolver: &str, extra: &[(&str, &str)], metric: &str, value: u64| {
            let mut values = vec![None; metrics.len()];
            values[metrics.iter().position(|m| m.name == metric).unwrap()] = Some(value);
            let mut attrs = vec![
                KeyValue::new("k8s.namespace.name", "shop"),
                KeyValue::new("k8s.pod.name", "web-1"),
                KeyValue::new("resolver", resolver.to_string()),
                KeyValue::new("resolver_kind", "address"),
                KeyValue::new("network.transport", "udp"),
            ];
            attrs.extend(
                extra
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.to_string(), v.to_string())),
            );
            ObservedSeries::with_attrs(attrs, values, Vec::new())
        };
        let q = "netexporter_dns_queries_total";
        let a = "netexporter_dns_answers_total";
        let t = "netexporter_dns_timeouts_total";
        let mut series = vec![Vec::new(); probes::PROBES.len()];
        series[p] = vec![
            dns("10.96.0.10", &[("type", "A")], q, 40),
            dns("10.96.0.10", &[("rcode", "NOERROR")], a, 30),
            dns("10.96.0.10", &[("rcode", "SERVFAIL")], a, 8),
            dns("10.96.0.10", &[], t, 2),
            dns("192.0.2.53", &[("type", "A")], q, 5),
            dns("192.0.2.53", &[], t, 5),
            dns("169.254.20.10", &[("type", "AAAA")], q, 9),
            dns("169.254.20.10", &[("rcode", "NOERROR")], a, 9),
            dns("169.254.20.10", &[], t, 0),
        ];
        let snapshot = Snapshot {
            series,
            ..Default::default()
        };
        let r = report(&snapshot, &Target::parse("shop/web-1"));
        let rows: Vec<(&str, u64, u64, Option<&str>)> = r
            .resolvers
            .iter()
            .map(|d| {
                let problem = d.problem.as_deref();
                (d.resolver.as_str(), d.queries, d.timeouts, problem)
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "192.0.2.53",
                    5,
                    5,
                    Some("does not answer: 5 queries timed out, none answered")
                ),
                (
                    "10.96.0.10",
                    40,
                    2,
                    Some("2 queries timed out, 38 answered")
                ),
                ("169.254.20.10", 9, 0, None),
            ]
        );
        assert_eq!(r.resolvers[1].answers.get("SERVFAIL"), Some(&8));
        let text = table(&r, 10);
        assert!(
            text.contains("! resolver 192.0.2.53 does not answer: 5 queries timed out"),
            "{text}"
        );
        assert!(
            text.contains("10.96.0.10 (address)  40  30 NOERROR, 8 SERVFAIL  2  -"),
            "{text}"
        );
    }
}
