//! The Prometheus text exposition format: the probes' metrics rendered straight from the
//! collection's snapshot ([`probe_families`]), the agent's own from a collected
//! `ResourceMetrics`.
//!
//! Hand-written rather than `opentelemetry-prometheus` because the spec's names must come out
//! exactly as recorded: that crate appends `_total` and unit suffixes and adds `otel_scope_*`
//! labels unless each is switched off, pulls in the `prometheus` crate, and measured ~3x slower
//! per collect on this workload (see docs/architecture.md). The format itself is small.
//! Output is sorted by metric name and then by label set, so it is stable for golden tests.

use std::fmt::Write;

use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};

use crate::collector::Snapshot;
use crate::probes::{self, Kind, SEMCONV_LABELS};

/// A metric family rendered apart from the SDK's data (the probes').
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
    /// `(labels, value)`, the name's suffix (`_bucket`, `_sum`, `_count`) in front of labels;
    /// in the order written (a histogram's buckets by increasing `le`).
    pub lines: Vec<(String, Sample)>,
}

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

/// Renders every gauge and sum of `rm`, and `families`, sorted by name.
pub fn encode(rm: &ResourceMetrics, families: Vec<Family>) -> String {
    let mut metrics: Vec<&Metric> = rm.scope_metrics().flat_map(|s| s.metrics()).collect();
    metrics.sort_by(|a, b| a.name().cmp(b.name()));
    let mut families = families.into_iter().peekable();
    let mut out = String::with_capacity(64 * 1024);
    let mut lines: Vec<(String, Sample)> = Vec::new();
    for m in metrics {
        while let Some(f) = families.next_if(|f| f.name < m.name()) {
            write_family(&mut out, f.name, f.help, f.kind, f.lines);
        }
        lines.clear();
        let kind = match m.data() {
            AggregatedMetrics::U64(d) => points(d, &mut lines),
            AggregatedMetrics::I64(d) => points(d, &mut lines),
            AggregatedMetrics::F64(d) => points(d, &mut lines),
        };
        let Some(kind) = kind else { continue };
        lines.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        write_family(
            &mut out,
            m.name(),
            m.description(),
            kind,
            std::mem::take(&mut lines),
        );
    }
    for f in families {
        write_family(&mut out, f.name, f.help, f.kind, f.lines);
    }
    out
}

/// Every metric of the enabled probes in `snapshot`, as families sorted by name. Rendered
/// straight from the snapshot rather than through the OpenTelemetry SDK, which the OTLP push
/// alone uses: the SDK's observable instruments cost ~10 us a series here (a hashed, sorted
/// attribute set per observation, a map rebuilt at every collect: docs/architecture.md) and
/// cap each instrument's series (past the cap it folds them into one
/// `otel_metric_overflow` series: 100 namespaces with 40 peers each passed it). Each series'
/// labels are rendered once for all its metrics.
pub fn probe_families(snapshot: &Snapshot) -> Vec<Family> {
    let mut out = Vec::new();
    for (p, list) in snapshot.series.iter().enumerate() {
        let Some(probe) = probes::PROBES.get(p) else {
            continue;
        };
        // Most series have one value (the peers' all do): its labels move into its line,
        // and only a series with several values has them copied.
        let mut rendered: Vec<Option<String>> = list
            .iter()
            .map(|s| {
                s.values
                    .iter()
                    .any(Option::is_some)
                    .then(|| labels(s.attrs.iter()))
            })
            .collect();
        let last: Vec<Option<usize>> = list
            .iter()
            .map(|s| s.values.iter().rposition(Option::is_some))
            .collect();
        for (m, def) in probe.metrics.iter().enumerate() {
            let mut lines = Vec::new();
            let kind = match def.kind {
                Kind::Counter | Kind::Gauge => {
                    for ((s, l), last) in list.iter().zip(&mut rendered).zip(&last) {
                        let Some(Some(v)) = s.values.get(m) else {
                            continue;
                        };
                        let l = if *last == Some(m) {
                            l.take()
                        } else {
                            l.clone()
                        };
                        if let Some(l) = l {
                            lines.push((l, Sample::U64(*v)));
                        }
                    }
                    lines.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    drop_duplicates(def.name, &mut lines);
                    if def.kind == Kind::Counter {
                        "counter"
                    } else {
                        "gauge"
                    }
                }
                Kind::Histogram => {
                    super::histograms::lines(list, m, &mut lines);
                    "histogram"
                }
            };
            out.push(Family {
                name: def.name,
                help: def.help,
                kind,
                lines,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(b.name));
    out
}

/// Keeps one of several series with one label set (two would make the exposition invalid),
/// and says so: no probe makes them, so one is a bug to report, not a series to lose quietly.
fn drop_duplicates(family: &str, lines: &mut Vec<(String, Sample)>) {
    let before = lines.len();
    let mut first_duplicate = None;
    lines.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same && first_duplicate.is_none() {
            first_duplicate = Some(later.0.clone());
        }
        same
    });
    if let Some(labels) = first_duplicate {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                family,
                labels = %labels,
                dropped = before - lines.len(),
                "two series with one label set: kept one (a bug; this is said once)"
            );
        });
    }
}

fn write_family(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    lines: Vec<(String, Sample)>,
) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in &lines {
        out.push_str(name);
        out.push_str(labels);
        let _ = writeln!(out, " {value}");
    }
}

/// The lines of one histogram: a cumulative `_bucket` per bound and `+Inf` (in that order, as
/// the format wants them), `_sum`, `_count`. `les`: the bounds as rendered (`render` of each).
/// The series' labels are rendered once, in two parts around where `le` sorts: a peer's
/// histogram is 12 lines with the same labels.
pub fn histogram_lines(
    attrs: &[KeyValue],
    h: &crate::probes::Histogram,
    les: &[String],
    out: &mut Vec<(String, Sample)>,
) {
    let pairs = label_pairs(attrs.iter());
    let at = pairs.partition_point(|(name, _)| *name < "le");
    let (mut head, mut tail) = (String::new(), String::new());
    render_pairs(&mut head, &pairs[..at]);
    render_pairs(&mut tail, &pairs[at..]);
    let line = |suffix: &str, le: Option<&str>| {
        let mut s = String::with_capacity(suffix.len() + head.len() + tail.len() + 24);
        s.push_str(suffix);
        let mut first = true;
        let mut part = |s: &mut String, text: &str| {
            s.push(if first { '{' } else { ',' });
            s.push_str(text);
            first = false;
        };
        if !head.is_empty() {
            part(&mut s, &head);
        }
        if let Some(le) = le {
            part(&mut s, "le=\"");
            s.push_str(le);
            s.push('"');
        }
        if !tail.is_empty() {
            part(&mut s, &tail);
        }
        if s.len() > suffix.len() {
            s.push('}');
        }
        s
    };
    let mut cumulative = 0u64;
    for (i, n) in h.counts.iter().enumerate() {
        cumulative += n;
        let le = les.get(i).map_or("+Inf", String::as_str);
        out.push((line("_bucket", Some(le)), Sample::U64(cumulative)));
    }
    out.push((line("_sum", None), Sample::F64(h.sum)));
    out.push((line("_count", None), Sample::U64(cumulative)));
}

/// The rendered bounds of a histogram, as `le` values.
pub fn render_bounds(bounds: &[f64]) -> Vec<String> {
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
    s.push('{');
    render_pairs(&mut s, &label_pairs(attrs));
    if s.len() == 1 {
        return String::new();
    }
    s.push('}');
    s
}

/// The attributes that are labels, by their label name (semantic-convention attributes renamed
/// to the contract's labels, the rest as they are), sorted by it.
fn label_pairs<'a>(attrs: impl Iterator<Item = &'a KeyValue>) -> Vec<(&'a str, &'a KeyValue)> {
    let mut pairs: Vec<(&str, &KeyValue)> = attrs
        .filter_map(|kv| {
            let key = kv.key.as_str();
            match SEMCONV_LABELS.iter().find(|(otel, _)| *otel == key) {
                Some((_, Some(label))) => Some((*label, kv)),
                Some((_, None)) => None,
                None => Some((key, kv)),
            }
        })
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    pairs
}

/// Appends `name="value",...`, without braces.
fn render_pairs(s: &mut String, pairs: &[(&str, &KeyValue)]) {
    for (i, (name, kv)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_label_name(s, name);
        s.push_str("=\"");
        match &kv.value {
            Value::String(v) => escape_label_value(s, v.as_str()),
            other => escape_label_value(s, &other.to_string()),
        }
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
        let mut lines = Vec::new();
        let les = render_bounds(h.bounds);
        histogram_lines(&[KeyValue::new("peer", "a")], &h, &les, &mut lines);
        histogram_lines(&[], &h, &les, &mut lines);
        histogram_lines(
            &[KeyValue::new("a", "1"), KeyValue::new("z", "2")],
            &h,
            &les,
            &mut lines,
        );
        let mut out = String::new();
        write_family(&mut out, "x_seconds", "help", "histogram", lines);
        assert_eq!(
            out,
            "# HELP x_seconds help\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{le=\"0.001\",peer=\"a\"} 2\n\
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
            snapshot.series[p].push(crate::collector::ObservedSeries {
                attrs: vec![
                    KeyValue::new("netns", format!("ns{i:04}")),
                    KeyValue::new("server.port", "80"),
                ],
                values,
                histograms: Vec::new(),
            });
        }
        let families = probe_families(&snapshot);
        let f = families.iter().find(|f| f.name == def.name).unwrap();
        assert_eq!(f.kind, "counter");
        assert_eq!(f.lines.len(), 5000);
        assert_eq!(
            f.lines[7],
            (r#"{netns="ns0007",port="80"}"#.to_string(), Sample::U64(7))
        );
        let text = encode(&ResourceMetrics::default(), families);
        assert_eq!(text.matches(&format!("\n{}{{", def.name)).count(), 5000);
        assert!(!text.contains("overflow"));
    }
}
