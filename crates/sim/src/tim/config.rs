//! [`TimSimConfig`]: the simulated Tencent IM app's credentials and limits.

use serde::Deserialize;

/// The simulated Tencent IM app (`[tim]` of the simulator's settings, `SimConfig.tim`). Every
/// field has a default, so `{}` is a working app.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimSimConfig {
    /// The SDKAppID every call's `sdkappid` must name and UserSigs must be signed for.
    pub sdkappid: u64,
    /// The key UserSigs are verified with. Never logged (`Debug` redacts it).
    pub secret_key: String,
    /// The App administrator: calls by another identifier (with a valid sig) are refused with
    /// 90009 (send_msg) or 60010 (send_stream_msg).
    pub admin_identifier: String,
    /// Calls per second, all endpoints together, in fixed windows aligned to wall-clock seconds;
    /// a call over it is answered 60007 ([`::tim::error::code::SIM_RATE_LIMIT`]).
    pub rate_limit: u32,
    /// The token that signs the callbacks it sends (`Sign` = hex sha256(token + RequestTime));
    /// empty ⇒ callbacks carry no `RequestTime` / `Sign`. Never logged.
    pub callback_token: String,
}

impl Default for TimSimConfig {
    fn default() -> Self {
        TimSimConfig {
            sdkappid: 1400000000,
            secret_key: "sim-tim-secret-key".into(),
            admin_identifier: "administrator".into(),
            rate_limit: 200,
            callback_token: "sim-callback-token".into(),
        }
    }
}

impl std::fmt::Debug for TimSimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimSimConfig")
            .field("sdkappid", &self.sdkappid)
            .field("secret_key", &"[redacted]")
            .field("admin_identifier", &self.admin_identifier)
            .field("rate_limit", &self.rate_limit)
            .field("callback_token", &"[redacted]")
            .finish()
    }
}
