//! Socket summaries of every namespace in one pass (`bpf/socksummary.bpf.c`): what the
//! `tcpsummary` and `sockbacklog` probes report, without a sock_diag dump per namespace.
//!
//! Loaded once; every TCP socket is tagged with its namespace by a tracepoint, sockets older
//! than the program by a sweep of each namespace when it is first seen; each collection runs
//! one iterator pass over the tagged sockets that sums per namespace in the kernel.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{HashMap as BpfHashMap, Map};
use aya::programs::{BtfTracePoint, Iter};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socksummary.bpf.o"));

/// Mirrors `struct ns_summary` of `bpf/socksummary.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsSummary {
    pub established: u64,
    pub rx_queue: u64,
    pub tx_queue: u64,
    pub accept_queue: u64,
}

// SAFETY: repr(C), four u64 fields, no padding, any bit pattern valid.
unsafe impl aya::Pod for NsSummary {}

/// Which path socket summaries take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketPath {
    /// BPF socket storage when the kernel allows it, else sock_diag.
    Auto,
    Bpf,
    SockDiag,
}

pub struct SocketStorage {
    ebpf: Ebpf,
    /// Namespaces whose older sockets were tagged.
    swept: HashSet<u64>,
    /// The collection the last pass ran for, and whether a sweep since then needs another.
    pass_for: u64,
    dirty: bool,
    summaries: HashMap<u32, NsSummary>,
}

impl SocketStorage {
    /// Loads and attaches the tagging tracepoint and loads both iterators.
    pub fn load(btf_path: &Path) -> Result<Self> {
        let btf = Btf::parse_file(btf_path, Endianness::default())
            .with_context(|| format!("kernel BTF {}", btf_path.display()))?;
        let mut ebpf = EbpfLoader::new().btf(Some(&btf)).load(OBJECT)?;
        let tp: &mut BtfTracePoint = program(&mut ebpf, "tag_on_state_change")?.try_into()?;
        tp.load("inet_sock_set_state", &btf)?;
        // Attached before any sweep, so that no socket slips between the two.
        tp.attach()?;
        let sweep: &mut Iter = program(&mut ebpf, "tag_existing")?.try_into()?;
        sweep.load("tcp", &btf)?;
        let pass: &mut Iter = program(&mut ebpf, "sum_sockets")?.try_into()?;
        pass.load("bpf_sk_storage_map", &btf)?;
        Ok(Self {
            ebpf,
            swept: HashSet::new(),
            pass_for: 0,
            dirty: true,
            summaries: HashMap::new(),
        })
    }

    /// The summary of namespace `inode` as of `collection`: sweeps the namespace first if it
    /// is new (`ns`: an open nsfs file to enter it, `None` for the agent's own), and runs the
    /// pass once per collection (again after a sweep).
    pub fn summary(&mut self, inode: u64, ns: Option<&File>, collection: u64) -> Result<NsSummary> {
        if !self.swept.contains(&inode) {
            self.sweep(ns)
                .context("tagging the namespace's existing sockets")?;
            self.swept.insert(inode);
            self.dirty = true;
        }
        if self.dirty || self.pass_for != collection {
            self.pass().context("socket storage pass")?;
            self.pass_for = collection;
            self.dirty = false;
        }
        Ok(u32::try_from(inode)
            .ok()
            .and_then(|i| self.summaries.get(&i))
            .copied()
            .unwrap_or_default())
    }

    /// Forgets namespaces that are gone (their sockets' storage went with them).
    pub fn retain(&mut self, live: &HashSet<u64>) {
        self.swept.retain(|i| live.contains(i));
    }

    /// Runs the `iter/tcp` sweep from a thread inside the namespace: a tcp iterator walks the
    /// sockets of the namespace of the task that creates it.
    fn sweep(&mut self, ns: Option<&File>) -> Result<()> {
        let prog: &mut Iter = program(&mut self.ebpf, "tag_existing")?.try_into()?;
        let id = prog.attach()?;
        let link = prog.take_link(id)?;
        std::thread::scope(|s| {
            s.spawn(move || -> Result<()> {
                if let Some(ns) = ns {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                }
                let mut f = link.into_file().context("bpf_iter_create")?;
                drain(&mut f)
            })
            .join()
            .map_err(|_| anyhow!("sweep thread panicked"))?
        })
    }

    /// One pass over every tagged socket; the per-namespace sums land in `summaries`.
    fn pass(&mut self) -> Result<()> {
        {
            let map = self
                .ebpf
                .map_mut("summary")
                .context("map summary missing")?;
            let mut summary: BpfHashMap<_, u32, NsSummary> = BpfHashMap::try_from(map)?;
            let keys: Vec<u32> = summary.keys().filter_map(|k| k.ok()).collect();
            for k in keys {
                let _ = summary.remove(&k);
            }
        }
        let map_fd = match self.ebpf.map("sk_tags") {
            Some(Map::SkStorage(data)) => data.fd().as_fd().as_raw_fd(),
            _ => bail!("map sk_tags missing"),
        };
        let prog = self
            .ebpf
            .program("sum_sockets")
            .context("program sum_sockets missing")?;
        let prog_fd = prog.fd()?.as_fd().as_raw_fd();
        let link = map_iter_link(prog_fd, map_fd).context("link for iter/bpf_sk_storage_map")?;
        let mut f = iter_create(&link).context("bpf_iter_create")?;
        drain(&mut f)?;
        let map = self.ebpf.map("summary").context("map summary missing")?;
        let summary: BpfHashMap<_, u32, NsSummary> = BpfHashMap::try_from(map)?;
        self.summaries = summary.iter().filter_map(|e| e.ok()).collect();
        Ok(())
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))
}

/// Reads an iterator to its end (the programs write nothing; reading runs them).
fn drain(f: &mut File) -> Result<()> {
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

// Hand-written because aya 0.14 creates iterator links without link info, and an
// `iter/bpf_sk_storage_map` link must name the map it walks (`bpf_iter_link_info.map.map_fd`).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;
/// `sizeof(union bpf_attr)` of the kernel headers this was written against; the kernel
/// accepts any size as long as the tail it does not know is zero.
const ATTR_SIZE: usize = 144;

fn bpf(cmd: libc::c_long, attr: &mut [u8; ATTR_SIZE]) -> std::io::Result<OwnedFd> {
    // SAFETY: bpf(2) reads `ATTR_SIZE` bytes of `attr`, which lives for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_SIZE) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success bpf(2) returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn map_iter_link(prog_fd: i32, map_fd: i32) -> std::io::Result<OwnedFd> {
    // union bpf_iter_link_info { struct { __u32 map_fd; } map; ... }
    let info: [u32; 4] = [map_fd as u32, 0, 0, 0];
    let mut attr = [0u8; ATTR_SIZE];
    attr[0..4].copy_from_slice(&(prog_fd as u32).to_ne_bytes()); // link_create.prog_fd
    attr[8..12].copy_from_slice(&BPF_TRACE_ITER.to_ne_bytes()); // .attach_type
    attr[16..24].copy_from_slice(&(info.as_ptr() as u64).to_ne_bytes()); // .iter_info
    attr[24..28].copy_from_slice(&(std::mem::size_of_val(&info) as u32).to_ne_bytes()); // .iter_info_len
    bpf(BPF_LINK_CREATE, &mut attr)
}

fn iter_create(link: &OwnedFd) -> std::io::Result<File> {
    let mut attr = [0u8; ATTR_SIZE];
    attr[0..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes()); // iter_create.link_fd
    bpf(BPF_ITER_CREATE, &mut attr).map(File::from)
}

enum Engine {
    Bpf(SocketStorage),
    /// sock_diag, and why.
    SockDiag(String),
}

static ENGINE: std::sync::Mutex<Option<Engine>> = std::sync::Mutex::new(None);

/// The path in use (`bpf` or `sock_diag`) and, for sock_diag, why.
pub fn path(opts: &crate::config::ProbeOptions) -> (&'static str, Option<String>) {
    let mut g = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    match g.get_or_insert_with(|| Engine::load(opts)) {
        Engine::Bpf(_) => ("bpf", None),
        Engine::SockDiag(why) => ("sock_diag", Some(why.clone())),
    }
}

/// The BPF summary of the target's namespace, or `None` when summaries take the sock_diag
/// path. An error is a failure of the BPF path for this target (or a forced BPF path that
/// could not load).
pub fn summary(
    src: &super::TargetSources,
    opts: &crate::config::ProbeOptions,
) -> Option<Result<NsSummary>> {
    let mut g = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    match g.get_or_insert_with(|| Engine::load(opts)) {
        Engine::Bpf(s) => Some(s.summary(src.inode, src.ns_file(), src.collection)),
        Engine::SockDiag(why) if opts.socket_path == SocketPath::Bpf => Some(Err(anyhow!("{why}"))),
        Engine::SockDiag(_) => None,
    }
}

/// Forgets namespaces that are gone.
pub fn retain(live: &HashSet<u64>) {
    if let Some(Engine::Bpf(s)) = ENGINE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        s.retain(live);
    }
}

impl Engine {
    fn load(opts: &crate::config::ProbeOptions) -> Self {
        if opts.socket_path == SocketPath::SockDiag {
            tracing::info!("socket summaries: sock_diag (configured)");
            return Self::SockDiag("configured".into());
        }
        match SocketStorage::load(&opts.btf_path) {
            Ok(s) => {
                tracing::info!("socket summaries: BPF socket storage");
                Self::Bpf(s)
            }
            Err(e) => {
                let why = format!("BPF socket storage unavailable: {e:#}").replace('\n', " | ");
                tracing::warn!(reason = %why, "socket summaries: sock_diag");
                Self::SockDiag(why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_layout_matches_the_c_header() {
        let header = include_str!("../../bpf/socksummary.h");
        let body = header
            .split("struct ns_summary {")
            .nth(1)
            .and_then(|b| b.split("};").next())
            .expect("struct ns_summary in bpf/socksummary.h");
        let fields: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("__u64 "))
            .map(|l| l.split(';').next().unwrap_or("").trim())
            .collect();
        assert_eq!(
            fields,
            ["established", "rx_queue", "tx_queue", "accept_queue"]
        );
        assert_eq!(std::mem::size_of::<NsSummary>(), 32);
    }
}
