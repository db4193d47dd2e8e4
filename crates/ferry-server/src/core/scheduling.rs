//! Scheduled operations: `ferry schedule add|list|remove`, and the loop that fires them.
//!
//! ```text
//!  loop (wakes at the next fire time, on add/remove, at least every 5 s)
//!    └─ decide (crate::schedule, pure) ─┬─ Wait
//!                                       ├─ Skip ─▶ record_skip (schedule.skip)
//!                                       └─ Fire ─▶ record_fire: schedule moved on + run's
//!                                                  Operation(running) + operation.start,
//!                                                  one synced transaction
//!                                                    └─▶ act, as `schedule:NAME`, through
//!                                                        the API's own core functions
//!                                                        (schedule.fire: ok / error)
//!                                                          └─▶ follow what it started
//!                                                              (operation.finish)
//! ```
//!
//! The run is on disk before anything is asked of any host, and recording it moves the
//! schedule past its fire time: a restarted server never acts on it again. A run the
//! previous server recorded but had not acted on (or not saved what it started) is
//! looked for — the migration carrying its id, the evacuation or balancing moves made by
//! its actor since — and followed if found; otherwise it ends `failed`, interrupted, and
//! is not repeated. Fire times that passed while the server was down are handled by each
//! schedule's rule (`run-once` or `skip`), decided when the server starts.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_api::*;
use uuid::Uuid;

use super::Server;
use crate::schedule::{decide, sleep_for, Decision, Timing};
use crate::store::NewEvent;

/// The longest the loop sleeps without looking, seconds.
const LOOP_TICK_S: i64 = 5;
/// How often a run's follower looks at what it started.
const FOLLOW_TICK: Duration = Duration::from_secs(1);

fn actor_of(schedule: &str) -> String {
    format!("schedule:{schedule}")
}

fn short(id: Uuid) -> String {
    id.to_string()[..8].to_string()
}

fn secs(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Server {
    /// `ferry schedule add`: checked whole (name, timing, that its VM and host exist)
    /// before anything is written.
    pub(super) fn add_schedule(
        &self,
        actor: &str,
        req: &ScheduleRequest,
    ) -> Result<Schedule, ApiError> {
        validate_name("schedule name", &req.name)?;
        req.task.validate()?;
        let timing = Timing::parse(&req.when).map_err(ApiError::bad_request)?;
        let now = Utc::now();
        if let ScheduleWhen::At(at) = req.when {
            if at <= now {
                return Err(ApiError::bad_request(format!(
                    "{} is in the past (it is {} now); give a later time",
                    secs(&at),
                    secs(&now)
                )));
            }
        }
        let next = timing.next_after(now).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{} never fires (no such date in the next thousands of years)",
                req.when
            ))
        })?;
        match &req.task {
            ScheduleTask::Migrate { vm, to } => {
                self.find_vm(vm)?;
                if let Some(to) = to {
                    self.host(to)?;
                }
            }
            ScheduleTask::MaintenanceEnter { host } | ScheduleTask::MaintenanceExit { host } => {
                self.host(host)?;
            }
            ScheduleTask::Balance => {}
        }
        let mut s = Schedule {
            name: req.name.clone(),
            when: req.when.clone(),
            task: req.task.clone(),
            missed: req.missed,
            actor: actor.to_string(),
            created_at: now,
            last_fire: None,
            last_operation: None,
            skipped: None,
            runs: 0,
            next_fire: None,
            last_run: None,
        };
        if !self.store.add_schedule(&s)? {
            return Err(ApiError::conflict(format!(
                "a schedule named '{}' exists; remove it first (`ferry schedule remove {}`)",
                req.name, req.name
            )));
        }
        self.schedule_wake.notify_one();
        s.next_fire = Some(next);
        Ok(s)
    }

    /// `ferry schedule remove NAME`: it fires no more; its runs stay on the record.
    pub(super) fn remove_schedule(&self, name: &str) -> Result<String, ApiError> {
        validate_name("schedule name", name)?;
        if !self.store.remove_schedule(name)? {
            return Err(ApiError::not_found(format!(
                "no schedule named '{name}' (see `ferry schedule list`)"
            )));
        }
        self.schedule_wake.notify_one();
        Ok(format!("schedule {name}"))
    }

    /// Every schedule with its next fire time and its latest run's outcome.
    pub(super) fn schedules(&self) -> Result<Vec<Schedule>, ApiError> {
        let mut list = self.store.schedules()?;
        for s in list.iter_mut() {
            let since = s.last_fire.unwrap_or(s.created_at);
            s.next_fire = Timing::parse(&s.when)
                .ok()
                .and_then(|t| t.next_after(since));
            if let Some(id) = s.last_operation {
                if let Some(op) = self.store.operation(id)? {
                    if let Some(run) = &op.run {
                        s.last_run = Some(ScheduleRunSummary {
                            operation: op.id,
                            fire_at: run.fire_at,
                            started_at: op.created_at,
                            state: op.state,
                            outcome: run.outcome.clone(),
                        });
                    }
                }
            }
        }
        Ok(list)
    }

    /// The scheduler: fire times that passed while the server was down are decided by
    /// each schedule's rule, then the loop wakes for each next fire time. It first waits
    /// (at most the host timeout) for the hosts to report again, so a run due at start
    /// does not find them all disconnected.
    pub fn spawn_scheduler(self: &Arc<Self>) {
        let server = self.clone();
        let started = Utc::now();
        tokio::spawn(async move {
            server.wait_for_hosts(started).await;
            loop {
                let next = match server.scheduler_pass(started).await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!("scheduler: {}", e.message);
                        None
                    }
                };
                let nap = sleep_for(next, Utc::now(), chrono::Duration::seconds(LOOP_TICK_S))
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                tokio::select! {
                    () = tokio::time::sleep(nap) => {}
                    () = server.schedule_wake.notified() => {}
                }
            }
        });
    }

    async fn wait_for_hosts(&self, started: DateTime<Utc>) {
        let deadline = tokio::time::Instant::now() + self.config.host_timeout;
        while tokio::time::Instant::now() < deadline {
            match self.store.hosts() {
                Ok(hosts) if hosts.iter().all(|h| h.last_seen >= started) => return,
                Err(e) => tracing::warn!("scheduler: {e}"),
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One look at every schedule; the earliest next fire time (now, if one just fired
    /// or skipped: it is looked at again at once).
    async fn scheduler_pass(
        self: &Arc<Self>,
        started: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ApiError> {
        let now = Utc::now();
        let mut earliest: Option<DateTime<Utc>> = None;
        let mut soonest = |t: DateTime<Utc>| {
            earliest = Some(earliest.map_or(t, |e: DateTime<Utc>| e.min(t)));
        };
        for s in self.store.schedules()? {
            let timing = match Timing::parse(&s.when) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(schedule = %s.name, "cannot read its timing: {e}");
                    continue;
                }
            };
            let since = s.last_fire.unwrap_or(s.created_at);
            match decide(&timing, s.missed, since, started, now) {
                Decision::Wait(Some(next)) => soonest(next),
                Decision::Wait(None) => {}
                // Recorded: look at it again at once (a fire time may be due after the
                // skipped ones). Not recorded (the store failed): the next tick tries again,
                // and the other schedules are still looked at.
                Decision::Skip {
                    fire_at,
                    count,
                    next,
                } => match self.skip(&s, fire_at, count, next) {
                    Ok(true) => soonest(now),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(schedule = %s.name, "not skipped: {}", e.message),
                },
                Decision::Fire { fire_at, missed } => match self.fire(&s, fire_at, missed) {
                    Ok(Some(id)) => {
                        let server = self.clone();
                        tokio::spawn(async move { server.act_and_follow(id).await });
                        soonest(now);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(schedule = %s.name, "not fired: {}", e.message),
                },
            }
        }
        Ok(earliest)
    }

    /// Records that the fire times up to `fire_at` are skipped; false if the schedule
    /// changed meanwhile.
    fn skip(
        &self,
        s: &Schedule,
        fire_at: DateTime<Utc>,
        count: u64,
        next: Option<DateTime<Utc>>,
    ) -> Result<bool, ApiError> {
        let now = Utc::now();
        let mut after = s.clone();
        after.last_fire = Some(fire_at);
        after.skipped = Some(SkippedFires {
            fire_at,
            count,
            decided_at: now,
        });
        let mut e = NewEvent::new(
            actor_of(&s.name),
            EventKind::ScheduleSkip,
            format!(
                "schedule {} skipped {count} fire time(s) missed while the server was down \
                 (the latest {}; rule: skip); next: {}",
                s.name,
                secs(&fire_at),
                next.map(|n| secs(&n)).unwrap_or_else(|| "none".into())
            ),
        );
        e.outcome = Some(Outcome::Info);
        e.host = s.task.host().map(str::to_string);
        e.data = serde_json::json!({"schedule": s.name, "fire_at": fire_at, "count": count,
            "next": next});
        let recorded = self.store.record_skip(s.last_fire, &after, &e)?;
        if !recorded {
            tracing::info!(schedule = %s.name, "changed meanwhile; looked at again");
        }
        Ok(recorded)
    }

    /// Records a run for `fire_at` (the schedule moved on, the operation, its start
    /// event), durably, before anything acts. None if the schedule changed meanwhile
    /// (removed, or already moved on).
    fn fire(
        &self,
        s: &Schedule,
        fire_at: DateTime<Utc>,
        missed: u64,
    ) -> Result<Option<Uuid>, ApiError> {
        let now = Utc::now();
        let op = Operation {
            id: Uuid::new_v4(),
            kind: OperationKind::Scheduled,
            host: s.task.host().unwrap_or_default().to_string(),
            state: OperationState::Running,
            actor: actor_of(&s.name),
            created_at: now,
            updated_at: now,
            finished_at: None,
            items: Vec::new(),
            estimate_s: None,
            assumptions: Vec::new(),
            revision: 0,
            eta_s: None,
            run: Some(ScheduledRun {
                schedule: s.name.clone(),
                task: s.task.clone(),
                fire_at,
                missed,
                acted: false,
                migrations: Vec::new(),
                operations: Vec::new(),
                recommendations: Vec::new(),
                refused: Vec::new(),
                outcome: None,
            }),
        };
        let mut after = s.clone();
        after.last_fire = Some(fire_at);
        after.last_operation = Some(op.id);
        after.runs += 1;
        let late = if missed > 0 {
            format!(
                ", at server start: {missed} fire time(s) passed while it was down, run once \
                 (rule: run-once)"
            )
        } else {
            String::new()
        };
        let e = run_event(
            &op,
            EventKind::OperationStart,
            Outcome::Info,
            format!(
                "scheduled run {} of schedule {} for {}{late}: {}",
                op.id,
                s.name,
                secs(&fire_at),
                s.task
            ),
        );
        if !self.store.record_fire(s.last_fire, &after, &op, &[e])? {
            tracing::info!(schedule = %s.name, "changed meanwhile; not fired");
            return Ok(None);
        }
        tracing::info!(schedule = %s.name, run = %op.id, fire_at = %fire_at, "schedule fires");
        Ok(Some(op.id))
    }

    /// Carries a recorded run out, then follows what it started to its end.
    async fn act_and_follow(self: Arc<Self>, id: Uuid) {
        if let Err(e) = self.act(id).await {
            // Its outcome could not be saved: settled as an interrupted run is (what it
            // started is looked for), never acted on again.
            tracing::warn!(run = %id, "scheduled run: {}", e.message);
            if let Err(e) = self.settle_interrupted(id) {
                tracing::warn!(run = %id, "scheduled run: {}", e.message);
            }
        }
        self.follow_run(id).await;
    }

    /// Does what the run's schedule says, as `schedule:NAME`, through the same core
    /// functions as the API; saves what it started (or why it could not) with the
    /// `schedule.fire` event.
    async fn act(self: &Arc<Self>, id: Uuid) -> Result<(), ApiError> {
        let op = self.run_operation(id)?;
        let Some(run) = op.run.clone().filter(|r| !r.acted) else {
            return Ok(());
        };
        let actor = op.actor.clone();
        let mut started = run.clone();
        started.acted = true;
        let mut event_vm = None;
        let mut event_migration = None;
        // What it did, and whether that already ends the run.
        let result: Result<(String, bool), ApiError> = match &run.task {
            ScheduleTask::Migrate { vm, to } => {
                let mut req = MigrateRequest {
                    vm: vm.clone(),
                    to: to.clone(),
                    options: MigrationOptions::default(),
                    priority: None,
                };
                event_vm = Some(vm.clone());
                match self.place_destination(&actor, &mut req) {
                    Ok(()) => self
                        .start_migration(&actor, req, Some(op.id))
                        .await
                        .map(|m| {
                            started.migrations.push(m.id);
                            event_migration = Some(m.id);
                            (
                                format!(
                                    "migration {} of VM {} from {} to {} requested ({})",
                                    m.id, m.vm, m.source, m.destination, m.phase
                                ),
                                false,
                            )
                        }),
                    Err(e) => Err(e),
                }
            }
            ScheduleTask::MaintenanceEnter { host } => self
                .enter_maintenance(&actor, host, &EnterMaintenanceRequest { dry_run: false })
                .await
                .and_then(|plan| {
                    let evac = plan
                        .operation
                        .ok_or_else(|| ApiError::internal("the evacuation started no operation"))?;
                    started.operations.push(evac.id);
                    Ok((
                        format!(
                            "host {host} in maintenance; evacuation {} of {} VM(s) started",
                            evac.id,
                            evac.items.len()
                        ),
                        false,
                    ))
                }),
            ScheduleTask::MaintenanceExit { host } => self
                .exit_maintenance(host)
                .map(|_| (format!("host {host} takes VMs again"), true)),
            ScheduleTask::Balance => self.balance_run(&actor, None).await.map(|r| {
                started.migrations = r.migrations.clone();
                started.recommendations = r.recommendations.iter().map(|r| r.id).collect();
                started.refused = r.refused.clone();
                let mut what = format!(
                    "balancing run ({}): imbalance {:.3} -> {:.3}; {} migration(s) requested, \
                     {} recommendation(s)",
                    r.plan.settings.mode,
                    r.plan.imbalance_before,
                    r.plan.imbalance_after,
                    r.migrations.len(),
                    r.recommendations.len()
                );
                if !r.refused.is_empty() {
                    what.push_str(&format!("; refused: {}", r.refused.join("; ")));
                }
                (what, r.migrations.is_empty())
            }),
        };
        let mut next = op.clone();
        let mut events = Vec::new();
        let (outcome, message) = match result {
            Ok((what, done)) => {
                if done {
                    // Nothing to follow: a balancing run whose moves were all refused
                    // did not do its job.
                    next.state = if started.refused.is_empty() {
                        OperationState::Succeeded
                    } else {
                        OperationState::Failed
                    };
                    next.finished_at = Some(Utc::now());
                }
                started.outcome = Some(what.clone());
                (Outcome::Ok, what)
            }
            Err(e) => {
                next.state = OperationState::Failed;
                next.finished_at = Some(Utc::now());
                let why = format!("refused: {}", e.message);
                started.outcome = Some(why.clone());
                (Outcome::Error, why)
            }
        };
        let mut e = run_event(
            &next,
            EventKind::ScheduleFire,
            outcome,
            format!(
                "schedule {} fired (run {}, for {}): {message}",
                run.schedule,
                short(op.id),
                secs(&run.fire_at)
            ),
        );
        e.vm = event_vm;
        e.migration = event_migration;
        next.run = Some(started);
        e.data = serde_json::json!({"operation": op.id, "run": &next.run});
        events.push(e);
        if next.state.is_finished() {
            events.push(finish_event(&next));
        }
        next.updated_at = Utc::now();
        if !self.store.save_operation(&next, &events)? {
            return Err(ApiError::conflict(format!(
                "run {id} changed while it acted; what it started is found again by its \
                 follower"
            )));
        }
        Ok(())
    }

    fn run_operation(&self, id: Uuid) -> Result<Operation, ApiError> {
        self.store
            .operation(id)?
            .ok_or_else(|| ApiError::not_found(format!("no operation with id {id}")))
    }

    /// At server start, for a run the last server left unfinished: one it had not
    /// acted on is looked into (what it may have started), then followed.
    pub fn spawn_run_follower(self: &Arc<Self>, id: Uuid) {
        let server = self.clone();
        tokio::spawn(async move {
            if let Err(e) = server.settle_interrupted(id) {
                tracing::warn!(run = %id, "interrupted scheduled run: {}", e.message);
            }
            server.follow_run(id).await;
        });
    }

    /// A run recorded but not (known to be) acted on when the server stopped: never acted
    /// on again. What it started is looked for; found, it is followed, else the run
    /// fails as interrupted.
    fn settle_interrupted(&self, id: Uuid) -> Result<(), ApiError> {
        let op = self.run_operation(id)?;
        let Some(mut run) = op.run.clone().filter(|r| !r.acted) else {
            return Ok(());
        };
        let since = op.created_at;
        match &run.task {
            ScheduleTask::Migrate { .. } => {
                run.migrations = self.store.migrations_of(id)?.iter().map(|m| m.id).collect();
            }
            ScheduleTask::MaintenanceEnter { host } => {
                run.operations = self
                    .store
                    .operations(100)?
                    .iter()
                    .filter(|o| {
                        o.kind == OperationKind::Evacuation
                            && o.host == *host
                            && o.actor == op.actor
                            && o.created_at >= since
                    })
                    .map(|o| o.id)
                    .collect();
            }
            ScheduleTask::Balance => {
                let moves = self.store.events(&EventQuery {
                    kind: Some(EventKind::BalanceMove.as_str().to_string()),
                    limit: Some(1000),
                    ..Default::default()
                })?;
                run.migrations = moves
                    .iter()
                    .filter(|e| e.actor == op.actor && e.at >= since)
                    .filter_map(|e| e.migration)
                    .collect();
            }
            ScheduleTask::MaintenanceExit { .. } => {}
        }
        let found = !run.migrations.is_empty() || !run.operations.is_empty();
        run.acted = true;
        let mut next = op.clone();
        let (outcome, message) = if found {
            run.outcome = Some(format!(
                "the server stopped while this run acted; found what it started: {} \
                 migration(s), {} operation(s)",
                run.migrations.len(),
                run.operations.len()
            ));
            (Outcome::Ok, run.outcome.clone().unwrap_or_default())
        } else {
            next.state = OperationState::Failed;
            next.finished_at = Some(Utc::now());
            let why = format!(
                "interrupted: the server stopped before this run was carried out; it is not \
                 repeated ({} now)",
                self.task_state(&run.task)
            );
            run.outcome = Some(why.clone());
            (Outcome::Error, why)
        };
        let mut e = run_event(
            &next,
            EventKind::ScheduleFire,
            outcome,
            format!(
                "schedule {} (run {}, for {}): {message}",
                run.schedule,
                short(id),
                secs(&run.fire_at)
            ),
        );
        next.run = Some(run);
        e.data = serde_json::json!({"operation": id, "run": &next.run});
        let mut events = vec![e];
        if next.state.is_finished() {
            events.push(finish_event(&next));
        }
        next.updated_at = Utc::now();
        self.store.save_operation(&next, &events)?;
        Ok(())
    }

    /// The facts an interrupted run's report names (what the task was about, now).
    fn task_state(&self, task: &ScheduleTask) -> String {
        match task {
            ScheduleTask::Migrate { vm, .. } => match self.store.vm(vm) {
                Ok(Some(v)) => format!("VM {vm} is {} on {}", v.state, v.host),
                _ => format!("VM {vm} is not known"),
            },
            ScheduleTask::MaintenanceEnter { host } | ScheduleTask::MaintenanceExit { host } => {
                match self.store.host(host) {
                    Ok(Some(h)) if h.maintenance => format!("host {host} is in maintenance"),
                    Ok(Some(_)) => format!("host {host} is in service"),
                    _ => format!("host {host} is not known"),
                }
            }
            ScheduleTask::Balance => "see `ferry events --kind balance`".to_string(),
        }
    }

    /// Follows what a run started until it ends; the run ends with it.
    async fn follow_run(&self, id: Uuid) {
        loop {
            match self.follow_step(id) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(run = %id, "following a scheduled run: {}", e.message),
            }
            tokio::time::sleep(FOLLOW_TICK).await;
        }
    }

    /// One look; true once the run is finished.
    fn follow_step(&self, id: Uuid) -> Result<bool, ApiError> {
        let Some(mut op) = self.store.operation(id)? else {
            return Ok(true);
        };
        if op.state.is_finished() {
            return Ok(true);
        }
        let Some(mut run) = op.run.clone() else {
            return Ok(true);
        };
        if !run.acted {
            return Ok(false);
        }
        let mut done = 0;
        let mut moved = 0;
        let mut problems: Vec<String> = run
            .refused
            .iter()
            .map(|r| format!("not requested: {r}"))
            .collect();
        for mid in &run.migrations {
            let Some(m) = self.store.migration(*mid)? else {
                done += 1;
                problems.push(format!("migration {mid} is not on record"));
                continue;
            };
            match m.phase {
                Phase::Completed => {
                    done += 1;
                    moved += 1;
                }
                Phase::Failed | Phase::Cancelled => {
                    done += 1;
                    problems.push(format!(
                        "migration {} of VM {} {}: {}",
                        m.id,
                        m.vm,
                        m.phase,
                        m.error.as_deref().unwrap_or("no reason recorded")
                    ));
                }
                Phase::NeedsAttention => {
                    done += 1;
                    problems.push(format!(
                        "migration {} of VM {} needs an operator (`ferry migration resolve {}`)",
                        m.id, m.vm, m.id
                    ));
                }
                _ => {}
            }
        }
        let mut evac_states = Vec::new();
        for oid in &run.operations {
            match self.store.operation(*oid)? {
                Some(o) if o.state.is_finished() => evac_states.push(o.state),
                Some(_) => return Ok(false),
                None => evac_states.push(OperationState::Failed),
            }
        }
        if done < run.migrations.len() {
            return Ok(false);
        }
        // Everything it started has ended.
        op.state = if let Some(s) = evac_states.first() {
            *s
        } else if problems.is_empty() {
            OperationState::Succeeded
        } else if moved > 0 {
            OperationState::Incomplete
        } else {
            OperationState::Failed
        };
        let what = match (&run.task, evac_states.first()) {
            (_, Some(s)) => format!(
                "evacuation {} {s}",
                run.operations
                    .first()
                    .map(|o| o.to_string())
                    .unwrap_or_default()
            ),
            (ScheduleTask::Migrate { vm, .. }, None) if problems.is_empty() => {
                let to = self
                    .store
                    .vm(vm)?
                    .map(|v| v.host)
                    .unwrap_or_else(|| "?".into());
                format!("VM {vm} moved to {to}")
            }
            _ => format!("{moved} of {} migration(s) completed", run.migrations.len()),
        };
        run.outcome = Some(if problems.is_empty() {
            what
        } else {
            format!("{what}; {}", problems.join("; "))
        });
        op.run = Some(run);
        op.finished_at = Some(Utc::now());
        op.updated_at = Utc::now();
        let events = [finish_event(&op)];
        // A concurrent save (none is expected) means: look again next time.
        Ok(self.store.save_operation(&op, &events)?)
    }
}

/// An event of a run: its actor, its operation id in the data.
fn run_event(op: &Operation, kind: EventKind, outcome: Outcome, message: String) -> NewEvent {
    NewEvent {
        actor: op.actor.clone(),
        kind,
        vm: match op.run.as_ref().map(|r| &r.task) {
            Some(ScheduleTask::Migrate { vm, .. }) => Some(vm.clone()),
            _ => None,
        },
        host: (!op.host.is_empty()).then(|| op.host.clone()),
        migration: None,
        outcome: Some(outcome),
        message,
        data: serde_json::json!({"operation": op.id, "run": &op.run}),
    }
}

/// `operation.finish` for a run, with its outcome.
fn finish_event(op: &Operation) -> NewEvent {
    let run = op.run.as_ref();
    run_event(
        op,
        EventKind::OperationFinish,
        if op.state == OperationState::Succeeded {
            Outcome::Ok
        } else {
            Outcome::Error
        },
        format!(
            "scheduled run {} of schedule {} {}: {}",
            op.id,
            run.map(|r| r.schedule.as_str()).unwrap_or("?"),
            op.state,
            run.and_then(|r| r.outcome.as_deref())
                .unwrap_or("no outcome recorded")
        ),
    )
}
