//! The call log: every CEC poll and every Tencent send_msg / send_stream_msg call, with the relay
//! instance that made it, when it started and ended, for whom, and what it answered
//! ([`crate::Simulator::calls`], `GET /sim/calls`). With several relays on one simulator, it shows
//! which instance polled which user when: whether two ever polled one user at the same time, and
//! how long a user went unpolled while the work moved between instances.
//!
//! The instance is what the caller's `User-Agent` names in parentheses — the relay sends
//! `ccrelay/<version> (<instance>)`. Times are taken when the handler starts and when its answer
//! is ready: on the simulator's monotonic clock as microseconds since it started (comparable
//! between calls, whatever the wall clock does), and on the wall clock as Unix milliseconds. A
//! credential is never logged: a ccmessaging-token appears as the user it was applied for.
//!
//! Bounded: at most [`crate::SimConfig::call_log_capacity`] records, the oldest dropped first; 0
//! turns the log off (nothing is cloned or locked per call then). Records are numbered from 1 in
//! the order their calls ended; a number is never reused, not even after [`CallLog::clear`], so a
//! reader can page with `since` = the last number it read.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::http::header::USER_AGENT;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::faults::lock;

/// What kind of call a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CallKind {
    /// CEC `GET /apiaccess/ccmessaging/poll`.
    #[serde(rename = "poll")]
    Poll,
    /// Tencent `POST /v4/desk_http_svc/send_msg`.
    #[serde(rename = "send_msg")]
    SendMsg,
    /// Tencent `POST /v4/openim_robot_http_svc/send_stream_msg`.
    #[serde(rename = "send_stream_msg")]
    SendStreamMsg,
}

/// One call ([`crate::Simulator::calls`], `GET /sim/calls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    /// Its number: 1, 2, 3… in the order the calls ended.
    pub seq: u64,
    pub kind: CallKind,
    /// The instance the `User-Agent` names in parentheses (`ccrelay/0.1.0 (relay-a)` →
    /// `relay-a`); `None` without one.
    pub instance: Option<String>,
    /// When the handler started, in microseconds since the simulator started (monotonic).
    pub start_us: u64,
    /// When its answer was ready, on the same clock.
    pub end_us: u64,
    /// When the handler started, as Unix milliseconds (wall clock).
    pub start_unix_ms: u64,
    /// When its answer was ready, as Unix milliseconds.
    pub end_unix_ms: u64,
    /// Who the call came for: the `x-app-key` of a CEC call, the `sdkappid` of a Tencent one.
    pub tenant: Option<String>,
    /// The user the call is about: a poll's `receiverId`; send_msg's `ToAccount` (else its
    /// `SessionId`); send_stream_msg's `To_Account`.
    pub user_id: Option<String>,
    /// Whose credential the call carried: for a poll, the user its ccmessaging-token was applied
    /// for (`None` for a token the simulator does not know); for a Tencent call, the `identifier`
    /// its UserSig is for.
    pub token_user: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// Messages answered: a poll's `downlinkMessages`; 1 for a Tencent call answered OK (a
    /// message or a chunk accepted), else 0.
    pub messages: u32,
    /// The result in the answer: a poll's `resultCode`, a Tencent call's `ErrorCode` (an
    /// injected one included); `None` for an answer without one (a 401 or 400, a CEC fault or
    /// forced result, an HTTP-status fault).
    pub result: Option<String>,
}

/// What a handler puts in its answer's extensions for the log: the result code and the messages.
#[derive(Debug, Clone)]
pub(crate) struct Answered {
    pub(crate) result: String,
    pub(crate) messages: u32,
}

impl Answered {
    /// Marks `response` as answering `result` with `messages` messages.
    pub(crate) fn mark(mut response: Response, result: &str, messages: usize) -> Response {
        response.extensions_mut().insert(Answered {
            result: result.to_owned(),
            messages: u32::try_from(messages).unwrap_or(u32::MAX),
        });
        response
    }
}

/// A call under way: what was known when it started.
pub(crate) struct Begun {
    at: Instant,
    unix_ms: u64,
    instance: Option<String>,
}

/// What is known of a call once answered, beside its [`Begun`].
pub(crate) struct Call {
    pub(crate) kind: CallKind,
    pub(crate) tenant: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) token_user: Option<String>,
}

/// The log (see the module docs).
pub(crate) struct CallLog {
    /// The instant `start_us` counts from.
    started: Instant,
    capacity: usize,
    state: Mutex<State>,
}

struct State {
    /// The number the next record gets.
    next: u64,
    /// Records, oldest first; their numbers are consecutive.
    records: VecDeque<CallRecord>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The part of a `User-Agent` in its first parentheses, when not empty.
pub(crate) fn instance_of(user_agent: &str) -> Option<String> {
    let (_, rest) = user_agent.split_once('(')?;
    let (instance, _) = rest.split_once(')')?;
    let instance = instance.trim();
    (!instance.is_empty()).then(|| instance.to_owned())
}

impl CallLog {
    /// A log keeping at most `capacity` records (0: none).
    pub(crate) fn new(capacity: usize) -> Self {
        CallLog {
            started: Instant::now(),
            capacity,
            state: Mutex::new(State {
                next: 1,
                records: VecDeque::new(),
            }),
        }
    }

    /// A call starting now, with these request headers; `None` when the log is off.
    pub(crate) fn begin(&self, headers: &HeaderMap) -> Option<Begun> {
        if self.capacity == 0 {
            return None;
        }
        Some(Begun {
            at: Instant::now(),
            unix_ms: unix_ms(),
            instance: headers
                .get(USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(instance_of),
        })
    }

    /// Records a call begun with `begun` and answered `response` (now).
    pub(crate) fn finish(&self, begun: Begun, call: Call, response: &Response) {
        let end = Instant::now();
        let micros = |at: Instant| {
            u64::try_from(at.saturating_duration_since(self.started).as_micros())
                .unwrap_or(u64::MAX)
        };
        let answered = response.extensions().get::<Answered>();
        let mut record = CallRecord {
            seq: 0,
            kind: call.kind,
            instance: begun.instance,
            start_us: micros(begun.at),
            end_us: micros(end),
            start_unix_ms: begun.unix_ms,
            end_unix_ms: unix_ms(),
            tenant: call.tenant,
            user_id: call.user_id,
            token_user: call.token_user,
            status: response.status().as_u16(),
            messages: answered.map_or(0, |a| a.messages),
            result: answered.map(|a| a.result.clone()),
        };
        let mut state = lock(&self.state);
        record.seq = state.next;
        state.next += 1;
        if state.records.len() >= self.capacity {
            state.records.pop_front();
        }
        state.records.push_back(record);
    }

    /// The records numbered after `since`, of `kind` if given, oldest first, at most `limit`.
    pub(crate) fn since(
        &self,
        since: u64,
        kind: Option<CallKind>,
        limit: usize,
    ) -> Vec<CallRecord> {
        let state = lock(&self.state);
        let first = state.records.front().map_or(0, |r| r.seq);
        // Numbers are consecutive: the record numbered `since + 1` is at this index.
        let skip = usize::try_from((since + 1).saturating_sub(first)).unwrap_or(usize::MAX);
        state
            .records
            .iter()
            .skip(skip)
            .filter(|r| kind.is_none_or(|k| r.kind == k))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Drops every record (numbering goes on).
    pub(crate) fn clear(&self) {
        lock(&self.state).records.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(kind: CallKind, user: &str) -> Call {
        Call {
            kind,
            tenant: None,
            user_id: Some(user.to_owned()),
            token_user: None,
        }
    }

    fn ok() -> Response {
        Response::new(axum::body::Body::empty())
    }

    #[test]
    fn the_instance_is_the_user_agent_s_parenthesised_part() {
        assert_eq!(
            instance_of("ccrelay/0.1.0 (relay-a)").as_deref(),
            Some("relay-a")
        );
        assert_eq!(instance_of("ccrelay/0.1.0 ( b )").as_deref(), Some("b"));
        assert_eq!(instance_of("ccrelay/0.1.0"), None);
        assert_eq!(instance_of("x ()"), None);
        assert_eq!(instance_of("x (unclosed"), None);
    }

    #[test]
    fn the_log_keeps_the_newest_records_numbered_and_pages_by_since() {
        let log = CallLog::new(3);
        let headers = HeaderMap::new();
        for (i, kind) in [
            CallKind::Poll,
            CallKind::SendMsg,
            CallKind::Poll,
            CallKind::Poll,
        ]
        .into_iter()
        .enumerate()
        {
            let begun = log.begin(&headers).expect("on");
            log.finish(begun, call(kind, &format!("u{i}")), &ok());
        }
        let all = log.since(0, None, usize::MAX);
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(
            log.since(2, None, usize::MAX)
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(
            log.since(0, Some(CallKind::Poll), 1)
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [3]
        );
        assert!(log.since(4, None, usize::MAX).is_empty());
        log.clear();
        assert!(log.since(0, None, usize::MAX).is_empty());
        let begun = log.begin(&headers).expect("on");
        log.finish(begun, call(CallKind::Poll, "u"), &ok());
        assert_eq!(log.since(4, None, usize::MAX)[0].seq, 5);
    }

    #[test]
    fn a_log_of_no_capacity_is_off() {
        assert!(CallLog::new(0).begin(&HeaderMap::new()).is_none());
    }
}
