//! OTLP metrics push against receivers built on the official protobuf definitions (gRPC and
//! HTTP/protobuf, `otlp_receiver.rs`); plus a dead endpoint, which the agent must count and
//! survive. Longer outages and a black hole are in `outage.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, metric, number_data_point,
};

use crate::harness::*;
use crate::otlp_receiver::{OtlpReceiver, Protocol};

/// Waits (at most 30 s) until `receiver` has `n` metrics requests and returns them.
fn wait_requests(
    receiver: &OtlpReceiver,
    n: usize,
    agent: &Agent,
) -> Vec<ExportMetricsServiceRequest> {
    poll(Duration::from_secs(30), || {
        let got = receiver.metrics();
        (got.len() >= n).then_some(got)
    })
    .unwrap_or_else(|| {
        panic!(
            "fewer than {n} OTLP requests after 30s ({} received); first refused: {:?}\nagent log:\n{}",
            receiver.metrics_count(),
            receiver.refused().iter().take(3).collect::<Vec<_>>(),
            agent.log_text()
        )
    })
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// The metrics of a request by name (each name once).
fn metrics_by_name(req: &ExportMetricsServiceRequest) -> BTreeMap<&str, &Metric> {
    let mut out = BTreeMap::new();
    for rm in &req.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                assert!(
                    out.insert(m.name.as_str(), m).is_none(),
                    "metric {} twice in one request",
                    m.name
                );
            }
        }
    }
    out
}

fn points(m: &Metric) -> &[NumberDataPoint] {
    match &m.data {
        Some(metric::Data::Gauge(g)) => &g.data_points,
        Some(metric::Data::Sum(s)) => &s.data_points,
        _ => &[],
    }
}

fn value(p: &NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        Some(number_data_point::Value::AsDouble(v)) => v,
        None => panic!("data point without a value: {p:?}"),
    }
}

/// Starts a receiver and an agent pushing to it (by flags or by `OTEL_*` variables), then
/// checks what arrives against the spec and against the agent's own Prometheus scrape.
fn check_push(protocol: Protocol, via_env: bool) {
    require_root();
    let ns = Netns::new("nxo");
    let receiver = OtlpReceiver::start(protocol);
    let endpoint = receiver.endpoint();
    let agent = if via_env {
        Agent::start_with_env(
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.flag()),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ],
        )
    } else {
        Agent::start(&[
            &format!("--otlp.endpoint={endpoint}"),
            &format!("--otlp.protocol={}", protocol.flag()),
            "--otlp.interval=1s",
        ])
    };

    // Two pushes: the interval works, and the second shows how cumulative sums continue.
    let requests = wait_requests(&receiver, 2, &agent);
    let scrape = agent.scrape();
    let (first, last) = (&requests[0], &requests[requests.len() - 1]);
    assert_eq!(receiver.refused(), Vec::<String>::new(), "refused requests");

    for req in [first, last] {
        assert_eq!(req.resource_metrics.len(), 1, "one resource per request");
        let resource = attrs(
            &req.resource_metrics[0]
                .resource
                .as_ref()
                .expect("a resource")
                .attributes,
        );
        assert_eq!(
            resource.get("service.name").map(String::as_str),
            Some("net-exporter"),
            "{resource:?}"
        );
        assert_eq!(
            resource.get("k8s.node.name").map(String::as_str),
            Some("itest-node"),
            "{resource:?}"
        );
    }

    // The same names as the Prometheus scrape of the same agent.
    let metrics = metrics_by_name(last);
    let otlp_names: BTreeSet<String> = metrics.keys().map(|n| n.to_string()).collect();
    assert_eq!(
        otlp_names,
        scrape.family_names(),
        "OTLP metric names (left) against the scrape's (right)"
    );

    let before = metrics_by_name(first);
    let mut problems = Vec::new();
    for spec in spec_metrics_implemented() {
        let Some(m) = metrics.get(spec.name.as_str()) else {
            problems.push(format!("{}: not pushed", spec.name));
            continue;
        };
        match (&m.data, spec.kind.as_str()) {
            (Some(metric::Data::Sum(s)), "counter")
                if s.is_monotonic
                    && s.aggregation_temporality == AggregationTemporality::Cumulative as i32 => {}
            (Some(metric::Data::Gauge(_)), "gauge") => {}
            (data, kind) => problems.push(format!(
                "{}: spec kind {kind}, pushed as {}",
                spec.name,
                match data {
                    Some(metric::Data::Sum(s)) => format!(
                        "Sum(monotonic={}, temporality={:?})",
                        s.is_monotonic,
                        AggregationTemporality::try_from(s.aggregation_temporality)
                    ),
                    Some(metric::Data::Gauge(_)) => "Gauge".into(),
                    other => format!("{other:?}"),
                }
            )),
        }
        if !spec.is_pod() {
            continue;
        }
        let mine: Vec<&NumberDataPoint> = points(m)
            .iter()
            .filter(|p| attrs(&p.attributes).get("netns") == Some(&ns.name))
            .collect();
        if mine.is_empty() {
            problems.push(format!(
                "{}: no data point for netns {}",
                spec.name, ns.name
            ));
        }
        let mut want: BTreeSet<&str> = ["k8s.node.name", "netns"].into();
        want.extend(spec.extra_labels());
        for p in &mine {
            let a = attrs(&p.attributes);
            let keys: BTreeSet<&str> = a.keys().map(String::as_str).collect();
            if keys != want || a["k8s.node.name"] != "itest-node" {
                problems.push(format!("{}: attributes {a:?}", spec.name));
            }
            let _ = value(p);
        }
        // Cumulative counters continue from the first push: same start, never smaller.
        if spec.kind == "counter" {
            let earlier = before
                .get(spec.name.as_str())
                .map(|m| points(m))
                .unwrap_or(&[]);
            for p in &mine {
                // Attributes are a set: their order may differ between pushes.
                let key = attrs(&p.attributes);
                let Some(q) = earlier.iter().find(|q| attrs(&q.attributes) == key) else {
                    problems.push(format!(
                        "{}: {:?} not in the first push",
                        spec.name,
                        attrs(&p.attributes)
                    ));
                    continue;
                };
                if q.start_time_unix_nano != p.start_time_unix_nano
                    || value(q) > value(p)
                    || q.time_unix_nano >= p.time_unix_nano
                {
                    problems.push(format!(
                        "{}: not cumulative: first push start={} time={} value={}, last start={} time={} value={}",
                        spec.name,
                        q.start_time_unix_nano,
                        q.time_unix_nano,
                        value(q),
                        p.start_time_unix_nano,
                        p.time_unix_nano,
                        value(p)
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{protocol:?} push against the spec:\n{}",
        problems.join("\n")
    );

    // Every push so far succeeded as far as the agent knows.
    let failures = agent.scrape().value(
        "netexporter_export_failures_total",
        &[("exporter", "otlp"), ("signal", "metrics")],
    );
    assert_eq!(failures, Some(0.0), "agent log:\n{}", agent.log_text());
}

#[test]
fn otlp_grpc_push_by_flags() {
    check_push(Protocol::Grpc, false);
}

#[test]
fn otlp_http_protobuf_push_by_flags() {
    check_push(Protocol::HttpProtobuf, false);
}

#[test]
fn otlp_grpc_push_by_environment() {
    check_push(Protocol::Grpc, true);
}

#[test]
fn otlp_http_protobuf_push_by_environment() {
    check_push(Protocol::HttpProtobuf, true);
}

/// With nothing listening at the endpoint, the agent keeps serving /metrics and counts the
/// failed exports.
#[test]
fn otlp_dead_endpoint_is_counted_and_scrapes_go_on() {
    require_root();
    let ns = Netns::new("nxod");
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let dead = DeadPort::new();
        let agent = Agent::start(&[
            &format!("--otlp.endpoint=http://127.0.0.1:{}", dead.port),
            &format!("--otlp.protocol={}", protocol.flag()),
            "--otlp.interval=1s",
        ]);
        let failures = poll(Duration::from_secs(30), || {
            // Each scrape must succeed while the pushes fail (`scrape` asserts 200).
            let s = agent.scrape();
            assert!(
                s.value("netexporter_sock_inuse", &[("netns", &ns.name)])
                    .is_some(),
                "{protocol:?}: scrape without the namespace:\n{}",
                s.text
            );
            s.value(
                "netexporter_export_failures_total",
                &[("exporter", "otlp"), ("signal", "metrics")],
            )
            .filter(|v| *v > 0.0)
        });
        assert!(
            failures.is_some(),
            "{protocol:?}: export failures not counted after 30s; agent log:\n{}",
            agent.log_text()
        );
        // Still serving after the failures.
        let (status, _) = http_get(agent.port, "/metrics").expect("scrape after failures");
        assert_eq!(status, 200);
    }
}

/// The kernel's histograms over OTLP: pushed as delta histograms with the agent's bounds,
/// whose points, added up over every push, are exactly the cumulative histogram the
/// Prometheus endpoint shows (buckets, count and sum).
#[test]
fn otlp_histograms_add_up_to_the_scrape() {
    use opentelemetry_proto::tonic::metrics::v1::HistogramDataPoint;
    require_root();
    let ns = Netns::new("nxoh");
    let receiver = OtlpReceiver::start(Protocol::Grpc);
    let agent = Agent::start(&[
        &format!("--otlp.endpoint={}", receiver.endpoint()),
        "--otlp.protocol=grpc",
        "--otlp.interval=1s",
    ]);
    const N: usize = 9;
    let script = format!(
        "import socket, threading\n\
         l = socket.socket(); l.bind(('127.0.0.1', 7301)); l.listen(16)\n\
         def serve():\n    for _ in range({N}):\n        c, _ = l.accept(); c.close()\n\
         t = threading.Thread(target=serve); t.start()\n\
         for _ in range({N}):\n    s = socket.create_connection(('127.0.0.1', 7301)); s.recv(1); s.close()\n\
         t.join(); print('done')\n"
    );
    assert_eq!(ns.run(&["python3", "-c", &script]).trim(), "done");
    let want = [
        ("netns", ns.name.as_str()),
        ("peer", "loopback"),
        ("role", "client"),
    ];
    let metric = "netexporter_peer_connect_latency_seconds";
    let scrape = poll(Duration::from_secs(10), || {
        let s = agent.scrape();
        (s.find(&format!("{metric}_count"), &want).len() == 1).then_some(s)
    })
    .expect("connect latency series in the scrape");
    let Hist {
        buckets,
        sum,
        count,
    } = Hist::read(&scrape, metric, &want);
    assert_eq!(count, N as u64);

    // Everything the pushes carried for that series, once the series is quiet.
    let mine = |p: &HistogramDataPoint| {
        let a = attrs(&p.attributes);
        want.iter()
            .all(|(k, v)| a.get(*k).map(String::as_str) == Some(*v))
    };
    let added = poll(Duration::from_secs(30), || {
        let requests = receiver.metrics();
        let mut n = 0u64;
        let mut total = 0.0;
        let mut per_bucket: Vec<u64> = Vec::new();
        let mut bounds: Vec<f64> = Vec::new();
        for req in &requests {
            let Some(m) = metrics_by_name(req).get(metric).copied() else {
                continue;
            };
            let Some(metric::Data::Histogram(h)) = &m.data else {
                panic!("{metric} pushed as {:?}", m.data);
            };
            assert_eq!(
                h.aggregation_temporality,
                AggregationTemporality::Delta as i32,
                "delta temporality"
            );
            for p in h.data_points.iter().filter(|p| mine(p)) {
                n += p.count;
                total += p.sum.unwrap_or(0.0);
                bounds = p.explicit_bounds.clone();
                per_bucket.resize(p.bucket_counts.len(), 0);
                for (i, c) in p.bucket_counts.iter().enumerate() {
                    per_bucket[i] += c;
                }
            }
        }
        (n == count).then_some((total, bounds, per_bucket))
    });
    let (total, bounds, per_bucket) =
        added.unwrap_or_else(|| panic!("pushes never added up to {count} connects"));
    assert!(
        (total - sum).abs() < 1e-9,
        "pushed sum {total}, scraped {sum}"
    );
    let scraped_bounds: Vec<f64> = buckets
        .iter()
        .map(|b| b.0)
        .filter(|b| b.is_finite())
        .collect();
    assert_eq!(bounds, scraped_bounds, "same bucket bounds");
    let mut cumulative = 0;
    let pushed: Vec<u64> = per_bucket
        .iter()
        .map(|c| {
            cumulative += c;
            cumulative
        })
        .collect();
    let scraped: Vec<u64> = buckets.iter().map(|b| b.1).collect();
    assert_eq!(pushed, scraped, "cumulative buckets, pushed and scraped");

    // The port is `server.port` over OTLP (semantic conventions), `port` in the scrape.
    let last = receiver.metrics();
    let conns = last
        .iter()
        .rev()
        .find_map(|r| {
            metrics_by_name(r)
                .get("netexporter_peer_connections_total")
                .copied()
        })
        .expect("connections pushed");
    let ours: Vec<BTreeMap<String, String>> = points(conns)
        .iter()
        .map(|p| attrs(&p.attributes))
        .filter(|a| {
            a.get("netns") == Some(&ns.name) && a.get("role").map(String::as_str) == Some("client")
        })
        .collect();
    assert!(
        !ours.is_empty(),
        "no client connections of {} pushed",
        ns.name
    );
    for a in &ours {
        assert_eq!(
            a.get("server.port").map(String::as_str),
            Some("7301"),
            "{a:?}"
        );
        assert!(!a.contains_key("port"), "{a:?}");
    }
    assert_eq!(
        scrape
            .find(
                "netexporter_peer_connections_total",
                &[("netns", &ns.name), ("port", "7301"), ("role", "client")]
            )
            .len(),
        1
    );
}
