//! Captures the raw kernel data the probes read, for `tests/fixtures/`. Run by
//! `scripts/capture-fixtures.sh`, which sets up a scene worth capturing and records what the
//! standard tools (`nstat`, `ip`, `tc`, `ss`) say at the same moment.
//!
//! Usage: capture_fixtures OUT_DIR [NETNS_PATH]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use net_exporter::sources::TargetSources;
use net_exporter::sources::netns::{NetFile, NetnsSession};
use netlink_packet_route::AddressFamily;
use netlink_packet_sock_diag::inet::StateFlags;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out = PathBuf::from(
        args.get(1)
            .context("usage: capture_fixtures OUT_DIR [NETNS_PATH]")?,
    );
    let procfs = Path::new("/proc");
    let mut session = match args.get(2) {
        Some(ns) => NetnsSession::open_in(Path::new(ns), procfs)?,
        None => NetnsSession::open_own(procfs),
    };
    let mut src = TargetSources::new(&mut session, procfs, true);
    let write = |rel: &str, data: &[u8]| -> Result<()> {
        let p = out.join(rel);
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(&p, data).with_context(|| format!("write {}", p.display()))
    };

    // Per-namespace sources, from inside the namespace.
    write("tcp/snmp", &src.net_file(NetFile::Snmp)?)?;
    write("tcpext/netstat", &src.net_file(NetFile::Netstat)?)?;
    write("sock/sockstat", &src.net_file(NetFile::Sockstat)?)?;
    let links = src.links()?;
    write("netdev/links.bin", &links)?;
    write("qdisc/links.bin", &links)?;
    write("qdisc/qdisc.bin", &src.qdiscs()?)?;
    write("arp/neigh.bin", &src.neighbours(AddressFamily::Inet)?)?;
    let est_tw = StateFlags::ESTABLISHED | StateFlags::TIME_WAIT;
    write(
        "tcpsummary/inet.bin",
        &src.tcp_sockets(libc::AF_INET as u8, est_tw.clone())?,
    )?;
    write(
        "tcpsummary/inet6.bin",
        &src.tcp_sockets(libc::AF_INET6 as u8, est_tw)?,
    )?;
    write(
        "sockbacklog/inet.bin",
        &src.tcp_sockets(libc::AF_INET as u8, StateFlags::LISTEN)?,
    )?;
    write(
        "sockbacklog/inet6.bin",
        &src.tcp_sockets(libc::AF_INET6 as u8, StateFlags::LISTEN)?,
    )?;
    write("listeners/listeners.bin", &src.tcp_listeners()?)?;
    write("tcphash/tcp_ehash_entries", &src.tcp_hash_entries()?)?;

    // Node-wide files.
    for (rel, file) in [
        ("softnet/softnet_stat", "net/softnet_stat"),
        ("conntrack/nf_conntrack", "net/stat/nf_conntrack"),
        (
            "conntrack/nf_conntrack_count",
            "sys/net/netfilter/nf_conntrack_count",
        ),
        (
            "conntrack/nf_conntrack_max",
            "sys/net/netfilter/nf_conntrack_max",
        ),
        ("arp/gc_thresh3", "sys/net/ipv4/neigh/default/gc_thresh3"),
        ("arp/arp_cache", "net/stat/arp_cache"),
    ] {
        write(rel, &src.node_file(file)?)?;
    }
    Ok(())
}
