//! The one watchdog every polling loop of a migration uses: an agent that stops answering
//! for too long, and a counter (bytes sent, bytes copied) that stops moving for too long.
//!
//! Pure: the caller passes its own monotonic milliseconds, so the rules are tested without
//! a clock.

use serde::{Deserialize, Serialize};

/// Which agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Source,
    Destination,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Destination => "destination",
        })
    }
}

/// Why a watched loop must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// This side has not answered for `ms`.
    Silent { side: Role, ms: u64 },
    /// The watched counter has not reached a new high for `ms`.
    NoProgress { ms: u64 },
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Timeout::Silent { side, ms } => {
                write!(
                    f,
                    "the {side} agent stopped answering (nothing for {} s)",
                    ms / 1000
                )
            }
            Timeout::NoProgress { ms } => {
                write!(f, "no progress for {} s (progress timeout)", ms / 1000)
            }
        }
    }
}

/// Limits and what was last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    silence_limit_ms: u64,
    progress_limit_ms: u64,
    source_answered_ms: u64,
    destination_answered_ms: u64,
    best: u64,
    best_at_ms: u64,
}

impl Watch {
    /// Starts watching at `now_ms`: both sides count as having just answered.
    pub fn new(now_ms: u64, silence_limit_ms: u64, progress_limit_ms: u64) -> Watch {
        Watch {
            silence_limit_ms,
            progress_limit_ms,
            source_answered_ms: now_ms,
            destination_answered_ms: now_ms,
            best: 0,
            best_at_ms: now_ms,
        }
    }

    pub fn answered(&mut self, side: Role, now_ms: u64) {
        match side {
            Role::Source => self.source_answered_ms = now_ms,
            Role::Destination => self.destination_answered_ms = now_ms,
        }
    }

    /// The watched counter's value now. Only a new high counts as progress.
    pub fn counter(&mut self, value: u64, now_ms: u64) {
        if value > self.best {
            self.best = value;
            self.best_at_ms = now_ms;
        }
    }

    /// Restarts the progress clock (e.g. a resumed post-copy stream gets the full limit).
    pub fn restart_progress(&mut self, now_ms: u64) {
        self.best_at_ms = now_ms;
    }

    /// Since the counter last reached a new high.
    pub fn since_progress_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.best_at_ms)
    }

    /// Since `side` last answered.
    pub fn silent_ms(&self, side: Role, now_ms: u64) -> u64 {
        let at = match side {
            Role::Source => self.source_answered_ms,
            Role::Destination => self.destination_answered_ms,
        };
        now_ms.saturating_sub(at)
    }

    /// The first limit passed, if any (silence first: a silent side explains a stall).
    /// A limit of 0 is off.
    pub fn check(&self, now_ms: u64) -> Option<Timeout> {
        for side in [Role::Source, Role::Destination] {
            let ms = self.silent_ms(side, now_ms);
            if self.silence_limit_ms > 0 && ms > self.silence_limit_ms {
                return Some(Timeout::Silent { side, ms });
            }
        }
        let ms = self.since_progress_ms(now_ms);
        (self.progress_limit_ms > 0 && ms > self.progress_limit_ms)
            .then_some(Timeout::NoProgress { ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn silence_and_stalls_are_reported_after_their_limits() {
        let mut w = Watch::new(0, 1_000, 5_000);
        assert_eq!(w.check(900), None);
        w.answered(Role::Source, 900);
        assert_eq!(
            w.check(1_500),
            Some(Timeout::Silent {
                side: Role::Destination,
                ms: 1_500
            })
        );
        w.answered(Role::Destination, 1_500);
        w.answered(Role::Source, 1_500);
        w.counter(10, 1_500);
        w.answered(Role::Source, 6_000);
        w.answered(Role::Destination, 6_000);
        assert_eq!(w.check(6_000), None);
        w.counter(10, 6_600); // not a new high
        w.answered(Role::Source, 6_600);
        w.answered(Role::Destination, 6_600);
        assert_eq!(w.check(6_600), Some(Timeout::NoProgress { ms: 5_100 }));
    }

    #[test]
    fn a_zero_limit_is_off() {
        let w = Watch::new(0, 0, 0);
        assert_eq!(w.check(u64::MAX / 2), None);
    }

    proptest! {
        /// A counter that reaches a new high at least every `limit` ms never times out
        /// while both sides keep answering.
        #[test]
        fn steady_progress_never_times_out(steps in proptest::collection::vec(1u64..5_000, 1..50)) {
            let mut w = Watch::new(0, 5_000, 5_000);
            let (mut now, mut value) = (0u64, 0u64);
            for step in steps {
                now += step;
                value += 1;
                w.answered(Role::Source, now);
                w.answered(Role::Destination, now);
                w.counter(value, now);
                prop_assert_eq!(w.check(now), None);
            }
        }
    }
}
