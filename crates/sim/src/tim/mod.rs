//! The simulator's Tencent Cloud IM side: one app ([`TimSimConfig`]) answering Desk
//! `POST /v4/desk_http_svc/send_msg` and robot `POST /v4/openim_robot_http_svc/send_stream_msg`
//! as Tencent Cloud IM documents them (the Desk REST API's *send_msg* and the robot REST API's
//! *send_stream_msg*), served by the same server as the CEC side.
//!
//! Every call, in this order:
//! 1. is counted, in `calls` and in its wall-clock second (`maxCallsInOneSecond`);
//! 2. is answered by an injected fault if one is due ([`TimFault`]; a delay-only fault delays
//!    and the call is then processed);
//! 3. over [`TimSimConfig::rate_limit`] calls in its second (all endpoints together, fixed
//!    windows aligned to wall-clock seconds, refused calls included) is answered 60007;
//! 4. has its query checked (`sdkappid`, `identifier`, `usersig`, `random` a u32,
//!    `contenttype=json`) and its UserSig verified with [`::tim::usersig::verify`]:
//!    70001 expired, 70009 bad HMAC, 70003 unreadable, 70013 / 70014 signed for another
//!    identifier / app (each counted in `sigRejected`); a valid sig of a non-admin identifier is
//!    refused with 90009 (send_msg) or 60010 (send_stream_msg);
//! 5. is processed: send_msg checks its body (93000 over 12 KB, 90001, 90005, 90007, 141004
//!    for addressing and field types) and de-duplicates by `MsgRandom` per SessionId or per
//!    FromAccount + ToAccount (a duplicate is answered OK and listed with `duplicate: true`);
//!    send_stream_msg keeps `MsgKey` state (10004 for a bad body, an unknown `MsgKey`, one of
//!    another From_Account / To_Account, or one already finished).
//!
//! Every call, faulted and refused ones included, is also logged in the simulator's call log
//! ([`crate::calllog`]) with the relay instance that made it.
//!
//! Every Tencent-level failure is HTTP 200 `{"ActionStatus":"FAIL","ErrorCode":N,"ErrorInfo":…}`.
//!
//! # Layout
//! - [`config`], with [`TimSimConfig`].
//! - `api`: the two Tencent endpoints.
//! - `control`: `/sim/tim/…` (messages, streams, stats, faults, reset) and callbacks sent to the
//!   relay.

mod api;
pub mod config;
mod control;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use config::TimSimConfig;

use crate::calllog::CallLog;
pub use control::{CallbackSign, callback_sign};

/// An endpoint of the simulated Tencent app, as faults name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimSimEndpoint {
    /// `POST /v4/desk_http_svc/send_msg`.
    #[serde(rename = "send_msg")]
    SendMsg,
    /// `POST /v4/openim_robot_http_svc/send_stream_msg`.
    #[serde(rename = "send_stream_msg")]
    SendStreamMsg,
}

/// An injected fault: the next `times` calls of `endpoint` (of both when absent) are answered
/// with `errorCode` (HTTP 200, `ActionStatus` FAIL), or with HTTP `status`, after `delayMs`.
/// With only `delayMs`, the call is delayed and then processed normally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<TimSimEndpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

impl TimFault {
    /// Only a delay: the call is processed after it.
    pub fn is_delay_only(&self) -> bool {
        self.error_code.is_none() && self.status.is_none()
    }
}

/// An accepted send_msg body (`GET /sim/tim/messages`), field names as Tencent spells them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimMessage {
    #[serde(rename = "SessionId", default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(
        rename = "FromAccount",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub from_account: Option<String>,
    #[serde(rename = "ToAccount", default, skip_serializing_if = "Option::is_none")]
    pub to_account: Option<String>,
    #[serde(rename = "MsgRandom")]
    pub msg_random: u32,
    #[serde(rename = "MsgBody")]
    pub msg_body: Value,
    #[serde(
        rename = "CloudCustomData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cloud_custom_data: Option<String>,
    #[serde(
        rename = "ExcludeFromUserRespTimeout",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exclude_from_user_resp_timeout: Option<u8>,
    /// A repeat of an accepted `MsgRandom` for the same addressing (answered OK, not delivered
    /// again).
    pub duplicate: bool,
}

/// One robot stream (`GET /sim/tim/streams`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimStream {
    pub msg_key: String,
    pub from: String,
    pub to: String,
    /// The chunks, concatenated in arrival order.
    pub text: String,
    /// Accepted calls for this stream.
    pub calls: u32,
    /// A call with `Finish: 1` was accepted.
    pub finished: bool,
}

/// Counters (`GET /sim/tim/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimStats {
    /// Calls of both endpoints, whatever their answer.
    pub calls: u64,
    /// Calls answered 60007 because the app was over its rate limit.
    pub rate_limited: u64,
    /// Calls refused for their sdkappid / identifier / usersig.
    pub sig_rejected: u64,
    /// The most calls that arrived in one wall-clock second (refused ones included).
    pub max_calls_in_one_second: u32,
}

/// What the simulated app has received.
#[derive(Default)]
struct Data {
    messages: Vec<TimMessage>,
    /// (addressing, MsgRandom) of accepted send_msg calls.
    seen: HashSet<(String, u32)>,
    streams: Vec<TimStream>,
    /// MsgKey → index in `streams`.
    by_key: HashMap<String, usize>,
    stats: TimStats,
    /// (unix second, calls in it).
    window: (u64, u32),
    /// Source of MsgKeys.
    seq: u64,
}

/// The state behind every clone of a [`TimSim`].
struct Shared {
    /// How the app behaves.
    cfg: TimSimConfig,
    /// Sends callbacks.
    http: reqwest::Client,
    /// Messages, streams, counters; never held across an await.
    data: Mutex<Data>,
    /// Injected faults, in injection order.
    faults: Mutex<VecDeque<TimFault>>,
    /// Where every call is logged (the simulator's call log, shared with the CEC side).
    calls: Arc<CallLog>,
}

/// The simulated Tencent IM app. Cheap to clone: clones share the same state.
#[derive(Clone)]
pub struct TimSim {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TimSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimSim")
            .field("cfg", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TimSim {
    /// An app with nothing received and no faults, logging its calls in a call log of its own
    /// that nothing reads (a [`crate::Simulator`]'s app logs them in the simulator's).
    pub fn new(cfg: TimSimConfig) -> Self {
        Self::with_call_log(cfg, Arc::new(CallLog::new(0)))
    }

    /// [`TimSim::new`], logging its calls in `calls`.
    pub(crate) fn with_call_log(cfg: TimSimConfig, calls: Arc<CallLog>) -> Self {
        TimSim {
            shared: Arc::new(Shared {
                cfg,
                http: reqwest::Client::new(),
                data: Mutex::new(Data::default()),
                faults: Mutex::new(VecDeque::new()),
                calls,
            }),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &TimSimConfig {
        &self.shared.cfg
    }

    /// The Tencent endpoints and `/sim/tim/…`.
    pub fn router(&self) -> Router {
        api::routes()
            .merge(control::routes())
            .with_state(self.clone())
    }

    /// Every send_msg body accepted, in arrival order (duplicates flagged).
    pub fn messages(&self) -> Vec<TimMessage> {
        lock(&self.shared.data).messages.clone()
    }

    /// Every stream, in the order they were opened.
    pub fn streams(&self) -> Vec<TimStream> {
        lock(&self.shared.data).streams.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TimStats {
        lock(&self.shared.data).stats.clone()
    }

    /// Adds a fault, served after those already injected that match the same call.
    pub fn inject_fault(&self, f: TimFault) {
        if f.times > 0 {
            lock(&self.shared.faults).push_back(f);
        }
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Clears messages (and what de-duplication remembers), streams and counters.
    pub fn reset(&self) {
        *lock(&self.shared.data) = Data::default();
    }

    /// The first fault due for `ep`, with one use taken.
    fn take_fault(&self, ep: TimSimEndpoint) -> Option<TimFault> {
        let mut faults = lock(&self.shared.faults);
        let i = faults
            .iter()
            .position(|f| f.endpoint.is_none_or(|e| e == ep))?;
        let f = faults.get_mut(i)?;
        f.times -= 1;
        let taken = f.clone();
        if f.times == 0 {
            faults.remove(i);
        }
        Some(taken)
    }
}

#[cfg(test)]
pub(crate) use api::{SEND_PATH, STREAM_PATH};
