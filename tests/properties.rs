//! Property tests of the wire format and the dispatch layer, with the
//! recording backend.
//!
//! - Every protocol type encodes to the layout `docs/wire.md` describes and
//!   decodes back to the same value, whatever strings and addresses it holds.
//! - Frames round-trip, a frame cut short is `Truncated`, and a header that
//!   claims more than the limit is refused before a byte of its body is read.
//! - No byte sequence fed to `Dispatcher::serve_stream` as a whole request
//!   stream panics it, and the power operations it carries out are only ever
//!   ones the stream asked for, in the order it asked. The expectation comes
//!   from an independent model of the contract ([`model_stream`]), written
//!   from `docs/wire.md` rather than from the implementation.
#![cfg(feature = "test-backend")]

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::{prelude::*, sample::Index};
use roxyd::platform::recorder::journal::{Entry, Recorder};
use roxyd::{
    dispatch::{DispatchConfig, StreamEnd},
    platform::{GracefulOp, ImmediateOp},
    wire::{
        self, AgentInfo, FrameError, NodePowerRequest, NodePowerResponse, REQUEST_CODE_LEN,
        Request, RequestCode, Status,
    },
};
use rstest::rstest;
use tokio::io::AsyncReadExt;

/// The request limit the dispatch properties serve with: small, so that the
/// generated streams cross it often and stay cheap.
const LIMIT: u32 = 256;

/// Runs `future` to completion on a fresh current-thread runtime, as roxyd's
/// own timeouts need a time driver.
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(future)
}

// ---------------------------------------------------------------------------
// An independent encoder of the layouts in docs/wire.md.
// ---------------------------------------------------------------------------

/// bincode 2's canonical variable-length integer, as `docs/wire.md` states it.
fn varint(value: u64) -> Vec<u8> {
    if let Ok(byte @ 0..=250) = u8::try_from(value) {
        vec![byte]
    } else if let Ok(short) = u16::try_from(value) {
        [&[251][..], &short.to_le_bytes()].concat()
    } else if let Ok(word) = u32::try_from(value) {
        [&[252][..], &word.to_le_bytes()].concat()
    } else {
        [&[253][..], &value.to_le_bytes()].concat()
    }
}

/// A string as `docs/wire.md` lays it out: its byte length as a varint, then the
/// UTF-8 bytes.
fn string_layout(text: &str) -> Vec<u8> {
    let len = u64::try_from(text.len()).expect("a string length fits in u64");
    [varint(len), text.as_bytes().to_vec()].concat()
}

/// `AgentInfo` as `docs/wire.md` lays it out: the three strings, the address
/// (variant, raw octets, varint port), then the status variant.
fn agent_info_layout(info: &AgentInfo) -> Vec<u8> {
    let mut out = string_layout(&info.app_name);
    out.extend(string_layout(&info.version));
    out.extend(string_layout(&info.protocol_version));
    match info.addr.ip() {
        IpAddr::V4(ip) => {
            out.push(0);
            out.extend(ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(1);
            out.extend(ip.octets());
        }
    }
    out.extend(varint(u64::from(info.addr.port())));
    out.push(match info.status {
        Status::Ready => 0,
        Status::Idle => 1,
    });
    out
}

/// `Result<String, String>`: the variant (0 = Ok, 1 = Err), then the string.
fn string_result_layout(result: &Result<String, String>) -> Vec<u8> {
    match result {
        Ok(text) => [vec![0], string_layout(text)].concat(),
        Err(text) => [vec![1], string_layout(text)].concat(),
    }
}

/// `Result<(), String>`: `Ok(())` is the variant alone.
fn unit_result_layout(result: &Result<(), String>) -> Vec<u8> {
    match result {
        Ok(()) => vec![0],
        Err(text) => [vec![1], string_layout(text)].concat(),
    }
}

/// The wire index of a power request variant.
fn variant_index(request: NodePowerRequest) -> u8 {
    match request {
        NodePowerRequest::Reboot => 0,
        NodePowerRequest::Shutdown => 1,
        NodePowerRequest::GracefulReboot => 2,
        NodePowerRequest::GracefulShutdown => 3,
    }
}

// ---------------------------------------------------------------------------
// Strategies for the wire types.
// ---------------------------------------------------------------------------

/// Any string, control characters and astral planes included (proptest's
/// `any::<String>()` leaves control characters out).
fn any_text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter)
}

/// IPv4 and IPv6 socket addresses. An IPv6 address carries no flow info or
/// scope id: the wire form has neither (only the octets and the port), so
/// they could not round-trip.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

/// Handshake frames with arbitrary strings, addresses and status.
fn agent_info() -> impl Strategy<Value = AgentInfo> {
    (
        any_text(),
        any_text(),
        any_text(),
        socket_addr(),
        prop_oneof![Just(Status::Ready), Just(Status::Idle)],
    )
        .prop_map(
            |(app_name, version, protocol_version, addr, status)| AgentInfo {
                app_name,
                version,
                protocol_version,
                addr,
                status,
            },
        )
}

/// Every power request variant.
fn node_power_request() -> impl Strategy<Value = NodePowerRequest> {
    prop::sample::select(NodePowerRequest::ALL.to_vec())
}

/// Handshake replies, accepted or refused, with arbitrary text.
fn string_result() -> impl Strategy<Value = Result<String, String>> {
    prop_oneof![any_text().prop_map(Ok), any_text().prop_map(Err)]
}

/// Unit replies: `Ok(())` or an error with arbitrary text.
fn unit_result() -> impl Strategy<Value = Result<(), String>> {
    prop_oneof![Just(Ok(())), any_text().prop_map(Err)]
}

/// A few bytes that may follow a value in a request body.
fn trailing() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A power request is its variant index in one byte, and decodes back,
    /// with trailing bytes ignored by the request-body decoder as the
    /// reference does.
    #[test]
    fn node_power_request_round_trips(request in node_power_request(), rest in trailing()) {
        let bytes = wire::encode(&request);
        prop_assert_eq!(&bytes, &vec![variant_index(request)]);
        prop_assert_eq!(wire::decode::<NodePowerRequest>(&bytes).unwrap(), request);
        let with_rest = [bytes, rest].concat();
        prop_assert_eq!(wire::decode_prefix::<NodePowerRequest>(&with_rest).unwrap(), request);
    }

    /// `Initiated` is variant 0 and decodes back, alone or followed by bytes.
    #[test]
    fn node_power_response_round_trips(rest in trailing()) {
        let bytes = wire::encode(&NodePowerResponse::Initiated);
        prop_assert_eq!(&bytes, &vec![0]);
        prop_assert_eq!(
            wire::decode::<NodePowerResponse>(&bytes).unwrap(),
            NodePowerResponse::Initiated
        );
        let with_rest = [bytes, rest].concat();
        prop_assert_eq!(
            wire::decode_prefix::<NodePowerResponse>(&with_rest).unwrap(),
            NodePowerResponse::Initiated
        );
    }

    /// The handshake frame has exactly the layout of `docs/wire.md` for any
    /// strings and any IPv4 or IPv6 address, decodes back, and a whole-message
    /// decode refuses trailing bytes while a prefix decode ignores them.
    #[test]
    fn agent_info_round_trips_with_the_documented_layout(
        info in agent_info(),
        rest in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let bytes = wire::encode(&info);
        prop_assert_eq!(&bytes, &agent_info_layout(&info));
        prop_assert_eq!(&wire::decode::<AgentInfo>(&bytes).unwrap(), &info);
        let with_rest = [bytes, rest].concat();
        prop_assert!(wire::decode::<AgentInfo>(&with_rest).is_err());
        prop_assert_eq!(&wire::decode_prefix::<AgentInfo>(&with_rest).unwrap(), &info);
    }

    /// The handshake reply (`Result<String, String>`) round-trips with the
    /// documented layout.
    #[test]
    fn string_result_round_trips_with_the_documented_layout(result in string_result()) {
        let bytes = wire::encode(&result);
        prop_assert_eq!(&bytes, &string_result_layout(&result));
        prop_assert_eq!(&wire::decode::<Result<String, String>>(&bytes).unwrap(), &result);
    }

    /// The flat and echo reply (`Result<(), String>`) round-trips with the
    /// documented layout.
    #[test]
    fn unit_result_round_trips_with_the_documented_layout(result in unit_result()) {
        let bytes = wire::encode(&result);
        prop_assert_eq!(&bytes, &unit_result_layout(&result));
        prop_assert_eq!(&wire::decode::<Result<(), String>>(&bytes).unwrap(), &result);
    }

    /// A request payload splits back into its code and body; one shorter than
    /// a code is refused with its length.
    #[test]
    fn request_payload_splits_into_code_and_body(
        code in any::<u32>(),
        body in trailing(),
        short in prop::collection::vec(any::<u8>(), 0..REQUEST_CODE_LEN),
    ) {
        let payload = wire::encode_request(code, &body);
        let request = Request::parse(&payload).unwrap();
        prop_assert_eq!(request.code, RequestCode::from(code));
        prop_assert_eq!(request.code.code(), code);
        prop_assert_eq!(request.body, body.as_slice());
        prop_assert_eq!(Request::parse(&short).unwrap_err().0, short.len());
    }
}

// ---------------------------------------------------------------------------
// Frames.
// ---------------------------------------------------------------------------

/// `payloads` written one after another as frames.
fn frames_of(payloads: &[Vec<u8>]) -> Vec<u8> {
    block_on(async {
        let mut out = Vec::new();
        for payload in payloads {
            wire::write_frame(&mut out, payload)
                .await
                .expect("writing to a Vec");
        }
        out
    })
}

/// A limit and a header length above it, biased towards the boundary.
fn limit_and_excessive_len() -> impl Strategy<Value = (u32, u32)> {
    (0..=4096_u32).prop_flat_map(|max| {
        let over = max + 1;
        (
            Just(max),
            prop_oneof![Just(over), over..=over + 64, over..=u32::MAX],
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Frames written in a row read back in order with a limit equal to the
    /// largest, then the stream ends cleanly at the boundary.
    #[test]
    fn frames_round_trip_in_order(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
    ) {
        let bytes = frames_of(&payloads);
        let max = payloads.iter().map(Vec::len).max().unwrap_or(0);
        let max = u32::try_from(max).unwrap();
        let read = block_on(async {
            let mut reader = wire::FrameReader::new(bytes.as_slice());
            let mut read = Vec::new();
            while let Some(payload) = reader.read_frame(max).await.unwrap() {
                read.push(payload.to_vec());
            }
            read
        });
        prop_assert_eq!(read, payloads);
    }

    /// A frame cut anywhere inside is `Truncated`; cut before its first byte
    /// it is a clean end of stream.
    #[test]
    fn frame_cut_short_is_truncated(payload in prop::collection::vec(any::<u8>(), 0..64), cut in any::<Index>()) {
        let bytes = frames_of(std::slice::from_ref(&payload));
        let keep = cut.index(bytes.len());
        let read = block_on(wire::FrameReader::new(&bytes[..keep]).read_frame(u32::MAX));
        if keep == 0 {
            prop_assert!(matches!(read, Ok(None)), "{:?}", read);
        } else {
            prop_assert!(matches!(read, Err(FrameError::Truncated)), "{:?}", read);
        }
    }

    /// A header claiming more than the limit is refused with `TooLarge`
    /// naming both numbers, and the reader has read no more than its
    /// read-ahead: the body was neither read nor (the length being checked
    /// first) allocated for.
    #[test]
    fn oversized_header_is_refused_before_the_body(
        (max, len) in limit_and_excessive_len(),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = [&len.to_be_bytes()[..], &body].concat();
        let mut reader = bytes.as_slice();
        let read = block_on(wire::FrameReader::new(&mut reader).read_frame(max));
        prop_assert!(
            matches!(read, Err(FrameError::TooLarge { len: l, max: m }) if l == len && m == max),
            "{:?}", read
        );
        prop_assert!(bytes.len() - reader.len() <= wire::READ_AHEAD);
    }
}

/// The frames of `bytes` by the format's rule (4-byte big-endian length,
/// refused above `max`), and how the sequence ends, as the reader reports it.
fn frames_in(mut bytes: &[u8], max: u32) -> (Vec<Vec<u8>>, Result<(), String>) {
    let mut frames = Vec::new();
    loop {
        if bytes.is_empty() {
            return (frames, Ok(()));
        }
        let Some((header, rest)) = bytes.split_first_chunk::<4>() else {
            return (frames, Err(FrameError::Truncated.to_string()));
        };
        let len = u32::from_be_bytes(*header);
        if len > max {
            return (frames, Err(FrameError::TooLarge { len, max }.to_string()));
        }
        let Some(payload) = rest.get(..len as usize) else {
            return (frames, Err(FrameError::Truncated.to_string()));
        };
        frames.push(payload.to_vec());
        bytes = &rest[len as usize..];
    }
}

/// Bytes that arrive in chunks of the given sizes (cycled; 0 is read as 1).
struct Chunked {
    bytes: Vec<u8>,
    sizes: Vec<usize>,
    at: usize,
    read: usize,
}

impl tokio::io::AsyncRead for Chunked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let size = self.sizes[self.read % self.sizes.len()].max(1);
        let n = size.min(out.remaining()).min(self.bytes.len() - self.at);
        let at = self.at;
        out.put_slice(&self.bytes[at..at + n]);
        self.at += n;
        self.read += 1;
        std::task::Poll::Ready(Ok(()))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The agent's read-ahead reader, whatever chunks the bytes come in,
    /// reads the frames the format describes, with the same outcome at the
    /// end (clean end, truncated, too large).
    #[test]
    fn the_read_ahead_reader_reads_the_frames_of_the_format(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..150), 0..6),
        tail in prop::collection::vec(any::<u8>(), 0..100),
        sizes in prop::collection::vec(0..80_usize, 1..8),
        max in prop_oneof![Just(u32::MAX), 0..160_u32],
    ) {
        let bytes = [frames_of(&payloads), tail].concat();
        let ours = block_on(async {
            let chunked = Chunked { bytes: bytes.clone(), sizes, at: 0, read: 0 };
            let mut reader = wire::FrameReader::new(chunked);
            let mut ours = Vec::new();
            let ended = loop {
                match reader.read_frame(max).await {
                    Ok(Some(payload)) => ours.push(payload.to_vec()),
                    other => break other.map(|_| ()).map_err(|e| e.to_string()),
                }
            };
            (ours, ended)
        });
        prop_assert_eq!(ours, frames_in(&bytes, max));
    }

    /// After the frames it was asked for, the read-ahead reader hands on
    /// every following byte, in order, as the stream's own reads would: what
    /// an immediate request's stream reads after the request (the Manager's
    /// end, or more data) is never lost in the buffer.
    #[test]
    fn the_read_ahead_reader_hands_on_the_bytes_after_a_frame(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..150), 1..6),
        tail in prop::collection::vec(any::<u8>(), 0..100),
        sizes in prop::collection::vec(0..80_usize, 1..8),
    ) {
        let bytes = [frames_of(&payloads), tail.clone()].concat();
        let (read, rest) = block_on(async {
            let chunked = Chunked { bytes, sizes, at: 0, read: 0 };
            let mut reader = wire::FrameReader::new(chunked);
            let mut read = Vec::new();
            for _ in 0..payloads.len() {
                read.push(reader.read_frame(u32::MAX).await.unwrap().unwrap().to_vec());
            }
            let mut rest = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest).await.unwrap();
            (read, rest)
        });
        prop_assert_eq!(read, payloads);
        prop_assert_eq!(rest, tail);
    }
}

// ---------------------------------------------------------------------------
// The model: which power operations the contract calls for.
// ---------------------------------------------------------------------------

/// The unsigned varint bincode 2 reads for a `u32` (an enum variant index) at
/// the start of `body`: a byte up to 250 is the value, 251 and 252 announce a
/// little-endian `u16` and `u32`, anything else cannot be a `u32`. Like
/// bincode, this accepts non-canonical forms (`[251, 2, 0]` is 2).
fn leading_varint_u32(body: &[u8]) -> Option<u32> {
    match *body.first()? {
        byte @ 0..=250 => Some(u32::from(byte)),
        251 => {
            let bytes = body.get(1..3)?;
            Some(u32::from(u16::from_le_bytes([bytes[0], bytes[1]])))
        }
        252 => {
            let bytes = body.get(1..5)?;
            Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        }
        _ => None,
    }
}

/// The power request a request payload makes under the contract, if any:
/// code 4 or 21 with any body (their body is `()`), or code 106 whose body
/// starts with variant index 0 to 3.
fn power_request_in(payload: &[u8]) -> Option<NodePowerRequest> {
    let (code, body) = payload.split_first_chunk::<4>()?;
    match u32::from_le_bytes(*code) {
        4 => Some(NodePowerRequest::Reboot),
        21 => Some(NodePowerRequest::Shutdown),
        106 => {
            let index = usize::try_from(leading_varint_u32(body)?).ok()?;
            NodePowerRequest::ALL.get(index).copied()
        }
        _ => None,
    }
}

/// How the model expects a stream to end if no immediate operation ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelEnd {
    /// The bytes end at a frame boundary.
    Finished,
    /// A header claims more than the limit.
    FrameTooLarge,
    /// The bytes end inside a header or a payload.
    ReadFailed,
}

/// What the model reads from a request stream.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelStream {
    /// One element per complete frame before the end, with the power request
    /// it makes, if any.
    frames: Vec<Option<NodePowerRequest>>,
    /// What ends the stream after those frames.
    end: ModelEnd,
}

/// Splits `bytes` into frames as `docs/wire.md` describes, up to the first frame
/// that cannot be served.
fn model_stream(bytes: &[u8], max_len: u32) -> ModelStream {
    let mut frames = Vec::new();
    let mut rest = bytes;
    let end = loop {
        if rest.is_empty() {
            break ModelEnd::Finished;
        }
        let Some((header, after)) = rest.split_first_chunk::<4>() else {
            break ModelEnd::ReadFailed;
        };
        let len = u32::from_be_bytes(*header);
        if len > max_len {
            break ModelEnd::FrameTooLarge;
        }
        let len = usize::try_from(len).expect("a u32 fits in usize");
        let Some(payload) = after.get(..len) else {
            break ModelEnd::ReadFailed;
        };
        frames.push(power_request_in(payload));
        rest = &after[len..];
    };
    ModelStream { frames, end }
}

/// The recorder entry a carried-out power request leaves.
fn entry_for(request: NodePowerRequest) -> Entry {
    match request {
        NodePowerRequest::Reboot => Entry::Perform(ImmediateOp::Reboot),
        NodePowerRequest::Shutdown => Entry::Perform(ImmediateOp::PowerOff),
        NodePowerRequest::GracefulReboot => Entry::StartGraceful(GracefulOp::Reboot),
        NodePowerRequest::GracefulShutdown => Entry::StartGraceful(GracefulOp::PowerOff),
    }
}

/// Checks the carried-out operations against the requested ones.
///
/// The model cannot say exactly which requests run: after a graceful start
/// the graceful command's reaper task frees the latch at a moment of its
/// own, and a request that finds it taken is refused. What it can say, soundly:
/// - the first power request finds the latch free, so it is carried out;
/// - every operation carried out was requested, in request order (a
///   subsequence);
/// - an immediate operation ends the stream, so it can only be the last.
fn check_operations(requested: &[Entry], recorded: &[Entry]) -> Result<(), String> {
    if let Some(first) = requested.first() {
        if recorded.first() != Some(first) {
            return Err(format!(
                "the first power request ({first:?}) found the latch free and must have run"
            ));
        }
    }
    let mut wanted = requested.iter();
    for (i, op) in recorded.iter().enumerate() {
        if matches!(op, Entry::Perform(_)) && i + 1 != recorded.len() {
            return Err(format!("{op:?} ends the stream, yet operations follow it"));
        }
        if !wanted.any(|w| w == op) {
            return Err(format!("{op:?} ran but was not requested (in this order)"));
        }
    }
    Ok(())
}

#[rstest]
#[case::grouped_reboot(&[106, 0, 0, 0, 0], Some(NodePowerRequest::Reboot))]
#[case::grouped_graceful_shutdown_with_trailing_bytes(&[106, 0, 0, 0, 3, 0xde, 0xad], Some(NodePowerRequest::GracefulShutdown))]
#[case::non_canonical_u16_variant(&[106, 0, 0, 0, 251, 2, 0], Some(NodePowerRequest::GracefulReboot))]
#[case::non_canonical_u32_variant(&[106, 0, 0, 0, 252, 1, 0, 0, 0], Some(NodePowerRequest::Shutdown))]
#[case::u64_variant_marker(&[106, 0, 0, 0, 253, 0, 0, 0, 0, 0, 0, 0, 0], None)]
#[case::variant_out_of_range(&[106, 0, 0, 0, 4], None)]
#[case::u16_variant_cut_short(&[106, 0, 0, 0, 251, 0], None)]
#[case::empty_body(&[106, 0, 0, 0], None)]
#[case::flat_reboot_with_a_body(&[4, 0, 0, 0, 9, 9], Some(NodePowerRequest::Reboot))]
#[case::flat_shutdown(&[21, 0, 0, 0], Some(NodePowerRequest::Shutdown))]
#[case::big_endian_code_is_another_code(&[0, 0, 0, 106, 0], None)]
#[case::echo(&[17, 0, 0, 0], None)]
#[case::too_short_for_a_code(&[4, 0, 0], None)]
fn model_classifies_request_payloads_as_the_contract_says(
    #[case] payload: &[u8],
    #[case] expected: Option<NodePowerRequest>,
) {
    assert_eq!(power_request_in(payload), expected);
    // And the model agrees with roxyd's own parsing of the payload.
    let decoded = Request::parse(payload).ok().and_then(|r| match r.code {
        RequestCode::FlatReboot => Some(NodePowerRequest::Reboot),
        RequestCode::FlatShutdown => Some(NodePowerRequest::Shutdown),
        RequestCode::NodePower => wire::decode_prefix(r.body).ok(),
        _ => None,
    });
    assert_eq!(decoded, expected);
}

#[rstest]
#[case::nothing_requested_nothing_run(&[], &[], true)]
#[case::garbage_must_not_release(&[], &[Entry::Perform(ImmediateOp::Reboot)], false)]
#[case::first_request_must_run(&[Entry::Perform(ImmediateOp::PowerOff)], &[], false)]
#[case::later_request_may_be_refused(
    &[Entry::StartGraceful(GracefulOp::Reboot), Entry::Perform(ImmediateOp::Reboot)],
    &[Entry::StartGraceful(GracefulOp::Reboot)],
    true
)]
#[case::out_of_order(
    &[Entry::StartGraceful(GracefulOp::Reboot), Entry::StartGraceful(GracefulOp::PowerOff)],
    &[Entry::StartGraceful(GracefulOp::PowerOff), Entry::StartGraceful(GracefulOp::Reboot)],
    false
)]
#[case::nothing_after_an_immediate_operation(
    &[Entry::Perform(ImmediateOp::Reboot), Entry::StartGraceful(GracefulOp::Reboot)],
    &[Entry::Perform(ImmediateOp::Reboot), Entry::StartGraceful(GracefulOp::Reboot)],
    false
)]
fn operation_check_accepts_exactly_what_the_contract_allows(
    #[case] requested: &[Entry],
    #[case] recorded: &[Entry],
    #[case] allowed: bool,
) {
    assert_eq!(check_operations(requested, recorded).is_ok(), allowed);
}

// ---------------------------------------------------------------------------
// Serving byte streams.
// ---------------------------------------------------------------------------

/// What serving one stream did.
#[derive(Debug)]
struct Outcome {
    end: StreamEnd,
    /// Every recorder entry (dispatch steps and backend calls), for messages.
    entries: Vec<Entry>,
    /// The power operations carried out.
    operations: Vec<Entry>,
    /// The reply payloads, in order.
    replies: Vec<Vec<u8>>,
}

/// Serves `bytes` as a whole request stream (the Manager's side finished
/// after them) with a fresh recorder, reading the replies as they come so
/// that no write ever waits, then waits for any released operation to have
/// run.
fn serve(bytes: &[u8]) -> Outcome {
    let rule = "a request stream the Manager finished is served to its end, \
                and every operation it released is performed";
    block_on(support::bounded(rule, async {
        let recorder = Recorder::new();
        let config = DispatchConfig {
            max_frame_len: LIMIT,
            ..DispatchConfig::default()
        };
        let dispatcher = recorder.dispatcher(config);
        let (mut agent, mut manager) = tokio::io::duplex(1024);
        let mut recv = bytes;
        let dispatcher = &dispatcher;
        let serving = async move {
            let end = dispatcher.serve_stream(&mut recv, &mut agent).await;
            drop(agent);
            end
        };
        let reading = async move {
            let mut out = Vec::new();
            manager.read_to_end(&mut out).await.map(|_| out)
        };
        let (end, replies) = tokio::join!(serving, reading);
        // A released operation runs on a thread of its own; the latch is
        // freed once it has been recorded.
        dispatcher.power().wait_idle().await;
        let replies = replies.expect("reading the replies");
        let mut reader = wire::FrameReader::new(replies.as_slice());
        let mut payloads = Vec::new();
        while let Some(payload) = reader
            .read_frame(u32::MAX)
            .await
            .expect("replies are whole frames")
        {
            payloads.push(payload.to_vec());
        }
        Outcome {
            end,
            entries: recorder.journal().entries(),
            operations: recorder.journal().power_operations(),
            replies: payloads,
        }
    }))
}

/// Checks what serving `bytes` did against the model.
fn check_stream(bytes: &[u8]) -> Result<(), TestCaseError> {
    let model = model_stream(bytes, LIMIT);
    let outcome = serve(bytes);
    let context = || format!("model: {model:?}\noutcome: {outcome:#?}");
    for reply in &outcome.replies {
        prop_assert!(
            wire::decode_prefix::<Result<(), String>>(reply).is_ok(),
            "a reply is not a Result: {:?}\n{}",
            reply,
            context()
        );
    }
    // How many frames were served, and which operations may have run.
    let served = match &outcome.end {
        StreamEnd::Released(op) => {
            // The stream ends right after answering the released request.
            let served = outcome.replies.len();
            let released = served
                .checked_sub(1)
                .and_then(|i| model.frames.get(i).copied().flatten())
                .map(entry_for);
            prop_assert_eq!(
                released.as_ref(),
                Some(&Entry::Perform(*op)),
                "the last answered frame did not ask for the released operation\n{}",
                context()
            );
            prop_assert_eq!(
                outcome.operations.last(),
                Some(&Entry::Perform(*op)),
                "released but not performed\n{}",
                context()
            );
            served
        }
        end => {
            let (expected, replies) = match end {
                StreamEnd::Finished => (ModelEnd::Finished, model.frames.len()),
                StreamEnd::FrameTooLarge => (ModelEnd::FrameTooLarge, model.frames.len() + 1),
                StreamEnd::ReadFailed(_) => (ModelEnd::ReadFailed, model.frames.len()),
                _ => {
                    return Err(TestCaseError::fail(format!(
                        "unexpected end\n{}",
                        context()
                    )));
                }
            };
            prop_assert_eq!(model.end, expected, "{}", context());
            // No bad frame ends the stream early: each one got its reply.
            prop_assert_eq!(outcome.replies.len(), replies, "{}", context());
            prop_assert!(
                !outcome
                    .operations
                    .iter()
                    .any(|e| matches!(e, Entry::Perform(_))),
                "performed without a release\n{}",
                context()
            );
            model.frames.len()
        }
    };
    let requested: Vec<Entry> = model.frames[..served]
        .iter()
        .flatten()
        .copied()
        .map(entry_for)
        .collect();
    check_operations(&requested, &outcome.operations)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", context())))
}

/// A request frame the stream strategy builds, with what it asks for known
/// by construction.
#[derive(Clone, Debug)]
enum FrameSpec {
    /// Code 106 with the variant index in one of the varint forms bincode
    /// accepts, then bytes the decoder ignores.
    NodePower {
        request: NodePowerRequest,
        form: VarintForm,
        trailing: Vec<u8>,
    },
    /// Code 4 (reboot) or 21 (shutdown), whose body `()` any bytes decode as.
    Flat {
        request: NodePowerRequest,
        body: Vec<u8>,
    },
    /// Code 106 with a body that is no power request.
    MalformedNodePower(Vec<u8>),
    /// Any other code (echo, not supported, unknown) with any body.
    Other { code: u32, body: Vec<u8> },
    /// A payload too short to hold a request code.
    Short(Vec<u8>),
}

/// How a variant index is written.
#[derive(Clone, Copy, Debug)]
enum VarintForm {
    /// One byte, as bincode writes it.
    Canonical,
    /// 251, then a little-endian `u16`.
    U16,
    /// 252, then a little-endian `u32`.
    U32,
}

impl FrameSpec {
    /// The frame's payload: request code, then body.
    fn payload(&self) -> Vec<u8> {
        match self {
            Self::NodePower {
                request,
                form,
                trailing,
            } => {
                let index = variant_index(*request);
                let varint = match form {
                    VarintForm::Canonical => vec![index],
                    VarintForm::U16 => [&[251][..], &u16::from(index).to_le_bytes()].concat(),
                    VarintForm::U32 => [&[252][..], &u32::from(index).to_le_bytes()].concat(),
                };
                wire::encode_request(
                    RequestCode::NODE_POWER,
                    &[varint, trailing.clone()].concat(),
                )
            }
            Self::Flat { request, body } => {
                let code = match request {
                    NodePowerRequest::Reboot => RequestCode::FLAT_REBOOT,
                    _ => RequestCode::FLAT_SHUTDOWN,
                };
                wire::encode_request(code, body)
            }
            Self::MalformedNodePower(body) => wire::encode_request(RequestCode::NODE_POWER, body),
            Self::Other { code, body } => wire::encode_request(*code, body),
            Self::Short(payload) => payload.clone(),
        }
    }

    /// What the frame asks for, by construction.
    fn request(&self) -> Option<NodePowerRequest> {
        match self {
            Self::NodePower { request, .. } | Self::Flat { request, .. } => Some(*request),
            Self::MalformedNodePower(_) | Self::Other { .. } | Self::Short(_) => None,
        }
    }
}

/// What follows the frames of a generated stream.
#[derive(Clone, Debug)]
enum TailSpec {
    /// Nothing: the stream ends at a frame boundary.
    Clean,
    /// A frame cut short (at `cut`, never at its start or end).
    Truncated { frame: FrameSpec, cut: Index },
    /// A header claiming `LIMIT + 1 + excess` bytes, then well-formed frames
    /// that must never be served.
    Oversized { excess: u32, then: Vec<FrameSpec> },
}

/// A generated stream: frames, then a tail.
#[derive(Clone, Debug)]
struct StreamSpec {
    frames: Vec<FrameSpec>,
    tail: TailSpec,
}

impl StreamSpec {
    /// The whole stream's bytes.
    fn bytes(&self) -> Vec<u8> {
        let payloads: Vec<_> = self.frames.iter().map(FrameSpec::payload).collect();
        let mut out = frames_of(&payloads);
        match &self.tail {
            TailSpec::Clean => {}
            TailSpec::Truncated { frame, cut } => {
                let whole = frames_of(&[frame.payload()]);
                // Keep 1 to len - 1 bytes.
                let keep = 1 + cut.index(whole.len() - 1);
                out.extend(&whole[..keep]);
            }
            TailSpec::Oversized { excess, then } => {
                let len = LIMIT.saturating_add(1).saturating_add(*excess);
                out.extend(len.to_be_bytes());
                let payloads: Vec<_> = then.iter().map(FrameSpec::payload).collect();
                out.extend(frames_of(&payloads));
            }
        }
        out
    }

    /// What the model must read from the bytes, by construction.
    fn expected_model(&self) -> ModelStream {
        ModelStream {
            frames: self.frames.iter().map(FrameSpec::request).collect(),
            end: match self.tail {
                TailSpec::Clean => ModelEnd::Finished,
                TailSpec::Truncated { .. } => ModelEnd::ReadFailed,
                TailSpec::Oversized { .. } => ModelEnd::FrameTooLarge,
            },
        }
    }
}

/// Bodies of code 106 that are no power request: empty, a variant index out
/// of range in each varint form, a marker no `u32` has, or a varint cut short.
fn malformed_node_power_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        (4..=250_u8, trailing()).prop_map(|(b, rest)| [vec![b], rest].concat()),
        (253..=255_u8, trailing()).prop_map(|(b, rest)| [vec![b], rest].concat()),
        (4..=u16::MAX, trailing())
            .prop_map(|(v, rest)| [&[251][..], &v.to_le_bytes(), &rest].concat()),
        (4..=u32::MAX, trailing())
            .prop_map(|(v, rest)| [&[252][..], &v.to_le_bytes(), &rest].concat()),
        prop::collection::vec(any::<u8>(), 0..=1).prop_map(|b| [vec![251], b].concat()),
        prop::collection::vec(any::<u8>(), 0..=3).prop_map(|b| [vec![252], b].concat()),
    ]
}

/// Request frames, weighted so that a stream usually holds a power request
/// or two among several frames that are none.
fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    let varint_form = prop_oneof![
        3 => Just(VarintForm::Canonical),
        1 => Just(VarintForm::U16),
        1 => Just(VarintForm::U32),
    ];
    let other_code = prop_oneof![0..=120_u32, any::<u32>()].prop_filter("not a power code", |c| {
        ![
            RequestCode::FLAT_REBOOT,
            RequestCode::FLAT_SHUTDOWN,
            RequestCode::NODE_POWER,
        ]
        .contains(c)
    });
    prop_oneof![
        2 => (node_power_request(), varint_form, trailing()).prop_map(|(request, form, trailing)| {
            FrameSpec::NodePower { request, form, trailing }
        }),
        1 => (
            prop_oneof![Just(NodePowerRequest::Reboot), Just(NodePowerRequest::Shutdown)],
            trailing(),
        )
            .prop_map(|(request, body)| FrameSpec::Flat { request, body }),
        3 => malformed_node_power_body().prop_map(FrameSpec::MalformedNodePower),
        3 => (other_code, trailing()).prop_map(|(code, body)| FrameSpec::Other { code, body }),
        1 => prop::collection::vec(any::<u8>(), 0..REQUEST_CODE_LEN).prop_map(FrameSpec::Short),
    ]
}

/// Up to 9 frames, then a clean end, a frame cut short, or an oversized
/// header with frames behind it.
fn stream_spec() -> impl Strategy<Value = StreamSpec> {
    let tail = prop_oneof![
        2 => Just(TailSpec::Clean),
        1 => (frame_spec(), any::<Index>()).prop_map(|(frame, cut)| TailSpec::Truncated { frame, cut }),
        1 => (
            prop_oneof![Just(0_u32), 0..=64_u32, 0..=u32::MAX - LIMIT - 1],
            prop::collection::vec(frame_spec(), 0..4),
        )
            .prop_map(|(excess, then)| TailSpec::Oversized { excess, then }),
    ];
    (prop::collection::vec(frame_spec(), 0..10), tail)
        .prop_map(|(frames, tail)| StreamSpec { frames, tail })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The model agrees with roxyd's decoder on which code-106 bodies are
    /// power requests, for arbitrary bytes and for the malformed bodies the
    /// stream strategy builds: the model is trustworthy where it matters.
    #[test]
    fn model_agrees_with_the_decoder_on_node_power_bodies(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..12),
            malformed_node_power_body(),
        ],
    ) {
        let payload = wire::encode_request(RequestCode::NODE_POWER, &body);
        prop_assert_eq!(
            power_request_in(&payload),
            wire::decode_prefix::<NodePowerRequest>(&body).ok()
        );
    }

    /// Arbitrary bytes as a whole request stream: serving returns (no panic,
    /// no hang), every complete frame gets one reply, and the operations
    /// carried out are only ones the bytes asked for. Random bytes rarely
    /// hold a power request, so this mostly shows that garbage runs nothing.
    #[test]
    fn arbitrary_bytes_never_panic_nor_run_an_unrequested_operation(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            // Small headers, so that payloads are read and parsed too.
            prop::collection::vec(
                (0..24_u8, prop::collection::vec(any::<u8>(), 0..24))
                    .prop_map(|(len, rest)| [&[0, 0, 0, len][..], &rest].concat()),
                0..6,
            )
            .prop_map(|chunks| chunks.concat()),
        ],
    ) {
        check_stream(&bytes)?;
    }

    /// Streams mixing valid power requests (both wire forms, every varint
    /// form, trailing bytes) with malformed, short and unrelated frames, and
    /// ending cleanly, cut short or with an oversized header followed by
    /// frames that must not be served. The model must read each stream as it
    /// was built, and serving must run only what it allows.
    #[test]
    fn frame_sequences_run_only_what_the_contract_calls_for(spec in stream_spec()) {
        let bytes = spec.bytes();
        prop_assert_eq!(model_stream(&bytes, LIMIT), spec.expected_model());
        check_stream(&bytes)?;
    }

    /// A stream of frames none of which is a power request (and any tail)
    /// runs nothing at all, whatever else happens on it.
    #[test]
    fn streams_without_power_requests_run_nothing(
        frames in prop::collection::vec(
            frame_spec().prop_filter("no power request", |f| f.request().is_none()),
            0..10,
        ),
        tail in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let spec = StreamSpec { frames, tail: TailSpec::Clean };
        let bytes = [spec.bytes(), tail].concat();
        let model = model_stream(&bytes, LIMIT);
        prop_assume!(model.frames.iter().all(Option::is_none));
        let outcome = serve(&bytes);
        prop_assert_eq!(outcome.operations, Vec::<Entry>::new(), "{:#?}", outcome.entries);
        prop_assert!(!matches!(outcome.end, StreamEnd::Released(_)), "{:?}", outcome.end);
    }
}
