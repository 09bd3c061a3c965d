//! Socket summaries of every namespace in one pass (`socksummary.bpf.c`, beside this file): what the
//! `tcpsummary` and `sockbacklog` probes report, without a sock_diag dump per namespace.
//!
//! Loaded once; every TCP socket is tagged with its namespace by a tracepoint, sockets older
//! than the program by a sweep of each namespace when it is first seen; each collection runs
//! one iterator pass over the tagged sockets that sums per namespace in the kernel.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, IterableMap, Map, PerCpuArray};
use aya::programs::{BtfTracePoint, Iter};

use crate::sources::kernel_btf::KernelBtf;

use super::Collection;
use super::bpf_programs::BpfMapFill;
use super::netns::drain_iterator;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socksummary.bpf.o"));

/// Mirrors `struct ns_summary` of `socksummary.h`.
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
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SocketPath {
    /// BPF socket storage when the kernel allows it, else sock_diag
    Auto,
    /// BPF socket storage only: the probes fail, saying why, where it cannot load
    Bpf,
    /// a sock_diag dump per namespace (each walks the node's whole TCP hash)
    SockDiag,
}

/// The loaded programs and what they have done so far.
pub struct SocketStorage {
    ebpf: Ebpf,
    /// Namespaces whose older sockets were tagged.
    swept: HashSet<u64>,
    /// The last pass's sums, by namespace inode.
    summaries: HashMap<u32, NsSummary>,
    /// The summary map's fill after the last pass, and whether that pass found it full.
    fill: Option<BpfMapFill>,
    overflowed: bool,
}

impl SocketStorage {
    /// Loads and attaches the tagging tracepoint and loads both iterators.
    pub fn load(kernel_btf: &KernelBtf) -> Result<Self> {
        let (mut ebpf, attach) = kernel_btf.load(OBJECT)?;
        let tp: &mut BtfTracePoint = program(&mut ebpf, "tag_on_state")?.try_into()?;
        attach.tracepoint(tp, "inet_sock_set_state")?;
        // Attached before any sweep, so that no socket slips between the two.
        tp.attach()?;
        let sweep: &mut Iter = program(&mut ebpf, "tag_existing")?.try_into()?;
        attach.iter(sweep, "tcp")?;
        let pass: &mut Iter = program(&mut ebpf, "sum_sockets")?.try_into()?;
        attach.iter(pass, "bpf_sk_storage_map")?;
        Ok(Self {
            ebpf,
            swept: HashSet::new(),
            summaries: HashMap::new(),
            fill: None,
            overflowed: false,
        })
    }

    /// Runs the `iter/tcp` sweep from a thread inside the namespace: a tcp iterator walks the
    /// sockets of the namespace of the task that creates it.
    fn sweep(&mut self, ns_path: Option<&Path>) -> Result<()> {
        let ns = ns_path
            .map(|p| File::open(p).with_context(|| format!("open {}", p.display())))
            .transpose()?;
        let prog: &mut Iter = program(&mut self.ebpf, "tag_existing")?.try_into()?;
        let id = prog.attach()?;
        let link = prog.take_link(id)?;
        super::netns::run_in(ns.as_ref(), move || {
            let mut f = link.into_file().context("bpf_iter_create")?;
            drain_iterator(&mut f)
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
        drain_iterator(&mut f)?;
        let map = self.ebpf.map("summary").context("map summary missing")?;
        let summary: BpfHashMap<_, u32, NsSummary> = BpfHashMap::try_from(map)?;
        self.summaries = summary.iter().filter_map(|e| e.ok()).collect();
        let map = self
            .ebpf
            .map("summary_overflow")
            .context("map summary_overflow missing")?;
        let overflow: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let uncounted = overflow.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
        // A namespace missing from a pass that overflowed may have had sockets: not zeros.
        self.overflowed = uncounted > self.fill.as_ref().map_or(0, |f| f.uncounted);
        self.fill = Some(BpfMapFill::of(
            summary.map(),
            "summary",
            self.summaries.len(),
            uncounted,
        ));
        Ok(())
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))
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

/// The socket summaries of every namespace, shared by the probes that report them
/// (`tcpsummary`, `sockbacklog`), owned by the [`super::Node`].
pub struct SocketSummaries {
    wanted: SocketPath,
    engine: OnceLock<Engine>,
    /// This collection's results; one pass serves every probe and every target.
    state: Mutex<Prepared>,
}

enum Engine {
    Bpf(Box<Mutex<SocketStorage>>),
    /// sock_diag, and why.
    SockDiag(String),
}

#[derive(Default)]
struct Prepared {
    collection: u64,
    /// Namespaces whose sweep failed in this collection, with the error.
    failed: HashMap<u64, String>,
    /// Why the pass failed, if it did.
    pass_failed: Option<String>,
}

impl SocketSummaries {
    pub fn new(wanted: SocketPath) -> Self {
        Self {
            wanted,
            engine: OnceLock::new(),
            state: Mutex::new(Prepared::default()),
        }
    }

    /// Loads the BPF path (once, whoever asks first). With `bpf` configured, an error says
    /// why it cannot load; with `auto`, a failure to load is the sock_diag path, logged once.
    pub fn start(&self, kernel_btf: &KernelBtf) -> Result<()> {
        match self.engine.get_or_init(|| self.load(kernel_btf)) {
            Engine::SockDiag(why) if self.wanted == SocketPath::Bpf => bail!("{why}"),
            _ => Ok(()),
        }
    }

    fn load(&self, kernel_btf: &KernelBtf) -> Engine {
        if self.wanted == SocketPath::SockDiag {
            tracing::info!("socket summaries: sock_diag (configured)");
            return Engine::SockDiag("configured".into());
        }
        match SocketStorage::load(kernel_btf) {
            Ok(s) => {
                tracing::info!("socket summaries: BPF socket storage");
                Engine::Bpf(Box::new(Mutex::new(s)))
            }
            Err(e) => {
                let why = format!("BPF socket storage unavailable: {e:#}").replace('\n', " | ");
                tracing::warn!(reason = %why, "socket summaries: sock_diag");
                Engine::SockDiag(why)
            }
        }
    }

    /// The path in use: `bpf` or `sock_diag`.
    pub fn path(&self) -> &'static str {
        match self.engine.get() {
            Some(Engine::Bpf(_)) => "bpf",
            _ => "sock_diag",
        }
    }

    /// Once per collection: forgets namespaces that are gone, tags the sockets of namespaces
    /// seen for the first time (a sweep from inside each), and runs the one pass that sums
    /// every namespace. Later calls for the same collection do nothing.
    pub fn prepare(&self, collection: &Collection) {
        let Some(Engine::Bpf(storage)) = self.engine.get() else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.collection == collection.id {
            return;
        }
        *state = Prepared {
            collection: collection.id,
            ..Prepared::default()
        };
        let mut storage = storage.lock().unwrap_or_else(|e| e.into_inner());
        if collection.complete {
            storage.swept.retain(|i| collection.is_live(*i));
        }
        for (inode, ns_path) in &collection.namespaces {
            if storage.swept.contains(inode) {
                continue;
            }
            match storage.sweep(ns_path.as_deref()) {
                Ok(()) => {
                    storage.swept.insert(*inode);
                }
                Err(e) => {
                    let e = format!("tagging the namespace's existing sockets: {e:#}");
                    state.failed.insert(*inode, e);
                }
            }
        }
        if let Err(e) = storage.pass() {
            state.pass_failed = Some(format!("socket storage pass: {e:#}"));
        }
    }

    /// The summary map's fill after the last pass (BPF path only).
    pub fn bpf_maps(&self) -> Vec<BpfMapFill> {
        match self.engine.get() {
            Some(Engine::Bpf(storage)) => {
                let storage = storage.lock().unwrap_or_else(|e| e.into_inner());
                storage.fill.iter().cloned().collect()
            }
            _ => Vec::new(),
        }
    }

    /// The BPF summary of namespace `inode` as of the last [`SocketSummaries::prepare`], or
    /// `None` when summaries take the sock_diag path. An error is a failure of the BPF path
    /// for this namespace (or a configured BPF path that could not load).
    pub fn summary(&self, inode: u64) -> Option<Result<NsSummary>> {
        match self.engine.get() {
            Some(Engine::Bpf(storage)) => {
                let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(e) = state.pass_failed.as_ref().or(state.failed.get(&inode)) {
                    return Some(Err(anyhow!("{e}")));
                }
                drop(state);
                let storage = storage.lock().unwrap_or_else(|e| e.into_inner());
                let summary = u32::try_from(inode)
                    .ok()
                    .and_then(|i| storage.summaries.get(&i))
                    .copied();
                match summary {
                    Some(s) => Some(Ok(s)),
                    None if storage.overflowed => Some(Err(anyhow!(
                        "the socket summary map was full ({} namespaces): this one's sockets were not summed",
                        storage.fill.as_ref().map_or(0, |f| f.max_entries)
                    ))),
                    // No established or listening socket in this namespace.
                    None => Some(Ok(NsSummary::default())),
                }
            }
            Some(Engine::SockDiag(why)) if self.wanted == SocketPath::Bpf => {
                Some(Err(anyhow!("{why}")))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_layout_matches_the_c_header() {
        let header = include_str!("socksummary.h");
        let body = header
            .split("struct ns_summary {")
            .nth(1)
            .and_then(|b| b.split("};").next())
            .expect("struct ns_summary in socksummary.h");
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
