//! Namespace churn: while the agent is scraped every second and pushes OTLP every second,
//! namespaces with veths come and go at 50 per second for a minute. No scrape fails, the
//! namespaces that live through it keep kernel-equal values, a deleted namespace has no series
//! after the next collection, and the agent's open files, threads and memory come back to their
//! level before the churn.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

const PER_SECOND: usize = 50;
const SECONDS: usize = 60;

/// An OTLP/HTTP sink that accepts everything (so the push path is busy too).
struct Sink {
    port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

impl Sink {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (s, r) = (Arc::clone(&stop), Arc::clone(&requests));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = vec![0u8; 1 << 20];
                        let mut got = Vec::new();
                        // Read headers, then the announced body, then answer.
                        while let Ok(n) = c.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            got.extend_from_slice(&buf[..n]);
                            let text = String::from_utf8_lossy(&got).to_string();
                            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                                let len = head
                                    .lines()
                                    .find_map(|l| {
                                        l.to_ascii_lowercase()
                                            .strip_prefix("content-length:")
                                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                    })
                                    .unwrap_or(0);
                                if got.len() >= head.len() + 4 + len || body.len() >= len {
                                    break;
                                }
                            }
                        }
                        r.fetch_add(1, Ordering::Relaxed);
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            port,
            stop,
            requests,
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `ip -batch` with `lines`; errors of single lines are tolerated (`-force`).
fn ip_batch(lines: &str) {
    let mut ip = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ip -batch");
    ip.stdin
        .take()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("write batch");
    let _ = ip.wait();
}

/// The `ip -batch` lines of one second of churn: `names` made, each with a veth to the node
/// (`<tag>h<0|1>x<i>`, alternating between seconds so that names are free again), and
/// `previous` deleted (their veths with them).
fn second_of_churn(tag: &str, second: usize, names: &[String], previous: &[String]) -> String {
    let mut batch = String::new();
    for (i, n) in names.iter().enumerate() {
        batch.push_str(&format!(
            "netns add {n}\nlink add {tag}h{}x{i} type veth peer name eth0 netns {n}\n",
            second % 2
        ));
    }
    for n in previous {
        batch.push_str(&format!("netns del {n}\n"));
    }
    batch
}

/// Deletes every namespace this test may have left, also on failure.
struct ChurnGuard(String);

impl Drop for ChurnGuard {
    fn drop(&mut self) {
        let list = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        let names: String = String::from_utf8_lossy(&list)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&self.0))
            .map(|n| format!("netns del {n}\n"))
            .collect();
        ip_batch(&names);
    }
}

#[test]
fn namespace_churn_at_50_per_second_for_a_minute() {
    require_root();
    let tag = format!("nxz{}", std::process::id() % 1000);
    let _guard = ChurnGuard(tag.clone());
    // Namespaces that live through the churn, each with a listener so its values are not all 0.
    let stable: Vec<Netns> = (0..3).map(|_| Netns::new("nxs")).collect();
    let _listeners: Vec<Proc> = stable
        .iter()
        .map(|ns| {
            ns.spawn(&[
                "python3",
                "-c",
                "import socket,time\nl=socket.socket(); l.bind(('127.0.0.1',7000)); l.listen(1)\ntime.sleep(600)",
            ])
        })
        .collect();
    let sink = Sink::start();
    let endpoint = format!("--otlp.endpoint=http://127.0.0.1:{}", sink.port);
    let agent = Agent::start(&[
        &endpoint,
        "--otlp.protocol=http/protobuf",
        "--otlp.interval=1s",
    ]);
    let pid = agent.pid();
    // Steady state before the churn.
    for _ in 0..5 {
        agent.scrape();
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = proc_figures(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicUsize::new(0));
    let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let scraper = {
        let (stop, scrapes, failures) = (
            Arc::clone(&stop),
            Arc::clone(&scrapes),
            Arc::clone(&failures),
        );
        let port = agent.port;
        let stable: Vec<String> = stable.iter().map(|n| n.name.clone()).collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match http_get(port, "/metrics") {
                    Ok((200, body)) => {
                        let s = Scrape::parse(&body);
                        for name in &stable {
                            // A listener's namespace: sockstat TCP inuse is exactly 1.
                            if s.value("netexporter_sock_inuse", &[("netns", name)]) != Some(1.0) {
                                failures
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(format!("{name}: sock_inuse not 1"));
                            }
                        }
                    }
                    Ok((status, _)) => failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("scrape status {status}")),
                    Err(e) => failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("scrape error {e}")),
                }
                scrapes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let start = Instant::now();
    let mut created = 0usize;
    let mut previous: Vec<String> = Vec::new();
    for second in 0..SECONDS {
        let tick = Instant::now();
        let names: Vec<String> = (0..PER_SECOND)
            .map(|i| format!("{tag}s{second}n{i}"))
            .collect();
        ip_batch(&second_of_churn(&tag, second, &names, &previous));
        created += names.len();
        previous = names;
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let churn_time = start.elapsed();
    // The last second's namespaces go too; then a collection sees none of them.
    let gone = previous.clone();
    ip_batch(
        &previous
            .iter()
            .map(|n| format!("netns del {n}\n"))
            .collect::<String>(),
    );
    stop.store(true, Ordering::Relaxed);
    scraper.join().expect("scraper");
    // A scrape joins a collection already in flight (the OTLP push may have started one before
    // the deletion): the collection after it is the first that must not see them.
    agent.scrape();
    let s = agent.scrape();
    for n in &gone {
        assert!(
            s.find("netexporter_sock_inuse", &[("netns", n)]).is_empty(),
            "{n} still has series after deletion"
        );
    }
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        failures.is_empty(),
        "{} failures during the churn, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        scrapes.load(Ordering::Relaxed) >= SECONDS / 2,
        "too few scrapes"
    );
    assert!(
        sink.requests.load(Ordering::Relaxed) > 0,
        "no OTLP push during the churn"
    );

    // Back to the level before: a few collections to close what was opened.
    let mut after = proc_figures(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && (after.0 > before.0 + 2 || after.1 > before.1 + 2) {
        agent.scrape();
        std::thread::sleep(Duration::from_millis(500));
        after = proc_figures(pid);
    }
    eprintln!(
        "churn: {created} namespaces with veths in {churn_time:.1?} ({:.0}/s); agent fds {} -> {}, threads {} -> {}, RSS {} -> {} KiB",
        created as f64 / churn_time.as_secs_f64(),
        before.0,
        after.0,
        before.1,
        after.1,
        before.2,
        after.2
    );
    assert!(
        after.0 <= before.0 + 2,
        "open files did not come back: {} -> {}",
        before.0,
        after.0
    );
    assert!(
        after.1 <= before.1 + 2,
        "threads did not come back: {} -> {}",
        before.1,
        after.1
    );
    assert!(
        after.2 <= before.2 + 16 * 1024,
        "RSS grew by more than 16 MiB: {} -> {} KiB",
        before.2,
        after.2
    );
}

/// One churn round: `seconds` seconds of 50 namespaces a second, each with a veth, made and
/// deleted a second later; in 5 of each second's, a few UDP datagrams to a closed port on
/// `lo` (NO_SOCKET drops, so that the drop counter holds keys of namespaces that go). The
/// agent is scraped every second meanwhile.
fn churn_round(tag: &str, round: usize, seconds: usize, agent: &Agent) {
    let mut previous: Vec<String> = Vec::new();
    for second in 0..=seconds {
        let tick = Instant::now();
        let names: Vec<String> = if second < seconds {
            (0..PER_SECOND)
                .map(|i| format!("{tag}r{round}s{second}n{i}"))
                .collect()
        } else {
            Vec::new()
        };
        ip_batch(&second_of_churn(tag, second, &names, &previous));
        let senders: Vec<std::process::Child> = names
            .iter()
            .take(5)
            .filter_map(|n| {
                Command::new("ip")
                    .args(["netns", "exec", n, "bash", "-c"])
                    .arg(
                        "ip link set lo up; for i in 1 2 3; do echo x > /dev/udp/127.0.0.1/9; done",
                    )
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        for mut s in senders {
            let _ = s.wait();
        }
        agent.scrape();
        previous = names;
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    // A scrape may join a collection already in flight: the next one prunes.
    agent.scrape();
    agent.scrape();
}

/// State follows churn in every configuration: with every probe on, and with each BPF-backed
/// probe off in turn (packetloss; the socket summaries of tcpsummary and sockbacklog), the
/// agent's memory after two more churn rounds ends where it was after the first (which fills
/// the allocator's pools), within 2 MiB for 1,000 namespaces (measured: 64–232 KiB): what is
/// kept per namespace is dropped with the namespace.
#[test]
fn state_follows_churn_in_every_configuration() {
    require_root();
    let tag = format!("nxy{}", std::process::id() % 1000);
    let _guard = ChurnGuard(tag.clone());
    let configs = [
        ("every probe", ""),
        (
            "packetloss off",
            "probes:\n  packetloss:\n    enabled: false\n",
        ),
        (
            "socket summaries off",
            "probes:\n  tcpsummary:\n    enabled: false\n  sockbacklog:\n    enabled: false\n",
        ),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut report = Vec::new();
    for (c, (name, yaml)) in configs.iter().enumerate() {
        let path = dir.path().join(format!("{c}.yaml"));
        std::fs::write(&path, yaml).expect("config");
        let config = format!("--config.file={}", path.display());
        let agent = Agent::start(&[&config]);
        let tag = format!("{tag}c{c}");
        churn_round(&tag, 0, 10, &agent);
        let (_, _, rss1) = agent.figures();
        churn_round(&tag, 1, 10, &agent);
        churn_round(&tag, 2, 10, &agent);
        let (_, _, rss3) = agent.figures();
        report.push(format!("{name}: RSS {rss1} -> {rss3} KiB"));
        assert!(
            rss3 <= rss1 + 2 * 1024,
            "{name}: RSS grew by {} KiB over two churn rounds of 500 namespaces ({rss1} -> {rss3} KiB)",
            rss3.saturating_sub(rss1)
        );
    }
    eprintln!("state follows churn: {}", report.join("; "));
}
