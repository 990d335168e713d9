//! What a verifier that checks signatures itself (`jwks` mode) must still
//! refuse: sessions ended (logout, a stolen refresh token) and users
//! revoked as a whole (disabled, deleted, role changed), from the
//! revocation channel, until every token they concern has expired.
//!
//! The set is bounded. When it is full of live entries, or when
//! revocations may have been missed (no list read since start, or the
//! subscription was lost), it fails closed with a *floor*: every token
//! issued before it is refused, and its holder refreshes (a refresh goes to
//! the auth service, which knows every revocation). A floor from missed
//! revocations is lifted once the list of revocations in force has been
//! read again; a floor from overflow stays.

use super::users::lock;
use std::collections::HashMap;
use std::sync::Mutex;

/// Live entries kept before the set turns into a floor.
pub const CAPACITY: usize = 100_000;

/// Revoked sessions kept per user; past this, the user's every token up
/// to the newest revocation is refused instead (one entry), so one account
/// logging in and out cannot fill the set.
pub const SESSIONS_PER_USER: u32 = 16;

/// Kept past a revocation's `until`: the longest `auth.leeway` a gateway
/// allows past `exp` (5 minutes), which also covers clocks apart by less.
pub const MARGIN: u64 = 300;

/// One revocation, as the channel (or the admin listener) states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub user_id: String,
    /// The session ended; `None`: every token of the user up to `at`.
    pub sid: Option<String>,
    /// When (seconds since the epoch, the issuer's clock).
    pub at: u64,
    /// Until when a token it concerns may be presented.
    pub until: u64,
}

/// The facts of a verified token that revocations are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub user_id: &'a str,
    pub sid: Option<&'a str>,
    pub iat: Option<u64>,
}

/// Why a token is refused here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Session,
    User,
    Floor,
}

#[derive(Default)]
struct Inner {
    /// Session → (its user, kept until).
    sessions: HashMap<Box<str>, (Box<str>, u64)>,
    /// Revoked sessions kept, per user.
    per_user: HashMap<Box<str>, u32>,
    /// User → (tokens issued before this are refused, kept until).
    users: HashMap<Box<str>, (u64, u64)>,
    /// From overflow: tokens issued before this are refused, for good.
    floor: u64,
    /// From missed revocations: tokens issued before this are refused until
    /// the list in force has been read.
    unsynced: Option<u64>,
}

#[derive(Default)]
pub struct Revoked {
    inner: Mutex<Inner>,
}

impl Revoked {
    /// Records `revocation` at `now` (seconds since the epoch).
    pub fn record(&self, revocation: &Revocation, now: u64) {
        self.record_bounded(revocation, now, CAPACITY);
    }

    fn record_bounded(&self, revocation: &Revocation, now: u64, capacity: usize) {
        let until = revocation.until.saturating_add(MARGIN);
        if until <= now {
            return;
        }
        let mut inner = lock(&self.inner);
        if inner.sessions.len() + inner.users.len() >= capacity {
            inner.sessions.retain(|_, (_, until)| *until > now);
            inner.users.retain(|_, (_, until)| *until > now);
            let mut per_user: HashMap<Box<str>, u32> = HashMap::new();
            for (user, _) in inner.sessions.values() {
                *per_user.entry(user.clone()).or_default() += 1;
            }
            inner.per_user = per_user;
            if inner.sessions.len() + inner.users.len() >= capacity {
                // Everything issued up to now must be refreshed; the entries
                // are no longer needed to refuse it.
                tracing::warn!(
                    capacity,
                    "revoked-session set full: every token issued before now must be refreshed"
                );
                inner.floor = inner.floor.max(now.saturating_add(1));
                inner.sessions.clear();
                inner.per_user.clear();
                inner.users.clear();
            }
        }
        let user: &str = &revocation.user_id;
        let crowded = inner
            .per_user
            .get(user)
            .is_some_and(|n| *n >= SESSIONS_PER_USER);
        match &revocation.sid {
            Some(sid) if !crowded || inner.sessions.contains_key(sid.as_str()) => {
                let entry = inner
                    .sessions
                    .entry(sid.as_str().into())
                    .or_insert_with(|| (user.into(), 0));
                let fresh = entry.1 == 0;
                entry.1 = entry.1.max(until);
                if fresh {
                    *inner.per_user.entry(user.into()).or_default() += 1;
                }
            }
            _ => {
                // A token issued in the revocation's second may be newer or
                // older than it: refused either way (its holder refreshes).
                let before = revocation.at.saturating_add(1);
                let entry = inner
                    .users
                    .entry(revocation.user_id.as_str().into())
                    .or_insert((0, 0));
                entry.0 = entry.0.max(before);
                entry.1 = entry.1.max(until);
            }
        }
    }

    /// Revocations may have been missed from `since` on: tokens issued
    /// before it are refused until [`Self::synced`].
    pub fn unsynced(&self, since: u64) {
        let mut inner = lock(&self.inner);
        inner.unsynced = Some(inner.unsynced.map_or(since, |at| at.max(since)));
    }

    /// The list of revocations in force has been read: nothing was missed.
    pub fn synced(&self) {
        lock(&self.inner).unsynced = None;
    }

    /// Whether a token with these facts is refused at `now`.
    pub fn refuses(&self, facts: Facts<'_>, now: u64) -> Option<Refused> {
        let inner = lock(&self.inner);
        let floor = inner.floor.max(inner.unsynced.unwrap_or(0));
        // A token without `iat` cannot show it is newer than a floor.
        if floor > 0 && facts.iat.is_none_or(|iat| iat < floor) {
            return Some(Refused::Floor);
        }
        if let Some(sid) = facts.sid
            && inner
                .sessions
                .get(sid)
                .is_some_and(|(_, until)| *until > now)
        {
            return Some(Refused::Session);
        }
        if let Some((before, until)) = inner.users.get(facts.user_id)
            && *until > now
            && facts.iat.is_none_or(|iat| iat < *before)
        {
            return Some(Refused::User);
        }
        None
    }

    /// Live entries (for metrics).
    pub fn len(&self) -> usize {
        let inner = lock(&self.inner);
        inner.sessions.len() + inner.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, sid: &str, at: u64) -> Revocation {
        Revocation {
            user_id: user.into(),
            sid: Some(sid.into()),
            at,
            until: at + 100,
        }
    }

    fn user(user: &str, at: u64) -> Revocation {
        Revocation {
            user_id: user.into(),
            sid: None,
            at,
            until: at + 100,
        }
    }

    fn facts<'a>(user_id: &'a str, sid: Option<&'a str>, iat: Option<u64>) -> Facts<'a> {
        Facts { user_id, sid, iat }
    }

    #[test]
    fn sessions_and_users_are_refused_until_their_tokens_expire() {
        let set = Revoked::default();
        set.record(&session("7", "s1", 1_000), 1_000);
        set.record(&user("8", 1_000), 1_000);
        let cases = [
            (
                facts("7", Some("s1"), Some(990)),
                1_050,
                Some(Refused::Session),
            ),
            (facts("7", Some("s2"), Some(990)), 1_050, None),
            (facts("7", None, Some(990)), 1_050, None),
            (facts("7", Some("s1"), Some(990)), 1_100 + MARGIN, None),
            (
                facts("8", Some("s9"), Some(999)),
                1_050,
                Some(Refused::User),
            ),
            (facts("8", None, Some(1_000)), 1_050, Some(Refused::User)),
            (facts("8", None, Some(1_001)), 1_050, None),
            (facts("8", None, None), 1_050, Some(Refused::User)),
            (facts("8", None, Some(999)), 1_100 + MARGIN, None),
        ];
        for (i, (facts, now, expected)) in cases.into_iter().enumerate() {
            assert_eq!(set.refuses(facts, now), expected, "case {i}");
        }
    }

    #[test]
    fn a_full_set_becomes_a_floor_and_never_lets_a_revoked_token_through() {
        let set = Revoked::default();
        set.record_bounded(&session("1", "a", 500), 500, 2);
        set.record_bounded(&session("2", "b", 500), 500, 2);
        set.record_bounded(&session("3", "c", 510), 510, 2);
        for sid in ["a", "b"] {
            assert_eq!(
                set.refuses(facts("1", Some(sid), Some(499)), 520),
                Some(Refused::Floor),
                "{sid}"
            );
        }
        assert_eq!(
            set.refuses(facts("3", Some("c"), Some(600)), 520),
            Some(Refused::Session)
        );
        assert_eq!(set.refuses(facts("4", Some("d"), Some(511)), 520), None);
        // Expired entries make room without a floor.
        let set = Revoked::default();
        set.record_bounded(&session("1", "a", 0), 0, 1);
        set.record_bounded(&session("2", "b", 500), 500, 1);
        assert_eq!(set.refuses(facts("1", Some("z"), Some(1)), 510), None);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn missed_revocations_refuse_older_tokens_until_the_list_is_read() {
        let set = Revoked::default();
        set.unsynced(1_000);
        assert_eq!(
            set.refuses(facts("1", None, Some(999)), 1_001),
            Some(Refused::Floor)
        );
        assert_eq!(set.refuses(facts("1", None, Some(1_000)), 1_001), None);
        assert_eq!(
            set.refuses(facts("1", None, None), 1_001),
            Some(Refused::Floor)
        );
        set.synced();
        assert_eq!(set.refuses(facts("1", None, Some(999)), 1_001), None);
    }

    #[test]
    fn one_user_logging_out_again_and_again_takes_a_bounded_share() {
        let set = Revoked::default();
        for i in 0..1_000 {
            set.record(&session("9", &format!("s{i}"), 1_000 + i), 1_000 + i);
        }
        assert!(set.len() <= SESSIONS_PER_USER as usize + 1, "{}", set.len());
        // Every session of that user issued before the last logout is
        // refused; other users are untouched.
        for i in [0, 500, 998] {
            let sid = format!("s{i}");
            assert!(
                set.refuses(facts("9", Some(&sid), Some(1_000 + i)), 2_000)
                    .is_some(),
                "{sid}"
            );
        }
        assert_eq!(
            set.refuses(facts("10", Some("x"), Some(1_000)), 2_000),
            None
        );
    }
}
