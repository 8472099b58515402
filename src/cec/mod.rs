//! Huawei Cloud CEC web channel: wire types ([`wire`]), and the HTTP client with its token caches.

pub mod wire;
