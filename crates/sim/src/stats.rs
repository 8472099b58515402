//! What the simulator counts and logs: per-endpoint calls, 401s, faults, tokens, and every
//! non-empty poll answer (for checkers that compare what was answered with what was relayed).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::faults::{Endpoint, lock};

/// A snapshot of the simulator's counters ([`crate::Simulator::stats`], `GET /sim/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    /// Per endpoint (never [`Endpoint::Any`]).
    pub endpoints: BTreeMap<Endpoint, EndpointStats>,
    /// HTTP 401 answers, all endpoints together.
    pub unauthorized: u64,
    /// Faults served, all endpoints together (delay-only faults included).
    pub faults_served: u64,
    /// AccessTokens issued by tokenByAkSk.
    pub access_tokens_issued: u64,
    /// ccmessaging-tokens issued by applyToken.
    pub cc_tokens_issued: u64,
    /// ccmessaging-tokens renewed in a response header because the presented one had expired
    /// during a live session.
    pub cc_tokens_renewed: u64,
    /// Sends answered from the idempotency cache (a repeated messageId), not processed again.
    pub sends_deduplicated: u64,
}

impl SimStats {
    /// Calls of `endpoint` (0 for [`Endpoint::Any`]).
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        self.endpoints.get(&endpoint).map_or(0, |e| e.calls)
    }
}

/// Counters of one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStats {
    /// Every call that reached the simulator, faulted or refused ones included.
    pub calls: u64,
    /// Calls answered 401.
    pub unauthorized: u64,
    /// Calls answered by an injected fault.
    pub faults: u64,
}

/// One non-empty poll answer ([`crate::Simulator::poll_log`], `GET /sim/cec/poll-log`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PollAnswer {
    /// When the answer was produced (monotonic; not serialised).
    #[serde(skip)]
    pub at: Instant,
    /// The same instant as Unix milliseconds.
    pub unix_ms: u64,
    /// The `receiverId` polled.
    pub user_id: String,
    /// The `messageCode` of every message of the answer, in order.
    pub message_codes: Vec<String>,
    /// Whether the answer repeated the previous one ([`crate::Simulator::duplicate_next_poll`]).
    pub duplicate: bool,
}

#[derive(Debug, Default)]
struct EndpointCounters {
    calls: AtomicU64,
    unauthorized: AtomicU64,
    faults: AtomicU64,
}

/// Lock-free counters, plus the poll log behind a short-lived lock.
#[derive(Debug)]
pub(crate) struct Counters {
    endpoints: [EndpointCounters; Endpoint::COUNTED.len()],
    pub(crate) access_tokens_issued: AtomicU64,
    pub(crate) cc_tokens_issued: AtomicU64,
    pub(crate) cc_tokens_renewed: AtomicU64,
    pub(crate) sends_deduplicated: AtomicU64,
    /// Non-empty poll answers, oldest first, at most `poll_log_capacity` of them.
    poll_log: Mutex<VecDeque<PollAnswer>>,
    poll_log_capacity: usize,
}

impl Counters {
    pub(crate) fn new(poll_log_capacity: usize) -> Self {
        Counters {
            endpoints: Default::default(),
            access_tokens_issued: AtomicU64::new(0),
            cc_tokens_issued: AtomicU64::new(0),
            cc_tokens_renewed: AtomicU64::new(0),
            sends_deduplicated: AtomicU64::new(0),
            poll_log: Mutex::new(VecDeque::new()),
            poll_log_capacity,
        }
    }

    fn of(&self, ep: Endpoint) -> Option<&EndpointCounters> {
        ep.index().and_then(|i| self.endpoints.get(i))
    }

    pub(crate) fn call(&self, ep: Endpoint) {
        if let Some(c) = self.of(ep) {
            c.calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn unauthorized(&self, ep: Endpoint) {
        if let Some(c) = self.of(ep) {
            c.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn fault(&self, ep: Endpoint) {
        if let Some(c) = self.of(ep) {
            c.faults.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn log_poll(&self, answer: PollAnswer) {
        if self.poll_log_capacity == 0 {
            return;
        }
        let mut log = lock(&self.poll_log);
        if log.len() >= self.poll_log_capacity {
            log.pop_front();
        }
        log.push_back(answer);
    }

    pub(crate) fn poll_log(&self) -> Vec<PollAnswer> {
        lock(&self.poll_log).iter().cloned().collect()
    }

    pub(crate) fn snapshot(&self) -> SimStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = SimStats {
            access_tokens_issued: get(&self.access_tokens_issued),
            cc_tokens_issued: get(&self.cc_tokens_issued),
            cc_tokens_renewed: get(&self.cc_tokens_renewed),
            sends_deduplicated: get(&self.sends_deduplicated),
            ..SimStats::default()
        };
        for (ep, c) in Endpoint::COUNTED.iter().zip(&self.endpoints) {
            let e = EndpointStats {
                calls: get(&c.calls),
                unauthorized: get(&c.unauthorized),
                faults: get(&c.faults),
            };
            s.unauthorized += e.unauthorized;
            s.faults_served += e.faults;
            s.endpoints.insert(*ep, e);
        }
        s
    }
}
