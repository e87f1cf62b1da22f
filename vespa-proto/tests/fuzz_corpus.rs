//! Seed inputs for the cargo-fuzz targets in fuzz/.
//!
//! `seeds_are_valid` checks that the seeds exercise the success paths (they open and decode);
//! `committed_fuzz_seeds_are_current` checks the committed corpus matches them
//! (`VESPA_WRITE_FUZZ_SEEDS=1` rewrites it).

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};
use vespa_proto::bench::sample_alert;
use vespa_proto::frame::FrameCodec;
use vespa_proto::handshake::record;
use vespa_proto::message::{self, Alert, AlertBody, Message, NodeKind};
use vespa_proto::seal::{Direction, Opener, Sealer};

/// Must match `FUZZ_KEY` in fuzz/fuzz_targets/frame_decoder.rs.
const FUZZ_KEY: [u8; 32] = [0x42; 32];

fn messages() -> Vec<Message> {
    let ip6: IpAddr = "2001:db8::7".parse().expect("ip");
    vec![
        Message::Register {
            name: "agent-1".into(),
            kind: NodeKind::Agent,
            listen_addr: Some("[fe80::1%2]:4100".parse().expect("addr")),
        },
        sample_alert(1),
        Message::Alert(Alert {
            origin: "agent-bw".into(),
            seq: 2,
            path: vec!["agent-bw".into(), "HO_PH".into(), "VO".into()],
            timestamp_ns: 3,
            body: AlertBody::Connections {
                per_remote: vec![(ip6, 120), ([10, 0, 0, 9].into(), 4)],
                rest_remotes: 3,
                rest_established: 5,
            },
        }),
        Message::Alert(Alert {
            origin: "conns".into(),
            seq: 6,
            path: vec!["conns".into(), "HO_VM".into()],
            timestamp_ns: 7,
            body: AlertBody::Oversized {
                at: "conns".into(),
                kind: "connections".into(),
                size: 2 << 20,
                limit: 1 << 20,
            },
        }),
        Message::Alert(Alert {
            origin: "av".into(),
            seq: 4,
            path: vec![],
            timestamp_ns: 5,
            body: AlertBody::Infected {
                vm: "vm1".into(),
                file: "/tmp/x".into(),
                signature: "Eicar".into(),
            },
        }),
        Message::Ack {
            origin: "agent-1".into(),
            seq: 1,
        },
        Message::Call {
            id: 9,
            verb: "cut_link".into(),
            args: vec!["vm1".into(), "br0".into()],
        },
        Message::Reply {
            id: 9,
            result: Ok("{\"ok\":true}".into()),
        },
        Message::Reply {
            id: 10,
            result: Err("no such vm".into()),
        },
        Message::Heartbeat,
        Message::ListSlaves,
        Message::FindNode {
            name: "HO_VM".into(),
        },
        Message::Destroy,
        Message::Alert(Alert {
            origin: "HO_PH".into(),
            seq: 11,
            path: vec!["HO_PH".into(), "VO".into()],
            timestamp_ns: 12,
            body: AlertBody::Policy {
                kind: "did_not_take".into(),
                at: Some("HO_PH".into()),
                text: "block 10.0.0.9 on fl did not take".into(),
            },
        }),
    ]
}

/// A client->server byte stream sealed with FUZZ_KEY from counter 0, ending in a close record.
fn sealed_stream(msgs: &[Message]) -> Vec<u8> {
    let mut sealer = Sealer::new(&FUZZ_KEY, Direction::ClientToServer);
    let mut codec = FrameCodec::new(64 * 1024);
    let mut wire = BytesMut::new();
    let records = msgs.iter().map(Some).chain([None]);
    for msg in records {
        let mut buf = BytesMut::new();
        match msg {
            Some(m) => {
                buf.put_u8(record::DATA);
                buf.extend_from_slice(&message::encode(m).expect("encode"));
            }
            None => buf.put_u8(record::CLOSE),
        }
        sealer.seal(&mut buf).expect("seal");
        codec.encode(&buf[..], &mut wire).expect("frame");
    }
    wire.to_vec()
}

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let msgs = messages();
    let mut out = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        out.push((
            "message_decoder",
            format!("seed-{i:02}"),
            message::encode(m).expect("encode"),
        ));
    }
    out.push((
        "frame_decoder",
        "seed-one".into(),
        sealed_stream(&msgs[1..2]),
    ));
    out.push(("frame_decoder", "seed-all".into(), sealed_stream(&msgs)));
    out.push(("frame_decoder", "seed-close".into(), sealed_stream(&[])));
    out
}

#[test]
fn seeds_are_valid() {
    for (target, name, bytes) in seeds() {
        match target {
            "message_decoder" => {
                message::decode::<Message>(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            _ => {
                let mut codec = FrameCodec::new(64 * 1024);
                let mut opener = Opener::new(&FUZZ_KEY, Direction::ClientToServer);
                let mut src = BytesMut::from(&bytes[..]);
                let mut closed = false;
                while let Some(mut frame) = codec.decode_eof(&mut src).expect("frame") {
                    let plain = opener
                        .open(&mut frame)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    match plain.split_first() {
                        Some((&record::DATA, body)) => {
                            message::decode::<Message>(body)
                                .unwrap_or_else(|e| panic!("{name}: {e}"));
                        }
                        Some((&record::CLOSE, [])) => closed = true,
                        other => panic!("{name}: unexpected record {other:?}"),
                    }
                }
                assert!(closed, "{name}: stream must end with a close record");
            }
        }
    }
}

/// The seeds committed under fuzz/corpus are exactly what `seeds()` produces, so a wire
/// format change cannot leave the fuzzers starting from stale inputs. Run with
/// `VESPA_WRITE_FUZZ_SEEDS=1` to rewrite them after an intended change.
#[test]
fn committed_fuzz_seeds_are_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let write = std::env::var("VESPA_WRITE_FUZZ_SEEDS").is_ok_and(|v| v == "1");
    for (target, name, bytes) in seeds() {
        let path = root.join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().expect("dir")).expect("create corpus dir");
            std::fs::write(&path, &bytes).expect("write seed");
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (VESPA_WRITE_FUZZ_SEEDS=1 writes it)",
                path.display()
            )
        });
        assert_eq!(
            committed,
            bytes,
            "{} is stale: rerun with VESPA_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
    }
}
