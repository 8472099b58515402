//! [`SimConfig`]: the simulated tenant's credentials and how its robot, agents and queue behave.

use std::time::Duration;

use serde::Deserialize;

use super::tim::TimSimConfig;

/// How the simulated CEC tenant behaves. Every field has a default, so `{}` (or
/// `SimConfig::default()`) is a working tenant with a robot in front of available agents.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// The `app_key` tokenByAkSk accepts and the `x-app-key` every ccmessaging call must carry.
    pub app_key: String,
    /// The `app_secret` tokenByAkSk accepts. Never logged (`Debug` redacts it).
    pub app_secret: String,
    /// The web channel's "配置ID": applyToken's `channelId` and send's `to` must equal it; it is the
    /// `from` of every downlink message.
    pub channel_config_id: String,
    /// Lifetime of an AccessToken when tokenByAkSk has no `X-Token-Expire`, and its cap when it has.
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// Lifetime of a ccmessaging-token (the document says one hour).
    #[serde(with = "humantime_serde")]
    pub cc_token_ttl: Duration,
    /// Whether CONNECT reaches a scripted robot first (else it goes straight to an agent).
    pub robot: bool,
    /// Whether agents are working: `false` ⇒ reaching an agent answers 12 (working hours).
    pub agents_available: bool,
    /// Customers ahead in the skill queue when one asks for an agent: `> 0` ⇒ the request answers
    /// 11 "Queuing..." and the agent connects once the position has fallen to 0.
    pub queue_length: u32,
    /// How long the queue position takes to fall by one.
    #[serde(with = "humantime_serde")]
    pub queue_step: Duration,
    /// The tenant's offline switch: CONNECT fails and answers `offlineMsg` (the message is kept
    /// as an offline message), as does a CHAT without a session.
    pub offline_mode: bool,
    /// Sends per user per second before "chat failed, send too quick or session keep touch
    /// failed." (13); `None` ⇒ unlimited.
    pub send_rate_limit: Option<u32>,
    /// `offlineMsg.tipText` in offline mode.
    pub offline_tip_text: String,
    /// `senderNickname` of robot messages.
    pub robot_nickname: String,
    /// `robotGender` of robot messages (the sample shows `"MALE"`).
    pub robot_gender: String,
    /// What the robot says on CONNECT.
    pub robot_welcome: String,
    /// `senderNickname` of agent messages.
    pub agent_nickname: String,
    /// What the agent says when connected.
    pub agent_greeting: String,
    /// `senderNickname` of system messages ("系统" in a Chinese tenant, "system" in an English one).
    pub system_nickname: String,
    /// How many non-empty poll answers the poll log keeps (oldest dropped first); 0 ⇒ none.
    pub poll_log_capacity: usize,
    /// How many calls the call log keeps (every poll and Tencent call, with the instance that
    /// made it and its timing; oldest dropped first); 0 ⇒ none.
    pub call_log_capacity: usize,
    /// Largest file uploadFileStream accepts, decoded; a larger one answers 3.
    pub max_file_bytes: usize,
    /// The common phrases queryPhraseByKeyword suggests: those containing `strContent`.
    pub phrases: Vec<String>,
    /// Whether the channel supports click-to-call (and WebRTC): `false` ⇒ createClickToCall
    /// answers 7 and checkClickToCallSupport answers `false`.
    pub click_to_call: bool,
    /// Whether the tenant has the mobile-agent feature: `false` ⇒ v1/mobileagent/createcall
    /// answers "3001000001".
    pub mobile_agent: bool,
    /// `sipServiceAddress` of mobile-agent calls (ip:port).
    pub sip_service_address: String,
    /// The access code of click-to-call and mobile-agent calls.
    pub access_code: String,
    /// The simulated Tencent IM app (`[tim]`).
    #[serde(default)]
    pub tim: TimSimConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            app_key: "sim-app-key".into(),
            app_secret: "sim-app-secret".into(),
            channel_config_id: "1011577355744904195".into(),
            access_token_ttl: Duration::from_secs(600),
            cc_token_ttl: Duration::from_secs(3600),
            robot: true,
            agents_available: true,
            queue_length: 0,
            queue_step: Duration::from_secs(1),
            offline_mode: false,
            send_rate_limit: None,
            offline_tip_text: "当前无座席在线，您的消息已保存为离线留言。".into(),
            robot_nickname: "robot".into(),
            robot_gender: "MALE".into(),
            robot_welcome: "欢迎欢迎，热烈欢迎".into(),
            agent_nickname: "agent".into(),
            agent_greeting: "您好，很高兴为您服务。".into(),
            system_nickname: "系统".into(),
            poll_log_capacity: 1_000_000,
            call_log_capacity: 1_000_000,
            max_file_bytes: 10 * 1024 * 1024,
            phrases: [
                "网格版APP在哪里下载",
                "网格版APP怎么登录?",
                "网格版APP支持什么手机版本",
                "How do I reset my password?",
                "Where can I download the app?",
            ]
            .map(String::from)
            .to_vec(),
            click_to_call: true,
            mobile_agent: true,
            sip_service_address: "127.0.0.1:5063".into(),
            access_code: "179080000537636".into(),
            tim: TimSimConfig::default(),
        }
    }
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("app_key", &self.app_key)
            .field("app_secret", &"[redacted]")
            .field("channel_config_id", &self.channel_config_id)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("cc_token_ttl", &self.cc_token_ttl)
            .field("robot", &self.robot)
            .field("agents_available", &self.agents_available)
            .field("queue_length", &self.queue_length)
            .field("queue_step", &self.queue_step)
            .field("offline_mode", &self.offline_mode)
            .field("send_rate_limit", &self.send_rate_limit)
            .field("poll_log_capacity", &self.poll_log_capacity)
            .field("call_log_capacity", &self.call_log_capacity)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("click_to_call", &self.click_to_call)
            .field("mobile_agent", &self.mobile_agent)
            .field("tim", &self.tim)
            .finish_non_exhaustive()
    }
}
