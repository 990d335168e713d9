//! Rate limits: per route, per client IP and per user, each a token bucket.
//!
//! Each bucket is one number, its theoretical arrival time (GCRA): a
//! request is let through when the bucket, advanced by one request's worth
//! of time, stays within the allowed burst. That makes a check one atomic
//! compare-and-swap, with no timer and no lock. Buckets of idle clients are
//! forgotten once they would be full again, so forgetting changes nothing.
//!
//! Limits are per gateway process unless they say `store: redis`
//! (`shared_limits.rs`): with N gateways behind a load balancer, a local
//! limit lets a client through up to N times the rate.

use crate::config::{LimitFallback, LimitStore, RateLimits};
use moka::sync::Cache;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Keys kept per limit; beyond this, the least recently seen are forgotten
/// (their next request starts with a full bucket).
const MAX_KEYS: u64 = 100_000;

/// One limit: `requests` per `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

impl Rate {
    /// Time one request costs.
    pub fn interval(&self) -> Duration {
        self.per / self.requests.max(1)
    }

    /// How far ahead of now a bucket may be: the whole burst.
    pub fn tolerance(&self) -> Duration {
        // `--check` bounds this to a week; saturate rather than trust that.
        self.interval()
            .checked_mul(self.burst.max(1))
            .unwrap_or(Duration::MAX)
    }
}

/// The answer for one request under one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The burst size (what `RateLimit-Policy` calls the quota).
    pub limit: u32,
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When refused: how long until one request would pass.
    pub retry_after: Duration,
    /// How long a whole burst takes to come back (`RateLimit-Policy`'s
    /// window).
    pub window: Duration,
}

impl Decision {
    /// Seconds for headers, rounded up, at least 1 when not zero.
    pub fn seconds(d: Duration) -> u64 {
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}

/// The key a client address is counted under: IPv4 addresses as they are,
/// IPv6 addresses by their /64, since one subscriber usually holds a whole
/// /64 and could otherwise take a fresh bucket with every request.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

/// A bucket: the theoretical arrival time, in nanoseconds since `epoch`.
struct Bucket(AtomicU64);

/// Nanoseconds since the limiter's epoch; saturates rather than wraps.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn take(bucket: &Bucket, rate: &Rate, now: u64) -> Decision {
    let interval = nanos(rate.interval()).max(1);
    let tolerance = nanos(rate.tolerance());
    let mut tat = bucket.0.load(Ordering::Acquire);
    loop {
        let next = tat.max(now).saturating_add(interval);
        let ahead = next - now;
        if ahead > tolerance {
            let waited = tat.max(now) - now;
            return Decision {
                allowed: false,
                limit: rate.burst,
                remaining: 0,
                reset: Duration::from_nanos(waited),
                retry_after: Duration::from_nanos(ahead - tolerance),
                window: rate.tolerance(),
            };
        }
        match bucket
            .0
            .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                return Decision {
                    allowed: true,
                    limit: rate.burst,
                    remaining: u32::try_from((tolerance - ahead) / interval).unwrap_or(u32::MAX),
                    reset: Duration::from_nanos(ahead),
                    retry_after: Duration::ZERO,
                    window: rate.tolerance(),
                };
            }
            Err(current) => tat = current,
        }
    }
}

/// Where a limit's buckets are checked first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Local,
    /// In Redis; while it cannot answer, the local bucket, or let through.
    Shared(LimitFallback),
}

fn store(rate: &crate::config::Rate) -> Store {
    match rate.store {
        LimitStore::Local => Store::Local,
        LimitStore::Redis => Store::Shared(rate.fallback),
    }
}

/// The decision of a limit that lets a request through unchecked (a shared
/// limit failing open).
fn open(rate: &Rate) -> Decision {
    Decision {
        allowed: true,
        limit: rate.burst,
        remaining: rate.burst,
        reset: Duration::ZERO,
        retry_after: Duration::ZERO,
        window: rate.tolerance(),
    }
}

/// A shared bucket's answer as the local buckets give theirs.
fn shared_decision(rate: &Rate, answer: crate::shared_limits::Answer) -> Decision {
    let interval = nanos(rate.interval()).max(1);
    let tolerance = nanos(rate.tolerance());
    Decision {
        allowed: answer.allowed,
        limit: rate.burst,
        remaining: if answer.allowed {
            u32::try_from(tolerance.saturating_sub(nanos(answer.ahead)) / interval)
                .unwrap_or(u32::MAX)
        } else {
            0
        },
        reset: answer.ahead,
        retry_after: answer.retry_after,
        window: rate.tolerance(),
    }
}

/// One limit over many keys (client IPs, users).
struct Keyed<K> {
    rate: Rate,
    store: Store,
    buckets: Cache<K, Arc<Bucket>>,
}

impl<K: std::hash::Hash + Eq + Send + Sync + 'static> Keyed<K> {
    fn new(rate: Rate, store: Store) -> Self {
        Keyed {
            rate,
            store,
            buckets: Cache::builder()
                .max_capacity(MAX_KEYS)
                // An idle bucket is full again after one tolerance: forgetting
                // it then loses nothing.
                // moka refuses (panics on) an idle time over 1000 years.
                .time_to_idle(
                    rate.tolerance()
                        .clamp(Duration::from_millis(1), Duration::from_secs(366 * 86_400)),
                )
                .build(),
        }
    }

    fn check(&self, key: K, now: u64) -> Decision {
        let bucket = self
            .buckets
            .get_with(key, || Arc::new(Bucket(AtomicU64::new(0))));
        take(&bucket, &self.rate, now)
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ip,
    Route,
    User,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::Route => "route",
            Scope::User => "user",
        }
    }
}

/// A route's limits, with their buckets.
pub struct RouteLimits {
    epoch: Instant,
    /// The route's name, in metrics.
    route: String,
    /// The route's name and place in the file, in shared buckets' keys (two
    /// routes of one prefix, for different methods, keep apart).
    bucket: String,
    config: RateLimits,
    per_ip: Option<Keyed<IpAddr>>,
    per_user: Option<Keyed<Box<str>>>,
    total: Option<(Rate, Store, Bucket)>,
}

impl std::fmt::Debug for RouteLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.config.fmt(f)
    }
}

impl PartialEq for RouteLimits {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl Eq for RouteLimits {}

impl RouteLimits {
    /// Buckets for `config` on route `route` (the `index`th of the file);
    /// `None` when it sets no limit.
    pub fn new(config: &RateLimits, route: &str, index: usize) -> Option<Self> {
        let rate = |r: &crate::config::Rate| Rate {
            requests: r.requests,
            per: r.per.0,
            burst: r.burst.unwrap_or(r.requests),
        };
        let limits = RouteLimits {
            epoch: Instant::now(),
            route: route.to_owned(),
            bucket: format!("{route}#{index}"),
            config: config.clone(),
            per_ip: config
                .per_ip
                .as_ref()
                .map(|r| Keyed::new(rate(r), store(r))),
            per_user: config
                .per_user
                .as_ref()
                .map(|r| Keyed::new(rate(r), store(r))),
            total: config
                .route
                .as_ref()
                .map(|r| (rate(r), store(r), Bucket(AtomicU64::new(0)))),
        };
        (limits.per_ip.is_some() || limits.per_user.is_some() || limits.total.is_some())
            .then_some(limits)
    }

    fn now(&self) -> u64 {
        // Offset by a day so that a new bucket (arrival time 0) starts full.
        nanos(self.epoch.elapsed() + Duration::from_secs(86_400))
    }

    /// One check under `store`: the local bucket (`local`), or Redis,
    /// falling back as the limit says while Redis cannot answer.
    async fn check(
        &self,
        store: Store,
        scope: Scope,
        key: impl FnOnce() -> String,
        rate: &Rate,
        local: impl FnOnce() -> Decision,
    ) -> Decision {
        let Store::Shared(fallback) = store else {
            return local();
        };
        if let Some(shared) = crate::shared_limits::store()
            && let Ok(answer) = shared
                .take(
                    &self.bucket,
                    scope.label(),
                    &key(),
                    rate.interval(),
                    rate.burst,
                )
                .await
        {
            return shared_decision(rate, answer);
        }
        crate::metrics::get()
            .rate_limit_fallbacks
            .with_label_values(&[self.route.as_str(), scope.label()])
            .inc();
        match fallback {
            LimitFallback::Local => local(),
            LimitFallback::Open => open(rate),
        }
    }

    /// The limits that apply before authentication: per client IP, then
    /// the route's total. The first refusal is returned; otherwise the
    /// decision with the fewest requests left, for the headers.
    pub async fn before_auth(&self, ip: Option<IpAddr>) -> Option<(Scope, Decision)> {
        let now = self.now();
        let mut tightest: Option<(Scope, Decision)> = None;
        if let (Some(limit), Some(ip)) = (&self.per_ip, ip) {
            let key = client_key(ip);
            let decision = self
                .check(
                    limit.store,
                    Scope::Ip,
                    || key.to_string(),
                    &limit.rate,
                    || limit.check(key, now),
                )
                .await;
            if !decision.allowed {
                return Some((Scope::Ip, decision));
            }
            tightest = Some((Scope::Ip, decision));
        }
        if let Some((rate, store, bucket)) = &self.total {
            let decision = self
                .check(
                    *store,
                    Scope::Route,
                    || "all".into(),
                    rate,
                    || take(bucket, rate, now),
                )
                .await;
            if !decision.allowed || tightest.is_none_or(|(_, t)| decision.remaining < t.remaining) {
                tightest = Some((Scope::Route, decision));
            }
        }
        tightest
    }

    /// The per-user limit, after authentication.
    pub async fn after_auth(&self, user: &str) -> Option<(Scope, Decision)> {
        let limit = self.per_user.as_ref()?;
        let now = self.now();
        let decision = self
            .check(
                limit.store,
                Scope::User,
                || user.to_owned(),
                &limit.rate,
                || limit.check(user.into(), now),
            )
            .await;
        Some((Scope::User, decision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(requests: u32, per_ms: u64, burst: u32) -> Rate {
        Rate {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
        }
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_allows_the_burst_then_the_rate() {
        let bucket = Bucket(AtomicU64::new(0));
        let r = rate(10, 1000, 5);
        let start = 100 * SEC;
        let allowed: Vec<bool> = (0..7).map(|_| take(&bucket, &r, start).allowed).collect();
        assert_eq!(allowed, [true, true, true, true, true, false, false]);
        // One request's worth of time later (100 ms), exactly one more.
        let later = start + SEC / 10;
        assert!(take(&bucket, &r, later).allowed);
        assert!(!take(&bucket, &r, later).allowed);
    }

    #[test]
    fn decisions_count_down_and_say_when_to_retry() {
        let bucket = Bucket(AtomicU64::new(0));
        let r = rate(2, 1000, 2);
        let now = 50 * SEC;
        let first = take(&bucket, &r, now);
        assert_eq!((first.allowed, first.remaining, first.limit), (true, 1, 2));
        assert_eq!(first.reset, Duration::from_millis(500));
        let second = take(&bucket, &r, now);
        assert_eq!((second.allowed, second.remaining), (true, 0));
        assert_eq!(second.reset, Duration::from_secs(1));
        let refused = take(&bucket, &r, now);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(Decision::seconds(refused.retry_after), 1);
        assert_eq!(Decision::seconds(Duration::from_millis(1500)), 2);
        assert_eq!(Decision::seconds(Duration::ZERO), 0);
        // A refusal costs nothing: waiting the advertised time is enough.
        assert!(take(&bucket, &r, now + SEC / 2).allowed);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let key = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let limits = RouteLimits::new(
            &RateLimits {
                per_ip: Some(crate::config::Rate {
                    requests: 1,
                    per: crate::config::Dur(Duration::from_secs(60)),
                    burst: None,
                    store: LimitStore::Local,
                    fallback: LimitFallback::Local,
                }),
                per_user: Some(crate::config::Rate {
                    requests: 2,
                    per: crate::config::Dur(Duration::from_secs(60)),
                    burst: None,
                    store: LimitStore::Local,
                    fallback: LimitFallback::Local,
                }),
                route: None,
            },
            "/r",
            0,
        )
        .expect("limits");
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(
            futures::executor::block_on(limits.before_auth(Some(a)))
                .unwrap()
                .1
                .allowed
        );
        let (scope, refused) = futures::executor::block_on(limits.before_auth(Some(a))).unwrap();
        assert_eq!((scope, refused.allowed), (Scope::Ip, false));
        assert!(
            futures::executor::block_on(limits.before_auth(Some(b)))
                .unwrap()
                .1
                .allowed
        );

        let users: Vec<bool> = ["7", "7", "7", "8"]
            .iter()
            .map(|u| {
                futures::executor::block_on(limits.after_auth(u))
                    .unwrap()
                    .1
                    .allowed
            })
            .collect();
        assert_eq!(users, [true, true, false, true]);
    }

    #[test]
    fn the_route_total_is_shared_by_everyone() {
        let limits = RouteLimits::new(
            &RateLimits {
                per_ip: None,
                per_user: None,
                route: Some(crate::config::Rate {
                    requests: 3,
                    per: crate::config::Dur(Duration::from_secs(60)),
                    burst: None,
                    store: LimitStore::Local,
                    fallback: LimitFallback::Local,
                }),
            },
            "/r",
            0,
        )
        .expect("limits");
        let outcomes: Vec<bool> = (1..=4u8)
            .map(|i| {
                let ip = IpAddr::from([10, 0, 0, i]);
                futures::executor::block_on(limits.before_auth(Some(ip)))
                    .unwrap()
                    .1
                    .allowed
            })
            .collect();
        assert_eq!(outcomes, [true, true, true, false]);
        assert!(
            RouteLimits::new(&RateLimits::default(), "/r", 0).is_none(),
            "no limits, no buckets"
        );
    }
}
