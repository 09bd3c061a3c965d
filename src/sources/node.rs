//! What a probe may ask of the node at start: where its /proc and /sys are, whether the agent
//! runs in Kubernetes mode, and the readers that several probes share (built once, at the
//! first probe that asks, and kept by the node, never in a process-wide static).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::kernel_btf::KernelBtf;
use super::socket_storage::{SocketPath, SocketSummaries};

/// Options of the kernel readers that probes share (`sources:` in the configuration file).
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesOptions {
    /// The kernel's BTF: every BPF program is relocated against it, and the drop counter
    /// names drop reasons from it.
    pub btf_path: PathBuf,
    /// Where `tcpsummary` and `sockbacklog` read socket summaries from.
    pub socket_path: SocketPath,
}

impl Default for SourcesOptions {
    fn default() -> Self {
        Self {
            btf_path: "/sys/kernel/btf/vmlinux".into(),
            socket_path: SocketPath::Auto,
        }
    }
}

/// The node, as probes see it at start.
pub struct Node {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub options: SourcesOptions,
    /// Kubernetes mode: the node's Pods and CIDRs come from the API server.
    pub kubernetes: bool,
    /// Kubernetes mode: the cluster's Services and EndpointSlices, for the probes that name
    /// addresses (`peers`).
    pub cluster_objects: Option<Arc<crate::inventory::objects::ClusterObjects>>,
    /// The kernel's BTF for the BPF loaders.
    pub kernel_btf: KernelBtf,
    /// The node's name (`k8s_node`), for the probes that name it as a peer.
    pub name: String,
    socket_summaries: OnceLock<Arc<SocketSummaries>>,
}

impl Node {
    pub fn new(procfs: PathBuf, sysfs: PathBuf, options: SourcesOptions, kubernetes: bool) -> Self {
        Self {
            procfs,
            sysfs,
            kernel_btf: KernelBtf::new(options.btf_path.clone()),
            options,
            kubernetes,
            cluster_objects: None,
            name: String::new(),
            socket_summaries: OnceLock::new(),
        }
    }

    /// The socket summaries, if a probe has set them up.
    pub fn socket_summaries_in_use(&self) -> Option<&Arc<SocketSummaries>> {
        self.socket_summaries.get()
    }

    /// The socket summaries of every namespace (`socket_storage`), shared by the probes that
    /// report them; set up by the first one that starts.
    pub fn socket_summaries(&self) -> Arc<SocketSummaries> {
        Arc::clone(
            self.socket_summaries
                .get_or_init(|| Arc::new(SocketSummaries::new(self.options.socket_path))),
        )
    }
}
