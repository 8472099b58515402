//! The Tencent inputs: TimSend and TimChunk from NATS (parsed, and a send turned into the
//! send_msg request), and callback bodies from Tencent. Never a panic; every refusal names a field.
#![no_main]

use contract::tim_payload::{inbound, parse_chunk, parse_send};
use relay::timlink::request::send_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_send(data) {
        Ok(m) => {
            if let Err(e) = send_request(&m, "user", "id") {
                assert!(!e.field.is_empty());
            }
        }
        Err(e) => assert!(!e.field.is_empty() && !e.reason.is_empty()),
    }
    if let Err(e) = parse_chunk(data) {
        assert!(!e.field.is_empty());
    }
    let _ = inbound(data, "id", "app", "Bot.OnC2CMessage", time::OffsetDateTime::UNIX_EPOCH);
});
