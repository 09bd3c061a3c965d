//! `make bench` (exposition): what rendering `/metrics` costs per series, in user space alone
//! (no kernel read, no root): a snapshot shaped like the scrape benchmark's world (`collection
//! -- peers`: 100 namespaces, each with 50 client and 50 server peers at the default budget)
//! rendered with and without its peer series, in alternating runs. The ratio and the time per
//! peer data point are what the peers' exposition adds to a scrape. Then what gzip adds to it
//! (Prometheus asks for gzip; the endpoint compresses at the default level), against the
//! fastest level.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use net_exporter::collector::{ObservedSeries, Snapshot};
use net_exporter::probes::{self, Histogram, Kind};
use net_exporter::telemetry::{ExportStats, Telemetry};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

const NAMESPACES: usize = 100;
/// The default budget: 20 named peers and `other`, per role; 3 named peers and `other` with
/// histograms.
const NAMED: usize = 20;
const TIMED: usize = 3;
const ROUNDS: usize = 15;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let enabled: Vec<usize> = (0..probes::PROBES.len()).collect();
    let telemetry = Telemetry::new(
        Resource::builder_empty().build(),
        false,
        &enabled,
        None,
        Arc::new(ExportStats::default()),
    );
    let off = Arc::new(snapshot(false));
    let on = Arc::new(snapshot(true));
    let points = |s: &Snapshot| -> usize {
        s.series
            .iter()
            .flatten()
            .map(|s| {
                s.values.iter().flatten().count()
                    + s.histograms.iter().map(|(_, h)| h.points()).sum::<usize>()
            })
            .sum()
    };
    let (off_points, on_points) = (points(&off), points(&on));
    let (mut t_off, mut t_on) = (Vec::new(), Vec::new());
    let mut text = String::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let off_text = telemetry.render_prometheus(Arc::clone(&off));
        t_off.push(t.elapsed());
        std::hint::black_box(off_text);
        let t = Instant::now();
        text = telemetry.render_prometheus(Arc::clone(&on));
        t_on.push(t.elapsed());
    }
    let (off_ms, on_ms) = (ms(median(&mut t_off)), ms(median(&mut t_on)));
    let peer_points = on_points - off_points;
    println!(
        "exposition, {NAMESPACES} namespaces: off {off_points} points {off_ms:.2} ms; on {on_points} points {on_ms:.2} ms ({:.2}x), {:.2} us per peer point, {:.1} MiB of text",
        on_ms / off_ms,
        (on_ms - off_ms) * 1000.0 / peer_points as f64,
        text.len() as f64 / (1024.0 * 1024.0)
    );
    let mut line = String::from("gzip of the on text:");
    for (name, level) in [
        ("default", flate2::Compression::default()),
        ("fastest", flate2::Compression::fast()),
    ] {
        let (mut took, mut size) = (Vec::new(), 0);
        for _ in 0..5 {
            let t = Instant::now();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), level);
            let ok = gz.write_all(text.as_bytes()).and_then(|_| gz.finish());
            took.push(t.elapsed());
            size = ok.map_or(0, |v| v.len());
        }
        let gz_ms = ms(median(&mut took));
        line += &format!(
            " {name} {gz_ms:.2} ms ({:.2}x the on render), {:.2} MiB;",
            gz_ms / on_ms,
            size as f64 / (1024.0 * 1024.0)
        );
    }
    println!("{}", line.trim_end_matches(';'));
}

/// Every probe's non-histogram series once per namespace (netdev's for two interfaces), and
/// with `peers`, the peer series of the scrape benchmark's world.
fn snapshot(peers: bool) -> Snapshot {
    let peers_index = probes::PROBES.iter().position(|p| p.name == "peers");
    let mut series = vec![Vec::new(); probes::PROBES.len()];
    for ns in 0..NAMESPACES {
        let base = vec![
            KeyValue::new("k8s.node.name", "bench-node"),
            KeyValue::new("netns", format!("pw{ns}")),
        ];
        for (p, probe) in probes::PROBES.iter().enumerate() {
            if Some(p) == peers_index {
                if peers {
                    peer_series(&base, probe.metrics, &mut series[p]);
                }
                continue;
            }
            let values: Vec<Option<u64>> = probe
                .metrics
                .iter()
                .enumerate()
                .map(|(i, m)| (m.kind != Kind::Histogram).then_some(1000 + i as u64))
                .collect();
            let interfaces: &[&str] = if probe.name == "netdev" {
                &["eth0", "lo"]
            } else {
                &[""]
            };
            for name in interfaces {
                let mut attrs = base.clone();
                if !name.is_empty() {
                    attrs.push(KeyValue::new("if_name", *name));
                }
                series[p].push(ObservedSeries::with_attrs(
                    attrs,
                    values.clone(),
                    Vec::new(),
                ));
            }
        }
    }
    Snapshot {
        series,
        ..Snapshot::default()
    }
}

/// The peers probe's series of one namespace: per role, its named peers and `other` with
/// connections and bytes both ways; the timed ones with their histograms (a client's connect
/// latency and RTT, a server's RTT).
fn peer_series(base: &[KeyValue], metrics: &[probes::MetricDef], out: &mut Vec<ObservedSeries>) {
    let index = |name: &str| metrics.iter().position(|m| m.name == name).unwrap_or(0);
    let (connections, bytes) = (
        index("netexporter_peer_connections_total"),
        index("netexporter_peer_bytes_total"),
    );
    let (connect, rtt) = (
        index("netexporter_peer_connect_latency_seconds"),
        index("netexporter_peer_rtt_seconds"),
    );
    let one = |labels: Vec<KeyValue>, metric: usize, value: u64| {
        let mut attrs = base.to_vec();
        attrs.extend(labels);
        let mut values = vec![None; metrics.len()];
        values[metric] = Some(value);
        ObservedSeries::with_attrs(attrs, values, Vec::new())
    };
    for role in ["client", "server"] {
        for peer in 0..=NAMED {
            let name = if peer == NAMED {
                "other".to_string()
            } else {
                format!("10.77.0.{}", peer + 2)
            };
            let labels = |timed: bool| {
                let mut l = vec![KeyValue::new("role", role)];
                if !timed && peer < NAMED {
                    l.push(KeyValue::new("server.port", "8081"));
                }
                l.push(KeyValue::new("peer", name.clone()));
                l.push(KeyValue::new(
                    "peer_kind",
                    if peer < NAMED { "address" } else { "other" },
                ));
                if peer < NAMED {
                    l.push(KeyValue::new("network.peer.address", name.clone()));
                }
                l
            };
            out.push(one(labels(false), connections, 100 + peer as u64));
            for direction in ["transmit", "receive"] {
                let mut l = labels(false);
                l.push(KeyValue::new("direction", direction));
                out.push(one(l, bytes, 123_456 + peer as u64));
            }
            if peer < TIMED || peer == NAMED {
                let timed: &[usize] = if role == "client" {
                    &[connect, rtt]
                } else {
                    &[rtt]
                };
                for &m in timed {
                    let bounds = metrics[m].bounds;
                    let mut counts = vec![0; bounds.len() + 1];
                    counts[peer % bounds.len()] = 50;
                    let mut attrs = base.to_vec();
                    attrs.extend(labels(true));
                    out.push(ObservedSeries::with_attrs(
                        attrs,
                        vec![None; metrics.len()],
                        vec![(
                            m,
                            Histogram {
                                bounds,
                                counts,
                                sum: 0.0123,
                            },
                        )],
                    ));
                }
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
