//! The call log over HTTP: polls and Tencent calls from relays that name different instances in
//! their `User-Agent`, read back with `GET /sim/calls`, paged with `since`, emptied with `DELETE`.

use std::time::Duration;

use secrecy::SecretString;

use crate::{CallKind, CallRecord, SimConfig, spawn};
use ::cec::CecClient;
use ::config::{CecTenant, TimApp};
use ::tim::TimClient;
use ::tim::wire::{MsgElement, SendMsgRequest};

fn tenant(base: &str) -> CecTenant {
    let sc = SimConfig::default();
    CecTenant::simulated(
        "acme",
        url::Url::parse(base).unwrap(),
        &sc.app_key,
        &sc.app_secret,
        &sc.channel_config_id,
    )
}

fn tim_app(base: &str) -> TimApp {
    let sc = SimConfig::default().tim;
    TimApp {
        name: "shop".into(),
        base_url: url::Url::parse(base).unwrap(),
        sdkappid: sc.sdkappid,
        secret_key: Some(SecretString::from(sc.secret_key)),
        secret_key_file: None,
        admin_identifier: sc.admin_identifier,
        callback_token: None,
        callback_token_file: None,
        allow_unsigned_callbacks: false,
        rate_limit: 200,
        request_timeout: Duration::from_secs(5),
        sig_expire: Duration::from_secs(86400),
        stream_idle_timeout: Duration::from_secs(30),
    }
}

async fn get_calls(http: &reqwest::Client, base: &str, query: &str) -> Vec<CallRecord> {
    let rsp = http
        .get(format!("{base}/sim/calls{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), reqwest::StatusCode::OK);
    rsp.json().await.unwrap()
}

#[tokio::test]
async fn polls_and_tencent_calls_are_logged_with_the_instance_that_made_them() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let base = sim.base_url();
    let a = CecClient::new(
        CecClient::http_client_for("relay-a").unwrap(),
        tenant(&base),
    );
    let b = CecClient::new(
        CecClient::http_client_for("relay-b").unwrap(),
        tenant(&base),
    );
    sim.agent_say("alice", "hello");
    sim.agent_say("alice", "are you there?");
    // One after the other: their times cannot overlap.
    assert_eq!(a.poll("alice").await.unwrap().downlink_messages.len(), 2);
    assert_eq!(b.poll("bob").await.unwrap().downlink_messages.len(), 0);
    assert_eq!(a.poll("alice").await.unwrap().downlink_messages.len(), 0);
    let tim = TimClient::new(
        CecClient::http_client_for("relay-b").unwrap(),
        tim_app(&base),
    );
    tim.send_msg(&SendMsgRequest {
        session_id: None,
        from_account: Some("agent1".into()),
        to_account: Some("carol".into()),
        msg_random: ::tim::wire::msg_random("m1"),
        msg_body: vec![MsgElement::text("hi")],
        cloud_custom_data: None,
        exclude_from_user_resp_timeout: None,
    })
    .await
    .unwrap();

    let http = reqwest::Client::new();
    let polls = get_calls(&http, &base, "?kind=poll").await;
    let seen: Vec<_> = polls
        .iter()
        .map(|r| {
            (
                r.instance.as_deref().unwrap_or("-"),
                r.user_id.as_deref().unwrap_or("-"),
                r.token_user.as_deref().unwrap_or("-"),
                r.messages,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("relay-a", "alice", "alice", 2),
            ("relay-b", "bob", "bob", 0),
            ("relay-a", "alice", "alice", 0),
        ],
        "{polls:#?}"
    );
    for r in &polls {
        assert_eq!(r.kind, CallKind::Poll);
        assert_eq!(r.tenant.as_deref(), Some("sim-app-key"));
        assert_eq!((r.status, r.result.as_deref()), (200, Some("0")));
        assert!(r.start_us <= r.end_us, "{r:?}");
        assert!(r.start_unix_ms <= r.end_unix_ms, "{r:?}");
    }
    for w in polls.windows(2) {
        assert!(w[0].seq < w[1].seq, "{polls:#?}");
        assert!(w[0].end_us <= w[1].start_us, "overlapping: {polls:#?}");
    }

    // Every kind, in the order the calls ended; the Tencent send last.
    let all = get_calls(&http, &base, "").await;
    let send = all.last().unwrap();
    assert_eq!(send.kind, CallKind::SendMsg, "{all:#?}");
    assert_eq!(send.instance.as_deref(), Some("relay-b"));
    assert_eq!(send.tenant.as_deref(), Some("1400000000"));
    assert_eq!(send.user_id.as_deref(), Some("carol"));
    assert_eq!(send.token_user.as_deref(), Some("administrator"));
    assert_eq!((send.messages, send.result.as_deref()), (1, Some("0")));
    assert!(polls.last().unwrap().end_us <= send.start_us);
    // No credential is in the log.
    let text = serde_json::to_string(&all).unwrap();
    assert!(
        !text.contains("usersig") && !text.contains("Bearer"),
        "{text}"
    );

    // Paging: after the first poll's number, the rest; a limit.
    let rest = get_calls(&http, &base, &format!("?since={}", polls[0].seq)).await;
    assert_eq!(rest.first().map(|r| r.seq), Some(polls[0].seq + 1));
    assert_eq!(
        rest.len(),
        all.len() - 1 - (polls[0].seq - all[0].seq) as usize
    );
    assert_eq!(get_calls(&http, &base, "?limit=1").await.len(), 1);
    assert_eq!(sim.calls(0), all);

    // Emptied, the numbering goes on.
    let rsp = http
        .delete(format!("{base}/sim/calls"))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), reqwest::StatusCode::NO_CONTENT);
    assert!(get_calls(&http, &base, "").await.is_empty());
    a.poll("alice").await.unwrap();
    let after = get_calls(&http, &base, "").await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].seq, send.seq + 1);

    // A bad query is refused.
    let rsp = http
        .get(format!("{base}/sim/calls?kind=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), reqwest::StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_refused_poll_is_logged_without_a_result_and_a_zero_capacity_logs_nothing() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let http = reqwest::Client::new();
    let rsp = http
        .get(format!(
            "{}/apiaccess/ccmessaging/poll?receiverId=zoe&channel=WEB",
            sim.base_url()
        ))
        .header("user-agent", "curl/8")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), reqwest::StatusCode::UNAUTHORIZED);
    let calls = sim.calls(0);
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let r = &calls[0];
    assert_eq!(
        (
            r.instance.as_deref(),
            r.user_id.as_deref(),
            r.token_user.as_deref()
        ),
        (None, Some("zoe"), None)
    );
    assert_eq!((r.status, r.messages, r.result.as_deref()), (401, 0, None));

    let off = spawn(SimConfig {
        call_log_capacity: 0,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let c = CecClient::new(
        CecClient::http_client_for("relay-a").unwrap(),
        tenant(&off.base_url()),
    );
    c.poll("alice").await.unwrap();
    assert!(off.calls(0).is_empty());
}
