//! Every decoder input from outside the process gets a typed error, never a
//! panic: malformed, oversized, wrong-version, unknown-variant, bad ids.
#![expect(clippy::unwrap_used, reason = "tests")]

use fleet_core::protocol::{
    AgentMsg, ClaimMsg, ClaimReply, DaemonMsg, DecodeError, JobMsg, MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION, Record, decode, encode,
};
use proptest::prelude::*;

const REQUEST: &str =
    r#"{"v":1,"msg":{"type":"request","claim_id":"c1","workspace":"team-a","pool":"linux"}}"#;

#[test]
fn a_minimal_request_decodes_with_defaults() {
    let msg: ClaimMsg = decode(REQUEST.as_bytes()).unwrap();
    let ClaimMsg::Request(r) = msg else {
        panic!("not a request")
    };
    assert_eq!(r.lease_ttl_ms, 300_000);
    assert_eq!(r.priority, 0);
}

#[test]
fn unknown_fields_are_ignored() {
    let with_extra = REQUEST.replace(
        r#""pool":"linux""#,
        r#""pool":"linux","from_the_future":{"x":1}"#,
    );
    assert!(decode::<ClaimMsg>(with_extra.as_bytes()).is_ok());
    let top = REQUEST.replace(r#"{"v":1,"#, r#"{"v":1,"trace":"abc","#);
    assert!(decode::<ClaimMsg>(top.as_bytes()).is_ok());
}

#[test]
fn each_failure_has_its_own_error() {
    let cases: &[(&str, &str)] = &[
        ("not json at all", "malformed"),
        (r#"{"v":1,"msg":{"type":"request""#, "malformed"),
        (r#"{"msg":{"type":"renew"}}"#, "missing_version"),
        (r#"{"v":2,"msg":{}}"#, "version"),
        (
            r#"{"v":1,"msg":{"type":"teleport","claim_id":"c1"}}"#,
            "unknown_variant",
        ),
        (
            r#"{"v":1,"msg":{"type":"renew","workspace":"a.b","claim_id":"c1"}}"#,
            "invalid",
        ),
        (
            r#"{"v":1,"msg":{"type":"renew","workspace":"ws"}}"#,
            "invalid",
        ),
        (r#"{"v":"1","msg":{}}"#, "invalid"),
    ];
    for (input, kind) in cases {
        let err = decode::<ClaimMsg>(input.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), *kind, "{input}: {err}");
        assert!(!err.is_retryable());
    }
    let err = decode::<ClaimMsg>(br#"{"v":9,"msg":{}}"#).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Version {
            got: 9,
            expected: PROTOCOL_VERSION
        }
    );
    assert!(err.to_string().contains("v9"));
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        decode::<ClaimMsg>(&big).unwrap_err(),
        DecodeError::TooLarge {
            len: MAX_MESSAGE_BYTES + 1,
            max: MAX_MESSAGE_BYTES
        }
    );
}

#[test]
fn encode_round_trips() {
    let msg: ClaimMsg = decode(REQUEST.as_bytes()).unwrap();
    let back: ClaimMsg = decode(&encode(&msg).unwrap()).unwrap();
    assert_eq!(back, msg);
}

fn decode_all(bytes: &[u8]) {
    // Only the absence of a panic matters here; every result is fine.
    let _ = decode::<ClaimMsg>(bytes);
    let _ = decode::<ClaimReply>(bytes);
    let _ = decode::<AgentMsg>(bytes);
    let _ = decode::<DaemonMsg>(bytes);
    let _ = decode::<JobMsg>(bytes);
    let _ = decode::<Record>(bytes);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(pos in 0usize..REQUEST.len(), byte in any::<u8>(), cut in 0usize..REQUEST.len()) {
        let mut bytes = REQUEST.as_bytes().to_vec();
        bytes[pos] = byte;
        decode_all(&bytes);
        decode_all(&REQUEST.as_bytes()[..cut]);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow(depth in 100usize..5_000) {
        let s = format!(r#"{{"v":1,"msg":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        prop_assert!(decode::<ClaimMsg>(s.as_bytes()).is_err());
    }
}
