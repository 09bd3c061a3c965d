//! Kubernetes inventory: the Pods of this node as targets.
//!
//! Two watches (the node's Pods, by field selector `spec.nodeName`, and the Node itself for its
//! pod CIDRs) keep a local view current; `kube`'s watcher lists, watches from the list's
//! resourceVersion, and after an error is replaced by a fresh one (a new list) with backoff.
//! While the API server is unreachable the last known view stays in use,
//! `netexporter_kubernetes_api_up` is 0 and one log line says so.
//!
//! A Pod's network namespace is found without a container runtime API: the Pod's UID is in the
//! cgroup path of its processes (`cgroup.rs`), and any such process's `/proc/PID/ns/net` is the
//! namespace. Pods on the host network share the node's namespace and get no target; a Pod
//! whose processes are not there yet is looked for again at the next collection.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::{ClusterView, Inventory, PodInfo, Target, cgroup};

/// `kubernetes:` in the configuration file: how the agent reads the API server.
#[derive(
    serde::Deserialize, serde::Serialize, schemars::JsonSchema, Debug, Clone, PartialEq, Eq,
)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesOptions {
    /// Make each watch's initial list a streaming list (the initial state sent over the watch,
    /// Kubernetes' WatchList) where the API server offers it; where it refuses (the WatchList
    /// gate off), and with `false`, initial lists are served from its watch cache
    /// (`resourceVersion=0`). Either way no list reaches etcd.
    pub streaming_lists: bool,
    /// Watch every Node of the cluster (keeping only their names and addresses) so that the
    /// peers and dns probes name a connection to another node by that node
    /// (`peer_kind="node"`). Costs one list of every Node at start and a watch event per
    /// Node status update (each a whole Node object, about every 5 minutes per Node when
    /// nothing changes): the API server sends nodes² / 300 s events in all, so above ~500
    /// nodes turn it off (docs/kubernetes.md). With `false` other nodes' addresses stay
    /// addresses; this node's own are named either way.
    pub watch_nodes: bool,
    /// Watch every Pod of the cluster (keeping only what names each: namespace, name,
    /// controller, addresses) so that the peers and dns probes name a Pod of another node
    /// by its workload even when it backs no Service. Off by default: every agent then
    /// receives every Pod change of the cluster (docs/kubernetes.md gives the cost: ~1.3 KB of
    /// memory per Pod, every Pod's whole object on the wire); without it such a Pod stays an
    /// address.
    pub watch_all_pods: bool,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        Self {
            streaming_lists: true,
            watch_nodes: true,
            watch_all_pods: false,
        }
    }
}

#[derive(Default)]
struct Shared {
    pods: BTreeMap<String, PodInfo>,
    node_cidrs: Vec<IpNet>,
    pods_ok: bool,
    node_ok: bool,
    /// Both watches have listed once.
    pods_synced: bool,
    node_synced: bool,
}

pub struct Kubernetes {
    procfs: PathBuf,
    node_name: String,
    shared: Arc<Mutex<Shared>>,
    /// Pod UID -> a process of the Pod found at an earlier collection.
    pids: Mutex<HashMap<String, u32>>,
    selector: Option<super::LabelSelector>,
}

impl Kubernetes {
    /// Starts the watches on the current tokio runtime; only the Pods that match `selector`
    /// are read (all Pods still count for podip).
    pub fn start(
        client: Client,
        mode: ListMode,
        selector: Option<super::LabelSelector>,
        node_name: &str,
        procfs: &Path,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        tokio::spawn(watch_pods(
            client.clone(),
            node_name.to_string(),
            Arc::clone(&shared),
            mode.clone(),
        ));
        tokio::spawn(watch_node(
            client,
            node_name.to_string(),
            Arc::clone(&shared),
            mode,
        ));
        Self {
            procfs: procfs.to_path_buf(),
            node_name: node_name.to_string(),
            shared,
            pids: Mutex::new(HashMap::new()),
            selector,
        }
    }

    /// The netns inode and path of a process, if it still exists.
    fn netns_of(&self, pid: u32) -> Option<(u64, PathBuf)> {
        let path = self.procfs.join(format!("{pid}/ns/net"));
        std::fs::metadata(&path).ok().map(|m| (m.ino(), path))
    }

    fn pod_of(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(self.procfs.join(format!("{pid}/cgroup"))).ok()?;
        cgroup::pod_uid(&text)
    }

    /// Finds a process of each wanted Pod: first where it was last time, then by one scan of
    /// every process's cgroup file.
    fn locate(&self, wanted: &[&str]) -> HashMap<String, u32> {
        let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        pids.retain(|uid, pid| {
            wanted.contains(&uid.as_str()) && self.pod_of(*pid).as_deref() == Some(uid)
        });
        if wanted.iter().any(|uid| !pids.contains_key(*uid))
            && let Ok(dir) = std::fs::read_dir(&self.procfs)
        {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(uid) = self.pod_of(pid)
                    && wanted.contains(&uid.as_str())
                {
                    // The lowest pid is the sandbox's, which lives as long as the Pod.
                    let e = pids.entry(uid).or_insert(pid);
                    *e = (*e).min(pid);
                }
            }
        }
        pids.clone()
    }
}

impl Inventory for Kubernetes {
    fn discover(&self) -> Result<Vec<Target>> {
        let own = std::fs::metadata(self.procfs.join("self/ns/net"))
            .map(|m| m.ino())
            .context("the agent's own network namespace")?;
        let mut targets = vec![Target {
            inode: own,
            ns_path: None,
            labels: vec![("k8s_node", self.node_name.clone())],
        }];
        let pods: Vec<PodInfo> = {
            let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared
                .pods
                .values()
                .filter(|p| !p.host_network && !p.excluded)
                .filter(|p| self.selector.as_ref().is_none_or(|s| s.matches(&p.labels)))
                .cloned()
                .collect()
        };
        let wanted: Vec<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        let pids = self.locate(&wanted);
        let mut seen = std::collections::HashSet::new();
        for pod in &pods {
            let Some((inode, path)) = pids.get(&pod.uid).and_then(|pid| self.netns_of(*pid)) else {
                tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), "no process of the Pod yet");
                continue;
            };
            // A Pod whose processes run in the node's namespace (host network) has no series
            // of its own; two Pods never share one namespace, but a stale pid could.
            if inode == own || !seen.insert(inode) {
                continue;
            }
            targets.push(Target {
                inode,
                ns_path: Some(path),
                labels: vec![
                    ("k8s_node", self.node_name.clone()),
                    ("k8s_namespace", pod.namespace.clone()),
                    ("k8s_pod", pod.name.clone()),
                ],
            });
        }
        Ok(targets)
    }

    fn cluster(&self) -> Option<Arc<ClusterView>> {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        Some(Arc::new(ClusterView {
            pods: s.pods.values().cloned().collect(),
            node_cidrs: s.node_cidrs.clone(),
            api_up: s.pods_ok && s.node_ok,
            synced: s.pods_synced && s.node_synced,
        }))
    }
}

pub(crate) fn pod_info(p: &Pod) -> Option<PodInfo> {
    let meta = &p.metadata;
    let status = p.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_ref())
            .and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    Some(PodInfo {
        uid: meta.uid.clone()?,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone()?,
        host_network: p
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false),
        // A finished Pod's IP is back in the pool.
        ips: if matches!(phase, "Succeeded" | "Failed") {
            Vec::new()
        } else {
            ips
        },
        excluded: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get("net-exporter.io/exclude"))
            .is_some_and(|v| v == "true"),
        labels: meta.labels.clone().unwrap_or_default(),
        workload: workload(meta),
    })
}

/// The workload of a Pod (see [`PodInfo::workload`]).
fn workload(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(owner) = controller else {
        return format!("Pod/{}", meta.name.as_deref().unwrap_or_default());
    };
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    match owner.kind.as_str() {
        "ReplicaSet" => {
            if let Some(deployment) = hash.and_then(|h| {
                owner
                    .name
                    .strip_suffix(h.as_str())
                    .and_then(|n| n.strip_suffix('-'))
            }) {
                return format!("Deployment/{deployment}");
            }
        }
        "Job" => {
            if let Some((cronjob, minutes)) = owner.name.rsplit_once('-')
                && minutes.len() >= 8
                && minutes.bytes().all(|b| b.is_ascii_digit())
            {
                return format!("CronJob/{cronjob}");
            }
        }
        _ => {}
    }
    format!("{}/{}", owner.kind, owner.name)
}

fn node_cidrs(n: &Node) -> Vec<IpNet> {
    let spec = n.spec.as_ref();
    let mut list: Vec<&String> = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .into_iter()
        .flatten()
        .collect();
    if list.is_empty() {
        list.extend(spec.and_then(|s| s.pod_cidr.as_ref()));
    }
    list.into_iter().filter_map(|c| c.parse().ok()).collect()
}

/// Logs an API outage once when it starts and once when it ends.
fn report(what: &str, ok: &mut bool, now_ok: bool, error: Option<&dyn std::fmt::Display>) {
    if *ok && !now_ok {
        tracing::warn!(watch = what, error = %error.map(|e| e.to_string()).unwrap_or_default(), "Kubernetes API unreachable; serving the last known objects until it is back");
    } else if !*ok && now_ok {
        tracing::info!(watch = what, "Kubernetes API reachable");
    }
    *ok = now_ok;
}

/// How a watcher makes its initial list: a streaming list (`sendInitialEvents`, the initial
/// state sent over the watch itself) where the API server offers it, else a list served from
/// its watch cache (`resourceVersion=0`). Either way no list reaches etcd. Shared by every
/// watch of one agent: the first refusal (422, as servers with the WatchList gate off answer)
/// turns streaming off for all, said once.
#[derive(Clone, Debug)]
pub struct ListMode(Arc<AtomicBool>);

impl ListMode {
    pub fn new(streaming: bool) -> Self {
        Self(Arc::new(AtomicBool::new(streaming)))
    }

    pub fn streaming(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `base` with this mode's initial list, and whether that is a streaming one.
    pub fn config(&self, base: watcher::Config) -> (watcher::Config, bool) {
        let streaming = self.streaming();
        let cfg = if streaming {
            base.streaming_lists()
        } else {
            // Unpaged: kube leaves `resourceVersion=0` out of a list with a `limit`, which
            // would make every page a consistent read from etcd. The watch cache serves the
            // whole list in one answer either way.
            let mut cfg = base.any_semantic();
            cfg.page_size = None;
            cfg
        };
        (cfg, streaming)
    }

    /// Whether `e`, the answer to a watcher started `streaming`, is the API server refusing
    /// a streaming list; if so, lists from now on.
    fn refused(&self, e: &watcher::Error, streaming: bool) -> bool {
        let code = match e {
            watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
            watcher::Error::WatchError(s) => s.code,
            _ => return false,
        };
        if streaming && matches!(code, 400 | 422) {
            if self.0.swap(false, Ordering::Relaxed) {
                tracing::info!(
                    code,
                    "the API server does not offer streaming lists; initial lists come from its watch cache"
                );
            }
            return true;
        }
        false
    }
}

/// The watches below start a fresh watcher after every error (after a backoff). `kube`'s
/// watcher, left to recover by itself, gives no sign that the API answers again: it emits
/// `Init` before its list request is even sent (and each `Init` resets `default_backoff`, so
/// failed lists were retried every 0.8 s), and it resumes an interrupted watch without any
/// event while nothing changes. A fresh watcher lists first, so its `InitApply`/`InitDone`
/// prove that the API is back; the view it replaces stays in use until its `InitDone`. The
/// backoff is jittered (`DefaultBackoff`: exponential from 0.8 s to 30 s, each delay drawn at
/// random below twice its base), so that the agents of a whole cluster do not come back in
/// step after an API server restart.
fn rewatch_delay(backoff: &mut watcher::DefaultBackoff) -> std::time::Duration {
    backoff.next().unwrap_or(std::time::Duration::from_secs(30))
}

/// A 410 Gone during a watch: the history is compacted and a relist is due; not an outage.
fn is_gone(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

/// Watches `api` for ever, a fresh watcher after each error (see [`rewatch_delay`]): reports
/// the API reachable (`what`, `up(Ok)`) at each event that shows it, and unreachable
/// (`up(Err)`) at an error other than 410 Gone, and hands every event to `apply`. `watch` makes the watcher from the
/// API and the configuration (a full one, or one of metadata only).
pub(crate) async fn rewatch<K, T, S>(
    api: Api<K>,
    base: watcher::Config,
    mode: ListMode,
    what: &'static str,
    watch: impl Fn(Api<K>, watcher::Config) -> S,
    up: impl Fn(Result<(), &watcher::Error>),
    mut apply: impl FnMut(Event<T>),
) where
    K: kube::Resource + Clone,
    S: futures::Stream<Item = Result<Event<T>, watcher::Error>>,
{
    // `true` at start so that a first failure is reported.
    let mut ok = true;
    let mut backoff = watcher::DefaultBackoff::default();
    loop {
        let (cfg, streaming) = mode.config(base.clone());
        let mut stream = Box::pin(watch(api.clone(), cfg));
        let mut now_refused = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(ev) => {
                    // `Init` is sent before the list request: it says nothing about the API.
                    if !matches!(ev, Event::Init) {
                        report(what, &mut ok, true, None);
                        up(Ok(()));
                    }
                    if matches!(ev, Event::InitDone) {
                        backoff.reset();
                    }
                    apply(ev);
                }
                Err(e) => {
                    now_refused = mode.refused(&e, streaming);
                    if !is_gone(&e) && !now_refused {
                        report(what, &mut ok, false, Some(&e));
                        up(Err(&e));
                    }
                    break;
                }
            }
        }
        if !now_refused {
            tokio::time::sleep(rewatch_delay(&mut backoff)).await;
        }
    }
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A map of Pods by UID that follows a Pod watch, holding what `keep` takes of each Pod. A
/// relist builds up aside; the map it replaces stays in use until the relist's `InitDone`.
pub(crate) struct PodFollower<V, F> {
    keep: F,
    relist: BTreeMap<String, V>,
}

impl<V: PartialEq, F: Fn(&Pod) -> Option<V>> PodFollower<V, F> {
    pub(crate) fn new(keep: F) -> Self {
        Self {
            keep,
            relist: BTreeMap::new(),
        }
    }

    /// Applies `ev` to `pods`; whether what `pods` holds changed (a Pod's status update that
    /// changes nothing kept is no change: on a busy cluster most events are such).
    pub(crate) fn apply(&mut self, ev: Event<Pod>, pods: &mut BTreeMap<String, V>) -> bool {
        match ev {
            Event::Init => {
                self.relist.clear();
                false
            }
            Event::InitApply(p) => {
                if let Some((uid, kept)) = self.kept(&p) {
                    self.relist.insert(uid, kept);
                }
                false
            }
            Event::InitDone => {
                let relisted = std::mem::take(&mut self.relist);
                let changed = relisted != *pods;
                *pods = relisted;
                changed
            }
            Event::Apply(p) => match self.kept(&p) {
                Some((uid, kept)) if pods.get(&uid) != Some(&kept) => {
                    pods.insert(uid, kept);
                    true
                }
                Some(_) => false,
                // Nothing kept of it any more (e.g. it lost its UID): as if deleted.
                None => Self::remove(&p, pods),
            },
            Event::Delete(p) => Self::remove(&p, pods),
        }
    }

    fn kept(&self, p: &Pod) -> Option<(String, V)> {
        let uid = p.metadata.uid.clone()?;
        Some((uid, (self.keep)(p)?))
    }

    fn remove(p: &Pod, pods: &mut BTreeMap<String, V>) -> bool {
        p.metadata
            .uid
            .as_ref()
            .is_some_and(|uid| pods.remove(uid).is_some())
    }
}

async fn watch_pods(client: Client, node: String, shared: Arc<Mutex<Shared>>, mode: ListMode) {
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut pods = PodFollower::new(pod_info);
    let up_shared = Arc::clone(&shared);
    rewatch(
        Api::<Pod>::all(client),
        cfg,
        mode,
        "pods",
        watcher::watcher,
        move |r| lock(&up_shared).pods_ok = r.is_ok(),
        |ev| {
            let done = matches!(ev, Event::InitDone);
            let s = &mut *lock(&shared);
            pods.apply(ev, &mut s.pods);
            s.pods_synced |= done;
        },
    )
    .await;
}

async fn watch_node(client: Client, node: String, shared: Arc<Mutex<Shared>>, mode: ListMode) {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let up_shared = Arc::clone(&shared);
    rewatch(
        Api::<Node>::all(client),
        cfg,
        mode,
        "node",
        watcher::watcher,
        move |r| lock(&up_shared).node_ok = r.is_ok(),
        |ev| match ev {
            Event::InitApply(n) | Event::Apply(n) => lock(&shared).node_cidrs = node_cidrs(&n),
            Event::InitDone => lock(&shared).node_synced = true,
            Event::Init | Event::Delete(_) => {}
        },
    )
    .await;
}

/// A client from an explicit kubeconfig file, else the standard inference (`KUBECONFIG`,
/// `~/.kube/config`, in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("Kubernetes client configuration")?,
    };
    // No retries inside the client: it would retry a 429/503/504 up to 15 times for minutes
    // (5 ms doubling up to 1000 s) before the watches see an error, all the while reporting
    // the API as up. The watches retry with their own backoff and report the outage.
    config.default_retry = false;
    Client::try_from(config).context("Kubernetes client")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn meta(name: &str, owner: Option<(&str, &str)>, hash: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            labels: hash.map(|h| [("pod-template-hash".to_string(), h.to_string())].into()),
            owner_references: owner.map(|(kind, name)| {
                vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: kind.into(),
                    name: name.into(),
                    uid: "u".into(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn workloads_of_pods() {
        let w = |name, owner, hash| workload(&meta(name, owner, hash));
        assert_eq!(
            w(
                "api-5d8f7c9b4-x2x9k",
                Some(("ReplicaSet", "api-5d8f7c9b4")),
                Some("5d8f7c9b4")
            ),
            "Deployment/api"
        );
        // A ReplicaSet of its own: its name does not end with the Pod's template hash.
        assert_eq!(
            w("rs-abcde", Some(("ReplicaSet", "rs")), Some("5d8f7c9b4")),
            "ReplicaSet/rs"
        );
        assert_eq!(
            w("db-0", Some(("StatefulSet", "db")), None),
            "StatefulSet/db"
        );
        assert_eq!(
            w(
                "backup-29345678-abcde",
                Some(("Job", "backup-29345678")),
                None
            ),
            "CronJob/backup"
        );
        assert_eq!(w("once-xyz", Some(("Job", "once")), None), "Job/once");
        assert_eq!(w("static", None, None), "Pod/static");
    }
}
