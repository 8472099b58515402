//! What services publish on NATS: an UpMessage is parsed and checked against the documented
//! limits for a user id taken from the input; subjects are parsed. Never a panic; every refusal
//! names a field.
#![no_main]

use contract::Subjects;
use contract::payload::UpMessage;
use relay::uplink::validate::check_up;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |n| (*n as usize) % 32).min(data.len());
    let (user, body) = data.split_at(split);
    let user = String::from_utf8_lossy(user);
    if let Ok(m) = serde_json::from_slice::<UpMessage>(body)
        && let Err(refusal) = check_up(&user, &m)
    {
        assert!(!refusal.field.is_empty() && !refusal.reason.is_empty());
    }
    let s = Subjects::new("ccrelay");
    let _ = s.parse_cec(&format!("ccrelay.cec.{user}"));
});
