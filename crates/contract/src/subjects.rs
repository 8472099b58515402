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
//!
//! On a cluster (docs/HA.md, "Uplink") the `_IN` stream's subject transform appends the
//! partition of the (tenant, user) — `P.cec.<t>.up.<u>.<p>`, `P.tim.<a>.<kind>.<u>.<p>` — as it
//! stores a message ([`Subjects::in_partition_transform`]). Services still publish the 5-token
//! subjects; the parsers accept both forms, and [`Subjects::partition_token`] reads `<p>`.

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
    /// Splits `P.tim.<a>.<kind>.<u>` — or `P.tim.<a>.<kind>.<u>.<p>` as stored by a
    /// partitioned `_IN` ([`Self::partition_token`]) — into `(app, kind, user)`.
    pub fn parse_tim<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        self.parse_family(subject, ".tim.")
            .map(|(a, k, u, _)| (a, k, u))
    }

    /// Splits `P.cec.<t>.<kind>.<u>` — or `P.cec.<t>.<kind>.<u>.<p>` as stored by a
    /// partitioned `_IN` ([`Self::partition_token`]) — into `(tenant, kind, user)`.
    pub fn parse_cec<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        self.parse_family(subject, ".cec.")
            .map(|(t, k, u, _)| (t, k, u))
    }

    /// The partition number a partitioned `_IN` stored `subject` under (its sixth token, as in
    /// `P.cec.acme.up.alice.17`); `None` for a contract subject without one, or not a
    /// `cec`/`tim` subject at all.
    pub fn partition_token(&self, subject: &str) -> Option<u32> {
        self.parse_family(subject, ".cec.")
            .or_else(|| self.parse_family(subject, ".tim."))
            .and_then(|(_, _, _, p)| p)
    }

    /// `subject` without the partition token a partitioned `_IN` appended: the subject the
    /// service published on. Any other subject is returned as it is.
    pub fn without_partition<'a>(&self, subject: &'a str) -> &'a str {
        match self.partition_token(subject) {
            Some(_) => subject.rsplit_once('.').map_or(subject, |(head, _)| head),
            None => subject,
        }
    }

    /// `P<family><a>.<kind>.<u>[.<p>]` into its tokens; `<p>` must be a partition number.
    fn parse_family<'a>(
        &self,
        subject: &'a str,
        family: &str,
    ) -> Option<(&'a str, &'a str, &'a str, Option<u32>)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?;
        let rest = rest.strip_prefix(family)?;
        let mut it = rest.splitn(3, '.');
        let first = it.next()?;
        let kind = it.next()?;
        let tail = it.next()?;
        let (user, partition) = match tail.split_once('.') {
            None => (tail, None),
            Some((user, p)) => (user, Some(parse_partition(p)?)),
        };
        if first.is_empty() || kind.is_empty() || user.is_empty() {
            return None;
        }
        Some((first, kind, user, partition))
    }

    /// The `_IN` stream's subject transform on a cluster of `partitions` partitions, as
    /// (source, destination): every 5-token subject of the stream (`P.cec.<t>.up.<u>`,
    /// `P.tim.<a>.send.<u>`, `P.tim.<a>.stream.<u>`) gets a sixth token, nats-server's
    /// `partition(partitions, 2, 4)` of its second and fourth wildcard tokens — the (tenant,
    /// user) or (app, user) — which is [`crate::partition::of`].
    pub fn in_partition_transform(&self, partitions: u32) -> (String, String) {
        let p = &self.prefix;
        (
            format!("{p}.*.*.*.*"),
            format!(
                "{p}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}.\
                 {{{{wildcard(4)}}}}.{{{{partition({},2,4)}}}}",
                partitions.max(1)
            ),
        )
    }

    /// Filter of the CEC uplink consumer of partition `p` on a partitioned `_IN`.
    pub fn cec_up_partition_filter(&self, p: u32) -> String {
        format!("{}.cec.*.up.*.{p}", self.prefix)
    }

    /// Filter of the Tencent IM consumer of partition `p` on a partitioned `_IN`.
    pub fn tim_partition_filter(&self, p: u32) -> String {
        format!("{}.tim.*.*.*.{p}", self.prefix)
    }
}

/// A partition token as nats-server's transform writes it: a decimal `u32` with no sign and no
/// leading zero.
fn parse_partition(token: &str) -> Option<u32> {
    let canonical = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    if canonical { token.parse().ok() } else { None }
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
    fn parses_the_partition_token_a_partitioned_in_stream_appends() {
        let s = Subjects::new("ccrelay");
        assert_eq!(
            s.parse_cec("ccrelay.cec.acme.up.alice.17"),
            Some(("acme", "up", "alice"))
        );
        assert_eq!(
            s.parse_tim("ccrelay.tim.shop.send.u1.0"),
            Some(("shop", "send", "u1"))
        );
        assert_eq!(s.partition_token("ccrelay.cec.acme.up.alice.17"), Some(17));
        assert_eq!(s.partition_token("ccrelay.tim.shop.stream.u1.63"), Some(63));
        assert_eq!(s.partition_token("ccrelay.cec.acme.up.alice"), None);
        assert_eq!(s.partition_token("ccrelay.error"), None);
        assert_eq!(
            s.without_partition("ccrelay.cec.acme.up.alice.17"),
            "ccrelay.cec.acme.up.alice"
        );
        assert_eq!(
            s.without_partition("ccrelay.tim.shop.send.u1"),
            "ccrelay.tim.shop.send.u1"
        );
        // Only a partition number may follow the user: no sign, no leading zero, one token.
        for bad in ["x", "-1", "+1", "01", "", "1.2", "4294967296"] {
            let subject = format!("ccrelay.cec.acme.up.alice.{bad}");
            assert_eq!(s.parse_cec(&subject), None, "{subject}");
            assert_eq!(s.partition_token(&subject), None, "{subject}");
        }
        assert_eq!(s.cec_up_partition_filter(5), "ccrelay.cec.*.up.*.5");
        assert_eq!(s.tim_partition_filter(5), "ccrelay.tim.*.*.*.5");
        assert_eq!(
            s.in_partition_transform(64),
            (
                "ccrelay.*.*.*.*".to_owned(),
                "ccrelay.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.{{wildcard(4)}}\
                 .{{partition(64,2,4)}}"
                    .to_owned()
            )
        );
    }

    proptest::proptest! {
        #[test]
        fn uplink_subjects_parse_back_with_or_without_a_partition(
            tenant in "[A-Za-z0-9_-]{1,64}",
            user in "[^.*> \\t\\r\\n\\x00-\\x1f]{1,40}",
            p in proptest::option::of(0u32..100_000),
            tim in proptest::bool::ANY,
        ) {
            let s = Subjects::new("ccrelay");
            let base = if tim { s.tim_send(&tenant, &user) } else { s.cec_up(&tenant, &user) };
            let subject = match p {
                Some(p) => format!("{base}.{p}"),
                None => base.clone(),
            };
            let parsed = if tim { s.parse_tim(&subject) } else { s.parse_cec(&subject) };
            let kind = if tim { "send" } else { "up" };
            proptest::prop_assert_eq!(parsed, Some((tenant.as_str(), kind, user.as_str())));
            proptest::prop_assert_eq!(s.partition_token(&subject), p);
            proptest::prop_assert_eq!(s.without_partition(&subject), base.as_str());
        }

        #[test]
        fn parsers_never_panic(subject in ".{0,60}") {
            let s = Subjects::new("p");
            let _ = s.parse_cec(&subject);
            let _ = s.parse_tim(&subject);
            let _ = s.partition_token(&subject);
            let _ = s.without_partition(&subject);
        }
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
