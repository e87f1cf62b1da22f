//! Property tests: every message survives the transport; no input from the network panics.

mod common;

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::Decoder;
use vespa_proto::frame::FrameCodec;
use vespa_proto::seal::{Direction, Opener};
use vespa_proto::{message, Alert, AlertBody, Config, Message, NodeKind, ProtoError};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,24}", "[a-zA-Z0-9_@.-]{0,12}"]
}

fn node_kind() -> impl Strategy<Value = NodeKind> {
    prop_oneof![
        Just(NodeKind::Agent),
        Just(NodeKind::HoVm),
        Just(NodeKind::HoHy),
        Just(NodeKind::HoPh),
        Just(NodeKind::Vo)
    ]
}

fn alert_body() -> impl Strategy<Value = AlertBody> {
    prop_oneof![
        (any::<IpAddr>(), any::<u64>(), any::<u64>()).prop_map(|(addr, established, threshold)| {
            AlertBody::ConnThreshold {
                addr,
                established,
                threshold,
            }
        }),
        (any::<IpAddr>(), any::<u64>(), any::<u64>()).prop_map(
            |(addr, syns_in_second, threshold)| AlertBody::SynThreshold {
                addr,
                syns_in_second,
                threshold
            }
        ),
        (
            text(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(text())
        )
            .prop_map(|(iface, rx_bytes, tx_bytes, vm)| {
                AlertBody::Bandwidth {
                    iface,
                    rx_bytes,
                    tx_bytes,
                    vm,
                }
            }),
        (
            prop::collection::vec((any::<IpAddr>(), any::<u64>()), 0..8),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(per_remote, rest_remotes, rest_established)| {
                AlertBody::Connections {
                    per_remote,
                    rest_remotes,
                    rest_established,
                }
            }),
        (text(), text(), any::<u64>(), any::<u64>()).prop_map(|(at, kind, size, limit)| {
            AlertBody::Oversized {
                at,
                kind,
                size,
                limit,
            }
        }),
        (text(), text(), text()).prop_map(|(vm, file, signature)| AlertBody::Infected {
            vm,
            file,
            signature
        }),
        (text(), text(), text()).prop_map(|(actuator, action, error)| AlertBody::ActuatorFailed {
            actuator,
            action,
            error
        }),
        text().prop_map(AlertBody::Text),
        (text(), proptest::option::of(text()), text())
            .prop_map(|(kind, at, text)| AlertBody::Policy { kind, at, text }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (text(), node_kind(), any::<Option<SocketAddr>>()).prop_map(|(name, kind, listen_addr)| {
            Message::Register {
                name,
                kind,
                listen_addr,
            }
        }),
        (
            text(),
            any::<u64>(),
            prop::collection::vec(text(), 0..5),
            any::<u64>(),
            alert_body()
        )
            .prop_map(
                |(origin, seq, path, timestamp_ns, body)| Message::Alert(Alert {
                    origin,
                    seq,
                    path,
                    timestamp_ns,
                    body
                })
            ),
        (text(), any::<u64>()).prop_map(|(origin, seq)| Message::Ack { origin, seq }),
        (any::<u64>(), text(), prop::collection::vec(text(), 0..5))
            .prop_map(|(id, verb, args)| Message::Call { id, verb, args }),
        (any::<u64>(), prop::result::maybe_ok(text(), text()))
            .prop_map(|(id, result)| Message::Reply { id, result }),
        Just(Message::Heartbeat),
        Just(Message::ListSlaves),
        text().prop_map(|name| Message::FindNode { name }),
        Just(Message::Destroy),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    // Failures print their minimal input; regression files do not apply to tests/ binaries.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_message_encodes_and_decodes_back(msg in message()) {
        let bytes = message::encode(&msg).expect("encode");
        prop_assert_eq!(message::decode::<Message>(&bytes).expect("decode"), msg);
    }

    #[test]
    fn random_bytes_never_panic_the_message_decoder(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        // Short inputs can be valid messages (e.g. [5] is Heartbeat); whatever decodes must be
        // a well-formed message that survives its own round trip.
        if let Ok(msg) = message::decode::<Message>(&bytes) {
            let again = message::encode(&msg).expect("re-encode");
            prop_assert_eq!(message::decode::<Message>(&again).expect("re-decode"), msg);
        }
    }

    #[test]
    fn random_bytes_never_open_as_frames(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut codec = FrameCodec::new(1024);
        let mut opener = Opener::new(&[0x42; 32], Direction::ClientToServer);
        let mut src = BytesMut::from(&bytes[..]);
        loop {
            match codec.decode_eof(&mut src) {
                Ok(Some(mut frame)) => {
                    let opened = opener.open(&mut frame);
                    prop_assert!(opened.is_err(), "random bytes must never authenticate");
                }
                Ok(None) => break,
                Err(ProtoError::FrameTooLarge { .. } | ProtoError::Truncated(_)) => break,
                Err(e) => prop_assert!(false, "unexpected error kind {:?}", e),
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_the_hello_parser(
        // Half the inputs start like a real hello so the parser gets past the magic/version.
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..400),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(|tail| [&b"VSPA\x00\x01"[..], &tail].concat()),
        ]
    ) {
        use vespa_proto::handshake::{parse_hello, MAGIC, VERSION};
        if let Ok(h) = parse_hello(&bytes) {
            // Whatever is accepted is exactly a well-formed hello.
            prop_assert_eq!(&bytes[..4], &MAGIC[..]);
            prop_assert_eq!(h.version, VERSION);
            prop_assert_eq!(bytes.len(), 4 + 2 + 1 + 32 + 1 + h.name.len());
            prop_assert!(vespa_proto::handshake::validate_name(&h.name).is_ok());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_message_sequence_survives_the_secure_stream(msgs in prop::collection::vec(message(), 0..24)) {
        let received = runtime().block_on(async {
            let (mut client, mut server) = common::duplex_pair().await;
            let sent = msgs.clone();
            let sender = tokio::spawn(async move {
                for m in &sent {
                    client.feed(m).await.expect("feed");
                }
                client.close().await.expect("close");
            });
            let mut got = Vec::new();
            while let Some(m) = server.recv::<Message>().await.expect("recv") {
                got.push(m);
            }
            sender.await.expect("sender task");
            got
        });
        prop_assert_eq!(received, msgs);
    }

    #[test]
    fn random_bytes_never_complete_a_server_handshake(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let res = runtime().block_on(async {
            use tokio::io::AsyncWriteExt;
            let (mut peer, s) = tokio::io::duplex(4096);
            let writer = tokio::spawn(async move {
                let _ = peer.write_all(&bytes).await;
                let _ = peer.shutdown().await;
                peer
            });
            let cfg = Config { handshake_timeout: std::time::Duration::from_millis(200), ..Config::default() };
            let res = vespa_proto::server_handshake(s, &common::psk(), common::SERVER, &cfg).await;
            drop(writer.await);
            res.map(|_| ())
        });
        prop_assert!(res.is_err(), "random bytes must not authenticate");
    }
}
