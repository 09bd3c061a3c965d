//! Histograms counted in the kernel (bucket counts and a sum per series, cumulative), which
//! the OpenTelemetry SDK cannot take as they are: it has no observable histogram, and its data
//! types cannot be built from outside.
//!
//! - Prometheus: rendered straight from the snapshot, exact (as every probe metric is).
//! - OTLP: replayed into synchronous histograms, which the readers keep with delta temporality
//!   (`Temporality::LowMemory`: the observable counters stay cumulative). Each push records
//!   what every series gained since the last push that arrived, as values inside the right
//!   buckets whose total is the gained sum (see [`replay`]), so buckets, count and sum arrive
//!   exact. A failed push is recorded again (with what came since) at the next one; a series
//!   gone from the snapshot is forgotten. Its cost is one `record` per value counted since the
//!   last push, and only with OTLP on.

use std::collections::HashMap;
use std::sync::Mutex;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram as OtelHistogram, Meter};

use crate::collector::Snapshot;
use crate::probes::{self, Histogram, Kind};

/// A series' identity across snapshots: its attributes, sorted.
fn key(attrs: &[KeyValue]) -> String {
    let mut parts: Vec<String> = attrs
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    parts.sort_unstable();
    parts.join("\u{1f}")
}

/// The OTLP side: one synchronous histogram per histogram metric of the enabled probes.
pub struct Replay {
    /// By (probe index, metric index).
    instruments: HashMap<(usize, usize), OtelHistogram<f64>>,
    state: Mutex<ReplayState>,
}

#[derive(Default)]
struct ReplayState {
    /// What the last push that arrived carried, per (probe, metric, series key).
    sent: HashMap<(usize, usize, String), Histogram>,
    /// What the push under way carries, committed when it arrives.
    pending: Option<HashMap<(usize, usize, String), Histogram>>,
}

impl Replay {
    /// `None` when no enabled probe has a histogram metric.
    pub fn new(meter: &Meter, enabled: &[usize]) -> Option<Self> {
        let mut instruments = HashMap::new();
        for &p in enabled {
            let Some(probe) = probes::PROBES.get(p) else {
                continue;
            };
            for (m, def) in probe.metrics.iter().enumerate() {
                if def.kind != Kind::Histogram {
                    continue;
                }
                let h = meter
                    .f64_histogram(def.name)
                    .with_description(def.help)
                    .with_unit("s")
                    .with_boundaries(def.bounds.to_vec())
                    .build();
                instruments.insert((p, m), h);
            }
        }
        (!instruments.is_empty()).then(|| Self {
            instruments,
            state: Mutex::new(ReplayState::default()),
        })
    }

    /// Records what each histogram of `snapshot` gained since the last push that arrived; the
    /// OTLP reader's next collect carries it. Call [`Replay::arrived`] with the push's outcome.
    pub fn record(&self, snapshot: &Snapshot) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = HashMap::new();
        for (p, list) in snapshot.series.iter().enumerate() {
            for s in list {
                for (m, h) in &s.histograms {
                    let Some(instrument) = self.instruments.get(&(p, *m)) else {
                        continue;
                    };
                    let attrs = s.attrs();
                    let id = (p, *m, key(&attrs));
                    let (counts, sum) = gained(state.sent.get(&id), h);
                    replay(h.bounds, &counts, sum, |v| instrument.record(v, &attrs));
                    pending.insert(id, h.clone());
                }
            }
        }
        state.pending = Some(pending);
    }

    /// The push of the last [`Replay::record`] arrived (its values are sent) or not (they
    /// are recorded again at the next).
    pub fn arrived(&self, ok: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let (true, Some(pending)) = (ok, state.pending.take()) {
            state.sent = pending;
        }
    }
}

/// What `now` counted since `before`: per bucket, and the sum. A series that went back (a
/// counter reset) counts from zero.
fn gained(before: Option<&Histogram>, now: &Histogram) -> (Vec<u64>, f64) {
    match before {
        Some(b)
            if b.counts.len() == now.counts.len()
                && b.counts.iter().zip(&now.counts).all(|(b, n)| n >= b) =>
        {
            let counts = now
                .counts
                .iter()
                .zip(&b.counts)
                .map(|(n, b)| n - b)
                .collect();
            (counts, (now.sum - b.sum).max(0.0))
        }
        _ => (now.counts.clone(), now.sum),
    }
}

/// Calls `record` once per value counted in `counts` (per bucket of `bounds`), with values
/// inside their buckets whose total is `sum` as closely as the buckets allow: every value
/// starts at its bucket's upper bound (the unbounded bucket's at twice the last bound), then
/// values are lowered toward their lower bound, or the unbounded ones raised, by what the sum
/// asks.
pub fn replay(bounds: &[f64], counts: &[u64], sum: f64, mut record: impl FnMut(f64)) {
    let last = bounds.last().copied().unwrap_or(0.0);
    let upper = |i: usize| {
        bounds
            .get(i)
            .copied()
            .unwrap_or(2.0 * last.max(f64::MIN_POSITIVE))
    };
    let start: f64 = counts
        .iter()
        .enumerate()
        .map(|(i, n)| *n as f64 * upper(i))
        .sum();
    let mut lower_by = start - sum;
    let mut raise_by = (sum - start).max(0.0);
    for (i, n) in counts.iter().enumerate() {
        let unbounded = i >= bounds.len();
        // How far a value may be lowered: to its lower bound, strictly above it (the bound
        // belongs to the bucket below), or to zero in the first bucket.
        let room = match i {
            0 => upper(0),
            _ if unbounded => (upper(i) - last) * (1.0 - 1e-9),
            _ => (upper(i) - bounds[i - 1]) * (1.0 - 1e-9),
        };
        for _ in 0..*n {
            let mut v = upper(i);
            if lower_by > 0.0 {
                let take = lower_by.min(room);
                v -= take;
                lower_by -= take;
            } else if unbounded && raise_by > 0.0 {
                v += raise_by;
                raise_by = 0.0;
            }
            record(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bounds: &[f64], counts: &[u64], sum: f64) -> Vec<f64> {
        let mut got = Vec::new();
        replay(bounds, counts, sum, |v| got.push(v));
        got
    }

    fn bucket(bounds: &[f64], v: f64) -> usize {
        bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len())
    }

    #[test]
    fn replayed_values_land_in_their_buckets_and_add_up_to_the_sum() {
        let bounds = [1.0, 2.0, 4.0];
        for (counts, sum) in [
            (vec![3u64, 0, 2, 0], 0.5 + 0.25 + 0.125 + 3.0 + 2.5),
            (vec![0, 4, 0, 0], 4.0 * 1.5),
            (vec![0, 0, 1, 2], 3.0 + 5.0 + 100.0),
            (vec![1, 1, 1, 1], 1.0 + 2.0 + 4.0 + 4.5),
            (vec![5, 0, 0, 0], 0.0),
        ] {
            let got = run(&bounds, &counts, sum);
            assert_eq!(got.len() as u64, counts.iter().sum::<u64>());
            let mut per_bucket = vec![0u64; bounds.len() + 1];
            for v in &got {
                per_bucket[bucket(&bounds, *v)] += 1;
            }
            assert_eq!(per_bucket, counts, "{got:?}");
            let total: f64 = got.iter().sum();
            assert!((total - sum).abs() < 1e-6, "{total} != {sum}: {got:?}");
        }
    }

    #[test]
    fn gains_are_differences_and_a_reset_counts_from_zero() {
        let h = |counts: Vec<u64>, sum: f64| Histogram {
            bounds: &[1.0],
            counts,
            sum,
        };
        assert_eq!(
            gained(Some(&h(vec![1, 2], 5.0)), &h(vec![3, 2], 6.0)),
            (vec![2, 0], 1.0)
        );
        assert_eq!(
            gained(Some(&h(vec![4, 2], 9.0)), &h(vec![1, 0], 0.5)),
            (vec![1, 0], 0.5)
        );
        assert_eq!(gained(None, &h(vec![1, 1], 2.5)), (vec![1, 1], 2.5));
    }
}
