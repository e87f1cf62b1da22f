//! Random bytes as the byte stream after a handshake: framing, then opening under a fixed key,
//! then the record layer and message decoding. Nothing here may panic or allocate without
//! bound; only the seeds (sealed with FUZZ_KEY by vespa-proto/tests/fuzz_corpus.rs) open.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use vespa_proto::frame::FrameCodec;
use vespa_proto::handshake::record;
use vespa_proto::message::{self, Message};
use vespa_proto::seal::{Direction, Opener};

/// Must match `FUZZ_KEY` in vespa-proto/tests/fuzz_corpus.rs.
const FUZZ_KEY: [u8; 32] = [0x42; 32];
const MAX_FRAME: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(MAX_FRAME);
    let mut opener = Opener::new(&FUZZ_KEY, Direction::ClientToServer);
    // Feed the input in two pieces, as a socket would, to reach the partial-frame paths.
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let mut src = BytesMut::from(&data[..cut]);
    let mut rest = Some(&data[cut..]);
    loop {
        let decoded = match codec.decode(&mut src) {
            Ok(None) => match rest.take() {
                Some(more) => {
                    src.extend_from_slice(more);
                    continue;
                }
                None => codec.decode_eof(&mut src),
            },
            other => other,
        };
        let mut frame = match decoded {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        assert!(
            frame.len() <= MAX_FRAME,
            "codec returned a frame over the limit"
        );
        let Ok(plain) = opener.open(&mut frame) else {
            return;
        };
        match plain.split_first() {
            Some((&record::DATA, body)) => {
                if let Ok(msg) = message::decode::<Message>(body) {
                    let again = message::encode(&msg).expect("a decoded message re-encodes");
                    assert_eq!(message::decode::<Message>(&again).expect("re-decodes"), msg);
                }
            }
            // A close record, or a record type the connection would reject: the stream ends.
            _ => return,
        }
    }
});
