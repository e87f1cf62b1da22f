//! Traffic generators. Each runs inside a namespace through [`crate::net::Netns::run`] or
//! `spawn`, and talks only to the addresses of the test's own namespaces.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

/// Receives until `count` datagrams arrived (or 10 s passed); returns how many arrived.
pub fn udp_sink(bind: SocketAddr, count: usize, ready: mpsc::Sender<()>) -> usize {
    let sock = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .expect("UDP socket");
    // Large enough for a whole test burst: a datagram dropped at the socket would still be
    // counted by the interface, but the test wants every one delivered.
    sock.set_recv_buffer_size(16 << 20).expect("SO_RCVBUF");
    sock.bind(&bind.into()).expect("bind UDP sink");
    let sock: UdpSocket = sock.into();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    ready.send(()).expect("signal ready");
    let mut buf = [0u8; 65536];
    let mut got = 0;
    while got < count {
        match sock.recv(&mut buf) {
            Ok(_) => got += 1,
            Err(_) => break,
        }
    }
    got
}

/// Sends `count` datagrams with payload sizes cycling through `sizes`.
pub fn udp_send(to: SocketAddr, count: usize, sizes: &[usize]) {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let sock = UdpSocket::bind(bind).expect("bind UDP sender");
    // Resolve the neighbour first: datagrams queued behind an unresolved ARP/ND entry are
    // dropped beyond a few, which would make the burst's delivery depend on timing.
    sock.connect(to).expect("connect");
    resolve_neighbour(&sock);
    let buf = vec![0xa5u8; sizes.iter().copied().max().unwrap_or(64)];
    for i in 0..count {
        sock.send(&buf[..sizes[i % sizes.len()]]).expect("send");
    }
}

/// Sends one empty datagram and waits until the neighbour entry for the peer is reachable,
/// by retrying a zero-length send until the kernel no longer queues (bounded).
fn resolve_neighbour(sock: &UdpSocket) {
    let peer = sock.peer_addr().expect("connected");
    let probe = TcpStream::connect_timeout(&SocketAddr::new(peer.ip(), 9), Duration::from_secs(5));
    // A refused connection (RST) proves the neighbour answered; success would too.
    let _ = probe;
}

/// Accepts connections and reads each to EOF, returning the total bytes read once
/// `connections` have been served.
pub fn tcp_drain_server(listener: TcpListener, connections: usize) -> u64 {
    let mut total = 0;
    for _ in 0..connections {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
    }
    total
}

/// Writes `bytes` on one connection and closes it.
pub fn tcp_send(to: SocketAddr, bytes: usize) {
    let mut s = TcpStream::connect(to).expect("connect");
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
}

/// Accepts `n` connections and hands them back (kept open by the caller).
pub fn tcp_accept_n(listener: &TcpListener, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| listener.accept().expect("accept").0)
        .collect()
}

/// Opens `n` connections to `to` and keeps them open.
pub fn tcp_connect_n(to: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(to).expect("connect"))
        .collect()
}

/// Closes `streams` now, each with a FIN from this end. `shutdown` acts on the socket where
/// dropping only closes a descriptor: a process another test forks at that moment holds the
/// descriptors until it execs, and the connection would stay open until then.
pub fn tcp_close_all(streams: Vec<TcpStream>) {
    for s in &streams {
        // ENOTCONN: the peer reset it already; closed all the same.
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
}

/// A TCP listener with room for `backlog` connections the kernel completes before anyone
/// accepts them (they count as ESTABLISHED all the same).
pub fn tcp_listen(addr: SocketAddr, backlog: i32) -> TcpListener {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&addr.into()).expect("bind");
    s.listen(backlog).expect("listen");
    s.into()
}

/// Opens up to `n` connections to `to` and keeps them open, stopping at the first one that
/// does not connect within `timeout` (e.g. once a block drops the rest).
pub fn tcp_connect_up_to(to: SocketAddr, n: usize, timeout: Duration) -> Vec<TcpStream> {
    (0..n)
        .map_while(|_| TcpStream::connect_timeout(&to, timeout).ok())
        .collect()
}

/// Opens `n` connections to `to` from the local address `src` (any 127.0.0.0/8 address on
/// loopback: a fresh remote for the connection tracker) and keeps them open. `after(i)` runs
/// right after connect() number `i` (1-based) returns.
pub fn tcp_connect_from(
    src: IpAddr,
    to: SocketAddr,
    n: usize,
    mut after: impl FnMut(usize),
) -> Vec<TcpStream> {
    (1..=n)
        .map(|i| {
            let s = Socket::new(Domain::for_address(to), Type::STREAM, None).expect("socket");
            s.bind(&SocketAddr::new(src, 0).into())
                .expect("bind the source address");
            s.connect(&to.into()).expect("connect");
            after(i);
            s.into()
        })
        .collect()
}

/// Sends `count` bare TCP SYN packets (no handshake follows) from a raw socket: a SYN flood
/// in miniature. Source ports vary so each looks like a new connection attempt.
pub fn syn_burst(from: IpAddr, to: SocketAddr, count: u16) {
    let (domain, proto) = match to {
        SocketAddr::V4(_) => (Domain::IPV4, Protocol::TCP),
        SocketAddr::V6(_) => (Domain::IPV6, Protocol::TCP),
    };
    let sock = Socket::new(domain, Type::RAW, Some(proto)).expect("raw socket (needs root)");
    for i in 0..count {
        let sport = 40000u16.wrapping_add(i);
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&to.port().to_be_bytes());
        tcp[4..8].copy_from_slice(&(0x1000_0000u32 + i as u32).to_be_bytes());
        tcp[12] = 5 << 4; // data offset: 5 words
        tcp[13] = 0x02; // SYN
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        let sum = tcp_checksum(from, to.ip(), &tcp);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        // For IPv6 raw TCP sockets the kernel does not fill the checksum; for IPv4 we give it.
        let dest: SocketAddr = SocketAddr::new(to.ip(), 0);
        sock.send_to(&tcp, &dest.into()).expect("send SYN");
    }
}

fn tcp_checksum(src: IpAddr, dst: IpAddr, seg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            add(&s.octets());
            add(&d.octets());
            add(&[0, 6]);
            add(&(seg.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            add(&s.octets());
            add(&d.octets());
            add(&(seg.len() as u32).to_be_bytes());
            add(&[0, 0, 0, 6]);
        }
        _ => panic!("mixed address families"),
    }
    add(seg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An unspecified address of the family of `a`.
pub fn any_of(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}
