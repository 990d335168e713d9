//! Who the cache's grants belong to: one shared [`Identity`] per user and
//! role, and the index by user that lets a revocation drop a user's grants
//! at once.

use super::Identity;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

/// Which cached keys grant which user, so that a revocation can drop all of
/// a user's entries at once, and when each user was last revoked, so that a
/// verification already under way then cannot put a grant back afterwards.
#[derive(Default)]
pub(super) struct ByUser {
    /// Each key with its entry's deadline, which tells the entry apart from
    /// a newer one under the same key when the older one's removal is
    /// reported late.
    pub(super) keys: HashMap<Box<str>, HashMap<[u8; 32], Instant>>,
    pub(super) revoked: HashMap<Box<str>, Instant>,
}

impl ByUser {
    pub(super) fn forget(&mut self, user_id: &str, key: &[u8; 32], until: Instant) {
        if let Some(keys) = self.keys.get_mut(user_id) {
            if keys.get(key) == Some(&until) {
                keys.remove(key);
            }
            if keys.is_empty() {
                self.keys.remove(user_id);
            }
        }
    }
}

/// Takes a lock even if a thread panicked while holding it: both maps kept
/// under locks here stay usable (at worst one index key too many, which a
/// revocation then invalidates harmlessly; or one identity not shared).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One shared `Identity` per user and role, however many of that user's
/// tokens are cached: a cache of a million tokens held by a few thousand
/// users then holds a few thousand identities, not a million copies.
#[derive(Default)]
pub(super) struct Identities {
    known: Mutex<Interned>,
}

#[derive(Default)]
struct Interned {
    map: HashMap<Identity, Weak<Identity>>,
    /// The map is swept of identities no cached entry holds any more when it
    /// reaches this size, which then doubles the live count (amortised O(1)).
    sweep_at: usize,
}

impl Identities {
    pub(super) fn share(&self, identity: Identity) -> Arc<Identity> {
        // Only misses come here, one per verification.
        let mut known = lock(&self.known);
        if let Some(shared) = known.map.get(&identity).and_then(Weak::upgrade) {
            return shared;
        }
        if known.map.len() >= known.sweep_at {
            known.map.retain(|_, weak| weak.strong_count() > 0);
            known.sweep_at = (known.map.len() * 2).max(1024);
        }
        let shared = Arc::new(identity.clone());
        known.map.insert(identity, Arc::downgrade(&shared));
        shared
    }
}

/// A role as one may be sent in `x-user-role`: 1–64 of `[A-Za-z0-9_-]`.
pub(super) fn role_ok(role: &str) -> bool {
    (1..=64).contains(&role.len())
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(user_id: &str, role: &str) -> Identity {
        Identity {
            user_id: user_id.into(),
            role: role.into(),
        }
    }

    #[test]
    fn identities_are_shared_per_user_and_role_and_forgotten_when_unused() {
        let identities = Identities::default();
        let a = identities.share(person("7", "user"));
        let b = identities.share(person("7", "user"));
        assert!(Arc::ptr_eq(&a, &b), "one user's tokens share one identity");
        let admin = identities.share(person("7", "admin"));
        let other = identities.share(person("8", "user"));
        assert!(!Arc::ptr_eq(&a, &admin) && !Arc::ptr_eq(&a, &other));
        assert_eq!(*admin, person("7", "admin"));

        // Identities no entry holds any more are swept as the map grows.
        drop((admin, other));
        for n in 0..3000 {
            drop(identities.share(person(&(100 + n).to_string(), "user")));
        }
        let known = identities.known.lock().expect("lock");
        assert!(
            known.map.len() < 2100,
            "{} identities kept",
            known.map.len()
        );
        assert!(
            known.map.contains_key(&person("7", "user")),
            "a live one was swept"
        );
    }
}
