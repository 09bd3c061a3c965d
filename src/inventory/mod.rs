//! Where targets come from: the network namespaces to read and the labels of their series.
//! Standalone mode finds every namespace on the machine; the Kubernetes mode (a later
//! inventory) maps Pods to namespaces. The collector sees only the [`Inventory`] trait.

pub mod cgroup;
pub mod kubernetes;
pub mod standalone;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// One network namespace to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The namespace's inode: its identity across collections.
    pub inode: u64,
    /// How to enter it; `None` for the node's own namespace (the agent's).
    pub ns_path: Option<PathBuf>,
    /// Labels of its Pod-scope series (`k8s_node` always; `netns` or the Pod's labels).
    pub labels: Vec<(&'static str, String)>,
}

impl Target {
    pub fn is_node(&self) -> bool {
        self.ns_path.is_none()
    }
}

pub trait Inventory: Send + Sync {
    /// The targets as of now, the node's own namespace first. Called at every collection.
    fn discover(&self) -> anyhow::Result<Vec<Target>>;

    /// What the cluster says about this node (Kubernetes mode only).
    fn cluster(&self) -> Option<Arc<ClusterView>> {
        None
    }
}

/// A Pod of this node as the API server describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub host_network: bool,
    /// Its own addresses (none for a finished Pod).
    pub ips: Vec<IpAddr>,
}

/// The Kubernetes view of this node at one collection.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub pods: Vec<PodInfo>,
    /// `spec.podCIDRs` of the Node.
    pub node_cidrs: Vec<ipnet::IpNet>,
    /// The watches are connected (last event was not an error).
    pub api_up: bool,
    /// Both watches have listed at least once.
    pub synced: bool,
}
