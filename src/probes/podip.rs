//! `podip`: Pod IP accounting of the node (Kubernetes mode only): how many addresses the node's
//! pod CIDRs hold, how many its Pods use, which ones the CNI's allocator still holds for no Pod
//! (leaked), and which Pods have an address outside the node's CIDRs.
//!
//! Leaked addresses are read from host-local IPAM, which keeps one file per allocated address
//! under `<ipam_dir>/<network>/` (its other files, `lock` and `last_reserved_ip.N`, are not
//! addresses and are skipped).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Build, MetricDef, Probe, Scope, Series};
use crate::inventory::ClusterView;
use crate::metrics;
use crate::sources::{Node, TargetSources};

pub struct PodIp {
    options: PodIpOptions,
}

/// `probes.podip`.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PodIpOptions {
    /// host-local IPAM's directory: one folder per network, one file per allocated address.
    /// Addresses held there by no Pod of the node are leaked (`netexporter_podip_redisuals`).
    pub ipam_dir: PathBuf,
}

impl Default for PodIpOptions {
    fn default() -> Self {
        Self {
            ipam_dir: "/var/lib/cni/networks".into(),
        }
    }
}

const METRICS: &[MetricDef] = metrics![
    gauge "netexporter_podip_maxentries" "Pod IPs this node can hand out: the size of its pod CIDR(s) (Node.spec.podCIDRs).",
    gauge "netexporter_podip_entries" "Pods on this node with their own (non-host-network) IP.",
    gauge "netexporter_podip_redisuals" "IPs held by the CNI's IP allocator (host-local files) that belong to no Pod on this node: leaked Pod IPs.",
    gauge "netexporter_podip_notinpodcidrs" "Pods on this node whose IP lies outside the node's pod CIDR(s).",
];

/// Addresses in the CIDRs (saturating: an IPv6 /64 alone has 2^64).
pub fn cidr_size(cidrs: &[IpNet]) -> u64 {
    cidrs
        .iter()
        .map(|c| {
            let host_bits = u32::from(c.max_prefix_len() - c.prefix_len());
            if host_bits >= 64 {
                u64::MAX
            } else {
                1u64 << host_bits
            }
        })
        .fold(0u64, u64::saturating_add)
}

/// Addresses allocated by host-local IPAM under `dir` (one file per address, per network).
pub fn ipam_addresses(dir: &Path) -> Result<HashSet<IpAddr>> {
    let mut out = HashSet::new();
    let networks = match std::fs::read_dir(dir) {
        Ok(d) => d,
        // No host-local IPAM on this node (another CNI allocator): nothing is held here.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(anyhow!("read {}: {e}", dir.display())),
    };
    for net in networks.flatten() {
        let Ok(files) = std::fs::read_dir(net.path()) else {
            continue;
        };
        for f in files.flatten() {
            // IPv6 addresses are stored with ':' in the name as well.
            if let Some(ip) = f
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            {
                out.insert(ip);
            }
        }
    }
    Ok(out)
}

pub fn parse(view: &ClusterView, held: &HashSet<IpAddr>) -> Vec<Series> {
    let pods: Vec<_> = view
        .pods
        .iter()
        .filter(|p| !p.host_network && !p.ips.is_empty())
        .collect();
    let in_use: HashSet<IpAddr> = pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
    let outside = pods
        .iter()
        .filter(|p| {
            p.ips
                .iter()
                .any(|ip| !view.node_cidrs.iter().any(|c| c.contains(ip)))
        })
        .count();
    vec![Series::new(vec![
        Some(cidr_size(&view.node_cidrs)),
        Some(pods.len() as u64),
        Some(held.difference(&in_use).count() as u64),
        Some(outside as u64),
    ])]
}

impl Build for PodIp {
    const NAME: &'static str = "podip";
    const SCOPE: Scope = Scope::Node;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = PodIpOptions;

    fn new(options: PodIpOptions) -> Result<Self> {
        Ok(Self { options })
    }
}

impl Probe for PodIp {
    fn prerequisites(&self, node: &Node) -> Result<(), String> {
        if node.kubernetes {
            Ok(())
        } else {
            Err("standalone: Pod IPs and pod CIDRs come from the Kubernetes API".into())
        }
    }

    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        let view = src
            .cluster()
            .cloned()
            .ok_or_else(|| anyhow!("not in Kubernetes mode"))?;
        if !view.synced {
            return Err(anyhow!(
                "the Pods and the Node have not been listed from the API server yet"
            ));
        }
        Ok(parse(&view, &ipam_addresses(&self.options.ipam_dir)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::PodInfo;

    fn pod(name: &str, ip: &str, host: bool) -> PodInfo {
        PodInfo {
            uid: name.into(),
            namespace: "default".into(),
            name: name.into(),
            host_network: host,
            ips: vec![ip.parse().unwrap()],
            excluded: false,
            labels: Default::default(),
            workload: format!("Pod/{name}"),
        }
    }

    #[test]
    fn accounting() {
        let view = ClusterView {
            pods: vec![
                pod("a", "10.244.1.2", false),
                pod("b", "10.244.1.3", false),
                pod("outside", "10.9.0.5", false),
                pod("host", "192.168.0.10", true),
            ],
            node_cidrs: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:1::/120".parse().unwrap(),
            ],
            api_up: true,
            synced: true,
        };
        let held: HashSet<IpAddr> = ["10.244.1.2", "10.244.1.3", "10.244.1.77"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let s = parse(&view, &held);
        assert_eq!(
            s[0].values,
            vec![Some(256 + 256), Some(3), Some(1), Some(1)]
        );
    }

    #[test]
    fn huge_cidrs_saturate() {
        assert_eq!(cidr_size(&["fd00::/64".parse().unwrap()]), u64::MAX);
        assert_eq!(
            cidr_size(&["fd00::/48".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]),
            u64::MAX
        );
        assert_eq!(cidr_size(&[]), 0);
    }

    #[test]
    fn ipam_files() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("k8s-pod-network");
        std::fs::create_dir(&net).unwrap();
        for f in [
            "10.244.1.2",
            "10.244.1.9",
            "fd00:1::5",
            "lock",
            "last_reserved_ip.0",
        ] {
            std::fs::write(net.join(f), "x").unwrap();
        }
        let got = ipam_addresses(dir.path()).unwrap();
        assert_eq!(got.len(), 3);
        assert!(
            ipam_addresses(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }
}
