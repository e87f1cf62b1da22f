//! Network interfaces of the calling thread's network namespace, from an RTM_GETLINK dump.
//!
//! Netlink rather than /sys/class/net: sysfs shows the namespace of whoever mounted it, while
//! a netlink socket belongs to the namespace of the thread that opens it. That keeps the
//! agent right under `--netns` and in tests that move a thread into a namespace.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{LinkAttribute, LinkLayerType, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    /// Frames carry an Ethernet header (veth, tap, bridge, NICs, lo); false for raw-IP
    /// devices (tun, wireguard), whose packets start at the IP header.
    pub ethernet: bool,
    /// Hardware address, colon separated ("" when the device has none).
    pub mac: String,
    /// The kernel's own counters for the device.
    pub stats: KernelStats,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// All interfaces of this thread's network namespace, sorted by ifindex.
pub fn list() -> io::Result<Vec<Interface>> {
    let mut out: Vec<Interface> = dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => interface(link),
            _ => None,
        })
        .collect();
    out.sort_by_key(|i| i.ifindex);
    Ok(out)
}

/// The hardware address the kernel's neighbour table (ARP, NDP) holds for `ip` in this
/// thread's namespace: how the policy learns an attacker's MAC from its address.
pub fn neighbour_mac(ip: IpAddr) -> io::Result<Option<String>> {
    let ip = ip.to_canonical();
    for m in dump(RouteNetlinkMessage::GetNeighbour(
        NeighbourMessage::default(),
    ))? {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            continue;
        };
        let mut dst = None;
        let mut lladdr = None;
        for a in n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    dst = Some(IpAddr::V4(v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    dst = Some(IpAddr::V6(v6))
                }
                NeighbourAttribute::LinkLayerAddress(b) if !b.is_empty() => {
                    lladdr = Some(hex_mac(&b))
                }
                _ => {}
            }
        }
        if dst == Some(ip) && lladdr.is_some() {
            return Ok(lladdr);
        }
    }
    Ok(None)
}

fn hex_mac(b: &[u8]) -> String {
    b.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One NLM_F_DUMP request on a fresh NETLINK_ROUTE socket (bound to this thread's
/// namespace), and every message of the answer.
fn dump(request: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    req.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;

    let mut out = Vec::new();
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = sock.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let msg: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&rx[off..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("netlink: {e:?}")))
                }
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

fn interface(link: LinkMessage) -> Option<Interface> {
    let mut name = None;
    let mut mac = String::new();
    let mut stats = KernelStats::default();
    for attr in link.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n),
            LinkAttribute::Address(a) => mac = hex_mac(&a),
            LinkAttribute::Stats64(s) => {
                stats = KernelStats {
                    rx_bytes: s.rx_bytes,
                    rx_packets: s.rx_packets,
                    tx_bytes: s.tx_bytes,
                    tx_packets: s.tx_packets,
                }
            }
            _ => {}
        }
    }
    let ethernet = matches!(
        link.header.link_layer_type,
        LinkLayerType::Ether | LinkLayerType::Loopback
    );
    Some(Interface {
        name: name?,
        ifindex: link.header.index,
        ethernet,
        mac,
        stats,
    })
}

/// One interface by name; `NotFound` if it does not exist in this namespace.
pub fn get(name: &str) -> io::Result<Interface> {
    validate_name(name)?;
    list()?.into_iter().find(|i| i.name == name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name:?} in this network namespace"),
        )
    })
}

/// The interface's hardware address, colon separated (`get_mac` of the 2014 bandwidth agent).
pub fn mac(name: &str) -> io::Result<String> {
    Ok(get(name)?.mac)
}

/// Kernel statistics of one interface.
pub fn kernel_stats(name: &str) -> io::Result<KernelStats> {
    Ok(get(name)?.stats)
}

/// Interface names are 1 to 15 bytes without '/', ':' or whitespace.
fn validate_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', ' ', '\t', '\n', '\0', ':']);
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_and_ethernet_framed() {
        let lo = get("lo").expect("lo exists in every namespace");
        assert_eq!(lo.ifindex, 1);
        assert!(lo.ethernet);
        assert_eq!(lo.mac, "00:00:00:00:00:00");
        assert!(list().unwrap().iter().any(|i| i.name == "lo"));
    }

    #[test]
    fn unknown_neighbours_have_no_mac() {
        // TEST-NET-1 is never a neighbour here.
        assert_eq!(neighbour_mac("192.0.2.123".parse().unwrap()).unwrap(), None);
    }

    #[test]
    fn hostile_names_are_rejected() {
        for bad in ["", "../etc", "a/b", "0123456789abcdef", "..", "eth0:1"] {
            assert_eq!(
                get(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        assert_eq!(
            get("nosuchif0").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}

/// The gateways of this namespace's default routes (IPv4 and IPv6), from /proc/net/route and
/// /proc/net/ipv6_route.
pub fn default_gateways() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let v4 = std::fs::read_to_string("/proc/net/route")?;
    out.extend(gateways_v4(&v4));
    // No IPv6 at all is not an error.
    if let Ok(v6) = std::fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(gateways_v6(&v6));
    }
    out.dedup();
    Ok(out)
}

/// Default routes' gateways in /proc/net/route's text (hex, host byte order).
fn gateways_v4(text: &str) -> Vec<IpAddr> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, gw, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
            if *dest != "00000000" || *mask != "00000000" {
                return None;
            }
            let g = u32::from_str_radix(gw, 16).ok().filter(|g| *g != 0)?;
            Some(IpAddr::V4(std::net::Ipv4Addr::from(g.to_le_bytes())))
        })
        .collect()
}

/// Default routes' next hops in /proc/net/ipv6_route's text.
fn gateways_v6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, len, hop) = (f.first()?, f.get(1)?, f.get(4)?);
            if dest.chars().any(|c| c != '0') || *len != "00" {
                return None;
            }
            let h = u128::from_str_radix(hop, 16).ok().filter(|h| *h != 0)?;
            Some(IpAddr::V6(std::net::Ipv6Addr::from(h)))
        })
        .collect()
}

#[cfg(test)]
mod gateway_tests {
    use super::*;

    #[test]
    fn default_routes_give_their_gateways() {
        let v4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            gateways_v4(v4),
            vec!["192.168.0.1".parse::<IpAddr>().unwrap()]
        );
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                  fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(gateways_v6(v6), vec!["fe80::1".parse::<IpAddr>().unwrap()]);
    }
}
