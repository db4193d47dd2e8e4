//! When a schedule fires: pure functions of its timing (a time, or a cron expression read
//! in UTC), the latest fire time it dealt with, the clock, when the server started, and
//! its rule for runs missed while the server was down. No I/O; the scheduler loop in
//! `core/scheduling.rs` records what [`decide`] says before it acts.
//!
//! ```text
//!   since = the latest fire time dealt with (run or skipped), else the creation time
//!   fire times in (since, started]  passed while the server was down ("missed")
//!   fire times in (started, now]    passed while it ran (the loop wakes for them)
//!
//!   missed, rule skip     ─▶ Skip  (the latest missed becomes `since`; nothing runs)
//!   missed, rule run-once ─▶ Fire once for the latest due fire time, however many
//!   due while running     ─▶ Fire once for the latest (a loop that lagged never runs twice)
//!   nothing due           ─▶ Wait until the next fire time (None: a one-time schedule is done)
//! ```
//!
//! A fire time is "dealt with" once the run (or skip) is durably recorded; recording it
//! moves `since`, so the same fire time is never decided twice.

use chrono::{DateTime, Duration, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use ferry_api::{MissedRule, ScheduleWhen};

/// Missed fire times are counted up to this many (the count is only reported).
pub const MAX_COUNTED: u64 = 10_000;

/// A schedule's timing, parsed.
#[derive(Debug, Clone)]
pub enum Timing {
    At(DateTime<Utc>),
    Cron(Box<Cron>),
}

/// Parses a 5-field cron expression (minute hour day-of-month month day-of-week; names
/// like `SUN` and `JAN` and nicknames like `@weekly` are accepted), read in UTC.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let text = expr.trim();
    let fields = text.split_whitespace().count();
    if !text.starts_with('@') && fields != 5 {
        return Err(format!(
            "cron expression '{expr}' has {fields} field(s); it needs 5: minute hour \
             day-of-month month day-of-week (UTC), e.g. '0 2 * * SUN'"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| format!("cron expression '{expr}' is not valid: {e}"))
}

impl Timing {
    pub fn parse(when: &ScheduleWhen) -> Result<Timing, String> {
        Ok(match when {
            ScheduleWhen::At(t) => Timing::At(*t),
            ScheduleWhen::Cron(expr) => Timing::Cron(Box::new(parse_cron(expr)?)),
        })
    }

    /// The first fire time strictly after `t` (None: there is none).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::At(at) => (*at > t).then_some(*at),
            Timing::Cron(c) => c.find_next_occurrence(&t, false).ok(),
        }
    }

    /// The latest fire time at or before `t` (None: there is none).
    pub fn latest_upto(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::At(at) => (*at <= t).then_some(*at),
            Timing::Cron(c) => c.find_previous_occurrence(&t, true).ok(),
        }
    }

    /// The fire times in `(after, upto]`: the latest, and how many (up to [`MAX_COUNTED`]).
    pub fn due(&self, after: DateTime<Utc>, upto: DateTime<Utc>) -> Option<(DateTime<Utc>, u64)> {
        if upto <= after {
            return None;
        }
        let latest = self.latest_upto(upto).filter(|l| *l > after)?;
        let mut count = 0;
        let mut t = after;
        while count < MAX_COUNTED {
            match self.next_after(t) {
                Some(n) if n <= latest => {
                    count += 1;
                    t = n;
                }
                _ => break,
            }
        }
        Some((latest, count.max(1)))
    }
}

/// What the scheduler does about one schedule now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due; the next fire time (None: never again).
    Wait(Option<DateTime<Utc>>),
    /// Run once, for fire time `fire_at`; `missed` counts the fire times that passed while
    /// the server was down that this run stands for (0: on time).
    Fire { fire_at: DateTime<Utc>, missed: u64 },
    /// Fire times passed while the server was down and the rule is skip: `fire_at` (the
    /// latest of them) is dealt with without running; `count` of them were skipped.
    Skip {
        fire_at: DateTime<Utc>,
        count: u64,
        next: Option<DateTime<Utc>>,
    },
}

/// What to do now about a schedule with `timing` and `rule`, whose latest fire time dealt
/// with is `since` (its creation time if it never fired), on a server that started at
/// `started`: fire times up to `started` passed while the server was down.
pub fn decide(
    timing: &Timing,
    rule: MissedRule,
    since: DateTime<Utc>,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Decision {
    let down = timing.due(since, started.min(now));
    if let (Some((fire_at, count)), MissedRule::Skip) = (down, rule) {
        return Decision::Skip {
            fire_at,
            count,
            next: timing.next_after(fire_at.max(now)),
        };
    }
    match timing.due(since, now) {
        Some((fire_at, _)) => Decision::Fire {
            fire_at,
            missed: down.map(|(_, n)| n).unwrap_or(0),
        },
        None => Decision::Wait(timing.next_after(since.max(now))),
    }
}

/// How long the loop may sleep before it must look again: until the next fire time, but
/// never longer than `tick` (schedules are added, removed and the clock may jump).
pub fn sleep_for(next: Option<DateTime<Utc>>, now: DateTime<Utc>, tick: Duration) -> Duration {
    match next {
        Some(n) if n > now => (n - now).min(tick),
        Some(_) => Duration::zero(),
        None => tick,
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
