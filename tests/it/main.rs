//! The integration tests: one binary, one module per surface, shared helpers in `support`.

mod admin;
mod asyncapi;
mod bounds;
mod cec_relay;
mod chaos;
mod cli;
mod cluster;
mod crash;
mod durable;
mod fuzz_nats;
mod grafana;
mod harness_smoke;
mod logs;
mod media;
mod outage;
mod partitioned;
mod pg_tls;
mod poison;
mod result_codes;
mod rpc;
mod secrets;
mod security;
mod startup;
mod support;
mod tim;
mod upstream_faults;
