//! Property-based fuzzing of every parser that reads input the agent does not control: kernel
//! data (procfs text, netlink replies, BTF, tracefs formats, `/dev/kmsg` records, cgroup files),
//! the configuration (YAML, flags, environment) and the Kubernetes objects it reads.
//!
//! Inputs are (a) arbitrary bytes, (b) mutations of the real fixtures under `tests/fixtures/`
//! (byte flips, insertions, deletions, truncation, splices of two seeds, interesting integers;
//! for netlink: message and attribute lengths set to anything up to 4 GiB, types changed,
//! messages dropped, duplicated and appended, attributes inserted with their enclosing lengths
//! fixed; for text: tokens replaced by negative, overflowing or non-numeric values, lines
//! deleted, duplicated and swapped, odd whitespace), and (c) structure-aware generators: netlink
//! messages built with the `netlink-packet-*` serializers, BTF blobs, snmp/sockstat/per-CPU
//! tables, kubelet cgroup paths and configuration files. Every call must return (Ok or Err)
//! without a panic, within [`CALL_LIMIT`], allocating at most [`PEAK_LIMIT`] at any moment (a
//! counting global allocator measures each call); where the input is well-formed, the parsers
//! must also return exactly what was generated.
//!
//! `make test` runs [`DEFAULT_CASES`] cases per property; `make fuzz` sets `PROPTEST_CASES`
//! much higher and builds in release. Failing inputs are shrunk and their seeds saved in
//! `tests/fuzz.proptest-regressions` (replayed first by every later run); crashers found are
//! also kept as files under `tests/fixtures/crashers/<parser>/`, replayed by
//! `crashers_stay_fixed`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use net_exporter::checks::{kernel_log, masquerade};
use net_exporter::config::{Config, FileConfig, Flags};
use net_exporter::inventory::{ClusterView, PodInfo, cgroup};
use net_exporter::probes::packetloss::{bpf, reasons};
use net_exporter::probes::peers::listeners;
use net_exporter::probes::{
    arp, conntrack, format, netdev, podip, qdisc, sock, sockbacklog, softnet, tcp, tcpext, tcphash,
    tcpsummary,
};
use net_exporter::sources::kernel_btf;
use net_exporter::sources::routes as route;
use net_exporter::sources::{links, netlink};
use netlink_packet_core::{DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, Stats64};
use netlink_packet_route::neighbour::{NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use netlink_packet_route::tc::{
    TcAttribute, TcHandle, TcMessage, TcStats, TcStats2, TcStatsBasic, TcStatsQueue,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_packet_sock_diag::inet::{InetResponseHeader, SocketId};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::FileFailurePersistence;

// ---------------------------------------------------------------------------------------------
// Limits, and the allocator that enforces them.

/// Cases per property when `PROPTEST_CASES` is not set (`make test`).
const DEFAULT_CASES: u32 = 256;
/// Most bytes one parser call may hold allocated at once.
const PEAK_LIMIT: usize = 64 << 20;
/// Past this the process is stopped at once (the input is saved first): an allocation this
/// big would take the machine down before the property could report it.
const ABORT_LIMIT: usize = 2 << 30;
/// Longest one parser call may take (debug build, inputs of at most a few MiB).
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Where the input of a call that crossed [`ABORT_LIMIT`] is written.
const ABORT_INPUT: &str = "/tmp/net-exporter-fuzz-alloc-input.bin\0";

/// `System`, counting the bytes a thread holds while it is inside [`guarded`].
struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static INPUT: Cell<(*const u8, usize)> = const { Cell::new((std::ptr::null(), 0)) };
}

fn grew(bytes: usize) {
    let _ = MEASURING.try_with(|m| {
        if !m.get() {
            return;
        }
        let live = LIVE.get().saturating_add(bytes);
        LIVE.set(live);
        if live > PEAK.get() {
            PEAK.set(live);
        }
        if live > ABORT_LIMIT {
            m.set(false);
            abort_with_input();
        }
    });
}

fn shrank(bytes: usize) {
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            LIVE.set(LIVE.get().saturating_sub(bytes));
        }
    });
}

/// Saves the current input and aborts, without allocating (we are inside the allocator).
fn abort_with_input() -> ! {
    let msg = b"fuzz: a parser call allocated more than ABORT_LIMIT; its input was written to \
/tmp/net-exporter-fuzz-alloc-input.bin\n";
    // SAFETY: plain writes of buffers we own to stderr and to a file we open.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        let (ptr, len) = INPUT.get();
        let fd = libc::open(
            ABORT_INPUT.as_ptr().cast(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        );
        if fd >= 0 && !ptr.is_null() {
            libc::write(fd, ptr.cast(), len);
            libc::close(fd);
        }
    }
    std::process::abort()
}

// SAFETY: every call is forwarded to `System` unchanged; the counting only touches
// const-initialized thread-locals without destructors (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            shrank(layout.size() - new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Ends the measurement even when the call panics.
struct Measuring;

impl Drop for Measuring {
    fn drop(&mut self) {
        MEASURING.set(false);
        INPUT.set((std::ptr::null(), 0));
    }
}

/// Runs one parser call on `input`, and fails if it panicked (proptest catches the panic and
/// shrinks the input), allocated more than [`PEAK_LIMIT`] at once or took over [`CALL_LIMIT`].
fn guarded<R>(what: &str, input: &[u8], call: impl FnOnce() -> R) -> R {
    INPUT.set((input.as_ptr(), input.len()));
    LIVE.set(0);
    PEAK.set(0);
    let start = Instant::now();
    let out = {
        let _m = Measuring;
        MEASURING.set(true);
        call()
    };
    let took = start.elapsed();
    let peak = PEAK.get();
    assert!(
        peak <= PEAK_LIMIT,
        "{what}: {peak} bytes allocated at once on a {}-byte input",
        input.len()
    );
    assert!(
        took <= CALL_LIMIT,
        "{what}: {took:?} on a {}-byte input",
        input.len()
    );
    out
}

fn cases(divisor: u32) -> u32 {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(DEFAULT_CASES);
    (n / divisor).max(1)
}

/// The runner's settings: the default (which reads the `PROPTEST_*` variables), with
/// [`DEFAULT_CASES`] unless `PROPTEST_CASES` says otherwise (divided for costly properties),
/// seeds of failures kept beside this file.
fn config(divisor: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(divisor),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds.

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(rel: &str) -> Vec<u8> {
    let p = fixtures_dir().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// One netlink message: header (length filled in), then `payload`, padded to 4 bytes.
fn raw_message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut out = Vec::with_capacity(len + 3);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&4242u32.to_ne_bytes());
    out.extend_from_slice(payload);
    pad4(&mut out);
    out
}

fn pad4(b: &mut Vec<u8>) {
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

/// A route-netlink message serialized by netlink-packet-route, padded to 4 bytes.
fn route_message(inner: RouteNetlinkMessage, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.sequence_number = seq;
    header.flags = 2; // NLM_F_MULTI, as in a dump
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    msg.finalize();
    let mut out = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut out);
    pad4(&mut out);
    out
}

/// A sock_diag reply message (`SOCK_DIAG_BY_FAMILY`) with `attrs` after the header.
fn sock_diag_message(h: &InetResponseHeader, attrs: &[u8], seq: u32) -> Vec<u8> {
    use netlink_packet_core::Emitable;
    let mut payload = vec![0u8; h.buffer_len()];
    h.emit(&mut payload);
    payload.extend_from_slice(attrs);
    raw_message(20, 2, seq, &payload)
}

/// Replies the fixtures do not have (routes, addresses, rules, acks and errors), built with
/// the serializers.
fn generated_netlink_seeds() -> Vec<Vec<u8>> {
    let mut routes = Vec::new();
    for (i, (dst, len)) in [
        (IpAddr::V4(Ipv4Addr::new(10, 244, 1, 0)), 24u8),
        (IpAddr::V6("fd00:1::".parse().unwrap()), 64),
        (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = RouteMessage::default();
        r.header.address_family = if dst.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        r.header.destination_prefix_length = len;
        r.header.table = 254;
        r.header.kind = RouteType::Unicast;
        if len > 0 {
            r.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        }
        r.attributes.push(RouteAttribute::Table(254));
        r.attributes.push(RouteAttribute::Oif(i as u32 + 1));
        routes.extend(route_message(RouteNetlinkMessage::NewRoute(r), 7));
    }
    let mut addrs = Vec::new();
    for (ip, label) in [
        (IpAddr::V4(Ipv4Addr::new(192, 168, 0, 10)), Some("eth0")),
        (IpAddr::V6("fe80::1".parse().unwrap()), None),
    ] {
        let mut a = AddressMessage::default();
        a.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        a.header.prefix_len = 24;
        a.header.index = 2;
        a.attributes.push(AddressAttribute::Local(ip));
        a.attributes.push(AddressAttribute::Address(ip));
        if let Some(l) = label {
            a.attributes.push(AddressAttribute::Label(l.into()));
        }
        addrs.extend(route_message(RouteNetlinkMessage::NewAddress(a), 8));
    }
    let mut rules = Vec::new();
    for src in [
        Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5))),
        None,
        Some(IpAddr::V6("fd00::5".parse().unwrap())),
    ] {
        let mut r = RuleMessage::default();
        r.header.family = match src {
            Some(IpAddr::V6(_)) => AddressFamily::Inet6,
            _ => AddressFamily::Inet,
        };
        if let Some(ip) = src {
            r.header.src_len = if ip.is_ipv4() { 32 } else { 128 };
            r.attributes.push(RuleAttribute::Source(ip));
        }
        r.attributes.push(RuleAttribute::Table(100));
        rules.extend(route_message(RouteNetlinkMessage::NewRule(r), 9));
    }
    let mut done = routes.clone();
    done.extend(raw_message(3, 2, 7, &0i32.to_ne_bytes()));
    let mut error = raw_message(2, 0, 7, &(-13i32).to_ne_bytes());
    error.extend_from_slice(&[0; 16]);
    vec![routes, addrs, rules, done, error]
}

/// Every netlink reply to start mutations from: the captured fixtures and the generated ones.
static NETLINK_SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut seeds: Vec<Vec<u8>> = [
        "netdev/links.bin",
        "qdisc/qdisc.bin",
        "arp/neigh.bin",
        "tcpsummary/inet.bin",
        "tcpsummary/inet6.bin",
        "sockbacklog/inet.bin",
        "sockbacklog/inet6.bin",
        "listeners/listeners.bin",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    seeds.extend(generated_netlink_seeds());
    seeds
});

/// Interface names of the links fixture, for the qdisc parser.
static LINK_NAMES: LazyLock<HashMap<u32, String>> =
    LazyLock::new(|| links::names(&fixture("netdev/links.bin")).expect("links fixture"));

/// Sequence numbers the fixtures' messages carry (for `append_messages`).
static FIXTURE_SEQS: LazyLock<Vec<u32>> = LazyLock::new(|| {
    let mut seqs: Vec<u32> = NETLINK_SEEDS
        .iter()
        .filter(|s| s.len() >= 16)
        .map(|s| u32::from_ne_bytes(s[8..12].try_into().unwrap()))
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs
});

/// The procfs text fixtures.
static TEXT_SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    [
        "tcp/snmp",
        "tcpext/netstat",
        "sock/sockstat",
        "softnet/softnet_stat",
        "conntrack/nf_conntrack",
        "conntrack/nf_conntrack_count",
        "conntrack/nf_conntrack_max",
        "arp/arp_cache",
        "arp/gc_thresh3",
        "tcphash/tcp_ehash_entries",
        "tools/sockstat",
        "e2e/proc/net/snmp",
        "e2e/proc/net/netstat",
        "e2e/proc/net/sockstat",
        "e2e/proc/net/softnet_stat",
        "e2e/proc/net/stat/nf_conntrack",
        "e2e/proc/net/stat/arp_cache",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect()
});

/// The running kernel's BTF and kfree_skb format, when this machine exposes them.
static KERNEL_BTF: LazyLock<Option<Vec<u8>>> =
    LazyLock::new(|| std::fs::read("/sys/kernel/btf/vmlinux").ok());
static KFREE_SKB_FORMAT: LazyLock<Option<String>> = LazyLock::new(|| {
    [
        "/sys/kernel/tracing/events/skb/kfree_skb/format",
        "/sys/kernel/debug/tracing/events/skb/kfree_skb/format",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
});

/// A kfree_skb format file as the kernel writes it (used when tracefs is not readable).
const SAMPLE_FORMAT: &str = "\
    name: kfree_skb\nID: 1433\nformat:\n\
    \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
    \tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
    \tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
    \tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;\n\
    \tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;\n\
    \tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;\n\n\
    print fmt: \"skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s\", REC->skbaddr, \
    REC->rx_sk, REC->protocol, REC->location, __print_symbolic(REC->reason, { 1, \"CONSUMED\" }, \
    { 2, \"NOT_SPECIFIED\" }, { 3, \"NO_SOCKET\" }, { 4, \"SOCKET_CLOSE\" }, { 118, \"MAX\" })\n";

static FORMAT_SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut v = vec![SAMPLE_FORMAT.as_bytes().to_vec()];
    if let Some(f) = KFREE_SKB_FORMAT.as_ref() {
        v.push(f.clone().into_bytes());
    }
    v
});

/// Configuration files: the e2e fixture's and the one deployed.
static CONFIG_SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut v = vec![fixture("e2e/config.yaml")];
    if let Ok(d) =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/config.yaml"))
    {
        v.push(d);
    }
    v.push(
        b"web:\n  listen_address: \":9102\"\n  telemetry_path: /metrics\npaths:\n  procfs: /proc\n\
otlp:\n  endpoint: http://collector:4318\n  protocol: grpc\n  interval: 15s\n  timeout: 5s\n\
collection:\n  workers: 2\nresource_attributes:\n  cluster: prod\nprobes:\n  qdisc:\n    \
device_prefixes: [cali, eth]\n  packetloss:\n    attach: tp_btf\n  tcpsummary:\n    \
socket_path: sock_diag\nchecks:\n  interval: 1m\n  intervals: {KernelParam: 5m}\n  \
policy_route_cnis:\n    - {name: vpc-cni, interface_prefixes: [eni]}\n  vpc_cidr: 10.0.0.0/8\n\
events:\n  sinks: [stdout, loki]\n  loki_endpoint: http://loki:3100\n"
            .to_vec(),
    );
    v
});

const MASQ_SEED: &str = "\
    nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 172.16.0.0/12\n  - fd00::/8\nmasqLinkLocal: false\n\
    resyncInterval: 60s\n";

const CGROUP_SEED: &str = "\
    12:pids:/kubepods.slice/kubepods-burstable.slice/\
    kubepods-burstable-pod0f9c2a5e_7b1d_4c3e_9a8b_1234567890ab.slice/\
    cri-containerd-0123abcd.scope\n\
    1:name=systemd:/init.scope\n\
    0::/kubepods/besteffort/pod0f9c2a5e-7b1d-4c3e-9a8b-1234567890ab/ctr\n";

const KMSG_SEED: &str = "\
    4,1234,5678,-;neighbour: arp_cache: neighbor table overflow!\n SUBSYSTEM=net\n\
     DEVICE=+net:eth0\n";

// ---------------------------------------------------------------------------------------------
// Mutations.

/// A length written over a length field: relative to the old value, or any value.
#[derive(Clone, Debug)]
enum Len {
    Delta(i32),
    Abs(u32),
}

impl Len {
    fn apply(&self, old: u32) -> u32 {
        match *self {
            Len::Delta(d) => old.wrapping_add_signed(d),
            Len::Abs(v) => v,
        }
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    Duplicate(Index, usize, Index),
    /// An interesting integer (1, 2, 4 or 8 bytes, native order) written anywhere.
    Word(Index, u64, u8),
    /// This input up to a point, then another seed from a point.
    Splice(Index, Index, Index),
    MsgLen(Index, Len),
    MsgType(Index, u16),
    MsgSeq(Index, u32),
    MsgDrop(Index),
    MsgDup(Index),
    MsgAppend(Vec<u8>),
    AttrLen(Index, Len),
    AttrType(Index, u16),
    /// A TLV inserted before an attribute, the enclosing message and attribute lengths grown.
    AttrInsert(Index, Vec<u8>),
    Token(Index, String),
    LineDelete(Index),
    LineDup(Index),
    LineSwap(Index, Index),
    Whitespace(Index, &'static str),
}

fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => select(vec![
            0u32, 1, 2, 3, 4, 7, 8, 12, 15, 16, 17, 19, 20, 24, 31, 32, 36, 63, 64, 72, 127, 128,
            255, 256, 0x3fff, 0x7fff, 0x8000, 0xfffc, 0xfffe, 0xffff, 0x1_0000, 0x10_0000,
            0x7fff_ffff, 0x8000_0000, 0xffff_fff0, 0xffff_fffe, 0xffff_ffff,
        ]),
        1 => any::<u32>(),
    ]
}

fn len_change() -> impl Strategy<Value = Len> {
    prop_oneof![
        (-24i32..24).prop_map(Len::Delta),
        interesting_u32().prop_map(Len::Abs),
    ]
}

fn generic_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Set(i, x)),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..256, any::<Index>())
            .prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
        2 => (
            any::<Index>(),
            prop_oneof![
                interesting_u32().prop_map(u64::from),
                Just(u64::MAX),
                Just(i64::MIN as u64),
                any::<u64>()
            ],
            select(vec![1u8, 2, 4, 8])
        )
            .prop_map(|(i, v, w)| Mutation::Word(i, v, w)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, s, b)| Mutation::Splice(a, s, b)),
    ]
}

fn netlink_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => generic_mutation(),
        2 => (any::<Index>(), len_change()).prop_map(|(i, l)| Mutation::MsgLen(i, l)),
        1 => (any::<Index>(), message_type()).prop_map(|(i, t)| Mutation::MsgType(i, t)),
        1 => (any::<Index>(), sequence()).prop_map(|(i, s)| Mutation::MsgSeq(i, s)),
        1 => any::<Index>().prop_map(Mutation::MsgDrop),
        1 => any::<Index>().prop_map(Mutation::MsgDup),
        1 => netlink_message().prop_map(Mutation::MsgAppend),
        3 => (any::<Index>(), len_change()).prop_map(|(i, l)| Mutation::AttrLen(i, l)),
        2 => (any::<Index>(), attr_kind()).prop_map(|(i, t)| Mutation::AttrType(i, t)),
        2 => (any::<Index>(), tlv(2)).prop_map(|(i, t)| Mutation::AttrInsert(i, t)),
    ]
}

fn text_token() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|v| v.to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        (0u32..1000).prop_map(|v| format!("-{v}")),
        any::<u64>().prop_map(|v| format!("{}", u128::from(v) + u128::from(u64::MAX) + 1)),
        any::<u64>().prop_map(|v| format!("{v:x}")),
        any::<u64>().prop_map(|v| format!("{v:016x}")),
        any::<u64>().prop_map(|v| format!("0x{v:x}")),
        select(vec![
            "",
            "+5",
            "-",
            "+",
            "0",
            "00000000",
            "ffffffffffffffff",
            "10000000000000000",
            "99999999999999999999999999",
            "1e3",
            "1.5",
            "NaN",
            "١٢",
            "\u{feff}1",
            "TCP:",
            "Tcp:",
            "Ip:",
            ":",
            "::",
            "entries",
            "inuse"
        ])
        .prop_map(String::from),
        "[A-Za-z:]{1,12}",
        "\\PC{1,6}",
    ]
}

fn text_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        5 => generic_mutation(),
        4 => (any::<Index>(), text_token()).prop_map(|(i, t)| Mutation::Token(i, t)),
        1 => any::<Index>().prop_map(Mutation::LineDelete),
        1 => any::<Index>().prop_map(Mutation::LineDup),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::LineSwap(a, b)),
        2 => (
            any::<Index>(),
            select(vec![" ", "  ", "\t", "\r", "\r\n", "\n", "\n\n", "\u{a0}", "\0", "\u{2028}"])
        )
            .prop_map(|(i, w)| Mutation::Whitespace(i, w)),
    ]
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
}

/// (start, length) of the messages found by following the length fields.
fn message_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p + 16 <= b.len() {
        let len = u32_at(b, p) as usize;
        if len < 16 || len > b.len() - p {
            break;
        }
        out.push((p, len));
        p += (len + 3) & !3;
    }
    out
}

#[derive(Clone, Copy)]
enum LenField {
    Message(usize),
    Attr(usize),
}

/// An attribute header, and the length fields that enclose it.
struct AttrAt {
    at: usize,
    enclosing: Vec<LenField>,
}

/// Whether `b[start..end]` is exactly a chain of attributes.
fn is_attr_chain(b: &[u8], start: usize, end: usize) -> bool {
    let mut p = start;
    if p >= end {
        return false;
    }
    while p < end {
        if p + 4 > end {
            return false;
        }
        let len = usize::from(u16_at(b, p));
        if len < 4 || len > end - p {
            return false;
        }
        p += (len + 3) & !3;
    }
    true
}

fn collect_attrs(
    b: &[u8],
    start: usize,
    end: usize,
    enclosing: &[LenField],
    depth: usize,
    out: &mut Vec<AttrAt>,
) {
    let mut p = start;
    while p + 4 <= end {
        let len = usize::from(u16_at(b, p));
        if len < 4 || len > end - p {
            break;
        }
        out.push(AttrAt {
            at: p,
            enclosing: enclosing.to_vec(),
        });
        if depth < 4 && len >= 8 && is_attr_chain(b, p + 4, p + len) {
            let mut inner = enclosing.to_vec();
            inner.push(LenField::Attr(p));
            collect_attrs(b, p + 4, p + len, &inner, depth + 1, out);
        }
        p += (len + 3) & !3;
    }
}

/// The attributes of every message, nested ones included. The family header's size is
/// guessed: the first of the usual sizes after which the rest is a chain of attributes.
fn attr_spans(b: &[u8]) -> Vec<AttrAt> {
    let mut out = Vec::new();
    for (start, len) in message_spans(b) {
        let end = start + len;
        for hdr in [16usize, 12, 8, 20, 72, 4] {
            let s = start + 16 + hdr;
            if s < end && is_attr_chain(b, s, end) {
                collect_attrs(b, s, end, &[LenField::Message(start)], 0, &mut out);
                break;
            }
        }
    }
    out
}

fn apply(input: &[u8], mutations: &[Mutation], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut b = input.to_vec();
    for m in mutations {
        apply_one(&mut b, m, pool);
    }
    b
}

fn lines_of(b: &[u8]) -> Vec<Vec<u8>> {
    b.split_inclusive(|c| *c == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn apply_one(b: &mut Vec<u8>, m: &Mutation, pool: &[Vec<u8>]) {
    let len = b.len();
    match m {
        Mutation::Flip(i, x) if len > 0 => b[i.index(len)] ^= x,
        Mutation::Set(i, x) if len > 0 => b[i.index(len)] = *x,
        Mutation::Insert(i, bytes) => {
            let at = i.index(len + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        Mutation::Delete(i, n) if len > 0 => {
            let at = i.index(len);
            b.drain(at..(at + n).min(len));
        }
        Mutation::Truncate(i) => b.truncate(i.index(len + 1)),
        Mutation::Duplicate(from, n, to) if len > 0 => {
            let at = from.index(len);
            let chunk = b[at..(at + n).min(len)].to_vec();
            let to = to.index(len + 1);
            b.splice(to..to, chunk);
        }
        Mutation::Word(i, v, width) => {
            let w = usize::from(*width);
            if len >= w {
                let at = i.index(len - w + 1);
                b[at..at + w].copy_from_slice(&v.to_ne_bytes()[..w]);
            }
        }
        Mutation::Splice(cut, which, from) if !pool.is_empty() => {
            let other = &pool[which.index(pool.len())];
            b.truncate(cut.index(len + 1));
            b.extend_from_slice(&other[from.index(other.len() + 1)..]);
        }
        Mutation::MsgLen(i, l) => {
            let spans = message_spans(b);
            let at = if spans.is_empty() {
                (len >= 4).then_some(0)
            } else {
                Some(spans[i.index(spans.len())].0)
            };
            if let Some(at) = at {
                let v = l.apply(u32_at(b, at));
                b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
            }
        }
        Mutation::MsgType(i, t) => {
            let spans = message_spans(b);
            if !spans.is_empty() {
                let at = spans[i.index(spans.len())].0 + 4;
                b[at..at + 2].copy_from_slice(&t.to_ne_bytes());
            }
        }
        Mutation::MsgSeq(i, s) => {
            let spans = message_spans(b);
            if !spans.is_empty() {
                let at = spans[i.index(spans.len())].0 + 8;
                b[at..at + 4].copy_from_slice(&s.to_ne_bytes());
            }
        }
        Mutation::MsgDrop(i) => {
            let spans = message_spans(b);
            if !spans.is_empty() {
                let (at, l) = spans[i.index(spans.len())];
                b.drain(at..((at + l + 3) & !3).min(len));
            }
        }
        Mutation::MsgDup(i) => {
            let spans = message_spans(b);
            if !spans.is_empty() {
                let (at, l) = spans[i.index(spans.len())];
                let end = ((at + l + 3) & !3).min(len);
                let copy = b[at..end].to_vec();
                b.splice(end..end, copy);
            }
        }
        Mutation::MsgAppend(msg) => {
            pad4(b);
            b.extend_from_slice(msg);
        }
        Mutation::AttrLen(i, l) => {
            let attrs = attr_spans(b);
            if !attrs.is_empty() {
                let at = attrs[i.index(attrs.len())].at;
                let v = l.apply(u32::from(u16_at(b, at))) as u16;
                b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
            }
        }
        Mutation::AttrType(i, t) => {
            let attrs = attr_spans(b);
            if !attrs.is_empty() {
                let at = attrs[i.index(attrs.len())].at + 2;
                b[at..at + 2].copy_from_slice(&t.to_ne_bytes());
            }
        }
        Mutation::AttrInsert(i, tlv) => {
            let attrs = attr_spans(b);
            if !attrs.is_empty() {
                let a = &attrs[i.index(attrs.len())];
                let grow = tlv.len();
                for f in &a.enclosing {
                    match *f {
                        LenField::Message(at) => {
                            let v = u32_at(b, at).wrapping_add(grow as u32);
                            b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
                        }
                        LenField::Attr(at) => {
                            let v = u16_at(b, at).wrapping_add(grow as u16);
                            b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
                        }
                    }
                }
                b.splice(a.at..a.at, tlv.iter().copied());
            }
        }
        Mutation::Token(i, t) => {
            let mut tokens = Vec::new();
            let mut start = None;
            for (p, c) in b.iter().enumerate() {
                match (c.is_ascii_whitespace(), start) {
                    (false, None) => start = Some(p),
                    (true, Some(s)) => {
                        tokens.push((s, p));
                        start = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = start {
                tokens.push((s, len));
            }
            if !tokens.is_empty() {
                let (s, e) = tokens[i.index(tokens.len())];
                b.splice(s..e, t.bytes());
            }
        }
        Mutation::LineDelete(i) => {
            let mut lines = lines_of(b);
            if !lines.is_empty() {
                lines.remove(i.index(lines.len()));
                *b = lines.concat();
            }
        }
        Mutation::LineDup(i) => {
            let mut lines = lines_of(b);
            if !lines.is_empty() {
                let at = i.index(lines.len());
                let l = lines[at].clone();
                lines.insert(at, l);
                *b = lines.concat();
            }
        }
        Mutation::LineSwap(x, y) => {
            let mut lines = lines_of(b);
            if !lines.is_empty() {
                let n = lines.len();
                lines.swap(x.index(n), y.index(n));
                *b = lines.concat();
            }
        }
        Mutation::Whitespace(i, w) => {
            let at = i.index(len + 1);
            b.splice(at..at, w.bytes());
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Netlink generators.

fn message_type() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => select(vec![
            1u16, 2, 3, 4, 16, 17, 19, 20, 21, 24, 25, 28, 29, 32, 33, 36, 37, 40, 44, 88, 100,
        ]),
        1 => any::<u16>(),
    ]
}

fn sequence() -> impl Strategy<Value = u32> {
    prop_oneof![
        select(vec![0u32, 1, 7, 8, 9, u32::MAX]),
        select(FIXTURE_SEQS.clone()),
        any::<u32>(),
    ]
}

fn attr_kind() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => 0u16..64,
        1 => (0u16..64).prop_map(|k| k | 0x8000),
        1 => any::<u16>(),
    ]
}

/// Kinds of link, qdisc, class and filter whose options netlink-packet-route decodes by kind.
const KINDS: &[&str] = &[
    "veth",
    "vlan",
    "vxlan",
    "bridge",
    "bond",
    "macvlan",
    "macvtap",
    "ipvlan",
    "ipvtap",
    "geneve",
    "gre",
    "gretap",
    "ip6gre",
    "ipip",
    "sit",
    "wireguard",
    "vrf",
    "xfrm",
    "hsr",
    "macsec",
    "tun",
    "dummy",
    "netkit",
    "gtp",
    "fq_codel",
    "htb",
    "ingress",
    "clsact",
    "mq",
    "fq",
    "pfifo_fast",
    "noqueue",
    "u32",
    "matchall",
    "flower",
    "bpf",
    "cake",
    "sfq",
    "tbf",
    "netem",
    "prio",
    "red",
    "hfsc",
    "basic",
    "fw",
    "route",
    "mirred",
    "gact",
    "nat",
    "tunnel_key",
    "skbedit",
];

/// One attribute value: random bytes, an integer, an address or a string.
fn attr_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48),
        interesting_u32().prop_map(|v| v.to_ne_bytes().to_vec()),
        any::<u64>().prop_map(|v| v.to_ne_bytes().to_vec()),
        any::<u16>().prop_map(|v| v.to_ne_bytes().to_vec()),
        any::<[u8; 16]>().prop_map(|v| v.to_vec()),
        select(KINDS.to_vec()).prop_map(|k| format!("{k}\0").into_bytes()),
        "[a-z0-9]{0,15}".prop_map(|s| format!("{s}\0").into_bytes()),
    ]
}

fn encode_tlv(kind: u16, value: &[u8], len: Option<&Len>) -> Vec<u8> {
    let exact = 4 + value.len() as u32;
    let l = len.map_or(exact, |l| l.apply(exact)) as u16;
    let mut out = Vec::with_capacity(4 + value.len() + 3);
    out.extend_from_slice(&l.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    pad4(&mut out);
    out
}

/// A TLV (padded), nested up to `depth` levels, its length field right most of the time.
fn tlv(depth: u32) -> BoxedStrategy<Vec<u8>> {
    let leaf = (
        attr_kind(),
        attr_value(),
        prop::option::weighted(0.1, len_change()),
    )
        .prop_map(|(k, v, l)| encode_tlv(k, &v, l.as_ref()));
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        3 => leaf,
        1 => (
            attr_kind(),
            prop::collection::vec(tlv(depth - 1), 0..5),
            prop::option::weighted(0.1, len_change()),
        )
            .prop_map(|(k, kids, l)| encode_tlv(k, &kids.concat(), l.as_ref())),
        1 => (
            select(vec![1u16, 2, 18, 26, 7, 9, 22, 8]),
            select(KINDS.to_vec()),
            prop::collection::vec(tlv(depth - 1), 0..4),
        )
            .prop_map(|(k, kind, data)| {
                // IFLA_LINKINFO-like: a kind, then its data.
                let mut v = encode_tlv(1, format!("{kind}\0").as_bytes(), None);
                v.extend(encode_tlv(2, &data.concat(), None));
                encode_tlv(k, &v, None)
            }),
    ]
    .boxed()
}

/// A netlink message of a route-netlink, sock_diag or control type: header, family header
/// of a usual size, attributes; its length field sometimes wrong.
fn netlink_message() -> impl Strategy<Value = Vec<u8>> {
    (
        message_type(),
        select(vec![0u16, 2, 0x10, 0x22, 0xffff]),
        sequence(),
        select(vec![0usize, 4, 8, 12, 16, 20, 72]),
        prop::collection::vec(any::<u8>(), 72),
        select(KINDS.to_vec()),
        prop::collection::vec(tlv(2), 0..8),
        prop::option::weighted(0.15, len_change()),
    )
        .prop_map(|(kind, flags, seq, hdr, hdr_bytes, k, attrs, len)| {
            let mut payload = hdr_bytes[..hdr].to_vec();
            if kind == 2 && hdr >= 4 {
                // NLMSG_ERROR: an errno that is interesting to negate.
                let code =
                    [0i32, -1, -13, -95, 1, i32::MIN, i32::MAX][usize::from(hdr_bytes[0]) % 7];
                payload[..4].copy_from_slice(&code.to_ne_bytes());
            }
            if hdr_bytes[1] & 1 == 1 {
                payload.extend(encode_tlv(1, format!("{k}\0").as_bytes(), None));
            }
            payload.extend(attrs.concat());
            let mut m = raw_message(kind, flags, seq, &payload);
            if let Some(l) = len {
                let v = l.apply(u32_at(&m, 0));
                m[..4].copy_from_slice(&v.to_ne_bytes());
            }
            m
        })
}

fn netlink_reply() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(netlink_message(), 1..6).prop_map(|m| m.concat())
}

/// Every parser of netlink replies on one input.
fn all_netlink_parsers(input: &[u8]) {
    let most = input.len() / 16 + 1;
    guarded("netlink::raw_messages", input, || {
        let n = netlink::raw_messages(input).take(most + 1).count();
        assert!(
            n <= most,
            "raw_messages: {n} messages from {} bytes",
            input.len()
        );
    });
    guarded("netlink::messages", input, || {
        let n = netlink::messages::<RouteNetlinkMessage>(input)
            .take(most + 1)
            .count();
        assert!(
            n <= most,
            "messages: {n} messages from {} bytes",
            input.len()
        );
    });
    guarded("netlink::inet_sockets", input, || {
        let n = netlink::inet_sockets(input).take(most + 1).count();
        assert!(
            n <= most,
            "inet_sockets: {n} sockets from {} bytes",
            input.len()
        );
    });
    let mut seqs = vec![0u32, 7];
    if input.len() >= 12 {
        seqs.push(u32_at(input, 8));
    }
    for seq in seqs {
        guarded("netlink::append_messages", input, || {
            let mut out = Vec::new();
            let _ = netlink::append_datagram(input, seq, &mut out);
            assert!(
                out.len() <= input.len() + 3,
                "append_messages: {} bytes out of {}",
                out.len(),
                input.len()
            );
        });
    }
    guarded("links::links", input, || drop(links::links(input)));
    guarded("links::names", input, || drop(links::names(input)));
    guarded("netdev::parse", input, || drop(netdev::parse(input)));
    let all = vec![String::new()];
    guarded("qdisc::parse", input, || {
        drop(qdisc::parse(input, &LINK_NAMES, &all))
    });
    guarded("arp::count_entries", input, || {
        drop(arp::count_entries(input))
    });
    guarded("tcpsummary::Summary::add", input, || {
        drop(tcpsummary::Summary::default().add(input))
    });
    guarded("sockbacklog::accept_queue", input, || {
        drop(sockbacklog::accept_queue(input))
    });
    guarded("listeners::parse", input, || {
        if let Ok(found) = listeners::parse(input) {
            assert!(
                found.len() <= most,
                "listeners::parse: {} listeners from {} bytes",
                found.len(),
                input.len()
            );
        }
    });
    guarded("route::parse_routes", input, || {
        drop(route::parse_routes(input))
    });
    guarded("route::parse_addresses", input, || {
        drop(route::parse_addresses(input))
    });
    guarded("route::parse_rules", input, || {
        drop(route::parse_rules(input))
    });
}

// ---------------------------------------------------------------------------------------------
// Text generators and parsers.

/// A number as the kernel would print it, or one it would not.
#[derive(Clone, Debug)]
enum Num {
    Good(u64),
    Bad(String),
}

impl Num {
    fn text(&self) -> String {
        match self {
            Num::Good(v) => v.to_string(),
            Num::Bad(s) => s.clone(),
        }
    }
}

fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        6 => any::<u64>().prop_map(Num::Good),
        2 => (0u64..100).prop_map(Num::Good),
        1 => prop_oneof![
            (1i64..=i64::MAX).prop_map(|v| format!("-{v}")),
            any::<u64>().prop_map(|v| (u128::from(v) + u128::from(u64::MAX) + 1).to_string()),
            "[a-z]{1,4}",
            select(vec!["-0x1", "1.0", "1_000", "0x10", "١"]).prop_map(String::from),
        ]
        .prop_map(Num::Bad),
    ]
}

/// Whitespace between fields: what the kernel writes, and more.
fn gap() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        8 => Just(" "),
        1 => select(vec!["  ", "\t", " \t ", "\u{b}", "\u{c}"]),
    ]
}

fn ident() -> impl Strategy<Value = String> {
    "[A-Z][A-Za-z0-9]{0,14}"
}

/// Distinct names with one value each.
fn named_values(max: usize) -> impl Strategy<Value = Vec<(String, Num)>> {
    prop::collection::btree_map(ident(), num(), 1..max)
        .prop_map(|m| m.into_iter().collect::<Vec<_>>())
        .prop_shuffle()
}

#[derive(Clone, Debug)]
struct SnmpSection {
    prefix: String,
    fields: Vec<(String, Num)>,
    gaps: Vec<&'static str>,
    trailing: &'static str,
}

fn snmp_section_gen() -> impl Strategy<Value = SnmpSection> {
    (
        ident(),
        named_values(24),
        prop::collection::vec(gap(), 24),
        select(vec!["", " ", "\r", "\t "]),
    )
        .prop_map(|(prefix, fields, gaps, trailing)| SnmpSection {
            prefix,
            fields,
            gaps,
            trailing,
        })
}

impl SnmpSection {
    fn render(&self) -> String {
        let mut h = format!("{}:", self.prefix);
        let mut v = format!("{}:", self.prefix);
        for (i, (name, value)) in self.fields.iter().enumerate() {
            let g = self.gaps[i % self.gaps.len()];
            h.push_str(g);
            h.push_str(name);
            v.push_str(g);
            v.push_str(&value.text());
        }
        format!("{h}{}\n{v}{}\n", self.trailing, self.trailing)
    }
}

fn text_parsers(input: &[u8], names: &[&str]) {
    guarded("tcp::parse", input, || drop(tcp::parse(input)));
    guarded("tcpext::parse", input, || drop(tcpext::parse(input)));
    guarded("sock::parse", input, || drop(sock::parse(input)));
    guarded("softnet::parse", input, || drop(softnet::parse(input)));
    guarded("tcphash::parse", input, || drop(tcphash::parse(input)));
    let count = fixture("conntrack/nf_conntrack_count");
    let max = fixture("conntrack/nf_conntrack_max");
    let stat = fixture("conntrack/nf_conntrack");
    guarded("conntrack::parse", input, || {
        drop(conntrack::parse(input, &count, &max));
        drop(conntrack::parse(&stat, input, input));
    });
    let gc = fixture("arp/gc_thresh3");
    let neigh = fixture("arp/neigh.bin");
    let cache = fixture("arp/arp_cache");
    guarded("arp::parse", input, || {
        drop(arp::parse(input, &neigh, &cache));
        drop(arp::parse(&gc, &neigh, input));
    });
    for prefix in ["Tcp", "TcpExt", "Ip", "TCP", "sockets", ""] {
        guarded("format::snmp_section", input, || {
            drop(format::snmp_section(input, prefix, names))
        });
        guarded("format::keyed_line", input, || {
            drop(format::keyed_line(input, prefix, names))
        });
    }
    guarded("format::percpu_table", input, || {
        drop(format::percpu_table(input, names))
    });
    guarded("format::name_value_lines", input, || {
        drop(format::name_value_lines(input, names))
    });
    for columns in [0, 1, 3, 13, 40] {
        guarded("format::softnet_columns", input, || {
            drop(format::softnet_columns(input, columns))
        });
    }
    guarded("format::single_number", input, || {
        drop(format::single_number(input))
    });
}

const SOME_NAMES: &[&str] = &[
    "InSegs",
    "CurrEstab",
    "inuse",
    "tw",
    "mem",
    "found",
    "entries",
    "unresolved_discards",
    "",
];

// ---------------------------------------------------------------------------------------------
// BTF generator.

#[derive(Clone, Debug)]
enum BtfType {
    /// A type of a kind whose record has `extra` bytes after the 12-byte header.
    Plain { kind: u32, vlen: u16 },
    Enum {
        name: String,
        signed: bool,
        values: Vec<(String, u32)>,
    },
    Enum64 {
        name: String,
        values: Vec<(String, u64)>,
    },
}

const BTF_MAGIC: u16 = 0xeb9f;

fn btf_type() -> impl Strategy<Value = BtfType> {
    let variant = "(SKB_DROP_REASON_|SKB_|)[A-Z_]{1,12}";
    prop_oneof![
        4 => (select(vec![1u32, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]), 0u16..6)
            .prop_map(|(kind, vlen)| BtfType::Plain { kind, vlen }),
        1 => ("[a-z_]{1,12}", any::<bool>(), prop::collection::vec((variant, any::<u32>()), 0..6))
            .prop_map(|(name, signed, values)| BtfType::Enum { name, signed, values }),
        1 => ("[a-z_]{1,12}", prop::collection::vec((variant, any::<u64>()), 0..6))
            .prop_map(|(name, values)| BtfType::Enum64 { name, values }),
    ]
}

/// Header fields (hdr_len, type_off, type_len, str_off, str_len): right, or anything.
#[derive(Clone, Debug)]
struct BtfHeader {
    overrides: [Option<u32>; 5],
}

/// A BTF blob of `types`, with the strings they name.
fn build_btf(types: &[BtfType], header: &BtfHeader) -> Vec<u8> {
    let mut strs = vec![0u8];
    let mut offsets: HashMap<String, u32> = HashMap::new();
    let mut name = |s: &str| -> u32 {
        if let Some(o) = offsets.get(s) {
            return *o;
        }
        let o = strs.len() as u32;
        strs.extend_from_slice(s.as_bytes());
        strs.push(0);
        offsets.insert(s.to_string(), o);
        o
    };
    let mut t = Vec::new();
    let push = |t: &mut Vec<u8>, v: u32| t.extend_from_slice(&v.to_ne_bytes());
    for ty in types {
        match ty {
            BtfType::Plain { kind, vlen } => {
                push(&mut t, 0);
                push(&mut t, (kind << 24) | u32::from(*vlen));
                push(&mut t, 4);
                let extra = match kind {
                    1 | 14 | 17 => 4,
                    3 => 12,
                    4 | 5 | 15 => usize::from(*vlen) * 12,
                    6 | 13 => usize::from(*vlen) * 8,
                    _ => 0,
                };
                t.extend(std::iter::repeat_n(0u8, extra));
            }
            BtfType::Enum {
                name: n,
                signed,
                values,
            } => {
                push(&mut t, name(n));
                push(
                    &mut t,
                    (6 << 24) | (u32::from(*signed) << 31) | values.len() as u32,
                );
                push(&mut t, 4);
                for (vn, v) in values {
                    push(&mut t, name(vn));
                    push(&mut t, *v);
                }
            }
            BtfType::Enum64 { name: n, values } => {
                push(&mut t, name(n));
                push(&mut t, (19 << 24) | values.len() as u32);
                push(&mut t, 8);
                for (vn, v) in values {
                    push(&mut t, name(vn));
                    push(&mut t, *v as u32);
                    push(&mut t, (*v >> 32) as u32);
                }
            }
        }
    }
    let right = [24u32, 0, t.len() as u32, t.len() as u32, strs.len() as u32];
    let mut b = Vec::new();
    b.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
    b.extend_from_slice(&[1, 0]);
    for (r, o) in right.iter().zip(&header.overrides) {
        b.extend_from_slice(&o.unwrap_or(*r).to_ne_bytes());
    }
    b.extend_from_slice(&t);
    b.extend_from_slice(&strs);
    b
}

fn btf_header() -> impl Strategy<Value = BtfHeader> {
    prop::collection::vec(prop::option::weighted(0.15, interesting_u32()), 5).prop_map(|v| {
        BtfHeader {
            overrides: [v[0], v[1], v[2], v[3], v[4]],
        }
    })
}

fn btf_parsers(input: &[u8]) {
    guarded("reasons::drop_reasons", input, || {
        drop(reasons::drop_reasons(input))
    });
    for wanted in ["skb_drop_reason", "", "a"] {
        guarded("kernel_btf::enum_variants", input, || {
            drop(kernel_btf::enum_variants(input, wanted))
        });
    }
}

/// A small real-looking BTF blob to mutate (the unit tests' one, plus an ENUM64).
static BTF_SEED: LazyLock<Vec<u8>> = LazyLock::new(|| {
    build_btf(
        &[
            BtfType::Plain { kind: 1, vlen: 0 },
            BtfType::Plain { kind: 4, vlen: 2 },
            BtfType::Enum64 {
                name: "big".into(),
                values: vec![("BIG_A".into(), 1 << 40)],
            },
            BtfType::Enum {
                name: "skb_drop_reason".into(),
                signed: false,
                values: vec![
                    ("SKB_NOT_DROPPED_YET".into(), 0),
                    ("SKB_CONSUMED".into(), 1),
                    ("SKB_DROP_REASON_NOT_SPECIFIED".into(), 2),
                    ("SKB_DROP_REASON_NO_SOCKET".into(), 3),
                    ("SKB_DROP_REASON_MAX".into(), 4),
                ],
            },
        ],
        &BtfHeader {
            overrides: [None; 5],
        },
    )
});

// ---------------------------------------------------------------------------------------------
// Configuration generator.

/// Listen addresses that resolve without DNS (the sandbox must not query a name server): IP
/// literals, `:PORT`, and strings that fail before any lookup.
fn listen_address() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u16>().prop_map(|p| format!(":{p}")),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| format!("{}:{p}", Ipv4Addr::from(a))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| format!("[{}]:{p}", Ipv6Addr::from(a))),
        "[a-z/ ]{0,10}",
        select(vec![
            ":",
            ":99999",
            ":-1",
            "[::1]",
            "[::1]:",
            "1.2.3.4",
            "1.2.3.4:x"
        ])
        .prop_map(String::from),
    ]
}

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            1u64..100_000,
            select(vec!["s", "ms", "m", "h", "d", "us", "ns"])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        select(vec![
            "0s",
            "",
            "1",
            "-5s",
            "1x",
            "99999999999999999999h",
            "18446744073709551615s",
            "5m 30s",
            "1.5s"
        ])
        .prop_map(String::from),
    ]
}

fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        ("(http|https)://[a-z0-9.]{1,12}(:[0-9]{1,6})?(/[a-z]{0,5})?"),
        "[a-z:/]{0,12}",
        select(vec![
            "http://",
            "http://[::1",
            "http://[::1]:80/x",
            "http://:80",
            "ftp://x"
        ])
        .prop_map(String::from),
    ]
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ip_net().prop_map(|n| n.to_string()),
        1 => "[0-9./:a-f]{0,20}",
    ]
}

fn ip_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| IpNet::new(IpAddr::from(a), l).unwrap()),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, l)| IpNet::new(IpAddr::from(a), l).unwrap()),
    ]
}

const PROBE_NAMES: &[&str] = &[
    "tcp",
    "tcpext",
    "sock",
    "softnet",
    "conntrack",
    "netdev",
    "qdisc",
    "arp",
    "tcpsummary",
    "sockbacklog",
    "packetloss",
    "podip",
];

type J = serde_json::Value;

fn jstr(s: impl Strategy<Value = String>) -> impl Strategy<Value = J> {
    s.prop_map(J::String)
}

/// Any JSON value: what a file with the wrong type in a field holds.
fn any_json() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<u64>().prop_map(J::from),
        (-1e300f64..1e300).prop_map(J::from),
        "\\PC{0,12}".prop_map(J::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
}

/// A field: a value of its own type (right or not in content), or, when `wild`, sometimes
/// anything.
fn field(wild: bool, good: BoxedStrategy<J>) -> BoxedStrategy<J> {
    if wild {
        prop_oneof![4 => good, 1 => any_json()].boxed()
    } else {
        good
    }
}

fn string_list(s: impl Strategy<Value = String> + 'static) -> BoxedStrategy<J> {
    prop::collection::vec(s.prop_map(J::String), 0..4)
        .prop_map(J::Array)
        .boxed()
}

/// An object of the `fields` generated, each present or not.
fn object(fields: Vec<(&'static str, BoxedStrategy<J>)>) -> BoxedStrategy<J> {
    let n = fields.len();
    let (names, values): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    (values, prop::collection::vec(any::<bool>(), n))
        .prop_map(move |(vals, present)| {
            let mut m = serde_json::Map::new();
            for ((name, v), p) in names.iter().zip(vals).zip(present) {
                if p {
                    m.insert((*name).to_string(), v);
                }
            }
            J::Object(m)
        })
        .boxed()
}

/// A configuration file as a JSON value. Not `wild`: every field has a value of its type that
/// deserializes (the file parses); `wild`: anything may be anywhere.
fn config_file(wild: bool) -> BoxedStrategy<J> {
    let f = |g: BoxedStrategy<J>| field(wild, g);
    let path = || jstr("/[a-z/]{0,12}").boxed();
    // Printable text; not U+2028/U+2029, which YAML 1.1 folds as line breaks.
    let text = || jstr("[^\\p{C}\u{2028}\u{2029}]{0,10}").boxed();
    let enum_or = |good: Vec<&'static str>| -> BoxedStrategy<J> {
        let g = select(good).prop_map(|s| J::String(s.to_string()));
        if wild {
            prop_oneof![3 => g, 1 => jstr("[a-z_/]{0,10}")].boxed()
        } else {
            g.boxed()
        }
    };
    let good_duration = || -> BoxedStrategy<J> {
        if wild {
            jstr(duration_text()).boxed()
        } else {
            (1u64..10_000, select(vec!["s", "m", "h", "ms"]))
                .prop_map(|(n, u)| J::String(format!("{n}{u}")))
                .boxed()
        }
    };
    let web = object(vec![
        ("listen_address", f(jstr(listen_address()).boxed())),
        ("telemetry_path", f(jstr("/?[a-z/]{0,10}").boxed())),
    ]);
    let paths = object(vec![
        ("procfs", f(path())),
        ("sysfs", f(path())),
        ("netns", f(path())),
    ]);
    let otlp = object(vec![
        ("endpoint", f(jstr(url()).boxed())),
        ("protocol", enum_or(vec!["grpc", "http/protobuf"])),
        ("interval", good_duration()),
        ("timeout", good_duration()),
    ]);
    let collection = object(vec![("workers", f((0u64..64).prop_map(J::from).boxed()))]);
    let sources = object(vec![
        ("btf_path", f(path())),
        ("socket_path", enum_or(vec!["auto", "bpf", "sock_diag"])),
    ]);
    // Each probe's section: `enabled` and its own options (in wild files, any probe's).
    let enabled = || ("enabled", f(any::<bool>().prop_map(J::Bool).boxed()));
    let device_prefixes = || ("device_prefixes", f(string_list("[a-z]{0,5}")));
    let attach = || {
        (
            "attach",
            enum_or(vec![
                "auto",
                "tp_btf",
                "raw_tracepoint",
                "tracepoint",
                "tracepoint_nobtf",
            ]),
        )
    };
    let ipam_dir = || ("ipam_dir", f(path()));
    let probes = if wild {
        let probe = object(vec![enabled(), device_prefixes(), attach(), ipam_dir()]);
        let name = prop_oneof![3 => select(PROBE_NAMES.to_vec()).prop_map(String::from), 1 => "[a-z]{1,8}"];
        prop::collection::btree_map(name, probe, 0..4)
            .prop_map(|m| J::Object(m.into_iter().collect()))
            .boxed()
    } else {
        object(vec![
            ("qdisc", object(vec![enabled(), device_prefixes()])),
            ("packetloss", object(vec![enabled(), attach()])),
            ("podip", object(vec![enabled(), ipam_dir()])),
            ("tcp", object(vec![enabled()])),
        ])
    };
    let cni = object(vec![
        ("name", jstr("[a-z-]{1,8}").boxed()),
        ("interface_prefixes", string_list("[a-z]{1,4}")),
    ])
    .prop_map(|mut c| {
        // Both fields are required.
        let m = c.as_object_mut().unwrap();
        m.entry("name").or_insert(J::String("cni".into()));
        m.entry("interface_prefixes").or_insert(J::Array(vec![]));
        c
    })
    .boxed();
    let cidr_value = || -> BoxedStrategy<J> {
        if wild {
            jstr(cidr()).boxed()
        } else {
            ip_net().prop_map(|n| J::String(n.to_string())).boxed()
        }
    };
    let check_enabled = || ("enabled", f(any::<bool>().prop_map(J::Bool).boxed()));
    let node_facts = object(vec![
        ("pod_interface_prefixes", f(string_list("[a-z]{0,5}"))),
        ("uplink", f(text())),
        ("vpc_cidr", cidr_value()),
        ("service_cidr", cidr_value()),
    ]);
    let checks = object(vec![
        ("interval", good_duration()),
        ("repeat_interval", good_duration()),
        ("enabled", f(any::<bool>().prop_map(J::Bool).boxed())),
        ("node", f(node_facts)),
        (
            "KernelParam",
            f(object(vec![
                check_enabled(),
                ("interval", good_duration()),
                ("expect_rp_filter", f((0u64..3).prop_map(J::from).boxed())),
                (
                    "expect_tcp_syncookies",
                    f(any::<u32>().prop_map(J::from).boxed()),
                ),
            ])),
        ),
        (
            "KernelLog",
            f(object(vec![
                check_enabled(),
                ("path", f(path())),
                ("patterns", f(string_list("\\PC{0,8}"))),
            ])),
        ),
        (
            "MTUAbnormal",
            f(object(vec![(
                "floor",
                f(any::<u32>().prop_map(J::from).boxed()),
            )])),
        ),
        (
            "PolicyRoute",
            f(object(vec![(
                "cnis",
                f(prop::collection::vec(cni, 0..3).prop_map(J::Array).boxed()),
            )])),
        ),
        (
            "IPtablesAbnormal",
            f(object(vec![("command", f(jstr("[a-z-]{1,10}").boxed()))])),
        ),
        (
            "KubeProxyAbnormal",
            f(object(vec![
                ("standalone", f(any::<bool>().prop_map(J::Bool).boxed())),
                ("healthz", f(jstr(url()).boxed())),
            ])),
        ),
        (
            "IPVSRulesAbnormal",
            f(object(vec![(
                "require_ipvs",
                f(any::<bool>().prop_map(J::Bool).boxed()),
            )])),
        ),
    ]);
    let events = object(vec![
        (
            "sinks",
            if wild {
                string_list(prop_oneof![
                    3 => select(vec!["stdout", "otlp", "loki"]).prop_map(String::from),
                    1 => "[a-z]{0,5}",
                ])
            } else {
                string_list(select(vec!["stdout", "otlp", "loki"]).prop_map(String::from))
            },
        ),
        ("otlp_endpoint", f(jstr(url()).boxed())),
        ("otlp_protocol", enum_or(vec!["grpc", "http/protobuf"])),
        ("loki_endpoint", f(jstr(url()).boxed())),
    ]);
    let resource_attributes = prop::collection::btree_map("[a-z.]{1,8}", "\\PC{0,8}", 0..3)
        .prop_map(|m| J::Object(m.into_iter().map(|(k, v)| (k, J::String(v))).collect()))
        .boxed();
    object(vec![
        ("web", f(web)),
        ("paths", f(paths)),
        ("node_name", f(text())),
        (
            "log_level",
            enum_or(vec!["error", "warn", "info", "debug", "trace"]),
        ),
        ("mode", enum_or(vec!["auto", "standalone", "kubernetes"])),
        ("kubeconfig", f(path())),
        ("otlp", f(otlp)),
        ("collection", f(collection)),
        ("sources", f(sources)),
        ("resource_attributes", f(resource_attributes)),
        ("probes", f(probes)),
        ("checks", f(checks)),
        ("events", f(events)),
    ])
}

/// YAML text of a JSON value: as JSON (a subset of YAML), or in block style.
fn to_yaml(v: &J, block: bool) -> String {
    if !block {
        return serde_json::to_string(v).unwrap();
    }
    let mut out = String::new();
    block_yaml(v, 0, &mut out);
    if out.is_empty() { "{}\n".into() } else { out }
}

fn scalar(v: &J) -> String {
    match v {
        J::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
                && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')
                && ![
                    "nan", "inf", "true", "false", "null", "yes", "no", "on", "off", "y", "n",
                    "Null", "NULL", "True", "False", "TRUE", "FALSE", "Yes", "No", "On", "Off",
                    "YES", "NO", "ON", "OFF", "Y", "N",
                ]
                .contains(&s.as_str());
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).unwrap()
            }
        }
        other => serde_json::to_string(other).unwrap(),
    }
}

fn block_yaml(v: &J, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        J::Object(m) => {
            for (k, val) in m {
                match val {
                    J::Object(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}{}:\n", scalar(&J::String(k.clone()))));
                        block_yaml(val, indent + 2, out);
                    }
                    J::Array(items) if !items.is_empty() => {
                        out.push_str(&format!("{pad}{}:\n", scalar(&J::String(k.clone()))));
                        for it in items {
                            match it {
                                J::Object(o) if !o.is_empty() => {
                                    // First key on the dash line, the rest aligned under it.
                                    let mut sub = String::new();
                                    block_yaml(it, indent + 4, &mut sub);
                                    let sub = sub.replacen(
                                        &" ".repeat(indent + 4),
                                        &format!("{pad}  - "),
                                        1,
                                    );
                                    out.push_str(&sub);
                                }
                                _ => out.push_str(&format!("{pad}  - {}\n", flow(it))),
                            }
                        }
                    }
                    _ => out.push_str(&format!(
                        "{pad}{}: {}\n",
                        scalar(&J::String(k.clone())),
                        flow(val)
                    )),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", flow(other))),
    }
}

fn flow(v: &J) -> String {
    match v {
        J::Object(m) if m.is_empty() => "{}".into(),
        J::Array(a) if a.is_empty() => "[]".into(),
        J::Object(_) | J::Array(_) => serde_json::to_string(v).unwrap(),
        other => scalar(other),
    }
}

/// Where a struct that refuses unknown fields sits in a configuration file.
const STRICT_PLACES: &[&[&str]] = &[
    &[],
    &["web"],
    &["paths"],
    &["otlp"],
    &["collection"],
    &["sources"],
    &["checks"],
    &["events"],
    &["probes", "qdisc"],
    &["probes", "packetloss"],
    &["checks", "node"],
    &["checks", "KernelParam"],
    &["checks", "PolicyRoute"],
    &["checks", "PolicyRoute", "cnis", "0"],
];

fn insert_unknown(doc: &mut J, place: &[&str], key: &str) {
    let mut cur = doc;
    for step in place {
        cur = if let Ok(i) = step.parse::<usize>() {
            if !cur.is_array() {
                *cur = J::Array(vec![]);
            }
            let a = cur.as_array_mut().unwrap();
            if a.len() <= i {
                a.resize(
                    i + 1,
                    serde_json::json!({"name": "cni", "interface_prefixes": []}),
                );
            }
            &mut a[i]
        } else {
            if !cur.is_object() {
                *cur = J::Object(Default::default());
            }
            cur.as_object_mut()
                .unwrap()
                .entry(step.to_string())
                .or_insert(J::Object(Default::default()))
        };
    }
    if !cur.is_object() {
        *cur = J::Object(Default::default());
    }
    cur.as_object_mut()
        .unwrap()
        .insert(key.to_string(), J::from(1));
}

/// Flags and environment values, DNS-free like [`listen_address`].
#[derive(Clone, Debug)]
struct FlagsEnv {
    listen_address: String,
    telemetry_path: Option<String>,
    node_name: Option<String>,
    disable: Vec<String>,
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<String>,
    otlp_interval: Option<String>,
    log_level: Option<String>,
    mode: Option<String>,
    env: BTreeMap<&'static str, String>,
}

const ENV_NAMES: &[&str] = &[
    "NODE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
];

fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,16}",
        any::<u64>().prop_map(|v| v.to_string()),
        "[a-z]{1,5}=[a-z%0-9A-F]{0,8}(,[a-z]{0,5}=[%a-z0-9]{0,6}){0,3}",
        url(),
        select(vec![
            "grpc",
            "http/protobuf",
            "0",
            "-1",
            " ",
            "%",
            "%zz",
            "k=%e2%82",
            "=v,k"
        ])
        .prop_map(String::from),
    ]
}

fn flags_env() -> impl Strategy<Value = FlagsEnv> {
    let opt = |s: BoxedStrategy<String>| prop::option::weighted(0.3, s);
    (
        listen_address(),
        opt("/?[a-z/]{0,8}".boxed()),
        opt("\\PC{0,8}".boxed()),
        prop::collection::vec(
            prop_oneof![
                select(PROBE_NAMES.to_vec()).prop_map(String::from),
                "[a-z]{0,6}"
            ],
            0..3,
        ),
        opt(url().boxed()),
        opt(prop_oneof![
            select(vec!["grpc", "http/protobuf"]).prop_map(String::from),
            "[a-z/]{0,8}"
        ]
        .boxed()),
        opt(duration_text().boxed()),
        opt(prop_oneof![
            select(vec!["info", "debug"]).prop_map(String::from),
            "[a-z]{0,6}"
        ]
        .boxed()),
        opt(prop_oneof![
            select(vec!["auto", "standalone", "kubernetes"]).prop_map(String::from),
            "[a-z]{0,6}"
        ]
        .boxed()),
        prop::collection::btree_map(select(ENV_NAMES.to_vec()), env_value(), 0..5),
    )
        .prop_map(
            |(
                listen_address,
                telemetry_path,
                node_name,
                disable,
                otlp_endpoint,
                otlp_protocol,
                otlp_interval,
                log_level,
                mode,
                env,
            )| FlagsEnv {
                listen_address,
                telemetry_path,
                node_name,
                disable,
                otlp_endpoint,
                otlp_protocol,
                otlp_interval,
                log_level,
                mode,
                env,
            },
        )
}

impl FlagsEnv {
    fn flags(&self) -> Flags {
        Flags {
            listen_address: Some(self.listen_address.clone()),
            telemetry_path: self.telemetry_path.clone(),
            node_name: self.node_name.clone(),
            disable: self.disable.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            otlp_protocol: self.otlp_protocol.clone(),
            otlp_interval: self.otlp_interval.clone(),
            log_level: self
                .log_level
                .as_deref()
                .and_then(|l| clap::ValueEnum::from_str(l, false).ok()),
            mode: self
                .mode
                .as_deref()
                .and_then(|m| clap::ValueEnum::from_str(m, false).ok()),
            ..Flags::default()
        }
    }
}

/// Flags that keep the resolution off the network: the listen address is an IP literal.
fn offline_flags() -> Flags {
    Flags {
        listen_address: Some(":9102".into()),
        ..Flags::default()
    }
}

/// Parses a configuration file and, if it parses, resolves it (with `flags`, `env`).
fn config_pipeline(text: &str, flags: &Flags, env: &BTreeMap<&'static str, String>) {
    let file = guarded("FileConfig::parse", text.as_bytes(), || {
        FileConfig::parse(text)
    });
    if let Ok(file) = file {
        guarded("Config::resolve", text.as_bytes(), || {
            drop(Config::resolve(flags, &|k| env.get(k).cloned(), file))
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Properties: netlink.

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn netlink_parsers_survive_arbitrary_bytes(
        input in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        all_netlink_parsers(&input);
    }

    #[test]
    fn netlink_parsers_survive_mutated_fixtures(
        seed in any::<Index>(),
        mutations in prop::collection::vec(netlink_mutation(), 1..8),
    ) {
        let seeds = &*NETLINK_SEEDS;
        let input = apply(&seeds[seed.index(seeds.len())], &mutations, seeds);
        all_netlink_parsers(&input);
    }

    #[test]
    fn netlink_parsers_survive_generated_messages(reply in netlink_reply()) {
        all_netlink_parsers(&reply);
    }

    /// A message whose length field claims more than the reply holds fails at once: nothing is
    /// allocated for the claimed length.
    #[test]
    fn netlink_huge_message_length_is_an_error(
        seed in any::<Index>(),
        which in any::<Index>(),
        claimed in prop_oneof![Just(u32::MAX), Just(0x8000_0000u32), 0x1_0000u32..],
    ) {
        let seeds = &*NETLINK_SEEDS;
        let mut input = seeds[seed.index(seeds.len())].clone();
        let spans = message_spans(&input);
        let (at, _) = spans[which.index(spans.len())];
        input[at..at + 4].copy_from_slice(&claimed.to_ne_bytes());
        prop_assume!(claimed as usize > input.len() - at);
        all_netlink_parsers(&input);
        // Every parser reaches the bad message (none stops early on these seeds) and fails.
        prop_assert!(links::links(&input).is_err());
        prop_assert!(arp::count_entries(&input).is_err());
        prop_assert!(qdisc::parse(&input, &LINK_NAMES, &[]).is_err());
        prop_assert!(tcpsummary::Summary::default().add(&input).is_err());
        prop_assert!(sockbacklog::accept_queue(&input).is_err());
        prop_assert!(route::parse_routes(&input).is_err());
        prop_assert!(netlink::append_datagram(&input, 0xdead_beef, &mut Vec::new()).is_err());
    }

    /// An attribute whose length field claims more than its message holds fails the parsers
    /// that decode attributes, at once.
    #[test]
    fn netlink_huge_attribute_length_is_an_error(
        seed in any::<Index>(),
        which in any::<Index>(),
        claimed in prop_oneof![Just(u16::MAX), 0x1000u16..],
    ) {
        let seeds: Vec<&Vec<u8>> =
            NETLINK_SEEDS.iter().filter(|s| !attr_spans(s).is_empty()).collect();
        let mut input = seeds[seed.index(seeds.len())].clone();
        let attrs = attr_spans(&input);
        let a = &attrs[which.index(attrs.len())];
        let LenField::Message(msg) = a.enclosing[0] else { unreachable!() };
        let msg_end = msg + u32_at(&input, msg) as usize;
        prop_assume!(usize::from(claimed) > msg_end - a.at);
        input[a.at..a.at + 2].copy_from_slice(&claimed.to_ne_bytes());
        all_netlink_parsers(&input);
        // Full decoders (route-netlink messages) reject a message whose own attribute
        // overruns it (nested ones are left to the decoders' judgement).
        if a.enclosing.len() == 1 {
            prop_assert!(netlink::messages::<RouteNetlinkMessage>(&input).any(|m| m.is_err()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties: netlink round trips (messages built by the serializers parse back).

#[derive(Clone, Debug)]
struct GenLink {
    new: bool,
    index: u32,
    name: Option<String>,
    stats: Option<[u64; 11]>,
    mtu: Option<u32>,
    link: Option<u32>,
    netnsid: Option<i32>,
    up: bool,
}

fn gen_link() -> impl Strategy<Value = GenLink> {
    (
        prop::bool::weighted(0.9),
        any::<u32>(),
        prop::option::of(prop_oneof!["[a-z0-9@._-]{0,15}", "[^\0]{0,8}"]),
        prop::option::of(any::<[u64; 11]>()),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<i32>()),
        any::<bool>(),
    )
        .prop_map(
            |(new, index, name, stats, mtu, link, netnsid, up)| GenLink {
                new,
                index,
                name,
                stats,
                mtu,
                link,
                netnsid,
                up,
            },
        )
}

fn stats64_of(v: &[u64; 11]) -> Stats64 {
    let mut s = Stats64::default();
    s.rx_bytes = v[0];
    s.rx_errors = v[1];
    s.rx_packets = v[2];
    s.rx_dropped = v[3];
    s.tx_bytes = v[4];
    s.tx_errors = v[5];
    s.rx_fifo_errors = v[6];
    s.tx_fifo_errors = v[7];
    s.rx_crc_errors = v[8];
    s.tx_packets = v[9];
    s.tx_dropped = v[10];
    s
}

fn link_message(l: &GenLink) -> Vec<u8> {
    let mut m = LinkMessage::default();
    m.header.index = l.index;
    if l.up {
        m.header.flags = LinkFlags::Up | LinkFlags::Running;
    }
    if let Some(n) = &l.name {
        m.attributes.push(LinkAttribute::IfName(n.clone()));
    }
    if let Some(mtu) = l.mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(link) = l.link {
        m.attributes.push(LinkAttribute::Link(link));
    }
    if let Some(id) = l.netnsid {
        m.attributes.push(LinkAttribute::LinkNetNsId(id));
    }
    if let Some(s) = &l.stats {
        m.attributes.push(LinkAttribute::Stats64(stats64_of(s)));
    }
    let inner = if l.new {
        RouteNetlinkMessage::NewLink(m)
    } else {
        RouteNetlinkMessage::DelLink(m)
    };
    route_message(inner, 1)
}

#[derive(Clone, Debug)]
enum QdiscStats {
    None,
    Compat(u64, [u32; 5]),
    Stats2 {
        basic: Option<(u64, u32)>,
        queue: Option<[u32; 5]>,
        pkt64: Option<u64>,
    },
}

#[derive(Clone, Debug)]
struct GenQdisc {
    index: i32,
    root: bool,
    kind: &'static str,
    stats: Vec<QdiscStats>,
}

fn gen_qdisc() -> impl Strategy<Value = GenQdisc> {
    let stats = prop_oneof![
        Just(QdiscStats::None),
        (any::<u64>(), any::<[u32; 5]>()).prop_map(|(b, v)| QdiscStats::Compat(b, v)),
        (
            prop::option::of((any::<u64>(), any::<u32>())),
            prop::option::of(any::<[u32; 5]>()),
            prop::option::weighted(0.3, any::<u64>()),
        )
            .prop_map(|(basic, queue, pkt64)| QdiscStats::Stats2 {
                basic,
                queue,
                pkt64
            }),
    ];
    (
        prop_oneof![4 => -1i32..6, 1 => any::<i32>()],
        any::<bool>(),
        select(vec![
            "mq",
            "fq_codel",
            "noqueue",
            "pfifo_fast",
            "fq",
            "ingress",
        ]),
        prop::collection::vec(stats, 0..3),
    )
        .prop_map(|(index, root, kind, stats)| GenQdisc {
            index,
            root,
            kind,
            stats,
        })
}

fn qdisc_message(q: &GenQdisc) -> Vec<u8> {
    let mut m = TcMessage::default();
    m.header.index = q.index;
    m.header.parent = if q.root {
        TcHandle::ROOT
    } else {
        TcHandle::INGRESS
    };
    m.attributes.push(TcAttribute::Kind(q.kind.into()));
    for s in &q.stats {
        match s {
            QdiscStats::None => {}
            QdiscStats::Compat(bytes, v) => {
                let mut c = TcStats::default();
                c.bytes = *bytes;
                c.packets = v[0];
                c.drops = v[1];
                c.overlimits = v[2];
                c.backlog = v[3];
                c.qlen = v[4];
                m.attributes.push(TcAttribute::Stats(c));
            }
            QdiscStats::Stats2 {
                basic,
                queue,
                pkt64,
            } => {
                let mut s2 = Vec::new();
                if let Some((bytes, packets)) = basic {
                    let mut b = TcStatsBasic::default();
                    b.bytes = *bytes;
                    b.packets = *packets;
                    s2.push(TcStats2::Basic(b));
                }
                if let Some(v) = queue {
                    let mut q = TcStatsQueue::default();
                    q.drops = v[0];
                    q.overlimits = v[1];
                    q.backlog = v[2];
                    q.qlen = v[3];
                    q.requeues = v[4];
                    s2.push(TcStats2::Queue(q));
                }
                if let Some(p) = pkt64 {
                    s2.push(TcStats2::Other(DefaultNla::new(
                        8,
                        p.to_ne_bytes().to_vec(),
                    )));
                }
                m.attributes.push(TcAttribute::Stats2(s2));
            }
        }
    }
    route_message(RouteNetlinkMessage::NewQueueDiscipline(m), 1)
}

/// bytes, packets, drops, overlimits, backlog, qlen, as the kernel means them: TCA_STATS2 wins
/// over the compat TCA_STATS, and the 64-bit packet count over the 32-bit one.
fn expected_qdisc(q: &GenQdisc) -> [u64; 6] {
    let mut out = [0u64; 6];
    let mut have2 = false;
    let mut pkt = None;
    for s in &q.stats {
        match s {
            QdiscStats::Stats2 {
                basic,
                queue,
                pkt64,
            } => {
                have2 = true;
                if let Some((b, p)) = basic {
                    out[0] = *b;
                    out[1] = u64::from(*p);
                }
                if let Some(v) = queue {
                    out[2] = u64::from(v[0]);
                    out[3] = u64::from(v[1]);
                    out[4] = u64::from(v[2]);
                    out[5] = u64::from(v[3]);
                }
                if pkt64.is_some() {
                    pkt = *pkt64;
                }
            }
            QdiscStats::Compat(b, v) if !have2 => {
                out = [
                    *b,
                    u64::from(v[0]),
                    u64::from(v[1]),
                    u64::from(v[2]),
                    u64::from(v[3]),
                    u64::from(v[4]),
                ];
            }
            _ => {}
        }
    }
    if let Some(p) = pkt {
        out[1] = p;
    }
    out
}

#[derive(Clone, Debug)]
struct GenSocket {
    v6: bool,
    state: u8,
    recv_queue: u32,
    send_queue: u32,
    attrs: Vec<u8>,
}

fn gen_socket() -> impl Strategy<Value = GenSocket> {
    (
        any::<bool>(),
        prop_oneof![select(vec![1u8, 6, 10]), 0u8..14],
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(tlv(1), 0..3),
    )
        .prop_map(|(v6, state, recv_queue, send_queue, attrs)| GenSocket {
            v6,
            state,
            recv_queue,
            send_queue,
            attrs: attrs.concat(),
        })
}

fn socket_message(s: &GenSocket) -> Vec<u8> {
    let socket_id = if s.v6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let h = InetResponseHeader {
        family: if s.v6 { 10 } else { 2 },
        state: s.state,
        timer: None,
        socket_id,
        recv_queue: s.recv_queue,
        send_queue: s.send_queue,
        uid: 0,
        inode: 1,
    };
    sock_diag_message(&h, &s.attrs, 1)
}

#[derive(Clone, Debug)]
struct GenRoute {
    dst: Option<IpAddr>,
    dst_len: u8,
    header_table: u8,
    table: Option<u32>,
    kind: u8,
    oif: Option<u32>,
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn gen_route() -> impl Strategy<Value = GenRoute> {
    (
        prop::option::of(ip()),
        any::<u8>(),
        any::<u8>(),
        prop::option::of(any::<u32>()),
        prop_oneof![Just(1u8), any::<u8>()],
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(dst, dst_len, header_table, table, kind, oif)| GenRoute {
            dst,
            dst_len,
            header_table,
            table,
            kind,
            oif,
        })
}

fn route_msg(r: &GenRoute) -> Vec<u8> {
    let mut m = RouteMessage::default();
    m.header.address_family = match r.dst {
        Some(IpAddr::V6(_)) => AddressFamily::Inet6,
        _ => AddressFamily::Inet,
    };
    m.header.destination_prefix_length = r.dst_len;
    m.header.table = r.header_table;
    m.header.kind = RouteType::from(r.kind);
    if let Some(d) = r.dst {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(d)));
    }
    if let Some(t) = r.table {
        m.attributes.push(RouteAttribute::Table(t));
    }
    if let Some(o) = r.oif {
        m.attributes.push(RouteAttribute::Oif(o));
    }
    route_message(RouteNetlinkMessage::NewRoute(m), 1)
}

#[derive(Clone, Debug)]
struct GenAddress {
    v6: bool,
    local: Option<[u8; 16]>,
    address: Option<[u8; 16]>,
    label: Option<String>,
    prefix_len: u8,
    scope: u8,
    index: u32,
}

fn gen_address() -> impl Strategy<Value = GenAddress> {
    (
        any::<bool>(),
        prop::option::of(any::<[u8; 16]>()),
        prop::option::of(any::<[u8; 16]>()),
        prop::option::of("[a-z0-9:]{0,15}"),
        any::<u8>(),
        prop_oneof![select(vec![0u8, 200, 253, 254, 255]), any::<u8>()],
        any::<u32>(),
    )
        .prop_map(
            |(v6, local, address, label, prefix_len, scope, index)| GenAddress {
                v6,
                local,
                address,
                label,
                prefix_len,
                scope,
                index,
            },
        )
}

impl GenAddress {
    fn ip(&self, raw: [u8; 16]) -> IpAddr {
        if self.v6 {
            IpAddr::from(raw)
        } else {
            IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
        }
    }
}

fn address_msg(a: &GenAddress) -> Vec<u8> {
    let mut m = AddressMessage::default();
    m.header.family = if a.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.header.prefix_len = a.prefix_len;
    m.header.scope = AddressScope::from(a.scope);
    m.header.index = a.index;
    if let Some(l) = a.local {
        m.attributes.push(AddressAttribute::Local(a.ip(l)));
    }
    if let Some(x) = a.address {
        m.attributes.push(AddressAttribute::Address(a.ip(x)));
    }
    if let Some(l) = &a.label {
        m.attributes.push(AddressAttribute::Label(l.clone()));
    }
    route_message(RouteNetlinkMessage::NewAddress(m), 1)
}

fn rule_msg(src: Option<IpAddr>, src_len: u8) -> Vec<u8> {
    let mut m = RuleMessage::default();
    m.header.family = match src {
        Some(IpAddr::V6(_)) => AddressFamily::Inet6,
        _ => AddressFamily::Inet,
    };
    m.header.src_len = src_len;
    if let Some(ip) = src {
        m.attributes.push(RuleAttribute::Source(ip));
    }
    route_message(RouteNetlinkMessage::NewRule(m), 1)
}

/// One message for `append_messages`: its type, sequence number and payload.
#[derive(Clone, Debug)]
struct GenDatagramMsg {
    kind: u16,
    seq: u32,
    payload: Vec<u8>,
}

fn gen_datagram_msg() -> impl Strategy<Value = GenDatagramMsg> {
    (
        prop_oneof![
            4 => Just(16u16),
            1 => Just(1u16),
            1 => Just(2u16),
            1 => Just(3u16),
            1 => any::<u16>(),
        ],
        prop_oneof![3 => Just(5u32), 1 => any::<u32>()],
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            select(vec![0i32, -1, -13, -95, i32::MIN, i32::MAX, 7])
                .prop_map(|c| c.to_ne_bytes().to_vec()),
        ],
    )
        .prop_map(|(kind, seq, payload)| GenDatagramMsg { kind, seq, payload })
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn netdev_round_trip(links in prop::collection::vec(gen_link(), 0..12)) {
        let reply: Vec<u8> = links.iter().flat_map(link_message).collect();
        let got = guarded("links::links", &reply, || links::links(&reply)).unwrap();
        let want: Vec<&GenLink> = links.iter().filter(|l| l.new).collect();
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            prop_assert_eq!(g.index, w.index);
            let name = w.name.clone().unwrap_or_else(|| format!("if{}", w.index));
            prop_assert_eq!(&g.name, &name);
            prop_assert_eq!(g.stats, w.stats.as_ref().map(stats64_of));
            prop_assert_eq!(g.mtu, w.mtu);
            prop_assert_eq!(g.peer_netnsid, w.netnsid);
            prop_assert_eq!(g.peer, w.link.filter(|_| w.netnsid.is_some()));
            prop_assert_eq!(g.up, w.up);
        }
        let series = netdev::parse(&reply).unwrap();
        prop_assert_eq!(series.len(), want_with_stats(&links));
        let names = links::names(&reply).unwrap();
        for w in links.iter().filter(|l| l.new) {
            prop_assert!(names.contains_key(&w.index));
        }
    }

    #[test]
    fn qdisc_round_trip(
        qdiscs in prop::collection::vec(gen_qdisc(), 0..10),
        names in prop::collection::hash_map(
            -1i32..6,
            select(vec!["eth0", "cali12", "lo", "veth3", "ens5", "docker0"]),
            0..6,
        ),
        prefixes in prop::collection::vec(select(vec!["cali", "eth", "veth", "x", ""]), 0..3),
    ) {
        let reply: Vec<u8> = qdiscs.iter().flat_map(qdisc_message).collect();
        let names: HashMap<u32, String> = names
            .into_iter()
            .filter_map(|(i, n)| Some((u32::try_from(i).ok()?, n.to_string())))
            .collect();
        let prefixes: Vec<String> = prefixes.into_iter().map(String::from).collect();
        let got = guarded("qdisc::parse", &reply, || {
            qdisc::parse(&reply, &names, &prefixes)
        })
        .unwrap();
        let mut want = [0u64; 6];
        for q in &qdiscs {
            let selected = q.root
                && u32::try_from(q.index)
                    .ok()
                    .and_then(|i| names.get(&i))
                    .is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())));
            if selected {
                for (w, v) in want.iter_mut().zip(expected_qdisc(q)) {
                    *w = w.wrapping_add(v);
                }
            }
        }
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(&got[0].values, &want.map(Some).to_vec());
    }

    #[test]
    fn arp_round_trip(
        entries in prop::collection::vec(
            (
                any::<bool>(),
                prop_oneof![select(vec![0u16, 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80]), any::<u16>()],
            ),
            0..20,
        ),
    ) {
        let reply: Vec<u8> = entries
            .iter()
            .flat_map(|(v4, state)| {
                let mut m = NeighbourMessage::default();
                m.header.family = if *v4 { AddressFamily::Inet } else { AddressFamily::Inet6 };
                m.header.state = NeighbourState::from(*state);
                route_message(RouteNetlinkMessage::NewNeighbour(m), 1)
            })
            .collect();
        let want = entries
            .iter()
            .filter(|(v4, state)| *v4 && *state != 0 && *state != 0x40)
            .count() as u64;
        let got = guarded("arp::count_entries", &reply, || arp::count_entries(&reply));
        prop_assert_eq!(got.unwrap(), want);
    }

    #[test]
    fn sock_diag_round_trip(sockets in prop::collection::vec(gen_socket(), 0..20)) {
        let reply: Vec<u8> = sockets.iter().flat_map(socket_message).collect();
        let mut got = tcpsummary::Summary::default();
        guarded("tcpsummary::Summary::add", &reply, || got.add(&reply)).unwrap();
        let mut want = tcpsummary::Summary::default();
        let mut backlog = 0u64;
        for s in &sockets {
            match s.state {
                1 => {
                    want.established += 1;
                    want.tx_queue += u64::from(s.send_queue);
                    want.rx_queue += u64::from(s.recv_queue);
                }
                6 => want.time_wait += 1,
                10 => backlog += u64::from(s.recv_queue),
                _ => {}
            }
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(sockbacklog::accept_queue(&reply).unwrap(), backlog);
    }

    #[test]
    fn route_round_trip(routes in prop::collection::vec(gen_route(), 0..10)) {
        let reply: Vec<u8> = routes.iter().flat_map(route_msg).collect();
        let got = guarded("route::parse_routes", &reply, || route::parse_routes(&reply)).unwrap();
        prop_assert_eq!(got.len(), routes.len());
        for (g, w) in got.iter().zip(&routes) {
            prop_assert_eq!(g.dst, w.dst);
            prop_assert_eq!(g.dst_len, w.dst_len);
            prop_assert_eq!(g.table, w.table.unwrap_or(u32::from(w.header_table)));
            prop_assert_eq!(g.kind, RouteType::from(w.kind));
            prop_assert_eq!(g.oif, w.oif);
        }
    }

    #[test]
    fn address_round_trip(addrs in prop::collection::vec(gen_address(), 0..10)) {
        let reply: Vec<u8> = addrs.iter().flat_map(address_msg).collect();
        let got = guarded("route::parse_addresses", &reply, || {
            route::parse_addresses(&reply)
        })
        .unwrap();
        let want: Vec<(IpAddr, &GenAddress)> = addrs
            .iter()
            .filter_map(|a| Some((a.ip(a.local.or(a.address)?), a)))
            .collect();
        prop_assert_eq!(got.len(), want.len());
        for (g, (ip, w)) in got.iter().zip(want) {
            prop_assert_eq!(g.ip, ip);
            prop_assert_eq!(g.index, w.index);
            prop_assert_eq!(g.prefix_len, w.prefix_len);
            prop_assert_eq!(g.scope, AddressScope::from(w.scope));
            prop_assert_eq!(&g.label, &w.label);
        }
    }

    #[test]
    fn rule_round_trip(
        rules in prop::collection::vec((prop::option::of(ip()), any::<u8>()), 0..10),
    ) {
        let reply: Vec<u8> = rules.iter().flat_map(|(s, l)| rule_msg(*s, *l)).collect();
        let got = guarded("route::parse_rules", &reply, || route::parse_rules(&reply)).unwrap();
        prop_assert_eq!(got.len(), rules.len());
        for (g, (src, len)) in got.iter().zip(&rules) {
            prop_assert_eq!(g.src, *src);
            prop_assert_eq!(g.src_len, *len);
        }
    }

    /// `append_messages` keeps exactly the messages that answer the request, in order, and
    /// stops at NLMSG_DONE or an acknowledgement.
    #[test]
    fn append_messages_model(msgs in prop::collection::vec(gen_datagram_msg(), 0..10)) {
        let encoded: Vec<Vec<u8>> =
            msgs.iter().map(|m| raw_message(m.kind, 0, m.seq, &m.payload)).collect();
        let datagram = encoded.concat();
        let mut out = Vec::new();
        let got = guarded("netlink::append_messages", &datagram, || {
            netlink::append_datagram(&datagram, 5, &mut out)
        });
        let mut want_out = Vec::new();
        let mut want: Result<bool, ()> = Ok(false);
        for (m, e) in msgs.iter().zip(&encoded) {
            if m.seq != 5 {
                continue;
            }
            match m.kind {
                1 => {}
                3 => { want = Ok(true); break; }
                2 => {
                    want = match m.payload.get(..4) {
                        None => Err(()),
                        Some(c) if i32::from_ne_bytes(c.try_into().unwrap()) == 0 => Ok(true),
                        Some(_) => Err(()),
                    };
                    break;
                }
                _ => want_out.extend_from_slice(e),
            }
        }
        prop_assert_eq!(got.map_err(|_| ()), want);
        if want.is_ok() {
            prop_assert_eq!(out, want_out);
        }
    }
}

fn want_with_stats(links: &[GenLink]) -> usize {
    links.iter().filter(|l| l.new && l.stats.is_some()).count()
}

// ---------------------------------------------------------------------------------------------
// Properties: procfs text.

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn text_parsers_survive_arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..1024)) {
        text_parsers(&input, SOME_NAMES);
    }

    #[test]
    fn text_parsers_survive_mutated_fixtures(
        seed in any::<Index>(),
        mutations in prop::collection::vec(text_mutation(), 1..8),
    ) {
        let seeds = &*TEXT_SEEDS;
        let input = apply(&seeds[seed.index(seeds.len())], &mutations, seeds);
        text_parsers(&input, SOME_NAMES);
    }

    /// A well-formed section among others gives back exactly its values; names it does not
    /// have are `None`; a bad value is an error exactly when it is asked for.
    #[test]
    fn snmp_section_returns_what_was_written(
        sections in prop::collection::vec(snmp_section_gen(), 1..5),
        which in any::<Index>(),
        extra in prop::collection::vec(ident(), 0..3),
    ) {
        // Distinct section names (the first section of a name is the one read).
        let mut seen = HashSet::new();
        let sections: Vec<SnmpSection> =
            sections.into_iter().filter(|s| seen.insert(s.prefix.clone())).collect();
        let text: String = sections.iter().map(SnmpSection::render).collect();
        let s = &sections[which.index(sections.len())];
        let mut names: Vec<&str> = s.fields.iter().map(|(n, _)| n.as_str()).collect();
        let extra: Vec<&str> =
            extra.iter().map(String::as_str).filter(|e| !names.contains(e)).collect();
        names.extend(&extra);
        let got = guarded("format::snmp_section", text.as_bytes(), || {
            format::snmp_section(text.as_bytes(), &s.prefix, &names)
        });
        if s.fields.iter().any(|(_, v)| matches!(v, Num::Bad(_))) {
            prop_assert!(got.is_err());
        } else {
            let mut want: Vec<Option<u64>> = s
                .fields
                .iter()
                .map(|(_, v)| match v { Num::Good(v) => Some(*v), Num::Bad(_) => None })
                .collect();
            want.extend(extra.iter().map(|_| None));
            prop_assert_eq!(got.unwrap(), want);
        }
    }

    /// The header alone, or followed by a value line cut short of a value: an error, never
    /// a silent success.
    #[test]
    fn snmp_section_rejects_missing_values(s in snmp_section_gen(), cut in any::<Index>()) {
        let text = s.render();
        let header_end = text.find('\n').unwrap() + 1;
        let cut = header_end + cut.index(text.len() - header_end);
        let broken = &text.as_bytes()[..cut];
        let names: Vec<&str> = s.fields.iter().map(|(n, _)| n.as_str()).collect();
        let got = guarded("format::snmp_section", broken, || {
            format::snmp_section(broken, &s.prefix, &names)
        });
        let values_line = String::from_utf8_lossy(&broken[header_end..]).into_owned();
        let values = values_line
            .strip_prefix(s.prefix.as_str())
            .and_then(|r| r.strip_prefix(':'))
            .map(|r| r.split_whitespace().count());
        if values.is_none_or(|n| n < s.fields.len()) {
            prop_assert!(got.is_err(), "{:?}", String::from_utf8_lossy(broken));
        }
    }

    #[test]
    fn keyed_line_returns_what_was_written(
        prefix in "[A-Z][A-Z0-9]{0,6}",
        fields in prop::collection::btree_map("[a-z_]{1,10}", num(), 1..8),
        gaps in prop::collection::vec(gap(), 16),
        other in prop::collection::vec(("[a-z]{1,5}", "[A-Z]{1,6}"), 0..3),
    ) {
        let fields: Vec<(String, Num)> = fields.into_iter().collect();
        let mut line = format!("{prefix}:");
        for (i, (k, v)) in fields.iter().enumerate() {
            line.push_str(gaps[2 * i % 16]);
            line.push_str(k);
            line.push_str(gaps[(2 * i + 1) % 16]);
            line.push_str(&v.text());
        }
        let mut text = String::new();
        for (k, p) in &other {
            // Other lines, whose prefixes differ from ours.
            if p != &prefix {
                text.push_str(&format!("{p}: {k} 1\n"));
            }
        }
        text.push_str(&line);
        text.push('\n');
        let names: Vec<&str> =
            fields.iter().map(|(k, _)| k.as_str()).chain(["absent_name"]).collect();
        let got = guarded("format::keyed_line", text.as_bytes(), || {
            format::keyed_line(text.as_bytes(), &prefix, &names)
        });
        if fields.iter().any(|(_, v)| matches!(v, Num::Bad(_))) {
            prop_assert!(got.is_err());
        } else {
            let mut want: Vec<Option<u64>> = fields
                .iter()
                .map(|(_, v)| match v {
                    Num::Good(v) => Some(*v),
                    Num::Bad(_) => None,
                })
                .collect();
            want.push(None);
            prop_assert_eq!(got.unwrap(), want);
        }
    }

    /// Column sums of a per-CPU table (wrapping, as counters do); a cell that is not a u64
    /// in hex is an error.
    #[test]
    fn percpu_table_sums_columns(
        names in prop::collection::btree_set("[a-z_]{1,12}", 1..10),
        rows in prop::collection::vec(prop::collection::vec(any::<u64>(), 10), 1..8),
        width in select(vec![0usize, 8]),
        blank_lines in any::<bool>(),
        bad in prop::option::weighted(0.2, (
            any::<Index>(),
            any::<Index>(),
            select(vec!["-1", "g", "1ffffffffffffffff", "0x1", "+", "\u{663}"]),
        )),
    ) {
        let names: Vec<String> = names.into_iter().collect();
        let mut text = names.join("  ");
        text.push('\n');
        let mut sums = vec![0u64; names.len()];
        let bad_cell = bad.map(|(r, c, t)| (r.index(rows.len()), c.index(names.len()), t));
        for (i, r) in rows.iter().enumerate() {
            let mut cols: Vec<String> =
                r[..names.len()].iter().map(|v| format!("{v:0width$x}")).collect();
            if let Some((br, bc, t)) = bad_cell && br == i {
                cols[bc] = t.to_string();
            }
            for (s, v) in sums.iter_mut().zip(&r[..names.len()]) {
                *s = s.wrapping_add(*v);
            }
            text.push_str(&cols.join(" "));
            text.push('\n');
            if blank_lines {
                text.push_str("  \n");
            }
        }
        let asked: Vec<&str> = names.iter().map(String::as_str).chain(["no-such"]).collect();
        let got = guarded("format::percpu_table", text.as_bytes(), || {
            format::percpu_table(text.as_bytes(), &asked)
        });
        if bad_cell.is_some() {
            prop_assert!(got.is_err());
        } else {
            let mut want: Vec<Option<u64>> = sums.into_iter().map(Some).collect();
            want.push(None);
            prop_assert_eq!(got.unwrap(), want);
        }
    }

    /// The text formats are UTF-8: one invalid byte anywhere is an error for every reader.
    #[test]
    fn text_formats_reject_invalid_utf8(
        s in snmp_section_gen(),
        at in any::<Index>(),
        byte in prop_oneof![0x80u8..0xc2, 0xf5u8..=0xff],
    ) {
        let mut text = s.render().into_bytes();
        let at = at.index(text.len() + 1);
        text.insert(at, byte);
        let names: Vec<&str> = s.fields.iter().map(|(n, _)| n.as_str()).collect();
        prop_assert!(format::snmp_section(&text, &s.prefix, &names).is_err());
        prop_assert!(format::keyed_line(&text, &s.prefix, &names).is_err());
        prop_assert!(format::percpu_table(&text, &names).is_err());
        prop_assert!(format::softnet_columns(&text, 1).is_err());
        prop_assert!(format::single_number(&text).is_err());
    }

    #[test]
    fn softnet_columns_sums_columns(
        rows in prop::collection::vec(prop::collection::vec(any::<u32>(), 1..16), 1..8),
        columns in 0usize..16,
    ) {
        let text: String = rows.iter().map(|r| {
            r.iter().map(|v| format!("{v:08x}")).collect::<Vec<_>>().join(" ") + "\n"
        }).collect();
        let got = guarded("format::softnet_columns", text.as_bytes(), || {
            format::softnet_columns(text.as_bytes(), columns)
        });
        if rows.iter().any(|r| r.len() < columns) {
            prop_assert!(got.is_err());
        } else {
            let mut want = vec![0u64; columns];
            for r in &rows {
                for (w, v) in want.iter_mut().zip(r) {
                    *w = w.wrapping_add(u64::from(*v));
                }
            }
            prop_assert_eq!(got.unwrap(), want);
        }
    }

    #[test]
    fn single_number_reads_exactly_one_u64(
        n in num(),
        before in "[ \t\n]{0,3}",
        after in "[ \t\n]{0,3}",
    ) {
        let text = format!("{before}{}{after}", n.text());
        let got = guarded("format::single_number", text.as_bytes(), || {
            format::single_number(text.as_bytes())
        });
        match n {
            Num::Good(v) => prop_assert_eq!(got.unwrap(), v),
            Num::Bad(_) => prop_assert!(got.is_err()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties: BTF and the tracepoint format.

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn btf_survives_arbitrary_bytes(
        input in prop::collection::vec(any::<u8>(), 0..1024),
        magic in any::<bool>(),
    ) {
        let mut input = input;
        if magic && input.len() >= 2 {
            input[..2].copy_from_slice(&BTF_MAGIC.to_ne_bytes());
        }
        btf_parsers(&input);
    }

    #[test]
    fn btf_survives_mutations(mutations in prop::collection::vec(generic_mutation(), 1..8)) {
        let seeds = vec![BTF_SEED.clone()];
        let input = apply(&BTF_SEED, &mutations, &seeds);
        btf_parsers(&input);
    }

    /// Generated BTF: the parser survives wrong header fields, and with a right header reads
    /// back the enum exactly.
    #[test]
    fn btf_enum_round_trip(
        before in prop::collection::vec(btf_type(), 0..8),
        signed in any::<bool>(),
        is64 in any::<bool>(),
        values in prop::collection::vec(
            ("(SKB_DROP_REASON_|SKB_|X_)[A-Z_]{1,16}", any::<u64>()),
            0..12,
        ),
        after in prop::collection::vec(btf_type(), 0..4),
        header in btf_header(),
    ) {
        let wanted = if is64 {
            BtfType::Enum64 { name: "skb_drop_reason".into(), values: values.clone() }
        } else {
            BtfType::Enum {
                name: "skb_drop_reason".into(),
                signed,
                values: values.iter().map(|(n, v)| (n.clone(), *v as u32)).collect(),
            }
        };
        // Earlier enums of the same name would be found first.
        let before: Vec<BtfType> = before
            .into_iter()
            .filter(|t| {
                !matches!(t, BtfType::Enum { name, .. } | BtfType::Enum64 { name, .. }
                    if name == "skb_drop_reason")
            })
            .collect();
        let mut types = before;
        types.push(wanted);
        types.extend(after);
        let blob = build_btf(&types, &header);
        btf_parsers(&blob);
        if header.overrides.iter().all(Option::is_none) {
            let got = kernel_btf::enum_variants(&blob, "skb_drop_reason").unwrap();
            let want: Vec<(String, i64)> = values
                .iter()
                .map(|(n, v)| {
                    let v = if is64 {
                        *v as i64
                    } else if signed {
                        i64::from(*v as u32 as i32)
                    } else {
                        i64::from(*v as u32)
                    };
                    (n.clone(), v)
                })
                .collect();
            prop_assert_eq!(&got, &want);
            let mut reasons = BTreeMap::new();
            for (n, v) in &want {
                let Some(short) = n
                    .strip_prefix("SKB_DROP_REASON_")
                    .or_else(|| n.strip_prefix("SKB_"))
                else {
                    continue;
                };
                if short == "MAX" || short.starts_with("SUBSYS_") {
                    continue;
                }
                if let Ok(v) = u32::try_from(*v) {
                    reasons.insert(v, short.to_string());
                }
            }
            prop_assert_eq!(reasons::drop_reasons(&blob).unwrap(), reasons);
        }
    }

    /// Header fields claiming sections far past the blob are errors, returned at once.
    #[test]
    fn btf_huge_header_fields_are_errors(
        field in 0usize..5,
        claimed in prop_oneof![Just(u32::MAX), 0x0100_0000u32..],
    ) {
        let mut blob = BTF_SEED.clone();
        let at = 4 + 4 * field;
        blob[at..at + 4].copy_from_slice(&claimed.to_ne_bytes());
        btf_parsers(&blob);
        prop_assert!(reasons::drop_reasons(&blob).is_err());
    }

    #[test]
    fn reason_formats_survive_mutations(
        seed in any::<Index>(),
        mutations in prop::collection::vec(text_mutation(), 1..8),
    ) {
        let seeds = &*FORMAT_SEEDS;
        let input = apply(&seeds[seed.index(seeds.len())], &mutations, seeds);
        let text = String::from_utf8_lossy(&input);
        guarded("reasons::reasons_from_format", &input, || drop(reasons::reasons_from_format(&text)));
        guarded("bpf::parse_reason_offset", &input, || drop(bpf::parse_reason_offset(&text)));
    }

    #[test]
    fn reason_formats_survive_arbitrary_text(
        text in "\\PC{0,300}",
        junk in "[{}\",0-9 a-z_:;()]{0,200}",
    ) {
        for t in [text.as_str(), junk.as_str(), &format!("__print_symbolic(REC->reason,{junk}")] {
            guarded("reasons::reasons_from_format", t.as_bytes(), || drop(reasons::reasons_from_format(t)));
            guarded("bpf::parse_reason_offset", t.as_bytes(), || drop(bpf::parse_reason_offset(t)));
        }
    }

    #[test]
    fn reasons_from_format_reads_the_list(
        list in prop::collection::vec((any::<u32>(), "[A-Z][A-Z0-9_]{0,20}", "[ ]{0,2}"), 1..20),
    ) {
        let items: Vec<String> = list
            .iter()
            .map(|(n, name, sp)| format!("{{{sp}{n},{sp}\"{name}\"{sp}}}"))
            .collect();
        let text = format!(
            "print fmt: \"reason: %s\", __print_symbolic(REC->reason, {})\n",
            items.join(", ")
        );
        let mut want = BTreeMap::new();
        for (n, name, _) in &list {
            if name != "MAX" {
                want.insert(*n, name.clone());
            }
        }
        let got = guarded("reasons::reasons_from_format", text.as_bytes(), || {
            reasons::reasons_from_format(&text)
        });
        if want.is_empty() {
            prop_assert!(got.is_err());
        } else {
            prop_assert_eq!(got.unwrap(), want);
        }
    }

    #[test]
    fn parse_reason_offset_finds_the_field(
        offset in any::<u32>(),
        before in prop::collection::vec(("[a-z_]{1,10}", any::<u16>()), 0..6),
        tabs in any::<bool>(),
    ) {
        let sep = if tabs { "\t" } else { " " };
        let mut text = String::from("name: kfree_skb\nformat:\n");
        for (name, off) in &before {
            if name != "reason" {
                text.push_str(&format!(
                    "{sep}field:void * {name};{sep}offset:{off};{sep}size:8;{sep}signed:0;\n"
                ));
            }
        }
        text.push_str(&format!(
            "{sep}field:enum skb_drop_reason reason;{sep}offset:{offset};{sep}size:4;\
             {sep}signed:0;\n"
        ));
        let got = guarded("bpf::parse_reason_offset", text.as_bytes(), || {
            bpf::parse_reason_offset(&text)
        });
        prop_assert_eq!(got.unwrap(), offset);
    }
}

proptest! {
    // Each case walks the whole kernel BTF (megabytes): few cases.
    #![proptest_config(config(32))]

    #[test]
    fn kernel_btf_survives_mutations(mutations in prop::collection::vec(generic_mutation(), 1..4)) {
        let Some(btf) = KERNEL_BTF.as_ref() else { return Ok(()) };
        let seeds = vec![btf.clone()];
        let input = apply(btf, &mutations, &seeds);
        guarded("reasons::drop_reasons", &input, || drop(reasons::drop_reasons(&input)));
    }
}

// ---------------------------------------------------------------------------------------------
// Properties: kernel log, cgroup paths, ip-masq-agent, podip.

fn uid() -> impl Strategy<Value = String> {
    "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
}

/// A line of a cgroup file that is not a Pod's.
fn other_cgroup_line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,2}:[a-z,=]{0,12}:/[a-z0-9./_-]{0,30}",
        select(vec![
            "0::/init.scope",
            "1:name=systemd:/user.slice/user-0.slice",
            "0::/",
            "garbage",
            ""
        ])
        .prop_map(String::from),
    ]
    .prop_filter("no kubepods", |l| !l.contains("kubepods"))
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn kernel_log_survives_anything(
        record in "\\PC{0,200}",
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        patterns in prop::collection::vec("\\PC{0,10}", 0..4),
    ) {
        let lossy = String::from_utf8_lossy(&bytes).into_owned();
        for r in [record.as_str(), lossy.as_str(), KMSG_SEED] {
            let msg = guarded("kernel_log::record_message", r.as_bytes(), || {
                kernel_log::record_message(r)
            });
            let line = msg.unwrap_or(r);
            let m = guarded("kernel_log::matching", r.as_bytes(), || {
                kernel_log::matching(line, &patterns)
            });
            if let Some(p) = m {
                prop_assert!(line.to_ascii_lowercase().contains(&p.to_ascii_lowercase()));
            }
        }
    }

    #[test]
    fn kernel_log_mutated_records(mutations in prop::collection::vec(text_mutation(), 1..8)) {
        let seeds = vec![KMSG_SEED.as_bytes().to_vec()];
        let input = apply(KMSG_SEED.as_bytes(), &mutations, &seeds);
        let r = String::from_utf8_lossy(&input);
        let pats = kernel_log::default_patterns();
        let msg = guarded("kernel_log::record_message", &input, || {
            kernel_log::record_message(&r)
        });
        if let Some(msg) = msg {
            guarded("kernel_log::matching", &input, || kernel_log::matching(msg, &pats));
        }
    }

    /// A record's message is what follows the first `;` of its first line; the first pattern
    /// it contains (whatever the ASCII case) is the one reported.
    #[test]
    fn kernel_log_finds_message_and_pattern(
        prefix in "[0-9]{1,2},[0-9]{1,8},[0-9]{1,12},[-c]",
        before in "[^\n\r]{0,20}",
        after in "[^\n\r]{0,20}",
        pats in prop::collection::vec("[a-zA-Z :!]{1,16}", 1..5),
        which in any::<Index>(),
        flip in prop::collection::vec(any::<bool>(), 16),
        continuation in prop::collection::vec(" [A-Z]{1,8}=[a-z0-9+:]{0,10}", 0..3),
    ) {
        let pat = &pats[which.index(pats.len())];
        let mangled: String = pat
            .chars()
            .zip(flip.iter().cycle())
            .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
            .collect();
        let message = format!("{before}{mangled}{after}");
        let meta: String = continuation.iter().map(|c| format!("{c}\n")).collect();
        let record = format!("{prefix};{message}\n{meta}");
        let msg = kernel_log::record_message(&record);
        prop_assert_eq!(msg, Some(message.as_str()));
        let got = kernel_log::matching(&message, &pats);
        let lower = message.to_ascii_lowercase();
        let first = pats
            .iter()
            .find(|p| lower.contains(&p.to_ascii_lowercase()))
            .map(String::as_str);
        prop_assert!(first.is_some());
        prop_assert_eq!(got, first);
    }

    /// The kubelet's cgroup path of a Pod, either driver, either cgroup version, among other
    /// lines: the UID comes back, lower case, with dashes.
    #[test]
    fn pod_uid_finds_the_generated_uid(
        uid in uid(),
        systemd in any::<bool>(),
        qos in select(vec!["", "burstable", "besteffort"]),
        v2 in any::<bool>(),
        controller in "[a-z]{1,8}",
        container in "(cri-containerd-|docker-|crio-|)[0-9a-f]{6,64}(\\.scope|)",
        before in prop::collection::vec(other_cgroup_line(), 0..3),
        after in prop::collection::vec(other_cgroup_line(), 0..3),
    ) {
        let path = if systemd {
            let u = uid.replace('-', "_");
            if qos.is_empty() {
                format!("/kubepods.slice/kubepods-pod{u}.slice/{container}")
            } else {
                format!(
                    "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/{container}"
                )
            }
        } else if qos.is_empty() {
            format!("/kubepods/pod{uid}/{container}")
        } else {
            format!("/kubepods/{qos}/pod{uid}/{container}")
        };
        let line = if v2 { format!("0::{path}") } else { format!("4:{controller}:{path}") };
        let file: String =
            before.iter().chain([&line]).chain(&after).map(|l| format!("{l}\n")).collect();
        let got = guarded("cgroup::pod_uid", file.as_bytes(), || cgroup::pod_uid(&file));
        prop_assert_eq!(got, Some(uid.to_ascii_lowercase()));
    }

    #[test]
    fn pod_uid_survives_anything(
        text in "\\PC{0,200}",
        mutations in prop::collection::vec(text_mutation(), 1..8),
        parts in prop::collection::vec(
            prop_oneof![
                "pod[0-9a-f_-]{30,40}(\\.slice)?",
                "-pod",
                "kubepods[.a-z-]{0,10}",
                "[:/]",
                "\\PC{0,3}",
            ],
            0..12,
        ),
    ) {
        let seeds = vec![CGROUP_SEED.as_bytes().to_vec()];
        let mutated = apply(CGROUP_SEED.as_bytes(), &mutations, &seeds);
        let mutated = String::from_utf8_lossy(&mutated).into_owned();
        let built = parts.concat();
        for t in [text.as_str(), mutated.as_str(), built.as_str()] {
            if let Some(u) = guarded("cgroup::pod_uid", t.as_bytes(), || cgroup::pod_uid(t)) {
                prop_assert_eq!(u.len(), 36);
                prop_assert!(
                    u.chars().all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
                );
            }
        }
    }

    #[test]
    fn non_masquerade_cidrs_reads_the_list(
        nets in prop::collection::vec(ip_net(), 0..8),
        json in any::<bool>(),
        quoted in any::<bool>(),
        others in prop::collection::btree_map("x[a-zA-Z]{0,10}", "[a-z0-9]{0,6}", 0..3),
    ) {
        let mut obj = serde_json::Map::new();
        for (k, v) in &others {
            if k != "nonMasqueradeCIDRs" {
                obj.insert(k.clone(), J::String(v.clone()));
            }
        }
        let list = nets.iter().map(|n| J::String(n.to_string())).collect();
        obj.insert("nonMasqueradeCIDRs".into(), J::Array(list));
        let text = if json {
            serde_json::to_string_pretty(&J::Object(obj)).unwrap()
        } else {
            let mut t = String::new();
            for (k, v) in &others {
                if k != "nonMasqueradeCIDRs" {
                    t.push_str(&format!("{k}: {}\n", serde_json::to_string(v).unwrap()));
                }
            }
            t.push_str("nonMasqueradeCIDRs:");
            if nets.is_empty() {
                t.push_str(" []");
            }
            t.push('\n');
            for n in &nets {
                if quoted {
                    t.push_str(&format!("  - \"{n}\"\n"));
                } else {
                    t.push_str(&format!("  - {n}\n"));
                }
            }
            t
        };
        let got = guarded("masquerade::non_masquerade_cidrs", text.as_bytes(), || {
            masquerade::non_masquerade_cidrs(&text)
        });
        prop_assert_eq!(got.unwrap(), nets, "{}", text);
    }

    #[test]
    fn non_masquerade_cidrs_survives_anything(
        text in "\\PC{0,200}",
        mutations in prop::collection::vec(text_mutation(), 1..8),
        doc in any_json(),
        list in prop::collection::vec(cidr(), 0..5),
    ) {
        let seeds = vec![MASQ_SEED.as_bytes().to_vec()];
        let mutated = apply(MASQ_SEED.as_bytes(), &mutations, &seeds);
        let mutated = String::from_utf8_lossy(&mutated).into_owned();
        let with_list = format!("nonMasqueradeCIDRs: {}\n", serde_json::to_string(&list).unwrap());
        let valid = list.iter().all(|c| c.parse::<IpNet>().is_ok());
        for t in [text, mutated, doc.to_string(), to_yaml(&doc, true)] {
            guarded("masquerade::non_masquerade_cidrs", t.as_bytes(), || {
                drop(masquerade::non_masquerade_cidrs(&t))
            });
        }
        let got = guarded("masquerade::non_masquerade_cidrs", with_list.as_bytes(), || {
            masquerade::non_masquerade_cidrs(&with_list)
        });
        prop_assert_eq!(got.is_ok(), valid);
    }

    #[test]
    fn podip_accounting(
        cidrs in prop::collection::vec(ip_net(), 0..4),
        pods in prop::collection::vec((any::<bool>(), prop::collection::vec(ip(), 0..3)), 0..10),
        held in prop::collection::hash_set(ip(), 0..10),
    ) {
        let view = ClusterView {
            pods: pods
                .iter()
                .enumerate()
                .map(|(i, (host, ips))| PodInfo {
                    uid: format!("uid-{i}"),
                    namespace: "default".into(),
                    name: format!("p{i}"),
                    host_network: *host,
                    ips: ips.clone(),
                    excluded: false,
                    labels: Default::default(),
                    workload: format!("Pod/p{i}"),
                })
                .collect(),
            node_cidrs: cidrs.clone(),
            ..ClusterView::default()
        };
        let s = guarded("podip::parse", &[], || podip::parse(&view, &held));
        let size = cidrs.iter().fold(0u64, |acc, c| {
            let bits = u32::from(c.max_prefix_len() - c.prefix_len());
            acc.saturating_add(if bits >= 64 { u64::MAX } else { 1 << bits })
        });
        prop_assert_eq!(podip::cidr_size(&cidrs), size);
        let own: Vec<&(bool, Vec<IpAddr>)> =
            pods.iter().filter(|(h, ips)| !h && !ips.is_empty()).collect();
        let in_use: HashSet<IpAddr> = own.iter().flat_map(|(_, ips)| ips.iter().copied()).collect();
        let outside = own
            .iter()
            .filter(|(_, ips)| ips.iter().any(|ip| !cidrs.iter().any(|c| c.contains(ip))))
            .count();
        prop_assert_eq!(
            &s[0].values,
            &vec![
                Some(size),
                Some(own.len() as u64),
                Some(held.difference(&in_use).count() as u64),
                Some(outside as u64),
            ]
        );
    }

    #[test]
    fn podip_ipam_files(
        names in prop::collection::vec(
            prop_oneof![
                ip().prop_map(|i| i.to_string()),
                "[a-z0-9._:-]{1,20}".prop_filter("a file name", |n| n != "." && n != ".."),
            ],
            0..12,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("net");
        std::fs::create_dir(&net).unwrap();
        let mut want = HashSet::new();
        for n in &names {
            std::fs::write(net.join(n), "x").unwrap();
            if let Ok(ip) = n.parse::<IpAddr>() {
                want.insert(ip);
            }
        }
        prop_assert_eq!(podip::ipam_addresses(dir.path()).unwrap(), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Properties: configuration.

proptest! {
    #![proptest_config(config(4))]

    #[test]
    fn config_survives_arbitrary_text(
        text in "\\PC{0,300}",
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let flags = offline_flags();
        let env = BTreeMap::new();
        config_pipeline(&text, &flags, &env);
        config_pipeline(&String::from_utf8_lossy(&bytes), &flags, &env);
    }

    #[test]
    fn config_survives_mutated_files(
        seed in any::<Index>(),
        mutations in prop::collection::vec(text_mutation(), 1..8),
    ) {
        let seeds = &*CONFIG_SEEDS;
        let input = apply(&seeds[seed.index(seeds.len())], &mutations, seeds);
        config_pipeline(&String::from_utf8_lossy(&input), &offline_flags(), &BTreeMap::new());
    }

    /// Files of every shape and any flags and environment: parse and resolve return.
    #[test]
    fn config_survives_wild_files_flags_and_env(
        doc in config_file(true),
        block in any::<bool>(),
        fe in flags_env(),
    ) {
        let text = to_yaml(&doc, block);
        config_pipeline(&text, &fe.flags(), &fe.env);
    }

    /// A file whose every field has a value of its type parses, and what it sets is what the
    /// resolved configuration has (where neither a flag nor the environment overrides it).
    #[test]
    fn config_accepts_well_typed_files(doc in config_file(false), block in any::<bool>()) {
        let text = to_yaml(&doc, block);
        let file = guarded("FileConfig::parse", text.as_bytes(), || FileConfig::parse(&text));
        prop_assert!(file.is_ok(), "{}\n{}", text, file.err().unwrap());
        // The file's listen address, if any, is DNS-free (see `listen_address`).
        let flags = Flags::default();
        let resolved = guarded("Config::resolve", text.as_bytes(), || {
            Config::resolve(&flags, &|_| None, file.unwrap())
        });
        if let Ok(c) = resolved {
            if let Some(n) = doc.pointer("/collection/workers").and_then(J::as_u64) {
                prop_assert_eq!(c.workers as u64, n);
            }
            if let Some(l) = doc.pointer("/log_level").and_then(J::as_str) {
                prop_assert_eq!(c.log_level.as_str(), l);
            }
            if let Some(p) = doc.pointer("/probes/qdisc/device_prefixes").and_then(J::as_array) {
                let p: Vec<&str> = p.iter().filter_map(J::as_str).collect();
                // The qdisc probe's section as the resolved configuration hands it over.
                if let Some(qdisc) = c.probes.iter().find(|e| e.registration.name == "qdisc") {
                    let got: Vec<&str> = qdisc
                        .section
                        .as_ref()
                        .and_then(|s| s.get("device_prefixes"))
                        .and_then(|v| v.as_sequence())
                        .map(|seq| seq.iter().filter_map(|x| x.as_str()).collect())
                        .unwrap_or_default();
                    prop_assert_eq!(&got, &p);
                }
            }
            // An empty name is no name: the hostname stands in.
            if let Some(n) = doc.pointer("/node_name").and_then(J::as_str).filter(|n| !n.trim().is_empty()) {
                prop_assert_eq!(c.node_name.as_str(), n);
            }
        }
    }

    /// The configuration never accepts an unknown field, at any level where one would be a
    /// typo: the parser refuses it, or (in a probe's section, which its probe reads) the
    /// resolution does, naming it.
    #[test]
    fn config_rejects_unknown_fields(
        doc in config_file(false),
        place in select(STRICT_PLACES.to_vec()),
        key in "unknown_[a-z_]{1,10}",
        block in any::<bool>(),
    ) {
        let mut doc = doc;
        insert_unknown(&mut doc, place, &key);
        let text = to_yaml(&doc, block);
        let got = guarded("FileConfig::parse", text.as_bytes(), || FileConfig::parse(&text));
        let err = match got {
            // Each section is refused by its own reader, whatever else is wrong in the file.
            Ok(file) => {
                let mut errs: Vec<String> = Vec::new();
                errs.extend(file.checks.build().err().map(|e| e.to_string()));
                for p in net_exporter::probes::PROBES {
                    errs.extend(p.build(file.probes.get(p.name)).err().map(|e| e.to_string()));
                }
                errs.extend(
                    Config::resolve(&offline_flags(), &|_| None, file)
                        .err()
                        .map(|e| e.to_string()),
                );
                if errs.is_empty() {
                    return Err(TestCaseError::fail(format!("accepted {key:?} in:\n{text}")));
                }
                errs.join("; ")
            }
            Err(e) => e.to_string(),
        };
        // Under `checks:` an unknown key names a check that does not exist.
        prop_assert!(
            err.contains("unknown field") || err.contains("unknown check"),
            "{}\n{}",
            err,
            text
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed hostile inputs.

/// A BTF enum whose many values all name one long string: the names are copied once per
/// value, so a small blob must not make the parser allocate without bound.
#[test]
fn btf_many_values_sharing_one_long_name_stay_bounded() {
    for (vlen, name_len) in [
        (4096usize, 32 << 10),
        (65535, 4 << 10),
        (1000, 1 << 20),
        (65535, 511),
    ] {
        let mut strs = b"\0skb_drop_reason\0".to_vec();
        let long_at = strs.len() as u32;
        strs.extend_from_slice(b"SKB_DROP_REASON_");
        strs.extend(std::iter::repeat_n(b'A', name_len - 16));
        strs.push(0);
        let mut t = Vec::new();
        for v in [1u32, (6 << 24) | vlen as u32, 4] {
            t.extend_from_slice(&v.to_ne_bytes());
        }
        for i in 0..vlen as u32 {
            t.extend_from_slice(&long_at.to_ne_bytes());
            t.extend_from_slice(&i.to_ne_bytes());
        }
        let mut blob = BTF_MAGIC.to_ne_bytes().to_vec();
        blob.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, t.len() as u32, t.len() as u32, strs.len() as u32] {
            blob.extend_from_slice(&v.to_ne_bytes());
        }
        blob.extend_from_slice(&t);
        blob.extend_from_slice(&strs);
        btf_parsers(&blob);
    }
}

/// Many enum types named by one long string: finding the wanted one must not scan the string
/// once per type.
#[test]
fn btf_many_types_sharing_one_long_name_stay_fast() {
    let n_types = 200_000usize;
    let mut strs = b"\0".to_vec();
    strs.extend(std::iter::repeat_n(b'a', 4 << 20));
    strs.push(0);
    let mut t = Vec::with_capacity(n_types * 12);
    for _ in 0..n_types {
        for v in [1u32, 6 << 24, 4] {
            t.extend_from_slice(&v.to_ne_bytes());
        }
    }
    let mut blob = BTF_MAGIC.to_ne_bytes().to_vec();
    blob.extend_from_slice(&[1, 0]);
    for v in [24u32, 0, t.len() as u32, t.len() as u32, strs.len() as u32] {
        blob.extend_from_slice(&v.to_ne_bytes());
    }
    blob.extend_from_slice(&t);
    blob.extend_from_slice(&strs);
    btf_parsers(&blob);
}

/// YAML built to exhaust a parser: deep nesting and alias expansion.
#[test]
fn config_yaml_bombs_fail_cleanly() {
    let deep = format!("{}{}", "[".repeat(2_000), "]".repeat(2_000));
    let deep_map = format!("{}1{}", "{a: ".repeat(2_000), "}".repeat(2_000));
    let mut laughs = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, c) in "bcdefghij".chars().enumerate() {
        let prev = (b'a' + i as u8) as char;
        laughs.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    let laughs_in_field = laughs.replace("a: &a", "node_name: &a");
    for text in [
        deep.as_str(),
        deep_map.as_str(),
        laughs.as_str(),
        laughs_in_field.as_str(),
    ] {
        config_pipeline(text, &offline_flags(), &BTreeMap::new());
        guarded("masquerade::non_masquerade_cidrs", text.as_bytes(), || {
            drop(masquerade::non_masquerade_cidrs(text))
        });
    }
}

/// A netlink reply of many tiny messages and attributes: work stays linear.
#[test]
fn netlink_many_small_messages_stay_bounded() {
    let mut reply = Vec::new();
    while reply.len() < 4 << 20 {
        reply.extend(raw_message(16, 2, 1, &[0u8; 16]));
        reply.extend(raw_message(36, 2, 1, &[0u8; 20]));
        reply.extend(raw_message(20, 2, 1, &[2u8; 72]));
    }
    all_netlink_parsers(&reply);
}

/// The running kernel's BTF, untouched, parses.
#[test]
fn kernel_btf_parses_within_limits() {
    if let Some(btf) = KERNEL_BTF.as_ref() {
        let r = guarded("reasons::drop_reasons", btf, || reasons::drop_reasons(btf)).unwrap();
        assert!(!r.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Crashers found by this file, kept as fixtures.

/// Every file under `tests/fixtures/crashers/<parser>/` through its parser: once a crasher,
/// now an Ok or an Err within the limits.
#[test]
fn crashers_stay_fixed() {
    let root = fixtures_dir().join("crashers");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return;
    };
    let mut ran = 0;
    for dir in dirs.flatten() {
        let parser = dir.file_name().to_string_lossy().into_owned();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .expect("crasher dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            let input = std::fs::read(&f).expect("crasher");
            let text = String::from_utf8_lossy(&input).into_owned();
            match parser.as_str() {
                "netlink" => all_netlink_parsers(&input),
                "text" => text_parsers(&input, SOME_NAMES),
                "btf" => btf_parsers(&input),
                "reason_format" => {
                    guarded("reasons::reasons_from_format", &input, || {
                        drop(reasons::reasons_from_format(&text))
                    });
                    guarded("bpf::parse_reason_offset", &input, || {
                        drop(bpf::parse_reason_offset(&text))
                    });
                }
                "config" => config_pipeline(&text, &offline_flags(), &BTreeMap::new()),
                "cgroup" => drop(guarded("cgroup::pod_uid", &input, || {
                    cgroup::pod_uid(&text)
                })),
                other => panic!("{}: no parser named {other}", f.display()),
            }
            ran += 1;
        }
    }
    eprintln!("{ran} crashers replayed");
}
