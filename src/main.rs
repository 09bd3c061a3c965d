use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use net_exporter::collector::Collector;
use net_exporter::config::{Config, Flags, Mode};
use net_exporter::http::{self, App};
use net_exporter::inventory::Inventory;
use net_exporter::inventory::kubernetes;
use net_exporter::inventory::standalone::Standalone;
use net_exporter::telemetry::{Telemetry, otlp};

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
    init_logging(&cfg.log_level);
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
    match runtime.block_on(run(cfg)) {
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

fn init_logging(level: &str) {
    // The exporters' own transports stay quiet below warn, so the agent does not log about
    // its own pipeline at every push.
    let filter = tracing_subscriber::EnvFilter::try_from_env("NET_EXPORTER_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},h2=warn,hyper=warn,hyper_util=warn,tonic=warn,tower=warn,reqwest=warn,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    use anyhow::Context;

    let inventory: Box<dyn Inventory> = match &cfg.mode {
        Mode::Standalone => Box::new(Standalone::new(&cfg.procfs, &cfg.netns_dir, &cfg.node_name)),
        Mode::Kubernetes(kubeconfig) => {
            let client = kubernetes::client(kubeconfig.as_deref()).await?;
            tracing::info!(node = %cfg.node_name, "Kubernetes mode: watching this node's Pods");
            Box::new(kubernetes::Kubernetes::start(
                client,
                &cfg.node_name,
                &cfg.procfs,
            ))
        }
    };
    let collector = Arc::new(Collector::new(&cfg, inventory));
    let enabled: Vec<usize> = collector.probes().iter().map(|(i, _)| *i).collect();
    let telemetry = Arc::new(Telemetry::new(&cfg, &enabled));
    tracing::info!(
        node = %cfg.node_name,
        probes = ?cfg.probes,
        listen = %cfg.listen_address,
        "net-exporter starting"
    );

    let addrs = cfg.listen_addrs().map_err(|e| anyhow::anyhow!(e))?;
    let listener = bind(&addrs)
        .await
        .with_context(|| format!("listen on {}", cfg.listen_address))?;

    let app = Arc::new(App {
        collector: Arc::clone(&collector),
        telemetry: Arc::clone(&telemetry),
        ready: AtomicBool::new(false),
        telemetry_path: cfg.telemetry_path.clone(),
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

    tracing::info!(address = %listener.local_addr()?, path = %cfg.telemetry_path, "serving");
    axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server")?;
    if let Some(p) = push {
        p.abort();
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
