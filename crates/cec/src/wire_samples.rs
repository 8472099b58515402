//! The samples of the API documents, verbatim, parsed into the wire types and serialised back.
//! "Same fields" means: the same JSON once `null` members are dropped (we treat null and absent
//! alike, see [`super::wire`]).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::wire::*;

fn drop_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, drop_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(drop_nulls).collect()),
        other => other,
    }
}

/// Parses `sample` as `T`, serialises it back, and checks the JSON is the same.
fn round_trip<T: DeserializeOwned + Serialize>(sample: &str) -> T {
    let parsed: T = serde_json::from_str(sample).unwrap_or_else(|e| panic!("{e}: {sample}"));
    let back = serde_json::to_value(&parsed).unwrap();
    let original: Value = serde_json::from_str(sample).unwrap();
    assert_eq!(
        drop_nulls(back),
        drop_nulls(original),
        "round trip of {sample}"
    );
    parsed
}

#[test]
fn token_by_ak_sk_samples() {
    let req: TokenByAkSkRequest = round_trip(
        r#"{ "app_key": "xxxxxxxxxxxxxxxxxxxx", "app_secret": "yyyyyyyyyyyyyyyyyyyy" }"#,
    );
    assert!(
        !format!("{req:?}").contains("yyyy"),
        "the secret must not show in Debug"
    );
    let rsp: TokenByAkSkResponse = round_trip(
        r#"{ "AccessToken": "zzzzzzzzzzzzzzzzzzzz", "ApplyType": "Bearer", "CreateTime": "1545650171", "Expires": "600", "Scope": "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "AppKey": "xxxxxxxxxxxxxxxx", "UserID": "Anonymous" }"#,
    );
    assert_eq!(rsp.expires.as_deref(), Some("600"));
    // Expires as a number is accepted too.
    let n: TokenByAkSkResponse =
        serde_json::from_str(r#"{"AccessToken":"a","Expires":600}"#).unwrap();
    assert_eq!(n.expires.as_deref(), Some("600"));
}

#[test]
fn apply_token_samples() {
    let req: ApplyTokenRequest = round_trip(
        r#"{ "userId": "XXXXXXXXXX", "userName": "XXXXXXXX", "channelId": "XXXXXXXXXXXX", "locale": "zh" }"#,
    );
    assert_eq!(req.locale, "zh");
    // The document's sample answer, `{ "XXXX" }`, is not JSON; the table's form is used.
    assert!(
        serde_json::from_str::<ApplyTokenResponse>(
            r#"{ "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX" }"#
        )
        .is_err()
    );
    let rsp: ApplyTokenResponse = round_trip(r#"{"token":"t","resultCode":"0"}"#);
    assert_eq!(rsp.result_code, "0");
}

/// Every `send` request sample of both documents.
const SEND_REQUESTS: &[&str] = &[
    r#"{ "content": "", "controlType": "CONNECT", "from": "session_1619573111751_user_1619573111751", "mediaType": "TEXT", "senderNickname": "user_1619573111751", "sourceType": "CUSTOMER", "timestamp": "1619573122352", "to": "1011577355744904195", "userAgent": null, "senderAvatar": null, "channel": "WEB" }"#,
    r#"{ "content": "版本", "controlType": "CHAT", "from": "session_1619573111751_user_1619573111751", "mediaType": "TEXT", "senderNickname": "user_1619573111751", "sourceType": "CUSTOMER", "timestamp": "1619573123199", "to": "1011577355744904195", "userAgent": null, "senderAvatar": null, "channel": "WEB" }"#,
    r#"{ "content": "", "controlType": "TRANS2AGENT", "from": "session_1619573111751_user_1619573111751", "mediaType": "TEXT", "senderNickname": "user_1619573111751", "sourceType": "CUSTOMER", "timestamp": "1619573129953", "to": "1011577355744904195", "userAgent": null, "senderAvatar": null, "channel": "WEB" }"#,
    r#"{ "content": "这是一条文字消息", "controlType": "CHAT", "from": "1678101150955228003", "mediaType": "TEXT", "senderNickname": "user_lk", "sourceType": "CUSTOMER", "timestamp": "1688038541395", "to": "202303061540344336", "userAgent": null, "senderAvatar": null, "channel": "WEB" }"#,
    r#"{ "content": "e31d0e44e82f", "controlType": "CHAT", "from": "lk_line_05", "mediaType": "IMAGE", "senderNickname": "lk_line_05", "sourceType": "CUSTOMER", "timestamp": "1688038541395", "to": "202303061540640554", "userAgent": null, "senderAvatar": null, "channel": "LINE" }"#,
    r#"{ "content": "157831a24986", "controlType": "CHAT", "from": "lk_line_05", "mediaType": "AUDIO", "senderNickname": "lk_line_05", "sourceType": "CUSTOMER", "timestamp": "1688038541395", "to": "202303061540640554", "userAgent": null, "senderAvatar": null, "channel": "LINE" }"#,
    r#"{ "content": "765c360ab724", "controlType": "CHAT", "from": "lk_line_05", "mediaType": "VIDEO", "senderNickname": "lk_line_05", "sourceType": "CUSTOMER", "timestamp": "1688038541395", "to": "202303061540640554", "userAgent": null, "senderAvatar": null, "channel": "LINE" }"#,
    r#"{ "content": "test_txt.txt,6,7d9fbcdd-e306-4b84-9831-163fb760cca9,txt", "controlType": "CHAT", "from": "1678101150955228003", "mediaType": "FILE", "senderNickname": "user_lk", "sourceType": "CUSTOMER", "timestamp": "1688038541395", "to": "202303061540344336", "userAgent": null, "senderAvatar": null, "channel": "WEB" }"#,
    r#"{ "content": "70d46bb7-2272-43b7-acad-c6f893a79848,png", "controlType": "CHAT", "from": "1678101150955228003", "mediaType": "FILE_IMAGE", "senderNickname": "user_lk", "sourceType": "CUSTOMER", "timestamp": "1688038541395", "to": "202303061540344336", "userAgent": null, "senderAvatar": null, "channel": "WEB" }"#,
    r#"{ "content": "0471a58b-0323-4b94-bc90-55ff36344471,mp4", "controlType": "CHAT", "from": "1678101150955228003", "mediaType": "FILE_VIDEO", "senderNickname": "user_lk", "sourceType": "CUSTOMER", "timestamp": "1688038541395", "to": "202303061540344336", "userAgent": null, "senderAvatar": null, "channel": "WEB" }"#,
    r#"{ "content": "{\"title\":\"测试title 测试title 测试title\",\"description\":\"测试描述 测试描述 测试描述 测试描述\",\"mediaFileId\":\"xxxx-xxxx-xxxx-xxxx-2e171ac78313\",\"mediaFileType\":\"img\",\"redirectUrl\":\"https://www.****.com\"}", "controlType": "CHAT", "from": "session_1619573111751_user_1619573111751", "mediaType": "WEBCARD", "senderNickname": "user_1619573111751", "sourceType": "CUSTOMER", "timestamp": "1619573129953", "to": "1011577355744904195", "userAgent": null, "senderAvatar": null, "channel": "WEB" }"#,
    r#"{ "content": "", "controlType": "DISCONNECT", "from": "session_1619573842490_user_1619573842490", "mediaType": "TEXT", "senderNickname": "user_1619573842490", "sourceType": "CUSTOMER", "timestamp": "1619573854156", "to": "1011577355744904195", "userAgent": null, "senderAvatar": null, "channel": "WEB" }"#,
];

const SEND_RESPONSES: &[&str] = &[
    r#"{ "resultCode": "0", "resultDesc": "connect to robot success." }"#,
    r#"{ "resultCode": "0", "resultDesc": "connect to robot successfully." }"#,
    r#"{ "resultCode": "0", "resultDesc": "Send message to robot successfully" }"#,
    r#"{ "resultCode": "0", "resultDesc": "transfer from robot to agent success." }"#,
    r#"{ "resultCode": "0", "resultDesc": "sendUserMessage successfully." }"#,
    r#"{ "resultCode": "3", "resultDesc": "The redirection address is not in the trust list, contact operation staff to add it." }"#,
    r#"{ "resultCode": "0", "resultDesc": "Disconnect robot successfully" }"#,
];

#[test]
fn send_samples() {
    for s in SEND_REQUESTS {
        let req: SendRequest = round_trip(s);
        assert!(!req.control_type.is_empty());
    }
    for s in SEND_RESPONSES {
        let _: SendResponse = round_trip(s);
    }
    // offlineMsg as documented in the send page's table.
    let off: SendResponse = round_trip(
        r#"{"resultCode":"13","resultDesc":"connect failed","offlineMsg":{"isOfflineStatus":true,"tipText":"left as an offline message"}}"#,
    );
    assert!(off.is_offline());
}

#[test]
fn poll_sample() {
    let sample = r#"{ "resultCode": "0", "resultDesc": "query user messages success.",
"downlinkMessages": [ { "from": "1011577355744904195", "channel": "WEB",
"to": "session_fixed_user_fixed", "controlType": "CHAT", "mediaType": "TEXT",
"content": "欢迎欢迎，热烈欢迎", "simQuestions": null, "senderNickname":
"test", "senderAvatar": "1", "timestamp": 1619590480756, "sourceType":
"ROBOT", "callId": null, "robotGender": "MALE" }, { "from":
"1011577355744904195", "channel": "WEB", "to": "session_fixed_user_fixed", "controlType": "CHAT", "mediaType":
"TEXT", "content": "转人工",
"simQuestions": null, "senderNickname": "test", "senderAvatar": "1",
"timestamp": 1619590482098, "sourceType": "ROBOT", "callId": null,
"robotGender": "MALE" }, { "from": "1011577355744904195", "channel":
"WEB", "to": "session_fixed_user_fixed", "controlType": "CHAT", "mediaType":
"TEXT", "content": "已接通座席。", "simQuestions": null, "senderNickname":
"系统", "senderAvatar": null, "timestamp": 1619590484115, "sourceType":
"SYSTEM", "callId": null, "robotGender": null } ] }"#;
    let rsp: PollResponse = round_trip(sample);
    assert_eq!(rsp.downlink_messages.len(), 3);
    assert_eq!(
        rsp.downlink_messages[2].source_type.as_deref(),
        Some("SYSTEM")
    );
    assert_eq!(
        rsp.downlink_messages[0].timestamp,
        Some(StrOrNum::Int(1619590480756))
    );
}

#[test]
fn poll_tolerates_the_forms_the_documents_disagree_on() {
    // timestamp as a string (the table), resultCode as a number, downlinkMessages null,
    // unknown fields kept.
    let rsp: PollResponse = serde_json::from_str(
        r#"{"resultCode":0,"downlinkMessages":[{"content":"x","timestamp":"1619590480756","interIdx":2,"vendorX":{"a":1}}]}"#,
    )
    .unwrap();
    assert_eq!(rsp.result_code, "0");
    let m = &rsp.downlink_messages[0];
    assert_eq!(m.timestamp, Some(StrOrNum::Str("1619590480756".into())));
    assert_eq!(m.inter_idx.as_deref(), Some("2"));
    assert_eq!(m.extra["vendorX"]["a"], 1);
    let empty: PollResponse =
        serde_json::from_str(r#"{"resultCode":"0","downlinkMessages":null}"#).unwrap();
    assert!(empty.downlink_messages.is_empty());
    let missing: PollResponse = serde_json::from_str(r#"{"resultCode":"0"}"#).unwrap();
    assert!(missing.downlink_messages.is_empty());
}

#[test]
fn result_code_is_also_read_as_return_code() {
    // The saveSatisfaction and uploadFileStream samples answer `returnCode`.
    let r: SendResponse = serde_json::from_str(r#"{ "returnCode": "0" }"#).unwrap();
    assert_eq!(r.result_code, "0");
}
