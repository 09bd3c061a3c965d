//! Runs the checks on their intervals and follows the streams some of them watch (the kernel
//! log), feeding `Events`. A check whose prerequisites this node lacks is asked again before
//! each of its runs, said once when where it stands changes, and shown in
//! `netexporter_check_available`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Event, Events};
use crate::checks::{CheckContext, Environment, NodeFacts, Problem, Scheduled};
use crate::inventory::Inventory;
use crate::inventory::objects::ClusterObjects;

/// A check and where it stands on this node.
pub struct Slot {
    pub scheduled: Scheduled,
    /// Why it does not apply here, as last asked (`None`: it does).
    unavailable: Mutex<Option<Option<String>>>,
}

impl Slot {
    pub fn new(scheduled: Scheduled) -> Self {
        Self {
            scheduled,
            unavailable: Mutex::new(None),
        }
    }

    fn name(&self) -> &'static str {
        self.scheduled.registration.name
    }

    /// Asks the prerequisites; says so when the answer changes. `true`: it applies here.
    fn applies(&self, env: &Environment, events: &Events) -> bool {
        let now = self.scheduled.check.prerequisites(env).err();
        let mut last = self.unavailable.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() != Some(&now) {
            match (&now, last.is_some()) {
                (Some(why), _) => {
                    tracing::info!(check = self.name(), reason = %why, "check does not apply on this node")
                }
                (None, true) => tracing::info!(check = self.name(), "check applies now"),
                (None, false) => {}
            }
            events.availability(self.name(), now.clone());
            *last = Some(now.clone());
        }
        now.is_none()
    }
}

pub struct Runner {
    pub inventory: Arc<dyn InventoryView>,
    /// Kubernetes mode: the cluster objects, watched once a check asks for a kind.
    pub objects: Option<Arc<ClusterObjects>>,
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub node: NodeFacts,
    pub checks: Vec<Slot>,
    pub events: Arc<Events>,
}

/// Where the checks' targets come from (the collector's inventory).
pub trait InventoryView: Send + Sync {
    fn inventory(&self) -> &dyn Inventory;
}

impl InventoryView for crate::collector::Collector {
    fn inventory(&self) -> &dyn Inventory {
        crate::collector::Collector::inventory(self)
    }
}

impl Runner {
    fn environment(&self) -> Environment {
        Environment {
            procfs: self.procfs.clone(),
            kubernetes: self.objects.is_some(),
            node: self.node.clone(),
        }
    }

    /// What the checks look at now.
    pub fn context(&self) -> CheckContext {
        let inventory = self.inventory.inventory();
        CheckContext {
            procfs: self.procfs.clone(),
            sysfs: self.sysfs.clone(),
            node: self.node.clone(),
            targets: inventory.discover().unwrap_or_default(),
            cluster: inventory.cluster(),
            objects: self.objects.clone(),
        }
    }

    /// Runs every check that applies here once (streams read as they are now): (check,
    /// probe, result) in registry order, and the checks that do not apply, with why.
    #[allow(clippy::type_complexity)]
    pub fn run_all(
        &self,
    ) -> (
        Vec<(&'static str, &'static str, anyhow::Result<Vec<Problem>>)>,
        Vec<(&'static str, String)>,
    ) {
        let env = self.environment();
        let ctx = self.context();
        let (mut ran, mut skipped) = (Vec::new(), Vec::new());
        for slot in &self.checks {
            let reg = slot.scheduled.registration;
            match slot.scheduled.check.prerequisites(&env) {
                Ok(()) => ran.push((reg.name, reg.probe, slot.scheduled.check.run(&ctx))),
                Err(why) => skipped.push((reg.name, why)),
            }
        }
        (ran, skipped)
    }

    /// Runs each check on its interval, forever; followed streams on threads of their own.
    pub async fn run(self: Arc<Self>) {
        let mut due: Vec<(usize, Instant)> = Vec::new();
        for (i, slot) in self.checks.iter().enumerate() {
            if !slot.scheduled.check.follows() {
                due.push((i, Instant::now()));
            } else {
                let me = Arc::clone(&self);
                std::thread::Builder::new()
                    .name(format!("follow-{}", slot.name()))
                    .spawn(move || me.follow(i))
                    .map_err(|e| tracing::warn!(error = %e, "cannot start a follower thread"))
                    .ok();
            }
        }
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
                    let env = me.environment();
                    let ctx = me.context();
                    for i in run2 {
                        let slot = &me.checks[i];
                        if slot.applies(&env, &me.events) {
                            let reg = slot.scheduled.registration;
                            me.events
                                .report(reg.name, reg.probe, slot.scheduled.check.run(&ctx));
                        }
                    }
                })
                .await;
                for (i, t) in &mut due {
                    if run.contains(i) {
                        *t = now + self.checks[*i].scheduled.interval;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Follows the stream of check `i` until it fails; each problem goes through noise
    /// control keyed by its type and object (for the kernel log: the pattern it matched), so
    /// that a storm of one message is one event per repeat interval and another message goes
    /// out at once.
    fn follow(&self, i: usize) {
        let slot = &self.checks[i];
        if !slot.applies(&self.environment(), &self.events) {
            return;
        }
        let reg = slot.scheduled.registration;
        let result = slot
            .scheduled
            .check
            .follow(&|p| self.events.report_one(reg.name, reg.probe, p));
        if let Err(e) = result {
            tracing::warn!(check = reg.name, error = %format!("{e:#}"), "not following");
            self.events.report(reg.name, reg.probe, Err(e));
        }
    }
}

impl Events {
    /// One problem from a continuous source, under noise control keyed by its type and object.
    pub fn report_one(&self, check: &str, probe: &'static str, p: Problem) {
        let emit = self
            .noise
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .filter_one(check, p, Instant::now());
        if let Some(p) = emit {
            self.emit(Event::new(probe, p));
        }
    }
}
