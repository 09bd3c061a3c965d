mod diagnose;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use net_exporter::collector::Collector;
use net_exporter::config::{Command, Config, Flags, Mode};
use net_exporter::events::otlp::OtlpLogs;
use net_exporter::events::runner::{InventoryView, Runner, Slot};
use net_exporter::events::{Event, EventSink, Events, Sink, Stdout};
use net_exporter::http::{self, App};
use net_exporter::inventory::Inventory;
use net_exporter::inventory::kubernetes::{self, ListMode};
use net_exporter::inventory::objects::ClusterObjects;
use net_exporter::inventory::standalone::Standalone;
use net_exporter::telemetry::export::OtlpProtocol;
use net_exporter::telemetry::traces::{TraceConfig, Traces};
use net_exporter::telemetry::{self, ExportStats, Telemetry, otlp};

fn main() -> ExitCode {
    limit_malloc_arenas();
    let flags = Flags::parse();
    let cfg = match Config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("net-exporter: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let trace_cfg = match TraceConfig::from_env(&|k| std::env::var(k).ok()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("net-exporter: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let diagnose = match &flags.command {
        Some(Command::Diagnose {
            output,
            pod,
            window,
            top,
        }) => {
            if !matches!(output.as_str(), "table" | "json") {
                eprintln!(
                    "net-exporter: configuration error: --output: {output:?} is not table or json"
                );
                return ExitCode::from(2);
            }
            let window = match humantime::parse_duration(window) {
                Ok(w) if !w.is_zero() => w,
                _ => {
                    eprintln!(
                        "net-exporter: configuration error: --window: {window:?} is not a duration above zero (e.g. 10s)"
                    );
                    return ExitCode::from(2);
                }
            };
            Some(Diagnosis {
                output: output.clone(),
                pod: pod.as_deref().map(diagnose::Target::parse),
                window,
                top: *top,
            })
        }
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("net-exporter: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The agent's collections are traced (not diagnose's); the exporter needs the runtime.
    let trace_cfg = trace_cfg.filter(|_| diagnose.is_none());
    let traces = match &trace_cfg {
        None => None,
        Some(t) => match Traces::start(t, cfg.resource(), runtime.handle()) {
            Ok(traces) => Some(traces),
            Err(e) => {
                eprintln!("net-exporter: configuration error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    init_logging(cfg.log_level.as_str(), traces.as_ref());
    raise_open_files_limit();
    if let Some(t) = &trace_cfg {
        tracing::info!(endpoint = %t.endpoint, protocol = ?t.protocol, "trace export on");
    }
    if let Some(Diagnosis {
        output,
        pod: Some(target),
        window,
        top,
    }) = &diagnose
    {
        return match runtime.block_on(run_diagnose_pod(cfg, target, *window, output, *top)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("net-exporter diagnose: {e:#}");
                ExitCode::from(3)
            }
        };
    }
    if let Some(Diagnosis { output, .. }) = diagnose {
        return match runtime.block_on(run_diagnose(cfg, &output)) {
            Ok(true) => ExitCode::from(1),
            Ok(false) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("net-exporter diagnose: {e:#}");
                ExitCode::from(3)
            }
        };
    }
    // TLS material loads before anything starts: a bad certificate or key exits with 2.
    let server = match http::Server::new(&cfg.web) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("net-exporter: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cfg, server, traces)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "net-exporter stopped");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own malloc arena; the collection's worker threads
/// and the runtime's blocking threads then each keep freed memory around. Two arenas cut the
/// agent's RSS by a fifth at 100 namespaces and a third at 250 (`make bench`), at no
/// measurable CPU cost. Must run before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Raises the soft limit of open files to the hard one, as Go's runtime does for its programs.
/// Each namespace's session holds a few descriptors (its /proc files, two netlink sockets), so
/// a node with hundreds of Pods needs more than the usual soft limit of 1024; the hard limit is
/// what the operator allows.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "open files limit raised"),
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

/// Logs to stderr, filtered by `--log.level` or `NET_EXPORTER_LOG`; with `traces`, the
/// collection's spans also go to the trace pipeline, through a filter of their own.
fn init_logging(level: &str, traces: Option<&Traces>) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    // The exporters' own transports stay quiet below warn, so the agent does not log about
    // its own pipeline at every push.
    let filter = tracing_subscriber::EnvFilter::try_from_env("NET_EXPORTER_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},h2=warn,hyper=warn,hyper_util=warn,tonic=warn,tower=warn,reqwest=warn,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn"
        ))
    });
    // Colors only on a terminal: container logs and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(fmt)
        .with(traces.map(Traces::layer))
        .init();
}

/// The inventory for the configured mode, and in Kubernetes mode the cluster objects the
/// checks read (watched once a check asks for a kind).
async fn inventory(
    cfg: &Config,
) -> anyhow::Result<(Box<dyn Inventory>, Option<Arc<ClusterObjects>>)> {
    Ok(match &cfg.mode {
        Mode::Standalone => (
            Box::new(Standalone::new(
                &cfg.procfs,
                &cfg.netns_dir,
                &cfg.node_name,
                cfg.targets.clone(),
            )),
            None,
        ),
        Mode::Kubernetes(kubeconfig) => {
            let client = kubernetes::client(kubeconfig.as_deref()).await?;
            let mode = ListMode::new(cfg.kubernetes.streaming_lists);
            tracing::info!(node = %cfg.node_name, "Kubernetes mode: watching this node's Pods");
            let objects = ClusterObjects::new(
                client.clone(),
                mode.clone(),
                tokio::runtime::Handle::current(),
                &cfg.kubernetes,
            );
            (
                Box::new(kubernetes::Kubernetes::start(
                    client,
                    mode,
                    cfg.targets.pod_selector.clone(),
                    &cfg.node_name,
                    &cfg.procfs,
                )),
                Some(Arc::new(objects)),
            )
        }
    })
}

/// Event sinks as configured; the OTLP ones count their failures into `stats`.
fn event_sinks(cfg: &Config, stats: &ExportStats) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    let resource = cfg.resource();
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    for s in &cfg.event_sinks {
        sinks.push(match s {
            EventSink::Stdout => Box::new(Stdout),
            EventSink::Otlp { endpoint, protocol } => Box::new(OtlpLogs::new(
                "otlp",
                endpoint,
                *protocol,
                resource.clone(),
                &cfg.node_name,
                cfg.event_export,
                Arc::clone(&stats.otlp_logs_failures),
            )?),
            EventSink::Loki { endpoint } => Box::new(OtlpLogs::new(
                "loki",
                endpoint,
                OtlpProtocol::HttpProtobuf,
                resource.clone(),
                &cfg.node_name,
                cfg.event_export,
                Arc::clone(&stats.loki_logs_failures),
            )?),
        });
    }
    Ok(sinks)
}

/// The checks as configured, on the targets of `inventory`.
fn runner(
    cfg: &Config,
    inventory: Arc<dyn InventoryView>,
    objects: Option<Arc<ClusterObjects>>,
    events: impl Into<Arc<Events>>,
) -> anyhow::Result<Runner> {
    Ok(Runner {
        inventory,
        objects,
        procfs: cfg.procfs.clone(),
        sysfs: cfg.sysfs.clone(),
        node: cfg.checks.node.clone(),
        checks: cfg.checks.build()?.into_iter().map(Slot::new).collect(),
        events: events.into(),
    })
}

/// What `diagnose` was asked.
struct Diagnosis {
    output: String,
    /// `--pod`: a peer report instead of the checks.
    pod: Option<diagnose::Target>,
    window: std::time::Duration,
    top: usize,
}

/// The inventory, waiting (at most 5 s) for a Kubernetes view to list the node's Pods.
async fn synced_inventory(
    cfg: &Config,
) -> anyhow::Result<(Box<dyn Inventory>, Option<Arc<ClusterObjects>>)> {
    let (inventory, objects) = inventory(cfg).await?;
    if objects.is_some() {
        for _ in 0..50 {
            if inventory.cluster().is_some_and(|c| c.synced) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Ok((inventory, objects))
}

/// `diagnose --pod`: the peers and dns probes alone, collected at the start and the end of
/// `window`, and the target's peers and resolvers from the last collection (a query of the
/// window's last `probes.dns.timeout` not answered yet is not a timeout yet).
async fn run_diagnose_pod(
    cfg: Config,
    target: &diagnose::Target,
    window: std::time::Duration,
    output: &str,
    top: usize,
) -> anyhow::Result<()> {
    let (inventory, objects) = synced_inventory(&cfg).await?;
    let mut settings = cfg.collector_settings();
    settings.node.cluster_objects = objects;
    settings
        .probes
        .retain(|(r, _)| r.name == "peers" || r.name == "dns");
    if !settings.probes.iter().any(|(r, _)| r.name == "peers") {
        anyhow::bail!("the peers probe is disabled (probes.peers.enabled, --collector.disable)");
    }
    let collector = Arc::new(Collector::new(settings, inventory));
    let first = collector.collect().await;
    if let Some((_, Some(why))) = first.availability.iter().find(|(p, _)| *p == "peers") {
        anyhow::bail!("the peers probe cannot run on this node: {why}");
    }
    // Without DNS (disabled, or no cgroup v2 here) the peers are still worth showing.
    match first.availability.iter().find(|(p, _)| *p == "dns") {
        Some((_, Some(why))) => eprintln!("no DNS in this report: {why}"),
        None => eprintln!("no DNS in this report: the dns probe is disabled"),
        Some((_, None)) => {}
    }
    eprintln!("watching the connections of {target:?} for {window:?} ...");
    tokio::time::sleep(window).await;
    // The peers probe samples open connections after it reads its maps: a second collection
    // reads what the first one's samples added (the RTT of connections still open).
    collector.collect().await;
    let snapshot = collector.collect().await;
    if let Some(failed) = snapshot
        .collectors
        .iter()
        .find(|c| c.name == "peers" && !c.success)
    {
        eprintln!(
            "the peers probe failed in some namespace ({} failures so far)",
            failed.errors_total
        );
    }
    let report = diagnose::report(&snapshot, target);
    if output == "json" {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", diagnose::table(&report, top));
    }
    Ok(())
}

/// Runs every check once and prints the problems; `Ok(true)` when there are any.
async fn run_diagnose(cfg: Config, output: &str) -> anyhow::Result<bool> {
    let (inventory, objects) = synced_inventory(&cfg).await?;
    let collector = Arc::new(Collector::new(cfg.collector_settings(), inventory));
    let runner = runner(
        &cfg,
        collector,
        objects,
        Events::new(Vec::new(), cfg.checks.repeat_interval),
    )?;
    let (results, skipped) = tokio::task::spawn_blocking(move || runner.run_all()).await?;
    for (check, why) in skipped {
        eprintln!("{check} does not apply here: {why}");
    }
    let mut found = false;
    let mut rows = Vec::new();
    for (check, probe, result) in results {
        match result {
            Ok(problems) => {
                for p in problems {
                    found = true;
                    let e = Event::new(probe, p);
                    if output == "json" {
                        println!("{}", e.json_line());
                    } else {
                        rows.push((e.kind.to_string(), e.msg));
                    }
                }
            }
            Err(e) => eprintln!("could not check {check}: {e:#}"),
        }
    }
    if output == "table" {
        if rows.is_empty() {
            println!("no problem found");
        } else {
            let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(4).max(4);
            println!("{:<w$}  MESSAGE", "TYPE");
            for (k, m) in rows {
                println!("{k:<w$}  {m}");
            }
        }
    }
    Ok(found)
}

async fn run(cfg: Config, server: http::Server, traces: Option<Traces>) -> anyhow::Result<()> {
    use anyhow::Context;

    let (inventory, objects) = inventory(&cfg).await?;
    let mut settings = cfg.collector_settings();
    settings.node.cluster_objects = objects.clone();
    let collector = Arc::new(Collector::new(settings, inventory));
    let starting = Arc::clone(&collector);
    tokio::task::spawn_blocking(move || starting.start_probes())
        .await
        .context("starting the probes")?;
    let enabled: Vec<usize> = collector.enabled().to_vec();
    let export_stats = Arc::new(ExportStats {
        otlp_traces_failures: traces.as_ref().map(Traces::failures),
        ..ExportStats::default()
    });
    let events = Arc::new(Events::new(
        event_sinks(&cfg, &export_stats)?,
        cfg.checks.repeat_interval,
    ));
    let telemetry = Arc::new(Telemetry::new(
        cfg.resource(),
        cfg.otlp.is_some(),
        &enabled,
        Some(Arc::clone(&events) as Arc<dyn telemetry::EventStats>),
        export_stats,
    ));
    let runner = Arc::new(runner(
        &cfg,
        Arc::clone(&collector) as Arc<dyn InventoryView>,
        objects,
        Arc::clone(&events),
    )?);
    let checks = tokio::spawn(runner.run());
    let probes: Vec<&str> = cfg.probes.iter().map(|p| p.registration.name).collect();
    tracing::info!(
        node = %cfg.node_name,
        probes = ?probes,
        listen = %cfg.web.listen_address,
        "net-exporter starting"
    );

    let addrs = cfg.web.listen_addrs().map_err(|e| anyhow::anyhow!(e))?;
    let listener = bind(&addrs)
        .await
        .with_context(|| format!("listen on {}", cfg.web.listen_address))?;

    let app = Arc::new(App {
        collector: Arc::clone(&collector),
        telemetry: Arc::clone(&telemetry),
        ready: AtomicBool::new(false),
        telemetry_path: cfg.web.telemetry_path.clone(),
    });
    {
        // The first collection opens every namespace's session; readiness waits for it.
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let snap = app.collector.collect().await;
            app.ready.store(true, Ordering::Relaxed);
            tracing::info!(targets = snap.targets, "first collection done");
        });
    }
    let push = cfg.otlp.clone().map(|o| {
        tokio::spawn(otlp::push_loop(
            o,
            Arc::clone(&collector),
            Arc::clone(&telemetry),
        ))
    });

    if server.has_auth() && !server.is_tls() {
        tracing::warn!("basic auth without TLS: passwords cross the network in clear text");
    }
    tracing::info!(
        address = %listener.local_addr()?,
        path = %cfg.web.telemetry_path,
        tls = server.is_tls(),
        basic_auth = server.has_auth(),
        "serving"
    );
    server
        .serve(listener, app, shutdown_signal())
        .await
        .context("HTTP server")?;
    if let Some(p) = push {
        p.abort();
    }
    checks.abort();
    // The OTLP log sinks export from a thread of their own: flushing blocks.
    let _ = tokio::task::spawn_blocking(move || events.shutdown()).await;
    if let Some(t) = traces {
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    telemetry.shutdown();
    tracing::info!("net-exporter stopped");
    Ok(())
}

async fn bind(addrs: &[std::net::SocketAddr]) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in addrs {
        match tokio::net::TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => {
                // `:PORT` means all addresses; where IPv6 is off, fall back to IPv4.
                if a.ip().is_unspecified() && a.is_ipv6() {
                    let v4 = std::net::SocketAddr::from(([0, 0, 0, 0], a.port()));
                    if let Ok(l) = tokio::net::TcpListener::bind(v4).await {
                        return Ok(l);
                    }
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to listen on")))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
}
