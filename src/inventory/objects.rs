//! The cluster objects some checks compare the node with, and the peers and dns probes name
//! addresses by: Services, EndpointSlices, Nodes (their names and addresses only are kept),
//! NetworkPolicies (their metadata only: the check needs to know that some exist) and the
//! ip-masq-agent ConfigMap. Each kind is watched once per agent (a reflector: one initial
//! list, served from the API server's watch cache or streamed over the watch, then a watch),
//! and only once a check that applies on this node asks for it. Checks read the stores: in a
//! steady state the agent makes no list call at all, however often the checks run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client};

use super::kubernetes::{ListMode, rewatch};

/// How long a check waits for a kind's first list when it asks for it the first time.
pub const FIRST_LIST_WAIT: Duration = Duration::from_secs(15);

/// The namespace and name of the ip-masq-agent's ConfigMap.
pub const IP_MASQ_AGENT: (&str, &str) = ("kube-system", "ip-masq-agent");

/// Where the first list of a kind stands.
#[derive(Clone, Debug)]
enum Listing {
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

/// What peers are named by: every Service, EndpointSlice and (when watched) Node of the
/// cluster.
pub struct Directory {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Empty when Nodes are not watched (`kubernetes.watch_nodes: false`).
    pub nodes: Vec<Arc<Node>>,
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
    policies: OnceLock<Watched<PartialObjectMeta<NetworkPolicy>>>,
    masq: OnceLock<Watched<ConfigMap>>,
}

impl ClusterObjects {
    /// Watches start on `runtime` (the agent's) when first asked for.
    /// `watch_nodes`: whether [`Self::directory_listed`] includes every Node.
    pub fn new(
        client: Client,
        mode: ListMode,
        runtime: tokio::runtime::Handle,
        watch_nodes: bool,
    ) -> Self {
        Self {
            client,
            mode,
            runtime,
            services: OnceLock::new(),
            slices: OnceLock::new(),
            watch_nodes,
            nodes: OnceLock::new(),
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
        let nodes = self.nodes_watch();
        let listed = |l: &Mutex<Listing>| matches!(*lock(l), Listing::Synced);
        (listed(&services.listing)
            && listed(&slices.listing)
            && nodes.is_none_or(|n| listed(&n.listing)))
        .then(|| Directory {
            services: services.store.state(),
            slices: slices.store.state(),
            nodes: nodes.map(|n| n.store.state()).unwrap_or_default(),
        })
    }

    /// A number that changes whenever the Services, EndpointSlices or Nodes do (watch
    /// events applied to a store): what is derived from them is rebuilt only when it moved.
    pub fn directory_version(&self) -> u64 {
        let (services, slices) = (self.services_watch(), self.slices_watch());
        let nodes = self.nodes_watch();
        services.changes.load(Ordering::Relaxed)
            + slices.changes.load(Ordering::Relaxed)
            + nodes.map_or(0, |n| n.changes.load(Ordering::Relaxed))
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
            )
        }))
    }

    fn services_watch(&self) -> &Watched<Service> {
        self.services.get_or_init(|| {
            self.start(
                Api::all(self.client.clone()),
                watcher::Config::default(),
                "services",
                watcher::watcher,
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
            )
        });
        Ok(ready(w, "the ip-masq-agent ConfigMap")?.into_iter().next())
    }

    /// Starts the reflector of one kind: `watch` (a full watcher or one of metadata) of `api`
    /// into a store, relisting after errors (see `kubernetes::rewatch`).
    fn start<K, T, S>(
        &self,
        api: Api<K>,
        cfg: watcher::Config,
        what: &'static str,
        watch: fn(Api<K>, watcher::Config) -> S,
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
        self.runtime.spawn(async move {
            let up = move |r: Result<(), &watcher::Error>| {
                if let Err(e) = r {
                    let mut l = lock(&failed);
                    if !matches!(*l, Listing::Synced) {
                        *l = Listing::Failed(e.to_string());
                    }
                }
            };
            rewatch(api, cfg, mode, what, watch, up, |ev| {
                writer.apply_watcher_event(&ev);
                changed.fetch_add(1, Ordering::Relaxed);
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

/// Keeps of a Node what names it as a peer: its name and addresses.
fn trim_node(node: &mut Node) {
    let addresses = node.status.take().and_then(|s| s.addresses);
    let meta = std::mem::take(&mut node.metadata);
    *node = Node {
        metadata: kube::api::ObjectMeta {
            name: meta.name,
            uid: meta.uid,
            resource_version: meta.resource_version,
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

fn lock(l: &Mutex<Listing>) -> std::sync::MutexGuard<'_, Listing> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}
