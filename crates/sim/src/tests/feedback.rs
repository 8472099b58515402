//! saveSatisfaction, doLeaveMessage, v1/robot/feedbacksatisfaction and queryPhraseByKeyword:
//! answers field by field, every documented code, what is recorded, and the headers checked.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::Client;
use crate::{LeaveMessage, RobotFeedback, Satisfaction, SimConfig};

const SATISFACTION: &str = "/apiaccess/ccmessaging/saveSatisfaction";
const LEAVE: &str = "/apiaccess/ccmessaging/doLeaveMessage";
const ROBOT: &str = "/apiaccess/ccmessaging/v1/robot/feedbacksatisfaction";
const PHRASE: &str = "/apiaccess/ccmessaging/queryPhraseByKeyword";
const CHANNEL_ID: &str = "1011577355744904195";

fn rating(user: &str, evaluation: &str, comment: &str) -> Value {
    json!({ "channel": "WEB", "userId": user, "evaluation": evaluation, "comment": comment, "channelConfigId": CHANNEL_ID })
}

#[tokio::test]
async fn save_satisfaction_records_the_rating_of_the_latest_session() {
    let c = Client::new(SimConfig::default()).await;
    let (t, call_id) = c.connected("u1").await;
    c.send_ok("u1", &t, "DISCONNECT", "").await;
    let a = c
        .post(SATISFACTION, Some(&t), rating("u1", "5", "满意"))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.value(),
        json!({ "resultCode": "0", "resultDesc": "Save satisfaction success!" })
    );
    assert_eq!(
        c.sim.satisfactions(),
        vec![Satisfaction {
            user_id: "u1".into(),
            call_id,
            evaluation: 5,
            comment: "满意".into(),
            channel_config_id: CHANNEL_ID.into(),
        }]
    );
    // Table 6-4's wrapped form works too, and a 511-character comment is still "< 512".
    let long = "好".repeat(511);
    let wrapped = json!({ "satisfication": rating("u1", "1", &long) });
    let a = c.post(SATISFACTION, Some(&t), wrapped).await;
    assert_eq!(a.value()["resultCode"], "0");
    let all = c.sim.satisfactions();
    assert_eq!((all.len(), all[1].evaluation), (2, 1));
    assert_eq!(all[1].comment, long);
}

#[tokio::test]
async fn save_satisfaction_without_any_session_answers_13_call_id_failed() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    let a = c
        .post(SATISFACTION, Some(&t), rating("u1", "4", "ok"))
        .await;
    assert_eq!(
        a.value(),
        json!({ "resultCode": "13", "resultDesc": "The callIdString obtained failed!" })
    );
    assert!(c.sim.satisfactions().is_empty());
}

#[tokio::test]
async fn save_satisfaction_out_of_limits_answers_13_save_failed() {
    let c = Client::new(SimConfig::default()).await;
    let (t, _) = c.connected("u1").await;
    let mut wrong_channel = rating("u1", "3", "x");
    wrong_channel["channel"] = json!("APP");
    let mut wrong_config = rating("u1", "3", "x");
    wrong_config["channelConfigId"] = json!("42");
    let mut no_user = rating("u1", "3", "x");
    no_user.as_object_mut().expect("object").remove("userId");
    let mut no_comment = rating("u1", "3", "x");
    no_comment
        .as_object_mut()
        .expect("object")
        .remove("comment");
    for body in [
        rating("u1", "0", "x"),
        rating("u1", "6", "x"),
        rating("u1", "five", "x"),
        rating("u1", "3", &"a".repeat(512)),
        wrong_channel,
        wrong_config,
        no_user,
        no_comment,
    ] {
        let a = c.post(SATISFACTION, Some(&t), body.clone()).await;
        assert_eq!(
            a.value(),
            json!({ "resultCode": "13", "resultDesc": "Save satisfaction failed" }),
            "{body}"
        );
    }
    assert!(c.sim.satisfactions().is_empty());
}

#[tokio::test]
async fn save_satisfaction_checks_all_three_headers_and_the_user() {
    let c = Client::new(SimConfig::default()).await;
    let (t1, _) = c.connected("u1").await;
    let (t2, _) = c.connected("u2").await;
    let a = c.post(SATISFACTION, None, rating("u1", "5", "x")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = c
        .post(SATISFACTION, Some(&t2), rating("u1", "5", "x"))
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "u2's token for u1");
    let req = axum::http::Request::post(SATISFACTION)
        .header("content-type", "application/json")
        .header("ccmessaging-token", &t1)
        .body(axum::body::Body::from(rating("u1", "5", "x").to_string()))
        .expect("request");
    let a = c.request(req).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "no x-app-key");
    assert_eq!(a.value()["check"], "x-app-key");
    assert!(c.sim.satisfactions().is_empty());
}

fn leave(call_id: Value, caller: Value, message: Value, channel: Value) -> Value {
    json!({ "callId": call_id, "caller": caller, "leaveMessage": message, "channel": channel })
}

#[tokio::test]
async fn do_leave_message_records_the_message() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    let body = leave(
        json!("11111222111"),
        json!("1386667777"),
        json!("请回复电话"),
        json!("WEB"),
    );
    let a = c.post(LEAVE, Some(&t), body).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.value(),
        json!({ "resultCode": "0", "resultDesc": "Save leaveMessage success!" })
    );
    assert_eq!(
        c.sim.leave_messages(),
        vec![LeaveMessage {
            user_id: "u1".into(),
            call_id: "11111222111".into(),
            caller: "1386667777".into(),
            leave_message: "请回复电话".into(),
        }]
    );
}

#[tokio::test]
async fn do_leave_message_answers_2_for_null_and_3_for_bad_params() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    let (id, caller, msg, web) = (json!("1"), json!("138"), json!("hi"), json!("WEB"));
    let null = json!({ "resultCode": "2", "resultDesc": "Param is null" });
    let bad = json!({ "resultCode": "3", "resultDesc": "Requested param validate failed." });
    for body in [
        leave(json!(""), caller.clone(), msg.clone(), web.clone()),
        leave(id.clone(), Value::Null, msg.clone(), web.clone()),
        leave(id.clone(), caller.clone(), json!(""), web.clone()),
        json!({ "callId": "1", "caller": "138", "leaveMessage": "hi" }),
    ] {
        let a = c.post(LEAVE, Some(&t), body.clone()).await;
        assert_eq!(a.value(), null, "{body}");
    }
    for body in [
        leave(id.clone(), caller.clone(), msg.clone(), json!("APP")),
        leave(id.clone(), json!(138), msg.clone(), web.clone()),
    ] {
        let a = c.post(LEAVE, Some(&t), body.clone()).await;
        assert_eq!(a.value(), bad, "{body}");
    }
    assert!(c.sim.leave_messages().is_empty());
    let a = c.post(LEAVE, None, leave(id, caller, msg, web)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn robot_feedback_records_satisfied_and_dissatisfied_feedback() {
    let c = Client::new(SimConfig::default()).await;
    let (t, _) = c.connected("u1").await;
    let ok = json!({ "resultCode": "0", "resultDesc": "Send message to robot successfully" });
    let bodies = [
        json!({ "feedback": 1, "from": "u1", "interIdx": "1" }),
        json!({ "feedback": "1", "from": "u1", "interIdx": 2 }),
        json!({ "feedback": 0, "feedbackContent": "dissatisfied", "from": "u1", "interIdx": "2" }),
        // 21 three-byte characters and one byte: exactly 64 bytes.
        json!({ "feedback": "0", "feedbackContent": format!("{}a", "差".repeat(21)), "from": "u1", "interIdx": "3" }),
    ];
    for body in bodies {
        let a = c.post(ROBOT, Some(&t), body.clone()).await;
        assert_eq!(a.value(), ok, "{body}");
    }
    let fb = |feedback, content: Option<String>, idx: &str| RobotFeedback {
        user_id: "u1".into(),
        feedback,
        feedback_content: content,
        inter_idx: idx.into(),
    };
    assert_eq!(
        c.sim.robot_feedbacks(),
        vec![
            fb(1, None, "1"),
            fb(1, None, "2"),
            fb(0, Some("dissatisfied".into()), "2"),
            fb(0, Some(format!("{}a", "差".repeat(21))), "3"),
        ]
    );
}

#[tokio::test]
async fn robot_feedback_refuses_dissatisfaction_without_content_and_bad_bodies() {
    let c = Client::new(SimConfig::default()).await;
    let (t, _) = c.connected("u1").await;
    for body in [
        json!({ "feedback": 0, "from": "u1", "interIdx": "1" }),
        json!({ "feedback": "0", "feedbackContent": "", "from": "u1", "interIdx": "1" }),
    ] {
        let a = c.post(ROBOT, Some(&t), body.clone()).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.value()["resultCode"], "30000000008", "{body}");
    }
    for body in [
        json!({ "feedback": 2, "from": "u1", "interIdx": "1" }),
        json!({ "feedback": "yes", "from": "u1", "interIdx": "1" }),
        json!({ "feedback": 1, "interIdx": "1" }),
        json!({ "feedback": 1, "from": "u1" }),
        // 22 three-byte characters: 66 bytes, over the 64-byte limit.
        json!({ "feedback": 0, "feedbackContent": "差".repeat(22), "from": "u1", "interIdx": "1" }),
    ] {
        let a = c.post(ROBOT, Some(&t), body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
    }
    let a = c
        .post(
            ROBOT,
            Some(&t),
            json!({ "feedback": 1, "from": "u2", "interIdx": "1" }),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "from is not the token's user"
    );
    assert!(c.sim.robot_feedbacks().is_empty());
}

fn phrase(content: &str) -> Value {
    json!({ "strContent": content, "locale": "zh", "channel": "WEB" })
}

#[tokio::test]
async fn query_phrase_by_keyword_answers_the_matching_phrases_as_question() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    let a = c.post(PHRASE, Some(&t), phrase("网格")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.value(),
        json!({
            "question": ["网格版APP在哪里下载", "网格版APP怎么登录?", "网格版APP支持什么手机版本"],
            "resultCode": "0"
        })
    );
    let a = c.post(PHRASE, Some(&t), phrase("PASSWORD")).await;
    assert_eq!(
        a.value()["question"],
        json!(["How do I reset my password?"])
    );
    let a = c.post(PHRASE, Some(&t), phrase("nothing like it")).await;
    assert_eq!(a.value(), json!({ "question": [], "resultCode": "0" }));

    // Table 10-3 makes x-app-key and Authorization optional: the token alone is enough.
    let req = axum::http::Request::post(PHRASE)
        .header("content-type", "application/json")
        .header("ccmessaging-token", &t)
        .body(axum::body::Body::from(phrase("网格").to_string()))
        .expect("request");
    let a = c.request(req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.value()["question"].as_array().map(Vec::len), Some(3));
    let a = c.post(PHRASE, None, phrase("网格")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "the token is required");
}

#[tokio::test]
async fn query_phrase_by_keyword_answers_1_when_it_cannot_look_up() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    let expect = |desc: &str| json!({ "question": [], "resultCode": "1", "resultDesc": desc });
    let a = c.post(PHRASE, Some(&t), phrase("")).await;
    assert_eq!(a.value(), expect("request is no exist"));
    let a = c
        .post(
            PHRASE,
            Some(&t),
            json!({ "strContent": "网格", "locale": "zh", "channel": "APP" }),
        )
        .await;
    assert_eq!(a.value(), expect("request is no exist"));
    let a = c
        .post(
            PHRASE,
            Some(&t),
            json!({ "strContent": "网格", "channel": "WEB" }),
        )
        .await;
    assert_eq!(a.value(), expect("locale is error"));

    let c = Client::new(SimConfig {
        robot: false,
        ..SimConfig::default()
    })
    .await;
    let t = c.apply_token("u1").await;
    let a = c.post(PHRASE, Some(&t), phrase("网格")).await;
    assert_eq!(a.value(), expect("Robot is no exist"));
}
