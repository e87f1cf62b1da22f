//! Addresses in the kernel programs' form: 16 bytes, IPv4 mapped into IPv6 (see
//! `vespa_common::Addr`).

use std::net::{IpAddr, Ipv6Addr};

use vespa_common::Addr;

/// Converts the kernel's 16-byte address (IPv4-mapped for IPv4) to an `IpAddr`.
pub(super) fn ip_of(a: &Addr) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(a.bytes)).to_canonical()
}

/// The kernel's form of an address, as map keys hold it.
pub(super) fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => Addr::from_v4(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Addr::from_v4(v4.octets()),
            None => Addr { bytes: v6.octets() },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_kernel_form() {
        for s in ["10.1.2.3", "::1", "2001:db8::7", "::ffff:10.0.0.1"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(ip_of(&addr_of(ip)), ip.to_canonical());
        }
    }
}
