//! Per-identity request rate limits for both daemons: a token bucket per caller (its
//! authenticated identity, or its address when it has none), so one noisy client or a
//! stranger knocking cannot starve everyone else.
//!
//! [`Bucket::take`] is a pure function of the time it is given; [`RateLimiter`] keeps
//! one bucket per key, bounded in number (the least recently used go first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How fast a caller may go: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            last: now,
        }
    }

    /// Refills for the time since the last call, then takes one token if there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there.
    pub fn retry_after(&self, rate: Rate) -> Duration {
        if rate.per_second <= 0.0 {
            return Duration::from_secs(60);
        }
        Duration::from_secs_f64(((1.0 - self.tokens).max(0.0)) / rate.per_second)
    }
}

/// The most callers tracked at once.
const MAX_KEYS: usize = 10_000;

#[derive(Debug)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl RateLimiter {
    /// Ok if `key` may make a request now, else how long it should wait.
    pub fn check(&self, key: &str, rate: Rate) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = match self.buckets.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            // Forget the caller heard from least recently.
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let bucket = map
            .entry(key.to_string())
            .or_insert_with(|| Bucket::full(rate, now));
        if bucket.take(rate, now) {
            Ok(())
        } else {
            Err(bucket.retry_after(rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RATE: Rate = Rate {
        per_second: 10.0,
        burst: 5.0,
    };

    #[test]
    fn a_burst_then_the_steady_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(RATE, t0);
        assert!((0..5).all(|_| b.take(RATE, t0)), "the burst");
        assert!(!b.take(RATE, t0), "then nothing at once");
        assert!(b.retry_after(RATE) <= Duration::from_millis(100));
        assert!(
            b.take(RATE, t0 + Duration::from_millis(100)),
            "one per 100 ms"
        );
        assert!(!b.take(RATE, t0 + Duration::from_millis(110)));
    }

    #[test]
    fn callers_do_not_share_a_bucket() {
        let l = RateLimiter::default();
        for _ in 0..5 {
            l.check("user:a", RATE).unwrap();
        }
        assert!(l.check("user:a", RATE).is_err());
        assert!(l.check("user:b", RATE).is_ok(), "b is not slowed by a");
    }

    proptest! {
        /// Over any window, no more than burst + rate x window requests get through.
        #[test]
        fn never_more_than_the_rate_allows(gaps in proptest::collection::vec(0u64..200, 1..300)) {
            let t0 = Instant::now();
            let mut b = Bucket::full(RATE, t0);
            let mut now = t0;
            let mut allowed = 0u32;
            for g in &gaps {
                now += Duration::from_millis(*g);
                if b.take(RATE, now) {
                    allowed += 1;
                }
            }
            let window = now.duration_since(t0).as_secs_f64();
            prop_assert!(f64::from(allowed) <= RATE.burst + RATE.per_second * window + 1e-9);
        }
    }
}
