//! Wire types of the web-channel endpoints that are not messages (§4, §6, §8–§17 of Huawei Cloud
//! CEC 2.5.0.0.0, *User Access — Web Client Access (RESTful)*, which every `§` here cites):
//! queue info, satisfaction, files, phrases, click-to-call, leave-messages, mobile-agent calls and
//! robot feedback. The rules of [`super::wire`] apply: accept every form the documents show, send
//! the documented one.

use serde::{Deserialize, Serialize};

use super::wire::{StrOrNum, lenient};

/// The answer of the endpoints that return only a result (saveSatisfaction, createClickToCall,
/// dropClickToCall, doLeaveMessage, robot feedbacksatisfaction). The saveSatisfaction sample
/// answers `returnCode`: accepted as `resultCode`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResultResponse {
    #[serde(alias = "returnCode", default, deserialize_with = "lenient::string")]
    pub result_code: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_desc: Option<String>,
}

fn opt_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(lenient::opt_string(d)?.and_then(|s| s.trim().parse().ok()))
}

/// §4 queryQueueInfo request (table 4-1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfoRequest {
    pub user_id: String,
    pub channel_config_id: String,
    pub channel: String,
}

/// §4 RspMsg200 (table 4-2). Integers; strings holding integers accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfoResponse {
    #[serde(
        default,
        deserialize_with = "opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub position: Option<i64>,
    #[serde(
        default,
        deserialize_with = "opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub total_wait_time: Option<i64>,
    #[serde(
        default,
        deserialize_with = "opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub current_device_wait_time: Option<i64>,
    /// Spelled `configMaxcWaitTime` by the document.
    #[serde(
        default,
        deserialize_with = "opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub config_maxc_wait_time: Option<i64>,
    #[serde(
        default,
        deserialize_with = "opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub longest_wait_time: Option<i64>,
    #[serde(
        default,
        deserialize_with = "opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub estimate_wait_time: Option<i64>,
    #[serde(alias = "returnCode", default, deserialize_with = "lenient::string")]
    pub result_code: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_desc: Option<String>,
}

/// §6 satisficationInfo (table 6-2). `evaluation` is a string "1"–"5"; a number is accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SatisfactionRequest {
    pub channel: String,
    pub user_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub evaluation: String,
    #[serde(default)]
    pub comment: String,
    pub channel_config_id: String,
}

/// §8 uploadFileStream request (table 8-1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UploadRequest {
    pub file_type: String,
    /// Base64 of the file.
    pub file_stream: String,
    pub channel: String,
}

/// §8 RspBody (table 8-2); the sample answers `returnCode`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UploadResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,
    #[serde(alias = "returnCode", default, deserialize_with = "lenient::string")]
    pub result_code: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_desc: Option<String>,
}

/// §9 downloadFileStream request (table 9-1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DownloadRequest {
    pub file_id: String,
    pub channel: String,
    pub file_type: String,
}

/// §9 RspBody (table 9-2). The sample has no `resultCode`: absent reads as "".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DownloadResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_stream: Option<String>,
    #[serde(alias = "returnCode", default, deserialize_with = "lenient::string")]
    pub result_code: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_desc: Option<String>,
}

/// §10 queryPhraseByKeyword request (table 10-1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PhraseRequest {
    pub str_content: String,
    pub locale: String,
    pub channel: String,
}

/// §10 RspBody: the table names the list `phrases` (type string), the sample `question` (an
/// array). Both names and both forms are accepted; it is serialised as the sample's `question`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PhraseResponse {
    #[serde(
        rename = "question",
        alias = "phrases",
        default,
        deserialize_with = "string_list"
    )]
    pub phrases: Vec<String>,
    #[serde(alias = "returnCode", default, deserialize_with = "lenient::string")]
    pub result_code: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_desc: Option<String>,
}

/// A list given as an array of strings, one string, or null.
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Many(Vec<Option<String>>),
        One(String),
    }
    Ok(match Option::<Form>::deserialize(d)? {
        None => Vec::new(),
        Some(Form::Many(v)) => v.into_iter().flatten().collect(),
        Some(Form::One(s)) if s.is_empty() => Vec::new(),
        Some(Form::One(s)) => vec![s],
    })
}

/// §11 createClickToCall request (table 11-2). `mediaAbility`: "0" audio, "1" video.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClickToCallRequest {
    pub channel: String,
    #[serde(deserialize_with = "lenient::string")]
    pub media_ability: String,
}

/// §14 dropClickToCall request (table 14-2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChannelOnly {
    pub channel: String,
}

/// §12 getClickToCallEvents answer (table 12-3). The sample is not JSON (unquoted keys, missing
/// commas) and gives `eventId` as a number where the table says string: both forms accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClickToCallEventsResponse {
    #[serde(default, deserialize_with = "lenient::string")]
    pub result_code: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<StrOrNum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ClickToCallEventContent>,
}

/// §12 `content` (table 12-3, 1.4.x).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClickToCallEventContent {
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub cause_desc: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub cause_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_code: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub domain: Option<String>,
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub gw_addresses: Vec<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub click_to_call_caller: Option<String>,
}

/// §13 checkClickToCallSupport answer (table 13-3). The table spells `webRTCsupported`, the
/// sample `webRTCSupported`: both accepted, the sample's sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClickToCallSupportResponse {
    #[serde(
        rename = "webRTCSupported",
        alias = "webRTCsupported",
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub web_rtc_supported: Option<bool>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub click_to_call_supported: Option<bool>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub result_code: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_desc: Option<String>,
}

/// §15 doLeaveMessage request (table 15-2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaveMessageRequest {
    pub call_id: String,
    pub caller: String,
    pub leave_message: String,
    pub channel: String,
}

/// §16 mobileagent/createcall request (table 16-2): `called` ≤ 32, `callData` ≤ 1024,
/// `callerPresent` ≤ 32.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MobileAgentCallRequest {
    pub called: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_data: Option<String>,
    pub caller_present: String,
}

/// §16 answer (table 16-3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MobileAgentCallResponse {
    #[serde(default, deserialize_with = "lenient::string")]
    pub result_code: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_data: Option<MobileAgentCallData>,
}

/// §16 `resultData` (the sample's `accesscode` is lower case, as the table's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MobileAgentCallData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_serial_no: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip_service_address: Option<String>,
    #[serde(
        rename = "accesscode",
        alias = "accessCode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub access_code: Option<String>,
}

/// §17 robot feedbacksatisfaction request (table 17-2). `feedback` is an integer (1 satisfied,
/// 0 not); a string is accepted. `feedbackContent` is required, ≤ 64 bytes, when it is 0.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RobotFeedbackRequest {
    #[serde(deserialize_with = "int_lenient")]
    pub feedback: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_content: Option<String>,
    pub from: String,
    #[serde(deserialize_with = "lenient::string")]
    pub inter_idx: String,
}

fn int_lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let s = lenient::string(d)?;
    s.trim()
        .parse()
        .map_err(|_| serde::de::Error::custom(format!("expected an integer, found {s:?}")))
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::Value;

    use super::*;

    fn round_trip<T: DeserializeOwned + Serialize>(sample: &str) -> T {
        let parsed: T = serde_json::from_str(sample).unwrap_or_else(|e| panic!("{e}: {sample}"));
        let back = serde_json::to_value(&parsed).unwrap();
        let original: Value = serde_json::from_str(sample).unwrap();
        assert_eq!(back, original, "round trip of {sample}");
        parsed
    }

    #[test]
    fn queue_info_samples() {
        let _: QueueInfoRequest =
            round_trip(r#"{ "userId":"xxxx", "channelConfigId":"xxxxx", "channel":"WEB" }"#);
        let r: QueueInfoResponse = round_trip(
            r#"{ "totalWaitTime": 3, "resultCode": "0", "longestWaitTime": 3, "position": 1, "currentDeviceWaitTime": 3, "configMaxcWaitTime": 60, "estimateWaitTime": 60 }"#,
        );
        assert_eq!(r.position, Some(1));
        let s: QueueInfoResponse =
            serde_json::from_str(r#"{"position":"4","resultCode":0}"#).unwrap();
        assert_eq!((s.position, s.result_code.as_str()), (Some(4), "0"));
    }

    #[test]
    fn satisfaction_samples() {
        let r: SatisfactionRequest = round_trip(
            r#"{ "channel": "WEB", "userId": "XXXXXXXX", "evaluation": "5", "comment": "满意", "channelConfigId": "XXXXXXXX" }"#,
        );
        assert_eq!(r.evaluation, "5");
        let a: ResultResponse = serde_json::from_str(r#"{ "returnCode": "0" }"#).unwrap();
        assert_eq!(a.result_code, "0");
    }

    #[test]
    fn file_samples() {
        let _: UploadRequest = round_trip(
            r#"{ "fileType": "jpg", "channel": "WEB", "fileStream": "/9j/4AAQSkZJRgABAQEAYABgAAD/2wBDAAMCAgMCAgMDAwMEAwMEBQgFBQQEBQoHBwYlp3+7j8a/PP/gqXP5/7QXh9tu3/Alpi34z/ANPV3SpXfxCP/9k=" }"#,
        );
        let u: UploadResponse = serde_json::from_str(
            r#"{ "returnCode": "0", "objectKey": "44992392-2078-4caa-af3f-16cc328db296" }"#,
        )
        .unwrap();
        assert_eq!(
            u.object_key.as_deref(),
            Some("44992392-2078-4caa-af3f-16cc328db296")
        );
        assert_eq!(u.result_code, "0");
        let _: DownloadRequest = round_trip(
            r#"{ "fileType": "jpg", "channel": "WEB", "fileId": "XXXXXXXXXXXXXXXXXX" }"#,
        );
        let d: DownloadResponse =
            serde_json::from_str(r#"{ "fileStream": "/9j/4AAQSkZJRgABAQEAYABgAAD/" }"#).unwrap();
        assert!(d.file_stream.is_some());
    }

    #[test]
    fn phrase_samples() {
        let _: PhraseRequest =
            round_trip(r#"{ "strContent": "网格", "locale": "zh", "channel": "WEB" }"#);
        let r: PhraseResponse = round_trip(
            r#"{ "question": [ "网格版APP在哪里下载", "网格版APP怎么登录? ", "网格版APP支持什么手机版本", "登录APP网格版后，没有扫街下单、网格一本账等功能菜单权限", "PC端中屏网格系统怎么登录" ], "resultCode": "0" }"#,
        );
        assert_eq!(r.phrases.len(), 5);
        let t: PhraseResponse =
            serde_json::from_str(r#"{"phrases":"one","resultCode":"0"}"#).unwrap();
        assert_eq!(t.phrases, vec!["one"]);
    }

    #[test]
    fn click_to_call_samples() {
        let _: ClickToCallRequest = round_trip(r#"{ "channel": "WEB", "mediaAbility": "0" }"#);
        let _: ResultResponse = round_trip(r#"{ "resultCode": "0", "resultDesc": "null" }"#);
        // The document's events sample, with its JSON mistakes corrected.
        let e: ClickToCallEventsResponse = serde_json::from_str(
            r#"{ "resultCode":"0", "resultDesc":"Call connected", "eventId": 168101, "content": { "domain":"xxx", "gwAddresses":["xx1","xx2"], "accessCode": "179080000537636", "clickToCallCaller":"AnonymousCard" } }"#,
        )
        .unwrap();
        assert_eq!(e.event_id.and_then(|i| i.as_i64()), Some(168101));
        assert_eq!(e.content.unwrap().gw_addresses, vec!["xx1", "xx2"]);
        let s: ClickToCallSupportResponse = round_trip(
            r#"{ "resultCode": "0", "resultDesc": "", "webRTCSupported": true, "clickToCallSupported": true }"#,
        );
        assert_eq!(s.web_rtc_supported, Some(true));
        let t: ClickToCallSupportResponse =
            serde_json::from_str(r#"{"webRTCsupported":false}"#).unwrap();
        assert_eq!(t.web_rtc_supported, Some(false));
        let _: ChannelOnly = round_trip(r#"{ "channel": "WEB" }"#);
        let _: ResultResponse = round_trip(r#"{ "resultCode": "0", "resultDesc": "" }"#);
    }

    #[test]
    fn leave_message_samples() {
        let _: LeaveMessageRequest = round_trip(
            r#"{ "callId": "11111222111", "caller": "1386667777", "leaveMessage": "请回复电话", "channel": "WEB" }"#,
        );
        let _: ResultResponse =
            round_trip(r#"{ "resultCode": "0", "resultDesc": "Save leaveMessage success!" }"#);
    }

    #[test]
    fn mobile_agent_samples() {
        let _: MobileAgentCallRequest =
            round_trip(r#"{ "called": "88884432", "callData": "1", "callerPresent": "95599" }"#);
        let r: MobileAgentCallResponse = round_trip(
            r#"{ "resultCode": "0", "resultDesc": "Success", "resultData": { "sipServiceAddress": "10.137.203.215:5063", "accesscode": "179080024609291" } }"#,
        );
        assert_eq!(
            r.result_data.unwrap().access_code.as_deref(),
            Some("179080024609291")
        );
    }

    #[test]
    fn robot_feedback_samples() {
        let r: RobotFeedbackRequest = round_trip(
            r#"{ "feedback":0, "feedbackContent":"dissatisfied", "from":"1111111", "interIdx":"2" }"#,
        );
        assert_eq!(r.feedback, 0);
        let s: RobotFeedbackRequest =
            serde_json::from_str(r#"{"feedback":"1","from":"u","interIdx":2}"#).unwrap();
        assert_eq!((s.feedback, s.inter_idx.as_str()), (1, "2"));
        assert!(
            serde_json::from_str::<RobotFeedbackRequest>(
                r#"{"feedback":"yes","from":"u","interIdx":"1"}"#
            )
            .is_err()
        );
        let _: ResultResponse = round_trip(
            r#"{ "resultCode": "0", "resultDesc": "Send message to robot successfully" }"#,
        );
    }
}
