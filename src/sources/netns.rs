//! A session with one network namespace: the /proc files and netlink sockets of that
//! namespace, opened once from a thread inside it and reused by every later collection.
//!
//! Files under `/proc/thread-self/net/` and netlink sockets stay bound to the namespace that
//! was current when they were opened, so only opening needs `setns`. It runs on a short-lived
//! thread of its own, so no worker thread is ever left in a Pod's namespace. A session pins its
//! namespace while it is open; the collector closes it as soon as discovery no longer finds it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use netlink_sys::protocols::{NETLINK_ROUTE, NETLINK_SOCK_DIAG};

use super::netlink::NlSocket;

/// The per-namespace /proc/net files the probes read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetFile {
    Snmp,
    Netstat,
    Sockstat,
    Sockstat6,
    /// IPv6 counters, one `Name value` per line (absent without IPv6).
    Snmp6,
}

impl NetFile {
    pub const ALL: [NetFile; 5] = [
        Self::Snmp,
        Self::Netstat,
        Self::Sockstat,
        Self::Sockstat6,
        Self::Snmp6,
    ];

    /// Its position in [`NetFile::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Self::Snmp => 0,
            Self::Netstat => 1,
            Self::Sockstat => 2,
            Self::Sockstat6 => 3,
            Self::Snmp6 => 4,
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            Self::Snmp => "snmp",
            Self::Netstat => "netstat",
            Self::Sockstat => "sockstat",
            Self::Sockstat6 => "sockstat6",
            Self::Snmp6 => "snmp6",
        }
    }
}

/// The sysctl that tells a namespace's TCP established hash (kernels 6.1 and later).
pub const TCP_HASH_SYSCTL: &[&str] = &["net", "ipv4", "tcp_ehash_entries"];

/// Something that could not be opened stays an error with its cause, reported by the probe
/// that needs it; the rest of the session works.
type Opened<T> = std::result::Result<T, String>;

pub struct NetnsSession {
    /// The namespace itself (`None`: the agent's own), for what must run inside it later.
    pub(crate) ns: Option<File>,
    files: [Opened<File>; NetFile::ALL.len()],
    pub(crate) route: Opened<NlSocket>,
    pub(crate) diag: Opened<NlSocket>,
    /// The namespace's cookie, as BPF programs name it (`None`: the kernel has none to give).
    pub(crate) cookie: Option<u64>,
    /// `net.ipv4.tcp_ehash_entries` as the namespace reads it (negative: it shares the host's
    /// hash). Read once, at the opening: a namespace's hash is chosen when it is created and
    /// never changes, and net sysctls answer for the namespace of the thread that opens them.
    pub(crate) tcp_hash: Opened<Vec<u8>>,
}

impl NetnsSession {
    /// Opens a session for the agent's own namespace, with files from `<procfs>/net/`.
    pub fn open_own(procfs: &Path) -> Self {
        Self::open_here(&procfs.join("net"), procfs)
    }

    /// Opens a session for the namespace behind `ns_path` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`), with files from `<procfs>/thread-self/net/`.
    pub fn open_in(ns_path: &Path, procfs: &Path) -> Result<Self> {
        let ns = File::open(ns_path).with_context(|| format!("open {}", ns_path.display()))?;
        let net_dir = procfs.join("thread-self/net");
        let mut session = std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {}", ns_path.display()))?;
                Ok::<_, anyhow::Error>(Self::open_here(&net_dir, procfs))
            })
            .join()
            .map_err(|_| anyhow!("namespace opener thread panicked"))?
        })?;
        session.ns = Some(ns);
        Ok(session)
    }

    fn open_here(net_dir: &Path, procfs: &Path) -> Self {
        let open_file = |f: NetFile| {
            let path: PathBuf = net_dir.join(f.file_name());
            File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))
        };
        let route = NlSocket::open(NETLINK_ROUTE).map_err(|e| format!("netlink route socket: {e}"));
        Self {
            ns: None,
            files: NetFile::ALL.map(open_file),
            cookie: route.as_ref().ok().and_then(|s| s.netns_cookie().ok()),
            route,
            diag: NlSocket::open(NETLINK_SOCK_DIAG)
                .map_err(|e| format!("netlink sock_diag socket: {e}")),
            tcp_hash: {
                let p = super::sysctl::path(procfs, TCP_HASH_SYSCTL);
                std::fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))
            },
        }
    }

    pub fn has(&self, f: NetFile) -> bool {
        self.files[f.index()].is_ok()
    }

    /// The current content of a /proc/net file of this namespace.
    pub fn read(&self, f: NetFile) -> Result<Vec<u8>> {
        let file = self.files[f.index()].as_ref().map_err(|e| anyhow!("{e}"))?;
        read_from_start(file).with_context(|| format!("read {}", f.file_name()))
    }
}

/// Runs `f` on a short-lived thread inside the namespace of `ns` (`None`: the agent's own), for
/// what binds to the namespace it is created in (a BPF `iter/tcp` walks the sockets of the
/// namespace of the task that creates it). No worker thread is left in another namespace.
pub fn run_in<T: Send>(ns: Option<&File>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(ns) = ns {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            }
            f()
        })
        .join()
        .map_err(|_| anyhow!("namespace thread panicked"))?
    })
}

/// Reads a BPF iterator to its end: the programs write nothing, reading runs them.
pub fn drain_iterator(f: &mut File) -> Result<()> {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("read iterator"),
        }
    }
}

/// Reads a /proc file from offset 0 to its end. `pread` at offset 0 makes the kernel
/// regenerate a seq_file, so one open file gives fresh content at every call.
pub fn read_from_start(file: &File) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(4096);
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = file.read_at(&mut buf, out.len() as u64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}
