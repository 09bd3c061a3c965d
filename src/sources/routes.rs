//! Routes, addresses and policy-routing rules of a namespace, from RTM_GETROUTE, RTM_GETADDR
//! and RTM_GETRULE dumps: what the route checks read, decoded as far as they need.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::address::{AddressAttribute, AddressScope};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteType};
use netlink_packet_route::rule::RuleAttribute;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::TargetSources;
use super::netlink::messages;

/// One route of an RTM_GETROUTE dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    /// The table (RTA_TABLE when present: the header's byte cannot hold ids above 255).
    pub table: u32,
    pub kind: RouteType,
    pub oif: Option<u32>,
}

impl Route {
    /// A unicast route to everywhere in the main table (`ip route show default`).
    pub fn is_default(&self) -> bool {
        self.dst_len == 0
            && self.table == u32::from(RouteHeader::RT_TABLE_MAIN)
            && self.kind == RouteType::Unicast
    }

    /// Whether the route's destination prefix holds `ip`.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        match self.dst {
            Some(IpAddr::V4(d)) => prefix_contains(d, self.dst_len, ip),
            None => self.dst_len == 0,
            Some(IpAddr::V6(_)) => false,
        }
    }

    /// Whether the route's destination prefix holds `ip`, of either family (a route without
    /// a destination holds its whole family).
    pub fn covers(&self, ip: IpAddr) -> bool {
        match (self.dst, ip) {
            (Some(IpAddr::V4(d)), IpAddr::V4(ip)) => prefix_contains(d, self.dst_len, ip),
            (Some(IpAddr::V6(d)), IpAddr::V6(ip)) => {
                let len = u32::from(self.dst_len.min(128));
                len == 0 || (u128::from(d) >> (128 - len)) == (u128::from(ip) >> (128 - len))
            }
            (None, _) => self.dst_len == 0,
            _ => false,
        }
    }
}

pub fn prefix_contains(net: Ipv4Addr, len: u8, ip: Ipv4Addr) -> bool {
    if len == 0 {
        return true;
    }
    let shift = 32 - u32::from(len.min(32));
    (u32::from(net) >> shift) == (u32::from(ip) >> shift)
}

/// Decodes an RTM_GETROUTE dump reply.
pub fn parse_routes(reply: &[u8]) -> Result<Vec<Route>> {
    let mut out = Vec::new();
    for m in messages::<RouteNetlinkMessage>(reply) {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = m?.payload else {
            continue;
        };
        let mut route = Route {
            dst: None,
            dst_len: r.header.destination_prefix_length,
            table: u32::from(r.header.table),
            kind: r.header.kind,
            oif: None,
        };
        for a in r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                    route.dst = Some(IpAddr::V4(v4));
                }
                RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                    route.dst = Some(IpAddr::V6(v6));
                }
                RouteAttribute::Table(t) => route.table = t,
                RouteAttribute::Oif(i) => route.oif = Some(i),
                _ => {}
            }
        }
        out.push(route);
    }
    Ok(out)
}

/// One address of an RTM_GETADDR dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    /// IFA_LABEL: the interface's name (or `name:alias`), IPv4 only.
    pub label: Option<String>,
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub scope: AddressScope,
}

/// Decodes an RTM_GETADDR dump reply (IFA_LOCAL, else IFA_ADDRESS, as `ip addr` shows).
pub fn parse_addresses(reply: &[u8]) -> Result<Vec<Address>> {
    let mut out = Vec::new();
    for m in messages::<RouteNetlinkMessage>(reply) {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) = m?.payload else {
            continue;
        };
        let (mut local, mut address, mut label) = (None, None, None);
        for attr in a.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(ip),
                AddressAttribute::Address(ip) => address = Some(ip),
                AddressAttribute::Label(l) => label = Some(l),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            out.push(Address {
                index: a.header.index,
                label,
                ip,
                prefix_len: a.header.prefix_len,
                scope: a.header.scope,
            });
        }
    }
    Ok(out)
}

/// The source selector of one policy-routing rule (`ip rule ... from <src>/<len>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub src: Option<IpAddr>,
    pub src_len: u8,
}

/// Decodes an RTM_GETRULE dump reply.
pub fn parse_rules(reply: &[u8]) -> Result<Vec<Rule>> {
    let mut out = Vec::new();
    for m in messages::<RouteNetlinkMessage>(reply) {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRule(r)) = m?.payload else {
            continue;
        };
        let src = r.attributes.iter().find_map(|a| match a {
            RuleAttribute::Source(ip) => Some(*ip),
            _ => None,
        });
        out.push(Rule {
            src,
            src_len: r.header.src_len,
        });
    }
    Ok(out)
}

/// Global (universe-scope) IPv4 addresses of the namespace, `lo` aside.
pub fn global_v4(src: &mut TargetSources) -> Result<Vec<Address>> {
    Ok(parse_addresses(&src.addresses(AddressFamily::Inet)?)?
        .into_iter()
        .filter(|a| a.scope == AddressScope::Universe && !a.ip.is_loopback())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_and_prefixes() {
        let r = Route {
            dst: None,
            dst_len: 0,
            table: 254,
            kind: RouteType::Unicast,
            oif: Some(2),
        };
        assert!(r.is_default());
        assert!(
            !Route {
                table: 100,
                ..r.clone()
            }
            .is_default()
        );
        assert!(
            !Route {
                kind: RouteType::BlackHole,
                ..r.clone()
            }
            .is_default()
        );
        assert!(prefix_contains(
            Ipv4Addr::new(10, 1, 0, 0),
            16,
            Ipv4Addr::new(10, 1, 200, 3)
        ));
        assert!(!prefix_contains(
            Ipv4Addr::new(10, 1, 0, 0),
            16,
            Ipv4Addr::new(10, 2, 0, 3)
        ));
        assert!(prefix_contains(
            Ipv4Addr::new(10, 1, 0, 5),
            32,
            Ipv4Addr::new(10, 1, 0, 5)
        ));
    }
}
