//! The Prometheus text exposition format: the probes' metrics written straight from the
//! collection's snapshot ([`probe_families`]), the agent's own from a collected
//! `ResourceMetrics`.
//!
//! Hand-written rather than `opentelemetry-prometheus` because the spec's names must come out
//! exactly as recorded: that crate appends `_total` and unit suffixes and adds `otel_scope_*`
//! labels unless each is switched off, pulls in the `prometheus` crate, and measured ~3x slower
//! per collect on this workload (see docs/architecture.md). The format itself is small.
//! Output is sorted by metric name and then by label set, so it is stable for tests.

use std::borrow::Cow;
use std::fmt::Write;
use std::ops::Range;

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};

use crate::collector::{ObservedSeries, Snapshot};
use crate::probes::{self, Histogram, Kind, SEMCONV_LABELS};

/// A data point's value, kept a number until it is written: a string per line would be one
/// allocation more for each of tens of thousands of lines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sample {
    U64(u64),
    I64(i64),
    F64(f64),
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Sample::U64(v) => write!(f, "{v}"),
            Sample::I64(v) => write!(f, "{v}"),
            Sample::F64(v) if v.is_nan() => f.write_str("NaN"),
            Sample::F64(v) if v.is_infinite() => f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
            Sample::F64(v) => write!(f, "{v}"),
        }
    }
}

/// Renders every gauge and sum of `rm`, and the probes' `families`, sorted by name.
/// `capacity`: the text's expected size (the last one's), so that it is not grown by copying.
pub fn encode(rm: &ResourceMetrics, families: &ProbeFamilies, capacity: usize) -> String {
    let mut metrics: Vec<&Metric> = rm.scope_metrics().flat_map(|s| s.metrics()).collect();
    metrics.sort_by(|a, b| a.name().cmp(b.name()));
    let mut probe_metrics = families.order.iter().peekable();
    let mut out = String::with_capacity(capacity.max(64 * 1024));
    let mut lines: Vec<(String, Sample)> = Vec::new();
    for m in metrics {
        while let Some(f) = probe_metrics.next_if(|f| f.0 < m.name()) {
            families.write(&mut out, *f);
        }
        lines.clear();
        let kind = match m.data() {
            AggregatedMetrics::U64(d) => points(d, &mut lines),
            AggregatedMetrics::I64(d) => points(d, &mut lines),
            AggregatedMetrics::F64(d) => points(d, &mut lines),
        };
        let Some(kind) = kind else { continue };
        lines.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        write_family(&mut out, m.name(), m.description(), kind, &lines);
    }
    for f in probe_metrics {
        families.write(&mut out, *f);
    }
    out
}

/// The probes' series of one snapshot, ready to be written metric by metric. Written straight
/// from the snapshot rather than through the OpenTelemetry SDK, which the OTLP push alone
/// uses: the SDK's observable instruments cost ~10 us a series here (a hashed, sorted
/// attribute set per observation, a map rebuilt at every collect: docs/architecture.md) and
/// cap each instrument's series (past the cap it folds them into one
/// `otel_metric_overflow` series: 100 namespaces with 40 peers each passed it).
///
/// A probe's series are sorted by their labels once for all its metrics, and each line is
/// written into the exposition where it belongs: no string per line (at 100 namespaces with
/// 50 peers each, ~38,000 lines, most of them a histogram's buckets).
pub struct ProbeFamilies<'a> {
    /// Every series' labels rendered (`name="value",...`, without braces), one after another:
    /// one string for all of them.
    text: String,
    /// Per probe, indexed like [`probes::PROBES`]: its series, sorted by their labels.
    sorted: Vec<Vec<Labelled<'a>>>,
    /// Per probe and metric: where in `sorted` the series with a value of it are, in order
    /// (a metric's lines without a pass over every series of its probe: the peers' have 14
    /// metrics and ~30,000 series at 100 namespaces, each series with one).
    members: Vec<Vec<Vec<usize>>>,
    /// `(name, probe, metric)` of every metric with series, by name.
    order: Vec<(&'static str, usize, usize)>,
}

struct Labelled<'a> {
    series: &'a ObservedSeries,
    /// Its labels in `text`: those that sort before `le` (`head`), then those after (`tail`),
    /// with a comma between when there are both (`head.start..tail.end` is the whole set).
    head: Range<usize>,
    tail: Range<usize>,
}

impl ProbeFamilies<'_> {
    fn labels(&self, s: &Labelled) -> &str {
        self.text.get(s.head.start..s.tail.end).unwrap_or_default()
    }
}

/// Every metric of the enabled probes in `snapshot`, sorted by name.
pub fn probe_families(snapshot: &Snapshot) -> ProbeFamilies<'_> {
    let mut text = String::new();
    let mut sorted = Vec::with_capacity(snapshot.series.len());
    let mut pairs = Vec::new();
    for list in &snapshot.series {
        let mut labelled = Vec::with_capacity(list.len());
        for series in list {
            let own = series
                .labels
                .iter()
                .map(|(k, v)| (*k, Cow::Borrowed(v.as_str())));
            label_pairs_into(series.base.iter().map(attribute).chain(own), &mut pairs);
            let at = pairs.partition_point(|(label, _)| *label < "le");
            let start = text.len();
            render_pairs(&mut text, &pairs[..at]);
            let head = start..text.len();
            if at > 0 && at < pairs.len() {
                text.push(',');
            }
            let tail_start = text.len();
            render_pairs(&mut text, &pairs[at..]);
            labelled.push(Labelled {
                series,
                head,
                tail: tail_start..text.len(),
            });
        }
        sorted.push(labelled);
    }
    let mut families = ProbeFamilies {
        text,
        sorted: Vec::new(),
        members: Vec::with_capacity(sorted.len()),
        order: Vec::new(),
    };
    for (p, list) in sorted.iter_mut().enumerate() {
        // Stable: two series with one label set (a bug, see `duplicate`) keep their order.
        list.sort_by(|a, b| families.labels(a).cmp(families.labels(b)));
        let metrics = probes::PROBES.get(p).map_or(&[][..], |probe| probe.metrics);
        let mut members = vec![Vec::new(); metrics.len()];
        for (i, s) in list.iter().enumerate() {
            let values = s.series.values.iter().enumerate();
            let with_value = values.filter_map(|(m, v)| v.map(|_| m));
            for m in with_value.chain(s.series.histograms.iter().map(|(m, _)| *m)) {
                if let Some(of) = members.get_mut(m)
                    && of.last() != Some(&i)
                {
                    of.push(i);
                }
            }
        }
        let with_series = members.iter().enumerate().filter(|(_, of)| !of.is_empty());
        families
            .order
            .extend(with_series.map(|(m, _)| (metrics[m].name, p, m)));
        families.members.push(members);
    }
    families.sorted = sorted;
    families.order.sort_by(|a, b| a.0.cmp(b.0));
    families
}

impl ProbeFamilies<'_> {
    /// Writes metric `m` of probe `p`: nothing when no series has a value of it.
    fn write(&self, out: &mut String, (name, p, m): (&'static str, usize, usize)) {
        let (Some(def), Some(list)) = (
            probes::PROBES.get(p).and_then(|probe| probe.metrics.get(m)),
            self.sorted.get(p),
        ) else {
            return;
        };
        let start = out.len();
        let kind = match def.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        write_header(out, name, def.help, kind);
        let body = out.len();
        let mut previous = None;
        let mut les: Option<(&[f64], Vec<String>)> = None;
        let members = self.members.get(p).and_then(|of| of.get(m));
        for s in members.into_iter().flatten().filter_map(|i| list.get(*i)) {
            let value = s.series.values.get(m).copied().flatten();
            let histogram = s
                .series
                .histograms
                .iter()
                .find_map(|(i, h)| (*i == m).then_some(h));
            if value.is_none() && histogram.is_none() {
                continue;
            }
            let labels = self.labels(s);
            if previous == Some(labels) {
                duplicate(name, labels);
                continue;
            }
            previous = Some(labels);
            if let Some(v) = value {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    out.push_str(labels);
                    out.push('}');
                }
                let _ = writeln!(out, " {v}");
            }
            if let Some(h) = histogram {
                // A metric's series share its bounds: rendered once.
                let rendered = match &les {
                    Some((bounds, rendered)) if *bounds == h.bounds => rendered,
                    _ => &les.insert((h.bounds, render_bounds(h.bounds))).1,
                };
                let part = |r: &Range<usize>| self.text.get(r.clone()).unwrap_or_default();
                write_histogram(out, name, (part(&s.head), part(&s.tail)), h, rendered);
            }
        }
        if out.len() == body {
            out.truncate(start);
        }
    }
}

/// Two series with one label set would make the exposition invalid: the first is kept, and
/// since no probe makes them, the second is a bug to report, not a series to lose quietly.
fn duplicate(family: &str, labels: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            family,
            labels,
            "two series with one label set: kept the first (a bug; this is said once)"
        );
    });
}

fn write_header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn write_family(out: &mut String, name: &str, help: &str, kind: &str, lines: &[(String, Sample)]) {
    if lines.is_empty() {
        return;
    }
    write_header(out, name, help, kind);
    for (labels, value) in lines {
        out.push_str(name);
        out.push_str(labels);
        let _ = writeln!(out, " {value}");
    }
}

/// The lines of one histogram series: a cumulative `_bucket` per bound and `+Inf` (in that
/// order, as the format wants them), `_sum`, `_count`. `les`: the bounds as rendered;
/// `head`, `tail`: the series' labels rendered, those that sort before `le` and after.
fn write_histogram(
    out: &mut String,
    name: &str,
    (head, tail): (&str, &str),
    h: &Histogram,
    les: &[String],
) {
    let line = |out: &mut String, suffix: &str, le: Option<&str>, value: Sample| {
        out.push_str(name);
        out.push_str(suffix);
        let mut separator = '{';
        if !head.is_empty() {
            out.push(separator);
            out.push_str(head);
            separator = ',';
        }
        if let Some(le) = le {
            out.push(separator);
            out.push_str("le=\"");
            out.push_str(le);
            out.push('"');
            separator = ',';
        }
        if !tail.is_empty() {
            out.push(separator);
            out.push_str(tail);
            separator = ',';
        }
        if separator == ',' {
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    };
    let mut cumulative = 0u64;
    for (i, n) in h.counts.iter().enumerate() {
        cumulative += n;
        let le = les.get(i).map_or("+Inf", String::as_str);
        line(out, "_bucket", Some(le), Sample::U64(cumulative));
    }
    line(out, "_sum", None, Sample::F64(h.sum));
    line(out, "_count", None, Sample::U64(cumulative));
}

/// The rendered bounds of a histogram, as `le` values.
fn render_bounds(bounds: &[f64]) -> Vec<String> {
    bounds.iter().map(|b| Sample::F64(*b).to_string()).collect()
}

trait PromValue: Copy {
    fn sample(self) -> Sample;
}

impl PromValue for u64 {
    fn sample(self) -> Sample {
        Sample::U64(self)
    }
}

impl PromValue for i64 {
    fn sample(self) -> Sample {
        Sample::I64(self)
    }
}

impl PromValue for f64 {
    fn sample(self) -> Sample {
        Sample::F64(self)
    }
}

/// Appends `(labels, value)` per data point; returns the Prometheus type, or `None` for data
/// this agent never records (histograms).
fn points<T: PromValue>(
    d: &MetricData<T>,
    out: &mut Vec<(String, Sample)>,
) -> Option<&'static str> {
    match d {
        MetricData::Gauge(g) => {
            out.extend(
                g.data_points()
                    .map(|p| (labels(p.attributes()), p.value().sample())),
            );
            Some("gauge")
        }
        MetricData::Sum(s) => {
            out.extend(
                s.data_points()
                    .map(|p| (labels(p.attributes()), p.value().sample())),
            );
            Some(if s.is_monotonic() { "counter" } else { "gauge" })
        }
        MetricData::Histogram(_) | MetricData::ExponentialHistogram(_) => None,
    }
}

/// Labels sorted by name, so that a series renders the same whatever order the SDK kept.
fn labels<'a>(attrs: impl Iterator<Item = &'a KeyValue>) -> String {
    let mut s = String::with_capacity(128);
    push_labels(&mut s, &label_pairs(attrs));
    s
}

/// An attribute as (name, text).
fn attribute(kv: &KeyValue) -> (&str, Cow<'_, str>) {
    (kv.key.as_str(), kv.value.as_str())
}

/// The attributes that are labels, by their label name (semantic-convention attributes renamed
/// to the contract's labels, the rest as they are), sorted by it.
fn label_pairs<'a>(attrs: impl Iterator<Item = &'a KeyValue>) -> Vec<(&'a str, Cow<'a, str>)> {
    let mut pairs = Vec::new();
    label_pairs_into(attrs.map(attribute), &mut pairs);
    pairs
}

/// The same from (name, text) pairs into `pairs` (cleared first), whose allocation is reused.
fn label_pairs_into<'a>(
    attrs: impl Iterator<Item = (&'a str, Cow<'a, str>)>,
    pairs: &mut Vec<(&'a str, Cow<'a, str>)>,
) {
    pairs.clear();
    pairs.extend(attrs.filter_map(|(key, text)| {
        match SEMCONV_LABELS.iter().find(|(otel, _)| *otel == key) {
            Some((_, Some(label))) => Some((*label, text)),
            Some((_, None)) => None,
            None => Some((key, text)),
        }
    }));
    pairs.sort_by(|a, b| a.0.cmp(b.0));
}

/// Appends the label set with its braces (nothing when it is empty).
fn push_labels(s: &mut String, pairs: &[(&str, Cow<str>)]) {
    if pairs.is_empty() {
        return;
    }
    s.push('{');
    render_pairs(s, pairs);
    s.push('}');
}

/// Appends `name="value",...`, without braces.
fn render_pairs(s: &mut String, pairs: &[(&str, Cow<str>)]) {
    for (i, (name, text)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_label_name(s, name);
        s.push_str("=\"");
        escape_label_value(s, text);
        s.push('"');
    }
}

/// Label names allow `[a-zA-Z_][a-zA-Z0-9_]*`; anything else becomes `_`.
fn push_label_name(s: &mut String, name: &str) {
    let valid =
        |i: usize, b: u8| b.is_ascii_alphabetic() || b == b'_' || (i > 0 && b.is_ascii_digit());
    if !name.is_empty() && name.bytes().enumerate().all(|(i, b)| valid(i, b)) {
        s.push_str(name);
        return;
    }
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
        s.push(if ok { c } else { '_' });
    }
}

fn escape_label_value(s: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        s.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
}

fn escape_help(h: &str) -> String {
    h.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_escaping() {
        let kv = [
            KeyValue::new("a.b", "x\"y\\z\nw"),
            KeyValue::new("9n", 5i64),
        ];
        assert_eq!(labels(kv.iter()), "{_n=\"5\",a_b=\"x\\\"y\\\\z\\nw\"}");
        assert_eq!(labels([].iter()), "");
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let h = crate::probes::Histogram {
            bounds: &[0.001, 0.002],
            counts: vec![2, 0, 1],
            sum: 0.0105,
        };
        let les = render_bounds(h.bounds);
        let mut out = String::new();
        for attrs in [
            vec![KeyValue::new("peer", "a")],
            vec![],
            vec![KeyValue::new("a", "1"), KeyValue::new("z", "2")],
        ] {
            let pairs = label_pairs(attrs.iter());
            let at = pairs.partition_point(|(label, _)| *label < "le");
            let (mut head, mut tail) = (String::new(), String::new());
            render_pairs(&mut head, &pairs[..at]);
            render_pairs(&mut tail, &pairs[at..]);
            write_histogram(&mut out, "x_seconds", (&head, &tail), &h, &les);
        }
        assert_eq!(
            out,
            "x_seconds_bucket{le=\"0.001\",peer=\"a\"} 2\n\
             x_seconds_bucket{le=\"0.002\",peer=\"a\"} 2\n\
             x_seconds_bucket{le=\"+Inf\",peer=\"a\"} 3\n\
             x_seconds_sum{peer=\"a\"} 0.0105\n\
             x_seconds_count{peer=\"a\"} 3\n\
             x_seconds_bucket{le=\"0.001\"} 2\n\
             x_seconds_bucket{le=\"0.002\"} 2\n\
             x_seconds_bucket{le=\"+Inf\"} 3\n\
             x_seconds_sum 0.0105\n\
             x_seconds_count 3\n\
             x_seconds_bucket{a=\"1\",le=\"0.001\",z=\"2\"} 2\n\
             x_seconds_bucket{a=\"1\",le=\"0.002\",z=\"2\"} 2\n\
             x_seconds_bucket{a=\"1\",le=\"+Inf\",z=\"2\"} 3\n\
             x_seconds_sum{a=\"1\",z=\"2\"} 0.0105\n\
             x_seconds_count{a=\"1\",z=\"2\"} 3\n"
        );
    }

    #[test]
    fn semantic_convention_attributes_are_the_contracts_labels() {
        let kv = [
            KeyValue::new("k8s.pod.name", "web-1"),
            KeyValue::new("server.port", "5432"),
            KeyValue::new("network.peer.address", "10.0.0.7"),
            KeyValue::new("k8s.node.name", "n1"),
            KeyValue::new("peer", "10.0.0.7"),
            KeyValue::new("k8s.namespace.name", "shop"),
            KeyValue::new("network.transport", "udp"),
        ];
        assert_eq!(
            labels(kv.iter()),
            "{k8s_namespace=\"shop\",k8s_node=\"n1\",k8s_pod=\"web-1\",peer=\"10.0.0.7\",port=\"5432\",protocol=\"udp\"}"
        );
        for label in ["k8s_node", "k8s_namespace", "k8s_pod", "port", "protocol"] {
            let otel = crate::probes::attribute_name(label);
            assert_ne!(otel, label);
            let kv = [KeyValue::new(otel, "x")];
            assert_eq!(labels(kv.iter()), format!("{{{label}=\"x\"}}"));
        }
        assert_eq!(crate::probes::attribute_name("netns"), "netns");
    }

    #[test]
    fn float_rendering() {
        assert_eq!(Sample::F64(0.25).to_string(), "0.25");
        assert_eq!(Sample::F64(f64::NAN).to_string(), "NaN");
        assert_eq!(Sample::F64(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Sample::F64(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Sample::F64(3.0).to_string(), "3");
        assert_eq!(Sample::I64(-2).to_string(), "-2");
    }

    /// 5,000 series of one counter (what 100 namespaces with 50 peers each pass): every one
    /// rendered, none folded (the SDK's per-instrument cap folded them past 4,000), and one
    /// series' labels shared by all its metrics.
    #[test]
    fn probe_families_render_every_series_of_the_snapshot() {
        let (p, m) = crate::probes::PROBES
            .iter()
            .enumerate()
            .find_map(|(p, probe)| {
                let m = probe.metrics.iter().position(|d| d.kind == Kind::Counter)?;
                Some((p, m))
            })
            .unwrap();
        let def = &crate::probes::PROBES[p].metrics[m];
        let mut snapshot = Snapshot {
            series: vec![Vec::new(); crate::probes::PROBES.len()],
            ..Default::default()
        };
        for i in 0..5000u64 {
            let mut values = vec![None; crate::probes::PROBES[p].metrics.len()];
            values[m] = Some(i);
            snapshot.series[p].push(crate::collector::ObservedSeries::with_attrs(
                vec![
                    KeyValue::new("netns", format!("ns{i:04}")),
                    KeyValue::new("server.port", "80"),
                ],
                values,
                Vec::new(),
            ));
        }
        let families = probe_families(&snapshot);
        let text = encode(&ResourceMetrics::default(), &families, 0);
        assert_eq!(text.matches(&format!("\n{}{{", def.name)).count(), 5000);
        let line = |i: u64| format!("\n{}{{netns=\"ns{i:04}\",port=\"80\"}} {i}\n", def.name);
        let at = |i| text.find(&line(i)).unwrap();
        assert!(at(0) < at(7) && at(7) < at(4999), "sorted by labels");
        // A metric without values writes nothing, not even its HELP and TYPE.
        for (i, other) in crate::probes::PROBES[p].metrics.iter().enumerate() {
            let header = format!("# TYPE {} ", other.name);
            assert_eq!(text.contains(&header), i == m, "{}", other.name);
        }
        assert!(!text.contains("overflow"));
    }

    /// Histogram series in label order, a duplicate label set written once, and another
    /// probe's metric between them in name order.
    #[test]
    fn probe_families_write_histograms_in_label_order_and_a_duplicate_once() {
        let (p, m) = crate::probes::PROBES
            .iter()
            .enumerate()
            .find_map(|(p, probe)| {
                let m = probe
                    .metrics
                    .iter()
                    .position(|d| d.kind == Kind::Histogram)?;
                Some((p, m))
            })
            .unwrap();
        let metrics = crate::probes::PROBES[p].metrics;
        let def = &metrics[m];
        let mut snapshot = Snapshot {
            series: vec![Vec::new(); crate::probes::PROBES.len()],
            ..Default::default()
        };
        for (peer, count) in [("b", 2), ("a", 1), ("b", 5)] {
            let mut counts = vec![0; def.bounds.len() + 1];
            counts[0] = count;
            snapshot.series[p].push(crate::collector::ObservedSeries::with_attrs(
                vec![KeyValue::new("peer", peer)],
                vec![None; metrics.len()],
                vec![(
                    m,
                    crate::probes::Histogram {
                        bounds: def.bounds,
                        counts,
                        sum: 1.5,
                    },
                )],
            ));
        }
        let text = encode(&ResourceMetrics::default(), &probe_families(&snapshot), 0);
        let count = |peer: &str| format!("{}_count{{peer=\"{peer}\"}} ", def.name);
        assert_eq!(text.matches(&count("b")).count(), 1, "{text}");
        assert!(
            text.contains(&format!("{}2\n", count("b"))),
            "the first kept"
        );
        assert!(text.find(&count("a")) < text.find(&count("b")));
        assert_eq!(
            text.matches(&format!("# TYPE {} histogram\n", def.name))
                .count(),
            1
        );
    }
}
