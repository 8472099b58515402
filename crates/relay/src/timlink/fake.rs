//! An in-process Tencent IM for the timlink tests: enforces a calls-per-second limit over a
//! sliding one-second window (answering 60018 over it, like Tencent's REST frequency limit),
//! keeps `MsgKey` state per stream, de-duplicates `send_msg` by `MsgRandom`, records every call,
//! and can be told to fail the next calls.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::TimUpstream;
use tim::wire::{SendMsgRequest, StreamMsgRequest, TimAnswer};
use tim::{TimEndpoint, TimError};

#[derive(Debug, Clone, Default)]
pub struct FakeStream {
    pub to: String,
    pub text: String,
    pub calls: u32,
    pub finished: bool,
}

#[derive(Default)]
pub struct FakeState {
    window: VecDeque<Instant>,
    pub calls: u64,
    pub rate_limited: u64,
    pub max_in_one_second: usize,
    pub streams: HashMap<String, FakeStream>,
    next_key: u64,
    /// Every accepted send_msg, with whether it was a duplicate by MsgRandom.
    pub sends: Vec<(SendMsgRequest, bool)>,
    seen: HashSet<(String, u32)>,
    /// Error codes the next calls answer, per endpoint.
    pub send_faults: VecDeque<i64>,
    pub stream_faults: VecDeque<i64>,
    /// Stream calls that carried a MsgKey nobody issued or came after Finish.
    pub bad_keys: u64,
}

pub struct FakeTim {
    limit: usize,
    latency: Duration,
    pub state: Mutex<FakeState>,
}

fn api(endpoint: TimEndpoint, code: i64) -> TimError {
    TimError::Api {
        endpoint,
        code,
        info: format!("fake error {code}"),
    }
}

impl FakeTim {
    pub fn new(limit: usize, latency: Duration) -> Self {
        FakeTim {
            limit,
            latency,
            state: Mutex::new(FakeState::default()),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Counts the call; Err when it is over the limit.
    fn arrive(&self, endpoint: TimEndpoint) -> Result<(), TimError> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        s.calls += 1;
        while s
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            s.window.pop_front();
        }
        if s.window.len() >= self.limit {
            s.rate_limited += 1;
            return Err(api(endpoint, 60018));
        }
        s.window.push_back(now);
        s.max_in_one_second = s.max_in_one_second.max(s.window.len());
        Ok(())
    }
}

fn ok(msg_key: Option<String>) -> TimAnswer {
    TimAnswer {
        action_status: "OK".into(),
        error_code: 0,
        error_info: String::new(),
        msg_key,
    }
}

#[async_trait]
impl TimUpstream for FakeTim {
    async fn send_msg(&self, req: &SendMsgRequest) -> Result<TimAnswer, TimError> {
        let e = TimEndpoint::DeskSendMsg;
        self.arrive(e)?;
        tokio::time::sleep(self.latency).await;
        let mut s = self.state.lock().unwrap();
        if let Some(code) = s.send_faults.pop_front() {
            return Err(api(e, code));
        }
        let addr = req
            .session_id
            .clone()
            .unwrap_or_else(|| format!("{:?}>{:?}", req.from_account, req.to_account));
        let dup = !s.seen.insert((addr, req.msg_random));
        s.sends.push((req.clone(), dup));
        Ok(ok(None))
    }

    async fn send_stream_msg(&self, req: &StreamMsgRequest) -> Result<TimAnswer, TimError> {
        let e = TimEndpoint::RobotSendStreamMsg;
        self.arrive(e)?;
        tokio::time::sleep(self.latency).await;
        let mut s = self.state.lock().unwrap();
        if let Some(code) = s.stream_faults.pop_front() {
            return Err(api(e, code));
        }
        let finish = req.finish == Some(1);
        let key = match &req.msg_key {
            None => {
                s.next_key += 1;
                let key = format!("key-{}", s.next_key);
                s.streams.insert(
                    key.clone(),
                    FakeStream {
                        to: req.to_account.clone(),
                        ..Default::default()
                    },
                );
                key
            }
            Some(k) => k.clone(),
        };
        let Some(st) = s.streams.get_mut(&key).filter(|st| !st.finished) else {
            s.bad_keys += 1;
            return Err(api(e, 10004));
        };
        st.text.push_str(&req.chunk);
        st.calls += 1;
        st.finished = finish;
        Ok(ok(Some(key)))
    }
}
