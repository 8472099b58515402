//! Every result code the documents list, provoked in the simulator, reaches the caller unchanged:
//! resultCode and resultDesc in RPC replies and events, HTTP statuses as `upstreamCode` with
//! whether a retry may help. (`send`'s own codes: `cec_relay::documented_send_result_codes_…`.)

use serde_json::json;
use sim::{Endpoint, Fault};

use crate::support::app::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mobile_agent_and_robot_feedback_codes_reach_the_caller_unchanged() {
    let mut t = spawn_app().await;
    let mut w = t.watch(TENANT, "codes").await;
    t.up(
        "codes",
        json!({"controlType": "CONNECT", "messageId": "c0"}),
    )
    .await;
    w.until(10, "connected", is_result_for("c0")).await;

    // v1/mobileagent/createcall, resultCode table (webchannel doc §14).
    for (code, desc) in [
        ("3001000001", "没有开通此特性，无法使用"),
        ("3001000002", "没有查到SIP Server 信息"),
        ("3001000003", "入参校验失败"),
        ("30010010001", "添加外呼任务失败"),
        ("30010010002", "VDN不可用"),
        ("30010010003", "VDN配置异常，Record Path生成失败"),
        ("30010019999", "CCM其他异常"),
        ("30011010001", "创建呼叫失败，未等到呼叫建立成功事件"),
        ("30011019999", "CCUCS其他异常"),
        ("30010009999", "Chat模块异常"),
    ] {
        t.sim
            .force_result(Endpoint::MobileAgentCreateCall, code, desc, 1);
        let r = t
            .rpc(
                TENANT,
                "mobileAgentCall",
                &json!({"called": "88884432", "callerPresent": "95599"}),
            )
            .await;
        assert_eq!(
            (&r["ok"], &r["resultCode"], &r["resultDesc"]),
            (&json!(false), &json!(code), &json!(desc)),
            "{r}"
        );
    }

    // v1/robot/feedbacksatisfaction (§15): the reply and the satisfaction.saved event say the same.
    for (i, (code, desc)) in [
        (
            "30000000008",
            "满意度调查时, 不满意情况下, feedbackContent 不允许未空",
        ),
        ("10010000002", "接口流控失败"),
        ("30010009999", "Chat模块异常"),
        ("10010000001", "接口认证失败"),
    ]
    .into_iter()
    .enumerate()
    {
        t.sim.force_result(Endpoint::RobotFeedback, code, desc, 1);
        let idx = format!("{}", i + 1);
        let r = t
            .rpc(
                TENANT,
                "robotFeedback",
                &json!({"from": "codes", "feedback": 1, "interIdx": idx}),
            )
            .await;
        assert_eq!(
            (&r["ok"], &r["resultCode"], &r["resultDesc"]),
            (&json!(false), &json!(code), &json!(desc)),
            "{r}"
        );
        let e = w
            .until(10, "satisfaction.saved", |_, v| {
                v["type"] == "satisfaction.saved" && v["resultCode"] == code
            })
            .await;
        assert_eq!((&e["ok"], &e["resultDesc"]), (&json!(false), &json!(desc)));
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_statuses_reach_the_caller_as_upstream_codes_with_their_retryability() {
    let mut t = spawn_app().await;
    let mut w = t.watch(TENANT, "http").await;
    t.up("http", json!({"controlType": "CONNECT", "messageId": "h0"}))
        .await;
    w.until(10, "connected", is_result_for("h0")).await;

    // An RPC is answered at once: the status, and whether trying again may help.
    for (status, retryable) in [(400u16, false), (404, false), (500, true)] {
        t.sim
            .inject_fault(Fault::status(Endpoint::QueryQueueInfo, status).times(1));
        let r = t.rpc(TENANT, "queueInfo", &json!({"userId": "http"})).await;
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["upstreamCode"], status.to_string(), "{r}");
        assert_eq!(r["error"]["retryable"], retryable, "{r}");
        let want = if retryable { "unavailable" } else { "upstream" };
        assert_eq!(r["error"]["code"], want, "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&status.to_string()),
            "{r}"
        );
    }
    // 401 once: the relay renews the tokens and retries, and the caller never sees it.
    t.sim
        .inject_fault(Fault::status(Endpoint::QueryQueueInfo, 401).times(1));
    let r = t.rpc(TENANT, "queueInfo", &json!({"userId": "http"})).await;
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(
        r["resultCode"], "1",
        "answered by the upstream: not queued; {r}"
    );
    // 401 for good: final, and said so.
    t.sim
        .inject_fault(Fault::status(Endpoint::QueryQueueInfo, 401));
    let r = t.rpc(TENANT, "queueInfo", &json!({"userId": "http"})).await;
    assert_eq!(
        (&r["error"]["upstreamCode"], &r["error"]["retryable"]),
        (&json!("401"), &json!(false)),
        "{r}"
    );
    t.sim.clear_faults();

    // An UpMessage: a 500 is retried until it gets through; a 400 is final, in up.result.
    t.sim
        .inject_fault(Fault::status(Endpoint::Send, 500).times(2));
    t.up(
        "http",
        json!({"content": "through a 500", "messageId": "h1"}),
    )
    .await;
    let r = w.until(20, "h1", is_result_for("h1")).await;
    assert_eq!(
        (&r["ok"], &r["resultCode"]),
        (&json!(true), &json!("0")),
        "{r}"
    );
    t.sim
        .inject_fault(Fault::status(Endpoint::Send, 400).times(1));
    t.up("http", json!({"content": "into a 400", "messageId": "h2"}))
        .await;
    let r = w.until(10, "h2", is_result_for("h2")).await;
    assert_eq!(
        (&r["ok"], &r["resultCode"]),
        (&json!(false), &json!("400")),
        "{r}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_upstream_s_size_limit_is_refused_clearly() {
    use base64::Engine as _;
    let mut t = spawn_app_with(sim::SimConfig {
        max_file_bytes: 1_000,
        ..Default::default()
    })
    .await;
    let mut w = t.watch(TENANT, "big").await;
    t.up("big", json!({"controlType": "CONNECT", "messageId": "g0"}))
        .await;
    w.until(10, "connected", is_result_for("g0")).await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let big = b64.encode(vec![7u8; 1_001]);
    let r = t
        .rpc(
            TENANT,
            "upload",
            &json!({"userId": "big", "fileType": "png", "fileStream": big}),
        )
        .await;
    assert_eq!(
        (&r["ok"], &r["resultCode"], &r["resultDesc"]),
        (
            &json!(false),
            &json!("3"),
            &json!("Requested param validate failed.")
        ),
        "{r}"
    );
    // The same file in an UpMessage: its up.result says why, and nothing was sent.
    t.up(
        "big",
        json!({"messageId": "g1", "file": {"name": "a.png", "type": "png", "data": big}}),
    )
    .await;
    let e = w.until(10, "g1", is_result_for("g1")).await;
    assert_eq!(
        (&e["ok"], &e["resultCode"]),
        (&json!(false), &json!("3")),
        "{e}"
    );
    assert!(
        t.sim
            .received("big")
            .iter()
            .all(|r| r.request.message_id.as_deref() != Some("g1"))
    );
    // Just under the limit goes through.
    let ok = b64.encode(vec![7u8; 1_000]);
    let r = t
        .rpc(
            TENANT,
            "upload",
            &json!({"userId": "big", "fileType": "png", "fileStream": ok}),
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    t.stop().await;
}
