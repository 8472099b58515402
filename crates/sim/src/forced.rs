//! Forced result codes: the next answers of an endpoint carry a chosen `resultCode` and
//! `resultDesc` instead of being processed, so that every documented code — including those the
//! simulated tenant never produces by itself (`"3001000002"` no SIP server, `"10010000002"` flow
//! control, …) — can be provoked.
//!
//! A forced answer is served after faults and before any check: it is HTTP 200 with
//! `{"resultCode":…,"resultDesc":…}` and nothing is processed or recorded.

use std::sync::Mutex;

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::auth::{CodeDesc, json};
use super::faults::{Endpoint, lock};

/// One forced result (control API: `POST /sim/cec/force-result`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Forced {
    /// Which endpoint's answers ([`Endpoint::Any`] for every endpoint).
    pub(crate) endpoint: Endpoint,
    pub(crate) result_code: String,
    #[serde(default)]
    pub(crate) result_desc: String,
    /// For how many answers; at least one.
    #[serde(default = "one")]
    pub(crate) times: u32,
}

fn one() -> u32 {
    1
}

impl Forced {
    /// The answer served in place of the normal one.
    pub(crate) fn response(&self) -> Response {
        json(
            StatusCode::OK,
            &CodeDesc::new(&self.result_code, &self.result_desc),
        )
    }
}

/// The forced results in force, in the order they were set.
#[derive(Debug, Default)]
pub(crate) struct ForcedResults {
    list: Mutex<Vec<Forced>>,
}

impl ForcedResults {
    pub(crate) fn add(&self, forced: Forced) {
        if forced.times > 0 {
            lock(&self.list).push(forced);
        }
    }

    /// The forced result for this call of `called`, if any, counting it down.
    pub(crate) fn take(&self, called: Endpoint) -> Option<Forced> {
        let mut list = lock(&self.list);
        let i = list.iter().position(|f| f.endpoint.matches(called))?;
        let served = list[i].clone();
        list[i].times = list[i].times.saturating_sub(1);
        if list[i].times == 0 {
            list.remove(i);
        }
        Some(served)
    }
}
