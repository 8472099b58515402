//! A Tencent callback as the relay's endpoint sees it: a query string (`Sign`, `RequestTime`,
//! `CallbackCommand`…) and a body. The signature check answers without panicking and accepts
//! only the token's own sign of a time inside the window; the body parses or is refused.
#![no_main]

use std::collections::HashMap;

use contract::tim_payload::inbound;
use relay::timlink::callback::{MAX_AGE_SECS, MAX_AHEAD_SECS, body_limit, check_sign, sign};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let query: HashMap<String, String> = url::form_urlencoded::parse(query).into_owned().collect();
    if check_sign("token", &query, NOW).is_ok() {
        let time = &query["RequestTime"];
        let t: i64 = time.trim().parse().unwrap();
        assert!(NOW - MAX_AGE_SECS <= t && t <= NOW + MAX_AHEAD_SECS);
        assert!(sign("token", time).eq_ignore_ascii_case(query["Sign"].trim()));
    }
    let _ = body_limit(body.len());
    let command = query.get("CallbackCommand").map(String::as_str).unwrap_or("");
    let _ = inbound(body, "id", "app", command, time::OffsetDateTime::UNIX_EPOCH);
});
