//! The integration tests: one binary, one module per surface, shared helpers in `support`.

mod admin;
mod asyncapi;
mod cec_relay;
mod chaos;
mod cli;
mod crash;
mod durable;
mod fuzz_nats;
mod harness_smoke;
mod logs;
mod media;
mod outage;
mod result_codes;
mod rpc;
mod support;
mod tim;
mod upstream_faults;
