//! Network interfaces of the current network namespace, read from sysfs.

use std::{fs, io, path::Path};

const SYS_NET: &str = "/sys/class/net";
/// ARPHRD_* values of devices whose frames start with an Ethernet header.
const ARPHRD_ETHER: u32 = 1;
const ARPHRD_LOOPBACK: u32 = 772;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    /// Frames carry an Ethernet header (veth, tap, bridge, NICs, lo); false for raw-IP
    /// devices (tun, wireguard), whose packets start at the IP header.
    pub ethernet: bool,
}

/// All interfaces visible in this network namespace, sorted by ifindex.
pub fn list() -> io::Result<Vec<Interface>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(SYS_NET)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // A device may vanish between read_dir and the reads below; skip it then.
        if let Ok(i) = get(&name) {
            out.push(i);
        }
    }
    out.sort_by_key(|i| i.ifindex);
    Ok(out)
}

/// One interface by name; `NotFound` if it does not exist.
pub fn get(name: &str) -> io::Result<Interface> {
    validate_name(name)?;
    let dir = Path::new(SYS_NET).join(name);
    let ifindex = read_u32(&dir.join("ifindex"))?;
    let kind = read_u32(&dir.join("type"))?;
    Ok(Interface { name: name.to_string(), ifindex, ethernet: kind == ARPHRD_ETHER || kind == ARPHRD_LOOPBACK })
}

/// The interface's hardware address, colon separated (`get_mac` of the 2014 bandwidth agent).
pub fn mac(name: &str) -> io::Result<String> {
    validate_name(name)?;
    Ok(fs::read_to_string(Path::new(SYS_NET).join(name).join("address"))?.trim().to_string())
}

/// Interface name for an ifindex in this namespace, if it still exists.
pub fn name_of(ifindex: u32) -> Option<String> {
    nix::net::if_::if_indextoname(ifindex).ok().map(|c| c.to_string_lossy().into_owned())
}

/// Kernel statistics of one interface (`/sys/class/net/<name>/statistics`).
pub fn kernel_stats(name: &str) -> io::Result<KernelStats> {
    validate_name(name)?;
    let dir = Path::new(SYS_NET).join(name).join("statistics");
    let get = |f: &str| read_u64(&dir.join(f));
    Ok(KernelStats {
        rx_bytes: get("rx_bytes")?,
        rx_packets: get("rx_packets")?,
        tx_bytes: get("tx_bytes")?,
        tx_packets: get("tx_packets")?,
    })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// Interface names are at most 15 bytes and never contain '/' or whitespace; rejecting
/// others keeps a configured name from escaping the sysfs directory.
fn validate_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', ' ', '\t', '\n', '\0', ':']);
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid interface name {name:?}")))
    }
}

fn read_u32(p: &Path) -> io::Result<u32> {
    parse(p)
}

fn read_u64(p: &Path) -> io::Result<u64> {
    parse(p)
}

fn parse<T: std::str::FromStr>(p: &Path) -> io::Result<T> {
    fs::read_to_string(p)?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("unexpected content in {}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_and_ethernet_framed() {
        let lo = get("lo").expect("lo exists in every namespace");
        assert_eq!(lo.ifindex, 1);
        assert!(lo.ethernet);
        assert!(list().unwrap().iter().any(|i| i.name == "lo"));
        assert_eq!(mac("lo").unwrap(), "00:00:00:00:00:00");
    }

    #[test]
    fn hostile_names_are_rejected() {
        for bad in ["", "../etc", "a/b", "0123456789abcdef", "..", "eth0:1"] {
            assert_eq!(get(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert_eq!(get("nosuchif0").unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
