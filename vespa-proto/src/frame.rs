//! Framing: a big-endian `u32` length, then that many bytes.
//!
//! The 2014 protocol ended messages with an `EndOfTransmission` marker and scanned for it,
//! which let a peer make the receiver buffer without bound. A length prefix lets the receiver
//! check the announced size against a limit *before* it grows any buffer, so a peer announcing
//! 4 GiB costs four bytes of reading and an error, not 4 GiB of memory.
//!
//! The framing itself is tokio-util's [`LengthDelimitedCodec`]; [`FrameCodec`] only wraps it to
//! turn its errors into [`ProtoError`] variants that say what happened (too large, truncated)
//! instead of a generic `io::Error`.

use bytes::{Buf, BytesMut};
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::error::ProtoError;

/// Default maximum frame length (payload bytes, prefix excluded): 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Length of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// A `u32` big-endian length-delimited codec with an enforced maximum frame length.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    /// True once the inner codec has consumed a length prefix whose payload has not fully
    /// arrived; an end of stream then cuts a frame even though the buffer looks empty.
    in_frame: bool,
}

impl FrameCodec {
    /// A codec accepting frames of at most `max_frame` payload bytes.
    pub fn new(max_frame: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_length(PREFIX_LEN)
            .big_endian()
            .max_frame_length(max_frame)
            .new_codec();
        FrameCodec {
            inner,
            in_frame: false,
        }
    }

    /// The current maximum frame length.
    pub fn max_frame(&self) -> usize {
        self.inner.max_frame_length()
    }

    /// Changes the limit; the handshake runs with a small one and raises it once the peer has
    /// proved it holds the key, so an unauthenticated peer can never make us buffer 1 MiB.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.inner.set_max_frame_length(max_frame);
    }

    fn too_large(&self, announced: Option<u64>) -> ProtoError {
        ProtoError::FrameTooLarge {
            len: announced,
            max: self.max_frame(),
        }
    }
}

/// True when an `io::Error` is tokio-util's "frame length exceeds max" error.
fn is_length_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtoError> {
        let before = src.len();
        let decoded = self.inner.decode(src).map_err(|e| {
            if is_length_error(&e) {
                // LengthDelimitedCodec rejects the prefix before consuming it, so the announced
                // length is still the first four bytes of `src`; report it when it is there.
                let announced =
                    (src.len() >= PREFIX_LEN).then(|| u64::from((&src[..PREFIX_LEN]).get_u32()));
                self.too_large(announced)
            } else {
                ProtoError::Io(e)
            }
        })?;
        match decoded {
            Some(frame) => {
                self.in_frame = false;
                Ok(Some(frame))
            }
            None => {
                // The inner codec only consumes input when it takes a length prefix.
                if src.len() != before {
                    self.in_frame = true;
                }
                Ok(None)
            }
        }
    }

    /// At end of stream, leftover bytes mean the last frame was cut off.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtoError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && !self.in_frame => Ok(None),
            None => Err(ProtoError::Truncated(
                "connection closed in the middle of a frame",
            )),
        }
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = ProtoError;

    fn encode(&mut self, frame: &[u8], dst: &mut BytesMut) -> Result<(), ProtoError> {
        if frame.len() > self.max_frame() {
            return Err(self.too_large(Some(frame.len() as u64)));
        }
        self.inner.encode(frame, dst).map_err(ProtoError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_frames_and_waits_for_partial_input() {
        let mut codec = FrameCodec::new(64);
        let mut wire = BytesMut::new();
        codec.encode(&b"hello"[..], &mut wire).expect("encode");
        codec.encode(&b""[..], &mut wire).expect("encode empty");
        assert_eq!(&wire[..4], &[0, 0, 0, 5], "prefix must be u32 big-endian");
        let mut partial = BytesMut::from(&wire[..7]);
        assert!(
            codec.decode(&mut partial).expect("partial").is_none(),
            "must wait for the rest"
        );
        partial.extend_from_slice(&wire[7..]);
        assert_eq!(
            &codec.decode(&mut partial).expect("decode").expect("frame")[..],
            b"hello"
        );
        assert_eq!(
            codec
                .decode(&mut partial)
                .expect("decode")
                .expect("empty frame")
                .len(),
            0
        );
        assert!(codec.decode_eof(&mut partial).expect("clean eof").is_none());
    }

    #[test]
    fn four_gib_prefix_fails_before_allocating() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut src = BytesMut::with_capacity(8);
        src.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2]);
        let cap_before = src.capacity();
        match codec.decode(&mut src) {
            Err(ProtoError::FrameTooLarge {
                len: Some(len),
                max,
            }) => {
                assert_eq!(len, u64::from(u32::MAX));
                assert_eq!(max, DEFAULT_MAX_FRAME);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert_eq!(
            src.capacity(),
            cap_before,
            "the buffer must not grow for a rejected frame"
        );
    }

    #[test]
    fn limit_is_exact_and_configurable() {
        let mut codec = FrameCodec::new(10);
        let mut ok = BytesMut::from(&[0, 0, 0, 10][..]);
        ok.extend_from_slice(&[0; 10]);
        assert_eq!(
            codec
                .decode(&mut ok)
                .expect("at the limit")
                .expect("frame")
                .len(),
            10
        );
        let mut over = BytesMut::from(&[0, 0, 0, 11][..]);
        assert!(matches!(
            codec.decode(&mut over),
            Err(ProtoError::FrameTooLarge {
                len: Some(11),
                max: 10
            })
        ));
        let mut dst = BytesMut::new();
        assert!(matches!(
            codec.encode(&[0u8; 11][..], &mut dst),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        assert!(dst.is_empty(), "a refused frame must not be half-written");
        codec.set_max_frame(11);
        codec
            .encode(&[0u8; 11][..], &mut dst)
            .expect("raised limit");
    }

    #[test]
    fn eof_inside_a_frame_is_truncation() {
        let mut codec = FrameCodec::new(64);
        for cut in [1usize, 3, 4, 8] {
            let mut src = BytesMut::from(&[0u8, 0, 0, 5, b'a', b'b', b'c', b'd', b'e'][..cut]);
            assert!(
                matches!(codec.decode_eof(&mut src), Err(ProtoError::Truncated(_))),
                "cut at {cut}"
            );
            codec = FrameCodec::new(64);
        }
    }
}
