//! Test plumbing: connected pairs over duplex pipes and TCP, and a man in the middle that
//! rewrites the client->server frame stream.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use vespa_proto::{client_handshake, server_handshake, Config, ProtoError, Psk, SecureStream};

pub const CLIENT: &str = "agent-1";
pub const SERVER: &str = "HO_PH";

pub fn psk() -> Psk {
    Psk::from_bytes([0x11; 32])
}

/// Client and server handshakes run concurrently over the two given streams.
pub async fn handshake_pair<C, S>(
    c: C,
    s: S,
    client_psk: &Psk,
    server_psk: &Psk,
) -> (
    Result<SecureStream<C>, ProtoError>,
    Result<SecureStream<S>, ProtoError>,
)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let cfg = Config::default();
    let (cr, sr) = tokio::join!(
        client_handshake(c, client_psk, CLIENT, &cfg),
        server_handshake(s, server_psk, SERVER, &cfg)
    );
    let cr = cr.map(|(conn, peer)| {
        assert_eq!(peer, SERVER, "client must learn the server's name");
        conn
    });
    let sr = sr.map(|(conn, peer)| {
        assert_eq!(peer, CLIENT, "server must learn the client's name");
        conn
    });
    (cr, sr)
}

/// An authenticated pair over an in-memory pipe.
pub async fn duplex_pair() -> (SecureStream<DuplexStream>, SecureStream<DuplexStream>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let (cr, sr) = handshake_pair(c, s, &psk(), &psk()).await;
    (cr.expect("client handshake"), sr.expect("server handshake"))
}

/// Two connected TCP sockets on 127.0.0.1 (client, server).
pub async fn tcp_sockets() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let (c, s) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (c.expect("connect"), s.expect("accept").0)
}

/// What the man in the middle does with client->server frame number `i` (0 = hello,
/// 1 = key confirmation, 2.. = messages).
pub enum Step {
    /// Forward unchanged.
    Pass,
    /// Write these raw bytes instead (length prefixes included; may be empty).
    Replace(Vec<u8>),
    /// Write these raw bytes, then shut the server's side of the stream down.
    Cut(Vec<u8>),
}

/// `frame` with its 4-byte big-endian length prefix.
pub fn prefixed(frame: &[u8]) -> Vec<u8> {
    let mut v = (frame.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(frame);
    v
}

/// Returns (client end, server end) with a relay between them that applies `policy` to each
/// client->server frame and copies server->client bytes unchanged.
pub fn mitm<P>(mut policy: P) -> (DuplexStream, DuplexStream)
where
    P: FnMut(usize, &[u8]) -> Step + Send + 'static,
{
    let (client_end, relay_c) = tokio::io::duplex(64 * 1024);
    let (relay_s, server_end) = tokio::io::duplex(64 * 1024);
    let (c_read, mut c_write) = tokio::io::split(relay_c);
    let (mut s_read, mut s_write) = tokio::io::split(relay_s);
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut s_read, &mut c_write).await;
        let _ = c_write.shutdown().await;
    });
    tokio::spawn(async move {
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(usize::MAX)
            .new_codec();
        let mut frames = FramedRead::new(c_read, codec);
        let mut i = 0;
        while let Some(Ok(frame)) = frames.next().await {
            let bytes = match policy(i, &frame) {
                Step::Pass => prefixed(&frame),
                Step::Replace(b) => b,
                Step::Cut(b) => {
                    let _ = s_write.write_all(&b).await;
                    let _ = s_write.shutdown().await;
                    return;
                }
            };
            if s_write.write_all(&bytes).await.is_err() {
                return;
            }
            i += 1;
        }
        let _ = s_write.shutdown().await;
    });
    (client_end, server_end)
}

/// An authenticated pair through a man in the middle.
pub async fn mitm_pair<P>(policy: P) -> (SecureStream<DuplexStream>, SecureStream<DuplexStream>)
where
    P: FnMut(usize, &[u8]) -> Step + Send + 'static,
{
    let (c, s) = mitm(policy);
    let (cr, sr) = handshake_pair(c, s, &psk(), &psk()).await;
    (
        cr.expect("client handshake through relay"),
        sr.expect("server handshake through relay"),
    )
}

/// Fails the test if `fut` takes longer than a few seconds (nothing here should block).
pub async fn quick<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("operation hung")
}
