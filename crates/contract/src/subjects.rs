//! The contract's NATS subjects, all in one place (documented for users in the README, *Subjects*,
//! and in `docs/asyncapi.yaml`).
//!
//! ```text
//! P.cec.<t>.up.<u>      services → CEC          stream P_IN
//! P.cec.<t>.down.<u>    CEC → services          stream P_OUT
//! P.cec.<t>.event.<u>   relay → services        stream P_OUT
//! P.cec.<t>.rpc.<op>    request-reply           not stored
//! P.tim.<a>.send.<u>    services → Tencent      stream P_IN
//! P.tim.<a>.stream.<u>  services → Tencent      stream P_IN
//! P.tim.<a>.event.<u>   relay → services        stream P_OUT
//! P.tim.<a>.in.<u>      Tencent → services      stream P_OUT
//! P.error               refusals that name no routable tenant/user   stream P_OUT
//! P.rpc.<op>            relay-wide request-reply                     not stored
//! ```

/// Why a name or id cannot be one token of a subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {max} characters")]
    TooLong { max: usize },
    #[error("contains {0:?}, which cannot appear in a NATS subject token")]
    BadChar(char),
    #[error("is {len} bytes long; a subject token may have at most {max}")]
    TooManyBytes { len: usize, max: usize },
}

/// The longest subject token (in bytes) the relay takes from outside: a user id in a subject or
/// a callback. Every subject the relay builds is then far below nats-server's control line limit
/// (4 KiB by default), which closes the connection of a client that publishes beyond it.
pub const MAX_TOKEN_BYTES: usize = 128;

/// The longest subject the relay publishes on; an outbox row with a longer one is a dead letter.
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// Checks that `s` can stand as one subject token: 1 to [`MAX_TOKEN_BYTES`] bytes, no
/// whitespace, `.`, `*`, `>` or control characters: names and ids go into subjects verbatim, so
/// anything else could not be routed.
pub fn check_token(s: &str) -> Result<(), TokenError> {
    if s.is_empty() {
        return Err(TokenError::Empty);
    }
    if s.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooManyBytes {
            len: s.len(),
            max: MAX_TOKEN_BYTES,
        });
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>'))
    {
        return Err(TokenError::BadChar(c));
    }
    Ok(())
}

/// Checks a tenant or app name: `[A-Za-z0-9_-]{1,64}`.
pub fn check_name(s: &str) -> Result<(), TokenError> {
    if s.is_empty() {
        return Err(TokenError::Empty);
    }
    if s.chars().count() > 64 {
        return Err(TokenError::TooLong { max: 64 });
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(TokenError::BadChar(c));
    }
    Ok(())
}

/// At most the first `max` characters of `s`, with its length when cut: how an untrusted subject
/// or token appears in logs and events.
pub fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}… ({} bytes)", &s[..end], s.len()),
    }
}

/// Builds the contract's subjects under one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Subjects {
            prefix: prefix.into(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `<PREFIX>_IN`: what services send to the contact centers.
    pub fn in_stream(&self) -> String {
        format!("{}_IN", self.prefix.to_uppercase())
    }
    /// `<PREFIX>_OUT`: what the relay publishes.
    pub fn out_stream(&self) -> String {
        format!("{}_OUT", self.prefix.to_uppercase())
    }
    /// Subjects captured by the `_IN` stream.
    pub fn in_stream_subjects(&self) -> Vec<String> {
        let p = &self.prefix;
        vec![
            format!("{p}.cec.*.up.*"),
            format!("{p}.tim.*.send.*"),
            format!("{p}.tim.*.stream.*"),
        ]
    }
    /// Subjects captured by the `_OUT` stream.
    pub fn out_stream_subjects(&self) -> Vec<String> {
        let p = &self.prefix;
        vec![
            format!("{p}.cec.*.down.*"),
            format!("{p}.cec.*.event.*"),
            format!("{p}.tim.*.event.*"),
            format!("{p}.tim.*.in.*"),
            format!("{p}.error"),
        ]
    }
    /// Filter of the durable consumer that feeds CEC uplink.
    pub fn cec_up_filter(&self) -> String {
        format!("{}.cec.*.up.*", self.prefix)
    }
    pub fn cec_up(&self, tenant: &str, user: &str) -> String {
        format!("{}.cec.{tenant}.up.{user}", self.prefix)
    }
    pub fn cec_down(&self, tenant: &str, user: &str) -> String {
        format!("{}.cec.{tenant}.down.{user}", self.prefix)
    }
    pub fn cec_event(&self, tenant: &str, user: &str) -> String {
        format!("{}.cec.{tenant}.event.{user}", self.prefix)
    }
    pub fn cec_rpc(&self, tenant: &str, op: &str) -> String {
        format!("{}.cec.{tenant}.rpc.{op}", self.prefix)
    }
    /// Where a refusal goes when it names no routable tenant and user.
    pub fn error(&self) -> String {
        format!("{}.error", self.prefix)
    }
    /// The per-user event subject when both tokens are routable, else [`Self::error`].
    pub fn cec_event_or_error(&self, tenant: &str, user: &str) -> String {
        if check_token(tenant).is_ok() && check_token(user).is_ok() {
            self.cec_event(tenant, user)
        } else {
            self.error()
        }
    }

    /// Filter of the durable consumer that feeds Tencent IM (`send` and `stream`; `_IN` holds
    /// no other `tim` subjects).
    pub fn tim_filter(&self) -> String {
        format!("{}.tim.>", self.prefix)
    }
    pub fn tim_send(&self, app: &str, user: &str) -> String {
        format!("{}.tim.{app}.send.{user}", self.prefix)
    }
    pub fn tim_stream(&self, app: &str, user: &str) -> String {
        format!("{}.tim.{app}.stream.{user}", self.prefix)
    }
    pub fn tim_event(&self, app: &str, user: &str) -> String {
        format!("{}.tim.{app}.event.{user}", self.prefix)
    }
    pub fn tim_in(&self, app: &str, user: &str) -> String {
        format!("{}.tim.{app}.in.{user}", self.prefix)
    }
    /// The per-user Tencent event subject when both tokens are routable, else [`Self::error`].
    pub fn tim_event_or_error(&self, app: &str, user: &str) -> String {
        if check_token(app).is_ok() && check_token(user).is_ok() {
            self.tim_event(app, user)
        } else {
            self.error()
        }
    }
    /// Splits `P.tim.<a>.<kind>.<u>` into `(app, kind, user)`.
    pub fn parse_tim<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?;
        let rest = rest.strip_prefix(".tim.")?;
        let mut it = rest.splitn(3, '.');
        let app = it.next()?;
        let kind = it.next()?;
        let user = it.next()?;
        if app.is_empty() || kind.is_empty() || user.is_empty() || user.contains('.') {
            return None;
        }
        Some((app, kind, user))
    }

    /// Splits `P.cec.<t>.<kind>.<u>` into `(tenant, kind, user)`.
    pub fn parse_cec<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?;
        let rest = rest.strip_prefix(".cec.")?;
        let mut it = rest.splitn(3, '.');
        let tenant = it.next()?;
        let kind = it.next()?;
        let user = it.next()?;
        if tenant.is_empty() || kind.is_empty() || user.is_empty() || user.contains('.') {
            return None;
        }
        Some((tenant, kind, user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_cec_subjects() {
        let s = Subjects::new("ccrelay");
        assert_eq!(s.cec_up("acme", "u1"), "ccrelay.cec.acme.up.u1");
        assert_eq!(s.in_stream(), "CCRELAY_IN");
        assert_eq!(s.out_stream(), "CCRELAY_OUT");
        assert_eq!(
            s.parse_cec("ccrelay.cec.acme.up.u1"),
            Some(("acme", "up", "u1"))
        );
        assert_eq!(s.parse_cec("ccrelay.cec.acme.up"), None);
        assert_eq!(s.parse_cec("other.cec.acme.up.u1"), None);
        assert_eq!(s.parse_cec("ccrelay.cec.acme.up.u1.x"), None);
    }

    #[test]
    fn builds_and_parses_tim_subjects() {
        let s = Subjects::new("ccrelay");
        assert_eq!(s.tim_send("shop", "u1"), "ccrelay.tim.shop.send.u1");
        assert_eq!(s.tim_stream("shop", "u1"), "ccrelay.tim.shop.stream.u1");
        assert_eq!(s.tim_event("shop", "u1"), "ccrelay.tim.shop.event.u1");
        assert_eq!(s.tim_in("shop", "u1"), "ccrelay.tim.shop.in.u1");
        assert_eq!(s.tim_filter(), "ccrelay.tim.>");
        assert_eq!(
            s.parse_tim("ccrelay.tim.shop.stream.u1"),
            Some(("shop", "stream", "u1"))
        );
        assert_eq!(s.parse_tim("ccrelay.cec.shop.send.u1"), None);
        assert_eq!(s.parse_tim("ccrelay.tim.shop.send"), None);
        assert_eq!(s.tim_event_or_error("shop", "a b"), "ccrelay.error");
    }

    #[test]
    fn tokens_refuse_what_nats_cannot_route() {
        assert!(check_token("user-1_A").is_ok());
        assert_eq!(check_token(""), Err(TokenError::Empty));
        assert_eq!(check_token("a.b"), Err(TokenError::BadChar('.')));
        assert_eq!(check_token("a b"), Err(TokenError::BadChar(' ')));
        assert_eq!(check_token("a*"), Err(TokenError::BadChar('*')));
        assert_eq!(check_token(">"), Err(TokenError::BadChar('>')));
        assert_eq!(check_token("a\u{7}"), Err(TokenError::BadChar('\u{7}')));
        assert!(check_name("acme_01-x").is_ok());
        assert!(check_name("ac.me").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_token(&"y".repeat(MAX_TOKEN_BYTES)).is_ok());
        assert_eq!(
            check_token(&"y".repeat(4040)),
            Err(TokenError::TooManyBytes {
                len: 4040,
                max: MAX_TOKEN_BYTES
            })
        );
        assert_eq!(excerpt("abc", 2), "ab… (3 bytes)");
        assert_eq!(excerpt("abc", 3), "abc");
    }

    #[test]
    fn unroutable_errors_go_to_the_error_subject() {
        let s = Subjects::new("p");
        assert_eq!(s.cec_event_or_error("t", "u"), "p.cec.t.event.u");
        assert_eq!(s.cec_event_or_error("t", "a b"), "p.error");
        assert_eq!(s.cec_event_or_error("t", &"y".repeat(4040)), "p.error");
    }
}
