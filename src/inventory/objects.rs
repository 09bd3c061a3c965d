//! The cluster objects some checks compare the node with, and the peers and dns probes name
//! addresses by: Services, EndpointSlices, Nodes (their names and addresses only are kept),
//! optionally every Pod (what names its workload and its addresses only),
//! NetworkPolicies (their metadata only: the check needs to know that some exist) and the
//! ip-masq-agent ConfigMap. Each kind is watched once per agent (a reflector: one initial
//! list, served from the API server's watch cache or streamed over the watch, then a watch),
//! and only once a check that applies on this node asks for it. Checks read the stores: in a
//! steady state the agent makes no list call at all, however often the checks run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeStatus, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client};

use super::PodInfo;
use super::kubernetes::{ListMode, PodFollower, pod_info, rewatch};

/// How long a check waits for a kind's first list when it asks for it the first time.
pub const FIRST_LIST_WAIT: Duration = Duration::from_secs(15);

/// The namespace and name of the ip-masq-agent's ConfigMap.
pub const IP_MASQ_AGENT: (&str, &str) = ("kube-system", "ip-masq-agent");

/// Where the first list of a kind stands.
#[derive(Clone, Debug, Default)]
enum Listing {
    #[default]
    Pending,
    /// The last attempt failed (and the next is on its way, after a backoff).
    Failed(String),
    /// In; the store follows the watch from now on, and keeps the last known objects while
    /// the API is unreachable.
    Synced,
}

/// One watched kind: its store, and where its first list stands.
struct Watched<K: 'static + kube::Resource>
where
    K::DynamicType: Eq + std::hash::Hash,
{
    store: Store<K>,
    listing: Arc<Mutex<Listing>>,
    /// Watch events applied to the store so far: unchanged, the store is unchanged.
    changes: Arc<AtomicU64>,
}

/// Every Pod of the cluster (`kubernetes.watch_all_pods`) as what names it. A map of its own
/// rather than a reflector store: a `Pod` value takes ~2 KiB however little of it is kept
/// (its spec and status structs are inline), and a cluster has many.
#[derive(Default)]
struct AllPods {
    /// By UID.
    pods: Arc<Mutex<BTreeMap<String, Arc<PodInfo>>>>,
    listing: Arc<Mutex<Listing>>,
    changes: Arc<AtomicU64>,
}

/// What peers are named by: every Service, EndpointSlice and (when watched) Node of the
/// cluster.
pub struct Directory {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Empty when Nodes are not watched (`kubernetes.watch_nodes: false`).
    pub nodes: Vec<Arc<Node>>,
    /// Every Pod of the cluster with `kubernetes.watch_all_pods`, else empty.
    pub pods: Vec<Arc<PodInfo>>,
}

/// The cluster objects, each kind watched from its first request on.
pub struct ClusterObjects {
    client: Client,
    mode: ListMode,
    runtime: tokio::runtime::Handle,
    services: OnceLock<Watched<Service>>,
    slices: OnceLock<Watched<EndpointSlice>>,
    /// Whether the Nodes are watched at all (`kubernetes.watch_nodes`).
    watch_nodes: bool,
    nodes: OnceLock<Watched<Node>>,
    /// Whether every Pod is watched (`kubernetes.watch_all_pods`).
    watch_all_pods: bool,
    pods: OnceLock<AllPods>,
    policies: OnceLock<Watched<PartialObjectMeta<NetworkPolicy>>>,
    masq: OnceLock<Watched<ConfigMap>>,
}

impl ClusterObjects {
    /// Watches start on `runtime` (the agent's) when first asked for.
    /// `watch`: whether [`Self::directory_listed`] includes every Node, and every Pod.
    pub fn new(
        client: Client,
        mode: ListMode,
        runtime: tokio::runtime::Handle,
        watch: &super::kubernetes::KubernetesOptions,
    ) -> Self {
        Self {
            client,
            mode,
            runtime,
            services: OnceLock::new(),
            slices: OnceLock::new(),
            watch_nodes: watch.watch_nodes,
            nodes: OnceLock::new(),
            watch_all_pods: watch.watch_all_pods,
            pods: OnceLock::new(),
            policies: OnceLock::new(),
            masq: OnceLock::new(),
        }
    }

    /// Every Service of the cluster.
    pub fn services(&self) -> Result<Vec<Arc<Service>>> {
        ready(self.services_watch(), "Services")
    }

    /// Every EndpointSlice of the cluster.
    pub fn endpoint_slices(&self) -> Result<Vec<Arc<EndpointSlice>>> {
        ready(self.slices_watch(), "EndpointSlices")
    }

    /// The Services, EndpointSlices and Nodes once all are listed, without waiting (for a
    /// collection: `None` until then); their watches start at the first call.
    pub fn directory_listed(&self) -> Option<Directory> {
        let (services, slices) = (self.services_watch(), self.slices_watch());
        let (nodes, pods) = (self.nodes_watch(), self.pods_watch());
        let listed = |l: &Mutex<Listing>| matches!(*lock(l), Listing::Synced);
        (listed(&services.listing)
            && listed(&slices.listing)
            && nodes.is_none_or(|n| listed(&n.listing))
            && pods.is_none_or(|p| listed(&p.listing)))
        .then(|| Directory {
            services: services.store.state(),
            slices: slices.store.state(),
            nodes: nodes.map(|n| n.store.state()).unwrap_or_default(),
            pods: pods
                .map(|p| lock(&p.pods).values().cloned().collect())
                .unwrap_or_default(),
        })
    }

    /// A number that changes whenever the Services, EndpointSlices or Nodes do (watch
    /// events applied to a store): what is derived from them is rebuilt only when it moved.
    pub fn directory_version(&self) -> u64 {
        let (services, slices) = (self.services_watch(), self.slices_watch());
        let (nodes, pods) = (self.nodes_watch(), self.pods_watch());
        services.changes.load(Ordering::Relaxed)
            + slices.changes.load(Ordering::Relaxed)
            + nodes.map_or(0, |n| n.changes.load(Ordering::Relaxed))
            + pods.map_or(0, |p| p.changes.load(Ordering::Relaxed))
    }

    /// Every Node, trimmed to its name and addresses as it arrives: a Node object is mostly
    /// status (images, conditions, capacity), tens of KiB each, none of which names a peer.
    fn nodes_watch(&self) -> Option<&Watched<Node>> {
        if !self.watch_nodes {
            return None;
        }
        Some(self.nodes.get_or_init(|| {
            self.start(
                Api::all(self.client.clone()),
                watcher::Config::default(),
                "nodes",
                |api, cfg| watcher::watcher(api, cfg).map_ok(|ev| ev.modify(trim_node)),
                PartialEq::eq,
            )
        }))
    }

    /// Every Pod of the cluster, kept as what names it ([`PodInfo`], its labels dropped).
    fn pods_watch(&self) -> Option<&AllPods> {
        if !self.watch_all_pods {
            return None;
        }
        Some(self.pods.get_or_init(|| {
            let all = AllPods::default();
            let (pods, listing) = (Arc::clone(&all.pods), Arc::clone(&all.listing));
            let changes = Arc::clone(&all.changes);
            let (client, mode) = (self.client.clone(), self.mode.clone());
            self.runtime.spawn(async move {
                let mut follower = PodFollower::new(|p: &Pod| {
                    pod_info(p).map(|mut i| {
                        i.labels.clear();
                        Arc::new(i)
                    })
                });
                let up = failure_recorder(Arc::clone(&listing));
                rewatch(
                    Api::<Pod>::all(client),
                    watcher::Config::default(),
                    mode,
                    "all pods",
                    watcher::watcher,
                    up,
                    |ev| {
                        let done = matches!(ev, watcher::Event::InitDone);
                        if follower.apply(ev, &mut lock(&pods)) {
                            changes.fetch_add(1, Ordering::Relaxed);
                        }
                        if done {
                            *lock(&listing) = Listing::Synced;
                        }
                    },
                )
                .await;
            });
            all
        }))
    }

    fn services_watch(&self) -> &Watched<Service> {
        self.services.get_or_init(|| {
            self.start(
                Api::all(self.client.clone()),
                watcher::Config::default(),
                "services",
                watcher::watcher,
                PartialEq::eq,
            )
        })
    }

    fn slices_watch(&self) -> &Watched<EndpointSlice> {
        self.slices.get_or_init(|| {
            self.start(
                Api::all(self.client.clone()),
                watcher::Config::default(),
                "endpointslices",
                watcher::watcher,
                PartialEq::eq,
            )
        })
    }

    /// How many NetworkPolicies the cluster has. Only their metadata
    /// (`PartialObjectMeta`) crosses the network and stays in memory.
    pub fn network_policies(&self) -> Result<usize> {
        let w = self.policies.get_or_init(|| {
            self.start(
                // `Api<PartialObjectMeta<_>>` asks for `PartialObjectMetadata` (kube 5).
                Api::<PartialObjectMeta<NetworkPolicy>>::all(self.client.clone()),
                watcher::Config::default(),
                "networkpolicies",
                watcher::watcher,
                |a, b| a.metadata == b.metadata,
            )
        });
        ready(w, "NetworkPolicies").map(|v| v.len())
    }

    /// The ip-masq-agent's ConfigMap, if there is one.
    pub fn ip_masq_agent(&self) -> Result<Option<Arc<ConfigMap>>> {
        let (ns, name) = IP_MASQ_AGENT;
        let w = self.masq.get_or_init(|| {
            self.start(
                Api::namespaced(self.client.clone(), ns),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
                "configmap ip-masq-agent",
                watcher::watcher,
                PartialEq::eq,
            )
        });
        Ok(ready(w, "the ip-masq-agent ConfigMap")?.into_iter().next())
    }

    /// Starts the reflector of one kind: `watch` (a full watcher or one of metadata) of `api`
    /// into a store, relisting after errors (see `kubernetes::rewatch`). An update that is
    /// `same` as the object stored is not counted as a change.
    fn start<K, T, S>(
        &self,
        api: Api<K>,
        cfg: watcher::Config,
        what: &'static str,
        watch: fn(Api<K>, watcher::Config) -> S,
        same: fn(&T, &T) -> bool,
    ) -> Watched<T>
    where
        K: kube::Resource + Clone + Send + 'static,
        T: kube::Resource + Clone + Send + Sync + 'static,
        T::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
        S: futures::Stream<Item = Result<watcher::Event<T>, watcher::Error>> + Send + 'static,
    {
        let (store, mut writer) = reflector::store::<T>();
        let listing = Arc::new(Mutex::new(Listing::Pending));
        let (failed, done) = (Arc::clone(&listing), Arc::clone(&listing));
        let changes = Arc::new(AtomicU64::new(0));
        let changed = Arc::clone(&changes);
        let mode = self.mode.clone();
        let kept = store.clone();
        self.runtime.spawn(async move {
            let up = failure_recorder(failed);
            rewatch(api, cfg, mode, what, watch, up, |ev| {
                // An update equal to what the store holds (a trimmed Node whose status moved
                // no address) is no change: what is derived from the store is not rebuilt.
                let same = match &ev {
                    watcher::Event::Apply(o) => kept
                        .get(&reflector::ObjectRef::from_obj(o))
                        .is_some_and(|old| same(&old, o)),
                    watcher::Event::Init | watcher::Event::InitApply(_) => true,
                    _ => false,
                };
                writer.apply_watcher_event(&ev);
                if !same {
                    changed.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(ev, watcher::Event::InitDone) {
                    *lock(&done) = Listing::Synced;
                }
            })
            .await;
        });
        Watched {
            store,
            listing,
            changes,
        }
    }
}

/// What a watch reports to `up`: its error, as why the first list failed (kept until one
/// succeeds).
fn failure_recorder(listing: Arc<Mutex<Listing>>) -> impl Fn(Result<(), &watcher::Error>) {
    move |r| {
        if let Err(e) = r {
            let mut l = lock(&listing);
            if !matches!(*l, Listing::Synced) {
                *l = Listing::Failed(e.to_string());
            }
        }
    }
}

/// Keeps of a Node what names it as a peer: its name and addresses.
fn trim_node(node: &mut Node) {
    let addresses = node.status.take().and_then(|s| s.addresses);
    let meta = std::mem::take(&mut node.metadata);
    *node = Node {
        // Nor its UID or resourceVersion: the store keys by name, and without them a status
        // update that moves no address leaves an equal Node (no change to count).
        metadata: kube::api::ObjectMeta {
            name: meta.name,
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses,
            ..Default::default()
        }),
    };
}

/// The objects of `w` once its first list is in, waiting for it at most
/// [`FIRST_LIST_WAIT`] (checks run on blocking threads); an error as soon as a first list
/// failed, until one succeeds.
fn ready<K>(w: &Watched<K>, what: &str) -> Result<Vec<Arc<K>>>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let deadline = Instant::now() + FIRST_LIST_WAIT;
    loop {
        match lock(&w.listing).clone() {
            Listing::Synced => return Ok(w.store.state()),
            Listing::Failed(e) => return Err(anyhow!("listing {what}: {e}")),
            Listing::Pending if Instant::now() >= deadline => {
                return Err(anyhow!(
                    "{what} not listed from the API server yet (waited {FIRST_LIST_WAIT:?})"
                ));
            }
            Listing::Pending => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = format!(
            "{}/tests/fixtures/kubernetes/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn size<T: serde::Serialize>(object: &T) -> usize {
        serde_json::to_vec(object).unwrap().len()
    }

    /// A real-shaped Pod (a kubeadm cluster's CoreDNS replica) as the Pod watch keeps it.
    #[test]
    fn a_pod_of_the_cluster_is_named_by_its_controller() {
        let full: Pod = fixture("pod.json");
        let info = pod_info(&full).unwrap();
        assert_eq!(
            (info.namespace.as_str(), info.name.as_str()),
            ("kube-system", "coredns-7c65d6cfc9-x8m2k")
        );
        assert_eq!(info.workload, "Deployment/coredns");
        assert_eq!(
            info.ips,
            ["10.244.1.17".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(!info.host_network);
        // On the host network, finished: both facts are kept.
        let mut other = full.clone();
        other.spec.as_mut().unwrap().host_network = Some(true);
        other.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let info = pod_info(&other).unwrap();
        assert!(info.host_network);
        assert!(info.ips.is_empty(), "a finished Pod's address is free");
    }

    #[test]
    fn a_trimmed_node_keeps_its_name_and_addresses() {
        let full: Node = fixture("node.json");
        let mut trimmed = full.clone();
        trim_node(&mut trimmed);
        assert_eq!(trimmed.metadata.name.as_deref(), Some("worker-2"));
        let addresses = |n: &Node| n.status.as_ref().and_then(|s| s.addresses.clone());
        assert_eq!(addresses(&trimmed), addresses(&full));
        assert!(addresses(&trimmed).is_some_and(|a| a.len() == 3));
        assert!(
            size(&trimmed) * 8 < size(&full),
            "{} of {} bytes kept",
            size(&trimmed),
            size(&full)
        );
    }

    /// A Node's periodic status report (its conditions' heartbeat, a new resourceVersion)
    /// leaves the trimmed Node equal: no change for the peers to rebuild their directory for.
    #[test]
    fn a_node_status_report_that_moves_no_address_is_no_change() {
        let full: Node = fixture("node.json");
        let mut reported = full.clone();
        reported.metadata.resource_version = Some("999999".into());
        let status = reported.status.as_mut().unwrap();
        status.conditions.as_mut().unwrap()[0].last_heartbeat_time = None;
        let (mut a, mut b) = (full.clone(), reported.clone());
        trim_node(&mut a);
        trim_node(&mut b);
        assert_eq!(a, b);
        // An address that moves is a change.
        let mut moved = reported;
        moved.status.as_mut().unwrap().addresses.as_mut().unwrap()[0].address = "192.0.2.99".into();
        trim_node(&mut moved);
        assert_ne!(a, moved);
    }

    /// The every-Pod watch counts a change only when what it keeps of a Pod changed: a status
    /// update (a container restarted) is not one; a new address, a deletion and a relist that
    /// differs are.
    #[test]
    fn the_pod_watch_counts_only_changes_of_what_it_keeps() {
        use watcher::Event;
        let pod: Pod = fixture("pod.json");
        let mut follower = PodFollower::new(pod_info);
        let mut pods = BTreeMap::new();
        for ev in [Event::Init, Event::InitApply(pod.clone())] {
            assert!(!follower.apply(ev, &mut pods));
        }
        assert!(pods.is_empty(), "a relist replaces the map at its end only");
        assert!(follower.apply(Event::InitDone, &mut pods));
        assert_eq!(pods.len(), 1);

        let mut restarted = pod.clone();
        restarted.metadata.resource_version = Some("999999".into());
        let status = restarted.status.as_mut().unwrap();
        status.container_statuses.as_mut().unwrap()[0].restart_count += 1;
        assert!(!follower.apply(Event::Apply(restarted.clone()), &mut pods));

        let mut moved = restarted;
        moved.status.as_mut().unwrap().pod_ips.as_mut().unwrap()[0].ip = "10.244.1.99".into();
        assert!(follower.apply(Event::Apply(moved.clone()), &mut pods));
        assert_eq!(
            pods.values().next().unwrap().ips[0].to_string(),
            "10.244.1.99"
        );

        // A relist that finds the same Pods changes nothing; one that misses one does.
        for ev in [Event::Init, Event::InitApply(moved.clone())] {
            follower.apply(ev, &mut pods);
        }
        assert!(!follower.apply(Event::InitDone, &mut pods));
        follower.apply(Event::Init, &mut pods);
        assert!(follower.apply(Event::InitDone, &mut pods));
        assert!(pods.is_empty());

        pods.insert("x".into(), pod_info(&moved).unwrap());
        let mut gone = moved;
        gone.metadata.uid = Some("x".into());
        assert!(follower.apply(Event::Delete(gone.clone()), &mut pods));
        assert!(
            !follower.apply(Event::Delete(gone), &mut pods),
            "already gone"
        );
    }
}
