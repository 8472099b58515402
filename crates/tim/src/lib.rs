//! The Tencent Cloud IM client: Desk `v4/desk_http_svc/send_msg` and robot
//! `v4/openim_robot_http_svc/send_stream_msg`, as Tencent Cloud IM publishes them (the Desk REST
//! API's *send_msg* page and the robot REST API's *send_stream_msg* page).
//!
//! - [`wire`]: request and answer bodies, field names exactly as documented.
//! - [`error`]: typed failures with [`TimError::is_retryable`], apart from sending.
//! - [`usersig`]: TLSSigAPIv2 signing and verifying of UserSigs.
//! - [`client`]: one app's HTTP client: URL query (`sdkappid`, `identifier`, `usersig`,
//!   `random`, `contenttype=json`), the cached admin UserSig, answer classification.
//!
//! Like the CEC client (the `cec` crate), it knows nothing of NATS or of the store.

pub mod client;
pub mod error;
pub mod usersig;
pub mod wire;

pub use client::TimClient;
pub use error::{TimEndpoint, TimError};
