//! `IPVS` (check `IPVSRulesAbnormal`): in kube-proxy's IPVS mode, Services whose IPVS virtual
//! server is missing or whose real servers are not the Service's ready endpoints.
//!
//! - **When it looks** (`checks.ipvs`): `auto` (the default) when the kernel has the IPVS
//!   generic netlink family *and* the node has kube-proxy's `kube-ipvs0` dummy interface (the
//!   family alone only says that `ip_vs` is loaded, which many nodes in iptables mode have);
//!   `true` always (an error when the kernel has no IPVS); `false` never. Kubernetes mode only:
//!   standalone, there are no Services to compare with.
//! - **The IPVS side** is read over generic netlink in the agent's (the node's) namespace:
//!   `CTRL_CMD_GETFAMILY "IPVS"` resolves the family id (no such family: not applicable), an
//!   `IPVS_CMD_GET_SERVICE` dump lists the virtual servers, and one `IPVS_CMD_GET_DEST` dump per
//!   virtual server that a Service expects lists its real servers (`ipvsadm -Ln` does the same).
//!   The attributes are decoded here, from `linux/ip_vs.h`, by pure functions of the reply
//!   bytes. Real servers of weight 0 are being drained by kube-proxy (their endpoint went away)
//!   and do not count.
//! - **The API side**: each Service's `spec.clusterIP` (its primary family) with each port and
//!   protocol, and the ready addresses of its Endpoints on the matching port (by port name) of
//!   the same family; `internalTrafficPolicy: Local` keeps those of this node. Left out: headless
//!   and ExternalName Services, Services of another proxy (`service.kubernetes.io/service-proxy-name`),
//!   Services with topology-aware routing (`spec.trafficDistribution`, the
//!   `service.kubernetes.io/topology-mode` annotation), whose real servers are a subset the
//!   Endpoints do not tell, and Endpoints truncated at 1000 addresses. Only the cluster IPs'
//!   virtual servers are compared, not those of NodePorts, external or load-balancer IPs.
//! - kube-proxy applies changes within a moment: a Service found abnormal is looked at again
//!   [`CONFIRM_AFTER`] later and reported only if it still is.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::Api;
use kube::api::ListParams;
use netlink_packet_core::{
    DecodeError, Emitable, NLA_F_NESTED, NLA_TYPE_MASK, NlasIterator, ParseableParametrized,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use serde::{Deserialize, Deserializer};

use super::route::capped_list;
use super::{Check, CheckContext, Problem};
use crate::sources::netlink::{NlSocket, raw_messages};

/// A Service found abnormal is looked at again this much later (kube-proxy may be applying a
/// change right now).
pub const CONFIRM_AFTER: Duration = Duration::from_secs(2);

/// kube-proxy's dummy interface in IPVS mode, which holds the Services' cluster IPs.
pub const KUBE_IPVS_INTERFACE: &str = "kube-ipvs0";

// linux/genetlink.h
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_ATTR_FAMILY_ID: u16 = 1;

// linux/ip_vs.h
pub const IPVS_GENL_NAME: &str = "IPVS";
const IPVS_GENL_VERSION: u8 = 1;
const IPVS_CMD_NEW_SERVICE: u8 = 1;
const IPVS_CMD_GET_SERVICE: u8 = 4;
const IPVS_CMD_NEW_DEST: u8 = 5;
const IPVS_CMD_GET_DEST: u8 = 8;
const IPVS_CMD_ATTR_SERVICE: u16 = 1;
const IPVS_CMD_ATTR_DEST: u16 = 2;
const IPVS_SVC_ATTR_AF: u16 = 1;
const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
const IPVS_SVC_ATTR_ADDR: u16 = 3;
const IPVS_SVC_ATTR_PORT: u16 = 4;
const IPVS_SVC_ATTR_FWMARK: u16 = 5;
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_DEST_ATTR_ADDR: u16 = 1;
const IPVS_DEST_ATTR_PORT: u16 = 2;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;
const IPPROTO_TCP: u16 = libc::IPPROTO_TCP as u16;
const IPPROTO_UDP: u16 = libc::IPPROTO_UDP as u16;
const IPPROTO_SCTP: u16 = libc::IPPROTO_SCTP as u16;

/// `checks.ipvs`: `auto`, `true` or `false` (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IpvsMode {
    #[default]
    Auto,
    On,
    Off,
}

impl<'de> Deserialize<'de> for IpvsMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Self::On),
            Raw::Bool(false) => Ok(Self::Off),
            Raw::Text(t) => match t.as_str() {
                "auto" => Ok(Self::Auto),
                "true" => Ok(Self::On),
                "false" => Ok(Self::Off),
                other => Err(serde::de::Error::custom(format!(
                    "{other:?}: expected auto, true or false"
                ))),
            },
        }
    }
}

/// One IPVS virtual server (`ipvsadm -Ln`'s `TCP 10.96.0.1:443 rr`). A firewall-mark service
/// has `fwmark` set, and no protocol, address or port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub af: u16,
    pub protocol: u16,
    pub addr: IpAddr,
    pub port: u16,
    pub fwmark: u32,
    pub scheduler: String,
}

/// One real server of a virtual server (`-> 10.244.1.7:53 Masq 1 0 0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealServer {
    pub addr: IpAddr,
    pub port: u16,
    /// 0: masquerade, 1: local, 2: tunnel, 3: direct routing.
    pub fwd_method: u32,
    pub weight: u32,
}

/// The (genl command, attributes) of one generic netlink message's payload.
fn genl(payload: &[u8]) -> Result<(u8, &[u8])> {
    let header = GenlHeader::parse(payload).map_err(|e| anyhow!("genlmsghdr: {e}"))?;
    let attrs = payload.get(4..).unwrap_or(&[]);
    Ok((header.cmd, attrs))
}

/// The attributes of `buf` as (type without flags, value).
fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8])>> + '_ {
    NlasIterator::new(buf).map(|a| {
        a.map(|a| {
            let (kind, len) = (a.kind() & NLA_TYPE_MASK, usize::from(a.length()));
            // Checked by the iterator: 4 <= len <= the buffer's length.
            let value = a.into_inner().get(4..len).unwrap_or(&[]);
            (kind, value)
        })
        .map_err(|e: DecodeError| anyhow!("netlink attribute: {e}"))
    })
}

fn u16_ne(v: &[u8]) -> Result<u16> {
    let b: [u8; 2] = v
        .get(..2)
        .and_then(|b| b.try_into().ok())
        .context("u16 attribute too short")?;
    Ok(u16::from_ne_bytes(b))
}

fn u16_be(v: &[u8]) -> Result<u16> {
    Ok(u16::from_be(u16_ne(v)?))
}

fn u32_ne(v: &[u8]) -> Result<u32> {
    let b: [u8; 4] = v
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .context("u32 attribute too short")?;
    Ok(u32::from_ne_bytes(b))
}

/// A `union nf_inet_addr` (16 bytes; an IPv4 address in the first 4) of family `af`.
fn inet_addr(af: u16, v: &[u8]) -> Result<IpAddr> {
    match af {
        AF_INET => {
            let b: [u8; 4] = v
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .context("IPv4 address too short")?;
            Ok(IpAddr::V4(Ipv4Addr::from(b)))
        }
        AF_INET6 => {
            let b: [u8; 16] = v
                .get(..16)
                .and_then(|b| b.try_into().ok())
                .context("IPv6 address too short")?;
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        other => bail!("address family {other}"),
    }
}

/// The family id in the reply to `CTRL_CMD_GETFAMILY`.
pub fn parse_family_id(reply: &[u8]) -> Result<u16> {
    for m in raw_messages(reply) {
        let (kind, payload) = m?;
        if kind != GENL_ID_CTRL {
            continue;
        }
        let (cmd, body) = genl(payload)?;
        if cmd != CTRL_CMD_NEWFAMILY {
            continue;
        }
        for a in attrs(body) {
            let (t, v) = a?;
            if t == CTRL_ATTR_FAMILY_ID {
                return u16_ne(v).context("CTRL_ATTR_FAMILY_ID");
            }
        }
    }
    bail!("no CTRL_ATTR_FAMILY_ID in the controller's reply")
}

/// The nested attribute `outer` of each message of `family` with command `cmd` in `reply`.
fn nested_of(reply: &[u8], family: u16, cmd: u8, outer: u16) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    for m in raw_messages(reply) {
        let (kind, payload) = m?;
        if kind != family {
            continue;
        }
        let (c, body) = genl(payload)?;
        if c != cmd {
            continue;
        }
        for a in attrs(body) {
            let (t, v) = a?;
            if t == outer {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// The virtual servers of an `IPVS_CMD_GET_SERVICE` dump reply (`family`: the IPVS family id).
pub fn parse_services(reply: &[u8], family: u16) -> Result<Vec<VirtualServer>> {
    let mut out = Vec::new();
    for nest in nested_of(reply, family, IPVS_CMD_NEW_SERVICE, IPVS_CMD_ATTR_SERVICE)? {
        let (mut af, mut protocol, mut addr, mut port, mut fwmark, mut scheduler) =
            (None, None, None, None, 0, String::new());
        for a in attrs(nest) {
            let (t, v) = a?;
            match t {
                IPVS_SVC_ATTR_AF => af = Some(u16_ne(v).context("IPVS_SVC_ATTR_AF")?),
                IPVS_SVC_ATTR_PROTOCOL => {
                    protocol = Some(u16_ne(v).context("IPVS_SVC_ATTR_PROTOCOL")?);
                }
                IPVS_SVC_ATTR_ADDR => addr = Some(v),
                IPVS_SVC_ATTR_PORT => port = Some(u16_be(v).context("IPVS_SVC_ATTR_PORT")?),
                IPVS_SVC_ATTR_FWMARK => fwmark = u32_ne(v).context("IPVS_SVC_ATTR_FWMARK")?,
                IPVS_SVC_ATTR_SCHED_NAME => {
                    scheduler = String::from_utf8_lossy(v)
                        .trim_end_matches('\0')
                        .to_string();
                }
                _ => {}
            }
        }
        let af = af.context("virtual server without IPVS_SVC_ATTR_AF")?;
        let vs = if fwmark != 0 {
            VirtualServer {
                af,
                protocol: 0,
                addr: if af == AF_INET6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                },
                port: 0,
                fwmark,
                scheduler,
            }
        } else {
            VirtualServer {
                af,
                protocol: protocol.context("virtual server without IPVS_SVC_ATTR_PROTOCOL")?,
                addr: inet_addr(
                    af,
                    addr.context("virtual server without IPVS_SVC_ATTR_ADDR")?,
                )
                .context("IPVS_SVC_ATTR_ADDR")?,
                port: port.context("virtual server without IPVS_SVC_ATTR_PORT")?,
                fwmark,
                scheduler,
            }
        };
        out.push(vs);
    }
    Ok(out)
}

/// The real servers of an `IPVS_CMD_GET_DEST` dump reply for a virtual server of family
/// `svc_af` (a real server's own family is IPVS_DEST_ATTR_ADDR_FAMILY where the kernel sends it).
pub fn parse_dests(reply: &[u8], family: u16, svc_af: u16) -> Result<Vec<RealServer>> {
    let mut out = Vec::new();
    for nest in nested_of(reply, family, IPVS_CMD_NEW_DEST, IPVS_CMD_ATTR_DEST)? {
        let (mut af, mut addr, mut port, mut fwd_method, mut weight) =
            (svc_af, None, None, 0, None);
        for a in attrs(nest) {
            let (t, v) = a?;
            match t {
                IPVS_DEST_ATTR_ADDR => addr = Some(v),
                IPVS_DEST_ATTR_PORT => port = Some(u16_be(v).context("IPVS_DEST_ATTR_PORT")?),
                IPVS_DEST_ATTR_FWD_METHOD => {
                    fwd_method = u32_ne(v).context("IPVS_DEST_ATTR_FWD_METHOD")?;
                }
                IPVS_DEST_ATTR_WEIGHT => {
                    weight = Some(u32_ne(v).context("IPVS_DEST_ATTR_WEIGHT")?);
                }
                IPVS_DEST_ATTR_ADDR_FAMILY => {
                    af = u16_ne(v).context("IPVS_DEST_ATTR_ADDR_FAMILY")?;
                }
                _ => {}
            }
        }
        out.push(RealServer {
            addr: inet_addr(af, addr.context("real server without IPVS_DEST_ATTR_ADDR")?)
                .context("IPVS_DEST_ATTR_ADDR")?,
            port: port.context("real server without IPVS_DEST_ATTR_PORT")?,
            fwd_method,
            weight: weight.context("real server without IPVS_DEST_ATTR_WEIGHT")?,
        });
    }
    Ok(out)
}

/// Appends one netlink attribute (header, value, padding to 4 bytes).
fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + ((4 - len % 4) % 4), 0);
}

/// The attributes of an `IPVS_CMD_GET_DEST` request for `vs`: the nested
/// IPVS_CMD_ATTR_SERVICE that names it (family and either its mark, or its protocol, address
/// and port), as `ipvsadm` sends it.
pub fn get_dests_attributes(vs: &VirtualServer) -> Vec<u8> {
    let mut inner = Vec::new();
    put_attr(&mut inner, IPVS_SVC_ATTR_AF, &vs.af.to_ne_bytes());
    if vs.fwmark != 0 {
        put_attr(&mut inner, IPVS_SVC_ATTR_FWMARK, &vs.fwmark.to_ne_bytes());
    } else {
        put_attr(
            &mut inner,
            IPVS_SVC_ATTR_PROTOCOL,
            &vs.protocol.to_ne_bytes(),
        );
        let mut addr = [0u8; 16];
        match vs.addr {
            IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => addr.copy_from_slice(&a.octets()),
        }
        put_attr(&mut inner, IPVS_SVC_ATTR_ADDR, &addr);
        put_attr(&mut inner, IPVS_SVC_ATTR_PORT, &vs.port.to_be_bytes());
    }
    let mut out = Vec::new();
    put_attr(&mut out, IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, &inner);
    out
}

/// An IPVS request: a command and its attributes, already encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IpvsRequest {
    cmd: u8,
    attributes: Vec<u8>,
}

impl GenlFamily for IpvsRequest {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsRequest {
    fn buffer_len(&self) -> usize {
        self.attributes.len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        buffer[..self.attributes.len()].copy_from_slice(&self.attributes);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsRequest {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(Self {
            cmd: header.cmd,
            attributes: buf.to_vec(),
        })
    }
}

fn ipvs_message(family: u16, cmd: u8, attributes: Vec<u8>) -> GenlMessage<IpvsRequest> {
    let mut m = GenlMessage::from_payload(IpvsRequest { cmd, attributes });
    m.set_resolved_family_id(family);
    m
}

/// The IPVS family id, or `None` when the kernel has no IPVS (the controller answers ENOENT).
fn family_id(sock: &mut NlSocket) -> Result<Option<u16>> {
    let req = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(IPVS_GENL_NAME.into())],
    });
    match sock.request(req) {
        Ok(reply) => parse_family_id(&reply).map(Some),
        Err(e) => {
            let enoent = e
                .chain()
                .filter_map(|c| c.downcast_ref::<std::io::Error>())
                .any(|io| io.raw_os_error() == Some(libc::ENOENT));
            if enoent {
                Ok(None)
            } else {
                Err(e.context("CTRL_CMD_GETFAMILY IPVS"))
            }
        }
    }
}

/// Virtual servers with their real servers.
pub type IpvsTable = Vec<(VirtualServer, Vec<RealServer>)>;

/// A generic netlink socket in the agent's namespace and the IPVS family id.
struct IpvsReader {
    sock: NlSocket,
    family: u16,
}

impl IpvsReader {
    /// `None` when the kernel has no IPVS.
    fn open() -> Result<Option<Self>> {
        let mut sock = NlSocket::open(netlink_sys::protocols::NETLINK_GENERIC)
            .context("open a generic netlink socket")?;
        Ok(family_id(&mut sock)?.map(|family| Self { sock, family }))
    }

    /// The virtual servers, and the real servers of those `wanted` keeps.
    fn table(&mut self, wanted: impl Fn(&VirtualServer) -> bool) -> Result<IpvsTable> {
        let family = self.family;
        let reply = self
            .sock
            .dump(ipvs_message(family, IPVS_CMD_GET_SERVICE, Vec::new()))
            .context("IPVS_CMD_GET_SERVICE")?;
        let mut table = Vec::new();
        for vs in parse_services(&reply, family)? {
            if !wanted(&vs) {
                continue;
            }
            let reply = self
                .sock
                .dump(ipvs_message(
                    family,
                    IPVS_CMD_GET_DEST,
                    get_dests_attributes(&vs),
                ))
                .with_context(|| format!("IPVS_CMD_GET_DEST of {}:{}", vs.addr, vs.port))?;
            let dests = parse_dests(&reply, family, vs.af)?;
            table.push((vs, dests));
        }
        Ok(table)
    }
}

/// One port of a Service as IPVS should have it: the virtual server and its real servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedPort {
    pub protocol: u16,
    pub vip: IpAddr,
    pub port: u16,
    pub reals: BTreeSet<(IpAddr, u16)>,
}

/// A Service (`<namespace>/<name>`) and its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedService {
    pub name: String,
    pub ports: Vec<ExpectedPort>,
}

fn protocol_number(p: Option<&str>) -> Option<u16> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(IPPROTO_TCP),
        "UDP" => Some(IPPROTO_UDP),
        "SCTP" => Some(IPPROTO_SCTP),
        _ => None,
    }
}

/// What IPVS should hold for each Service (see the module documentation for what is left
/// out); `node`: this node's name, for `internalTrafficPolicy: Local`.
pub fn expected_services(
    services: &[Service],
    endpoints: &[Endpoints],
    node: Option<&str>,
) -> Vec<ExpectedService> {
    let by_name: HashMap<(&str, &str), &Endpoints> = endpoints
        .iter()
        .filter_map(|e| {
            Some((
                (
                    e.metadata.namespace.as_deref().unwrap_or(""),
                    e.metadata.name.as_deref()?,
                ),
                e,
            ))
        })
        .collect();
    let mut out = Vec::new();
    for s in services {
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        let Some(name) = s.metadata.name.as_deref() else {
            continue;
        };
        let Some(spec) = s.spec.as_ref() else {
            continue;
        };
        let label = |k: &str| s.metadata.labels.as_ref().and_then(|l| l.get(k));
        let annotation = |k: &str| {
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .map(String::as_str)
        };
        let topology = [
            "service.kubernetes.io/topology-mode",
            "service.kubernetes.io/topology-aware-hints",
        ]
        .iter()
        .any(|k| {
            annotation(k).is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("disabled"))
        });
        if spec.type_.as_deref() == Some("ExternalName")
            || label("service.kubernetes.io/service-proxy-name").is_some()
            || spec.traffic_distribution.is_some()
            || topology
        {
            continue;
        }
        let Some(vip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let ep = by_name.get(&(ns, name));
        let truncated = ep
            .and_then(|e| e.metadata.annotations.as_ref())
            .and_then(|a| a.get("endpoints.kubernetes.io/over-capacity"))
            .is_some_and(|v| v == "truncated");
        if truncated {
            continue;
        }
        let local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let mut ports = Vec::new();
        for sp in spec.ports.iter().flatten() {
            let (Some(protocol), Ok(port)) = (
                protocol_number(sp.protocol.as_deref()),
                u16::try_from(sp.port),
            ) else {
                continue;
            };
            let pname = sp.name.as_deref().unwrap_or("");
            let mut reals = BTreeSet::new();
            for subset in ep.and_then(|e| e.subsets.as_ref()).into_iter().flatten() {
                for epp in subset.ports.iter().flatten() {
                    if epp.name.as_deref().unwrap_or("") != pname
                        || protocol_number(epp.protocol.as_deref()) != Some(protocol)
                    {
                        continue;
                    }
                    let Ok(target) = u16::try_from(epp.port) else {
                        continue;
                    };
                    for a in subset.addresses.iter().flatten() {
                        let Ok(ip) = a.ip.parse::<IpAddr>() else {
                            continue;
                        };
                        if ip.is_ipv4() != vip.is_ipv4() {
                            continue;
                        }
                        if local && a.node_name.as_deref() != node {
                            continue;
                        }
                        reals.insert((ip, target));
                    }
                }
            }
            ports.push(ExpectedPort {
                protocol,
                vip,
                port,
                reals,
            });
        }
        if !ports.is_empty() {
            out.push(ExpectedService {
                name: format!("{ns}/{name}"),
                ports,
            });
        }
    }
    out
}

/// The Services (`<namespace>/<name>`, sorted) whose virtual server is missing from `table` or
/// whose real servers (weight above 0) are not the expected ones.
pub fn abnormal_services(expected: &[ExpectedService], table: &IpvsTable) -> Vec<String> {
    let index: HashMap<(u16, IpAddr, u16), BTreeSet<(IpAddr, u16)>> = table
        .iter()
        .filter(|(vs, _)| vs.fwmark == 0)
        .map(|(vs, reals)| {
            (
                (vs.protocol, vs.addr, vs.port),
                reals
                    .iter()
                    .filter(|r| r.weight > 0)
                    .map(|r| (r.addr, r.port))
                    .collect(),
            )
        })
        .collect();
    let mut out: Vec<String> = expected
        .iter()
        .filter(|s| {
            s.ports.iter().any(|p| {
                index
                    .get(&(p.protocol, p.vip, p.port))
                    .is_none_or(|reals| *reals != p.reals)
            })
        })
        .map(|s| s.name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `svc(<ns>/<name>,...) ipvs rules are abnormal, please check it.`
pub fn ipvs_msg(names: &[String]) -> String {
    format!(
        "svc({}) ipvs rules are abnormal, please check it.",
        capped_list(names)
    )
}

/// `IPVSRulesAbnormal`.
pub struct IpvsRulesAbnormal;

impl IpvsRulesAbnormal {
    /// The abnormal Services now; `None` when the check does not apply here.
    fn look(&self, ctx: &CheckContext, client: &kube::Client) -> Result<Option<Vec<String>>> {
        let mode = ctx.options.ipvs;
        let Some(mut reader) = IpvsReader::open()? else {
            if mode == IpvsMode::On {
                bail!(
                    "checks.ipvs is true but the kernel has no IPVS (no \"IPVS\" generic netlink family: ip_vs is not loaded)"
                );
            }
            return Ok(None);
        };
        if mode == IpvsMode::Auto
            && !super::node_interfaces(ctx)?
                .iter()
                .any(|n| n == KUBE_IPVS_INTERFACE)
        {
            return Ok(None);
        }
        let services: Api<Service> = Api::all(client.clone());
        let services = super::k8s_config::block_on(services.list(&ListParams::default()))?
            .context("list Services")?
            .items;
        let endpoints: Api<Endpoints> = Api::all(client.clone());
        let endpoints = super::k8s_config::block_on(endpoints.list(&ListParams::default()))?
            .context("list Endpoints")?
            .items;
        let node = ctx
            .targets
            .iter()
            .find(|t| t.is_node())
            .and_then(|t| t.labels.iter().find(|(k, _)| *k == "k8s_node"))
            .map(|(_, v)| v.as_str());
        let expected = expected_services(&services, &endpoints, node);
        let wanted: HashSet<(u16, IpAddr, u16)> = expected
            .iter()
            .flat_map(|s| s.ports.iter().map(|p| (p.protocol, p.vip, p.port)))
            .collect();
        let table = reader
            .table(|vs| vs.fwmark == 0 && wanted.contains(&(vs.protocol, vs.addr, vs.port)))?;
        Ok(Some(abnormal_services(&expected, &table)))
    }
}

impl Check for IpvsRulesAbnormal {
    fn name(&self) -> &'static str {
        "IPVSRulesAbnormal"
    }

    fn probe(&self) -> &'static str {
        "IPVS"
    }

    fn kinds(&self) -> &'static [&'static str] {
        &["IPVS"]
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        if ctx.options.ipvs == IpvsMode::Off {
            return Ok(Vec::new());
        }
        // Standalone: no Services to compare with.
        let Some(client) = ctx.kube.as_ref() else {
            return Ok(Vec::new());
        };
        let Some(first) = self.look(ctx, client)? else {
            return Ok(Vec::new());
        };
        if first.is_empty() {
            return Ok(Vec::new());
        }
        std::thread::sleep(CONFIRM_AFTER);
        let again = self.look(ctx, client)?.unwrap_or_default();
        let names: Vec<String> = first.into_iter().filter(|n| again.contains(n)).collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![Problem {
            kind: "IPVS",
            msg: ipvs_msg(&names),
            object: vec![("k8s.services", names.join(","))],
        }])
    }
}

#[cfg(test)]
mod tests {
    //! The parsers and the comparison on netlink messages built byte for byte from
    //! `linux/ip_vs.h` and `linux/genetlink.h` (`tests/fixtures/ipvs/`, written by
    //! [`fixtures::all`]; `UPDATE_GOLDEN=1` rewrites them). They are constructed, not captured:
    //! this machine's kernel has no IPVS to capture from. The builder below restates the
    //! kernel's layout on its own (nothing of the parser is reused), in the order
    //! `ip_vs_genl_fill_service`/`ip_vs_genl_fill_dest` (Linux 6.x) put the attributes.

    use std::path::PathBuf;

    use super::*;

    mod fixtures {
        /// The IPVS family id (dynamic in the kernel; any value above the controller's 0x10).
        pub const FAMILY: u16 = 0x22;
        const PID: u32 = 31337;
        const NLM_F_REQUEST: u16 = 0x01;
        const NLM_F_MULTI: u16 = 0x02;
        const NLM_F_DUMP: u16 = 0x300;
        const AF_INET: u16 = 2;
        const AF_INET6: u16 = 10;
        const TCP: u16 = 6;
        const UDP: u16 = 17;

        /// Attributes, each `nla_len`, `nla_type`, value, padded to 4 bytes (host byte order
        /// but where the kernel uses `nla_put_be16`).
        #[derive(Default)]
        pub struct Attrs(pub Vec<u8>);

        impl Attrs {
            pub fn raw(mut self, kind: u16, value: &[u8]) -> Self {
                let len = 4 + value.len();
                self.0.extend_from_slice(&(len as u16).to_ne_bytes());
                self.0.extend_from_slice(&kind.to_ne_bytes());
                self.0.extend_from_slice(value);
                while !self.0.len().is_multiple_of(4) {
                    self.0.push(0);
                }
                self
            }
            fn u8(self, kind: u16, v: u8) -> Self {
                self.raw(kind, &[v])
            }
            pub fn u16(self, kind: u16, v: u16) -> Self {
                self.raw(kind, &v.to_ne_bytes())
            }
            pub fn be16(self, kind: u16, v: u16) -> Self {
                self.raw(kind, &v.to_be_bytes())
            }
            fn u32(self, kind: u16, v: u32) -> Self {
                self.raw(kind, &v.to_ne_bytes())
            }
            fn be32(self, kind: u16, v: u32) -> Self {
                self.raw(kind, &v.to_be_bytes())
            }
            fn u64(self, kind: u16, v: u64) -> Self {
                // x86_64 has efficient unaligned access: nla_put_u64_64bit adds no PAD.
                self.raw(kind, &v.to_ne_bytes())
            }
            fn string(self, kind: u16, s: &str) -> Self {
                let mut v = s.as_bytes().to_vec();
                v.push(0);
                self.raw(kind, &v)
            }
            /// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first 4.
            pub fn inet(self, kind: u16, addr: &str) -> Self {
                let mut v = [0u8; 16];
                match addr.parse::<std::net::IpAddr>().expect("address") {
                    std::net::IpAddr::V4(a) => v[..4].copy_from_slice(&a.octets()),
                    std::net::IpAddr::V6(a) => v.copy_from_slice(&a.octets()),
                }
                self.raw(kind, &v)
            }
            /// `nla_nest_start_noflag`, as the IPVS code nests (no NLA_F_NESTED).
            pub fn nest(self, kind: u16, inner: Attrs) -> Self {
                self.raw(kind, &inner.0)
            }
        }

        /// `struct nlmsghdr`, `struct genlmsghdr`, attributes.
        pub fn message(
            kind: u16,
            flags: u16,
            seq: u32,
            pid: u32,
            cmd: u8,
            version: u8,
            a: &Attrs,
        ) -> Vec<u8> {
            let len = 16 + 4 + a.0.len();
            let mut m = Vec::with_capacity(len);
            m.extend_from_slice(&(len as u32).to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&flags.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&pid.to_ne_bytes());
            m.extend_from_slice(&[cmd, version, 0, 0]);
            m.extend_from_slice(&a.0);
            m
        }

        /// IPVS_STATS_ATTR_* 1..=10 (`ip_vs_genl_fill_stats`: u32 but the two byte counters).
        fn stats(seed: u32) -> Attrs {
            let s = u64::from(seed);
            Attrs::default()
                .u32(1, seed)
                .u32(2, seed * 10)
                .u32(3, seed * 9)
                .u64(4, s * 1500)
                .u64(5, s * 1200)
                .u32(6, 0)
                .u32(7, 0)
                .u32(8, 0)
                .u32(9, 0)
                .u32(10, 0)
        }

        /// The same, all u64 (`ip_vs_genl_fill_stats64`).
        fn stats64(seed: u32) -> Attrs {
            let s = u64::from(seed);
            Attrs::default()
                .u64(1, s)
                .u64(2, s * 10)
                .u64(3, s * 9)
                .u64(4, s * 1500)
                .u64(5, s * 1200)
                .u64(6, 0)
                .u64(7, 0)
                .u64(8, 0)
                .u64(9, 0)
                .u64(10, 0)
        }

        /// One IPVS_CMD_NEW_SERVICE message of a dump (`ip_vs_genl_fill_service`).
        fn service(
            af: u16,
            proto: u16,
            addr: &str,
            port: u16,
            fwmark: u32,
            pe: Option<&str>,
        ) -> Vec<u8> {
            let mut svc = Attrs::default().u16(1, af);
            svc = if fwmark != 0 {
                svc.u32(5, fwmark)
            } else {
                svc.u16(2, proto).inet(3, addr).be16(4, port)
            };
            svc = svc.string(6, if fwmark != 0 { "wlc" } else { "rr" });
            if let Some(pe) = pe {
                svc = svc.string(11, pe);
            }
            // struct ip_vs_flags { flags, mask = ~0 }; timeout; netmask (be32)
            let mut flags = Vec::new();
            flags.extend_from_slice(&0u32.to_ne_bytes());
            flags.extend_from_slice(&u32::MAX.to_ne_bytes());
            svc = svc
                .raw(7, &flags)
                .u32(8, 0)
                .be32(9, if af == AF_INET6 { 128 } else { 0xffff_ffff })
                .nest(10, stats(port.into()))
                .nest(12, stats64(port.into()));
            message(
                FAMILY,
                NLM_F_MULTI,
                2,
                PID,
                1,
                1,
                &Attrs::default().nest(1, svc),
            )
        }

        /// One IPVS_CMD_NEW_DEST message of a dump (`ip_vs_genl_fill_dest`).
        fn dest(seq: u32, af: u16, addr: &str, port: u16, weight: u32) -> Vec<u8> {
            let d = Attrs::default()
                .inet(1, addr)
                .be16(2, port)
                .u32(3, 0) // IP_VS_CONN_F_MASQ
                .u32(4, weight)
                .u8(13, 0) // IP_VS_CONN_F_TUNNEL_TYPE_IPIP
                .be16(14, 0)
                .u16(15, 0)
                .u32(5, 0)
                .u32(6, 0)
                .u32(7, weight * 3)
                .u32(8, weight * 5)
                .u32(9, 0)
                .u16(11, af)
                .nest(10, stats(weight + 1))
                .nest(12, stats64(weight + 1));
            message(
                FAMILY,
                NLM_F_MULTI,
                seq,
                PID,
                5,
                1,
                &Attrs::default().nest(2, d),
            )
        }

        /// The controller's CTRL_CMD_NEWFAMILY reply for "IPVS" (`ctrl_fill_info`).
        fn family() -> Vec<u8> {
            let mut ops = Attrs::default();
            let cmds: [u32; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17];
            for (i, cmd) in cmds.iter().enumerate() {
                // GENL_ADMIN_PERM | GENL_CMD_CAP_DO (| GENL_CMD_CAP_DUMP for the GETs)
                let dump = matches!(cmd, 4 | 8 | 11 | 13);
                let flags = 0x01 | 0x02 | if dump { 0x04 } else { 0 };
                ops = ops.nest(i as u16 + 1, Attrs::default().u32(1, *cmd).u32(2, flags));
            }
            let a = Attrs::default()
                .string(2, "IPVS")
                .u16(1, FAMILY)
                .u32(3, 1)
                .u32(4, 0)
                .u32(5, 6)
                .nest(6, ops);
            message(0x10, 0, 1, PID, 1, 2, &a)
        }

        /// The CTRL_CMD_GETFAMILY request the agent sends (`nlmsg_pid` 0: the kernel fills it).
        fn family_request() -> Vec<u8> {
            message(
                0x10,
                NLM_F_REQUEST,
                1,
                0,
                3,
                2,
                &Attrs::default().string(2, "IPVS"),
            )
        }

        /// The IPVS_CMD_GET_DEST dump request for TCP 10.96.0.10:53, as `ipvsadm` sends it.
        fn dests_request() -> Vec<u8> {
            let svc = Attrs::default()
                .u16(1, AF_INET)
                .u16(2, TCP)
                .inet(3, "10.96.0.10")
                .be16(4, 53);
            // Here the nest carries NLA_F_NESTED (the kernel accepts both).
            let a = Attrs::default().raw(1 | 0x8000, &svc.0);
            message(FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 3, 0, 8, 1, &a)
        }

        pub fn all() -> Vec<(&'static str, Vec<u8>)> {
            let services = [
                service(AF_INET, TCP, "10.96.0.1", 443, 0, None),
                service(AF_INET, UDP, "10.96.0.10", 53, 0, None),
                service(AF_INET, TCP, "10.96.0.10", 53, 0, None),
                service(AF_INET, TCP, "10.96.0.10", 9153, 0, None),
                service(AF_INET, TCP, "10.96.100.7", 80, 0, None),
                service(AF_INET, TCP, "192.0.2.10", 30000, 0, None),
                service(AF_INET, 0, "", 0, 7, Some("sip")),
                service(AF_INET6, TCP, "fd00:10:96::7", 80, 0, None),
            ]
            .concat();
            vec![
                ("family.bin", family()),
                ("getfamily-request.bin", family_request()),
                ("services.bin", services),
                ("getdests-request.bin", dests_request()),
                (
                    "dests-tcp-10.96.0.1-443.bin",
                    dest(4, AF_INET, "192.0.2.10", 6443, 1),
                ),
                (
                    "dests-udp-10.96.0.10-53.bin",
                    [
                        dest(5, AF_INET, "10.244.0.5", 53, 1),
                        dest(5, AF_INET, "10.244.1.7", 53, 1),
                    ]
                    .concat(),
                ),
                (
                    "dests-tcp-10.96.0.10-53.bin",
                    [
                        dest(6, AF_INET, "10.244.0.5", 53, 1),
                        dest(6, AF_INET, "10.244.1.7", 53, 1),
                    ]
                    .concat(),
                ),
                (
                    "dests-tcp-10.96.0.10-9153.bin",
                    [
                        dest(7, AF_INET, "10.244.0.5", 9153, 1),
                        dest(7, AF_INET, "10.244.1.7", 9153, 1),
                    ]
                    .concat(),
                ),
                (
                    "dests-tcp-10.96.100.7-80.bin",
                    [
                        dest(8, AF_INET, "10.244.0.9", 8080, 1),
                        // Being drained by kube-proxy: its endpoint went away.
                        dest(8, AF_INET, "10.244.1.3", 8080, 0),
                        dest(8, AF_INET, "10.244.2.4", 8080, 1),
                    ]
                    .concat(),
                ),
                (
                    "dests-tcp-fd00.10.96..7-80.bin",
                    dest(9, AF_INET6, "fd00:10:244::9", 8080, 1),
                ),
            ]
        }
    }

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ipvs")
    }

    fn fixture(name: &str) -> Vec<u8> {
        // While they are rewritten, the tests that read them use what is being written.
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            return fixtures::all()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| b)
                .unwrap_or_else(|| panic!("no fixture {name}"));
        }
        let p = dir().join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn fixtures_are_what_the_generator_builds() {
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        for (name, bytes) in fixtures::all() {
            if update {
                std::fs::create_dir_all(dir()).unwrap();
                std::fs::write(dir().join(name), &bytes).unwrap();
            } else {
                assert!(
                    fixture(name) == bytes,
                    "{name} differs from the generator (UPDATE_GOLDEN=1)"
                );
            }
        }
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn vs(proto: u16, addr: &str, port: u16) -> VirtualServer {
        let addr = v4(addr);
        VirtualServer {
            af: if addr.is_ipv4() { AF_INET } else { AF_INET6 },
            protocol: proto,
            addr,
            port,
            fwmark: 0,
            scheduler: "rr".into(),
        }
    }

    fn rs(addr: &str, port: u16, weight: u32) -> RealServer {
        RealServer {
            addr: v4(addr),
            port,
            fwd_method: 0,
            weight,
        }
    }

    #[test]
    fn family_id_and_requests() {
        assert_eq!(
            parse_family_id(&fixture("family.bin")).unwrap(),
            fixtures::FAMILY
        );
        assert!(parse_family_id(&fixture("services.bin")).is_err());
        assert!(parse_family_id(&[]).is_err());

        // The requests as the socket sends them (sequence numbers as in the fixtures).
        fn serialize<M: netlink_packet_core::NetlinkSerializable + std::fmt::Debug>(
            seq: u32,
            flags: u16,
            payload: M,
        ) -> Vec<u8> {
            use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
            let mut h = NetlinkHeader::default();
            h.flags = flags;
            h.sequence_number = seq;
            let mut m = NetlinkMessage::new(h, NetlinkPayload::InnerMessage(payload));
            m.finalize();
            let mut buf = vec![0u8; m.buffer_len()];
            m.serialize(&mut buf);
            buf
        }
        let family_req = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(IPVS_GENL_NAME.into())],
        });
        assert_eq!(
            serialize(1, 0x01, family_req),
            fixture("getfamily-request.bin")
        );
        let dns_tcp = vs(IPPROTO_TCP, "10.96.0.10", 53);
        let dests_req = ipvs_message(
            fixtures::FAMILY,
            IPVS_CMD_GET_DEST,
            get_dests_attributes(&dns_tcp),
        );
        assert_eq!(
            serialize(3, 0x301, dests_req),
            fixture("getdests-request.bin")
        );
    }

    #[test]
    fn services_are_parsed() {
        let got = parse_services(&fixture("services.bin"), fixtures::FAMILY).unwrap();
        let mut mark = vs(0, "0.0.0.0", 0);
        mark.fwmark = 7;
        mark.scheduler = "wlc".into();
        assert_eq!(
            got,
            vec![
                vs(IPPROTO_TCP, "10.96.0.1", 443),
                vs(IPPROTO_UDP, "10.96.0.10", 53),
                vs(IPPROTO_TCP, "10.96.0.10", 53),
                vs(IPPROTO_TCP, "10.96.0.10", 9153),
                vs(IPPROTO_TCP, "10.96.100.7", 80),
                vs(IPPROTO_TCP, "192.0.2.10", 30000),
                mark,
                vs(IPPROTO_TCP, "fd00:10:96::7", 80),
            ]
        );
        // Messages of another family are not IPVS's.
        assert!(
            parse_services(&fixture("services.bin"), 0x23)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn dests_are_parsed() {
        let f = fixtures::FAMILY;
        assert_eq!(
            parse_dests(&fixture("dests-tcp-10.96.100.7-80.bin"), f, AF_INET).unwrap(),
            vec![
                rs("10.244.0.9", 8080, 1),
                rs("10.244.1.3", 8080, 0),
                rs("10.244.2.4", 8080, 1)
            ]
        );
        assert_eq!(
            parse_dests(&fixture("dests-udp-10.96.0.10-53.bin"), f, AF_INET).unwrap(),
            vec![rs("10.244.0.5", 53, 1), rs("10.244.1.7", 53, 1)]
        );
        assert_eq!(
            parse_dests(&fixture("dests-tcp-fd00.10.96..7-80.bin"), f, AF_INET6).unwrap(),
            vec![rs("fd00:10:244::9", 8080, 1)]
        );
        assert!(parse_dests(&[], f, AF_INET).unwrap().is_empty());
    }

    #[test]
    fn parsers_survive_damaged_replies() {
        for (name, original) in fixtures::all() {
            let mut variants: Vec<Vec<u8>> = (0..original.len())
                .map(|n| original[..n].to_vec())
                .collect();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..256 {
                let mut v = original.clone();
                for _ in 0..3 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let i = (x >> 33) as usize % v.len();
                    v[i] ^= (x >> 17) as u8 | 1;
                }
                variants.push(v);
            }
            for v in variants {
                let _ = parse_family_id(&v);
                let _ = parse_services(&v, fixtures::FAMILY);
                let _ = parse_dests(&v, fixtures::FAMILY, AF_INET);
                let _ = parse_dests(&v, fixtures::FAMILY, 99);
            }
            let _ = name;
        }
    }

    /// The table of the fixtures: each virtual server with the real servers of its dump.
    fn fixture_table() -> IpvsTable {
        let f = fixtures::FAMILY;
        parse_services(&fixture("services.bin"), f)
            .unwrap()
            .into_iter()
            .filter(|v| v.fwmark == 0 && v.port != 30000)
            .map(|v| {
                let proto = if v.protocol == IPPROTO_UDP {
                    "udp"
                } else {
                    "tcp"
                };
                let addr = v.addr.to_string().replace(':', ".");
                let reals = parse_dests(
                    &fixture(&format!("dests-{proto}-{addr}-{}.bin", v.port)),
                    f,
                    v.af,
                )
                .unwrap();
                (v, reals)
            })
            .collect()
    }

    fn objects<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Vec<T> {
        serde_json::from_value(v).unwrap()
    }

    /// The cluster the fixtures were built for (objects as the API server returns them).
    fn cluster() -> (serde_json::Value, serde_json::Value) {
        let services = serde_json::json!([
            { "metadata": { "namespace": "default", "name": "kubernetes" },
              "spec": { "type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                        "ports": [{ "name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443 }] } },
            { "metadata": { "namespace": "kube-system", "name": "kube-dns" },
              "spec": { "type": "ClusterIP", "clusterIP": "10.96.0.10",
                        "ports": [{ "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53 },
                                  { "name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53 },
                                  { "name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153 }] } },
            { "metadata": { "namespace": "shop", "name": "web" },
              "spec": { "type": "NodePort", "clusterIP": "10.96.100.7", "clusterIPs": ["10.96.100.7", "fd00:10:96::7"],
                        "ipFamilies": ["IPv4", "IPv6"], "internalTrafficPolicy": "Cluster",
                        "ports": [{ "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30000 }] } },
            { "metadata": { "namespace": "shop", "name": "headless" },
              "spec": { "type": "ClusterIP", "clusterIP": "None", "ports": [{ "port": 80 }] } },
            { "metadata": { "namespace": "shop", "name": "ext" },
              "spec": { "type": "ExternalName", "externalName": "example.org" } },
        ]);
        let endpoints = serde_json::json!([
            { "metadata": { "namespace": "default", "name": "kubernetes" },
              "subsets": [{ "addresses": [{ "ip": "192.0.2.10" }],
                            "ports": [{ "name": "https", "port": 6443, "protocol": "TCP" }] }] },
            { "metadata": { "namespace": "kube-system", "name": "kube-dns" },
              "subsets": [{ "addresses": [{ "ip": "10.244.0.5", "nodeName": "node-a" }, { "ip": "10.244.1.7", "nodeName": "node-b" }],
                            "ports": [{ "name": "dns", "port": 53, "protocol": "UDP" },
                                      { "name": "dns-tcp", "port": 53, "protocol": "TCP" },
                                      { "name": "metrics", "port": 9153, "protocol": "TCP" }] }] },
            { "metadata": { "namespace": "shop", "name": "web" },
              "subsets": [{ "addresses": [{ "ip": "10.244.0.9", "nodeName": "node-a" }, { "ip": "10.244.2.4", "nodeName": "node-c" }],
                            "notReadyAddresses": [{ "ip": "10.244.1.3", "nodeName": "node-b" }],
                            "ports": [{ "port": 8080, "protocol": "TCP" }] }] },
            { "metadata": { "namespace": "shop", "name": "headless" },
              "subsets": [{ "addresses": [{ "ip": "10.244.0.77" }], "ports": [{ "port": 80, "protocol": "TCP" }] }] },
        ]);
        (services, endpoints)
    }

    fn abnormal(
        services: serde_json::Value,
        endpoints: serde_json::Value,
        node: Option<&str>,
    ) -> Vec<String> {
        let expected = expected_services(&objects(services), &objects(endpoints), node);
        abnormal_services(&expected, &fixture_table())
    }

    #[test]
    fn matching_rules_are_normal() {
        let (services, endpoints) = cluster();
        let expected = expected_services(
            &objects(services.clone()),
            &objects(endpoints.clone()),
            Some("node-a"),
        );
        let names: Vec<&str> = expected.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["default/kubernetes", "kube-system/kube-dns", "shop/web"]
        );
        assert_eq!(
            expected[2].ports,
            vec![ExpectedPort {
                protocol: IPPROTO_TCP,
                vip: v4("10.96.100.7"),
                port: 80,
                reals: [(v4("10.244.0.9"), 8080), (v4("10.244.2.4"), 8080)].into(),
            }]
        );
        assert_eq!(
            abnormal(services, endpoints, Some("node-a")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn differences_make_services_abnormal() {
        let (services, endpoints) = cluster();
        // A ready endpoint IPVS does not have.
        let mut e = endpoints.clone();
        e[2]["subsets"][0]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "ip": "10.244.3.3" }));
        assert_eq!(abnormal(services.clone(), e, None), ["shop/web"]);
        // A real server whose endpoint is gone (and that kube-proxy did not drain).
        let mut e = endpoints.clone();
        e[1]["subsets"][0]["addresses"]
            .as_array_mut()
            .unwrap()
            .pop();
        assert_eq!(
            abnormal(services.clone(), e, None),
            ["kube-system/kube-dns"]
        );
        // No Endpoints at all: the virtual servers must have no real server.
        let e = serde_json::json!([endpoints[0], endpoints[1]]);
        assert_eq!(abnormal(services.clone(), e, None), ["shop/web"]);
        // A Service without its virtual server; and one of its ports without one.
        let mut s = services.clone();
        s.as_array_mut().unwrap().push(serde_json::json!(
            { "metadata": { "namespace": "shop", "name": "cart" },
              "spec": { "type": "ClusterIP", "clusterIP": "10.96.100.8", "ports": [{ "port": 80, "protocol": "TCP" }] } }
        ));
        s[0]["spec"]["ports"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "name": "alt", "port": 8443, "protocol": "TCP" }));
        assert_eq!(
            abnormal(s, endpoints.clone(), None),
            ["default/kubernetes", "shop/cart"]
        );
    }

    #[test]
    fn services_ipvs_cannot_be_compared_with_are_left_out() {
        let (services, endpoints) = cluster();
        let mut e = endpoints.clone();
        e[2]["subsets"][0]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "ip": "10.244.3.3" }));
        // Topology-aware routing, another proxy, truncated Endpoints: not compared.
        for (path, value) in [
            (
                "/spec/trafficDistribution",
                serde_json::json!("PreferClose"),
            ),
            (
                "/metadata/annotations",
                serde_json::json!({ "service.kubernetes.io/topology-mode": "Auto" }),
            ),
            (
                "/metadata/labels",
                serde_json::json!({ "service.kubernetes.io/service-proxy-name": "other" }),
            ),
        ] {
            let mut s = services.clone();
            let (parent, key) = path.rsplit_once('/').unwrap();
            s[2].pointer_mut(parent).unwrap()[key] = value;
            assert!(abnormal(s, e.clone(), None).is_empty(), "{path}");
        }
        let mut t = e.clone();
        t[2]["metadata"]["annotations"] =
            serde_json::json!({ "endpoints.kubernetes.io/over-capacity": "truncated" });
        assert!(abnormal(services.clone(), t, None).is_empty());
        // internalTrafficPolicy Local: only this node's endpoints are real servers.
        let mut s = services.clone();
        s[2]["spec"]["internalTrafficPolicy"] = "Local".into();
        let expected = expected_services(
            &objects(s.clone()),
            &objects(endpoints.clone()),
            Some("node-c"),
        );
        assert_eq!(
            expected[2].ports[0].reals,
            [(v4("10.244.2.4"), 8080)].into()
        );
        assert_eq!(abnormal(s, endpoints, Some("node-c")), ["shop/web"]);
    }

    #[test]
    fn message_keeps_the_spec_shape() {
        let names: Vec<String> = ["kube-system/nginx-11222", "a/b", "c/d", "e/f"]
            .map(String::from)
            .into();
        assert_eq!(
            ipvs_msg(&names[..1]),
            "svc(kube-system/nginx-11222) ipvs rules are abnormal, please check it."
        );
        assert_eq!(
            ipvs_msg(&names),
            "svc(kube-system/nginx-11222,a/b,c/d,...) ipvs rules are abnormal, please check it."
        );
    }

    #[test]
    fn mode_option() {
        let mode = |y: &str| serde_yaml::from_str::<crate::checks::CheckOptions>(y).map(|o| o.ipvs);
        assert_eq!(mode("{}").unwrap(), IpvsMode::Auto);
        assert_eq!(mode("ipvs: auto").unwrap(), IpvsMode::Auto);
        assert_eq!(mode("ipvs: true").unwrap(), IpvsMode::On);
        assert_eq!(mode("ipvs: false").unwrap(), IpvsMode::Off);
        assert_eq!(mode("ipvs: \"false\"").unwrap(), IpvsMode::Off);
        assert!(mode("ipvs: sometimes").is_err());
    }

    #[test]
    fn not_applicable_here_or_standalone() {
        let mut ctx = CheckContext {
            procfs: "/proc".into(),
            sysfs: "/sys".into(),
            options: crate::checks::CheckOptions::default(),
            targets: Vec::new(),
            cluster: None,
            kube: None,
        };
        // Standalone: nothing, whatever the kernel.
        assert_eq!(IpvsRulesAbnormal.run(&ctx).unwrap(), Vec::new());
        ctx.options.ipvs = IpvsMode::On;
        assert_eq!(IpvsRulesAbnormal.run(&ctx).unwrap(), Vec::new());
        // The kernel's answer about the family, as the check gets it: on a kernel without
        // IPVS (as where these tests were written) the family is absent.
        let mut sock = NlSocket::open(netlink_sys::protocols::NETLINK_GENERIC).unwrap();
        let have_ipvs = std::path::Path::new("/proc/net/ip_vs").exists();
        assert_eq!(family_id(&mut sock).unwrap().is_some(), have_ipvs);
    }
}
