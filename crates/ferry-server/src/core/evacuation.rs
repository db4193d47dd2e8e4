//! Maintenance mode: `enter` marks a host, plans where each of its VMs goes
//! ([`crate::placement::plan_evacuation`], counting what the plan itself sends to each
//! host) and records an [`Operation`]; a driver then requests each VM's migration through
//! the queue and follows them to the end. `cancel` drops what waits and rolls back what
//! runs; `exit` returns the host to service.
//!
//! ```text
//!  enter ─▶ mark host ─▶ plan ─▶ Operation(running) ──driver, every second──┐
//!                                   │  Planned ─request─▶ Queued ─▶ Moving ─▶ Moved
//!                                   │     ▲ └─ refused ─▶ CouldNotMove    │
//!                                   │     └── failed, rolled back (attempt < 3)
//!                                   │                  failed, third attempt ─▶ CouldNotMove
//!                                   └─ cancel ─▶ cancelling: queued dropped, running rolled
//!                                                back (post-copy / switching finish: Moved)
//!  every item finished ─▶ succeeded | incomplete (VMs named) | cancelled
//! ```
//!
//! The record is the only state: a restarted server finds unfinished operations and runs
//! their drivers again. A driver that requested a migration and stopped before saving its
//! id finds it again by the operation id the migration carries, so nothing is requested
//! twice (the VM's claim would refuse a second one anyway).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ferry_api::*;
use uuid::Uuid;

use super::Server;
use crate::admission::Demand;
use crate::placement::{plan_evacuation, Move};
use crate::store::NewEvent;

/// How often a driver looks at its operation's migrations.
const DRIVER_TICK: Duration = Duration::from_secs(1);
/// A VM whose migration failed and rolled back is asked again, up to this many attempts.
const MAX_ATTEMPTS: usize = 3;

impl Server {
    /// `ferry host maintenance enter HOST [--dry-run]`.
    pub(super) async fn enter_maintenance(
        self: &Arc<Self>,
        actor: &str,
        host: &str,
        req: &EnterMaintenanceRequest,
    ) -> Result<EvacuationPlan, ApiError> {
        let h = self.host(host)?;
        if let Some(op) = self.running_operation(host)? {
            return Err(ApiError::conflict(format!(
                "host {host} is already being evacuated by operation {} ({}); follow it with \
                 `ferry host maintenance status {host}` or cancel it",
                op.id, op.state
            )));
        }
        if !req.dry_run && !h.maintenance {
            // Marked first: from now on nothing new is placed or migrated there.
            self.store.set_maintenance(host, true)?;
        }
        let items = self.plan_items(host, &[])?;
        let mut plan = self.estimate_plan(host, items).await;
        if req.dry_run {
            return Ok(plan);
        }
        let now = Utc::now();
        let mut op = Operation {
            id: Uuid::new_v4(),
            kind: OperationKind::Evacuation,
            host: host.to_string(),
            state: OperationState::Running,
            actor: actor.to_string(),
            created_at: now,
            updated_at: now,
            finished_at: None,
            items: plan.items.clone(),
            estimate_s: Some(plan.estimate_s),
            assumptions: plan.assumptions.clone(),
            revision: 0,
            eta_s: None,
            run: None,
        };
        let summary = format!(
            "evacuation {} of host {host} started: {} VM(s), {} placed, {} with nowhere to go; \
             estimate {:.0} s",
            op.id,
            op.items.len(),
            op.items.iter().filter(|i| i.destination.is_some()).count(),
            op.count(ItemState::CouldNotMove),
            plan.estimate_s
        );
        self.store.insert_operation(
            &op,
            &op_event(&op, EventKind::OperationStart, Outcome::Ok, summary)
                .with_data(serde_json::json!({"operation": op.id, "plan": &plan.items,
                    "estimate_s": plan.estimate_s, "assumptions": &plan.assumptions})),
        )?;
        // Each placement decision on the record, with its runner-up.
        for e in decision_events(&op, &op.items) {
            self.event(e);
        }
        self.spawn_operation(op.id);
        op = self.operation(op.id)?;
        plan.operation = Some(op);
        Ok(plan)
    }

    /// `ferry host maintenance cancel HOST`: waiting migrations are dropped at once,
    /// running ones are rolled back by the driver; what moved stays where it went.
    pub(super) fn cancel_maintenance(
        &self,
        actor: &str,
        host: &str,
    ) -> Result<Operation, ApiError> {
        validate_name("host name", host)?;
        // The driver may save between our read and our write: read again and retry.
        let mut op = None;
        for _ in 0..20 {
            let Some(mut cur) = self.running_operation(host)? else {
                return Err(ApiError::conflict(format!(
                    "host {host} has no evacuation running (see `ferry operation list`)"
                )));
            };
            if cur.state != OperationState::Running {
                op = Some(cur);
                break;
            }
            cur.state = OperationState::Cancelling;
            cur.updated_at = Utc::now();
            let msg = format!(
                "evacuation {} of host {host} cancelled by {actor}: waiting migrations are \
                 dropped, running ones rolled back, moved VMs stay",
                cur.id
            );
            let saved = self.store.save_operation(
                &cur,
                &[op_event(&cur, EventKind::OperationCancel, Outcome::Ok, msg)
                    .with_data(serde_json::json!({"operation": cur.id}))],
            )?;
            if saved {
                op = Some(cur);
                break;
            }
        }
        let op = op.ok_or_else(|| {
            ApiError::conflict("the evacuation changed too often to cancel; try again")
        })?;
        // Drop what waits right away (the driver rolls back what runs).
        for item in &op.items {
            if let Some(id) = item.migration {
                self.cancel_queued(id, actor)?;
            }
        }
        self.operation(op.id)
    }

    /// `ferry host maintenance exit HOST`: the host takes VMs again.
    pub(super) fn exit_maintenance(&self, host: &str) -> Result<Host, ApiError> {
        validate_name("host name", host)?;
        if let Some(op) = self.running_operation(host)? {
            return Err(ApiError::conflict(format!(
                "host {host} is being evacuated (operation {}, {}); cancel it first with \
                 `ferry host maintenance cancel {host}`",
                op.id, op.state
            )));
        }
        if !self.store.set_maintenance(host, false)? {
            return Err(ApiError::not_found(format!("no host named '{host}'")));
        }
        self.host(host)
    }

    /// The evacuation of `host` that has not finished, if any.
    fn running_operation(&self, host: &str) -> Result<Option<Operation>, ApiError> {
        Ok(self
            .store
            .unfinished_operations()?
            .into_iter()
            .find(|o| o.kind == OperationKind::Evacuation && o.host == host))
    }

    /// An operation with each moving VM's progress and the time left.
    pub fn operation(&self, id: Uuid) -> Result<Operation, ApiError> {
        let mut op = self
            .store
            .operation(id)?
            .ok_or_else(|| ApiError::not_found(format!("no operation with id {id}")))?;
        let migrations: HashMap<Uuid, Migration> = self
            .store
            .migrations_of(id)?
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        for item in op.items.iter_mut() {
            let Some(m) = item.migration.and_then(|id| migrations.get(&id)) else {
                continue;
            };
            if let (Some(p), false) = (&m.progress, m.phase.is_terminal()) {
                item.progress = Some(ItemProgress {
                    sent_bytes: p.transferred_bytes,
                    remaining_bytes: p.remaining_bytes,
                    phase: m.phase,
                });
            }
        }
        if !op.state.is_finished() && op.kind == OperationKind::Evacuation {
            op.eta_s = Some(self.eta(&op));
        }
        Ok(op)
    }

    /// The newest operations, newest first.
    pub fn operations(&self) -> Result<Vec<Operation>, ApiError> {
        Ok(self.store.operations(100)?)
    }

    /// The plan for the VMs on `host` not in `known`: where each goes, or why it cannot.
    fn plan_items(&self, host: &str, known: &[String]) -> Result<Vec<OperationItem>, ApiError> {
        let view = self.store.view()?;
        let on_host: Vec<&Vm> = view
            .vms
            .iter()
            .filter(|v| v.host == host && !known.contains(&v.spec.name))
            .collect();
        let mut items = Vec::new();
        let mut moves = Vec::new();
        for vm in &on_host {
            match vm.state {
                VmState::Running | VmState::Paused | VmState::Starting
                    if vm.migration.is_none() =>
                {
                    moves.push(Move {
                        vm: vm.spec.name.clone(),
                        demand: Demand::of(&vm.spec),
                    })
                }
                _ if vm.migration.is_some() => items.push(OperationItem {
                    // Already on its way somewhere: followed, not requested again.
                    state: ItemState::Moving,
                    migration: vm.migration,
                    ..item(vm, None)
                }),
                state => items.push(OperationItem {
                    state: ItemState::CouldNotMove,
                    reason: Some(format!(
                        "it is {state}: nothing runs to live-migrate, so it stays on {host}"
                    )),
                    ..item(vm, None)
                }),
            }
        }
        let hosts = self.host_facts(&view, None, "")?;
        let located: HashMap<&str, &str> = view
            .vms
            .iter()
            .map(|v| (v.spec.name.as_str(), v.host.as_str()))
            .collect();
        let rules = self.store.rules()?;
        let reports = plan_evacuation(host, &moves, &hosts, &located, &rules);
        for (mv, report) in moves.iter().zip(reports) {
            let Some(vm) = on_host.iter().find(|v| v.spec.name == mv.vm) else {
                continue;
            };
            let mut it = item(vm, report.chosen.clone());
            it.runner_up = report.runner_up.clone();
            if report.chosen.is_none() {
                it.state = ItemState::CouldNotMove;
                let why: Vec<String> = report
                    .candidates
                    .iter()
                    .map(|c| format!("{}: {}", c.host, c.reasons.join("; ")))
                    .collect();
                it.reason = Some(if why.is_empty() {
                    "no other host".to_string()
                } else {
                    format!("no host can take it: {}", why.join(" | "))
                });
            }
            items.push(it);
        }
        // Largest first: the long migrations start early, small ones fill the gaps.
        items.sort_by(|a, b| b.memory_mib.cmp(&a.memory_mib).then(a.vm.cmp(&b.vm)));
        Ok(items)
    }

    /// Carries the operation on (at creation, and for unfinished ones at server start).
    pub fn spawn_operation(self: &Arc<Self>, id: Uuid) {
        let server = self.clone();
        let span = tracing::info_span!("operation", id = %id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    match server.drive_operation(id).await {
                        Ok(true) => break,
                        Ok(false) => {}
                        Err(e) => tracing::warn!("evacuation driver: {e}"),
                    }
                    tokio::time::sleep(DRIVER_TICK).await;
                }
            },
            span,
        ));
    }

    /// At server start: carry every unfinished operation on (a scheduled run is
    /// followed by the scheduler, see `scheduling.rs`).
    pub fn resume_operations(self: &Arc<Self>) {
        match self.store.unfinished_operations() {
            Ok(list) => {
                for op in list {
                    tracing::warn!(id = %op.id, host = %op.host, state = %op.state,
                        kind = %op.kind,
                        "carrying on an operation the last server left unfinished");
                    match op.kind {
                        OperationKind::Evacuation => self.spawn_operation(op.id),
                        OperationKind::Scheduled => self.spawn_run_follower(op.id),
                    }
                }
            }
            Err(e) => tracing::error!("cannot read unfinished operations: {e}"),
        }
    }

    /// One look: request what is planned, follow what runs, finish when all is settled.
    /// True when the operation is finished.
    async fn drive_operation(self: &Arc<Self>, id: Uuid) -> Result<bool, ApiError> {
        let Some(mut op) = self.store.operation(id)? else {
            return Ok(true);
        };
        if op.state.is_finished() || op.kind != OperationKind::Evacuation {
            return Ok(true);
        }
        let cancelling = op.state == OperationState::Cancelling;
        let mut events = Vec::new();
        let before = op.clone();
        // VMs that arrived on the host since the plan (a migration to it that was
        // already running): they have to go too.
        if !cancelling {
            let known: Vec<String> = op.items.iter().map(|i| i.vm.clone()).collect();
            let extra = self.plan_items(&op.host, &known)?;
            events.extend(decision_events(&op, &extra));
            op.items.extend(extra);
        }
        let migrations = self.store.migrations_of(id)?;
        for i in 0..op.items.len() {
            let item = op.items[i].clone();
            let next = self
                .step_item(&op, item, cancelling, &migrations, &mut events)
                .await;
            op.items[i] = next;
        }
        if op.items.iter().all(|i| i.state.is_finished()) {
            op.state = if cancelling {
                OperationState::Cancelled
            } else if op.items.iter().all(|i| i.state == ItemState::Moved) {
                OperationState::Succeeded
            } else {
                OperationState::Incomplete
            };
            op.finished_at = Some(Utc::now());
            let stuck: Vec<String> = op
                .items
                .iter()
                .filter(|i| i.state != ItemState::Moved)
                .map(|i| {
                    format!(
                        "{} ({}: {})",
                        i.vm,
                        i.state,
                        i.reason.as_deref().unwrap_or("no reason")
                    )
                })
                .collect();
            let msg = format!(
                "evacuation {} of host {} {}: {} of {} VM(s) moved{}",
                op.id,
                op.host,
                op.state,
                op.count(ItemState::Moved),
                op.items.len(),
                if stuck.is_empty() {
                    String::new()
                } else {
                    format!("; not moved: {}", stuck.join(", "))
                }
            );
            let outcome = if op.state == OperationState::Succeeded {
                Outcome::Ok
            } else {
                Outcome::Error
            };
            events.push(
                op_event(&op, EventKind::OperationFinish, outcome, msg)
                    .with_data(serde_json::json!({"operation": op.id, "items": &op.items})),
            );
        }
        if op != before {
            op.updated_at = Utc::now();
            if !self.store.save_operation(&op, &events)? {
                // Changed meanwhile (a cancel): look again next round. Migrations this
                // round requested are found again by the operation id they carry.
                return Ok(false);
            }
        }
        Ok(op.state.is_finished())
    }

    /// Moves one VM of an operation on by one step.
    async fn step_item(
        self: &Arc<Self>,
        op: &Operation,
        mut item: OperationItem,
        cancelling: bool,
        migrations: &[Migration],
        events: &mut Vec<NewEvent>,
    ) -> OperationItem {
        if item.state.is_finished() {
            return item;
        }
        // A migration requested by an earlier driver whose id was not saved yet (not one
        // that failed before).
        if item.migration.is_none() {
            item.migration = migrations
                .iter()
                .rfind(|m| m.vm == item.vm && !item.failed_migrations.contains(&m.id))
                .map(|m| m.id);
        }
        let Some(mid) = item.migration else {
            // Planned, not requested yet.
            if cancelling {
                item.state = ItemState::Cancelled;
                item.reason = Some("the evacuation was cancelled before it moved".into());
                return item;
            }
            let Some(to) = item.destination.clone() else {
                item.state = ItemState::CouldNotMove;
                return item;
            };
            let req = MigrateRequest {
                vm: item.vm.clone(),
                to: Some(to),
                options: MigrationOptions::default(),
                priority: Some(EVACUATION_PRIORITY),
            };
            match self.start_migration(&op.actor, req, Some(op.id)).await {
                Ok(m) => {
                    item.migration = Some(m.id);
                    item.state = if m.phase == Phase::Queued {
                        ItemState::Queued
                    } else {
                        ItemState::Moving
                    };
                }
                Err(e) => {
                    item.state = ItemState::CouldNotMove;
                    item.reason = Some(format!("its migration was refused: {}", e.message));
                    events.push(could_not_move(op, &item));
                }
            }
            return item;
        };
        let m = match migrations.iter().find(|m| m.id == mid) {
            Some(m) => m.clone(),
            // Not one of ours (it was already running when the evacuation began).
            None => match self.store.migration(mid) {
                Ok(Some(m)) => m,
                _ => return item,
            },
        };
        match m.phase {
            Phase::Queued => item.state = ItemState::Queued,
            Phase::Completed => {
                item.state = ItemState::Moved;
                item.destination = Some(m.destination.clone());
                let mut e = op_event(
                    op,
                    EventKind::OperationMoved,
                    Outcome::Ok,
                    format!(
                        "evacuation {}: VM {} moved to {} ({} of {})",
                        short(op.id),
                        item.vm,
                        m.destination,
                        op.count(ItemState::Moved) + 1,
                        op.items.len()
                    ),
                );
                e.vm = Some(item.vm.clone());
                e.migration = Some(m.id);
                events.push(e.with_data(serde_json::json!({"operation": op.id,
                    "report": m.report})));
            }
            Phase::Failed | Phase::Cancelled => {
                if cancelling {
                    item.state = ItemState::Cancelled;
                    item.reason = Some(format!(
                        "the evacuation was cancelled; its migration {}: {}",
                        m.phase,
                        m.error.as_deref().unwrap_or("rolled back")
                    ));
                } else if item.failed_migrations.len() + 1 < MAX_ATTEMPTS {
                    // Rolled back (a server restart mid-way, a lost link): the VM runs where
                    // it was, so it is simply asked again, through the queue.
                    item.failed_migrations.push(m.id);
                    item.migration = None;
                    item.state = ItemState::Planned;
                    item.reason = Some(format!(
                        "attempt {} failed ({}); trying again",
                        item.failed_migrations.len(),
                        m.error.as_deref().unwrap_or("no reason recorded")
                    ));
                    let mut e = op_event(
                        op,
                        EventKind::OperationRetry,
                        Outcome::Info,
                        format!(
                            "evacuation {}: VM {}'s migration {} {}; asking again",
                            short(op.id),
                            item.vm,
                            m.id,
                            m.phase
                        ),
                    );
                    e.vm = Some(item.vm.clone());
                    e.migration = Some(m.id);
                    events.push(e.with_data(serde_json::json!({"operation": op.id,
                        "error": m.error})));
                } else {
                    item.state = ItemState::CouldNotMove;
                    item.reason = Some(format!(
                        "its migration {} {} (attempt {} of {MAX_ATTEMPTS}): {}",
                        m.id,
                        m.phase,
                        item.failed_migrations.len() + 1,
                        m.error.as_deref().unwrap_or("no reason recorded")
                    ));
                    events.push(could_not_move(op, &item));
                }
            }
            Phase::NeedsAttention => {
                item.state = ItemState::CouldNotMove;
                item.reason = Some(format!(
                    "its migration {} needs an operator (`ferry migration resolve {}`): {}",
                    m.id,
                    m.id,
                    m.attention
                        .as_ref()
                        .map(|a| a.reason.as_str())
                        .unwrap_or("no reason recorded")
                ));
                events.push(could_not_move(op, &item));
            }
            _ => {
                item.state = ItemState::Moving;
                if cancelling && !m.run.cancel_requested {
                    // Refused once it is past the point of no return (switching over,
                    // post-copy): then it finishes and the VM counts as moved.
                    if let Err(e) = self.cancel_migration(m.id, &op.actor) {
                        tracing::info!(migration = %m.id, "not cancelled: {}", e.message);
                    }
                }
            }
        }
        item
    }
}

fn item(vm: &Vm, destination: Option<String>) -> OperationItem {
    OperationItem {
        vm: vm.spec.name.clone(),
        memory_mib: vm.spec.memory_mib,
        destination,
        runner_up: None,
        state: ItemState::Planned,
        migration: None,
        reason: None,
        estimate_s: None,
        progress: None,
        failed_migrations: Vec::new(),
    }
}

/// The record of a plan's decisions: where each VM goes (with the runner-up), and for
/// each that cannot go, why. VMs already on their way elsewhere were not decided here.
fn decision_events(op: &Operation, items: &[OperationItem]) -> Vec<NewEvent> {
    let mut out = Vec::new();
    for item in items {
        if item.state == ItemState::Moving {
            continue;
        }
        if let Some(d) = &item.destination {
            let mut e = op_event(
                op,
                EventKind::VmPlaced,
                Outcome::Info,
                format!(
                    "evacuation {}: VM {} placed on {d} (runner-up: {})",
                    short(op.id),
                    item.vm,
                    item.runner_up.as_deref().unwrap_or("none")
                ),
            );
            e.vm = Some(item.vm.clone());
            e.host = Some(d.clone());
            out.push(e.with_data(serde_json::json!({"operation": op.id, "item": item})));
        }
        if item.state == ItemState::CouldNotMove {
            out.push(could_not_move(op, item));
        }
    }
    out
}

fn short(id: Uuid) -> String {
    id.to_string()[..8].to_string()
}

fn op_event(op: &Operation, kind: EventKind, outcome: Outcome, message: String) -> NewEvent {
    NewEvent {
        actor: op.actor.clone(),
        kind,
        vm: None,
        host: Some(op.host.clone()),
        migration: None,
        outcome: Some(outcome),
        message,
        data: serde_json::json!({ "operation": op.id }),
    }
}

fn could_not_move(op: &Operation, item: &OperationItem) -> NewEvent {
    let mut e = op_event(
        op,
        EventKind::OperationCouldNotMove,
        Outcome::Error,
        format!(
            "evacuation {}: VM {} could not move and runs on {}: {}",
            short(op.id),
            item.vm,
            op.host,
            item.reason.as_deref().unwrap_or("no reason recorded")
        ),
    );
    e.vm = Some(item.vm.clone());
    e.migration = item.migration;
    e.with_data(serde_json::json!({"operation": op.id, "item": item}))
}
