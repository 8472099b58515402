//! Token caches of one tenant.
//!
//! - [`AccessTokenCache`]: the tenant's API Fabric AccessToken (tokenByAkSk), shared by all its
//!   users, refreshed before it expires, one refresh at a time.
//! - [`UserTokens`]: each user's `ccmessaging-token` (applyToken), replaced whenever a response
//!   header carries a new one; dropped when the user's session ends, and bounded in number: past
//!   its capacity the least recently used are dropped (a live session's token is used at every
//!   poll, and is put back from the database should it be dropped all the same).
//!
//! Tokens are bearer credentials: they are never logged and have no `Debug` output.
//!
//! Both caches keep each token's header value ready-made (`Authorization: Bearer …`,
//! `ccmessaging-token: …`), so a call clones a reference-counted value instead of formatting and
//! copying the token again, and reading a user's token clones nothing but an `Arc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;

/// A cached AccessToken with its expiry.
#[derive(Clone)]
pub struct AccessToken {
    pub value: Arc<str>,
    /// `Bearer <value>`, marked sensitive; `None` if the token is not a valid header value.
    pub header: Option<HeaderValue>,
    /// When to stop using it: the upstream's lifetime less a safety margin.
    pub refresh_at: Instant,
}

/// `value` as a header value marked sensitive (never shown by `Debug`), if it is a valid one.
fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

/// The tenant's AccessToken. Readers take a read lock only; a refresh is single-flight through
/// `refresh_lock`, so a burst of callers with an expired token causes one tokenByAkSk call.
#[derive(Default)]
pub struct AccessTokenCache {
    current: RwLock<Option<AccessToken>>,
    pub(crate) refresh_lock: tokio::sync::Mutex<()>,
}

impl AccessTokenCache {
    /// The current token if it is still fresh.
    pub fn fresh(&self) -> Option<AccessToken> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|t| Instant::now() < t.refresh_at)
            .cloned()
    }

    /// Stores a new token valid for `lifetime` from now (refreshed at 80% of it, at most a minute
    /// before it ends).
    pub fn store(&self, value: String, lifetime: Duration) -> AccessToken {
        let margin = (lifetime / 5).min(Duration::from_secs(60));
        let token = AccessToken {
            header: sensitive(&format!("Bearer {value}")),
            value: value.into(),
            refresh_at: Instant::now() + lifetime.saturating_sub(margin),
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        token
    }

    /// Drops `used` if it is still the current token (after the upstream refused it).
    pub fn invalidate(&self, used: &str) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|t| &*t.value == used) {
            *guard = None;
        }
    }
}

/// What a user's token was applied with, so it can be applied again the same way.
#[derive(Clone)]
pub struct UserToken {
    pub token: Arc<str>,
    pub user_name: String,
    pub locale: String,
    pub channel_id: String,
}

/// A user's token with its ready-made header value.
struct Held {
    t: UserToken,
    header: Option<HeaderValue>,
    /// The [`UserTokens::clock`] tick of its last use, for evicting the least recently used.
    used: AtomicU64,
}

impl Held {
    fn new(t: UserToken, tick: u64) -> Self {
        Held {
            header: sensitive(&t.token),
            t,
            used: AtomicU64::new(tick),
        }
    }
}

/// How many tokens [`UserTokens::default`] holds at most.
pub const DEFAULT_USER_TOKENS: usize = 16_384;

/// The users' `ccmessaging-token`s of one tenant, at most `capacity` of them.
pub struct UserTokens {
    map: RwLock<HashMap<String, Held>>,
    capacity: usize,
    /// A counter standing for time: each read or write of a token takes the next tick.
    clock: AtomicU64,
}

impl Default for UserTokens {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_USER_TOKENS)
    }
}

impl UserTokens {
    /// A cache holding at most `capacity` tokens (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        UserTokens {
            map: RwLock::default(),
            capacity: capacity.max(1),
            clock: AtomicU64::new(0),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// `h` was just used.
    fn touch(&self, h: &Held) {
        h.used.store(self.tick(), Ordering::Relaxed);
    }

    pub fn get(&self, user: &str) -> Option<UserToken> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .map(|h| {
                self.touch(h);
                h.t.clone()
            })
    }

    /// The user's token (an `Arc` clone; nothing else is copied).
    pub fn token(&self, user: &str) -> Option<Arc<str>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .map(|h| h.t.token.clone())
    }

    /// The user's token and its `ccmessaging-token` header value (`None` if not a valid one),
    /// for a call: counts as a use.
    pub fn with_header(&self, user: &str) -> Option<(Arc<str>, Option<HeaderValue>)> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .map(|h| {
                self.touch(h);
                (h.t.token.clone(), h.header.clone())
            })
    }

    /// Whether a token is held for `user`.
    pub fn contains(&self, user: &str) -> bool {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(user)
    }

    /// The user's token if one is held and it differs from `known` (compared in place).
    pub fn changed(&self, user: &str, known: Option<&str>) -> Option<Arc<str>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let held = &map.get(user)?.t.token;
        (Some(&**held) != known).then(|| held.clone())
    }

    pub fn insert(&self, user: &str, t: UserToken) {
        let tick = self.tick();
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(user) {
            // Keeps the key's allocation.
            Some(h) => *h = Held::new(t, tick),
            None => {
                if map.len() >= self.capacity {
                    self.evict(&mut map);
                }
                map.insert(user.to_owned(), Held::new(t, tick));
            }
        }
    }

    /// Drops the least recently used sixteenth of a full cache (at least one token), so a cache
    /// at capacity does not scan itself at every insert.
    fn evict(&self, map: &mut HashMap<String, Held>) {
        let n = (self.capacity / 16).max(1).min(map.len());
        let mut ages: Vec<(u64, &str)> = map
            .iter()
            .map(|(k, h)| (h.used.load(Ordering::Relaxed), k.as_str()))
            .collect();
        if n < ages.len() {
            ages.select_nth_unstable(n - 1);
        }
        let oldest: Vec<String> = ages[..n].iter().map(|(_, k)| (*k).to_owned()).collect();
        for k in &oldest {
            map.remove(k);
        }
        tracing::debug!(
            evicted = n,
            capacity = self.capacity,
            "User token cache full; dropped the least recently used"
        );
    }

    /// Replaces the token value of a known user (a response header carried a new one).
    /// Returns whether it changed.
    pub fn renew(&self, user: &str, token: &str) -> bool {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(user) {
            Some(h) if &*h.t.token != token => {
                h.t.token = token.into();
                h.header = sensitive(token);
                true
            }
            _ => false,
        }
    }

    /// Forgets `used` for `user` if it is still the current one; returns what it was applied with.
    pub fn invalidate(&self, user: &str, used: &str) -> Option<UserToken> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        match map.get(user) {
            Some(h) if &*h.t.token == used => map.remove(user).map(|h| h.t),
            Some(h) => Some(h.t.clone()),
            None => None,
        }
    }

    pub fn remove(&self, user: &str) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_is_refreshed_before_it_ends() {
        let c = AccessTokenCache::default();
        assert!(c.fresh().is_none());
        c.store("t1".into(), Duration::from_secs(600));
        assert_eq!(&*c.fresh().unwrap().value, "t1");
        // A lifetime shorter than the margin allows is never fresh.
        c.store("t2".into(), Duration::ZERO);
        assert!(c.fresh().is_none());
    }

    #[test]
    fn invalidate_only_drops_the_token_that_was_used() {
        let c = AccessTokenCache::default();
        c.store("new".into(), Duration::from_secs(600));
        c.invalidate("old");
        assert!(c.fresh().is_some());
        c.invalidate("new");
        assert!(c.fresh().is_none());
    }

    #[test]
    fn user_tokens_renew_and_invalidate() {
        let u = UserTokens::default();
        let t = |s: &str| UserToken {
            token: s.into(),
            user_name: "n".into(),
            locale: "zh".into(),
            channel_id: "c".into(),
        };
        u.insert("u1", t("a"));
        assert!(u.renew("u1", "b"));
        assert!(!u.renew("u1", "b"));
        assert!(!u.renew("nobody", "x"));
        assert_eq!(u.token("u1").as_deref(), Some("b"));
        assert!(u.invalidate("u1", "a").is_some());
        assert_eq!(u.token("u1").as_deref(), Some("b"));
        assert!(u.invalidate("u1", "b").is_some());
        assert!(u.token("u1").is_none());
    }

    #[test]
    fn headers_follow_the_token() {
        let u = UserTokens::default();
        u.insert(
            "u1",
            UserToken {
                token: "a".into(),
                user_name: "n".into(),
                locale: "zh".into(),
                channel_id: "c".into(),
            },
        );
        let (t, h) = u.with_header("u1").unwrap();
        assert_eq!((&*t, h.unwrap().to_str().unwrap()), ("a", "a"));
        u.renew("u1", "b");
        let (t, h) = u.with_header("u1").unwrap();
        let h = h.unwrap();
        assert_eq!((&*t, h.to_str().unwrap()), ("b", "b"));
        assert!(h.is_sensitive());
        assert!(u.contains("u1") && !u.contains("u2"));
        assert_eq!(u.changed("u1", Some("a")).as_deref(), Some("b"));
        assert_eq!(u.changed("u1", None).as_deref(), Some("b"));
        assert!(u.changed("u1", Some("b")).is_none());
        assert!(u.changed("u2", None).is_none());
        // A token that cannot be a header value is kept, without a header.
        u.renew("u1", "bad\nvalue");
        assert!(u.with_header("u1").unwrap().1.is_none());

        let c = AccessTokenCache::default();
        let t = c.store("at".into(), Duration::from_secs(600));
        let h = t.header.unwrap();
        assert_eq!(h.to_str().unwrap(), "Bearer at");
        assert!(h.is_sensitive());
    }

    #[test]
    fn user_tokens_are_bounded_and_evict_the_least_recently_used() {
        let t = |s: &str| UserToken {
            token: s.into(),
            user_name: "n".into(),
            locale: "zh".into(),
            channel_id: "c".into(),
        };
        let u = UserTokens::with_capacity(32);
        for i in 0..32 {
            u.insert(&format!("u{i}"), t("x"));
        }
        assert_eq!(u.len(), 32);
        // u0 is polled (used) all along; the others are not.
        assert!(u.with_header("u0").is_some());
        for i in 32..10_000 {
            u.insert(&format!("u{i}"), t("x"));
            if i % 8 == 0 {
                assert!(u.with_header("u0").is_some(), "the live user's token stays");
            }
            assert!(u.len() <= 32, "{} tokens held", u.len());
        }
        assert!(u.contains("u0") && u.contains("u9999"));
        assert!(!u.contains("u1") && !u.contains("u5000"));
        // A user whose session ended goes at once.
        u.remove("u9999");
        assert!(!u.contains("u9999"));
        // A capacity of 0 still holds one.
        let one = UserTokens::with_capacity(0);
        one.insert("a", t("x"));
        one.insert("b", t("y"));
        assert_eq!(one.len(), 1);
        assert!(one.contains("b"));
    }

    #[test]
    fn tokens_have_no_debug_output() {
        let c = AccessTokenCache::default();
        let t = c.store("supersecret".into(), Duration::from_secs(60));
        assert!(!format!("{t:?}").contains("supersecret"));
    }
}
