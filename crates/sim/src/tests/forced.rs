//! Forced result codes, and faults, statistics and token renewal on the newer endpoints.

use axum::http::StatusCode;
use serde_json::json;

use super::Client;
use crate::{Endpoint, Fault, SimConfig};

const SATISFACTION: &str = "/apiaccess/ccmessaging/saveSatisfaction";
const MOBILE: &str = "/apiaccess/ccmessaging/v1/mobileagent/createcall";
const UPLOAD: &str = "/apiaccess/ccmessaging/uploadFileStream";

fn rating() -> serde_json::Value {
    json!({ "channel": "WEB", "userId": "u1", "evaluation": "5", "comment": "ok", "channelConfigId": "1011577355744904195" })
}

#[tokio::test]
async fn a_forced_result_replaces_the_next_answers_without_processing() {
    let c = Client::new(SimConfig::default()).await;
    let (t, _) = c.connected("u1").await;
    c.sim
        .force_result(Endpoint::SaveSatisfaction, "0", "Exception appeared!", 2);
    for _ in 0..2 {
        let a = c.post(SATISFACTION, Some(&t), rating()).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.value(),
            json!({ "resultCode": "0", "resultDesc": "Exception appeared!" })
        );
    }
    assert!(
        c.sim.satisfactions().is_empty(),
        "forced answers process nothing"
    );
    let a = c.post(SATISFACTION, Some(&t), rating()).await;
    assert_eq!(a.value()["resultDesc"], "Save satisfaction success!");
    assert_eq!(c.sim.satisfactions().len(), 1);
    assert_eq!(c.sim.stats().calls(Endpoint::SaveSatisfaction), 3);
}

#[tokio::test]
async fn the_control_route_forces_codes_the_tenant_never_produces() {
    let c = Client::new(SimConfig::default()).await;
    let a = c
        .post_plain(
            "/sim/cec/force-result",
            json!({ "endpoint": "mobileAgentCreateCall", "resultCode": "3001000002", "resultDesc": "no SIP server", "times": 1 }),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let body = json!({ "called": "88884432" });
    let a = c.post(MOBILE, None, body.clone()).await;
    assert_eq!(
        a.value(),
        json!({ "resultCode": "3001000002", "resultDesc": "no SIP server" })
    );
    assert_eq!(c.post(MOBILE, None, body).await.value()["resultCode"], "0");

    // `times` defaults to one and `any` matches every endpoint.
    c.post_plain(
        "/sim/cec/force-result",
        json!({ "endpoint": "any", "resultCode": "13" }),
    )
    .await;
    let a = c.post(MOBILE, None, json!({ "called": "1" })).await;
    assert_eq!(a.value(), json!({ "resultCode": "13", "resultDesc": "" }));
    let a = c.post(MOBILE, None, json!({ "called": "1" })).await;
    assert_eq!(a.value()["resultCode"], "0");
    let a = c
        .post_plain(
            "/sim/cec/force-result",
            json!({ "endpoint": "robotFeedback", "resultCode": "10010000002", "colour": 1 }),
        )
        .await;
    assert!(a.status.is_client_error(), "unknown fields are refused");
}

#[tokio::test]
async fn faults_and_statistics_cover_the_new_endpoints() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    c.sim
        .inject_fault(Fault::status(Endpoint::UploadFileStream, 503).times(1));
    let body = json!({ "fileType": "txt", "fileStream": "aGk=", "channel": "WEB" });
    let a = c.post(UPLOAD, Some(&t), body.clone()).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let a = c.post(UPLOAD, Some(&t), body).await;
    assert_eq!(a.value()["resultCode"], "0");
    let s = c.sim.stats();
    assert_eq!(s.calls(Endpoint::UploadFileStream), 2);
    assert_eq!(s.endpoints[&Endpoint::UploadFileStream].faults, 1);
    assert_eq!(s.endpoints.len(), Endpoint::COUNTED.len());
    let names: Vec<String> = Endpoint::COUNTED
        .iter()
        .map(|e| {
            serde_json::to_value(e)
                .expect("name")
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names[5..],
        [
            "saveSatisfaction",
            "uploadFileStream",
            "downloadFileStream",
            "queryPhraseByKeyword",
            "createClickToCall",
            "getClickToCallEvents",
            "checkClickToCallSupport",
            "dropClickToCall",
            "doLeaveMessage",
            "mobileAgentCreateCall",
            "robotFeedback",
        ]
    );
}

#[tokio::test]
async fn an_expired_token_is_renewed_on_the_new_endpoints_during_a_session() {
    let c = Client::new(SimConfig::default()).await;
    let (t, _) = c.connected("u1").await;
    c.sim.expire_cc_tokens();
    let a = c.post(SATISFACTION, Some(&t), rating()).await;
    assert_eq!(a.value()["resultCode"], "0");
    let renewed = a.renewed_token().expect("a renewed token");
    let a = c.post(SATISFACTION, Some(&t), rating()).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "the old token stopped working"
    );
    let a = c.post(SATISFACTION, Some(&renewed), rating()).await;
    assert_eq!(a.value()["resultCode"], "0", "the renewed one works");
}
