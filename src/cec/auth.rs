//! Token caches of one tenant.
//!
//! - [`AccessTokenCache`]: the tenant's API Fabric AccessToken (tokenByAkSk), shared by all its
//!   users, refreshed before it expires, one refresh at a time.
//! - [`UserTokens`]: each user's `ccmessaging-token` (applyToken), replaced whenever a response
//!   header carries a new one.
//!
//! Tokens are bearer credentials: they are never logged and have no `Debug` output.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A cached AccessToken with its expiry.
#[derive(Clone)]
pub struct AccessToken {
    pub value: Arc<str>,
    /// When to stop using it: the upstream's lifetime less a safety margin.
    pub refresh_at: Instant,
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

/// The users' `ccmessaging-token`s of one tenant.
#[derive(Default)]
pub struct UserTokens {
    map: RwLock<HashMap<String, UserToken>>,
}

impl UserTokens {
    pub fn get(&self, user: &str) -> Option<UserToken> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned()
    }

    pub fn token(&self, user: &str) -> Option<Arc<str>> {
        self.get(user).map(|t| t.token)
    }

    pub fn insert(&self, user: &str, t: UserToken) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_owned(), t);
    }

    /// Replaces the token value of a known user (a response header carried a new one).
    /// Returns whether it changed.
    pub fn renew(&self, user: &str, token: &str) -> bool {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(user) {
            Some(t) if &*t.token != token => {
                t.token = token.into();
                true
            }
            _ => false,
        }
    }

    /// Forgets `used` for `user` if it is still the current one; returns what it was applied with.
    pub fn invalidate(&self, user: &str, used: &str) -> Option<UserToken> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        match map.get(user) {
            Some(t) if &*t.token == used => map.remove(user),
            Some(t) => Some(t.clone()),
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
    fn tokens_have_no_debug_output() {
        let c = AccessTokenCache::default();
        let t = c.store("supersecret".into(), Duration::from_secs(60));
        assert!(!format!("{t:?}").contains("supersecret"));
    }
}
