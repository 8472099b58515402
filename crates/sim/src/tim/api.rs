//! The simulated Tencent endpoints: counting, faults, the rate limit, the query and UserSig
//! checks, then send_msg's de-duplication and send_stream_msg's MsgKey state; every call is
//! logged in the call log.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::{Data, TimMessage, TimSim, TimSimEndpoint, TimStream, lock};
use crate::calllog::{Answered, Call, CallKind};
use ::tim::error::code;
use ::tim::usersig;
use ::tim::wire::MAX_BODY_BYTES;

pub(crate) const SEND_PATH: &str = "/v4/desk_http_svc/send_msg";
pub(crate) const STREAM_PATH: &str = "/v4/openim_robot_http_svc/send_stream_msg";

/// REST common codes the query checks answer.
const HTTP_PARSE: i64 = 60002;
const ACCOUNT_OR_SIG: i64 = 60004;
const NEEDS_ADMIN: i64 = 60010;
const NEEDS_SDKAPPID: i64 = 60012;
const NO_SUCH_SDKAPPID: i64 = 70020;

pub(super) fn routes() -> Router<TimSim> {
    Router::new()
        .route(SEND_PATH, post(send_msg))
        .route(STREAM_PATH, post(send_stream_msg))
}

async fn send_msg(
    State(sim): State<TimSim>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    sim.logged_call(TimSimEndpoint::SendMsg, &headers, q, body)
        .await
}

async fn send_stream_msg(
    State(sim): State<TimSim>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    sim.logged_call(TimSimEndpoint::SendStreamMsg, &headers, q, body)
        .await
}

/// The value of `key` in a query string.
fn query_value(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The user a call is about: send_msg's `ToAccount` (else its `SessionId`), send_stream_msg's
/// `To_Account`.
fn call_user(ep: TimSimEndpoint, body: &[u8]) -> Option<String> {
    let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let text = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_owned);
    match ep {
        TimSimEndpoint::SendMsg => text("ToAccount").or_else(|| text("SessionId")),
        TimSimEndpoint::SendStreamMsg => text("To_Account"),
    }
}

/// HTTP 200 `ActionStatus` OK, with `extra` fields.
fn ok(extra: Map<String, Value>) -> Response {
    let mut body = Map::new();
    body.insert("ActionStatus".into(), "OK".into());
    body.insert("ErrorInfo".into(), "".into());
    body.insert("ErrorCode".into(), 0.into());
    body.extend(extra);
    Answered::mark(axum::Json(Value::Object(body)).into_response(), "0", 1)
}

/// A Tencent-level refusal: answered as [`fail`].
struct Refusal {
    code: i64,
    info: String,
}

impl Refusal {
    fn new(code: i64, info: &str) -> Self {
        Refusal {
            code,
            info: info.to_owned(),
        }
    }

    fn answer(&self) -> Response {
        fail(self.code, &self.info)
    }
}

/// HTTP 200 `ActionStatus` FAIL.
pub(super) fn fail(code: i64, info: &str) -> Response {
    let response =
        axum::Json(json!({"ActionStatus": "FAIL", "ErrorInfo": info, "ErrorCode": code}))
            .into_response();
    Answered::mark(response, &code.to_string(), 0)
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl TimSim {
    /// [`TimSim::call`], logged in the call log.
    async fn logged_call(
        &self,
        ep: TimSimEndpoint,
        headers: &HeaderMap,
        query: Option<String>,
        body: Bytes,
    ) -> Response {
        let calls = &self.shared.calls;
        let Some(begun) = calls.begin(headers) else {
            return self.call(ep, query, body).await;
        };
        let q = query.as_deref().unwrap_or("");
        let call = Call {
            kind: match ep {
                TimSimEndpoint::SendMsg => CallKind::SendMsg,
                TimSimEndpoint::SendStreamMsg => CallKind::SendStreamMsg,
            },
            tenant: query_value(q, "sdkappid"),
            user_id: call_user(ep, &body),
            token_user: query_value(q, "identifier"),
        };
        let response = self.call(ep, query, body).await;
        calls.finish(begun, call, &response);
        response
    }

    async fn call(&self, ep: TimSimEndpoint, query: Option<String>, body: Bytes) -> Response {
        let over_limit = self.count_call();
        if let Some(f) = self.take_fault(ep) {
            let delay = Duration::from_millis(f.delay_ms.unwrap_or(0));
            if f.is_delay_only() {
                // Detached, so the call is processed even if the client stops waiting, as a
                // slow server would (a timed-out send is accepted; its retry is a duplicate).
                let sim = self.clone();
                let task = tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    sim.process(ep, over_limit, query, &body)
                });
                return task.await.unwrap_or_else(|e| {
                    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                });
            }
            tokio::time::sleep(delay).await;
            if let Some(status) = f.status {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return (status, "simulated fault").into_response();
            }
            let info = f.error_info.as_deref().unwrap_or("simulated fault");
            return fail(f.error_code.unwrap_or(code::DESK_INTERNAL), info);
        }
        self.process(ep, over_limit, query, &body)
    }

    /// Everything after faults: the rate limit, the query, the body.
    fn process(
        &self,
        ep: TimSimEndpoint,
        over_limit: bool,
        query: Option<String>,
        body: &[u8],
    ) -> Response {
        if over_limit {
            lock(&self.shared.data).stats.rate_limited += 1;
            return fail(
                code::SIM_RATE_LIMIT,
                "REST 接口调用频率超过限制,请降低请求频率。",
            );
        }
        if let Err(refused) = self.check_query(ep, query.as_deref().unwrap_or("")) {
            return refused.answer();
        }
        match ep {
            TimSimEndpoint::SendMsg => self.desk_send(body),
            TimSimEndpoint::SendStreamMsg => self.robot_stream(body),
        }
    }

    /// Counts a call in its wall-clock second; whether it is over the rate limit.
    fn count_call(&self) -> bool {
        let second = unix_now().as_secs();
        let mut d = lock(&self.shared.data);
        d.stats.calls += 1;
        if d.window.0 != second {
            d.window = (second, 0);
        }
        d.window.1 += 1;
        let n = d.window.1;
        d.stats.max_calls_in_one_second = d.stats.max_calls_in_one_second.max(n);
        n > self.shared.cfg.rate_limit
    }

    /// The query string and the UserSig. `Err` is the answer.
    fn check_query(&self, ep: TimSimEndpoint, query: &str) -> Result<(), Refusal> {
        let cfg = &self.shared.cfg;
        let mut sdkappid = None;
        let mut identifier = None;
        let mut sig = None;
        let mut random = None;
        let mut contenttype = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "sdkappid" => sdkappid = Some(v.into_owned()),
                "identifier" => identifier = Some(v.into_owned()),
                "usersig" => sig = Some(v.into_owned()),
                "random" => random = Some(v.into_owned()),
                "contenttype" => contenttype = Some(v.into_owned()),
                _ => {}
            }
        }
        let rejected = |c: i64, info: &str| {
            lock(&self.shared.data).stats.sig_rejected += 1;
            Err(Refusal::new(c, info))
        };
        let Some(sdkappid) = sdkappid else {
            return rejected(NEEDS_SDKAPPID, "REST 接口需要带 SDKAppID");
        };
        if sdkappid.parse::<u64>().ok() != Some(cfg.sdkappid) {
            return rejected(NO_SUCH_SDKAPPID, "SDKAppID 不存在");
        }
        let (Some(identifier), Some(sig)) = (identifier, sig) else {
            return rejected(ACCOUNT_OR_SIG, "identifier or usersig missing");
        };
        if random.and_then(|r| r.parse::<u32>().ok()).is_none() {
            return Err(Refusal::new(
                HTTP_PARSE,
                "random must be a 32-bit unsigned integer",
            ));
        }
        if contenttype.as_deref() != Some("json") {
            return Err(Refusal::new(HTTP_PARSE, "contenttype must be json"));
        }
        if let Err(e) = usersig::verify(
            &sig,
            &cfg.secret_key,
            cfg.sdkappid,
            &identifier,
            unix_now().as_secs(),
        ) {
            return rejected(e.tim_code(), &e.to_string());
        }
        if identifier != cfg.admin_identifier {
            let c = match ep {
                TimSimEndpoint::SendMsg => code::NOT_ADMIN,
                TimSimEndpoint::SendStreamMsg => NEEDS_ADMIN,
            };
            return Err(Refusal::new(c, "请求需要 App 管理员权限。"));
        }
        Ok(())
    }

    /// send_msg's body rules and de-duplication by MsgRandom.
    fn desk_send(&self, body: &[u8]) -> Response {
        if body.len() > MAX_BODY_BYTES {
            return fail(code::TOO_LONG, "JSON 数据包超长,消息包体请不要超过12K。");
        }
        let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(body) else {
            return fail(code::JSON_PARSE, "JSON 格式解析失败");
        };
        let Some(msg_random) = b
            .get("MsgRandom")
            .and_then(Value::as_u64)
            .and_then(|r| u32::try_from(r).ok())
        else {
            return fail(code::MSG_RANDOM, "MsgRandom 字段缺失或不是 Integer 类型");
        };
        let msg_body = match b.get("MsgBody") {
            Some(Value::Array(a)) if !a.is_empty() => Value::Array(a.clone()),
            Some(Value::Array(_)) => return fail(code::DESK_PARAM, "MsgBody is empty"),
            _ => return fail(code::MSG_BODY, "MsgBody 类型不是 Array 类型"),
        };
        let text = |k: &str| -> Result<Option<String>, Refusal> {
            match b.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(Refusal::new(
                    code::DESK_PARAM,
                    &format!("{k} must be a String"),
                )),
            }
        };
        let (session_id, from_account, to_account, cloud) = match (
            text("SessionId"),
            text("FromAccount"),
            text("ToAccount"),
            text("CloudCustomData"),
        ) {
            (Ok(s), Ok(f), Ok(t), Ok(c)) => (s, f, t, c),
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return e.answer(),
        };
        let exclude = match b.get("ExcludeFromUserRespTimeout") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n @ (0 | 1)) => Some(n as u8),
                _ => {
                    return fail(
                        code::DESK_PARAM,
                        "ExcludeFromUserRespTimeout must be 0 or 1",
                    );
                }
            },
        };
        let addressing = match (&session_id, &from_account, &to_account) {
            (Some(s), _, _) if !s.is_empty() => format!("session:{s}"),
            (_, Some(f), Some(t)) if !f.is_empty() && !t.is_empty() => {
                format!("accounts:{f}\u{0}{t}")
            }
            _ => {
                return fail(
                    code::DESK_PARAM,
                    "参数非法: SessionId, or FromAccount and ToAccount, required",
                );
            }
        };
        let mut d = lock(&self.shared.data);
        let duplicate = !d.seen.insert((addressing, msg_random));
        d.messages.push(TimMessage {
            session_id,
            from_account,
            to_account,
            msg_random,
            msg_body,
            cloud_custom_data: cloud,
            exclude_from_user_resp_timeout: exclude,
            duplicate,
        });
        ok(Map::new())
    }

    /// send_stream_msg: a new stream without MsgKey, else the chunk appended to its stream.
    fn robot_stream(&self, body: &[u8]) -> Response {
        let param = |why: &str| {
            fail(
                code::ROBOT_PARAM,
                &format!("Incorrect parameter. Please check the request parameters: {why}"),
            )
        };
        let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(body) else {
            return param("the body is not a JSON object");
        };
        let field = |k: &str| b.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let (Some(from), Some(to)) = (field("From_Account"), field("To_Account")) else {
            return param("From_Account and To_Account are required Strings");
        };
        let Some(chunk) = b.get("Chunk").and_then(Value::as_str) else {
            return param("Chunk is a required String");
        };
        let finish = match b.get("Finish") {
            None | Some(Value::Null) => false,
            Some(v) => match v.as_u64() {
                Some(0) => false,
                Some(1) => true,
                _ => return param("Finish must be 0 or 1"),
            },
        };
        let msg_key = match b.get("MsgKey") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return param("MsgKey must be a String"),
        };
        let mut d = lock(&self.shared.data);
        let key = match msg_key {
            None => new_stream(&mut d, self.shared.cfg.sdkappid, from, to),
            Some(k) => {
                let Some(&i) = d.by_key.get(&k) else {
                    return param("unknown MsgKey");
                };
                let s = &d.streams[i];
                if s.from != from || s.to != to {
                    return param("MsgKey belongs to another From_Account / To_Account");
                }
                if s.finished {
                    return param("the stream of this MsgKey is finished");
                }
                k
            }
        };
        if let Some(&i) = d.by_key.get(&key) {
            let s = &mut d.streams[i];
            s.text.push_str(chunk);
            s.calls += 1;
            s.finished = finish;
        }
        let mut extra = Map::new();
        extra.insert("MsgKey".into(), Value::String(key));
        ok(extra)
    }
}

/// Opens a stream; its MsgKey is `{sdkappid}_{n}_{unix seconds}` like the document's sample.
fn new_stream(d: &mut Data, sdkappid: u64, from: &str, to: &str) -> String {
    d.seq += 1;
    let key = format!("{sdkappid}_{}_{}", d.seq, unix_now().as_secs());
    d.by_key.insert(key.clone(), d.streams.len());
    d.streams.push(TimStream {
        msg_key: key.clone(),
        from: from.to_owned(),
        to: to.to_owned(),
        text: String::new(),
        calls: 0,
        finished: false,
    });
    key
}
