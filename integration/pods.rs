//! Kubelet-style Pods for the Kubernetes tests (`kubernetes.rs`, `k8s_checks.rs`): Pod UIDs in
//! the API's form, and a process moved into the cgroup the kubelet would give its container
//! (systemd or cgroupfs driver, cgroup v2 or the v1 `pids` hierarchy), removed by a guard.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const CGROUP2: &str = "/sys/fs/cgroup/unified";
pub const CGROUP1_PIDS: &str = "/sys/fs/cgroup/pids";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh Pod UID (the API's form, lowercase with `-`).
pub fn new_uid() -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        std::process::id(),
        n & 0xffff,
        nanos & 0xfff,
        (nanos >> 12) & 0xfff,
        (u64::from(nanos) << 16) | u64::from(n & 0xffff)
    )
}

/// Where the kubelet puts a Pod's container.
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    /// systemd cgroup driver, cgroup v2, a BestEffort Pod.
    SystemdV2,
    /// cgroupfs driver, cgroup v2, a Burstable Pod.
    CgroupfsV2,
    /// systemd cgroup driver, cgroup v1 (the `pids` hierarchy), a Guaranteed Pod.
    SystemdV1,
}

impl Driver {
    /// (hierarchy mount, container cgroup below it) of a Pod's container.
    pub fn cgroup(self, uid: &str) -> (&'static str, String) {
        let underscored = uid.replace('-', "_");
        let container = uid.replace('-', "").repeat(2);
        match self {
            Driver::SystemdV2 => (
                CGROUP2,
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice/cri-containerd-{container}.scope"
                ),
            ),
            Driver::CgroupfsV2 => (CGROUP2, format!("kubepods/burstable/pod{uid}/{container}")),
            Driver::SystemdV1 => (
                CGROUP1_PIDS,
                format!(
                    "kubepods.slice/kubepods-pod{underscored}.slice/cri-containerd-{container}.scope"
                ),
            ),
        }
    }
}

/// Shared kubelet cgroups (`kubepods.slice`, `kubepods/burstable`, ...) this process made;
/// also the lock around making and removing cgroups here.
static SHARED_CGROUPS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// A Pod's cgroup and its container's, with one process moved in. On drop the processes are
/// moved out to the root, the two cgroups removed, and the shared parents this process made
/// removed once empty.
pub struct PodCgroup {
    mount: PathBuf,
    /// The Pod's cgroup and its container's, outermost first.
    own: Vec<PathBuf>,
}

impl PodCgroup {
    pub fn enter(mount: &str, rel: &str, pid: u32) -> Self {
        let mount = PathBuf::from(mount);
        assert!(
            mount.join("cgroup.procs").exists(),
            "no cgroup hierarchy at {}",
            mount.display()
        );
        let mut cg = Self {
            mount: mount.clone(),
            own: Vec::new(),
        };
        {
            let mut shared = SHARED_CGROUPS.lock().unwrap_or_else(|e| e.into_inner());
            let parts: Vec<&str> = rel.split('/').collect();
            let mut dir = mount.clone();
            for (i, part) in parts.iter().enumerate() {
                dir.push(part);
                let own = i + 2 >= parts.len();
                match std::fs::create_dir(&dir) {
                    Ok(()) if own => cg.own.push(dir.clone()),
                    Ok(()) => {
                        shared.insert(dir.clone());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && !own => {}
                    Err(e) => panic!("mkdir {}: {e}", dir.display()),
                }
            }
        }
        let leaf = mount.join(rel);
        std::fs::write(leaf.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", leaf.display()));
        // The process's own view must name the cgroup, as the agent reads it.
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup file");
        let want = format!(":/{rel}");
        let line = text
            .lines()
            .find(|l| l.ends_with(&want))
            .unwrap_or_else(|| panic!("/proc/{pid}/cgroup does not show {rel}:\n{text}"));
        if mount.as_os_str() == CGROUP2 {
            assert!(line.starts_with("0::/"), "not the v2 line: {line}");
        } else {
            assert!(line.contains(":pids:/"), "not the v1 pids line: {line}");
        }
        cg
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let mut shared = SHARED_CGROUPS.lock().unwrap_or_else(|e| e.into_inner());
        let root_procs = self.mount.join("cgroup.procs");
        for dir in self.own.iter().rev() {
            for _ in 0..40 {
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.lines() {
                        let _ = std::fs::write(&root_procs, pid);
                    }
                }
                match std::fs::remove_dir(dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => break,
                }
            }
            if dir.exists() {
                eprintln!("cannot remove cgroup {}", dir.display());
            }
        }
        // Shared parents, deepest first; those still holding another Pod stay.
        let mut mine: Vec<PathBuf> = shared
            .iter()
            .filter(|d| d.starts_with(&self.mount))
            .cloned()
            .collect();
        mine.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in mine {
            if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                shared.remove(&d);
            }
        }
    }
}
