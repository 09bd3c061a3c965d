//! Runs the checks on their intervals and follows the kernel log, feeding `Events`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Event, Events};
use crate::checks::{self, CheckContext, CheckOptions, KERNEL_LOG, Problem};
use crate::collector::Collector;

pub struct Runner {
    pub collector: Arc<Collector>,
    pub kube: Option<kube::Client>,
    pub options: CheckOptions,
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub events: Arc<Events>,
}

impl Runner {
    /// What the checks look at now.
    pub fn context(&self) -> CheckContext {
        let targets = self.collector.inventory().discover().unwrap_or_default();
        CheckContext {
            procfs: self.procfs.clone(),
            sysfs: self.sysfs.clone(),
            options: self.options.clone(),
            targets,
            cluster: self.collector.inventory().cluster(),
            kube: self.kube.clone(),
        }
    }

    /// Runs every enabled check once; (check, probe, result) in registry order.
    pub fn run_all(&self) -> Vec<(&'static str, &'static str, anyhow::Result<Vec<Problem>>)> {
        let ctx = self.context();
        let mut out: Vec<_> = checks::CHECKS
            .iter()
            .filter(|c| self.options.enabled(c.name()))
            .map(|c| (c.name(), c.probe(), c.run(&ctx)))
            .collect();
        if self.options.enabled(KERNEL_LOG) {
            out.push((
                KERNEL_LOG,
                "nodeconfig",
                checks::kernel_log::scan(
                    &self.options.kernel_log_path,
                    &self.options.kernel_log_patterns,
                ),
            ));
        }
        out
    }

    /// Runs each check on its interval, forever; the kernel log on a thread of its own.
    pub async fn run(self: Arc<Self>) {
        if self.options.enabled(KERNEL_LOG) {
            let me = Arc::clone(&self);
            std::thread::Builder::new()
                .name("kernel-log".into())
                .spawn(move || me.follow_kernel_log())
                .map_err(|e| tracing::warn!(error = %e, "cannot start the kernel log follower"))
                .ok();
        }
        let mut due: Vec<(usize, Instant)> = checks::CHECKS
            .iter()
            .enumerate()
            .filter(|(_, c)| self.options.enabled(c.name()))
            .map(|(i, _)| (i, Instant::now()))
            .collect();
        loop {
            let now = Instant::now();
            let run: Vec<usize> = due
                .iter()
                .filter(|(_, t)| *t <= now)
                .map(|(i, _)| *i)
                .collect();
            if !run.is_empty() {
                let me = Arc::clone(&self);
                let run2 = run.clone();
                // Checks read files and run commands: off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    let ctx = me.context();
                    for i in run2 {
                        let c = checks::CHECKS[i];
                        me.events.report(c.name(), c.probe(), c.run(&ctx));
                    }
                })
                .await;
                for (i, t) in &mut due {
                    if run.contains(i) {
                        *t = now + self.options.interval_of(checks::CHECKS[*i].name());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn follow_kernel_log(&self) {
        let path = &self.options.kernel_log_path;
        let result = checks::kernel_log::follow(path, &self.options.kernel_log_patterns, |p| {
            // One noise-control slot per pattern: a storm of one message is one event per
            // repeat interval, another message goes out at once.
            self.events.report_one(KERNEL_LOG, p);
        });
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "not following the kernel log");
            self.events.report(KERNEL_LOG, "nodeconfig", Err(e));
        }
    }
}

impl Events {
    /// One problem from a continuous source, under noise control keyed by its type and object
    /// (for the kernel log: the pattern it matched).
    pub fn report_one(&self, slot: &str, p: Problem) {
        let emit = self
            .noise
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .filter_one(slot, p, Instant::now());
        if let Some(p) = emit {
            self.emit(Event::new("nodeconfig", p));
        }
    }
}
