//! Simulators of the upstream contact centers (`ccrelay simulate`): a faithful, in-memory Huawei
//! CEC web channel that users develop against and that all of ccrelay's tests use as upstream.
//!
//! # What it serves
//! The CEC routes as two published documents describe them — Huawei Cloud CEC 2.5.0.0.0, *User
//! Access — Web Client Access (RESTful)* (the web channel document, whose chapters "doc §N" cites
//! here and in the modules), and the Huawei Cloud CEC API reference page *Send Message (send)* —
//! with the documented fields, result codes and resultDesc strings:
//! - `POST /apigovernance/api/oauth/tokenByAkSk`: `X-Token-Expire` honoured, capped by
//!   [`SimConfig::access_token_ttl`]; wrong credentials ⇒ 401.
//! - `POST /apiaccess/ccmessaging/{applyToken,send,queryQueueInfo}`, `GET …/poll`: `x-app-key` and
//!   `Authorization: Bearer <AccessToken>` checked on every call, then the user's
//!   `ccmessaging-token` (only the latest one applied for works). An expired ccmessaging-token is
//!   accepted during a live session and a new one is returned in the `ccmessaging-token` response
//!   header (doc §3.1.2); without a live session it is refused with 401. Every 401 has a small JSON
//!   body naming the failed check.
//! - send: `messageId` makes a send idempotent — a repeat of an accepted `(user, messageId)` gets
//!   the first answer and is not processed again. The session moves robot → (queue) → agent as the
//!   document describes; poll drains the messages produced, in order, each with a unique
//!   `messageCode`.
//!
//! - The other web-channel endpoints (doc §6, §8–17), each checking the headers its table requires
//!   (`ccmessaging-token` + `x-app-key` + `Authorization`, except: queryPhraseByKeyword and
//!   createClickToCall check `x-app-key`/`Authorization` only when sent; v1/mobileagent/createcall
//!   needs only `X-APP-Key` + `Authorization`). The user is the one the ccmessaging-token was
//!   applied for; a body naming another user (`userId`, `from`) is refused with 401.
//!   - saveSatisfaction: 0 "Save satisfaction success!"; 13 "The callIdString obtained failed!"
//!     when the user never had a session; 13 "Save satisfaction failed" for an evaluation outside
//!     "1"–"5", a comment of 512 characters or more, another channel or channelConfigId.
//!   - uploadFileStream / downloadFileStream: files in memory by objectKey (a UUID), types jpg,
//!     png, bmp (and the document's "bpm"), mp3, aac, mp4, txt, csv; up to
//!     [`SimConfig::max_file_bytes`]; every documented code (upload 2, 3, 13; download "401", 2,
//!     13). Base64 with line breaks is accepted.
//!   - queryPhraseByKeyword: [`SimConfig::phrases`] containing `strContent` (case-insensitive),
//!     as `{"question":[…],"resultCode":"0"}` — the sample's `question`, not table 10-2's
//!     `phrases`; 1 "request is no exist" / "locale is error" / "Robot is no exist".
//!   - click-to-call: create (0, 7 [`SimConfig::click_to_call`] off, 12 agents unavailable, 13 bad
//!     request or a call already up), events (one per GET, in order: 168101 "Call connected",
//!     then 168102 "Call released" after a drop), support, drop (13 without a call).
//!   - doLeaveMessage: 0 "Save leaveMessage success!", 2 "Param is null", 3 for a non-WEB channel
//!     or a field that is not a string.
//!   - v1/mobileagent/createcall: `resultData` {callSerialNo, sipServiceAddress, accesscode};
//!     "3001000003" for `called` empty or over 32 characters, `callData` over 1024,
//!     `callerPresent` over 32; "3001000001" when [`SimConfig::mobile_agent`] is off.
//!   - v1/robot/feedbacksatisfaction: `feedback` 1|0 (number or string), 0 needs
//!     `feedbackContent` ("30000000008"), which may be at most 64 bytes; a body out of the
//!     table's types is answered 400.
//! - Every documented result code can be provoked with [`Simulator::force_result`].
//!
//! Behaviours the document leaves open, as built: a CONNECT during a live session answers success
//! and changes nothing; a DISCONNECT while queued leaves the queue and answers 11 "Queuing..." (the
//! document lists that code for it); READ always answers 0; CONNECT straight to an agent answers
//! 0 "成功" (the document's wording); a send the contact center refused (2, 3, 11, 12, 13 without
//! offlineMsg) is not accepted, so a retry of its `messageId` is evaluated anew. The samples of
//! saveSatisfaction and uploadFileStream answer `returnCode`, their tables `resultCode`: the
//! simulator answers `resultCode`. createClickToCall answers resultDesc "null" as its sample
//! does. A download's `channel` other than WEB is answered 2 like a missing one, and a stored
//! file is served whatever documented `fileType` is asked for. Files are never evicted.
//!
//! # Control
//! The same operations in process ([`Simulator`]'s methods) and over HTTP under `/sim/` (no auth):
//! `POST|DELETE|GET /sim/faults`, `POST /sim/cec/agent/say`, `POST /sim/cec/agent/disconnect`,
//! `POST /sim/cec/agent/file`, `POST /sim/cec/force-result`,
//! `POST /sim/cec/duplicate-next-poll`, `POST /sim/cec/expire-tokens`,
//! `GET /sim/cec/received?userId=`, `GET /sim/stats`, `GET /sim/cec/poll-log`,
//! `GET|DELETE /sim/calls`.
//! Satisfactions, leave-messages, robot feedbacks and files are read in process only
//! ([`Simulator::satisfactions`], [`Simulator::leave_messages`], [`Simulator::robot_feedbacks`],
//! [`Simulator::uploaded`]).
//!
//! Faults ([`Fault`]) are served before a call is processed. A fault that only delays (no status,
//! normal body) is different: the call is processed once the delay has passed even if the client
//! has given up meanwhile, as a slow server would — a timed-out send is then accepted (and its
//! retry de-duplicated by `messageId`), a timed-out poll's messages are drained and appear in the
//! poll log.
//!
//! # Cost
//! No task per session: state lives in sharded maps behind short `std` mutexes, never held across
//! an await, and the queue advances lazily from elapsed time when the user is next touched.
//!
//! # Layout
//! - [`config`], with [`SimConfig`].
//! - `cec`, the CEC routes of the conversation; `send`, the send endpoint's rules; `auth`, the
//!   credentials; `media`, files; `feedback`, satisfaction, leave-messages, robot feedback and
//!   phrases; `calls`, click-to-call and the mobile agent's call; `forced`, forced result codes.
//! - `state`, users, sessions, tokens; `script`, what the robot, agent and system say.
//! - [`faults`], [`stats`], `control`, for fault injection, counters and poll log, the `/sim/` API;
//!   [`calllog`], every poll and Tencent call with the relay instance that made it.
//! - [`tim`], the Tencent IM side (`/v4/…` and `/sim/tim/…`), configured by [`SimConfig::tim`].

mod auth;
pub mod calllog;
mod calls;
mod cec;
pub mod config;
mod control;
pub mod faults;
mod feedback;
mod forced;
mod media;
pub mod requests;
mod script;
mod send;
mod state;
pub mod stats;
pub mod tim;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use calllog::{CallKind, CallRecord};
pub use config::SimConfig;
pub use faults::{Endpoint, Fault, FaultBody};
pub use feedback::{LeaveMessage, RobotFeedback, Satisfaction};
pub use requests::LoggedRequest;
pub use state::ReceivedSend;
pub use stats::{EndpointStats, PollAnswer, SimStats};
pub use tim::{TimFault, TimMessage, TimSim, TimSimConfig, TimSimEndpoint, TimStats, TimStream};

use faults::{Faults, lock};
use feedback::Records;
use forced::{Forced, ForcedResults};
use media::StoredFile;
use script::{Script, Sender};
use state::{Sharded, Stage, User};
use stats::Counters;

/// Shards of each state map: enough that tens of thousands of users rarely contend.
const SHARDS: usize = 64;

/// A simulated CEC tenant. Cheap to clone: clones share the same state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

/// The shared state behind every clone of a [`Simulator`].
pub(crate) struct Inner {
    /// How the tenant behaves.
    cfg: SimConfig,
    /// AccessToken → expiry.
    access: Sharded<Instant>,
    /// userId → everything known of that user.
    users: Sharded<User>,
    /// Injected faults.
    faults: Faults,
    /// Counters and the poll log.
    counters: Counters,
    /// Source of `callId`s.
    seq: AtomicU64,
    /// ccmessaging-token → userId, for the endpoints whose body names no user.
    cc_index: Sharded<String>,
    /// objectKey / fileId → file (uploaded, or sent by an agent).
    files: Sharded<Option<StoredFile>>,
    /// Forced result codes.
    forced: ForcedResults,
    /// Satisfactions, leave-messages and robot feedbacks accepted.
    records: Records,
    /// The CEC API requests received.
    requests: requests::RequestLog,
    /// Every poll and Tencent call, with the instance that made it (shared with `tim`).
    calls: Arc<calllog::CallLog>,
    /// The Tencent IM side ([`tim`]), from [`SimConfig::tim`].
    tim: TimSim,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// A simulator with no users, tokens or faults.
    pub fn new(cfg: SimConfig) -> Self {
        let counters = Counters::new(cfg.poll_log_capacity);
        let calls = Arc::new(calllog::CallLog::new(cfg.call_log_capacity));
        let tim = TimSim::with_call_log(cfg.tim.clone(), calls.clone());
        Simulator {
            inner: Arc::new(Inner {
                cfg,
                access: Sharded::new(SHARDS),
                users: Sharded::new(SHARDS),
                faults: Faults::default(),
                counters,
                seq: AtomicU64::new(1),
                cc_index: Sharded::new(SHARDS),
                files: Sharded::new(SHARDS),
                forced: ForcedResults::default(),
                records: Records::default(),
                requests: requests::RequestLog::default(),
                calls,
                tim,
            }),
        }
    }

    /// The CEC API requests received (method, path, headers, JSON body), oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.inner.requests.snapshot()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// The CEC API, the Tencent IM API ([`tim`]) and the `/sim/` control API.
    pub fn router(&self) -> Router {
        cec::routes()
            .merge(feedback::routes())
            .merge(media::routes(&self.inner.cfg))
            .merge(calls::routes())
            .merge(control::routes())
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                requests::record,
            ))
            .with_state(self.clone())
            .merge(self.inner.tim.router())
    }

    /// The Tencent IM side, for in-process control.
    pub fn tim(&self) -> &TimSim {
        &self.inner.tim
    }

    /// Serves [`Simulator::router`] on `listener` until `shutdown` is cancelled, then finishes the
    /// calls in flight.
    ///
    /// # Errors
    /// An I/O error of the listener.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }

    /// Adds a fault, served after those already injected for the same endpoint are used up.
    pub fn inject_fault(&self, f: Fault) {
        self.inner.faults.inject(f);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.inner.faults.clear();
    }

    /// The faults in force, with what is left of their `times`.
    pub fn faults(&self) -> Vec<Fault> {
        self.inner.faults.list()
    }

    /// Queues an AGENT CHAT message saying `content` for the user (whatever the session's state:
    /// this is a test tool).
    ///
    /// Returns the message's `messageCode` (as in [`Simulator::poll_log`]).
    pub fn agent_say(&self, user_id: &str, content: &str) -> String {
        let script = self.script();
        self.inner.users.with(user_id, |u| {
            let now = Instant::now();
            u.advance(now, user_id, &script);
            let call_id = u.call_id(&script);
            let msg = script.message(user_id, &call_id, Sender::Agent, "CHAT", content, now);
            let code = msg.message_code.clone().unwrap_or_default();
            u.outbox.push_back(msg);
            code
        })
    }

    /// Ends the user's session from the contact center's side: queues a message with controlType
    /// DISCONNECT (from the agent in an agent or queued session, from the system otherwise).
    pub fn agent_disconnect(&self, user_id: &str) {
        let script = self.script();
        let offline = self.inner.cfg.offline_mode.to_string();
        self.inner.users.with(user_id, |u| {
            let now = Instant::now();
            u.advance(now, user_id, &script);
            let call_id = u.call_id(&script);
            let (sender, content) = match u.session.as_ref().map(|s| s.stage) {
                Some(Stage::Agent | Stage::Queued { .. }) => (Sender::Agent, "座席已结束会话。"),
                _ => (Sender::System, "会话已结束。"),
            };
            let mut msg = script.message(user_id, &call_id, sender, "DISCONNECT", content, now);
            msg.is_offline_status = Some(offline);
            u.outbox.push_back(msg);
            u.session = None;
        });
    }

    /// Makes the user's next poll return the previous non-empty answer's messages again (same
    /// `messageCode`s), followed by anything new.
    pub fn duplicate_next_poll(&self, user_id: &str) {
        self.inner.users.with(user_id, |u| u.duplicate_next = true);
    }

    /// Expires every ccmessaging-token now.
    pub fn expire_cc_tokens(&self) {
        let now = Instant::now();
        self.inner.users.for_each(|u| {
            if let Some(t) = u.token.as_mut() {
                t.expires_at = now;
            }
        });
    }

    /// Expires every AccessToken now.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        self.inner.access.for_each(|exp| *exp = now);
    }

    /// What `send` accepted for this user, in order, one entry per `messageId` with how many times
    /// it was received.
    pub fn received(&self, user_id: &str) -> Vec<ReceivedSend> {
        self.inner
            .users
            .with_existing(user_id, |u| u.received.clone())
            .unwrap_or_default()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.inner.counters.snapshot()
    }

    /// Every non-empty poll answer, oldest first (up to [`SimConfig::poll_log_capacity`]).
    pub fn poll_log(&self) -> Vec<PollAnswer> {
        self.inner.counters.poll_log()
    }

    /// The calls logged after the one numbered `since` (0: all kept), oldest first: every CEC
    /// poll and every Tencent call, with the relay instance that made it and its timing
    /// ([`calllog`]; up to [`SimConfig::call_log_capacity`]).
    pub fn calls(&self, since: u64) -> Vec<CallRecord> {
        self.inner.calls.since(since, None, usize::MAX)
    }

    /// Empties the call log; numbering goes on.
    pub fn clear_calls(&self) {
        self.inner.calls.clear();
    }

    /// Makes the next `times` answers of `endpoint` (every endpoint for [`Endpoint::Any`]) HTTP
    /// 200 `{"resultCode":result_code,"resultDesc":result_desc}`, without processing the calls:
    /// so that every documented result code can be provoked. Served after faults and before any
    /// check; forced results of one endpoint are served in the order they were set.
    pub fn force_result(
        &self,
        endpoint: Endpoint,
        result_code: &str,
        result_desc: &str,
        times: u32,
    ) {
        self.inner.forced.add(Forced {
            endpoint,
            result_code: result_code.to_owned(),
            result_desc: result_desc.to_owned(),
            times,
        });
    }

    /// An agent sends the user a file: stores `bytes` under a new fileId (returned, and
    /// downloadable with downloadFileStream) and queues an AGENT CHAT message whose `content` is
    /// that fileId and `mediaType` is `media_type` (IMAGE, AUDIO or VIDEO, as the document has it).
    pub fn agent_send_file(
        &self,
        user_id: &str,
        media_type: &str,
        file_type: &str,
        bytes: Vec<u8>,
    ) -> String {
        let file_id = media::store(self, bytes);
        tracing::debug!(user_id, media_type, file_type, %file_id, "Simulated agent sends a file.");
        let script = self.script();
        self.inner.users.with(user_id, |u| {
            let now = Instant::now();
            u.advance(now, user_id, &script);
            let call_id = u.call_id(&script);
            let mut msg = script.message(user_id, &call_id, Sender::Agent, "CHAT", &file_id, now);
            msg.media_type = Some(media_type.to_owned());
            u.outbox.push_back(msg);
        });
        file_id
    }

    /// The satisfactions saveSatisfaction accepted, oldest first.
    pub fn satisfactions(&self) -> Vec<Satisfaction> {
        lock(&self.inner.records.satisfactions).clone()
    }

    /// The leave-messages doLeaveMessage accepted, oldest first.
    pub fn leave_messages(&self) -> Vec<LeaveMessage> {
        lock(&self.inner.records.leave_messages).clone()
    }

    /// The robot feedbacks v1/robot/feedbacksatisfaction accepted, oldest first.
    pub fn robot_feedbacks(&self) -> Vec<RobotFeedback> {
        lock(&self.inner.records.robot_feedbacks).clone()
    }

    /// The bytes of an uploaded file (or of one an agent sent), by objectKey / fileId.
    pub fn uploaded(&self, object_key: &str) -> Option<Vec<u8>> {
        self.inner
            .files
            .with_existing(object_key, |f| f.as_ref().map(|f| f.bytes.clone()))
            .flatten()
    }

    fn script(&self) -> Script<'_> {
        Script::new(&self.inner.cfg, &self.inner.seq)
    }

    /// Runs one call of `ep`: counts it, serves a fault if one is due, else `handle`s it.
    async fn call<F>(&self, ep: Endpoint, handle: F) -> Response
    where
        F: FnOnce(&Simulator) -> Response + Send + 'static,
    {
        let counters = &self.inner.counters;
        counters.call(ep);
        let response = match self.inner.faults.take(ep) {
            None => match self.inner.forced.take(ep) {
                Some(forced) => forced.response(),
                None => handle(self),
            },
            Some(fault) => {
                counters.fault(ep);
                if fault.is_delay_only() {
                    // Detached, so the call is processed even if the client stops waiting.
                    let sim = self.clone();
                    let delay = fault.delay.unwrap_or_default();
                    let task = tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        handle(&sim)
                    });
                    task.await.unwrap_or_else(|e| {
                        (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                    })
                } else {
                    if let Some(delay) = fault.delay {
                        tokio::time::sleep(delay).await;
                    }
                    fault.response(ep)
                }
            }
        };
        if response.status() == StatusCode::UNAUTHORIZED {
            counters.unauthorized(ep);
        }
        response
    }
}

/// A simulator serving on `127.0.0.1:<free port>` in the background; stops when dropped.
pub struct SimHandle {
    addr: SocketAddr,
    sim: Simulator,
    shutdown: CancellationToken,
}

impl SimHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, the `base_url` of a tenant using it.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The simulator, for in-process control.
    pub fn sim(&self) -> &Simulator {
        &self.sim
    }
}

impl std::ops::Deref for SimHandle {
    type Target = Simulator;

    fn deref(&self) -> &Simulator {
        &self.sim
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Binds `127.0.0.1:0` and serves a new simulator in the background.
///
/// # Errors
/// The port could not be bound.
pub async fn spawn(cfg: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let sim = Simulator::new(cfg);
    let shutdown = CancellationToken::new();
    let server = sim.clone().serve(listener, shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "CEC simulator stopped serving.");
        }
    });
    Ok(SimHandle {
        addr,
        sim,
        shutdown,
    })
}
