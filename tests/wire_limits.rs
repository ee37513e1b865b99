//! Decoding never allocates what a few hostile bytes claim: a string length
//! prefix of 2^56 is refused with an error, not an abort. These inputs were
//! found by the fuzzer (`fuzz/`), which aborted on them before the limit.

mod support;

use roxyd::{
    handshake::{self, HandshakeError},
    wire::{self, AgentInfo, HandshakeReply, Status},
};
use rstest::rstest;

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[rstest]
#[case::ok_claiming_2_pow_56("00fdffffffffffffff00")]
#[case::ok_claiming_u64_max("00fdffffffffffffffff")]
#[case::err_claiming_2_pow_56("01fdffffffffffffff00")]
#[case::claiming_just_over_the_limit("00fc01001000")]
fn a_handshake_reply_claiming_a_huge_string_is_an_error(#[case] payload: &str) {
    assert!(wire::decode::<HandshakeReply>(&unhex(payload)).is_err());
    assert!(wire::decode_prefix::<HandshakeReply>(&unhex(payload)).is_err());
}

#[rstest]
#[case::app_name_claiming_2_pow_56("fdffffffffffffff00")]
#[case::found_by_the_fuzzer("fdfffffffeffffff000fffffffffffff002700")]
fn agent_info_claiming_a_huge_string_is_an_error(#[case] payload: &str) {
    assert!(wire::decode::<AgentInfo>(&unhex(payload)).is_err());
}

#[test]
fn strings_up_to_the_limit_still_decode() {
    let big = "x".repeat(wire::DECODE_LIMIT / 2);
    let reply: HandshakeReply = Ok(big.clone());
    assert_eq!(
        wire::decode::<HandshakeReply>(&wire::encode(&reply)).unwrap(),
        Ok(big)
    );
    let info = AgentInfo {
        app_name: "a".repeat(1000),
        version: String::new(),
        protocol_version: "0.47.0".into(),
        addr: "[::]:0".parse().unwrap(),
        status: Status::Idle,
    };
    assert_eq!(
        wire::decode::<AgentInfo>(&wire::encode(&info)).unwrap(),
        info
    );
}

#[tokio::test]
async fn the_agent_reports_such_a_handshake_reply_as_malformed() {
    support::bounded(
        "the agent reports a handshake reply claiming a huge string as malformed",
        async move {
            let (mut agent, mut manager) = tokio::io::duplex(1024);
            let info =
                roxyd::handshake::Identity::default().agent_info("127.0.0.1:1".parse().unwrap());
            let manager_side = tokio::spawn(async move {
                let hello = wire::FrameReader::new(&mut manager)
                    .read_frame(1024)
                    .await
                    .unwrap()
                    .unwrap();
                wire::decode::<AgentInfo>(&hello).unwrap();
                wire::write_frame(&mut manager, &unhex("00fdffffffffffffff00"))
                    .await
                    .unwrap();
                manager
            });
            let (mut recv, mut send) = tokio::io::split(&mut agent);
            let result = handshake::exchange(&mut send, &mut recv, &info, 1024).await;
            assert!(
                matches!(result, Err(HandshakeError::Malformed(_))),
                "{result:?}"
            );
            drop(manager_side.await.unwrap());
        },
    )
    .await;
}

/// The limit itself, not only relative to the constant: half a mebibyte
/// still decodes, so a limit shrunk by mistake fails here.
#[test]
fn the_decode_limit_is_one_mebibyte() {
    assert_eq!(wire::DECODE_LIMIT, 1024 * 1024);
    let big = "x".repeat(512 * 1024);
    let reply: HandshakeReply = Ok(big.clone());
    assert_eq!(
        wire::decode::<HandshakeReply>(&wire::encode(&reply)).unwrap(),
        Ok(big)
    );
}

/// Yields `bytes`, then fails as a reset transport does.
struct FailingAfter(&'static [u8]);

impl tokio::io::AsyncRead for FailingAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.0.is_empty() {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        let n = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        std::task::Poll::Ready(Ok(()))
    }
}

/// A transport that fails inside a frame is reported as such, not as a
/// stream that ended: the two are logged and counted apart.
#[rstest]
#[case::in_the_header(&[0, 0])]
#[case::in_the_payload(&[0, 0, 0, 8, 1, 2])]
#[tokio::test]
async fn a_transport_failure_inside_a_frame_is_an_io_error(#[case] sent: &'static [u8]) {
    support::bounded("a transport failure inside a frame is an I/O error", async move {
    let result = wire::FrameReader::new(&mut FailingAfter(sent))
        .read_frame(64)
        .await;
    assert!(
        matches!(&result, Err(wire::FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{result:?}"
    );
    })
    .await;
}
