//! How long moving a set of VMs takes under the migration queue's limits: the dry-run
//! estimate of an evacuation, and the ETA of one in progress. A pure function of the VMs
//! (bytes to send, dirty rate), the hosts' migration links and the limits.
//!
//! ```text
//!   waiting list (in order) ──start each one that fits all four limits──▶ running
//!   running: transferring ──remaining reaches 0──▶ finishing (fixed cost) ──▶ done
//!            (share of the links)                 (holds its slot, no link)
//!   any migration ends ─▶ shares recomputed, the waiting list is walked again
//! ```
//!
//! **The model** (a fluid simulation, event to event; nothing is sampled in time steps):
//!
//! - *Starting.* The same rule as the queue: walk the waiting list in order and start every
//!   VM that fits within all four limits (per host outgoing, per host incoming, per host
//!   pair, cluster) counting what runs already, including earlier starts of the same walk.
//!   The walk happens at the beginning and whenever a migration ends.
//! - *Sharing.* A transferring migration gets `min(source link / migrations transferring
//!   from the source, destination link / migrations transferring to the destination)`.
//!   This is the cap [`crate::link_share`] gives running migrations, so the estimate
//!   simulates what Ferry enforces (unlike max-min fairness, capacity a migration cannot
//!   use because of its other end is not handed to the others).
//! - *Dirtying.* Pre-copy re-sends the pages the guest dirties while it sends. With share
//!   `s` and dirty rate `d < s`, the `B` bytes of RAM shrink at `s - d` per second while
//!   the wire carries `s`: the copy takes `B / (s - d)` seconds and sends `B / (1 - d/s)`
//!   bytes, the sum of the geometric series `B + B(d/s) + B(d/s)^2 + ...` of passes each
//!   re-sending what the previous one let the guest dirty. When the share changes (others
//!   start or end) the same two rates hold piecewise: what is left shrinks at `s(t) - d`,
//!   the bytes sent grow at `s(t)`.
//! - *Not converging.* A VM whose dirty rate is at least the whole of its link (its best
//!   share, alone on both ends) would never finish pre-copy: it is reported with
//!   `converges: false`, the reason, and timed as if it did not dirty (such a VM needs
//!   throttling or post-copy, whose cost the estimate cannot know). A VM whose share is
//!   below its dirty rate only while it shares a link waits (it still sends) until its
//!   share grows. Should every transferring migration be stuck so at once, with nothing
//!   finishing that could change the shares, the stuck ones are flagged the same way from
//!   that instant: the simulation always ends.
//! - *Fixed cost.* Each migration also spends `fixed_s` (preparing the destination and the
//!   switch-over) holding its queue slot without using the link; it is modelled after the
//!   transfer, so the ETA of a migration already sending still counts it.
//! - *Unknown links.* A host whose capacity is unknown (or measured as 0) is taken to have
//!   `assumed_link_bytes_s`, and every VM it touches says so in its note.
//!
//! *Monotonic, mostly.* More bandwidth on every link never makes the total longer
//! (property-tested). More on one host alone can, slightly: starting in list order is
//! greedy, and a migration ending earlier can hand a slot to a VM that then holds up a
//! longer one (Graham's scheduling anomalies; a found case: 46.160 s instead of 46.156 s).
//! The queue has the same property; the estimate reports what the queue would do.
//!
//! The ETA ([`eta`]) runs the same simulation from now: migrations in flight start at 0
//! with what they have sent (`already_sent`), VMs already moved are left out. Since the
//! bytes sent include re-sent pages, what is left of the RAM is `B - sent x (1 - d/s)`
//! at the share `s` it has now (the inverse of the series above), kept within `[0, B]`.

use std::collections::HashMap;

/// The queue's limits on migrations running at once (the same the queue applies).
pub use ferry_api::MigrationLimits as Limits;

/// One VM to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EstimateVm {
    pub vm: String,
    pub source: String,
    pub destination: String,
    /// Bytes to send: min(guest RAM, QEMU's resident memory); pages never touched are
    /// sent as zero-page markers, which cost next to nothing.
    pub bytes: u64,
    pub dirty_bytes_per_s: u64,
}

/// A migration already running when the ETA is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub vm: EstimateVm,
    /// Bytes QEMU reports sent so far (re-sent pages included).
    pub already_sent: u64,
}

/// The costs the model does not take from the VMs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// Seconds per migration besides the transfer: preparing the destination, switch-over.
    pub fixed_s: f64,
    /// The link capacity assumed for a host whose capacity is unknown, bytes/s.
    pub assumed_link_bytes_s: u64,
}

impl Default for Costs {
    fn default() -> Self {
        Costs {
            fixed_s: 3.0,
            // 1 Gbit/s: the slowest link a migration network is likely to have.
            assumed_link_bytes_s: 125_000_000,
        }
    }
}

/// The estimate of one VM; times in seconds from the start of the estimate (now, for an ETA).
#[derive(Debug, Clone, PartialEq)]
pub struct VmEstimate {
    pub vm: String,
    pub start_s: f64,
    pub end_s: f64,
    /// What goes over the wire, re-sent pages included (and, for an ETA, what was sent
    /// before).
    pub bytes_sent_estimate: u64,
    /// False when pre-copy alone would not finish (see the module doc); the times then
    /// assume it did not dirty.
    pub converges: bool,
    /// Why it does not converge, or an assumption made for it (unknown link).
    pub note: Option<String>,
}

/// The estimate: the last end, and every VM in the order given (in-flight ones first).
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub total_s: f64,
    pub per_vm: Vec<VmEstimate>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EstimateError {
    #[error("the {0} limit is 0: no migration could ever start")]
    ZeroLimit(&'static str),
    #[error("the fixed cost per migration is {0} s; it must be a finite number, 0 or more")]
    FixedCost(f64),
    #[error("the link capacity assumed for unknown hosts is 0 bytes/s")]
    AssumedLink,
    /// Each step ends a phase of some migration, so this is a bug, reported rather than
    /// looping.
    #[error("the simulation did not end within {0} steps")]
    Runaway(usize),
}

/// The dry-run estimate of moving `vms`, started in this order as the limits allow.
/// `link` gives a host's migration link capacity in bytes/s.
pub fn estimate(
    vms: &[EstimateVm],
    link: &dyn Fn(&str) -> Option<u64>,
    limits: &Limits,
    costs: &Costs,
) -> Result<Estimate, EstimateError> {
    eta(&[], vms, link, limits, costs)
}

/// Seconds from now until an evacuation in progress ends (`total_s`), with each VM's
/// expected start and end: `running` are in flight (they count against the limits even
/// beyond them), `waiting` start in order as the limits allow; VMs already moved are
/// omitted by the caller.
pub fn eta(
    running: &[InFlight],
    waiting: &[EstimateVm],
    link: &dyn Fn(&str) -> Option<u64>,
    limits: &Limits,
    costs: &Costs,
) -> Result<Estimate, EstimateError> {
    check(limits, costs)?;
    let assumed = costs.assumed_link_bytes_s as f64;
    let cap = |host: &str| match link(host) {
        Some(c) if c > 0 => (c as f64, false),
        _ => (assumed, true),
    };
    let mut jobs: Vec<Job<'_>> = running
        .iter()
        .map(|f| (&f.vm, Some(f.already_sent)))
        .chain(waiting.iter().map(|v| (v, None)))
        .map(|(vm, sent)| Job::new(vm, sent, &cap, costs.fixed_s))
        .collect();
    // In-flight migrations: what is left of their RAM at the share they have now.
    let initial = shares(&jobs);
    for (j, s) in jobs.iter_mut().zip(initial) {
        if let (Some(sent), Some(s)) = (j.already_sent, s) {
            let left = j.bytes - sent as f64 * (1.0 - j.dirty / s);
            j.remaining = left.clamp(0.0, j.bytes);
        }
    }
    for j in &mut jobs {
        j.flag_if_hopeless();
    }
    simulate(&mut jobs, limits)?;
    let per_vm: Vec<VmEstimate> = jobs.iter().map(Job::report).collect();
    let total_s = per_vm.iter().map(|v| v.end_s).fold(0.0, f64::max);
    Ok(Estimate { total_s, per_vm })
}

fn check(limits: &Limits, costs: &Costs) -> Result<(), EstimateError> {
    for (name, v) in [
        ("per host outgoing", limits.per_host_outgoing),
        ("per host incoming", limits.per_host_incoming),
        ("per host pair", limits.per_pair),
        ("cluster", limits.cluster),
    ] {
        if v == 0 {
            return Err(EstimateError::ZeroLimit(name));
        }
    }
    if !costs.fixed_s.is_finite() || costs.fixed_s < 0.0 {
        return Err(EstimateError::FixedCost(costs.fixed_s));
    }
    if costs.assumed_link_bytes_s == 0 {
        return Err(EstimateError::AssumedLink);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Waiting,
    Transferring,
    Finishing,
    Done,
}

/// One migration during the simulation.
struct Job<'a> {
    vm: &'a EstimateVm,
    src_cap: f64,
    dst_cap: f64,
    bytes: f64,
    /// The dirty rate the model uses (0 once flagged as not converging).
    dirty: f64,
    /// RAM left to copy, bytes.
    remaining: f64,
    /// Fixed-cost seconds left.
    tail: f64,
    sent: f64,
    already_sent: Option<u64>,
    stage: Stage,
    start: f64,
    end: f64,
    converges: bool,
    notes: Vec<String>,
}

const MIB: f64 = (1 << 20) as f64;

impl<'a> Job<'a> {
    fn new(
        vm: &'a EstimateVm,
        already_sent: Option<u64>,
        cap: &dyn Fn(&str) -> (f64, bool),
        fixed_s: f64,
    ) -> Job<'a> {
        let (src_cap, src_assumed) = cap(&vm.source);
        let (dst_cap, dst_assumed) = cap(&vm.destination);
        let mut notes = Vec::new();
        for (host, assumed, c) in [
            (&vm.source, src_assumed, src_cap),
            (&vm.destination, dst_assumed, dst_cap),
        ] {
            if assumed {
                notes.push(format!(
                    "the link capacity of host {host} is unknown; assumed {:.0} MiB/s",
                    c / MIB
                ));
            }
        }
        let bytes = vm.bytes as f64;
        Job {
            vm,
            src_cap,
            dst_cap,
            bytes,
            dirty: vm.dirty_bytes_per_s as f64,
            remaining: bytes,
            tail: fixed_s,
            sent: already_sent.unwrap_or(0) as f64,
            already_sent,
            stage: match already_sent {
                Some(_) => Stage::Transferring,
                None => Stage::Waiting,
            },
            start: 0.0,
            end: 0.0,
            converges: true,
            notes,
        }
    }

    /// Dirtying at least the whole link: pre-copy could never finish, whatever the others do.
    fn flag_if_hopeless(&mut self) {
        let best = self.src_cap.min(self.dst_cap);
        if self.dirty >= best && self.remaining > 0.0 {
            self.notes.push(format!(
                "dirties {:.0} MiB/s, at least the {:.0} MiB/s its link carries: pre-copy \
                 alone would never finish; timed as if it did not dirty (it needs \
                 throttling or post-copy)",
                self.dirty / MIB,
                best / MIB
            ));
            self.not_converging();
        }
    }

    fn not_converging(&mut self) {
        self.dirty = 0.0;
        self.converges = false;
    }

    fn report(&self) -> VmEstimate {
        VmEstimate {
            vm: self.vm.vm.clone(),
            start_s: self.start,
            end_s: self.end,
            bytes_sent_estimate: self.sent.round() as u64,
            converges: self.converges,
            note: (!self.notes.is_empty()).then(|| self.notes.join("; ")),
        }
    }
}

/// Each transferring job's share of its links (None for the others).
fn shares(jobs: &[Job<'_>]) -> Vec<Option<f64>> {
    let mut out: HashMap<&str, u32> = HashMap::new();
    let mut inn: HashMap<&str, u32> = HashMap::new();
    for j in jobs.iter().filter(|j| j.stage == Stage::Transferring) {
        *out.entry(j.vm.source.as_str()).or_default() += 1;
        *inn.entry(j.vm.destination.as_str()).or_default() += 1;
    }
    jobs.iter()
        .map(|j| {
            (j.stage == Stage::Transferring).then(|| {
                let o = out[j.vm.source.as_str()] as f64;
                let i = inn[j.vm.destination.as_str()] as f64;
                (j.src_cap / o).min(j.dst_cap / i)
            })
        })
        .collect()
}

/// What runs per host, per pair and in all, for the queue's rule.
#[derive(Default)]
struct Occupancy<'a> {
    out: HashMap<&'a str, u32>,
    inn: HashMap<&'a str, u32>,
    pair: HashMap<(&'a str, &'a str), u32>,
    all: u32,
}

impl<'a> Occupancy<'a> {
    fn add(&mut self, vm: &'a EstimateVm) {
        *self.out.entry(&vm.source).or_default() += 1;
        *self.inn.entry(&vm.destination).or_default() += 1;
        *self
            .pair
            .entry(pair_key(&vm.source, &vm.destination))
            .or_default() += 1;
        self.all += 1;
    }

    fn fits(&self, l: &Limits, vm: &EstimateVm) -> bool {
        let get = |m: &HashMap<&str, u32>, k: &str| m.get(k).copied().unwrap_or(0);
        get(&self.out, &vm.source) < l.per_host_outgoing
            && get(&self.inn, &vm.destination) < l.per_host_incoming
            && self
                .pair
                .get(&pair_key(&vm.source, &vm.destination))
                .copied()
                .unwrap_or(0)
                < l.per_pair
            && self.all < l.cluster
    }
}

/// A pair of hosts in either direction (the queue's pair limit counts both ways).
fn pair_key<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Runs the jobs to their ends, event to event.
fn simulate(jobs: &mut [Job<'_>], limits: &Limits) -> Result<(), EstimateError> {
    // Every step starts or ends a phase, or flags the stuck: a few per job at most.
    let max_steps = 4 * jobs.len() + 8;
    let mut t = 0.0_f64;
    for _ in 0..max_steps {
        start_what_fits(jobs, limits, t);
        if jobs.iter().all(|j| j.stage == Stage::Done) {
            return Ok(());
        }
        let shares = shares(jobs);
        let finishing = jobs.iter().any(|j| j.stage == Stage::Finishing);
        let stuck = |j: &Job<'_>, s: Option<f64>| s.is_some_and(|s| s <= j.dirty);
        if !finishing
            && jobs
                .iter()
                .zip(&shares)
                .all(|(j, &s)| s.is_none() || stuck(j, s))
        {
            for (j, &s) in jobs.iter_mut().zip(&shares) {
                if let Some(s) = s.filter(|_| stuck(j, s)) {
                    j.notes.push(format!(
                        "cannot converge while it shares its links: its {:.0} MiB/s share is \
                         below its {:.0} MiB/s dirty rate; timed from {t:.1} s as if it did \
                         not dirty",
                        s / MIB,
                        j.dirty / MIB
                    ));
                    j.not_converging();
                }
            }
        }
        // Seconds until each job's next phase change (infinite: none in sight).
        let until: Vec<f64> = jobs
            .iter()
            .zip(&shares)
            .map(|(j, s)| match (j.stage, s) {
                (Stage::Transferring, Some(s)) if *s > j.dirty => j.remaining / (s - j.dirty),
                (Stage::Finishing, _) => j.tail,
                _ => f64::INFINITY,
            })
            .collect();
        let dt = until.iter().copied().fold(f64::INFINITY, f64::min);
        if !dt.is_finite() {
            return Err(EstimateError::Runaway(max_steps));
        }
        // Ends within rounding of the first one end together, so no step is spent on a
        // residue of a few bytes.
        let slack = dt.max(1.0) * 1e-12;
        t += dt;
        for ((j, s), u) in jobs.iter_mut().zip(&shares).zip(&until) {
            let ends = *u <= dt + slack;
            match (j.stage, s) {
                (Stage::Transferring, Some(s)) => {
                    j.sent += s * dt;
                    if ends {
                        j.remaining = 0.0;
                        j.stage = Stage::Finishing;
                    } else if *s > j.dirty {
                        j.remaining -= (s - j.dirty) * dt;
                    }
                }
                (Stage::Finishing, _) => {
                    j.tail = if ends { 0.0 } else { j.tail - dt };
                }
                _ => {}
            }
            if j.stage == Stage::Finishing && j.tail <= 0.0 {
                j.stage = Stage::Done;
                j.end = t;
            }
        }
    }
    Err(EstimateError::Runaway(max_steps))
}

/// The queue's rule: walk the waiting jobs in order, start each one that fits. A VM with
/// nothing to send and no fixed cost ends at once and frees its slot: walk again then.
fn start_what_fits(jobs: &mut [Job<'_>], limits: &Limits, t: f64) {
    loop {
        let mut occ = Occupancy::default();
        for j in jobs.iter() {
            if matches!(j.stage, Stage::Transferring | Stage::Finishing) {
                occ.add(j.vm);
            }
        }
        for j in jobs.iter_mut() {
            if j.stage == Stage::Waiting && occ.fits(limits, j.vm) {
                occ.add(j.vm);
                j.start = t;
                j.stage = Stage::Transferring;
            }
        }
        let mut freed = false;
        for j in jobs.iter_mut() {
            if j.stage == Stage::Transferring && j.remaining <= 0.0 {
                j.stage = Stage::Finishing;
            }
            if j.stage == Stage::Finishing && j.tail <= 0.0 {
                j.stage = Stage::Done;
                j.end = t;
                freed = true;
            }
        }
        if !freed {
            return;
        }
    }
}

#[cfg(test)]
#[path = "estimate_tests.rs"]
mod tests;
