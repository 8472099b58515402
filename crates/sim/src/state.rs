//! In-memory state: AccessTokens, and per user the ccmessaging-token, the session, the queue of
//! downlink messages and what `send` accepted.
//!
//! Both maps are sharded behind short-lived `std` mutexes (never held across an await), so tens of
//! thousands of users cost one map entry each and no task. Time-based transitions (the queue
//! position falling, the agent connecting) are computed lazily whenever the user is touched.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::faults::lock;
use super::script::{Script, Sender};
use ::cec::wire::{DownlinkMessage, SendRequest, SendResponse};

/// A map from string keys split over shards, each behind its own mutex.
pub(crate) struct Sharded<V> {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<String, V>>]>,
}

impl<V> Sharded<V> {
    pub(crate) fn new(shards: usize) -> Self {
        Sharded {
            hasher: RandomState::new(),
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, V>> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[i]
    }

    /// Runs `f` on the entry of `key` if there is one.
    pub(crate) fn with_existing<R>(&self, key: &str, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        lock(self.shard(key)).get_mut(key).map(f)
    }

    /// Runs `f` on the map of the shard `key` falls in.
    pub(crate) fn with_shard<R>(
        &self,
        key: &str,
        f: impl FnOnce(&mut HashMap<String, V>) -> R,
    ) -> R {
        f(&mut lock(self.shard(key)))
    }

    /// Runs `f` on every entry, one shard locked at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&mut V)) {
        for shard in self.shards.iter() {
            lock(shard).values_mut().for_each(&mut f);
        }
    }
}

impl<V: Default> Sharded<V> {
    /// Runs `f` on the entry of `key`, creating a default one if there is none.
    pub(crate) fn with<R>(&self, key: &str, f: impl FnOnce(&mut V) -> R) -> R {
        let mut map = lock(self.shard(key));
        match map.get_mut(key) {
            Some(v) => f(v),
            None => f(map.entry(key.to_owned()).or_default()),
        }
    }
}

/// A ccmessaging-token: only the latest one issued to a user works.
#[derive(Debug, Clone)]
pub(crate) struct CcToken {
    pub(crate) value: String,
    pub(crate) expires_at: Instant,
}

/// Where a live session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Talking to the scripted robot.
    Robot,
    /// Waiting in the skill queue since `since`, with `ahead` customers ahead then.
    Queued { since: Instant, ahead: u32 },
    /// Talking to an agent.
    Agent,
}

/// A live session (between a successful CONNECT and its DISCONNECT).
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The `callId` of every downlink message of this session.
    pub(crate) call_id: String,
    pub(crate) stage: Stage,
    /// The robot's interaction counter (`interIdx`), bumped by every robot message.
    pub(crate) inter_idx: u32,
}

/// A send the simulator accepted ([`crate::Simulator::received`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedSend {
    /// The request as first accepted.
    pub request: SendRequest,
    /// The answer it got; a repeat of its `messageId` gets the same.
    pub response: SendResponse,
    /// How many times it was received: 1, plus every repeat of its `messageId` answered from the
    /// idempotency cache.
    pub count: u32,
}

/// Everything the simulator knows of one user (`userId` / `from` / `receiverId`).
#[derive(Debug, Default)]
pub(crate) struct User {
    pub(crate) token: Option<CcToken>,
    pub(crate) session: Option<Session>,
    /// Downlink messages not yet polled, oldest first.
    pub(crate) outbox: VecDeque<DownlinkMessage>,
    /// The last non-empty poll answer, for `duplicate_next_poll`.
    pub(crate) last_answer: Vec<DownlinkMessage>,
    pub(crate) duplicate_next: bool,
    /// Accepted sends, in order.
    pub(crate) received: Vec<ReceivedSend>,
    /// `messageId` → index in `received`: the idempotency cache.
    pub(crate) accepted_ids: HashMap<String, usize>,
    /// Start of the current one-second rate window and the sends counted in it.
    pub(crate) rate_window: Option<(Instant, u32)>,
    /// The `callId` of the latest session, live or ended: saveSatisfaction needs one.
    pub(crate) last_call_id: Option<String>,
    /// The click-to-call in progress, if any.
    pub(crate) click_call: Option<ClickCall>,
    /// Click-to-call events not yet fetched by getClickToCallEvents, oldest first.
    pub(crate) call_events: VecDeque<CallEvent>,
}

/// A click-to-call created by createClickToCall and not yet dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClickCall {
    /// `mediaAbility`: "0" audio, "1" video.
    pub(crate) media_ability: String,
}

/// One click-to-call event, as getClickToCallEvents answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallEvent {
    pub(crate) result_code: String,
    pub(crate) result_desc: String,
    pub(crate) event_id: String,
    pub(crate) content: serde_json::Value,
}

impl User {
    /// Starts a robot session with a new `callId`.
    pub(crate) fn start_session(&mut self, call_id: String) {
        self.last_call_id = Some(call_id.clone());
        self.session = Some(Session {
            call_id,
            stage: Stage::Robot,
            inter_idx: 0,
        });
    }

    /// Applies the time-based transitions due by `now`: a queued session whose position has
    /// fallen to 0 is connected to an agent.
    pub(crate) fn advance(&mut self, now: Instant, user_id: &str, script: &Script<'_>) {
        let Some(Stage::Queued { since, ahead }) = self.session.as_ref().map(|s| s.stage) else {
            return;
        };
        if queue_position(since, ahead, script.cfg.queue_step, now) == 0 {
            let at = since + script.cfg.queue_step.saturating_mul(ahead);
            self.connect_agent(user_id, script, at);
        }
    }

    /// Moves the live session to an agent: queues "已接通座席。" from the system, then the agent's
    /// greeting, both stamped `at`.
    pub(crate) fn connect_agent(&mut self, user_id: &str, script: &Script<'_>, at: Instant) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        session.stage = Stage::Agent;
        let call_id = session.call_id.clone();
        let connected = script.message(
            user_id,
            &call_id,
            Sender::System,
            "CHAT",
            "已接通座席。",
            at,
        );
        let greeting = script.message(
            user_id,
            &call_id,
            Sender::Agent,
            "CHAT",
            &script.cfg.agent_greeting,
            at,
        );
        self.outbox.push_back(connected);
        self.outbox.push_back(greeting);
    }

    /// Queues a robot message, bumping the session's `interIdx`.
    pub(crate) fn robot_says(&mut self, user_id: &str, script: &Script<'_>, content: &str) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        session.inter_idx += 1;
        let sender = Sender::Robot {
            inter_idx: session.inter_idx,
        };
        let msg = script.message(
            user_id,
            &session.call_id,
            sender,
            "CHAT",
            content,
            Instant::now(),
        );
        self.outbox.push_back(msg);
    }

    /// The `callId` of the live session, or a fresh one for a message outside any session.
    pub(crate) fn call_id(&self, script: &Script<'_>) -> String {
        self.session
            .as_ref()
            .map_or_else(|| script.call_id(), |s| s.call_id.clone())
    }

    /// Whether there is a live session (robot, queued or agent).
    pub(crate) fn in_session(&self) -> bool {
        self.session.is_some()
    }

    /// Counts one send against `limit` per second; `false` when it is over.
    pub(crate) fn within_rate(&mut self, limit: Option<u32>, now: Instant) -> bool {
        let Some(limit) = limit else {
            return true;
        };
        match &mut self.rate_window {
            Some((start, count)) if now.duration_since(*start) < Duration::from_secs(1) => {
                *count += 1;
                *count <= limit
            }
            window => {
                *window = Some((now, 1));
                limit >= 1
            }
        }
    }
}

/// The queue position at `now` of a customer who had `ahead` customers ahead at `since`: it falls
/// by one every `step`; 0 means an agent has been reached.
pub(crate) fn queue_position(since: Instant, ahead: u32, step: Duration, now: Instant) -> u32 {
    if step.is_zero() {
        return 0;
    }
    let steps = now.saturating_duration_since(since).as_nanos() / step.as_nanos();
    ahead.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_position_falls_one_step_at_a_time() {
        let t0 = Instant::now();
        let step = Duration::from_millis(100);
        assert_eq!(queue_position(t0, 3, step, t0), 3);
        assert_eq!(
            queue_position(t0, 3, step, t0 + Duration::from_millis(99)),
            3
        );
        assert_eq!(
            queue_position(t0, 3, step, t0 + Duration::from_millis(100)),
            2
        );
        assert_eq!(
            queue_position(t0, 3, step, t0 + Duration::from_millis(300)),
            0
        );
        assert_eq!(queue_position(t0, 3, step, t0 + Duration::from_secs(60)), 0);
        assert_eq!(queue_position(t0, 3, Duration::ZERO, t0), 0);
    }

    #[test]
    fn rate_window_allows_limit_per_second() {
        let mut u = User::default();
        let t0 = Instant::now();
        assert!(u.within_rate(Some(2), t0));
        assert!(u.within_rate(Some(2), t0));
        assert!(!u.within_rate(Some(2), t0 + Duration::from_millis(500)));
        assert!(u.within_rate(Some(2), t0 + Duration::from_secs(1)));
        assert!(u.within_rate(None, t0));
    }

    #[test]
    fn sharded_map_creates_on_with_only() {
        let m: Sharded<u32> = Sharded::new(4);
        assert_eq!(m.with_existing("a", |v| *v), None);
        m.with("a", |v| *v += 5);
        assert_eq!(m.with_existing("a", |v| *v), Some(5));
        let mut sum = 0;
        m.for_each(|v| sum += *v);
        assert_eq!(sum, 5);
    }
}
