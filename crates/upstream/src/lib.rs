//! What the two upstream clients (`cec`, `tim`) share, and nothing else: reading an answer's body
//! up to a bound ([`bounded`]) and the upstream-call metrics ([`metrics`]). It knows nothing of
//! NATS, the store or either API's wire format.

pub mod bounded;
pub mod metrics;
