//! Where targets come from: the network namespaces to read and the labels of their series.
//! Standalone mode finds every namespace on the machine; the Kubernetes mode (a later
//! inventory) maps Pods to namespaces. The collector sees only the [`Inventory`] trait.

pub mod standalone;

use std::path::PathBuf;

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
}
