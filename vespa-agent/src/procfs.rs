//! The 2014 method, kept as the fallback back end: `/proc/net/dev` for interface counters and
//! `/proc/net/tcp{,6}` for connections, read through `/proc/thread-self` so that the calling
//! thread's network namespace is the one read. Parsers are pure functions over the file text so they
//! are tested on fixed inputs; the readers only add the file access.

use std::{
    collections::BTreeMap,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// One line of `/proc/net/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevLine {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// Parses `/proc/net/dev`; malformed lines are reported, not skipped silently.
pub fn parse_net_dev(text: &str) -> Result<Vec<DevLine>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            return Err(format!(
                "/proc/net/dev line {}: no ':' after the interface name",
                n + 1
            ));
        };
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("/proc/net/dev line {}: {e}", n + 1))?;
        if fields.len() < 16 {
            return Err(format!(
                "/proc/net/dev line {}: {} fields, expected 16",
                n + 1,
                fields.len()
            ));
        }
        out.push(DevLine {
            name: name.trim().to_string(),
            rx_bytes: fields[0],
            rx_packets: fields[1],
            tx_bytes: fields[8],
            tx_packets: fields[9],
        });
    }
    Ok(out)
}

pub fn read_net_dev() -> io::Result<Vec<DevLine>> {
    let text = fs::read_to_string("/proc/thread-self/net/dev")?;
    parse_net_dev(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// TCP states as numbered in `/proc/net/tcp` (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_SYN_RECV: u8 = 0x03;

/// Per remote address: sockets in ESTABLISHED and in SYN_RECV (half-open) state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounts {
    pub established: u64,
    pub syn_recv: u64,
}

/// Adds the sockets listed in one `/proc/net/tcp` or `/proc/net/tcp6` text to `acc`.
pub fn parse_net_tcp(text: &str, acc: &mut BTreeMap<IpAddr, TcpCounts>) -> Result<(), String> {
    for (n, line) in text.lines().enumerate().skip(1) {
        let mut f = line.split_whitespace();
        let (_sl, _local, remote, state) = (f.next(), f.next(), f.next(), f.next());
        let (Some(remote), Some(state)) = (remote, state) else {
            return Err(format!("/proc/net/tcp line {}: too few fields", n + 1));
        };
        let state = u8::from_str_radix(state, 16)
            .map_err(|e| format!("/proc/net/tcp line {}: state: {e}", n + 1))?;
        if state != TCP_ESTABLISHED && state != TCP_SYN_RECV {
            continue;
        }
        let addr = remote
            .split_once(':')
            .and_then(|(a, _port)| parse_hex_addr(a))
            .ok_or_else(|| format!("/proc/net/tcp line {}: bad address {remote:?}", n + 1))?;
        let e = acc.entry(addr).or_default();
        if state == TCP_ESTABLISHED {
            e.established += 1;
        } else {
            e.syn_recv += 1;
        }
    }
    Ok(())
}

/// Reads both tables of the current network namespace.
pub fn read_net_tcp() -> io::Result<BTreeMap<IpAddr, TcpCounts>> {
    let mut acc = BTreeMap::new();
    for path in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        match fs::read_to_string(path) {
            Ok(text) => parse_net_tcp(&text, &mut acc)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            // tcp6 is absent when IPv6 is disabled.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(acc)
}

/// Addresses are the in-memory bytes printed as native-endian 32-bit words.
fn parse_hex_addr(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&hex[i * 8..i * 8 + 8])?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)).to_canonical())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     789    0    0    0     0          0         0   123456     789    0    0    0     0       0          0
  eth0: 9876543210 1234567 1 2 3 4 5 6 42 7 0 0 0 0 0 0
";

    #[test]
    fn net_dev_is_parsed() {
        let lines = parse_net_dev(DEV).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            DevLine {
                name: "eth0".into(),
                rx_bytes: 9876543210,
                rx_packets: 1234567,
                tx_bytes: 42,
                tx_packets: 7
            }
        );
    }

    #[test]
    fn net_dev_garbage_is_an_error_naming_the_line() {
        let err = parse_net_dev("h1\nh2\n eth0: 1 2 x\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(parse_net_dev("h1\nh2\nnocolon\n")
            .unwrap_err()
            .contains("':'"));
    }

    #[test]
    fn net_tcp_counts_established_and_syn_recv_per_remote() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0200007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:1F90 0200007F:D432 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:1F90 0300007F:D433 03 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1
   4: 0100007F:1F90 0300007F:D434 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1
";
        // ::1 and 2001:db8::5 as printed by the kernel on little-endian machines.
        let v6 =
            "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:A000 01
   1: 00000000000000000000000001000000:1F90 B80D0120000000000000000005000000:A001 01
";
        let mut acc = BTreeMap::new();
        parse_net_tcp(v4, &mut acc).unwrap();
        parse_net_tcp(v6, &mut acc).unwrap();
        let get = |s: &str| acc[&s.parse::<IpAddr>().unwrap()];
        assert_eq!(
            get("127.0.0.2"),
            TcpCounts {
                established: 2,
                syn_recv: 0
            }
        );
        assert_eq!(
            get("127.0.0.3"),
            TcpCounts {
                established: 0,
                syn_recv: 1
            }
        );
        assert_eq!(
            get("::1"),
            TcpCounts {
                established: 1,
                syn_recv: 0
            }
        );
        assert_eq!(
            get("2001:db8::5"),
            TcpCounts {
                established: 1,
                syn_recv: 0
            }
        );
        assert!(
            !acc.contains_key(&"0.0.0.0".parse::<IpAddr>().unwrap()),
            "LISTEN and TIME_WAIT are not counted"
        );
    }

    #[test]
    fn net_tcp_garbage_is_an_error() {
        let mut acc = BTreeMap::new();
        assert!(parse_net_tcp("hdr\n 0: 0100007F:1F90 ZZZZ:0 01\n", &mut acc).is_err());
        assert!(parse_net_tcp("hdr\n 0: x\n", &mut acc).is_err());
    }
}
