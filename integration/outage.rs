//! Sinks that fail: the OTLP endpoint (metrics and logs; gRPC for one agent, HTTP/protobuf for
//! another) and the Loki endpoint go through four phases on the same ports: up, down (nothing
//! listens), a black hole (connections accepted, never answered), up again. Through all of it
//! each agent is scraped every second and its checks emit an event every second.
//!
//! What must hold: every scrape succeeds and never waits for an export; events keep reaching
//! stdout; failures are counted per exporter and signal; each outage is logged once when it
//! starts and once when it ends; export resumes by itself; every event either reached a
//! receiver or was counted as lost; memory, descriptors and threads stay bounded.
//!
//! Each outage phase lasts `NETEXPORTER_OUTAGE_SECS` seconds (default 25); `make outage` runs
//! it with the five minutes of the issue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::events_export::{ConfigFile, KIND, events_yaml, logs_failures};
use crate::harness::*;
use crate::otlp_receiver::{GRPC_LOGS_PATH, OtlpReceiver, Protocol, log_record_count};

/// How long one export may hang before the agent gives up on it (metrics and logs).
const EXPORT_TIMEOUT_SECS: u64 = 4;
/// What an event sink holds at most while its endpoint does not answer: small, so that the
/// black hole overflows it and the dropped records must be counted.
const QUEUE: usize = 4;
/// A scrape slower than this waited for something it must not wait for (an export hangs
/// for `EXPORT_TIMEOUT_SECS`); a scrape here normally takes milliseconds.
const SCRAPE_LIMIT: Duration = Duration::from_secs(3);
/// How far the agent's RSS may rise above its level before the outage (KiB). The bound the
/// design gives: no metrics request is kept (each push sends fresh cumulative values), each
/// log sink holds at most `events.queue_size` records, a hung export is dropped after its
/// timeout.
const RSS_SLACK_KIB: u64 = 8 * 1024;

fn phase() -> Duration {
    let secs = std::env::var("NETEXPORTER_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    Duration::from_secs(secs)
}

/// One endpoint port that is, in turn, a receiver, nothing, a black hole, a receiver.
struct Endpoint {
    port: u16,
    protocol: Protocol,
    now: Option<OtlpReceiver>,
    /// Log records (at `path`) that reached an earlier receiver of this port.
    earlier_records: usize,
    earlier_metrics: usize,
    path: &'static str,
}

impl Endpoint {
    fn up(protocol: Protocol, path: &'static str) -> Self {
        let r = OtlpReceiver::start(protocol);
        Self {
            port: r.port,
            protocol,
            now: Some(r),
            earlier_records: 0,
            earlier_metrics: 0,
            path,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn close(&mut self) {
        if let Some(r) = self.now.take() {
            self.earlier_records += log_record_count(&r.logs(), self.path);
            self.earlier_metrics += r.metrics_count();
        }
    }

    /// Binds the port again (a moment after it was closed it may still be held).
    fn rebind(&self, f: impl Fn(u16) -> std::io::Result<OtlpReceiver>) -> OtlpReceiver {
        poll(Duration::from_secs(10), || f(self.port).ok())
            .unwrap_or_else(|| panic!("cannot bind port {} again", self.port))
    }

    fn go_down(&mut self) {
        self.close();
    }

    fn go_black_hole(&mut self) {
        self.close();
        self.now = Some(self.rebind(OtlpReceiver::black_hole_on));
    }

    fn come_back(&mut self) {
        self.close();
        let protocol = self.protocol;
        self.now = Some(self.rebind(|port| OtlpReceiver::start_on(protocol, port)));
    }

    /// Log records received over the whole test.
    fn records(&self) -> usize {
        self.earlier_records
            + self
                .now
                .as_ref()
                .map_or(0, |r| log_record_count(&r.logs(), self.path))
    }

    fn metrics_now(&self) -> usize {
        self.now.as_ref().map_or(0, OtlpReceiver::metrics_count)
    }
}

/// One agent under test, with its OTLP endpoint (metrics and logs) and its Loki endpoint.
struct Subject {
    name: &'static str,
    agent: Agent,
    otlp: Endpoint,
    loki: Endpoint,
    _config: ConfigFile,
}

impl Subject {
    fn start(protocol: Protocol) -> Self {
        let logs_path = match protocol {
            Protocol::Grpc => GRPC_LOGS_PATH,
            Protocol::HttpProtobuf => "/v1/logs",
        };
        let otlp = Endpoint::up(protocol, logs_path);
        let loki = Endpoint::up(Protocol::HttpProtobuf, "/otlp/v1/logs");
        // The node's namespace only: its RSS must not follow other tests' namespaces.
        let config = ConfigFile::disagreeing(
            "  repeat_interval: 1s\n",
            &format!(
                "collection:\n  include_netns: [no-such-namespace]\notlp:\n  timeout: {EXPORT_TIMEOUT_SECS}s\n{}  queue_size: {QUEUE}\n  export_timeout: {EXPORT_TIMEOUT_SECS}s\n",
                events_yaml(
                    "stdout, otlp, loki",
                    Some((&otlp.url(), protocol.flag())),
                    Some(&loki.url()),
                )
            ),
        );
        let agent = Agent::start(&[
            "--mode=standalone",
            &config.flag,
            &format!("--otlp.endpoint={}", otlp.url()),
            &format!("--otlp.protocol={}", protocol.flag()),
            "--otlp.interval=1s",
        ]);
        Self {
            name: protocol.flag(),
            agent,
            otlp,
            loki,
            _config: config,
        }
    }

    fn failures(&self, s: &Scrape) -> (f64, f64, f64) {
        (
            s.value(
                "netexporter_export_failures_total",
                &[("exporter", "otlp"), ("signal", "metrics")],
            )
            .unwrap_or(0.0),
            logs_failures(s, "otlp").unwrap_or(0.0),
            logs_failures(s, "loki").unwrap_or(0.0),
        )
    }

    fn event_lines(&self) -> usize {
        self.agent
            .log_text()
            .lines()
            .filter(|l| l.starts_with('{') && l.contains(KIND))
            .count()
    }

    fn log_lines(&self, needle: &str, exporter: Option<&str>) -> usize {
        self.agent
            .log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .filter(|l| exporter.is_none_or(|e| l.contains(&format!("exporter=\"{e}\""))))
            .count()
    }
}

/// What the scraping thread saw of one agent.
#[derive(Default)]
struct Watch {
    scrapes: usize,
    slowest: Duration,
    failed: Vec<String>,
    /// (seconds since start, fds, threads, RSS KiB), one a second.
    figures: Vec<(u64, usize, usize, u64)>,
}

/// Events emitted so far, of every type (the machine may disagree with more than the one
/// expectation the test sets).
fn emitted(s: &Scrape) -> usize {
    s.find("netexporter_events", &[])
        .iter()
        .map(|x| x.value as usize)
        .sum()
}

/// Scrapes `port` every second and samples `pid` until `stop`.
fn watch(port: u16, pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Watch> {
    std::thread::spawn(move || {
        let mut w = Watch::default();
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            match http_get(port, "/metrics") {
                Ok((200, _)) => {}
                Ok((status, body)) => w.failed.push(format!("{status}: {body:.200}")),
                Err(e) => w.failed.push(e.to_string()),
            }
            w.scrapes += 1;
            w.slowest = w.slowest.max(t.elapsed());
            let (fds, threads, rss) = proc_figures(pid);
            w.figures
                .push((start.elapsed().as_secs(), fds, threads, rss));
            std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
        }
        w
    })
}

#[test]
fn sinks_down_then_black_hole_then_back() {
    require_root();
    let phase = phase();
    let mut subjects = [
        Subject::start(Protocol::Grpc),
        Subject::start(Protocol::HttpProtobuf),
    ];

    // Up: both signals arrive, nothing fails.
    for s in subjects.iter() {
        poll(Duration::from_secs(30), || {
            (s.otlp.metrics_now() >= 2 && s.otlp.records() >= 1 && s.loki.records() >= 1)
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: no export before the outage; agent log:\n{}",
                s.name,
                s.agent.log_text()
            )
        });
        assert_eq!(
            s.failures(&s.agent.scrape()),
            (0.0, 0.0, 0.0),
            "{}: failures while the endpoints are up",
            s.name
        );
    }
    let before: Vec<_> = subjects.iter().map(|s| s.agent.figures()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let watches: Vec<_> = subjects
        .iter()
        .map(|s| watch(s.agent.port, s.agent.pid(), Arc::clone(&stop)))
        .collect();

    // Down, then a black hole; at the end of each, failures have grown and events still
    // reach stdout.
    let mut last: Vec<(f64, f64, f64)> = vec![(0.0, 0.0, 0.0); subjects.len()];
    for (what, change) in [
        ("down", Endpoint::go_down as fn(&mut Endpoint)),
        ("black hole", Endpoint::go_black_hole),
    ] {
        let lines: Vec<usize> = subjects.iter().map(Subject::event_lines).collect();
        for s in subjects.iter_mut() {
            change(&mut s.otlp);
            change(&mut s.loki);
        }
        std::thread::sleep(phase);
        for (i, s) in subjects.iter().enumerate() {
            let f = s.failures(&s.agent.scrape());
            assert!(
                f.0 > last[i].0 && f.1 > last[i].1 && f.2 > last[i].2,
                "{} {what}: failures (metrics, otlp logs, loki logs) did not grow: {:?} -> {f:?}\nagent log:\n{}",
                s.name,
                last[i],
                s.agent.log_text()
            );
            last[i] = f;
            let more = s.event_lines() - lines[i];
            assert!(
                more as u64 >= phase.as_secs() / 3,
                "{} {what}: checks held up: {more} events on stdout in {phase:?}",
                s.name
            );
        }
    }

    // Back: export resumes by itself, on both signals and both sinks.
    for s in subjects.iter_mut() {
        s.otlp.come_back();
        s.loki.come_back();
    }
    for s in subjects.iter() {
        let (otlp0, loki0) = (s.otlp.records(), s.loki.records());
        poll(Duration::from_secs(30), || {
            (s.otlp.metrics_now() >= 2 && s.otlp.records() > otlp0 && s.loki.records() > loki0)
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: export did not resume within 30s; agent log:\n{}",
                s.name,
                s.agent.log_text()
            )
        });
    }
    stop.store(true, Ordering::Relaxed);
    let watches: Vec<Watch> = watches
        .into_iter()
        .map(|w| w.join().expect("watch thread"))
        .collect();

    for ((s, w), before) in subjects.iter().zip(&watches).zip(&before) {
        // Scrapes: all answered, none waited for a hung export.
        assert!(
            w.failed.is_empty(),
            "{}: failed scrapes: {:?}",
            s.name,
            w.failed
        );
        assert!(
            w.slowest < SCRAPE_LIMIT,
            "{}: a scrape took {:?} while an export hung",
            s.name,
            w.slowest
        );
        assert!(
            w.scrapes as u64 >= 2 * phase.as_secs() * 2 / 3,
            "{}: {} scrapes",
            s.name,
            w.scrapes
        );

        // One warning when the outage starts, one line when it ends, per exporter and signal.
        for (needle, exporter) in [
            ("OTLP metrics export failing", None),
            ("OTLP metrics export recovered", None),
            ("event export failing", Some("otlp")),
            ("event export failing", Some("loki")),
            ("event export recovered", Some("otlp")),
            ("event export recovered", Some("loki")),
        ] {
            assert_eq!(
                s.log_lines(needle, exporter),
                1,
                "{}: {needle:?} ({exporter:?}) logged other than once; agent log:\n{}",
                s.name,
                s.agent.log_text()
            );
        }

        // Nothing lost silently: every event emitted by now reaches each sink or is counted
        // as lost, within a few batches.
        let emitted_then = emitted(&s.agent.scrape());
        for (sink, endpoint) in [("otlp", &s.otlp), ("loki", &s.loki)] {
            let accounted = poll(Duration::from_secs(30), || {
                let lost = logs_failures(&s.agent.scrape(), sink).unwrap_or(0.0) as usize;
                let got = endpoint.records();
                (got + lost >= emitted_then).then_some((got, lost))
            });
            let emitted_now = emitted(&s.agent.scrape());
            let (got, lost) = accounted.unwrap_or_else(|| {
                panic!(
                    "{} {sink}: {emitted_then} events emitted, but only {} received and {:?} counted lost",
                    s.name,
                    endpoint.records(),
                    logs_failures(&s.agent.scrape(), sink)
                )
            });
            // A request cut off when its receiver went away may be both received and counted.
            assert!(
                got + lost <= emitted_now + QUEUE,
                "{} {sink}: {got} received + {lost} lost > {emitted_now} emitted",
                s.name
            );
            assert!(lost > 0, "{} {sink}: nothing counted lost", s.name);
        }

        // Bounded: RSS near its level before the outage; descriptors and threads back.
        let peak = w.figures.iter().map(|f| f.3).max().unwrap_or(0);
        let after = s.agent.figures();
        let every = (w.figures.len() / 20).max(1);
        eprintln!(
            "{}: seconds into the outage, fds, threads, RSS KiB:",
            s.name
        );
        for f in w.figures.iter().step_by(every) {
            eprintln!("  {:5} {:4} {:3} {:7}", f.0, f.1, f.2, f.3);
        }
        eprintln!(
            "{}: before (fds, threads, RSS KiB) {before:?}, peak RSS {peak} KiB, after {after:?}, {} scrapes, slowest {:?}",
            s.name, w.scrapes, w.slowest
        );
        assert!(
            peak <= before.2 + RSS_SLACK_KIB,
            "{}: RSS rose from {} to {peak} KiB during the outage",
            s.name,
            before.2
        );
        assert!(
            after.0 <= before.0 + 4,
            "{}: descriptors {} -> {}",
            s.name,
            before.0,
            after.0
        );
        assert!(
            after.1 <= before.1 + 2,
            "{}: threads {} -> {}",
            s.name,
            before.1,
            after.1
        );
    }
}
