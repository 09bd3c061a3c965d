//! `make bench`: what a scrape costs against the raw cost of the kernel reads it needs.
//!
//! For 10, 100 and 250 busy network namespaces (each with a veth, a listener with one
//! connection waiting in its accept queue and two established connections), prints:
//! - the agent's (release binary) median scrape latency and CPU per scrape;
//! - the raw floor: the same /proc files and netlink dumps read once, single-threaded, from
//!   sockets opened beforehand, with no parsing or encoding, in this process;
//! - their ratios (latency / floor, CPU / floor), and the agent's RSS.
//!
//! Then, at 100 namespaces, what trace export costs (`docs/tracing.md`): the agent with trace
//! export off against the same agent exporting every collection's spans to a receiver on
//! loopback, over gRPC and over HTTP/protobuf, as ratios against off measured in the same run.
//! `cargo bench --bench collection -- tracing` runs that part alone.
//!
//! Then the agent's memory (VmHWM, the peak since start, beside VmRSS) at each size with its BPF
//! programs on and off (`-- memory` alone), and at 250 namespaces its scrape latency under CPU
//! limits of 0.1 and 0.25 CPU, with each socket summary path (`-- limits` alone).
//!
//! Figures are ratios against a floor measured in the same run: the machines are noisy.
//! Needs root. Everything it creates is removed at the end (and on panic, by guards).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use net_exporter::probes::tcpsummary;
use net_exporter::sources::collection::NodeSocket;
use net_exporter::sources::kernel_btf::KernelBtf;
use net_exporter::sources::netns::{NetFile, NetnsSession};
use net_exporter::sources::socket_storage::{SocketPath, SocketSummaries};
use net_exporter::sources::{Collection, TargetSources};
use netlink_packet_route::AddressFamily;
use netlink_packet_sock_diag::inet::StateFlags;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

const SIZES: [usize; 3] = [10, 100, 250];
const SCRAPES: usize = 20;
const FLOOR_RUNS: usize = 20;
/// Namespaces of the trace export comparison, and its rounds (off, gRPC, HTTP each round).
const TRACING_SIZE: usize = 100;
const TRACING_ROUNDS: usize = 3;

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it (and
    // with --list when listing): only a real benchmark run builds the namespaces.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    assert!(
        is_root(),
        "the benchmark creates network namespaces: run it as root"
    );
    let tag = format!("nb{}", std::process::id() % 1000);
    if std::env::args().any(|a| a == "listeners") {
        println!("{}", listeners_cost(&tag));
        return;
    }
    let mut world = World {
        tag: tag.clone(),
        count: 0,
        sockets: Vec::new(),
        busy: true,
    };
    if std::env::args().any(|a| a == "peers") {
        for n in PEERS_SIZES {
            world.grow_to(n);
            println!("{}", peers_cost(&world));
        }
        return;
    }
    if std::env::args().any(|a| a == "memory") {
        println!("{MEMORY_HEADER}");
        for n in SIZES {
            world.grow_to(n);
            for row in memory(&world) {
                println!("{row}");
            }
        }
        return;
    }
    if std::env::args().any(|a| a == "limits") {
        world.grow_to(LIMITED_SIZE);
        for row in cpu_limited(&world) {
            println!("{row}");
        }
        return;
    }
    if std::env::args().any(|a| a == "tracing") {
        world.grow_to(TRACING_SIZE);
        for line in tracing_cost(&world) {
            println!("{line}");
        }
        return;
    }
    println!(
        "net-exporter collection benchmark ({} CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "netns",
        "path",
        "scrape_ms",
        "cpu_ms",
        "floor_ms",
        "series",
        "lat/flr",
        "cpu/flr",
        "rss_mib"
    );
    let mut socket_rows = Vec::new();
    let mut tracing_rows = Vec::new();
    let mut peers_rows = Vec::new();
    let mut memory_rows = Vec::new();
    let mut limited_rows = Vec::new();
    for n in SIZES {
        world.grow_to(n);
        let floor = floor(&world);
        memory_rows.extend(memory(&world));
        if n == LIMITED_SIZE {
            limited_rows = cpu_limited(&world);
        }
        for path in ["auto", "sock_diag"] {
            let m = measure(path);
            println!(
                "{:>5} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>8.2} {:>8.2} {:>8.1}",
                n,
                m.path,
                ms(m.scrape),
                ms(m.cpu),
                ms(floor),
                m.series,
                ms(m.scrape) / ms(floor),
                ms(m.cpu) / ms(floor),
                m.rss_kib as f64 / 1024.0
            );
        }
        if n >= 100 {
            socket_rows.push((n, socket_part(&world)));
        }
        if n == TRACING_SIZE {
            tracing_rows = tracing_cost(&world);
        }
        if PEERS_SIZES.contains(&n) {
            peers_rows.push(peers_cost(&world));
        }
    }
    println!(
        "scrape_ms: median wall time of {SCRAPES} scrapes; cpu_ms: agent CPU (user+sys) per scrape;"
    );
    println!(
        "floor_ms: median of {FLOOR_RUNS} naive raw reads of the same sources (sock_diag dumps), one thread, no parsing."
    );
    println!();
    println!("socket summaries alone, every namespace (median of {FLOOR_RUNS}):");
    println!(
        "{:>5} {:>13} {:>9} {:>8}",
        "netns", "sock_diag_ms", "bpf_ms", "ratio"
    );
    for (n, (diag, bpf)) in socket_rows {
        match bpf {
            Some(b) => println!(
                "{:>5} {:>13.3} {:>9.3} {:>8.0}",
                n,
                ms(diag),
                ms(b),
                ms(diag) / ms(b).max(1e-6)
            ),
            None => println!("{:>5} {:>13.3} {:>9} {:>8}", n, ms(diag), "n/a", "-"),
        }
    }
    println!();
    for line in tracing_rows {
        println!("{line}");
    }
    println!();
    println!(
        "the peers probe's part of a scrape (its programs, the sampling iterator where connections may be open, its series; held: one connection of each namespace kept open; busy: every namespace connecting all along, against off-busy), {PEERS_ROUNDS} alternating rounds of {SCRAPES} scrapes each:"
    );
    for line in peers_rows {
        println!("{line}");
    }
    println!();
    println!(
        "memory: the peak since start (VmHWM) and the resident set after {SCRAPES} scrapes (VmRSS), BPF programs on (default) and off:"
    );
    println!("{MEMORY_HEADER}");
    for row in memory_rows {
        println!("{row}");
    }
    println!();
    println!(
        "under a CPU limit (CFS quota per 100 ms period, as a Pod's limits.cpu): time to ready, then {LIMITED_SCRAPES} scrapes back to back; Prometheus' default scrape timeout is 10 s:"
    );
    for row in limited_rows {
        println!("{row}");
    }
    println!();
    drop(world);
    println!("{}", listeners_cost(&tag));
    println!();
    connection_setup();
}

/// Namespaces that only listen: a scrape with one IPv4 listener in each of 100 namespaces and
/// nothing else, against the same namespaces empty, in alternating rounds (the peers probe
/// off). On the sock_diag path the socket summaries skip the established hash of a namespace
/// whose sockets in use are all listeners (docs/sockets.md): each such walk of the node's
/// whole TCP hash cost ~1 ms here, 5x a listen-only world's scrape before (267419d).
fn listeners_cost(tag: &str) -> String {
    const N: usize = 100;
    let mut world = World {
        tag: format!("{tag}l"),
        count: 0,
        sockets: Vec::new(),
        busy: false,
    };
    world.grow_to(N);
    let peers_off = "probes:\n  peers:\n    enabled: false\n";
    let (mut empty, mut listening) = (Duration::ZERO, Duration::ZERO);
    let mut path = String::new();
    for _ in 0..PEERS_ROUNDS {
        empty += measure_config("auto", peers_off, &[], None, &|| {}).cpu;
        let listeners: Vec<_> = (0..N)
            .map(|i| listener_in(Path::new(&format!("/run/netns/{}", world.name(i)))))
            .collect();
        let m = measure_config("auto", peers_off, &[], None, &|| {});
        listening += m.cpu;
        path = m.path;
        drop(listeners);
    }
    let per = |c: Duration| ms(c / PEERS_ROUNDS as u32);
    format!(
        "{N} namespaces that only listen (one IPv4 listener each, socket summaries: {path}), \
         {PEERS_ROUNDS} alternating rounds of {SCRAPES} scrapes, peers off: empty cpu {:.2} ms, \
         listening cpu {:.2} ms ({:.2}x)",
        per(empty),
        per(listening),
        per(listening) / per(empty).max(1e-6)
    )
}

/// A listener on port 8080 of namespace `ns`, opened by a thread inside it.
fn listener_in(ns: &Path) -> TcpListener {
    let ns_file = std::fs::File::open(ns).expect("open netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpListener::bind("0.0.0.0:8080").expect("listen")
        })
        .join()
        .expect("listener thread")
    })
}

const MEMORY_HEADER: &str = "netns   bpf  vmhwm_mib  vmrss_mib  hwm/rss";
/// Size of the CPU-limit runs, and the scrapes of each.
const LIMITED_SIZE: usize = 250;
const LIMITED_SCRAPES: usize = 10;

/// Sizes at which the peers probe's part is measured, and its rounds (each arm once a round).
/// Not 250: there the defaults' ~48k series pass `collection.max_series` and namespaces are
/// left out, which makes the scrape look cheaper than it is.
const PEERS_SIZES: [usize; 1] = [100];
const PEERS_ROUNDS: usize = 3;
/// Distinct remote addresses each namespace connects to (the issue's "50 peers each").
const PEERS_PER_NAMESPACE: usize = 50;
/// In the `busy` arms, each namespace opens a connection to its next peer this often: a few
/// between any two scrapes, so that every namespace's counts move at every collection.
const BUSY_EVERY: Duration = Duration::from_millis(100);

/// Every namespace of the world connecting to its peers, one thread each, until dropped.
struct Busy {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Busy {
    fn start(world: &World) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..world.count)
            .map(|i| {
                let ns =
                    std::fs::File::open(format!("/run/netns/{}", world.name(i))).expect("netns");
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    // The port `touch` used: the same keys, so the same series, only moving.
                    let l = TcpListener::bind("0.0.0.0:8081").expect("listen");
                    let mut p = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let to = (Ipv4Addr::new(10, 77, 0, 2 + p as u8), 8081);
                        // As `touch` does (nothing written: unread data would make the close
                        // a reset, and resets series of their own).
                        if TcpStream::connect(to).is_ok() {
                            let _ = l.accept();
                        }
                        p = (p + 1) % PEERS_PER_NAMESPACE;
                        std::thread::sleep(BUSY_EVERY);
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The agent with the peers probe off, then on, in alternating rounds: the median scrape and
/// the CPU per scrape of each, and their ratios (on / off).
fn peers_cost(world: &World) -> String {
    let n = world.count;
    // Once the agent runs, every namespace connects to PEERS_PER_NAMESPACE distinct addresses
    // and accepts them: each namespace has that many client peers and as many server peers,
    // and is walked once by the sampling iterator (which finds them closed, and walks it
    // again only when a connection opens there). The addresses are 10.77.0.2, .3, ...,
    // made local by one `local` route (not 127/8: every loopback address is one peer,
    // `loopback`); a connection to a local address comes from that address, so the accepting
    // side sees the same 50.
    // The `held` arm also keeps one connection of each namespace open (and its accepted end)
    // while it is measured: every namespace then holds an open connection the sampling
    // iterator must visit at each collection, as on a node whose Pods keep connections.
    let held: std::sync::Mutex<Vec<(TcpStream, TcpStream)>> = Default::default();
    let touch_and_hold = |hold: bool| {
        for i in 0..world.count {
            let ns = std::fs::File::open(format!("/run/netns/{}", world.name(i))).expect("netns");
            std::thread::scope(|s| {
                s.spawn(|| {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    // A child forked by this thread is in its namespace.
                    let local = ["route", "replace", "local", "10.77.0.0/25", "dev", "lo"];
                    let ok = std::process::Command::new("ip").args(local).status();
                    assert!(ok.is_ok_and(|s| s.success()), "ip route {local:?}");
                    // No TIME_WAIT sockets: each arm's 5,000 connections would leave as many
                    // in the node's TCP hash for a minute, and every namespace's sock_diag
                    // dump walks them, so an arm's scrapes would cost what the arms before it
                    // left (the off arm measured 45 ms a scrape without them, 310-530 ms with).
                    let no_tw = ["-qw", "net.ipv4.tcp_max_tw_buckets=0"];
                    let ok = std::process::Command::new("sysctl").args(no_tw).status();
                    assert!(ok.is_ok_and(|s| s.success()), "sysctl {no_tw:?}");
                    let l = TcpListener::bind("0.0.0.0:8081").expect("listen");
                    for p in 0..PEERS_PER_NAMESPACE {
                        let c = TcpStream::connect((Ipv4Addr::new(10, 77, 0, 2 + p as u8), 8081));
                        let a = l.accept();
                        if let (true, 0, Ok(c), Ok((a, _))) = (hold, p, &c, &a) {
                            let pair = (c.try_clone().expect("dup"), a.try_clone().expect("dup"));
                            held.lock().expect("held").push(pair);
                        }
                        drop((c, a));
                    }
                });
            });
        }
    };
    let touch = || touch_and_hold(false);
    let touch_held = || touch_and_hold(true);
    let busy: std::sync::Mutex<Option<Busy>> = Default::default();
    let touch_busy = || {
        touch();
        *busy.lock().expect("busy") = Some(Busy::start(world));
    };
    let off = "probes:\n  peers:\n    enabled: false\n";
    // Off; on with the defaults; on with a lean budget (5 peers of their own per namespace,
    // one with histograms): the series, not the kernel reads, are what a scrape pays for; on
    // with a connection held open in every namespace (the sampling walks at their budget);
    // and off and on again with every namespace connecting all along (`Busy`), on against
    // the off of the same traffic. Each arm: name, config, what runs after the agent starts,
    // and the arm it is compared with.
    let arms: [(&str, &str, &dyn Fn(), usize); 6] = [
        ("off", off, &touch, 0),
        ("on", "", &touch, 0),
        (
            "lean",
            "probes:\n  peers:\n    peers_per_namespace: 5\n    histogram_peers: 1\n",
            &touch,
            0,
        ),
        ("held", "", &touch_held, 0),
        ("off-busy", off, &touch_busy, 4),
        ("busy", "", &touch_busy, 4),
    ];
    let mut lat = vec![Vec::new(); arms.len()];
    let mut cpu = vec![Duration::ZERO; arms.len()];
    let mut series = vec![0; arms.len()];
    // The largest resident set and peak of each arm's rounds, MiB.
    let mut memory = vec![(0.0f64, 0.0f64); arms.len()];
    for _ in 0..PEERS_ROUNDS {
        for (i, (_, extra, touch, _)) in arms.iter().enumerate() {
            let m = measure_config("auto", extra, &[], None, *touch);
            held.lock().expect("held").clear();
            busy.lock().expect("busy").take();
            lat[i].extend(m.latencies);
            cpu[i] += m.cpu;
            series[i] = m.series;
            let (rss, hwm) = (m.rss_kib as f64 / 1024.0, m.hwm_kib as f64 / 1024.0);
            memory[i] = (memory[i].0.max(rss), memory[i].1.max(hwm));
        }
    }
    let per = |c: Duration| ms(c / PEERS_ROUNDS as u32);
    // Each arm's median scrape and CPU per scrape, ms.
    let measured: Vec<(f64, f64)> = (0..arms.len())
        .map(|i| (ms(median(&mut lat[i])), per(cpu[i])))
        .collect();
    let (off, off_cpu) = measured[0];
    let mut line = format!(
        "{n:>5} netns x {PEERS_PER_NAMESPACE} peers: off scrape {off:.2} ms, cpu {off_cpu:.2} ms, series {}, rss {:.1} MiB (peak {:.1})",
        series[0], memory[0].0, memory[0].1
    );
    for (i, (name, _, _, against)) in arms.iter().enumerate().skip(1) {
        let (scrape, c) = measured[i];
        let (off, off_cpu) = measured[*against];
        if i == *against {
            line += &format!(
                "; {name} scrape {scrape:.2} ms, cpu {c:.2} ms, series {}, rss {:.1} MiB (peak {:.1})",
                series[i], memory[i].0, memory[i].1
            );
            continue;
        }
        line += &format!(
            "; {name} scrape {scrape:.2} ms ({:.2}x), cpu {c:.2} ms ({:.2}x, +{:.2} ms), series {}, rss {:.1} MiB (peak {:.1})",
            scrape / off,
            c / off_cpu.max(1e-6),
            c - off_cpu,
            series[i],
            memory[i].0,
            memory[i].1
        );
    }
    line
}

/// The agent with trace export off, then on towards a counting receiver (gRPC, HTTP/protobuf),
/// in alternating rounds; each mode's latency is the median of all its scrapes and its CPU
/// the mean per scrape over all rounds. Returns the lines of its table.
fn tracing_cost(world: &World) -> Vec<String> {
    let receiver = Receiver::start();
    let grpc = format!("http://127.0.0.1:{}", receiver.grpc_port);
    // The signal's own variables: the generic endpoint would turn the metrics push on too.
    let http = format!("http://127.0.0.1:{}/v1/traces", receiver.http_port);
    // Scrapes back to back make a collection every few milliseconds, far more spans per second
    // than any real scrape interval: a queue that holds them all, so that every span is
    // exported and its cost counted (the default 2048 would drop some, counted). Not more: the
    // SDK allocates the whole queue up front, some 350 bytes a span.
    let on = [
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "20000"),
        ("OTEL_BSP_SCHEDULE_DELAY", "500"),
    ];
    let modes: [(&str, Vec<(&str, &str)>); 3] = [
        ("off", vec![]),
        (
            "grpc",
            vec![
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &grpc),
            ],
        ),
        (
            "http",
            vec![
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &http),
            ],
        ),
    ]
    .map(|(name, mut env)| {
        if !env.is_empty() {
            env.extend(on);
        }
        (name, env)
    });
    // Per mode: every scrape's latency, total CPU, RSS of the last round, spans received,
    // collections run.
    let mut runs: Vec<(Vec<Duration>, Duration, u64, u64, u64)> = modes
        .iter()
        .map(|_| (Vec::new(), Duration::ZERO, 0, 0, 0))
        .collect();
    for _ in 0..TRACING_ROUNDS {
        for (i, (_, env)) in modes.iter().enumerate() {
            let before = receiver.spans.load(Ordering::Relaxed);
            let m = measure_with("auto", env, Some(&receiver.spans));
            let run = &mut runs[i];
            run.0.extend(m.latencies);
            run.1 += m.cpu * SCRAPES as u32;
            run.2 = m.rss_kib;
            run.3 += receiver.spans.load(Ordering::Relaxed) - before;
            run.4 += m.collections;
        }
    }
    let scrapes = (TRACING_ROUNDS * SCRAPES) as u32;
    let (off_lat, off_cpu) = (median(&mut runs[0].0.clone()), runs[0].1 / scrapes);
    let mut out = vec![
        format!(
            "trace export, {} namespaces, bpf path ({TRACING_ROUNDS} alternating rounds of {SCRAPES} scrapes):",
            world.count
        ),
        format!(
            "{:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10}",
            "traces", "scrape_ms", "cpu_ms", "lat/off", "cpu/off", "rss_mib", "spans/coll"
        ),
    ];
    for ((name, _), (latencies, cpu, rss, spans, collections)) in modes.iter().zip(runs.iter_mut())
    {
        let lat = median(latencies);
        let cpu = *cpu / scrapes;
        out.push(format!(
            "{:>6} {:>9.2} {:>9.2} {:>8.2} {:>8.2} {:>8.1} {:>10.0}",
            name,
            ms(lat),
            ms(cpu),
            ms(lat) / ms(off_lat),
            ms(cpu) / ms(off_cpu),
            *rss as f64 / 1024.0,
            *spans as f64 / (*collections).max(1) as f64
        ));
    }
    out.push(
        "lat/off, cpu/off: against the agent without trace export in the same run; spans/coll: spans received per collection."
            .to_string(),
    );
    out
}

/// An OTLP receiver on loopback, gRPC and HTTP/protobuf on a port each, that decodes and counts
/// the spans it gets (in this process, so its work is not the agent's).
struct Receiver {
    grpc_port: u16,
    http_port: u16,
    spans: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

struct CountSpans(Arc<AtomicU64>);

fn count_spans(r: &ExportTraceServiceRequest) -> u64 {
    r.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len() as u64)
        .sum()
}

#[tonic::async_trait]
impl TraceService for CountSpans {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .fetch_add(count_spans(request.get_ref()), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let spans = Arc::new(AtomicU64::new(0));
        let bind = || {
            rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind")
        };
        let (grpc, http) = (bind(), bind());
        let (grpc_port, http_port) = (
            grpc.local_addr().expect("addr").port(),
            http.local_addr().expect("addr").port(),
        );
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(CountSpans(Arc::clone(&spans))))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc)),
        );
        let counter = Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                use prost::Message;
                match ExportTraceServiceRequest::decode(body) {
                    Ok(r) => {
                        counter.fetch_add(count_spans(&r), Ordering::Relaxed);
                        (
                            axum::http::StatusCode::OK,
                            [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                    Err(_) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [(axum::http::header::CONTENT_TYPE, "text/plain")],
                        Vec::new(),
                    ),
                }
            }),
        );
        rt.spawn(async move { axum::serve(http, app).await });
        Self {
            grpc_port,
            http_port,
            spans,
            _rt: rt,
        }
    }
}

struct Measured {
    scrape: Duration,
    latencies: Vec<Duration>,
    cpu: Duration,
    series: usize,
    rss_kib: u64,
    hwm_kib: u64,
    /// `netexporter_collections_total` at the last scrape.
    collections: u64,
    /// The socket path the agent reported (`netexporter_tcpsummary_info{path}`): `auto` is
    /// `sock_diag` on kernels that refuse the BPF programs (`docs/notes/ebpf.md`).
    path: String,
}

/// The agent with the given socket summary path: median scrape, CPU per scrape, RSS.
fn measure(path: &str) -> Measured {
    measure_with(path, &[], None)
}

/// [`measure`] with extra environment for the agent; `spans`: a receiver's span count, to
/// wait for before stopping the agent until every span of the run has arrived.
fn measure_with(path: &str, env: &[(&str, &str)], spans: Option<&AtomicU64>) -> Measured {
    measure_config(path, "", env, spans, &|| {})
}

/// [`measure_with`] with more of the configuration file (`extra`: YAML after `sources:`).
fn measure_config(
    path: &str,
    extra: &str,
    env: &[(&str, &str)],
    spans: Option<&AtomicU64>,
    after_start: &dyn Fn(),
) -> Measured {
    let config = std::env::temp_dir().join(format!(
        "net-exporter-bench-{}-{path}.yaml",
        std::process::id()
    ));
    std::fs::write(&config, format!("sources:\n  socket_path: {path}\n{extra}"))
        .expect("write config");
    let agent = Agent::start(&config, env);
    after_start();
    // Warm-up: the first collection opens every namespace's session (and sweeps them).
    for _ in 0..3 {
        agent.scrape();
    }
    let cpu_before = agent.cpu_time();
    let mut latencies = Vec::with_capacity(SCRAPES);
    let mut series = 0;
    let mut collections = 0;
    let mut reported_path = String::new();
    for _ in 0..SCRAPES {
        let t = Instant::now();
        let body = agent.scrape();
        latencies.push(t.elapsed());
        series = body.lines().filter(|l| !l.starts_with('#')).count();
        collections = body
            .lines()
            .find(|l| l.starts_with("netexporter_collections_total"))
            .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
            .unwrap_or(0);
        reported_path = body
            .lines()
            .find(|l| l.starts_with("netexporter_tcpsummary_info{"))
            .and_then(|l| l.split("path=\"").nth(1)?.split('"').next())
            .unwrap_or("none")
            .to_string();
    }
    let rss_kib = agent.rss_kib();
    let hwm_kib = agent.hwm_kib();
    if let Some(spans) = spans.filter(|_| !env.is_empty()) {
        // Exports run behind the scrapes: their CPU counts once every span has arrived (the
        // batch processor exports a partial batch every OTEL_BSP_SCHEDULE_DELAY).
        let mut last = spans.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1500));
            let now = spans.load(Ordering::Relaxed);
            if now == last && now > 0 {
                break;
            }
            last = now;
        }
    }
    let cpu = (agent.cpu_time() - cpu_before) / SCRAPES as u32;
    drop(agent);
    let _ = std::fs::remove_file(&config);
    Measured {
        scrape: median(&mut latencies.clone()),
        latencies,
        cpu,
        series,
        rss_kib,
        hwm_kib,
        collections,
        path: reported_path,
    }
}

/// The socket-summary part alone, for every namespace: sock_diag dumps (established and
/// time-wait, both families, plus listeners) against one BPF socket-storage pass.
fn socket_part(world: &World) -> (Duration, Option<Duration>) {
    let procfs = Path::new("/proc");
    let mut sessions: Vec<(NetnsSession, bool)> = vec![(NetnsSession::open_own(procfs), true)];
    for i in 0..world.count {
        let path = format!("/run/netns/{}", world.name(i));
        sessions.push((
            NetnsSession::open_in(Path::new(&path), procfs).expect("session"),
            false,
        ));
    }
    let mut diag = Vec::new();
    for _ in 0..FLOOR_RUNS {
        let t = Instant::now();
        for (session, is_node) in &mut sessions {
            let mut src = TargetSources::new(session, procfs, *is_node);
            for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                let _ = src.tcp_sockets(family, StateFlags::ESTABLISHED | StateFlags::TIME_WAIT);
                let _ = src.tcp_sockets(family, StateFlags::LISTEN);
            }
        }
        diag.push(t.elapsed());
    }
    let summaries = SocketSummaries::new(SocketPath::Bpf);
    let bpf = summaries
        .start(&KernelBtf::new("/sys/kernel/btf/vmlinux".into()))
        .ok()
        .map(|()| {
            use std::os::unix::fs::MetadataExt;
            let inode = |p: &str| std::fs::metadata(p).map(|m| m.ino()).unwrap_or(0);
            let mut namespaces = vec![(inode("/proc/self/ns/net"), None)];
            for i in 0..world.count {
                let path = format!("/run/netns/{}", world.name(i));
                namespaces.push((inode(&path), Some(std::path::PathBuf::from(path))));
            }
            let socket = NodeSocket::default();
            let collection = |id| Collection::new(id, namespaces.clone(), true, socket.clone());
            // Sweep every namespace once (collection 1), then time the passes.
            summaries.prepare(&collection(1));
            let mut runs = Vec::new();
            for c in 0..FLOOR_RUNS as u64 {
                let t = Instant::now();
                summaries.prepare(&collection(c + 2));
                runs.push(t.elapsed());
            }
            median(&mut runs)
        });
    (median(&mut diag), bpf)
}

/// Connections per second through loopback with and without the tagging tracepoint, from
/// alternating runs.
fn connection_setup() {
    const CONNS: usize = 3000;
    let run = || {
        let l = TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = l.local_addr().expect("addr");
        let t = Instant::now();
        for _ in 0..CONNS {
            let c = TcpStream::connect(addr).expect("connect");
            let (a, _) = l.accept().expect("accept");
            drop(c);
            drop(a);
        }
        CONNS as f64 / t.elapsed().as_secs_f64()
    };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        off.push(run());
        let storage = net_exporter::sources::socket_storage::SocketStorage::load(&KernelBtf::new(
            "/sys/kernel/btf/vmlinux".into(),
        ));
        if storage.is_err() {
            println!("connection setup: BPF socket storage unavailable");
            return;
        }
        on.push(run());
        drop(storage);
    }
    off.sort_by(f64::total_cmp);
    on.sort_by(f64::total_cmp);
    let (off, on) = (off[off.len() / 2], on[on.len() / 2]);
    println!(
        "connection setup through loopback: {off:.0}/s without, {on:.0}/s with the tagging tracepoint: {:.1} % fewer",
        (1.0 - on / off) * 100.0
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The benchmark's namespaces and the sockets that keep them busy (`busy`: each gets
/// [`busy_sockets`]; else none).
struct World {
    tag: String,
    count: usize,
    sockets: Vec<Vec<std::os::fd::OwnedFd>>,
    busy: bool,
}

impl World {
    fn name(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn grow_to(&mut self, n: usize) {
        let mut batch = String::new();
        for i in self.count..n {
            let ns = self.name(i);
            batch.push_str(&format!(
                "netns add {ns}\nlink add {ns}h type veth peer name eth0 netns {ns}\nlink set {ns}h up\n"
            ));
        }
        let mut ip = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("ip -batch");
        ip.stdin
            .take()
            .expect("stdin")
            .write_all(batch.as_bytes())
            .expect("write batch");
        assert!(ip.wait().expect("ip").success(), "ip -batch failed");
        for i in self.count..n {
            let ns = self.name(i);
            for dev in ["lo", "eth0"] {
                let ok = Command::new("ip")
                    .args(["-n", &ns, "link", "set", dev, "up"])
                    .status();
                assert!(
                    ok.is_ok_and(|s| s.success()),
                    "ip -n {ns} link set {dev} up"
                );
            }
            if self.busy {
                let path = format!("/run/netns/{}", self.name(i));
                self.sockets.push(busy_sockets(Path::new(&path)));
            }
        }
        self.count = n;
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.sockets.clear();
        let batch: String = (0..self.count)
            .map(|i| format!("netns del {}\n", self.name(i)))
            .collect();
        if let Ok(mut ip) = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
        {
            if let Some(mut stdin) = ip.stdin.take() {
                let _ = stdin.write_all(batch.as_bytes());
            }
            let _ = ip.wait();
        }
    }
}

/// A listener with one connection waiting in its accept queue and two accepted connections,
/// created inside the namespace by a thread that entered it.
fn busy_sockets(ns: &Path) -> Vec<std::os::fd::OwnedFd> {
    let ns_file = std::fs::File::open(ns).expect("open netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let l = TcpListener::bind("127.0.0.1:8080").expect("listen");
            let c1 = TcpStream::connect("127.0.0.1:8080").expect("connect");
            let c2 = TcpStream::connect("127.0.0.1:8080").expect("connect");
            let (a1, _) = l.accept().expect("accept");
            let (a2, _) = l.accept().expect("accept");
            let waiting = TcpStream::connect("127.0.0.1:8080").expect("connect");
            vec![
                l.into(),
                c1.into(),
                c2.into(),
                a1.into(),
                a2.into(),
                waiting.into(),
            ]
        })
        .join()
        .expect("socket thread")
    })
}

/// The raw reads of one collection, from sessions opened beforehand (as the agent keeps them).
fn floor(world: &World) -> Duration {
    let procfs = Path::new("/proc");
    let mut sessions: Vec<(NetnsSession, bool)> = vec![(NetnsSession::open_own(procfs), true)];
    for i in 0..world.count {
        let path = format!("/run/netns/{}", world.name(i));
        sessions.push((
            NetnsSession::open_in(Path::new(&path), procfs).expect("session"),
            false,
        ));
    }
    let mut runs = Vec::with_capacity(FLOOR_RUNS);
    for _ in 0..FLOOR_RUNS {
        let t = Instant::now();
        let mut bytes = 0usize;
        for (session, is_node) in &mut sessions {
            let is_node = *is_node;
            let mut src = TargetSources::new(session, procfs, is_node);
            for f in NetFile::ALL {
                bytes += src.net_file(f).map_or(0, |v| v.len());
            }
            bytes += src.links().map_or(0, |v| v.len());
            for family in tcpsummary::families_to_dump(&mut src) {
                bytes += src
                    .tcp_sockets(family, StateFlags::ESTABLISHED | StateFlags::TIME_WAIT)
                    .map_or(0, |v| v.len());
            }
            // The listeners, as the agent reads them: one LISTEN-only dump (both families),
            // which `families_to_dump` may already have made (it is cached per target).
            bytes += src.tcp_listeners().map_or(0, |v| v.len());
            if is_node {
                bytes += src.qdiscs().map_or(0, |v| v.len());
                bytes += src.neighbours(AddressFamily::Inet).map_or(0, |v| v.len());
                for f in [
                    "net/softnet_stat",
                    "net/stat/nf_conntrack",
                    "sys/net/netfilter/nf_conntrack_count",
                    "sys/net/netfilter/nf_conntrack_max",
                    "sys/net/ipv4/neigh/default/gc_thresh3",
                    "net/stat/arp_cache",
                ] {
                    bytes += src.node_file(f).map_or(0, |v| v.len());
                }
            }
        }
        runs.push(t.elapsed());
        assert!(bytes > 0);
    }
    median(&mut runs)
}

struct Agent {
    child: Child,
    port: u16,
}

impl Agent {
    fn start(config: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_in(config, env, None)
    }

    /// [`Agent::start`] inside the cgroup `limit` from its first instruction (a shell joins
    /// the cgroup and execs the agent), so that start-up is throttled as in a limited Pod.
    fn start_in(config: &Path, env: &[(&str, &str)], limit: Option<&CpuLimit>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let agent = env!("CARGO_BIN_EXE_net-exporter");
        let mut cmd = match limit {
            Some(l) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(r#"echo $$ > "$0" && shift && exec "$@""#)
                    .arg(l.procs())
                    .arg("--")
                    .arg(agent);
                c
            }
            None => Command::new(agent),
        };
        let child = cmd
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .arg(format!("--config.file={}", config.display()))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("start agent");
        let agent = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(port, "/readyz").map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "agent not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    fn scrape(&self) -> String {
        let (status, body) = get(self.port, "/metrics").expect("scrape");
        assert_eq!(status, 200);
        body
    }

    /// User + system CPU of the whole process (exited worker threads included).
    fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("stat");
        let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = after_comm
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // Fields 14 and 15 of stat(5) are utime and stime; after ")" they are at 11 and 12.
        let ticks = f[11] + f[12];
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_nanos(ticks * 1_000_000_000 / hz)
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The peak of the resident set since the agent started (start-up included).
    fn hwm_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

/// A CPU limit as Kubernetes sets one: CFS bandwidth, 100 ms periods. cgroup v2's `cpu.max`
/// where a v2 hierarchy has the cpu controller; else v1's `cpu.cfs_quota_us` (this machine
/// mounts cgroup v2 without controllers, the cpu controller on v1): the same throttling.
struct CpuLimit {
    dir: std::path::PathBuf,
    /// How it was set, for the table.
    how: &'static str,
}

impl CpuLimit {
    const PERIOD_US: u64 = 100_000;

    fn new(cpus: f64) -> Option<Self> {
        let name = format!(
            "netexporter-bench-{}-{}",
            std::process::id(),
            (cpus * 1000.0) as u64
        );
        let quota = (cpus * Self::PERIOD_US as f64) as u64;
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let controllers =
                std::fs::read_to_string(format!("{root}/cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "cpu") {
                let _ = std::fs::write(format!("{root}/cgroup.subtree_control"), "+cpu");
                let dir = Path::new(root).join(&name);
                std::fs::create_dir(&dir).ok()?;
                let limit = Self {
                    dir,
                    how: "cpu.max",
                };
                std::fs::write(
                    limit.dir.join("cpu.max"),
                    format!("{quota} {}", Self::PERIOD_US),
                )
                .ok()?;
                return Some(limit);
            }
        }
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        if !v1.join("cpu.cfs_quota_us").exists() {
            return None;
        }
        let dir = v1.join(&name);
        std::fs::create_dir(&dir).ok()?;
        let limit = Self {
            dir,
            how: "cfs_quota",
        };
        std::fs::write(
            limit.dir.join("cpu.cfs_period_us"),
            Self::PERIOD_US.to_string(),
        )
        .ok()?;
        std::fs::write(limit.dir.join("cpu.cfs_quota_us"), quota.to_string()).ok()?;
        Some(limit)
    }

    fn procs(&self) -> std::path::PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Periods in which the cgroup was throttled, from its cpu.stat.
    fn throttled_periods(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("cpu.stat"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("nr_throttled ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // The agent has been killed and reaped by then; an empty cgroup can be removed.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Scrape latency at `world`'s size under CPU limits of 0.1 and 0.25 CPU, with the socket
/// summary path `auto` (BPF socket storage where the kernel takes it) and `sock_diag`: the
/// first scrape once ready, then (after two more) the median and worst of `LIMITED_SCRAPES`
/// and the CPU per scrape, against
/// Prometheus' default 10 s scrape timeout.
fn cpu_limited(world: &World) -> Vec<String> {
    let mut rows = vec![format!(
        "{:>5} {:>9} {:>6} {:>10} {:>9} {:>9} {:>10} {:>9} {:>10} {:>10}",
        "netns",
        "path",
        "cpus",
        "limit",
        "ready_s",
        "first_ms",
        "median_ms",
        "worst_ms",
        "cpu_ms",
        "throttled"
    )];
    for path in ["auto", "sock_diag"] {
        // No limit first: the same scrapes unthrottled, the baseline of the ratios.
        for cpus in [None, Some(0.1), Some(0.25)] {
            let limit = match cpus.map(CpuLimit::new) {
                None => None,
                Some(Some(l)) => Some(l),
                Some(None) => {
                    rows.push(
                        "no CPU controller to limit with (cgroup v2 cpu.max or v1 cfs_quota)"
                            .to_string(),
                    );
                    return rows;
                }
            };
            let config = std::env::temp_dir().join(format!(
                "net-exporter-bench-{}-limited.yaml",
                std::process::id()
            ));
            std::fs::write(&config, format!("sources:\n  socket_path: {path}\n"))
                .expect("write config");
            let t = Instant::now();
            let agent = Agent::start_in(&config, &[], limit.as_ref());
            let ready = t.elapsed();
            // The first scrape after ready, then (as in the other tables) two more of warm-up.
            let t = Instant::now();
            agent.scrape();
            let first = t.elapsed();
            agent.scrape();
            agent.scrape();
            let mut latencies = Vec::new();
            let cpu_before = agent.cpu_time();
            for _ in 0..LIMITED_SCRAPES {
                let t = Instant::now();
                agent.scrape();
                latencies.push(t.elapsed());
            }
            let cpu = (agent.cpu_time() - cpu_before) / LIMITED_SCRAPES as u32;
            let worst = latencies.iter().max().copied().unwrap_or_default();
            let throttled = limit.as_ref().map_or(0, CpuLimit::throttled_periods);
            drop(agent);
            let _ = std::fs::remove_file(&config);
            rows.push(format!(
                "{:>5} {:>9} {:>6} {:>10} {:>9.1} {:>9.0} {:>10.0} {:>9.0} {:>10.0} {:>10}",
                world.count,
                path,
                cpus.map_or_else(|| "-".to_string(), |c| format!("{c:.2}")),
                limit.as_ref().map_or("none", |l| l.how),
                ready.as_secs_f64(),
                ms(first),
                ms(median(&mut latencies)),
                ms(worst),
                ms(cpu),
                throttled
            ));
        }
    }
    rows
}

/// The agent's memory with every BPF program (the default) and with none (the drop and peer
/// counters off, socket summaries by sock_diag): the peak since start (VmHWM, start-up
/// included) beside the resident set after the scrapes (VmRSS).
fn memory(world: &World) -> Vec<String> {
    let no_bpf = "probes:\n  packetloss:\n    enabled: false\n  peers:\n    enabled: false\n  dns:\n    enabled: false\n";
    let mut rows = Vec::new();
    for (bpf, path, extra) in [("on", "auto", ""), ("off", "sock_diag", no_bpf)] {
        let m = measure_config(path, extra, &[], None, &|| {});
        rows.push(format!(
            "{:>5} {:>5} {:>10.1} {:>10.1} {:>8.2}",
            world.count,
            bpf,
            m.hwm_kib as f64 / 1024.0,
            m.rss_kib as f64 / 1024.0,
            m.hwm_kib as f64 / m.rss_kib.max(1) as f64
        ));
    }
    rows
}
