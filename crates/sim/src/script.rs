//! The scripted contact center: how robot, agent and system messages look, and what the robot and
//! the agent answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::SimConfig;
use ::cec::wire::{CHANNEL_WEB, DownlinkMessage, SendRequest, StrOrNum};

/// Who a downlink message is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    Robot { inter_idx: u32 },
    Agent,
    System,
}

/// A borrowed view of the configuration and the id counter, enough to build messages.
#[derive(Clone, Copy)]
pub(crate) struct Script<'a> {
    pub(crate) cfg: &'a SimConfig,
    seq: &'a AtomicU64,
}

impl<'a> Script<'a> {
    pub(crate) fn new(cfg: &'a SimConfig, seq: &'a AtomicU64) -> Self {
        Script { cfg, seq }
    }

    /// A downlink message as poll returns it, with every documented field the upstream fills:
    /// `timestamp` a number of milliseconds (as in the sample), a unique `messageCode`.
    pub(crate) fn message(
        &self,
        to: &str,
        call_id: &str,
        sender: Sender,
        control_type: &str,
        content: &str,
        at: Instant,
    ) -> DownlinkMessage {
        let cfg = self.cfg;
        let (source, nickname, gender, inter_idx) = match sender {
            Sender::Robot { inter_idx } => (
                "ROBOT",
                &cfg.robot_nickname,
                Some(cfg.robot_gender.clone()),
                Some(inter_idx.to_string()),
            ),
            Sender::Agent => ("AGENT", &cfg.agent_nickname, None, None),
            Sender::System => ("SYSTEM", &cfg.system_nickname, None, None),
        };
        DownlinkMessage {
            channel: Some(CHANNEL_WEB.to_owned()),
            content: Some(content.to_owned()),
            from: Some(cfg.channel_config_id.clone()),
            media_type: Some("TEXT".to_owned()),
            sender_nickname: Some(nickname.clone()),
            source_type: Some(source.to_owned()),
            timestamp: Some(StrOrNum::Int(unix_ms(at))),
            to: Some(to.to_owned()),
            inter_idx,
            message_code: Some(uuid::Uuid::now_v7().simple().to_string()),
            // The sample shows `"simQuestions": null`.
            sim_questions: Some(Value::Null),
            call_id: Some(call_id.to_owned()),
            control_type: Some(control_type.to_owned()),
            robot_gender: gender,
            ..DownlinkMessage::default()
        }
    }

    /// A fresh `callId`: Unix seconds, a dash, a counter.
    pub(crate) fn call_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", unix_ms(Instant::now()) / 1000)
    }
}

/// What the scripted robot answers to a customer's CHAT.
pub(crate) fn robot_reply(req: &SendRequest) -> String {
    match req.media_type.as_str() {
        "TEXT" => format!("You said: {}", req.content),
        other => format!("You sent a message of type {other}."),
    }
}

/// What the scripted agent answers to a customer's CHAT.
pub(crate) fn agent_reply(req: &SendRequest) -> String {
    match req.media_type.as_str() {
        "TEXT" => format!("Agent: {}", req.content),
        other => format!("Agent: received your message of type {other}."),
    }
}

/// `at` as Unix milliseconds.
pub(crate) fn unix_ms(at: Instant) -> i64 {
    let now = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if at <= now {
        wall - now.duration_since(at).as_millis() as i64
    } else {
        wall + at.duration_since(now).as_millis() as i64
    }
}
