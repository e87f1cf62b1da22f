//! The typed messages of the node tree.
//!
//! The 2014 nodes exchanged `method|arg#arg` strings, dispatched them to whatever method of the
//! node had that name, and parsed replies with `eval()`, so any peer could run code on any node.
//! Here every verb is a variant of a closed enum: a node can only be asked to do what the enum
//! names, and decoding is plain data (postcard), which cannot execute anything.
//!
//! **Wire stability:** postcard encodes enum variants by index, so variants and fields are only
//! ever *appended*, never reordered or removed, within one protocol version.

use std::net::{IpAddr, SocketAddr};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ProtoError, Result};

/// What a node is in the tree (the 2014 config's `[VO]`, `[HO_VM]`, `[HO_HY]`, `[HO_PH]`,
/// `[Agent_*]` sections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeKind {
    /// A sensor/actuator agent (leaf).
    Agent,
    /// Horizontal orchestrator of the virtual-machine layer.
    HoVm,
    /// Horizontal orchestrator of the hypervisor layer.
    HoHy,
    /// Horizontal orchestrator of the physical layer.
    HoPh,
    /// The vertical orchestrator (root).
    Vo,
}

/// Every message a node sends to its parent or children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// A child announces itself to its master (first message on a connection).
    Register {
        /// The child's node name.
        name: String,
        /// What the child is.
        kind: NodeKind,
        /// Where the child accepts connections of its own children, if it does.
        #[serde(with = "full_socket_addr")]
        listen_addr: Option<SocketAddr>,
    },
    /// An alert climbing the tree toward the VO.
    Alert(Alert),
    /// The receiver took responsibility for alert `seq` from `origin`.
    Ack {
        /// The node that raised the alert.
        origin: String,
        /// Its sequence number at that node.
        seq: u64,
    },
    /// A request to a node (e.g. an actuator command from the VO). The verb is data matched by
    /// the receiver against a fixed table, never used to look up code by name.
    Call {
        /// Correlates the [`Message::Reply`].
        id: u64,
        /// The requested action.
        verb: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// The answer to the [`Message::Call`] with the same id: `Ok` payload (often JSON text) or
    /// an error description.
    Reply {
        /// The call's id.
        id: u64,
        /// Outcome.
        result: std::result::Result<String, String>,
    },
    /// Liveness probe; connections idle for too long are dropped by the caller.
    Heartbeat,
    /// Ask a node for its direct children.
    ListSlaves,
    /// Ask a node where `name` is in its subtree.
    FindNode {
        /// The node looked for.
        name: String,
    },
    /// Tear the subtree down (the 2014 `destroy|`); only ever honoured from the parent.
    Destroy,
}

/// An alert: raised at `origin`, `path` records every node it went through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The node that raised it.
    pub origin: String,
    /// Per-origin sequence number, for acks and de-duplication.
    pub seq: u64,
    /// Names of the nodes it climbed through, origin first.
    pub path: Vec<String>,
    /// When it was raised (nanoseconds since the Unix epoch).
    pub timestamp_ns: u64,
    /// What happened.
    pub body: AlertBody,
}

/// What an alert reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AlertBody {
    /// A remote address holds more established TCP connections than allowed.
    ConnThreshold {
        /// The remote address.
        addr: IpAddr,
        /// Established connections from it.
        established: u64,
        /// The configured limit.
        threshold: u64,
    },
    /// A remote address sent more SYNs in one second than allowed.
    SynThreshold {
        /// The remote address.
        addr: IpAddr,
        /// SYNs seen in the last second.
        syns_in_second: u64,
        /// The configured limit.
        threshold: u64,
    },
    /// Byte counters of one interface.
    Bandwidth {
        /// Interface name.
        iface: String,
        /// Total received bytes.
        rx_bytes: u64,
        /// Total transmitted bytes.
        tx_bytes: u64,
        /// The VM the interface belongs to (a tap device), when the agent knows it.
        vm: Option<String>,
    },
    /// Established connections per remote address: the busiest remotes by name, the rest
    /// as totals, so the sample stays small however many addresses the watched traffic uses.
    Connections {
        /// (remote address, established connections), busiest first; only remotes that hold
        /// at least one connection.
        per_remote: Vec<(IpAddr, u64)>,
        /// Remotes with established connections that `per_remote` leaves out.
        rest_remotes: u64,
        /// Established connections of those remotes, together.
        rest_established: u64,
    },
    /// The antivirus found an infected file in a VM.
    Infected {
        /// The VM.
        vm: String,
        /// The file.
        file: String,
        /// The matched signature.
        signature: String,
    },
    /// An actuator (SDN controller, libvirt, ...) failed to carry out an action.
    ActuatorFailed {
        /// Which actuator.
        actuator: String,
        /// What it was asked to do.
        action: String,
        /// Why it failed.
        error: String,
    },
    /// Free text (for operators; never parsed).
    Text(String),
    /// A sensor's own health totals (since it started): ring-buffer events lost, kernel map
    /// updates that failed, kernel maps at capacity. Any increase means the sensors may not
    /// see everything: the VO's policy raises a blind-spot alert.
    SensorHealth {
        /// Events the kernel could not hand to the agent.
        events_lost: u64,
        /// Kernel map updates that failed (full tables).
        map_update_failures: u64,
        /// Kernel maps currently at capacity.
        maps_full: u64,
    },
    /// An alert whose body was too large to travel up the tree: a node on its path (`at`)
    /// replaced the body with this note. The alert keeps its origin, sequence number and
    /// path, so it is acknowledged and de-duplicated like any other and its link moves on.
    Oversized {
        /// The node that replaced the body (the origin itself, or the hop whose frame to its
        /// master it would not fit).
        at: String,
        /// The kind of the body that was dropped ([`AlertBody::kind`]).
        kind: String,
        /// The size the alert would have had in a sealed frame, in bytes.
        size: u64,
        /// The frame limit it had to fit, in bytes (less the room kept for the path).
        limit: u64,
    },
    /// The kernel blocked a source by itself (the firewall's reflex) the moment it crossed a
    /// threshold; it drops from the next packet on. The VO's policy adopts the block as its
    /// own action (listed, released, escalated).
    ReflexBlock {
        /// The blocked source: an address, or the prefix it was aggregated to (`/64`).
        target: String,
        /// What crossed: `syn` (SYNs per second) or `conn` (established connections).
        cause: String,
        /// The value that crossed.
        value: u64,
        /// The reflex's threshold.
        threshold: u64,
        /// The block's time-to-live in seconds (0: until released).
        ttl_s: u64,
        /// When the kernel inserted it (CLOCK_MONOTONIC, ns), as the kernel stamped it.
        kernel_ns: u64,
    },
    /// A child of the raising node (its master) registered, registered again, or was lost:
    /// what 2014 reported as `archi=` and `down#` alerts. Raised by the master and carried to
    /// the VO like any alert, so the VO's log names every node that comes and goes.
    Node {
        /// The child.
        node: String,
        /// What happened.
        event: NodeEvent,
        /// Where it registered from (its address), or why it was lost.
        detail: String,
    },
    /// An alert a policy raised of its own (an action that did not take, a blind spot, a cap
    /// reached, ...), at the VO or at an HO that runs fast-path rules. Typed, so the VO counts
    /// every policy's alerts by kind (`vespa_policy_alerts_total{kind}`) wherever the rule ran,
    /// without reading the text.
    Policy {
        /// The kind, as the metric's label names it: `did_not_take`, `ladder_exhausted`,
        /// `blind_spot`, `notice`, `protected`, `cap_reached`. The VO counts only these.
        kind: String,
        /// The HO whose fast-path rules raised it; `None` for the VO's own policy.
        at: Option<String>,
        /// What happened, for operators.
        text: String,
    },
}

/// What happened to a node ([`AlertBody::Node`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeEvent {
    /// It registered for the first time since its master started.
    Registered,
    /// It registered again (it restarted, or its link came back).
    Reregistered,
    /// Its connection ended: it was silent for three heartbeats, closed its connection, or
    /// broke the protocol.
    Lost,
}

impl NodeEvent {
    /// `registered`, `reregistered` or `lost`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeEvent::Registered => "registered",
            NodeEvent::Reregistered => "reregistered",
            NodeEvent::Lost => "lost",
        }
    }
}

impl AlertBody {
    /// The short name of the body's kind (`conn_threshold`, `bandwidth`, ...), as metrics
    /// labels and the VO's JSON name it. Fixed names: dashboards and alerting rules use them.
    pub fn kind(&self) -> &'static str {
        match self {
            AlertBody::ConnThreshold { .. } => "conn_threshold",
            AlertBody::SynThreshold { .. } => "syn_threshold",
            AlertBody::Bandwidth { .. } => "bandwidth",
            AlertBody::Connections { .. } => "connections",
            AlertBody::Infected { .. } => "infected",
            AlertBody::ActuatorFailed { .. } => "actuator_failed",
            AlertBody::Text(_) => "text",
            AlertBody::SensorHealth { .. } => "sensor_health",
            AlertBody::Oversized { .. } => "oversized",
            AlertBody::ReflexBlock { .. } => "reflex_block",
            AlertBody::Node { .. } => "node",
            AlertBody::Policy { .. } => "policy",
        }
    }
}

/// Longest alert path a node accepts (a deeper one means a routing loop).
pub const MAX_PATH: usize = 32;

/// Room an origin keeps in every alert for the names the hops above it add to its path: the
/// longest path of the longest names (each name with its length prefix).
pub const PATH_ROOM: usize = MAX_PATH * (crate::handshake::MAX_NAME_LEN + 2);

impl Alert {
    /// Bytes this alert takes in a sealed frame as `Message::Alert`: record type, variant,
    /// encoding, authentication tag.
    pub fn sealed_len(&self) -> usize {
        // An alert always encodes (plain data, no maps with non-string keys); a failure here
        // would be a bug, and counting it as too large is the safe answer.
        2 + postcard::experimental::serialized_size(self).unwrap_or(usize::MAX - 64)
            + crate::seal::TAG_LEN
    }

    /// Makes the alert fit a sealed frame of `max_frame` bytes with `room` bytes to spare:
    /// a body too large is replaced, at node `at`, by [`AlertBody::Oversized`] naming its kind
    /// and size. Returns the size the alert had when it replaced the body.
    ///
    /// The note is small; only a path already near [`MAX_PATH`] names of the longest length
    /// could still leave it too large for a tiny `max_frame`, which nodes refuse at start.
    pub fn fit(&mut self, at: &str, max_frame: usize, room: usize) -> Option<usize> {
        let limit = max_frame.saturating_sub(room);
        let size = self.sealed_len();
        if size <= limit {
            return None;
        }
        self.body = AlertBody::Oversized {
            at: at.to_string(),
            kind: self.body.kind().to_string(),
            size: size as u64,
            limit: limit as u64,
        };
        Some(size)
    }
}

/// Serde for `Option<SocketAddr>` that keeps an IPv6 address's scope id and flow info.
///
/// serde's own `SocketAddrV6` encoding drops the scope id, which would turn a link-local
/// listen address (`[fe80::1%2]:4100`) into one that cannot be dialled; the 2014 code already
/// mangled IPv6 addresses, so this one is kept whole.
mod full_socket_addr {
    use std::net::{IpAddr, SocketAddr, SocketAddrV6};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// (ip, port, IPv6 flow info, IPv6 scope id); the last two are 0 for IPv4.
    type Wire = (IpAddr, u16, u32, u32);

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        let wire: Option<Wire> = addr.map(|a| match a {
            SocketAddr::V4(v4) => (IpAddr::V4(*v4.ip()), v4.port(), 0, 0),
            SocketAddr::V6(v6) => (
                IpAddr::V6(*v6.ip()),
                v6.port(),
                v6.flowinfo(),
                v6.scope_id(),
            ),
        });
        wire.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let wire = Option::<Wire>::deserialize(d)?;
        Ok(wire.map(|(ip, port, flowinfo, scope_id)| match ip {
            IpAddr::V4(ip) => SocketAddr::new(IpAddr::V4(ip), port),
            IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope_id)),
        }))
    }
}

/// Serialises `msg` compactly (postcard).
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(msg).map_err(ProtoError::Encode)
}

/// Appends the encoding of `msg` to `buf` (used by the send path to avoid a copy).
pub(crate) fn encode_into<T: Serialize + ?Sized>(msg: &T, buf: &mut bytes::BytesMut) -> Result<()> {
    postcard::to_extend(msg, ExtendBytes(buf))
        .map(|_| ())
        .map_err(ProtoError::Encode)
}

/// `Extend<u8>` over a borrowed `BytesMut`, so postcard can write into our frame buffer.
struct ExtendBytes<'a>(&'a mut bytes::BytesMut);

impl Extend<u8> for ExtendBytes<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl<'a> Extend<&'a u8> for ExtendBytes<'_> {
    fn extend<I: IntoIterator<Item = &'a u8>>(&mut self, iter: I) {
        self.0.extend(iter.into_iter().copied());
    }
}

/// Decodes one `T` from exactly `bytes`.
///
/// Safe on untrusted input: postcard reads from the slice and checks every length against the
/// bytes that remain, so a lying length fails instead of allocating; trailing bytes are an
/// error so every message has exactly one accepted encoding.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(ProtoError::Decode)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(ProtoError::Decode(postcard::Error::DeserializeBadEncoding))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_encoding_is_compact() {
        let msg = Message::Alert(Alert {
            origin: "agent-1".into(),
            seq: 1000,
            path: vec!["agent-1".into()],
            timestamp_ns: 1_700_000_000_000_000_000,
            body: AlertBody::ConnThreshold {
                addr: "10.0.0.1".parse().expect("ip"),
                established: 150,
                threshold: 100,
            },
        });
        let bytes = encode(&msg).expect("encode");
        assert!(bytes.len() < 48, "alert took {} bytes", bytes.len());
        assert_eq!(decode::<Message>(&bytes).expect("decode"), msg);
    }

    #[test]
    fn every_alert_kind_has_its_own_fixed_name() {
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let s = String::new;
        let bodies = [
            AlertBody::ConnThreshold {
                addr: ip,
                established: 1,
                threshold: 1,
            },
            AlertBody::SynThreshold {
                addr: ip,
                syns_in_second: 1,
                threshold: 1,
            },
            AlertBody::Bandwidth {
                iface: s(),
                rx_bytes: 0,
                tx_bytes: 0,
                vm: None,
            },
            AlertBody::Connections {
                per_remote: vec![],
                rest_remotes: 0,
                rest_established: 0,
            },
            AlertBody::Infected {
                vm: s(),
                file: s(),
                signature: s(),
            },
            AlertBody::ActuatorFailed {
                actuator: s(),
                action: s(),
                error: s(),
            },
            AlertBody::Text(s()),
            AlertBody::SensorHealth {
                events_lost: 0,
                map_update_failures: 0,
                maps_full: 0,
            },
            AlertBody::Oversized {
                at: s(),
                kind: s(),
                size: 0,
                limit: 0,
            },
            AlertBody::Node {
                node: s(),
                event: NodeEvent::Lost,
                detail: s(),
            },
            AlertBody::Policy {
                kind: s(),
                at: None,
                text: s(),
            },
        ];
        let kinds: Vec<&str> = bodies.iter().map(AlertBody::kind).collect();
        assert_eq!(
            kinds,
            [
                "conn_threshold",
                "syn_threshold",
                "bandwidth",
                "connections",
                "infected",
                "actuator_failed",
                "text",
                "sensor_health",
                "oversized",
                "node",
                "policy"
            ]
        );
    }

    fn big_alert(remotes: usize) -> Alert {
        Alert {
            origin: "conns".into(),
            seq: 7,
            path: vec!["conns".into(), "HO_VM".into()],
            timestamp_ns: 1,
            body: AlertBody::Connections {
                per_remote: (0..remotes)
                    .map(|i| (IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16]), 1))
                    .collect(),
                rest_remotes: 0,
                rest_established: 0,
            },
        }
    }

    #[test]
    fn sealed_len_is_what_the_writer_seals() {
        for n in [0, 1, 100, 5000] {
            let a = big_alert(n);
            let encoded = encode(&Message::Alert(a.clone())).expect("encode");
            assert_eq!(
                a.sealed_len(),
                1 + encoded.len() + crate::seal::TAG_LEN,
                "{n} remotes"
            );
        }
    }

    #[test]
    fn an_alert_too_large_keeps_its_identity_and_names_what_was_dropped() {
        let mut small = big_alert(10);
        assert_eq!(small.fit("conns", 4096, 0), None);
        assert!(
            matches!(small.body, AlertBody::Connections { .. }),
            "fits: unchanged"
        );

        let mut a = big_alert(1000);
        let size = a.sealed_len();
        assert!(size > 4096);
        assert_eq!(a.fit("HO_VM", 4096 + 100, 100), Some(size));
        assert_eq!((a.origin.as_str(), a.seq, a.path.len()), ("conns", 7, 2));
        assert_eq!(
            a.body,
            AlertBody::Oversized {
                at: "HO_VM".into(),
                kind: "connections".into(),
                size: size as u64,
                limit: 4096,
            }
        );
        assert!(
            a.sealed_len() < 200,
            "the note is small: {}",
            a.sealed_len()
        );
        assert_eq!(
            a.fit("HO_VM", 4096, 0),
            None,
            "fitting twice changes nothing"
        );
    }

    #[test]
    fn the_path_room_covers_the_longest_path_of_the_longest_names() {
        let name = "n".repeat(crate::handshake::MAX_NAME_LEN);
        let mut a = big_alert(0);
        a.path = vec![name.clone()];
        let base = a.sealed_len();
        a.path = vec![name; MAX_PATH];
        assert!(a.sealed_len() - base <= PATH_ROOM);
    }

    #[test]
    fn ipv6_listen_address_keeps_its_scope() {
        let addr: SocketAddr = "[fe80::1%7]:4100".parse().expect("addr");
        let msg = Message::Register {
            name: "HO_VM".into(),
            kind: NodeKind::HoVm,
            listen_addr: Some(addr),
        };
        let back: Message = decode(&encode(&msg).expect("encode")).expect("decode");
        let Message::Register {
            listen_addr: Some(SocketAddr::V6(v6)),
            ..
        } = back
        else {
            panic!("{back:?}")
        };
        assert_eq!(v6.scope_id(), 7, "scope id must survive");
    }

    /// Variants are appended, never renumbered: a policy alert's body is variant 11, after
    /// `Node`, and its fields keep their order (an older VO refuses it as unknown, a newer
    /// one reads older bodies unchanged).
    #[test]
    fn a_policy_alert_body_has_its_fixed_encoding() {
        let body = AlertBody::Policy {
            kind: "blind_spot".into(),
            at: Some("HO".into()),
            text: "t".into(),
        };
        let bytes = encode(&body).expect("encode");
        let mut want = vec![11u8, 10];
        want.extend_from_slice(b"blind_spot");
        want.extend_from_slice(&[1, 2, b'H', b'O', 1, b't']);
        assert_eq!(bytes, want);
        assert_eq!(decode::<AlertBody>(&bytes).expect("decode"), body);
        let vo_own = AlertBody::Policy {
            kind: "notice".into(),
            at: None,
            text: String::new(),
        };
        assert_eq!(
            decode::<AlertBody>(&encode(&vo_own).expect("encode")).expect("decode"),
            vo_own
        );
    }

    #[test]
    fn trailing_bytes_and_unknown_variants_are_rejected() {
        let mut bytes = encode(&Message::Heartbeat).expect("encode");
        bytes.push(0);
        assert!(matches!(
            decode::<Message>(&bytes),
            Err(ProtoError::Decode(_))
        ));
        assert!(
            matches!(decode::<Message>(&[200]), Err(ProtoError::Decode(_))),
            "unknown variant"
        );
        assert!(
            matches!(decode::<Message>(&[]), Err(ProtoError::Decode(_))),
            "empty input"
        );
    }

    #[test]
    fn lying_length_does_not_allocate_or_panic() {
        // Call { id: 0, verb: <length 2^63 varint> } : the string length exceeds the input.
        let mut bytes = vec![3u8, 0];
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(matches!(
            decode::<Message>(&bytes),
            Err(ProtoError::Decode(_))
        ));
        // Call { id: 0, verb: "", args: <2^32 elements> } with no elements present.
        let bytes = [3u8, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F];
        assert!(matches!(
            decode::<Message>(&bytes),
            Err(ProtoError::Decode(_))
        ));
    }
}
