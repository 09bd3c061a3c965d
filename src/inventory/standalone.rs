//! Standalone inventory: the node's namespace plus every other network namespace found under
//! the named-namespace directory (`/run/netns/NAME`) and in `/proc/PID/ns/net`. A namespace is
//! identified by its inode; named ones are labelled `netns="NAME"`, the others
//! `netns="pid-<lowest pid in it>"`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Inventory, Target};

pub struct Standalone {
    procfs: PathBuf,
    netns_dir: PathBuf,
    node_name: String,
    filter: super::TargetFilter,
    /// Whether processes whose namespace we may not see were reported (once).
    denied_reported: std::sync::atomic::AtomicBool,
}

impl Standalone {
    /// Only namespaces `filter` wants (by their `netns` label).
    pub fn new(
        procfs: &Path,
        netns_dir: &Path,
        node_name: &str,
        filter: super::TargetFilter,
    ) -> Self {
        Self {
            procfs: procfs.to_path_buf(),
            netns_dir: netns_dir.to_path_buf(),
            node_name: node_name.to_string(),
            filter,
            denied_reported: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Inventory for Standalone {
    fn discover(&self) -> Result<Vec<Target>> {
        // The node's namespace is the agent's own. In a fixture tree `self/ns/net` may be a
        // plain file or missing: then only the node target exists.
        let own = std::fs::metadata(self.procfs.join("self/ns/net"))
            .map(|m| m.ino())
            .ok();
        let mut targets = vec![Target {
            inode: own.unwrap_or(0),
            ns_path: None,
            labels: vec![("k8s_node", self.node_name.clone())],
        }];
        let Some(own) = own else {
            return Ok(targets);
        };

        // inode -> (label, path to enter it)
        let mut found: BTreeMap<u64, (String, PathBuf)> = BTreeMap::new();
        match std::fs::read_dir(&self.netns_dir) {
            Ok(dir) => {
                let mut named: Vec<(String, PathBuf)> = dir
                    .flatten()
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect();
                named.sort();
                for (name, path) in named {
                    // A name whose namespace is gone (or not a namespace) is skipped.
                    if let Ok(m) = std::fs::metadata(&path)
                        && m.ino() != own
                    {
                        found.entry(m.ino()).or_insert((name, path));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("read {}", self.netns_dir.display()));
            }
        }

        let dir = std::fs::read_dir(&self.procfs)
            .with_context(|| format!("read {}", self.procfs.display()))?;
        let mut pids: Vec<u32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        let mut denied = 0usize;
        for pid in pids {
            let path = self.procfs.join(format!("{pid}/ns/net"));
            match std::fs::metadata(&path) {
                Ok(m) if m.ino() != own => {
                    found.entry(m.ino()).or_insert((format!("pid-{pid}"), path));
                }
                Ok(_) => {}
                // Without CAP_SYS_PTRACE, other users' namespaces cannot be seen: say so once,
                // rather than let their namespaces go missing silently.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => denied += 1,
                // Processes exit during the scan.
                Err(_) => {}
            }
        }
        if denied > 0
            && !self
                .denied_reported
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                processes = denied,
                "cannot see the network namespace of some processes (needs CAP_SYS_PTRACE); namespaces held only by them are not read"
            );
        }

        targets.extend(
            found
                .into_iter()
                .filter(|(_, (name, _))| self.filter.wants_netns(name))
                .map(|(inode, (name, path))| Target {
                    inode,
                    ns_path: Some(path),
                    labels: vec![("k8s_node", self.node_name.clone()), ("netns", name)],
                }),
        );
        Ok(targets)
    }
}
