//! The integration tests: one binary, one module per surface, shared helpers in `support`.

mod cec_relay;
mod cli;
mod crash;
mod harness_smoke;
mod media;
mod rpc;
mod support;
