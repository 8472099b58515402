//! RPC request bodies and reply subjects from NATS: any bytes parse to a body or a refusal; every
//! op finds its customer (by `userId` or its own user field) or refuses naming a field; a reply
//! subject is allowed only under an inbox prefix. Never a panic.
#![no_main]

use relay::rpc::{Body, own_user_field, reply_allowed};
use libfuzzer_sys::fuzz_target;

const OPS: &[&str] = &[
    "queueInfo",
    "phrases",
    "upload",
    "download",
    "clickToCall.support",
    "clickToCall.create",
    "clickToCall.events",
    "clickToCall.drop",
    "mobileAgentCall",
    "send",
    "satisfaction",
    "robotFeedback",
    "leaveMessage",
];

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = Body::parse(data) {
        for op in OPS {
            match body.customer(op) {
                Ok(user) => assert!(!user.is_empty() && !user.contains(['.', '*', '>', ' '])),
                Err(e) => {
                    let text = format!("{e:?}");
                    assert!(text.contains("userId") || own_user_field(op).is_some_and(|f| text.contains(f)));
                }
            }
        }
    }
    if let Ok(reply) = std::str::from_utf8(data) {
        let prefixes = vec!["_INBOX.".to_owned(), "_R_.".to_owned()];
        if reply_allowed(&prefixes, reply) {
            assert!(reply.starts_with("_INBOX.") || reply.starts_with("_R_."));
            assert!(!reply.contains(['*', '>']) && !reply.ends_with('.'));
        }
    }
});
