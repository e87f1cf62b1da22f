//! End-to-end behaviour of `SecureStream` over in-memory pipes and real TCP sockets.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vespa_proto::bench::sample_alert;
use vespa_proto::{
    client_handshake, server_handshake, Alert, AlertBody, Config, HandshakeError, Message,
    NodeKind, ProtoError, Psk,
};

fn register() -> Message {
    Message::Register {
        name: CLIENT.into(),
        kind: NodeKind::Agent,
        listen_addr: None,
    }
}

#[tokio::test]
async fn round_trip_over_duplex() {
    let (mut client, mut server) = duplex_pair().await;
    assert_eq!(client.peer_name(), SERVER);
    assert_eq!(server.peer_name(), CLIENT);
    client.send(&register()).await.expect("send register");
    client.send(&sample_alert(7)).await.expect("send alert");
    assert_eq!(
        server.recv::<Message>().await.expect("recv"),
        Some(register())
    );
    assert_eq!(
        server.recv::<Message>().await.expect("recv"),
        Some(sample_alert(7))
    );
    server
        .send(&Message::Ack {
            origin: CLIENT.into(),
            seq: 7,
        })
        .await
        .expect("send ack");
    assert_eq!(
        client.recv::<Message>().await.expect("recv ack"),
        Some(Message::Ack {
            origin: CLIENT.into(),
            seq: 7
        })
    );
    client.close().await.expect("close");
    assert_eq!(
        server.recv::<Message>().await.expect("orderly close"),
        None,
        "close record must give a clean EOF"
    );
    assert_eq!(server.recv::<Message>().await.expect("still closed"), None);
    assert!(
        matches!(
            client.send(&Message::Heartbeat).await,
            Err(ProtoError::Closed)
        ),
        "send after close must fail"
    );
}

#[tokio::test]
async fn round_trip_over_tcp() {
    let (c, s) = tcp_sockets().await;
    let (client, server) = handshake_pair(c, s, &psk(), &psk()).await;
    let (mut client, mut server) = (
        client.expect("client handshake"),
        server.expect("server handshake"),
    );
    let call = Message::Call {
        id: 42,
        verb: "cut_link".into(),
        args: vec!["vm1".into()],
    };
    client.send(&call).await.expect("send call");
    assert_eq!(
        server.recv::<Message>().await.expect("recv call"),
        Some(call)
    );
    let reply = Message::Reply {
        id: 42,
        result: Err("no such vm".into()),
    };
    server.send(&reply).await.expect("send reply");
    assert_eq!(
        client.recv::<Message>().await.expect("recv reply"),
        Some(reply)
    );
    server.close().await.expect("close");
    assert_eq!(client.recv::<Message>().await.expect("clean EOF"), None);
}

#[tokio::test]
async fn split_halves_work_concurrently_over_tcp() {
    const N: u64 = 20_000;
    let (c, s) = tcp_sockets().await;
    let (client, server) = handshake_pair(c, s, &psk(), &psk()).await;
    let (mut c_rd, mut c_wr) = client.expect("client").split();
    let (mut s_rd, mut s_wr) = server.expect("server").split();
    let start = std::time::Instant::now();
    // Server: ack every alert as it arrives, from another task than its reader's caller.
    let server_task = tokio::spawn(async move {
        let mut expected = 0;
        while let Some(msg) = s_rd.recv::<Message>().await.expect("server recv") {
            let Message::Alert(Alert { seq, origin, .. }) = msg else {
                panic!("expected alerts only, got {msg:?}")
            };
            assert_eq!(seq, expected, "alerts must arrive in order");
            expected += 1;
            s_wr.feed(&Message::Ack { origin, seq })
                .await
                .expect("feed ack");
            if seq % 256 == 255 || seq == N - 1 {
                s_wr.flush().await.expect("flush acks");
            }
        }
        s_wr.close().await.expect("server close");
        expected
    });
    let acks = tokio::spawn(async move {
        let mut n = 0;
        while let Some(msg) = c_rd.recv::<Message>().await.expect("client recv") {
            assert_eq!(
                msg,
                Message::Ack {
                    origin: "agent-connections@host1".into(),
                    seq: n
                }
            );
            n += 1;
        }
        n
    });
    for seq in 0..N {
        c_wr.feed(&sample_alert(seq)).await.expect("feed alert");
    }
    c_wr.close().await.expect("client close");
    assert_eq!(quick(server_task).await.expect("server task"), N);
    assert_eq!(
        quick(acks).await.expect("ack task"),
        N,
        "every alert must be acked"
    );
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{N} alerts + acks over TCP in {secs:.3}s = {:.0} alerts/s (this build's profile)",
        N as f64 / secs
    );
}

#[tokio::test]
async fn wrong_key_fails_at_handshake_on_both_sides() {
    let (c, s) = tokio::io::duplex(4096);
    let (cr, sr) = handshake_pair(c, s, &psk(), &Psk::from_bytes([0x22; 32])).await;
    assert!(
        matches!(cr, Err(ProtoError::WrongKey)),
        "client: {:?}",
        cr.err()
    );
    assert!(
        matches!(sr, Err(ProtoError::WrongKey)),
        "server: {:?}",
        sr.err()
    );
}

#[tokio::test]
async fn wrong_key_fails_at_handshake_over_tcp() {
    let (c, s) = tcp_sockets().await;
    let (cr, sr) = handshake_pair(c, s, &Psk::random(), &Psk::random()).await;
    assert!(
        matches!(cr, Err(ProtoError::WrongKey)),
        "client: {:?}",
        cr.err()
    );
    assert!(
        matches!(sr, Err(ProtoError::WrongKey)),
        "server: {:?}",
        sr.err()
    );
}

#[tokio::test(start_paused = true)]
async fn half_a_hello_then_stall_times_out() {
    let (mut attacker, s) = tokio::io::duplex(4096);
    // Announce a 100-byte hello, send 10 bytes of it, and never send the rest.
    attacker.write_all(&[0, 0, 0, 100]).await.expect("write");
    attacker
        .write_all(b"VSPA\0\x01\x01abc")
        .await
        .expect("write");
    let cfg = Config::default();
    let virtual_start = tokio::time::Instant::now();
    let real_start = std::time::Instant::now();
    let res = server_handshake(s, &psk(), SERVER, &cfg).await;
    match res {
        Err(ProtoError::Handshake(HandshakeError::Timeout(d))) => {
            assert_eq!(d, Duration::from_secs(5))
        }
        other => panic!("expected a handshake timeout, got {:?}", other.err()),
    }
    assert!(
        virtual_start.elapsed() >= Duration::from_secs(5),
        "must wait the configured deadline"
    );
    assert!(
        real_start.elapsed() < Duration::from_secs(2),
        "paused clock: no real waiting"
    );
    drop(attacker);
}

#[tokio::test]
async fn short_configured_timeout_applies_to_a_silent_client() {
    let (_silent, s) = tokio::io::duplex(4096);
    let cfg = Config {
        handshake_timeout: Duration::from_millis(50),
        ..Config::default()
    };
    let res = quick(server_handshake(s, &psk(), SERVER, &cfg)).await;
    assert!(
        matches!(res, Err(ProtoError::Handshake(HandshakeError::Timeout(_)))),
        "{:?}",
        res.err()
    );
}

#[tokio::test]
async fn non_vespa_client_is_rejected_without_buffering() {
    let (mut http, s) = tokio::io::duplex(4096);
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let res = quick(server_handshake(s, &psk(), SERVER, &Config::default())).await;
    // "GET " read as a length is ~1.2 GB: refused from the prefix alone.
    assert!(
        matches!(
            res,
            Err(ProtoError::FrameTooLarge {
                len: Some(0x4745_5420),
                ..
            })
        ),
        "{:?}",
        res.err()
    );
}

#[tokio::test]
async fn server_tells_a_client_of_another_version_why() {
    let (mut old, s) = tokio::io::duplex(4096);
    let mut hello = b"VSPA\x00\x02\x01".to_vec();
    hello.extend_from_slice(&[0; 32]);
    hello.push(3);
    hello.extend_from_slice(b"old");
    old.write_all(&prefixed(&hello)).await.expect("write");
    let res = quick(server_handshake(s, &psk(), SERVER, &Config::default())).await;
    assert!(
        matches!(
            res,
            Err(ProtoError::Handshake(HandshakeError::UnsupportedVersion {
                ours: 1,
                theirs: 2
            }))
        ),
        "{:?}",
        res.err()
    );
    let mut reply = vec![0u8; 4 + 4 + 2];
    old.read_exact(&mut reply)
        .await
        .expect("server must answer with its hello");
    assert_eq!(
        &reply[4..],
        b"VSPA\x00\x01",
        "the answer carries the server's magic and version"
    );
}

#[tokio::test]
async fn client_to_client_is_refused() {
    let (a, b) = tokio::io::duplex(4096);
    let cfg = Config::default();
    let key = psk();
    let (ra, rb) = tokio::join!(
        client_handshake(a, &key, "a", &cfg),
        client_handshake(b, &key, "b", &cfg)
    );
    assert!(
        matches!(ra, Err(ProtoError::Handshake(HandshakeError::WrongRole))),
        "{:?}",
        ra.err()
    );
    assert!(
        matches!(rb, Err(ProtoError::Handshake(HandshakeError::WrongRole))),
        "{:?}",
        rb.err()
    );
}

#[tokio::test]
async fn invalid_local_name_is_refused_before_sending() {
    let (c, _s) = tokio::io::duplex(4096);
    let res = client_handshake(c, &psk(), "bad\nname", &Config::default()).await;
    assert!(
        matches!(
            res,
            Err(ProtoError::Handshake(HandshakeError::InvalidName(_)))
        ),
        "{:?}",
        res.err()
    );
}

#[tokio::test]
async fn oversized_message_is_refused_and_stream_stays_usable() {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let cfg = Config {
        max_frame: 1024,
        ..Config::default()
    };
    let key = psk();
    let (cr, sr) = tokio::join!(
        client_handshake(c, &key, CLIENT, &cfg),
        server_handshake(s, &key, SERVER, &cfg)
    );
    let (mut client, mut server) = (cr.expect("client").0, sr.expect("server").0);
    let big = Message::Alert(Alert {
        body: AlertBody::Text("x".repeat(2000)),
        ..alert_fields()
    });
    let res = client.send(&big).await;
    assert!(
        matches!(res, Err(ProtoError::FrameTooLarge { max: 1024, .. })),
        "{:?}",
        res.err()
    );
    client
        .send(&Message::Heartbeat)
        .await
        .expect("small message after a refused one");
    assert_eq!(
        server.recv::<Message>().await.expect("recv"),
        Some(Message::Heartbeat)
    );
}

fn alert_fields() -> Alert {
    Alert {
        origin: CLIENT.into(),
        seq: 0,
        path: vec![],
        timestamp_ns: 0,
        body: AlertBody::Text(String::new()),
    }
}

#[tokio::test]
async fn decoding_as_the_wrong_type_is_an_error_not_a_panic() {
    let (mut client, mut server) = duplex_pair().await;
    client
        .send(&"just a string")
        .await
        .expect("send a foreign type");
    client.send(&Message::Heartbeat).await.expect("send");
    let res = server.recv::<Message>().await;
    assert!(matches!(res, Err(ProtoError::Decode(_))), "{res:?}");
    assert_eq!(
        server
            .recv::<Message>()
            .await
            .expect("stream stays usable after Decode"),
        Some(Message::Heartbeat)
    );
}
