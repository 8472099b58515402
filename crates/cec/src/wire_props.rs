//! Property tests: the parsers of upstream answers never panic on any input, and what they accept
//! survives a round trip.

use proptest::prelude::*;
use serde_json::Value;

use super::wire::*;

/// Arbitrary JSON, biased towards the shapes the upstream sends.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        prop_oneof![
            Just("0"),
            Just("13"),
            Just("CHAT"),
            Just("DISCONNECT"),
            Just("AGENT")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let keys = prop_oneof![
            Just("resultCode".to_owned()),
            Just("resultDesc".to_owned()),
            Just("downlinkMessages".to_owned()),
            Just("content".to_owned()),
            Just("timestamp".to_owned()),
            Just("messageCode".to_owned()),
            Just("controlType".to_owned()),
            Just("offlineMsg".to_owned()),
            Just("isOfflineStatus".to_owned()),
            Just("token".to_owned()),
            "[a-zA-Z]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn upstream_answers_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<PollResponse>(&bytes);
        let _ = serde_json::from_slice::<SendResponse>(&bytes);
        let _ = serde_json::from_slice::<ApplyTokenResponse>(&bytes);
        let _ = serde_json::from_slice::<TokenByAkSkResponse>(&bytes);
    }

    #[test]
    fn poll_answers_that_parse_round_trip(v in json()) {
        let _ = serde_json::from_value::<SendResponse>(v.clone());
        if let Ok(p) = serde_json::from_value::<PollResponse>(v) {
            let again: PollResponse = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
            prop_assert_eq!(again, p);
        }
    }

    #[test]
    fn downlink_messages_keep_every_field(v in json()) {
        if let Ok(m) = serde_json::from_value::<DownlinkMessage>(v) {
            let again: DownlinkMessage = serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
            prop_assert_eq!(again, m);
        }
    }
}
