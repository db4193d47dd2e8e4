//! The convergence controller: after every pre-copy pass, decide from the measurements
//! whether the migration gets under its downtime budget by itself, and if not, take the
//! next step the policy allows. It is fair: it never gives up on (or escalates) a pre-copy
//! before that pre-copy had a fair chance.
//!
//! ```text
//!   pass done ──▶ update the history: a new low of the remaining bytes? best link rate?
//!                    │
//!   predicted pause = remaining / link, link = max(best pass rate, the pre-check's probe)
//!                    │ ≤ target ───────────────────────────────────────▶ Continue
//!                    ▼ > target
//!   stalled (STALL_PASSES passes without a new low), or hopeless (from pass
//!   MIN_PASSES_TO_JUDGE on, more than MAX_EXTRA_PASSES still needed at these rates),
//!   or past the completion deadline?
//!                    │ no ─────────────────────────────────────────────▶ Continue
//!                    ▼ yes
//!   post-copy `automatic`? ───────────────────────────────────────────▶ StartPostcopy
//!   the last throttle step not applied yet, or not run a whole pass? ─▶ Continue
//!   throttle below its ceiling? ──────────────────────────────────────▶ RaiseThrottle(next)
//!   post-copy `allowed`? ─────────────────────────────────────────────▶ StartPostcopy
//!   past the completion deadline and the last pass made no new low? ──▶ Abort(reason)
//!   otherwise (nothing left to escalate to) ──────────────────────────▶ Continue: QEMU
//!                                                  keeps trying until the deadline
//! ```
//!
//! So an abort needs the completion deadline (by default
//! [`DEFAULT_COMPLETION_TIMEOUT_S_PER_GIB`] per GiB of RAM) *and* a pass that did not
//! shrink what is left: a pre-copy whose remaining bytes keep falling towards the
//! switch-over threshold is never aborted (property-tested). The link is judged by the best
//! rate any pass reached and by the pre-check's probe, never by the first pass alone (QEMU's
//! first pass reads cold pages and runs slower than later ones).
//!
//! The switch-over target (QEMU's `downtime-limit`: QEMU pauses the guest as soon as the
//! RAM left fits it at the measured rate) is a second, separate output: the *least pause*
//! policy starts it at [`LEAST_TARGET_MS`] and raises it only after a pass that did not
//! shrink what is left, to 5/4 of the pause the lowest remaining bytes seen would take (or
//! by half if it is there already), never above the ceiling
//! [`switchover_target_ms`] of the budget. An idle or lightly dirtying guest switches over
//! at the floor; a busy one reaches the ceiling within a few stalled passes and finishes
//! as it did when QEMU was handed the whole budget from the start (the `budget` policy).
//! The escalation above is judged against the ceiling, never the lowered target, so the
//! convergence guarantees are the same under both policies (property-tested).
//!
//! ```text
//!   target: 20 ms ──(pass without a new low)──▶ 5/4 x (lowest remaining / link),
//!                     or 3/2 x target if already there ──▶ … ──▶ ceiling
//!              └── (pass with a new low): unchanged; it never goes down
//! ```
//!
//! Streams (multifd) and compression are chosen before the stream starts (QEMU cannot
//! change them mid-stream), so they are not steps here but inputs: the bandwidth they
//! achieve is what the controller measures. Pure: no clock, no I/O; the orchestrator feeds
//! it samples, persists the [`History`] it returns (so a restarted server judges on), and
//! carries out (and logs) its decisions.

use serde::{Deserialize, Serialize};

/// A pre-copy that needs more passes than this to reach the budget is not converging.
pub const MAX_EXTRA_PASSES: f64 = 6.0;
/// No judgement from the predicted passes before this pass (the first passes' rates are
/// not representative: cold pages, a dirty rate not measured yet).
pub const MIN_PASSES_TO_JUDGE: u64 = 3;
/// Passes in a row without a new low of the remaining bytes: pre-copy stopped shrinking.
pub const STALL_PASSES: u32 = 3;
/// A new low must be at least this much (percent) below the previous one to count.
pub const PROGRESS_MARGIN_PCT: u64 = 2;
/// Completion deadline when the migration sets none: seconds per GiB of guest RAM (as
/// KubeVirt's `completionTimeoutPerGiB`).
pub const DEFAULT_COMPLETION_TIMEOUT_S_PER_GIB: u64 = 150;
/// First throttle step, and how much each later step adds (percent of vCPU time taken).
pub const THROTTLE_FIRST_PCT: u8 = 30;
pub const THROTTLE_STEP_PCT: u8 = 20;
/// QEMU's throttle runs each vCPU for this long, then puts it to sleep for
/// `p / (100 - p)` times as long (`CPU_THROTTLE_TIMESLICE_NS`, system/cpu-throttle.c).
pub const THROTTLE_TIMESLICE_MS: u64 = 10;
/// How much of the downtime budget one throttle sleep may take, as a fraction 1/N: the
/// sleep recurs every timeslice for as long as the throttle holds, so the guest's users see
/// it again and again, on top of the switch-over's own pause.
pub const THROTTLE_SLEEP_SHARE_OF_BUDGET: u64 = 3;
/// A throttle step that left the guest's dirty rate at this share (percent) or more of its
/// rate before the first step did not slow its writes: a guest whose writes are paced by
/// the outside world (requests, a stream) catches up after each sleep.
pub const INEFFECTIVE_THROTTLE_DIRTY_PCT: u64 = 90;

/// How much of the downtime budget the RAM still to send may take, percent. QEMU switches
/// over when *its* estimate (RAM remaining / bandwidth) is under its `downtime-limit`, but
/// the pause also stops the vCPUs, syncs the dirty bitmap a last time and sends the device
/// state, none of which that estimate counts: measured here (TCG, 1 GiB guest, 1 Gbit/s)
/// ~150-180 ms with no RAM left to send, and 295-316 ms of real pause when QEMU was given
/// the whole 300 ms. So QEMU and this controller aim at two thirds of the budget.
pub const RAM_SHARE_OF_BUDGET_PCT: u64 = 67;

/// The pause QEMU is told to aim for (its `downtime-limit`), for a downtime budget: the
/// ceiling of the switch-over target.
pub fn switchover_target_ms(budget_ms: u64) -> u64 {
    (budget_ms * RAM_SHARE_OF_BUDGET_PCT / 100).max(1)
}

/// How long QEMU's throttle at `pct` % puts a vCPU to sleep at a time, ms (99 %: 990 ms,
/// a second's silence every 10 ms of run).
pub fn throttle_sleep_ms(pct: u8) -> u64 {
    let p = u64::from(pct.min(99));
    THROTTLE_TIMESLICE_MS * p / (100 - p)
}

/// The highest throttle the controller applies: the policy's `max_throttle_pct`, lowered
/// so that one throttle sleep stays within a third of the downtime budget (90 % for the
/// default 300 ms: 90 ms sleeps). A throttle above it would stop the guest for longer than
/// the switch-over is allowed to, every few tens of milliseconds.
pub fn throttle_ceiling_pct(policy: &Policy) -> u8 {
    let allowed = policy.downtime_budget_ms / THROTTLE_SLEEP_SHARE_OF_BUDGET;
    let mut pct = policy.max_throttle_pct.min(99);
    // Exact: timeslice x p / (100 - p) <= allowed, without rounding the sleep down.
    while pct > 0 && THROTTLE_TIMESLICE_MS * u64::from(pct) > allowed * (100 - u64::from(pct)) {
        pct -= 1;
    }
    pct
}

/// Where the least-pause policy starts QEMU's switch-over target, ms: what the RAM left
/// may take on top of the pause's fixed part (stopping the vCPUs, the last bitmap sync,
/// the device state, the destination's load and resume), measured here at 10-20 ms under
/// TCG for a 1 GiB guest (docs/architecture.md, "The least pause").
pub const LEAST_TARGET_MS: u64 = 20;

/// How the switch-over target is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchoverPolicy {
    /// Start at [`LEAST_TARGET_MS`] and raise it towards the ceiling only when the RAM left
    /// stops shrinking: the least pause the guest allows.
    #[default]
    Least,
    /// Aim at the ceiling from the start (Ferry before issue 14): QEMU switches as soon as
    /// the rest fits two thirds of the budget, however much less an idle guest could do.
    Budget,
}

impl std::fmt::Display for SwitchoverPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SwitchoverPolicy::Least => "least",
            SwitchoverPolicy::Budget => "budget",
        })
    }
}

/// The target QEMU gets when the stream starts, ms.
pub fn initial_target_ms(policy: &Policy) -> u64 {
    let ceiling = switchover_target_ms(policy.downtime_budget_ms);
    match policy.switchover {
        SwitchoverPolicy::Least => LEAST_TARGET_MS.min(ceiling),
        SwitchoverPolicy::Budget => ceiling,
    }
}

/// The target after a pass: unchanged while what is left keeps shrinking, else raised to
/// what pre-copy has shown it can reach (5/4 of the pause its lowest remaining bytes would
/// take), or by half when QEMU did not switch even there; never above the ceiling, never
/// lowered. Aiming at the lowest level seen, not the latest pass, matters for a busy guest:
/// QEMU switches at the first pass under its target, so a target far above the plateau
/// pauses for the plateau's high points (measured at 50 MiB/s: 140 ms with the ceiling
/// reached in two steps, against the ~50 ms its lows allow).
fn next_target_ms(policy: &Policy, h: &History, link: u64) -> u64 {
    let ceiling = switchover_target_ms(policy.downtime_budget_ms);
    let current = h.target_or(ceiling);
    if policy.switchover == SwitchoverPolicy::Budget {
        return ceiling.max(current);
    }
    if h.last_pass_progressed || current >= ceiling {
        return current;
    }
    let reachable = match (h.best_remaining_bytes, link) {
        (Some(best), l) if l > 0 => (best as f64 / l as f64 * 1000.0 * 1.25) as u64,
        _ => 0,
    };
    let next = if reachable > current {
        reachable
    } else {
        current.saturating_add(current.div_ceil(2))
    };
    next.min(ceiling)
}

/// The completion deadline of a migration, ms: `per_gib_s` (or the default) for each
/// started GiB of RAM.
pub fn completion_deadline_ms(per_gib_s: Option<u64>, ram_mib: u64) -> u64 {
    let gib = ram_mib.div_ceil(1024).max(1);
    per_gib_s
        .unwrap_or(DEFAULT_COMPLETION_TIMEOUT_S_PER_GIB)
        .saturating_mul(1000)
        .saturating_mul(gib)
}

/// When post-copy may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostcopyPolicy {
    /// Never: the migration stays pre-copy (throttles, or aborts).
    #[default]
    Never,
    /// As the last resort, after throttling reached its ceiling.
    Allowed,
    /// Instead of throttling: as soon as pre-copy is seen not to converge.
    Automatic,
}

/// What the controller may do, for one migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Longest acceptable switch-over pause, ms.
    pub downtime_budget_ms: u64,
    /// Highest vCPU throttle, percent (0: never throttle).
    pub max_throttle_pct: u8,
    pub postcopy: PostcopyPolicy,
    /// Past this (ms since the stream started) a pre-copy that stopped shrinking is
    /// escalated or, with nothing left to escalate to, aborted (0: no deadline).
    pub completion_deadline_ms: u64,
    /// How QEMU's switch-over target moves within the budget.
    #[serde(default)]
    pub switchover: SwitchoverPolicy,
}

/// What the source measured at the end of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Sample {
    pub pass: u64,
    pub elapsed_ms: u64,
    pub remaining_bytes: u64,
    /// Achieved stream rate, bytes/s.
    pub bandwidth_bytes_per_s: u64,
    /// Guest dirty rate, bytes/s.
    pub dirty_rate_bytes_per_s: u64,
    /// The throttle QEMU applies now, percent. QEMU's auto-converge moves the throttle
    /// only at some passes, so a requested step can lag.
    #[serde(default)]
    pub throttle_pct: u8,
}

/// The controller's current step (persisted with the migration, shown by the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "step", content = "pct")]
pub enum Step {
    /// Plain pre-copy.
    #[default]
    Precopy,
    /// Pre-copy with the guest's vCPUs throttled by this percentage.
    Throttled(u8),
    /// Switched to post-copy: the guest runs on the destination, pages follow on demand.
    Postcopy,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Precopy => f.write_str("pre-copy"),
            Step::Throttled(p) => write!(f, "pre-copy, guest throttled {p}%"),
            Step::Postcopy => f.write_str("post-copy"),
        }
    }
}

/// What the controller remembers between passes. Persisted with the migration, so a
/// restarted server goes on judging where it left off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    pub step: Step,
    /// The lowest remaining bytes any pass ended with.
    pub best_remaining_bytes: Option<u64>,
    /// Passes in a row that made no new low (since the last one, or the last step).
    pub passes_without_progress: u32,
    /// Whether the latest pass made a new low.
    pub last_pass_progressed: bool,
    /// The best rate any pass reached, bytes/s.
    pub best_bandwidth_bytes_per_s: u64,
    /// The pre-check's probe of the migration link, bytes/s (0: none).
    pub link_estimate_bytes_per_s: u64,
    /// Whole passes run at the current step with its throttle applied.
    pub passes_at_step: u32,
    /// The switch-over target QEMU has (its `downtime-limit`), ms; 0 in a record saved
    /// before the target moved, when QEMU was given the ceiling.
    pub target_ms: u64,
    /// The guest's dirty rate at the pass that took the first throttle step, bytes/s: what
    /// later steps are judged against (0: not throttled yet).
    pub unthrottled_dirty_bytes_per_s: u64,
}

impl History {
    /// A fresh history for a link the pre-check measured at `link_estimate` bytes/s.
    pub fn with_link_estimate(link_estimate: u64) -> History {
        History {
            link_estimate_bytes_per_s: link_estimate,
            ..Default::default()
        }
    }

    /// The target QEMU has, `ceiling` for a record from before the target moved.
    pub fn target_or(&self, ceiling: u64) -> u64 {
        if self.target_ms == 0 {
            ceiling
        } else {
            self.target_ms
        }
    }

    /// The rate the link is judged by: the best any pass reached, or the probe's.
    pub fn link_bytes_per_s(&self, s: &Sample) -> u64 {
        self.best_bandwidth_bytes_per_s
            .max(self.link_estimate_bytes_per_s)
            .max(s.bandwidth_bytes_per_s)
    }

    /// The bookkeeping after pass `s` (before any decision).
    fn after(&self, s: &Sample) -> History {
        let mut h = *self;
        let progressed = match self.best_remaining_bytes {
            None => true,
            Some(best) => {
                s.remaining_bytes < best
                    && best - s.remaining_bytes >= best * PROGRESS_MARGIN_PCT / 100
            }
        };
        h.last_pass_progressed = progressed;
        if progressed {
            h.best_remaining_bytes = Some(s.remaining_bytes);
            h.passes_without_progress = 0;
        } else {
            h.passes_without_progress += 1;
        }
        h.best_bandwidth_bytes_per_s = h.best_bandwidth_bytes_per_s.max(s.bandwidth_bytes_per_s);
        let applied = match h.step {
            Step::Throttled(p) => s.throttle_pct >= p,
            _ => true,
        };
        if applied {
            h.passes_at_step += 1;
        }
        h
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    Continue,
    RaiseThrottle { to_pct: u8 },
    StartPostcopy,
    Abort { reason: String },
}

/// One decision with the numbers behind it (each becomes an event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub action: Action,
    /// Pause if QEMU switched over now, ms (None: no bandwidth measured yet).
    pub predicted_downtime_ms: Option<u64>,
    /// Further passes pre-copy needs to reach the budget at these rates (None: never).
    pub passes_needed: Option<f64>,
    /// The link rate judged by, bytes/s.
    #[serde(default)]
    pub link_bytes_per_s: u64,
    /// The switch-over target QEMU should have from now on, ms.
    #[serde(default)]
    pub target_ms: u64,
    pub reason: String,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Passes needed for `remaining` to shrink to what `link` moves within `budget_ms`, if
/// each pass leaves `dirty/link` of the previous one to re-send.
pub fn passes_needed(remaining: u64, link: u64, dirty: u64, budget_ms: u64) -> Option<f64> {
    if link == 0 {
        return None;
    }
    let target = link as f64 * budget_ms as f64 / 1000.0;
    let remaining = remaining as f64;
    if remaining <= target {
        return Some(0.0);
    }
    let ratio = dirty as f64 / link as f64;
    if ratio >= 1.0 {
        return None;
    }
    if ratio <= 0.0 {
        return Some(1.0);
    }
    Some(((target / remaining).ln() / ratio.ln()).max(0.0))
}

/// The decision after pass `s`, given what the controller remembers; returns the history
/// to remember next (with the step the decision moves to).
pub fn decide(policy: &Policy, history: &History, s: &Sample) -> (Decision, History) {
    let mut h = history.after(s);
    let link = h.link_bytes_per_s(s);
    let predicted = (link > 0).then(|| (s.remaining_bytes as f64 / link as f64 * 1000.0) as u64);
    // Escalation is judged against the ceiling, whatever QEMU's target is now.
    let target = switchover_target_ms(policy.downtime_budget_ms);
    let needed = passes_needed(s.remaining_bytes, link, s.dirty_rate_bytes_per_s, target);
    if h.step != Step::Postcopy {
        h.target_ms = next_target_ms(policy, &h, link);
    }
    let target_now = h.target_or(target);
    let decision = |action, reason: String| Decision {
        action,
        predicted_downtime_ms: predicted,
        passes_needed: needed,
        link_bytes_per_s: link,
        target_ms: target_now,
        reason,
    };
    if h.step == Step::Postcopy {
        return (decision(Action::Continue, "post-copy is running".into()), h);
    }
    let raised = history.target_ms != 0 && target_now > history.target_ms;
    let rates = format!(
        "dirty {:.0} MiB/s vs link {:.0} MiB/s (best pass {:.0}, probe {:.0}), {:.0} MiB \
         remaining, switch-over target {target_now} ms{}",
        mib(s.dirty_rate_bytes_per_s),
        mib(link),
        mib(h.best_bandwidth_bytes_per_s),
        mib(h.link_estimate_bytes_per_s),
        mib(s.remaining_bytes),
        if raised {
            format!(" (raised from {} ms: no new low)", history.target_ms)
        } else {
            String::new()
        }
    );
    let Some(pred) = predicted else {
        return (
            decision(Action::Continue, "no bandwidth measured yet".into()),
            h,
        );
    };
    let overdue = policy.completion_deadline_ms > 0 && s.elapsed_ms > policy.completion_deadline_ms;
    let stalled = h.passes_without_progress >= STALL_PASSES;
    // Past the deadline and stalled while the prediction says "within target": QEMU, which
    // switches over as soon as it sees the rest fit, evidently sees a slower link than
    // the estimate. The prediction is wrong; judge by the stall instead.
    let prediction_disproved = overdue && stalled;
    if pred <= target && !prediction_disproved {
        let why = format!(
            "predicted downtime {pred} ms is within the {target} ms ceiling for the {} ms budget \
             ({rates})",
            policy.downtime_budget_ms
        );
        return (decision(Action::Continue, why), h);
    }
    let hopeless = s.pass >= MIN_PASSES_TO_JUDGE && needed.is_none_or(|n| n > MAX_EXTRA_PASSES);
    if !(overdue || stalled || hopeless) {
        let why = match needed {
            Some(n) if s.pass >= MIN_PASSES_TO_JUDGE => {
                format!("converging: about {n:.1} more pass(es) to reach the budget ({rates})")
            }
            _ if h.last_pass_progressed => format!(
                "pass {} still shrinks what is left; judging from pass {MIN_PASSES_TO_JUDGE} \
                 ({rates})",
                s.pass
            ),
            _ => format!(
                "{} pass(es) without a new low of {} MiB; escalating after {STALL_PASSES} \
                 ({rates})",
                h.passes_without_progress,
                mib(h.best_remaining_bytes.unwrap_or(0)) as u64
            ),
        };
        return (decision(Action::Continue, why), h);
    }
    let why = if overdue {
        format!(
            "past the completion deadline of {} s ({rates})",
            policy.completion_deadline_ms / 1000
        )
    } else if stalled {
        format!(
            "not converging: {} passes without a new low (best {:.0} MiB); predicted downtime \
             {pred} ms > {target} ms target ({rates})",
            h.passes_without_progress,
            mib(h.best_remaining_bytes.unwrap_or(0))
        )
    } else {
        format!(
            "not converging: predicted downtime {pred} ms > {target} ms target for the {} ms \
             budget, more than {MAX_EXTRA_PASSES} passes still needed ({rates})",
            policy.downtime_budget_ms
        )
    };
    if policy.postcopy == PostcopyPolicy::Automatic {
        h.step = Step::Postcopy;
        return (
            decision(
                Action::StartPostcopy,
                format!("{why}; switching to post-copy (policy: automatic)"),
            ),
            h,
        );
    }
    let current = match h.step {
        Step::Throttled(p) => p,
        _ => 0,
    };
    let ceiling = throttle_ceiling_pct(policy);
    if current > 0 && s.throttle_pct < current.min(ceiling) {
        let why = format!(
            "{why}; waiting for the {current}% throttle to take effect (QEMU applies {}% now)",
            s.throttle_pct
        );
        return (decision(Action::Continue, why), h);
    }
    if current > 0 && h.passes_at_step < 2 {
        // The pass that applied the step does not show its effect yet: judge a whole one.
        let why = format!("{why}; one whole pass at {current}% before the next step");
        return (decision(Action::Continue, why), h);
    }
    let unthrottled = h.unthrottled_dirty_bytes_per_s;
    let ineffective = current > 0
        && unthrottled > 0
        && s.dirty_rate_bytes_per_s.saturating_mul(100)
            >= unthrottled.saturating_mul(INEFFECTIVE_THROTTLE_DIRTY_PCT);
    if ineffective && policy.postcopy == PostcopyPolicy::Allowed {
        // More throttle would only stall the guest longer: its writes catch up after each
        // sleep. Post-copy finishes it without stalling it.
        h.step = Step::Postcopy;
        return (
            decision(
                Action::StartPostcopy,
                format!(
                    "{why}; the {current}% throttle did not slow the guest's writes (dirty \
                     {:.0} MiB/s, {:.0} MiB/s before throttling): switching to post-copy \
                     (policy: allowed) rather than stalling the guest further",
                    mib(s.dirty_rate_bytes_per_s),
                    mib(unthrottled)
                ),
            ),
            h,
        );
    }
    if current < ceiling {
        let next = if current == 0 {
            THROTTLE_FIRST_PCT
        } else {
            current.saturating_add(THROTTLE_STEP_PCT)
        }
        .min(ceiling);
        if current == 0 {
            h.unthrottled_dirty_bytes_per_s = s.dirty_rate_bytes_per_s;
        }
        h.step = Step::Throttled(next);
        h.passes_at_step = 0;
        h.passes_without_progress = 0;
        return (
            decision(
                Action::RaiseThrottle { to_pct: next },
                format!("{why}; throttling the guest to {next}%"),
            ),
            h,
        );
    }
    if policy.postcopy == PostcopyPolicy::Allowed {
        h.step = Step::Postcopy;
        let at = if current > 0 && ceiling < policy.max_throttle_pct {
            format!(
                "throttle at {current}% (higher would put the vCPUs to sleep for more than a \
                 third of the {} ms budget at a time), ",
                policy.downtime_budget_ms
            )
        } else if current > 0 {
            format!("throttle at its {current}% ceiling, ")
        } else {
            String::new()
        };
        return (
            decision(
                Action::StartPostcopy,
                format!("{why}; {at}switching to post-copy (policy: allowed)"),
            ),
            h,
        );
    }
    let exhausted = if current > 0 && ceiling < policy.max_throttle_pct {
        format!(
            "throttle at {current}% (higher would put the vCPUs to sleep for more than a \
             third of the {} ms budget at a time) and post-copy not allowed by the policy",
            policy.downtime_budget_ms
        )
    } else if current > 0 {
        format!("throttle at its {current}% ceiling and post-copy not allowed by the policy")
    } else {
        "no throttle and no post-copy allowed by the policy".to_string()
    };
    if overdue && !h.last_pass_progressed {
        return (
            decision(
                Action::Abort {
                    reason: format!("{why}; {exhausted}"),
                },
                String::new(),
            ),
            h,
        );
    }
    let left = if policy.completion_deadline_ms > 0 {
        format!(
            "QEMU keeps trying until the completion deadline ({} s left)",
            policy.completion_deadline_ms.saturating_sub(s.elapsed_ms) / 1000
        )
    } else {
        "QEMU keeps trying (no completion deadline)".to_string()
    };
    (
        decision(Action::Continue, format!("{why}; {exhausted}; {left}")),
        h,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn policy(postcopy: PostcopyPolicy) -> Policy {
        Policy {
            downtime_budget_ms: 300,
            max_throttle_pct: 90,
            postcopy,
            completion_deadline_ms: 0,
            switchover: SwitchoverPolicy::Least,
        }
    }

    /// The issue's idle guest: what is left shrinks pass after pass, so QEMU keeps the
    /// least target and switches over at the floor instead of waiting for the ceiling.
    #[test]
    fn a_shrinking_copy_keeps_the_least_target() {
        let p = policy(PostcopyPolicy::Never);
        let start = History {
            target_ms: initial_target_ms(&p),
            ..History::with_link_estimate(119 * MIB)
        };
        assert_eq!(start.target_ms, LEAST_TARGET_MS);
        let trace = [
            sample(1, 700, 110, 0),
            sample(2, 40, 110, 0),
            sample(3, 8, 110, 0),
        ];
        let (ds, h) = run(&p, start, &trace);
        assert!(ds.iter().all(|d| d.target_ms == LEAST_TARGET_MS), "{ds:?}");
        assert_eq!(h.target_ms, LEAST_TARGET_MS);
    }

    /// A guest whose dirty set stops shrinking above the least target: the target rises
    /// to what its lowest point needs (5/4 of that pause), then by half, up to the ceiling.
    #[test]
    fn a_stalled_copy_raises_the_target_towards_the_ceiling() {
        let p = policy(PostcopyPolicy::Never);
        let start = History {
            target_ms: initial_target_ms(&p),
            ..History::default()
        };
        // 6 MiB at 100 MiB/s: 60 ms predicted, stuck there.
        let trace: Vec<Sample> = (1..=5).map(|i| sample(i, 6, 100, 50)).collect();
        let (ds, _) = run(&p, start, &trace);
        let targets: Vec<u64> = ds.iter().map(|d| d.target_ms).collect();
        // Pass 1 is a new low (kept at 20); pass 2 raises to 5/4 of the 60 ms its lowest
        // remaining bytes take; then by half each stalled pass, up to the ceiling.
        assert_eq!(targets, vec![20, 75, 113, 170, 201], "{ds:?}");
        assert!(
            ds[1].reason.contains("raised from 20 ms"),
            "{}",
            ds[1].reason
        );
        assert!(ds.iter().all(|d| d.action == Action::Continue));
    }

    /// A busy guest's remaining bytes bounce on a plateau: the target follows its low
    /// points, not the latest pass (QEMU switches at the first pass under the target).
    #[test]
    fn the_target_follows_the_plateaus_low_not_its_latest_high() {
        let p = policy(PostcopyPolicy::Never);
        let start = History {
            target_ms: initial_target_ms(&p),
            ..History::default()
        };
        let trace = [sample(1, 4, 100, 50), sample(2, 12, 100, 50)];
        let (ds, _) = run(&p, start, &trace);
        // Lowest 4 MiB at 100 MiB/s: 40 ms, so 50 ms; the latest pass (120 ms) is ignored.
        assert_eq!(ds[1].target_ms, 50, "{}", ds[1].reason);
    }

    #[test]
    fn the_budget_policy_aims_at_the_ceiling_from_the_start() {
        let p = Policy {
            switchover: SwitchoverPolicy::Budget,
            ..policy(PostcopyPolicy::Never)
        };
        assert_eq!(initial_target_ms(&p), 201);
        let start = History {
            target_ms: initial_target_ms(&p),
            ..History::default()
        };
        let (ds, _) = run(&p, start, &[sample(1, 700, 110, 0), sample(2, 6, 110, 0)]);
        assert!(ds.iter().all(|d| d.target_ms == 201));
        // A record from before the target moved (0) means QEMU has the ceiling.
        let (d, h) = decide(
            &policy(PostcopyPolicy::Never),
            &History::default(),
            &sample(1, 6, 100, 0),
        );
        assert_eq!((d.target_ms, h.target_ms), (201, 201));
    }

    fn sample(pass: u64, remaining_mib: u64, bw_mib: u64, dirty_mib: u64) -> Sample {
        Sample {
            pass,
            elapsed_ms: pass * 2_000,
            remaining_bytes: remaining_mib * MIB,
            bandwidth_bytes_per_s: bw_mib * MIB,
            dirty_rate_bytes_per_s: dirty_mib * MIB,
            throttle_pct: 0,
        }
    }

    /// A capped stream whose estimate says "fits" while QEMU never switches over (the
    /// estimate counted a faster link than the stream gets): past the deadline, with the
    /// remaining bytes stuck, the prediction is disproved and the controller stops.
    #[test]
    fn a_prediction_the_stream_never_bears_out_is_disproved_past_the_deadline() {
        let p = Policy {
            max_throttle_pct: 0,
            completion_deadline_ms: 20_000,
            ..policy(PostcopyPolicy::Never)
        };
        let trace: Vec<Sample> = (1..=20).map(|i| sample(i, 60, 16, 16)).collect();
        let (ds, _) = run(&p, History::with_link_estimate(1480 * MIB), &trace);
        for (d, s) in ds.iter().zip(&trace) {
            if s.elapsed_ms <= 20_000 {
                assert_eq!(d.action, Action::Continue, "{}", d.reason);
            }
        }
        let last = ds.last().expect("decisions");
        assert!(
            matches!(&last.action, Action::Abort { reason } if reason.contains("completion deadline")),
            "{last:?}"
        );
    }

    /// Runs a trace of samples through the controller, returning every decision.
    fn run(p: &Policy, start: History, trace: &[Sample]) -> (Vec<Decision>, History) {
        let mut h = start;
        let mut out = Vec::new();
        for s in trace {
            let (d, next) = decide(p, &h, s);
            out.push(d);
            h = next;
        }
        (out, h)
    }

    #[test]
    fn within_budget_continues() {
        // 20 MiB at 100 MiB/s: 200 ms.
        let (d, _) = decide(
            &policy(PostcopyPolicy::Never),
            &History::default(),
            &sample(2, 20, 100, 500),
        );
        assert_eq!(d.action, Action::Continue);
        assert_eq!(d.predicted_downtime_ms, Some(200));
    }

    #[test]
    fn the_link_is_judged_by_its_best_pass_and_the_probe_not_the_first_pass() {
        // The issue's loopback case: pass 1 ran at 173 MiB/s against a 199 MiB/s dirty
        // rate; later passes run faster. A probe of 900 MiB/s says the link can do it.
        let p = Policy {
            max_throttle_pct: 0,
            completion_deadline_ms: completion_deadline_ms(None, 1024),
            ..policy(PostcopyPolicy::Never)
        };
        let h = History::with_link_estimate(900 * MIB);
        let (d, _) = decide(&p, &h, &sample(2, 600, 173, 199));
        assert_eq!(d.action, Action::Continue, "{}", d.reason);
        assert_eq!(d.link_bytes_per_s, 900 * MIB);
    }

    #[test]
    fn with_nothing_to_escalate_qemu_keeps_trying_until_the_deadline() {
        let p = Policy {
            max_throttle_pct: 0,
            completion_deadline_ms: 60_000,
            ..policy(PostcopyPolicy::Never)
        };
        // A guest that out-dirties the link: stuck at 500 MiB for ever.
        let trace: Vec<Sample> = (2..40).map(|i| sample(i, 500, 100, 150)).collect();
        let (ds, _) = run(&p, History::default(), &trace);
        for (d, s) in ds.iter().zip(&trace) {
            match &d.action {
                Action::Continue => assert!(s.elapsed_ms <= 60_000, "{}", d.reason),
                Action::Abort { reason } => {
                    assert!(s.elapsed_ms > 60_000);
                    assert!(reason.contains("completion deadline"), "{reason}");
                    return;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("never aborted past the deadline");
    }

    #[test]
    fn escalation_waits_for_a_fair_chance_then_goes_throttle_then_postcopy() {
        let never = policy(PostcopyPolicy::Never);
        // Hopeless from the start (dirty > link), but not judged before pass 3.
        let (d2, h) = decide(&never, &History::default(), &sample(2, 1000, 100, 150));
        assert_eq!(d2.action, Action::Continue, "{}", d2.reason);
        let (d3, h) = decide(&never, &h, &sample(3, 1000, 100, 150));
        assert_eq!(d3.action, Action::RaiseThrottle { to_pct: 30 });
        assert_eq!(h.step, Step::Throttled(30));
        // QEMU has not applied the 30 % yet: wait rather than pile up steps.
        let (w, h) = decide(&never, &h, &sample(4, 1000, 100, 150));
        assert_eq!(w.action, Action::Continue);
        assert!(w.reason.contains("take effect"), "{}", w.reason);
        // Applied: one whole pass at 30 % before the next step.
        let mut s = sample(5, 1000, 100, 150);
        s.throttle_pct = 30;
        let (w, h) = decide(&never, &h, &s);
        assert_eq!(w.action, Action::Continue, "{}", w.reason);
        s.pass = 6;
        let (n, h) = decide(&never, &h, &s);
        assert_eq!(n.action, Action::RaiseThrottle { to_pct: 50 });
        // At the ceiling with post-copy allowed: post-copy after a whole pass there.
        let allowed = Policy {
            max_throttle_pct: 50,
            ..policy(PostcopyPolicy::Allowed)
        };
        s.throttle_pct = 50;
        s.pass = 7;
        let (w, h) = decide(&allowed, &h, &s);
        assert_eq!(w.action, Action::Continue, "{}", w.reason);
        s.pass = 8;
        let (pc, h) = decide(&allowed, &h, &s);
        assert_eq!(pc.action, Action::StartPostcopy, "{}", pc.reason);
        assert_eq!(h.step, Step::Postcopy);
        // Automatic: post-copy as soon as it is judged not converging.
        let auto = policy(PostcopyPolicy::Automatic);
        let (_, h) = decide(&auto, &History::default(), &sample(2, 1000, 100, 150));
        let (d, _) = decide(&auto, &h, &sample(3, 1000, 100, 150));
        assert_eq!(d.action, Action::StartPostcopy);
    }

    #[test]
    fn the_throttle_never_sleeps_the_guest_longer_than_a_third_of_the_budget() {
        assert_eq!(throttle_sleep_ms(90), 90);
        assert_eq!(throttle_sleep_ms(99), 990);
        assert_eq!(throttle_sleep_ms(0), 0);
        let p = |budget, max| Policy {
            downtime_budget_ms: budget,
            max_throttle_pct: max,
            ..policy(PostcopyPolicy::Never)
        };
        // 300 ms: 100 ms sleeps at most, 90 % (90 ms); 91 % would sleep 101 ms.
        assert_eq!(throttle_ceiling_pct(&p(300, 99)), 90);
        assert_eq!(throttle_ceiling_pct(&p(300, 70)), 70);
        assert_eq!(throttle_ceiling_pct(&p(1000, 99)), 97);
        assert_eq!(throttle_ceiling_pct(&p(30, 99)), 50);
        assert_eq!(throttle_ceiling_pct(&p(1, 99)), 0);
        // The steps stop at the ceiling: 30, 50, 70, 90, never 99.
        let never = p(300, 99);
        let mut h = History::default();
        let mut steps = Vec::new();
        for pass in 3..40 {
            let mut s = sample(pass, 1000, 100, 150 - pass);
            s.throttle_pct = match h.step {
                Step::Throttled(t) => t,
                _ => 0,
            };
            let (d, next) = decide(&never, &h, &s);
            if let Action::RaiseThrottle { to_pct } = d.action {
                steps.push(to_pct);
            }
            h = next;
        }
        assert_eq!(steps, vec![30, 50, 70, 90]);
    }

    /// Runs passes stuck at 60 MiB over a 110 MiB/s link, dirtying `before` MiB/s until
    /// the first throttle step and `after` MiB/s at its throttle, until the controller does
    /// something other than the first step and continuing.
    fn after_the_first_step(p: &Policy, before: u64, after: u64) -> (Decision, History) {
        let mut h = History::default();
        for pass in 2..30 {
            let (dirty, throttle) = match h.step {
                Step::Throttled(t) => (after, t),
                _ => (before, 0),
            };
            let mut s = sample(pass, 60, 110, dirty);
            s.throttle_pct = throttle;
            let (d, next) = decide(p, &h, &s);
            match d.action {
                Action::Continue
                | Action::RaiseThrottle {
                    to_pct: THROTTLE_FIRST_PCT,
                } => {}
                _ => return (d, next),
            }
            h = next;
        }
        panic!("no second step");
    }

    /// The benchmark's 50 MiB/s guest writes at a pace set from outside: after each sleep
    /// it catches up, so the throttle only stalls it. With post-copy allowed the controller
    /// switches to post-copy when the first step is seen not to help, not at 90 %.
    #[test]
    fn a_throttle_that_does_not_slow_the_writes_gives_way_to_postcopy() {
        let allowed = Policy {
            max_throttle_pct: 99,
            ..policy(PostcopyPolicy::Allowed)
        };
        let (d, h) = after_the_first_step(&allowed, 50, 49);
        assert_eq!(d.action, Action::StartPostcopy, "{}", d.reason);
        assert!(d.reason.contains("did not slow"), "{}", d.reason);
        assert_eq!(h.step, Step::Postcopy);
        assert_eq!(h.unthrottled_dirty_bytes_per_s, 50 * MIB);

        // A guest the throttle does slow (CPU-bound writes) goes on to the next step.
        let (d, _) = after_the_first_step(&allowed, 50, 35);
        assert_eq!(
            d.action,
            Action::RaiseThrottle { to_pct: 50 },
            "{}",
            d.reason
        );

        // Without post-copy the throttle is the only way left: it goes on rising.
        let never = Policy {
            postcopy: PostcopyPolicy::Never,
            ..allowed
        };
        let (d, _) = after_the_first_step(&never, 50, 49);
        assert_eq!(
            d.action,
            Action::RaiseThrottle { to_pct: 50 },
            "{}",
            d.reason
        );
    }

    #[test]
    fn a_plateau_counts_as_stalled_after_a_few_passes() {
        let p = policy(PostcopyPolicy::Never);
        // Converging by prediction (dirty 25 % of the link) yet stuck at 400 MiB.
        let trace: Vec<Sample> = (2..7).map(|i| sample(i, 400, 100, 25)).collect();
        let (ds, _) = run(&p, History::default(), &trace);
        let first_step = ds
            .iter()
            .position(|d| d.action != Action::Continue)
            .expect("escalated");
        // Pass 2 sets the low; passes 3, 4, 5 make none: the third is the stall.
        assert_eq!(trace[first_step].pass, 5, "{:?}", ds);
        assert_eq!(ds[first_step].action, Action::RaiseThrottle { to_pct: 30 });
    }

    #[test]
    fn the_completion_deadline_escalates_even_a_slowly_converging_copy() {
        let mut p = policy(PostcopyPolicy::Never);
        p.completion_deadline_ms = 5_000;
        let (d, _) = decide(&p, &History::default(), &sample(3, 1000, 100, 25));
        assert_eq!(d.action, Action::RaiseThrottle { to_pct: 30 });
        assert!(d.reason.contains("completion deadline"), "{}", d.reason);
    }

    #[test]
    fn passes_needed_arithmetic() {
        assert_eq!(passes_needed(10 * MIB, 100 * MIB, 50 * MIB, 300), Some(0.0));
        assert_eq!(passes_needed(1000 * MIB, 100 * MIB, 100 * MIB, 300), None);
        assert_eq!(passes_needed(1000 * MIB, 0, 10 * MIB, 300), None);
        // 1000 -> 30 MiB with each pass leaving half: log(0.03)/log(0.5) = 5.06
        let n = passes_needed(1000 * MIB, 100 * MIB, 50 * MIB, 300).unwrap();
        assert!((n - 5.06).abs() < 0.01, "{n}");
    }

    #[test]
    fn completion_deadlines_scale_with_memory() {
        assert_eq!(completion_deadline_ms(None, 512), 150_000);
        assert_eq!(completion_deadline_ms(None, 1025), 300_000);
        assert_eq!(completion_deadline_ms(Some(10), 4096), 40_000);
    }

    fn any_policy() -> impl Strategy<Value = Policy> {
        (1u64..5_000, 0u8..=99, 0usize..3, 0u64..100_000).prop_map(|(b, t, pc, dl)| Policy {
            downtime_budget_ms: b,
            max_throttle_pct: t,
            postcopy: [
                PostcopyPolicy::Never,
                PostcopyPolicy::Allowed,
                PostcopyPolicy::Automatic,
            ][pc],
            completion_deadline_ms: dl,
            switchover: SwitchoverPolicy::Least,
        })
    }

    /// A trace of passes: rates and throttle at random, remaining bytes from `shrink`
    /// (None: at random).
    fn any_trace(shrinking: bool) -> impl Strategy<Value = Vec<Sample>> {
        proptest::collection::vec(
            (
                0u64..(2u64 << 30),
                0u64..(2u64 << 30),
                0u8..=99,
                1u64..20_000,
                0u64..(64u64 << 30),
                3u64..50,
            ),
            1..40,
        )
        .prop_map(move |steps| {
            let mut out = Vec::new();
            let (mut elapsed, mut remaining) = (0u64, 64u64 << 30);
            for (i, (bw, dirty, throttle, dt, r, shrink_pct)) in steps.into_iter().enumerate() {
                elapsed += dt;
                remaining = if shrinking {
                    // At least PROGRESS_MARGIN_PCT + 1 % less than the pass before.
                    remaining.saturating_sub((remaining * shrink_pct / 100).max(1))
                } else {
                    r
                };
                out.push(Sample {
                    pass: i as u64 + 2,
                    elapsed_ms: elapsed,
                    remaining_bytes: remaining,
                    bandwidth_bytes_per_s: bw,
                    dirty_rate_bytes_per_s: dirty,
                    throttle_pct: throttle,
                });
            }
            out
        })
    }

    proptest! {
        /// The issue's promise: a pre-copy whose remaining bytes keep shrinking towards the
        /// switch-over threshold is never aborted, whatever the rates, policy or deadline.
        #[test]
        fn a_shrinking_precopy_is_never_aborted(p in any_policy(), probe in 0u64..(2u64 << 30), trace in any_trace(true)) {
            let (ds, _) = run(&p, History::with_link_estimate(probe), &trace);
            for d in ds {
                prop_assert!(!matches!(d.action, Action::Abort { .. }), "{}", d.reason);
            }
        }

        /// Whatever the trace: never post-copy under `never`, the throttle only rises and
        /// never past its ceiling, within the target always continues, nothing escalates
        /// before pass MIN_PASSES_TO_JUDGE unless it stalled or is overdue, and an abort
        /// only comes past the deadline with nothing left to escalate to.
        #[test]
        fn decisions_respect_the_policy(p in any_policy(), probe in 0u64..(2u64 << 30), trace in any_trace(false)) {
            let mut h = History::with_link_estimate(probe);
            for s in &trace {
                let (d, next) = decide(&p, &h, s);
                let current = match h.step { Step::Throttled(t) => t, _ => 0 };
                let overdue = p.completion_deadline_ms > 0 && s.elapsed_ms > p.completion_deadline_ms;
                match &d.action {
                    Action::StartPostcopy => {
                        prop_assert_ne!(p.postcopy, PostcopyPolicy::Never);
                        prop_assert_eq!(next.step, Step::Postcopy);
                    }
                    Action::RaiseThrottle { to_pct } => {
                        prop_assert!(*to_pct > current && *to_pct <= throttle_ceiling_pct(&p));
                        prop_assert!(throttle_sleep_ms(*to_pct) <= p.downtime_budget_ms / THROTTLE_SLEEP_SHARE_OF_BUDGET);
                        prop_assert_eq!(next.step, Step::Throttled(*to_pct));
                    }
                    Action::Abort { .. } => {
                        prop_assert!(overdue);
                        prop_assert_eq!(p.postcopy, PostcopyPolicy::Never);
                        prop_assert!(current >= throttle_ceiling_pct(&p));
                        prop_assert!(!next.last_pass_progressed);
                    }
                    Action::Continue => {}
                }
                if !matches!(d.action, Action::Continue) {
                    prop_assert!(overdue || s.pass >= MIN_PASSES_TO_JUDGE || next.passes_without_progress >= STALL_PASSES);
                }
                if let Some(pred) = d.predicted_downtime_ms {
                    let disproved = overdue && h.after(s).passes_without_progress >= STALL_PASSES;
                    if pred <= switchover_target_ms(p.downtime_budget_ms) && h.step != Step::Postcopy && !disproved {
                        prop_assert_eq!(&d.action, &Action::Continue);
                    }
                }
                if h.step == Step::Postcopy {
                    prop_assert_eq!(&d.action, &Action::Continue);
                }
                h = next;
            }
        }

        /// The switch-over target never goes down, never passes the ceiling, starts at the
        /// least target, and rises only after a pass that made no new low; and the least
        /// pause changes nothing else: the same trace gets the same actions and steps as
        /// under the budget policy (the convergence guarantees are the budget's).
        #[test]
        fn the_target_only_rises_and_leaves_escalation_alone(p in any_policy(), probe in 0u64..(2u64 << 30), shrinking in any::<bool>(), trace in any_trace(false)) {
            let ceiling = switchover_target_ms(p.downtime_budget_ms);
            let budget = Policy { switchover: SwitchoverPolicy::Budget, ..p.clone() };
            let trace = if shrinking { trace } else { trace.into_iter().rev().collect() };
            let mut h = History { target_ms: initial_target_ms(&p), ..History::with_link_estimate(probe) };
            let mut hb = History { target_ms: initial_target_ms(&budget), ..History::with_link_estimate(probe) };
            prop_assert_eq!(h.target_ms, LEAST_TARGET_MS.min(ceiling));
            for s in &trace {
                let (d, next) = decide(&p, &h, s);
                let (db, nextb) = decide(&budget, &hb, s);
                prop_assert!(next.target_ms >= h.target_ms && next.target_ms <= ceiling);
                prop_assert_eq!(d.target_ms, next.target_ms);
                if next.target_ms > h.target_ms {
                    prop_assert!(!next.last_pass_progressed);
                }
                prop_assert_eq!(db.target_ms, ceiling);
                // The same action (abort reasons differ only in the target they name).
                match (&d.action, &db.action) {
                    (Action::Abort { .. }, Action::Abort { .. }) => {}
                    (a, b) => prop_assert_eq!(a, b),
                }
                prop_assert_eq!(next.step, nextb.step);
                h = next;
                hb = nextb;
            }
        }
    }
}
