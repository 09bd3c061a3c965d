//! Events: problems found by the checks, with noise control, to every configured sink —
//! stdout (one JSON object per line, the spec's exact shape) and OpenTelemetry log records
//! (OTLP to a collector, or Grafana Loki's OTLP endpoint).

pub mod otlp;
pub mod runner;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::checks::Problem;
use crate::component::SectionError;
use crate::telemetry::export::{OtlpProtocol, check_endpoint};
use crate::telemetry::otlp::{OtlpConfig, positive};

/// `events:` in the configuration file: where events go.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsOptions {
    /// Any of `stdout` (one JSON object per line), `otlp` (OpenTelemetry log records),
    /// `loki` (Grafana Loki's OTLP endpoint).
    pub sinks: Vec<SinkName>,
    /// The OTLP logs endpoint [default: the metrics' OTLP endpoint].
    pub otlp_endpoint: Option<String>,
    /// Its protocol [default: the metrics' OTLP protocol].
    pub otlp_protocol: Option<OtlpProtocol>,
    /// Grafana Loki's base URL (`http://loki:3100`); `/otlp/v1/logs` is appended.
    pub loki_endpoint: Option<String>,
    /// Records an OTLP or Loki sink holds while its endpoint is slow or down; past it new
    /// records are dropped and counted.
    pub queue_size: usize,
    /// How long one export may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::component::DurationText")]
    pub export_timeout: Duration,
}

impl Default for EventsOptions {
    fn default() -> Self {
        let export = EventExport::default();
        Self {
            sinks: vec![SinkName::Stdout],
            otlp_endpoint: None,
            otlp_protocol: None,
            loki_endpoint: None,
            queue_size: export.queue_size,
            export_timeout: export.timeout,
        }
    }
}

#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkName {
    Stdout,
    Otlp,
    Loki,
}

/// How the OTLP and Loki event sinks buffer and give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventExport {
    pub queue_size: usize,
    pub timeout: Duration,
}

impl Default for EventExport {
    fn default() -> Self {
        Self {
            queue_size: 2048,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A sink, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSink {
    Stdout,
    Otlp {
        endpoint: String,
        protocol: OtlpProtocol,
    },
    Loki {
        endpoint: String,
    },
}

impl EventsOptions {
    /// The sinks and their limits; the `otlp` sink defaults to the metrics' endpoint.
    pub fn resolve(
        &self,
        metrics_otlp: Option<&OtlpConfig>,
    ) -> Result<(Vec<EventSink>, EventExport), SectionError> {
        for (field, url) in [
            ("events.otlp_endpoint", &self.otlp_endpoint),
            ("events.loki_endpoint", &self.loki_endpoint),
        ] {
            if let Some(u) = url {
                check_endpoint(field, u)?;
            }
        }
        let mut sinks = Vec::new();
        for name in &self.sinks {
            sinks.push(match name {
                SinkName::Stdout => EventSink::Stdout,
                SinkName::Otlp => EventSink::Otlp {
                    endpoint: self
                        .otlp_endpoint
                        .clone()
                        .or_else(|| metrics_otlp.map(|o| o.endpoint.clone()))
                        .ok_or_else(|| {
                            SectionError::new(
                                "events.otlp_endpoint",
                                "the otlp sink needs an endpoint (or an OTLP endpoint for metrics)",
                            )
                        })?,
                    protocol: self.otlp_protocol.unwrap_or_else(|| {
                        metrics_otlp.map_or(OtlpProtocol::HttpProtobuf, |o| o.protocol)
                    }),
                },
                SinkName::Loki => EventSink::Loki {
                    endpoint: self.loki_endpoint.clone().ok_or_else(|| {
                        SectionError::new(
                            "events.loki_endpoint",
                            "the loki sink needs loki_endpoint",
                        )
                    })?,
                },
            });
        }
        let queue_size = match self.queue_size {
            0 => {
                return Err(SectionError::new(
                    "events.queue_size",
                    "must be greater than zero",
                ));
            }
            n if n > 1 << 20 => {
                return Err(SectionError::new(
                    "events.queue_size",
                    format!("{n} records is more than the 1048576 allowed"),
                ));
            }
            n => n,
        };
        let timeout = positive("events.export_timeout", Some(self.export_timeout))?
            .unwrap_or(self.export_timeout);
        Ok((
            sinks,
            EventExport {
                queue_size,
                timeout,
            },
        ))
    }
}

/// One event as it leaves the agent.
#[derive(Clone, Debug)]
pub struct Event {
    /// Nanoseconds since the epoch.
    pub timestamp: u128,
    pub kind: &'static str,
    pub msg: String,
    /// The spec's probe the check belongs to (`KernelParam`, `nodeconfig`, ...).
    pub probe: &'static str,
    pub object: Vec<(&'static str, String)>,
}

impl Event {
    pub fn new(probe: &'static str, p: Problem) -> Self {
        Self {
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            kind: p.kind,
            msg: p.msg,
            probe,
            object: p.object,
        }
    }

    /// `{"timestamp":<ns>,"type":"<type>","msg":"<msg>"}`, exactly these keys in this order.
    pub fn json_line(&self) -> String {
        format!(
            "{{\"timestamp\":{},\"type\":{},\"msg\":{}}}",
            self.timestamp,
            serde_json::Value::from(self.kind),
            serde_json::Value::from(self.msg.as_str())
        )
    }
}

/// Where events go.
pub trait Sink: Send + Sync {
    fn send(&self, event: &Event);
    /// Flushes what is queued (at shutdown).
    fn shutdown(&self) {}
}

/// One JSON object per line on stdout.
pub struct Stdout;

impl Sink for Stdout {
    fn send(&self, event: &Event) {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not stop the checks.
        let _ = writeln!(out, "{}", event.json_line());
        let _ = out.flush();
    }
}

/// A persisting problem is repeated at most every `repeat`; a new or changed one goes out at
/// once; one that went away and comes back is new again.
pub struct NoiseControl {
    repeat: Duration,
    /// (check, type, object) -> (last message, when it was last emitted)
    seen: HashMap<String, (String, Instant)>,
}

impl NoiseControl {
    pub fn new(repeat: Duration) -> Self {
        Self {
            repeat,
            seen: HashMap::new(),
        }
    }

    /// One problem of a continuous source: emitted when new, changed or due again; nothing is
    /// forgotten (such a source never says a problem went away).
    pub fn filter_one(&mut self, check: &str, p: Problem, now: Instant) -> Option<Problem> {
        self.admit(key(check, &p), p, now)
    }

    /// The problems of one run of `check` that are to be emitted now; the problems of this
    /// check that are gone are forgotten.
    pub fn filter(&mut self, check: &str, problems: Vec<Problem>, now: Instant) -> Vec<Problem> {
        let mut current = std::collections::HashSet::new();
        let out = problems
            .into_iter()
            .filter_map(|p| {
                let k = key(check, &p);
                current.insert(k.clone());
                self.admit(k, p, now)
            })
            .collect();
        let prefix = format!("{check}\u{1f}");
        self.seen
            .retain(|k, _| !k.starts_with(&prefix) || current.contains(k));
        out
    }

    /// Forgets every problem of `check` (it stopped applying: what it found is no more).
    pub fn forget(&mut self, check: &str) {
        let prefix = format!("{check}\u{1f}");
        self.seen.retain(|k, _| !k.starts_with(&prefix));
    }

    /// How many problems are remembered.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// `p` if it is new, changed or due again under `key`.
    fn admit(&mut self, key: String, p: Problem, now: Instant) -> Option<Problem> {
        let emit = match self.seen.get(&key) {
            Some((msg, at)) => *msg != p.msg || now.duration_since(*at) >= self.repeat,
            None => true,
        };
        if emit {
            self.seen.insert(key, (p.msg.clone(), now));
            return Some(p);
        }
        None
    }
}

/// What noise control tells problems apart by: check, type and object.
fn key(check: &str, p: &Problem) -> String {
    format!("{check}\u{1f}{}\u{1f}{:?}", p.kind, p.object)
}

/// The events side of the agent: noise control, counting, sinks.
pub struct Events {
    sinks: Vec<Box<dyn Sink>>,
    pub(crate) noise: Mutex<NoiseControl>,
    /// Emitted events by type, for `netexporter_events{type}`.
    pub counts: Mutex<BTreeMap<&'static str, u64>>,
    /// Last run of each check: (succeeded, problems found), for `netexporter_check_*`.
    pub checks: Mutex<BTreeMap<&'static str, (bool, u64)>>,
    /// Whether each check applies on this node, and why not, for
    /// `netexporter_check_available`.
    available: Mutex<BTreeMap<&'static str, Option<String>>>,
}

impl crate::telemetry::EventStats for Events {
    fn emitted(&self) -> Vec<(&'static str, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(k, n)| (*k, *n)).collect()
    }

    fn checks(&self) -> Vec<(&'static str, bool, u64)> {
        let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        checks.iter().map(|(c, (ok, n))| (*c, *ok, *n)).collect()
    }

    fn check_availability(&self) -> Vec<(&'static str, Option<String>)> {
        let available = self.available.lock().unwrap_or_else(|p| p.into_inner());
        available.iter().map(|(c, why)| (*c, why.clone())).collect()
    }
}

impl Events {
    pub fn new(sinks: Vec<Box<dyn Sink>>, repeat: Duration) -> Self {
        Self {
            sinks,
            noise: Mutex::new(NoiseControl::new(repeat)),
            counts: Mutex::new(BTreeMap::new()),
            checks: Mutex::new(BTreeMap::new()),
            available: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records whether `check` applies on this node (`why` not, if it does not). A check that
    /// stops applying has no `netexporter_check_*` results any more, and its problems (which
    /// may name Pods, namespaces, interfaces) are forgotten.
    pub fn availability(&self, check: &'static str, why: Option<String>) {
        if why.is_some() {
            self.checks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(check);
            self.noise
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forget(check);
        }
        self.available
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(check, why);
    }

    /// Records one run of a check and emits what noise control lets through.
    pub fn report(
        &self,
        check: &'static str,
        probe: &'static str,
        result: anyhow::Result<Vec<Problem>>,
    ) {
        let problems = match result {
            Ok(p) => p,
            Err(e) => {
                let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
                if checks.get(check).is_none_or(|(ok, _)| *ok) {
                    tracing::warn!(check, error = %format!("{e:#}"), "check could not run");
                }
                checks.insert(check, (false, 0));
                return;
            }
        };
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(check, (true, problems.len() as u64));
        let now = Instant::now();
        let emit = self
            .noise
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .filter(check, problems, now);
        for p in emit {
            self.emit(Event::new(probe, p));
        }
    }

    /// Flushes every sink (at shutdown).
    pub fn shutdown(&self) {
        for s in &self.sinks {
            s.shutdown();
        }
    }

    /// Emits one event to every sink, counted (no noise control: for kernel log lines, which
    /// are each an event).
    pub fn emit(&self, event: Event) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(event.kind)
            .or_default() += 1;
        for s in &self.sinks {
            s.send(&event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: &'static str, msg: &str) -> Problem {
        Problem {
            kind,
            msg: msg.into(),
            object: vec![("sysctl", "x".into())],
        }
    }

    #[test]
    fn json_line_shape() {
        let e = Event {
            timestamp: 1741163909810866660,
            kind: "RPFilterKernelParam",
            msg: "net.ipv4.conf.cali1.rp_filter:current_value=1,expect_value=0".into(),
            probe: "KernelParam",
            object: vec![],
        };
        assert_eq!(
            e.json_line(),
            r#"{"timestamp":1741163909810866660,"type":"RPFilterKernelParam","msg":"net.ipv4.conf.cali1.rp_filter:current_value=1,expect_value=0"}"#
        );
        let e = Event {
            msg: "a \"quoted\"\nline".into(),
            ..e
        };
        let v: serde_json::Value = serde_json::from_str(&e.json_line()).unwrap();
        assert_eq!(v["msg"], "a \"quoted\"\nline");
    }

    #[test]
    fn noise_control() {
        let mut n = NoiseControl::new(Duration::from_secs(600));
        let t0 = Instant::now();
        assert_eq!(
            n.filter("c", vec![p("A", "1")], t0).len(),
            1,
            "new: at once"
        );
        assert_eq!(
            n.filter("c", vec![p("A", "1")], t0 + Duration::from_secs(60))
                .len(),
            0,
            "persisting: quiet"
        );
        assert_eq!(
            n.filter("c", vec![p("A", "2")], t0 + Duration::from_secs(61))
                .len(),
            1,
            "changed: at once"
        );
        assert_eq!(
            n.filter("c", vec![p("A", "2")], t0 + Duration::from_secs(662))
                .len(),
            1,
            "repeat interval passed"
        );
        assert_eq!(
            n.filter("c", vec![], t0 + Duration::from_secs(700)).len(),
            0,
            "gone"
        );
        assert_eq!(
            n.filter("c", vec![p("A", "2")], t0 + Duration::from_secs(701))
                .len(),
            1,
            "back: new again"
        );
        assert_eq!(
            n.filter("d", vec![], t0 + Duration::from_secs(702)).len(),
            0
        );
        assert_eq!(
            n.filter("c", vec![p("A", "2")], t0 + Duration::from_secs(703))
                .len(),
            0,
            "other check's run forgets nothing of c"
        );
    }

    /// Noise-control memory follows what the checks find: a check's problems that went away,
    /// and every problem of a check that stopped applying, are forgotten.
    #[test]
    fn noise_memory_follows_churn() {
        let events = Events::new(Vec::new(), Duration::from_secs(600));
        let pods = |n: usize| -> Vec<Problem> {
            (0..n)
                .map(|i| Problem {
                    object: vec![("k8s.pod.name", format!("web-{i}"))],
                    ..p("A", "no default route")
                })
                .collect()
        };
        let remembered = || events.noise.lock().unwrap().remembered();
        events.report("c", "p", Ok(pods(300)));
        events.report("d", "p", Ok(pods(5)));
        assert_eq!(remembered(), 305);
        events.report("c", "p", Ok(pods(10)));
        assert_eq!(remembered(), 15);
        // An error forgets nothing: a transient failure must not re-announce old problems.
        events.report("c", "p", Err(anyhow::anyhow!("API away")));
        assert_eq!(remembered(), 15);
        events.availability("c", Some("standalone".into()));
        assert_eq!(remembered(), 5);
    }
}
