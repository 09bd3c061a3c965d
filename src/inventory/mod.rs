//! Where targets come from: the network namespaces to read and the labels of their series.
//! Standalone mode finds every namespace on the machine; the Kubernetes mode (a later
//! inventory) maps Pods to namespaces. The collector sees only the [`Inventory`] trait.

pub mod cgroup;
pub mod kubernetes;
pub mod objects;
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

/// Which namespaces (standalone) or Pods (Kubernetes) a collection reads.
#[derive(Clone, Debug, Default)]
pub struct TargetFilter {
    /// Standalone: only namespaces whose name matches (none: all).
    include: Option<globset::GlobSet>,
    exclude: Option<globset::GlobSet>,
    /// Kubernetes: only Pods whose labels match.
    pub pod_selector: Option<LabelSelector>,
}

impl TargetFilter {
    /// From shell-style patterns (`*`, `?`, `[abc]`) of namespace names and a label selector;
    /// errors name the bad one.
    pub fn new(
        include: &[String],
        exclude: &[String],
        pod_selector: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let set = |field: &'static str, patterns: &[String]| {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut b = globset::GlobSetBuilder::new();
            for p in patterns {
                b.add(globset::Glob::new(p).map_err(|e| (field, format!("{p:?}: {e}")))?);
            }
            b.build().map(Some).map_err(|e| (field, e.to_string()))
        };
        Ok(Self {
            include: set("collection.include_netns", include)?,
            exclude: set("collection.exclude_netns", exclude)?,
            pod_selector: pod_selector
                .map(LabelSelector::parse)
                .transpose()
                .map_err(|e| ("collection.pod_label_selector", e))?,
        })
    }

    /// Whether a standalone namespace called `name` is read.
    pub fn wants_netns(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(name))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(name))
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
    /// Annotated `net-exporter.io/exclude: "true"`: no series of its own (still counted by
    /// podip).
    pub excluded: bool,
    pub labels: std::collections::BTreeMap<String, String>,
    /// What runs it, as `Kind/name`: its controller, a Deployment for a ReplicaSet made by one
    /// (its name ends with the Pod's `pod-template-hash`), a CronJob for a Job named by one
    /// (`NAME-<minutes>`); `Pod/NAME` for a Pod without a controller.
    pub workload: String,
}

/// An equality-based label selector (`app=web,tier!=db,canary,!legacy`), as `kubectl -l`
/// takes them (set-based `in (...)` forms are not supported).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<(String, SelectorOp)>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum SelectorOp {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let valid = |k: &str| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            };
            let (key, op) = if let Some((k, v)) = term.split_once("!=") {
                (k.trim(), SelectorOp::Ne(v.trim().to_string()))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k.trim(), SelectorOp::Eq(v.trim().to_string()))
            } else if let Some(k) = term.strip_prefix('!') {
                (k.trim(), SelectorOp::Absent)
            } else {
                (term, SelectorOp::Exists)
            };
            if !valid(key) {
                return Err(format!(
                    "{term:?} is not a label selector term (k=v, k!=v, k, !k)"
                ));
            }
            out.push((key.to_string(), op));
        }
        Ok(Self(out))
    }

    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, op)| match op {
            SelectorOp::Eq(v) => labels.get(k) == Some(v),
            SelectorOp::Ne(v) => labels.get(k) != Some(v),
            SelectorOp::Exists => labels.contains_key(k),
            SelectorOp::Absent => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_patterns() {
        let f = TargetFilter::new(&["app-*".into()], &["app-skip*".into()], None).unwrap();
        assert!(f.wants_netns("app-1") && !f.wants_netns("app-skip-2") && !f.wants_netns("other"));
        assert!(TargetFilter::default().wants_netns("x"));
        let f = TargetFilter::new(&["a*b*c".into(), "exact".into()], &[], None).unwrap();
        assert!(f.wants_netns("axxbyyc") && !f.wants_netns("axxcyyb"));
        assert!(f.wants_netns("exact") && !f.wants_netns("exactly"));
        let e = TargetFilter::new(&["[".into()], &[], None).unwrap_err();
        assert_eq!(e.0, "collection.include_netns");
        let e = TargetFilter::new(&[], &[], Some("a b=c")).unwrap_err();
        assert_eq!(e.0, "collection.pod_label_selector");
    }

    #[test]
    fn selectors() {
        let labels: std::collections::BTreeMap<String, String> =
            [("app", "web"), ("tier", "front")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier!=db", true),
            ("app=db", false),
            ("tier", true),
            ("!tier", false),
            ("!legacy", true),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&labels),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("a b=c").is_err());
        assert!(LabelSelector::parse("=x").is_err());
    }
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
