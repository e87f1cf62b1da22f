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
    // The packets leave from `from` (an address of this namespace), whatever the route's
    // preferred source.
    sock.bind(&SocketAddr::new(from, 0).into())
        .expect("bind the source address");
    for i in 0..count {
        // For IPv6 raw TCP sockets the kernel does not fill the checksum; for IPv4 we give it.
        let tcp = syn_segment(from, to, i);
        let dest: SocketAddr = SocketAddr::new(to.ip(), 0);
        sock.send_to(&tcp, &dest.into()).expect("send SYN");
    }
}

/// The TCP header of SYN number `i` from `from` to `to` (source port 40000 + i), with its
/// checksum.
fn syn_segment(from: IpAddr, to: SocketAddr, i: u16) -> [u8; 20] {
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
    tcp
}

/// An Ethernet frame carrying one TCP SYN from `from` to `to` (IPv4 or IPv6), for
/// [`frame_burst`]: the same frame sent again and again is a SYN flood from one source.
pub fn syn_frame(macs: ([u8; 6], [u8; 6]), from: IpAddr, to: SocketAddr) -> Vec<u8> {
    let tcp = syn_segment(from, to, 0);
    match (from, to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut f = ipv4_frame(macs, s, d, 6, tcp.len());
            f.extend_from_slice(&tcp);
            f
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let (src_mac, dst_mac) = macs;
            let mut f = Vec::with_capacity(74);
            f.extend_from_slice(&dst_mac);
            f.extend_from_slice(&src_mac);
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            f.extend_from_slice(&tcp);
            f
        }
        _ => panic!("mixed address families"),
    }
}

/// An Ethernet header and an IPv4 header (protocol `proto`, `payload` bytes to follow).
fn ipv4_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload: usize,
) -> Vec<u8> {
    let (src_mac, dst_mac) = macs;
    let mut f = Vec::with_capacity(34 + payload);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = inet_checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

fn tcp_checksum(src: IpAddr, dst: IpAddr, seg: &[u8]) -> u16 {
    let len = seg.len() as u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => inet_checksum(&[
            &s.octets(),
            &d.octets(),
            &[0, 6],
            &(len as u16).to_be_bytes(),
            seg,
        ]),
        (IpAddr::V6(s), IpAddr::V6(d)) => inet_checksum(&[
            &s.octets(),
            &d.octets(),
            &len.to_be_bytes(),
            &[0, 0, 0, 6],
            seg,
        ]),
        _ => panic!("mixed address families"),
    }
}

/// The Internet checksum (RFC 1071) of `parts` one after the other (each of even length but
/// the last).
fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for b in parts {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying one IPv4 UDP datagram of `payload` zero bytes to `dst:port`
/// (UDP checksum 0, "none", which IPv4 allows): what [`frame_flood`] sends. With 18 bytes of
/// payload it is the smallest Ethernet frame, 60 bytes (64 on a wire, with the FCS).
pub fn udp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload: usize,
) -> Vec<u8> {
    let mut f = ipv4_frame(macs, src, dst, 17, 8 + payload);
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(f.len() + payload, 0);
    f
}

/// Frames handed to the kernel per `sendmmsg` call by [`frame_flood`].
const FLOOD_BATCH: usize = 64;

/// What [`frame_flood`] did.
#[derive(Debug, Clone, Copy)]
pub struct Flooded {
    /// Frames the kernel accepted.
    pub sent: u64,
    /// From the first frame to the last.
    pub wall: Duration,
    /// CPU time of the sending threads, summed: on veth the receiving side runs in the
    /// sender's softirq, so this includes it (except what the kernel defers to ksoftirqd).
    pub cpu: Duration,
}

/// Sends `frame` (a whole Ethernet frame, e.g. [`udp_frame`]) out of `ifname` in `ns` as fast
/// as `threads` threads can, each pinned to its own CPU with its own AF_PACKET socket (the
/// qdisc bypassed, batches of [`FLOOD_BATCH`] frames per `sendmmsg`), until `duration` has
/// passed.
pub fn frame_flood(
    ns: &crate::net::Netns,
    ifname: &str,
    frame: &[u8],
    threads: usize,
    duration: Duration,
) -> Flooded {
    let start = std::time::Instant::now();
    let until = start + duration;
    let senders: Vec<_> = (0..threads)
        .map(|cpu| {
            let (ifname, frame) = (ifname.to_string(), frame.to_vec());
            ns.spawn(move || {
                crate::bench::pin_to_cpu(cpu);
                let t0 = thread_cpu();
                let sent = PacketSocket::open(&ifname)
                    .and_then(|s| s.send(&frame, FLOOD_BATCH, u64::MAX, Some(until)))
                    .unwrap_or_else(|e| panic!("flooding {ifname}: {e}"));
                (sent, thread_cpu().saturating_sub(t0))
            })
        })
        .collect();
    let mut out = Flooded {
        sent: 0,
        wall: Duration::ZERO,
        cpu: Duration::ZERO,
    };
    for t in senders {
        let (sent, cpu) = t.join().expect("flood thread");
        out.sent += sent;
        out.cpu += cpu;
    }
    out.wall = start.elapsed();
    out
}

/// Sends `count` copies of `frame` out of `ifname` (of the calling thread's namespace) from an
/// AF_PACKET socket, in as few `sendmmsg` calls as the kernel takes them: back to back, with
/// no return to user space between two frames.
pub fn frame_burst(ifname: &str, frame: &[u8], count: usize) -> std::io::Result<u64> {
    PacketSocket::open(ifname)?.send(frame, count, count as u64, None)
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// An AF_PACKET socket that sends whole frames out of one interface.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    to: libc::sockaddr_ll,
}

impl PacketSocket {
    fn open(ifname: &str) -> std::io::Result<PacketSocket> {
        use std::os::fd::FromRawFd as _;
        let ifindex = nix::net::if_::if_nametoindex(ifname)?;
        // Protocol 0: the socket sends only, nothing received is queued to it.
        // SAFETY: a plain system call; its result is checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor just created, owned by nothing else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // Straight to the driver, as a packet generator does (veth has no qdisc anyway).
        let one = 1i32.to_ne_bytes();
        // SAFETY: the option's value is `one`, an int that outlives the call, with its size.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                one.as_ptr().cast(),
                one.len() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let to = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_IP as u16).to_be(),
            sll_ifindex: ifindex as i32,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        Ok(PacketSocket { fd, to })
    }

    /// Sends `frame` in `sendmmsg` batches of up to `batch`, until `max` were sent or `until`
    /// has passed; returns the frames the kernel accepted.
    fn send(
        &self,
        frame: &[u8],
        batch: usize,
        max: u64,
        until: Option<std::time::Instant>,
    ) -> std::io::Result<u64> {
        use std::os::fd::AsRawFd as _;
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
        let iov: *mut libc::iovec = &mut iov;
        let mut headers: Vec<libc::mmsghdr> = (0..batch)
            .map(|_| {
                // SAFETY: all zeroes is a valid msghdr (null pointers, zero lengths).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = &self.to as *const libc::sockaddr_ll as *mut libc::c_void;
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let mut sent = 0u64;
        while sent < max && until.is_none_or(|u| std::time::Instant::now() < u) {
            let n = (max - sent).min(batch as u64) as u32;
            // SAFETY: `headers` holds `batch` >= n initialised headers; the address, the
            // iovec and the frame they point to outlive the call, which only reads them (and
            // writes each header's msg_len).
            let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), headers.as_mut_ptr(), n, 0) };
            if n > 0 {
                sent += n as u64;
                continue;
            }
            let e = std::io::Error::last_os_error();
            // A full device queue: the frames were not taken, try again.
            if e.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(e);
            }
        }
        Ok(sent)
    }
}

/// An unspecified address of the family of `a`.
pub fn any_of(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}
