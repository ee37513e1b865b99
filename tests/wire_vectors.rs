//! Every vector in `tests/data/vectors.json` (bytes from the reference
//! implementation; `docs/wire.md` describes the format) both ways: our
//! encoding equals the bytes, and decoding the bytes gives the value.

mod support;

use std::net::SocketAddr;

use roxyd::{
    reply::{self, WireForm},
    wire::{
        self, AgentInfo, HandshakeReply, NodePowerRequest, NodePowerResponse, Request, RequestCode,
        Status,
    },
};
use rstest::rstest;
use serde_json::Value;

const VECTORS: &str = include_str!("data/vectors.json");

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len() % 2 == 0, "odd hex length: {hex}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn vectors() -> Vec<Value> {
    let file: Value = serde_json::from_str(VECTORS).expect("vectors.json parses");
    file["vectors"].as_array().expect("vectors array").clone()
}

fn vector(name: &str) -> Value {
    vectors()
        .into_iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no vector named {name:?}"))
}

/// The full frame of `name`, checked against its own header and payload
/// fields so that a wrongly copied file fails here.
fn frame_of(name: &str) -> (Vec<u8>, Vec<u8>) {
    let v = vector(name);
    let frame = unhex(v["hex"].as_str().expect("hex"));
    let payload = unhex(v["payload_hex"].as_str().expect("payload_hex"));
    let len = usize::try_from(v["length"].as_u64().expect("length")).expect("fits");
    assert_eq!(&frame[..4], unhex(v["length_header_hex"].as_str().unwrap()));
    assert_eq!(&frame[4..], payload.as_slice());
    assert_eq!(payload.len(), len);
    (frame, payload)
}

/// Encodes `payload` as a frame with our writer.
async fn our_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::write_frame(&mut out, payload)
        .await
        .expect("write to a Vec");
    out
}

/// Reads one frame from `bytes` with our reader, and checks nothing is left.
async fn our_read(bytes: &[u8]) -> Vec<u8> {
    let mut reader = wire::FrameReader::new(bytes);
    let payload = reader
        .read_frame(wire::DEFAULT_MAX_FRAME_LEN)
        .await
        .expect("frame reads")
        .expect("a frame, not end of stream");
    assert!(
        matches!(
            reader.read_frame(wire::DEFAULT_MAX_FRAME_LEN).await,
            Ok(None)
        ),
        "bytes left after the frame"
    );
    payload.to_vec()
}

fn agent_info(addr: &str) -> AgentInfo {
    AgentInfo {
        app_name: "roxyd".into(),
        version: "0.1.0".into(),
        protocol_version: "0.47.0".into(),
        addr: addr.parse::<SocketAddr>().unwrap(),
        status: Status::Ready,
    }
}

#[rstest]
#[case::v4("handshake AgentInfo (agent->manager), addr 0.0.0.0:0", "0.0.0.0:0")]
#[case::v6("handshake AgentInfo (agent->manager), addr [::]:0", "[::]:0")]
#[tokio::test]
async fn handshake_agent_info(#[case] name: &str, #[case] addr: &str) {
    support::bounded(
        "the handshake's agent info is written as the reference vector",
        async move {
            let (frame, payload) = frame_of(name);
            let value = agent_info(addr);
            assert_eq!(our_frame(&wire::encode(&value)).await, frame);
            let decoded: AgentInfo = wire::decode(&our_read(&frame).await).unwrap();
            assert_eq!(decoded, value);
            assert_eq!(wire::decode::<AgentInfo>(&payload).unwrap(), value);
        },
    )
    .await;
}

#[test]
fn identity_builds_the_vector_placeholder_for_each_family() {
    let identity = roxyd::handshake::Identity {
        app_name: "roxyd".into(),
        version: "0.1.0".into(),
        protocol_version: "0.47.0".into(),
    };
    let v4 = identity.agent_info("127.0.0.1:38390".parse().unwrap());
    let v6 = identity.agent_info("[::1]:38390".parse().unwrap());
    assert_eq!(v4, agent_info("0.0.0.0:0"));
    assert_eq!(v6, agent_info("[::]:0"));
}

#[rstest]
#[case::ok("handshake reply Ok(\"0.47.0\") (manager->agent)", Ok("0.47.0".into()))]
#[case::err_requirement(
    "handshake reply Err(\">=0.48.0\") (manager->agent)",
    Err(">=0.48.0".into())
)]
#[case::err_highest(
    "handshake reply Err(\"0.46.0\") (manager->agent) [extra]",
    Err("0.46.0".into())
)]
#[tokio::test]
async fn handshake_reply(#[case] name: &str, #[case] value: HandshakeReply) {
    support::bounded(
        "the handshake reply is read as the reference vector",
        async move {
            let (frame, _) = frame_of(name);
            assert_eq!(our_frame(&wire::encode(&value)).await, frame);
            let decoded: HandshakeReply = wire::decode(&our_read(&frame).await).unwrap();
            assert_eq!(decoded, value);
        },
    )
    .await;
}

#[rstest]
#[case::reboot(
    "request node_power(Reboot) (manager->agent)",
    NodePowerRequest::Reboot
)]
#[case::shutdown(
    "request node_power(Shutdown) (manager->agent)",
    NodePowerRequest::Shutdown
)]
#[case::graceful_reboot(
    "request node_power(GracefulReboot) (manager->agent)",
    NodePowerRequest::GracefulReboot
)]
#[case::graceful_shutdown(
    "request node_power(GracefulShutdown) (manager->agent)",
    NodePowerRequest::GracefulShutdown
)]
#[tokio::test]
async fn node_power_request(#[case] name: &str, #[case] value: NodePowerRequest) {
    support::bounded(
        "a NodePower request is read and written as the reference vector",
        async move {
            let (frame, _) = frame_of(name);
            let payload = wire::encode_request(RequestCode::NODE_POWER, &wire::encode(&value));
            assert_eq!(our_frame(&payload).await, frame);

            let read = our_read(&frame).await;
            let request = Request::parse(&read).unwrap();
            assert_eq!(request.code, RequestCode::NodePower);
            let v = vector(name);
            assert_eq!(request.body, unhex(v["body_hex"].as_str().unwrap()));
            assert_eq!(
                wire::decode::<NodePowerRequest>(request.body).unwrap(),
                value
            );
        },
    )
    .await;
}

#[rstest]
#[case::flat_reboot(
    "request flat legacy Reboot code 4, () body (manager->agent)",
    RequestCode::FlatReboot
)]
#[case::flat_shutdown(
    "request flat legacy Shutdown code 21, () body (manager->agent)",
    RequestCode::FlatShutdown
)]
#[case::unknown(
    "request unknown code 9999, () body (manager->agent) [extra]",
    RequestCode::Unknown(9999)
)]
#[tokio::test]
async fn unit_body_request(#[case] name: &str, #[case] code: RequestCode) {
    support::bounded(
        "a request with a unit body is read and written as the reference vector",
        async move {
            let (frame, _) = frame_of(name);
            let v = vector(name);
            assert_eq!(u64::from(code.code()), v["request_code"].as_u64().unwrap());
            let payload = wire::encode_request(code.code(), &wire::encode(&()));
            assert_eq!(our_frame(&payload).await, frame);

            let read = our_read(&frame).await;
            let request = Request::parse(&read).unwrap();
            assert_eq!(request.code, code);
            assert!(request.body.is_empty());
        },
    )
    .await;
}

/// What our reply writer produces for each reply vector.
#[derive(Debug)]
enum ReplyValue {
    Initiated(WireForm),
    Error(&'static str),
    UnknownCode(u32),
}

/// The echo reply, written from a constant rather than encoded each time, is
/// the reference's `Ok(())` to the byte.
#[tokio::test]
async fn the_unit_reply_constant_is_the_reference_ok_unit() {
    support::bounded(
        "the unit reply constant is the reference Ok(())",
        async move {
            let (frame, _) = frame_of("response Ok(()) (agent->manager)");
            assert_eq!(our_frame(reply::UNIT_PAYLOAD).await, frame);
            assert_eq!(reply::UNIT_FRAME.as_slice(), frame.as_slice());
            let (mut agent, mut manager) = tokio::io::duplex(64);
            reply::write_unit(&mut agent).await.unwrap();
            drop(agent);
            let mut written = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut manager, &mut written)
                .await
                .unwrap();
            assert_eq!(written, frame);
        },
    )
    .await;
}

#[rstest]
#[case::initiated_grouped(
    "response Ok(NodePowerResponse::Initiated) (agent->manager)",
    ReplyValue::Initiated(WireForm::Grouped)
)]
#[case::initiated_flat(
    "response Ok(()) (agent->manager)",
    ReplyValue::Initiated(WireForm::Flat)
)]
#[case::invalid_command(
    "response Err(\"invalid command\") (agent->manager)",
    ReplyValue::Error(wire::reply_text::INVALID_COMMAND)
)]
#[case::fail(
    "response Err(\"fail\") (agent->manager)",
    ReplyValue::Error(wire::reply_text::FAIL)
)]
#[case::unknown_code(
    "response Err(\"unknown request code: 9999\") (agent->manager)",
    ReplyValue::UnknownCode(9999)
)]
#[tokio::test]
async fn agent_reply(#[case] name: &str, #[case] value: ReplyValue) {
    support::bounded(
        "the agent's replies are written as the reference vectors",
        async move {
            let (frame, payload) = frame_of(name);
            let ours = match value {
                ReplyValue::Initiated(form) => reply::initiated_payload(form),
                ReplyValue::Error(text) => reply::error_payload(text),
                ReplyValue::UnknownCode(code) => {
                    reply::error_payload(&wire::reply_text::unknown_request_code(code))
                }
            };
            assert_eq!(our_frame(&ours).await, frame);

            // And the Manager side decodes the bytes as the value.
            let read = our_read(&frame).await;
            match value {
                ReplyValue::Initiated(WireForm::Grouped) => assert_eq!(
                    wire::decode::<Result<NodePowerResponse, String>>(&read).unwrap(),
                    Ok(NodePowerResponse::Initiated)
                ),
                ReplyValue::Initiated(WireForm::Flat) => {
                    assert_eq!(wire::decode::<Result<(), String>>(&read).unwrap(), Ok(()));
                }
                ReplyValue::Error(text) => assert_eq!(
                    wire::decode::<Result<NodePowerResponse, String>>(&payload).unwrap(),
                    Err(text.to_owned())
                ),
                ReplyValue::UnknownCode(code) => assert_eq!(
                    wire::decode::<Result<(), String>>(&read).unwrap(),
                    Err(format!("unknown request code: {code}"))
                ),
            }
        },
    )
    .await;
}

/// The names that the `#[case]` attributes of this file give as their first
/// argument, read from the source itself: what is tested, not a list kept by
/// hand beside the cases.
fn case_names() -> Vec<String> {
    const SOURCE: &str = include_str!("wire_vectors.rs");
    // Split so that this function's own text is not taken for a case.
    let attribute = concat!("#[", "case::");
    let mut names = Vec::new();
    for (at, _) in SOURCE.match_indices(attribute) {
        let args = SOURCE[at..].split_once('(').expect("case arguments").1;
        let Some(literal) = args.trim_start().strip_prefix('"') else {
            continue;
        };
        let mut name = String::new();
        let mut chars = literal.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => name.push(chars.next().expect("escaped character")),
                '"' => break,
                c => name.push(c),
            }
        }
        names.push(name);
    }
    names
}

/// Every vector in the file is named by a case of this file, and every case
/// names a vector: a vector added to the file without a case fails here.
#[test]
fn every_vector_is_tested() {
    let names: Vec<String> = vectors()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    let cases = case_names();
    assert!(!cases.is_empty(), "no case found in the source");
    for name in &names {
        assert!(cases.contains(name), "untested vector {name:?}");
    }
    for case in &cases {
        assert!(names.contains(case), "case {case:?} names no vector");
    }
}

#[rstest]
#[case::zero(0, "00")]
#[case::largest_single_byte(250, "fa")]
#[case::first_u16(251, "fbfb00")]
#[case::u16(1000, "fbe803")]
#[case::u32(70000, "fc70110100")]
fn varint_facts(#[case] value: u32, #[case] key: &str) {
    let file: Value = serde_json::from_str(VECTORS).unwrap();
    let hex = file["facts"]["u32_varint_examples"][value.to_string()]
        .as_str()
        .unwrap();
    assert_eq!(hex, key);
    assert_eq!(wire::encode(&value), unhex(hex));
    assert_eq!(wire::decode::<u32>(&unhex(hex)).unwrap(), value);
}

#[test]
fn status_and_socket_addr_facts() {
    let file: Value = serde_json::from_str(VECTORS).unwrap();
    let facts = &file["facts"];
    assert_eq!(
        wire::encode(&Status::Ready),
        unhex(facts["status_ready"].as_str().unwrap())
    );
    assert_eq!(
        wire::encode(&Status::Idle),
        unhex(facts["status_idle"].as_str().unwrap())
    );
    let addr: SocketAddr = "10.0.0.1:443".parse().unwrap();
    let bytes = unhex(facts["socketaddr_v4_10.0.0.1:443"].as_str().unwrap());
    assert_eq!(wire::encode(&addr), bytes);
    assert_eq!(wire::decode::<SocketAddr>(&bytes).unwrap(), addr);
    // The flat shutdown's reply when the power handler refuses.
    let refused = unhex(
        facts["flat21_response_via_handle_when_node_power_errs"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(&refused[4..], reply::error_payload("invalid command"));
}
