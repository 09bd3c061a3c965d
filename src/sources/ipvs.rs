//! IPVS as the kernel holds it, over generic netlink in the agent's (the node's) namespace:
//! `CTRL_CMD_GETFAMILY "IPVS"` resolves the family id (no such family: no IPVS in the
//! kernel), an `IPVS_CMD_GET_SERVICE` dump lists the virtual servers, and one
//! `IPVS_CMD_GET_DEST` dump per virtual server wanted lists its real servers (`ipvsadm -Ln`
//! does the same). The attributes are decoded here, from `linux/ip_vs.h`, by pure functions of
//! the reply bytes: no crate decodes IPVS messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, anyhow, bail};
use netlink_packet_core::{
    DecodeError, Emitable, NLA_F_NESTED, NLA_TYPE_MASK, NlasIterator, ParseableParametrized,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

use super::netlink::{NlSocket, raw_messages};

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
pub const IPPROTO_TCP: u16 = libc::IPPROTO_TCP as u16;
pub const IPPROTO_UDP: u16 = libc::IPPROTO_UDP as u16;
pub const IPPROTO_SCTP: u16 = libc::IPPROTO_SCTP as u16;

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
pub fn family_id(sock: &mut NlSocket) -> Result<Option<u16>> {
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
pub struct IpvsReader {
    sock: NlSocket,
    family: u16,
}

impl IpvsReader {
    /// `None` when the kernel has no IPVS.
    pub fn open() -> Result<Option<Self>> {
        let mut sock = NlSocket::open(netlink_sys::protocols::NETLINK_GENERIC)
            .context("open a generic netlink socket")?;
        Ok(family_id(&mut sock)?.map(|family| Self { sock, family }))
    }

    /// The virtual servers, and the real servers of those `wanted` keeps.
    pub fn table(&mut self, wanted: impl Fn(&VirtualServer) -> bool) -> Result<IpvsTable> {
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

#[cfg(test)]
mod tests {
    //! The parsers on netlink messages built byte for byte from `linux/ip_vs.h` and
    //! `linux/genetlink.h` (`tests/fixtures/ipvs/`, written by [`fixtures::all`];
    //! `UPDATE_GOLDEN=1` rewrites them). They are constructed, not captured: this machine's
    //! kernel has no IPVS to capture from. The builder below restates the kernel's layout on
    //! its own (nothing of the parser is reused), in the order
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

    #[test]
    fn the_kernel_says_whether_it_has_ipvs() {
        // On a kernel without IPVS (as where these tests were written) the family is absent.
        let mut sock = NlSocket::open(netlink_sys::protocols::NETLINK_GENERIC).unwrap();
        let have_ipvs = std::path::Path::new("/proc/net/ip_vs").exists();
        assert_eq!(family_id(&mut sock).unwrap().is_some(), have_ipvs);
    }
}
