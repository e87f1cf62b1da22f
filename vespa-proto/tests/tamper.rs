//! An attacker between the nodes rewrites the client->server frames; every manipulation must
//! surface as a specific error on the server, never as a silently accepted message.
//!
//! Client->server frame numbers: 0 = hello, 1 = key confirmation (counter 0), then the
//! messages: frame 2 = counter 1, frame 3 = counter 2, ...

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use vespa_proto::{HandshakeError, Message, ProtoError};

fn hb(seq: u64) -> Message {
    Message::Ack {
        origin: CLIENT.into(),
        seq,
    }
}

/// Sends messages 0..n from the client, without waiting for the server.
async fn send_n(client: &mut vespa_proto::SecureStream<tokio::io::DuplexStream>, n: u64) {
    for seq in 0..n {
        client.send(&hb(seq)).await.expect("client send");
    }
}

#[tokio::test]
async fn one_flipped_bit_is_tampered() {
    let (mut client, mut server) = mitm_pair(|i, f| {
        if i == 3 {
            let mut f = f.to_vec();
            f[2] ^= 0x04;
            Step::Replace(prefixed(&f))
        } else {
            Step::Pass
        }
    })
    .await;
    send_n(&mut client, 2).await;
    assert_eq!(
        server.recv::<Message>().await.expect("untouched frame"),
        Some(hb(0))
    );
    let res = quick(server.recv::<Message>()).await;
    assert!(
        matches!(res, Err(ProtoError::Tampered { counter: 2 })),
        "{res:?}"
    );
    assert!(
        matches!(server.recv::<Message>().await, Err(ProtoError::Closed)),
        "a failed stream stays failed"
    );
}

#[tokio::test]
async fn flipped_bit_in_every_position_of_a_frame_is_caught() {
    // Same frame, each byte altered in turn (one connection per position).
    for pos in [0usize, 1, 5, 10, 20, 27] {
        let (mut client, mut server) = mitm_pair(move |i, f| {
            if i == 2 {
                let mut f = f.to_vec();
                let p = pos % f.len();
                f[p] ^= 0x80;
                Step::Replace(prefixed(&f))
            } else {
                Step::Pass
            }
        })
        .await;
        send_n(&mut client, 1).await;
        let res = quick(server.recv::<Message>()).await;
        assert!(
            matches!(res, Err(ProtoError::Tampered { counter: 1 })),
            "byte {pos}: {res:?}"
        );
    }
}

#[tokio::test]
async fn captured_frame_replayed_is_detected() {
    let captured = Arc::new(Mutex::new(Vec::new()));
    let cap = captured.clone();
    let (mut client, mut server) = mitm_pair(move |i, f| {
        match i {
            2 => *cap.lock().expect("lock") = f.to_vec(),
            3 => {
                // Deliver frame 3, then the copy of frame 2 a second time.
                let mut out = prefixed(f);
                out.extend(prefixed(&cap.lock().expect("lock")));
                return Step::Replace(out);
            }
            _ => {}
        }
        Step::Pass
    })
    .await;
    send_n(&mut client, 2).await;
    assert_eq!(
        server.recv::<Message>().await.expect("original"),
        Some(hb(0))
    );
    assert_eq!(server.recv::<Message>().await.expect("next"), Some(hb(1)));
    let res = quick(server.recv::<Message>()).await;
    assert!(
        matches!(
            res,
            Err(ProtoError::Replay {
                expected: 3,
                got: 1
            })
        ),
        "{res:?}"
    );
    drop(captured);
}

#[tokio::test]
async fn swapped_frames_are_detected() {
    let held = Arc::new(Mutex::new(Vec::new()));
    let (mut client, mut server) = mitm_pair(move |i, f| match i {
        2 => {
            *held.lock().expect("lock") = f.to_vec();
            Step::Replace(Vec::new())
        }
        3 => {
            let mut out = prefixed(f);
            out.extend(prefixed(&held.lock().expect("lock")));
            Step::Replace(out)
        }
        _ => Step::Pass,
    })
    .await;
    send_n(&mut client, 2).await;
    let res = quick(server.recv::<Message>()).await;
    assert!(
        matches!(
            res,
            Err(ProtoError::OutOfOrder {
                expected: 1,
                got: 2
            })
        ),
        "{res:?}"
    );
}

#[tokio::test]
async fn dropped_frame_is_detected() {
    let (mut client, mut server) = mitm_pair(|i, _| {
        if i == 3 {
            Step::Replace(Vec::new())
        } else {
            Step::Pass
        }
    })
    .await;
    send_n(&mut client, 3).await;
    assert_eq!(server.recv::<Message>().await.expect("first"), Some(hb(0)));
    let res = quick(server.recv::<Message>()).await;
    assert!(
        matches!(
            res,
            Err(ProtoError::OutOfOrder {
                expected: 2,
                got: 3
            })
        ),
        "{res:?}"
    );
}

#[tokio::test]
async fn stream_cut_inside_a_frame_is_truncated() {
    let (mut client, mut server) = mitm_pair(|i, f| {
        if i == 3 {
            let p = prefixed(f);
            Step::Cut(p[..p.len() / 2].to_vec())
        } else {
            Step::Pass
        }
    })
    .await;
    send_n(&mut client, 2).await;
    assert_eq!(server.recv::<Message>().await.expect("first"), Some(hb(0)));
    let res = quick(server.recv::<Message>()).await;
    assert!(matches!(res, Err(ProtoError::Truncated(_))), "{res:?}");
}

#[tokio::test]
async fn stream_cut_between_frames_is_truncated_not_a_clean_eof() {
    let (mut client, mut server) = mitm_pair(|i, _| {
        if i == 3 {
            Step::Cut(Vec::new())
        } else {
            Step::Pass
        }
    })
    .await;
    send_n(&mut client, 2).await;
    client.close().await.expect("client closes in order");
    assert_eq!(server.recv::<Message>().await.expect("first"), Some(hb(0)));
    let res = quick(server.recv::<Message>()).await;
    assert!(
        matches!(res, Err(ProtoError::Truncated(_))),
        "without the close record, the end must not look orderly: {res:?}"
    );
}

#[tokio::test]
async fn four_gib_length_prefix_fails_immediately() {
    let (mut client, mut server) = mitm_pair(|i, _| {
        if i == 2 {
            Step::Replace(vec![0xFF; 4])
        } else {
            Step::Pass
        }
    })
    .await;
    send_n(&mut client, 1).await;
    let start = Instant::now();
    let res = quick(server.recv::<Message>()).await;
    assert!(
        matches!(
            res,
            Err(ProtoError::FrameTooLarge {
                len: Some(0xFFFF_FFFF),
                max: 1_048_576
            })
        ),
        "{res:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "must fail from the prefix, without reading 4 GiB"
    );
}

#[tokio::test]
async fn altered_node_name_in_hello_is_caught() {
    // Same length, different name: keys still match, the transcript does not.
    let (c, s) = mitm(|i, f| {
        if i == 0 {
            let mut f = f.to_vec();
            let last = f.len() - 1;
            f[last] = b'9';
            Step::Replace(prefixed(&f))
        } else {
            Step::Pass
        }
    });
    let (cr, sr) = handshake_pair(c, s, &psk(), &psk()).await;
    let mismatch = |r: &Result<_, ProtoError>| {
        matches!(
            r,
            Err(ProtoError::Handshake(HandshakeError::TranscriptMismatch))
        )
    };
    assert!(mismatch(&cr), "client: {:?}", cr.err());
    assert!(mismatch(&sr), "server: {:?}", sr.err());
}

#[tokio::test]
async fn every_connection_uses_fresh_keys() {
    // The 2014 protocol reused IVs under one key; the same message on two connections must
    // give different ciphertexts here.
    let seen = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..2 {
        let seen = seen.clone();
        let (mut client, mut server) = mitm_pair(move |i, f| {
            if i == 2 {
                seen.lock().expect("lock").push(f.to_vec());
            }
            Step::Pass
        })
        .await;
        send_n(&mut client, 1).await;
        assert_eq!(server.recv::<Message>().await.expect("recv"), Some(hb(0)));
    }
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].len(), seen[1].len());
    assert_ne!(
        seen[0], seen[1],
        "same plaintext on two connections must not give the same ciphertext"
    );
}
