//! `tcphash`: the TCP established hash that holds the namespace's sockets
//! (`net.ipv4.tcp_ehash_entries`, kernels 6.1 and later). A namespace created while the host's
//! `net.ipv4.tcp_child_ehash_entries` is 0 (the default) shares the host's hash, and every
//! walk of its sockets (`ss`, a sock_diag dump, an `iter/tcp` program: the agent's socket
//! summaries and peer sampling among them) visits every connection of the node: what makes
//! such walks cost ~1 ms per namespace on a busy node whatever the namespace holds
//! (docs/operations.md).

use anyhow::{Context, Result, anyhow};

use super::{Build, MetricDef, Probe, Scope, Series};
use crate::component::NoOptions;
use crate::metrics;
use crate::sources::netns::TCP_HASH_SYSCTL;
use crate::sources::{Node, TargetSources, sysctl};

pub struct TcpHash;

const METRICS: &[MetricDef] = metrics![
    gauge "netexporter_tcp_hash_buckets" "Buckets of the TCP established hash that holds the namespace's sockets (sysctl net.ipv4.tcp_ehash_entries, kernels 6.1 and later). Label shared is true when the namespace uses the host's hash (it was created while the host's net.ipv4.tcp_child_ehash_entries was 0, the default): every walk of its sockets (ss, sock_diag, the agent's socket summaries and peer sampling) then visits all the node's connections. Labels: shared.",
];

/// The sysctl's text: the hash's size, negative when the namespace shares the host's.
pub fn parse(text: &[u8]) -> Result<Vec<Series>> {
    let text = std::str::from_utf8(text).context("not text")?.trim();
    let n: i64 = text
        .parse()
        .with_context(|| format!("not a number: {text:?}"))?;
    if n == 0 {
        return Err(anyhow!("a hash of 0 buckets"));
    }
    let shared = if n < 0 { "true" } else { "false" };
    Ok(vec![Series::only(
        METRICS.len(),
        0,
        n.unsigned_abs(),
        vec![("shared", shared.into())],
    )])
}

impl Build for TcpHash {
    const NAME: &'static str = "tcphash";
    const SCOPE: Scope = Scope::Pod;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Probe for TcpHash {
    fn prerequisites(&self, node: &Node) -> Result<(), String> {
        let p = sysctl::path(&node.procfs, TCP_HASH_SYSCTL);
        if p.exists() {
            Ok(())
        } else {
            Err(format!(
                "{} is missing: kernels before 6.1 give every namespace the host's TCP hash \
                 and do not say so",
                p.display()
            ))
        }
    }

    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        parse(&src.tcp_hash_entries()?).context("net.ipv4.tcp_ehash_entries")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_size_is_the_hosts_hash_shared() {
        let own = parse(b"1024\n").unwrap();
        assert_eq!(own[0].values, vec![Some(1024)]);
        assert_eq!(own[0].label("shared"), Some("false"));
        let shared = parse(b"-262144\n").unwrap();
        assert_eq!(shared[0].values, vec![Some(262144)]);
        assert_eq!(shared[0].label("shared"), Some("true"));
        for bad in [&b""[..], b"x", b"0", b"\xff"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
