//! The migration queue's edges: the dispatcher that starts waiting migrations when a slot
//! frees (the rule itself is the pure [`crate::queue::decide`]), an instant cancel of a
//! waiting migration, the limits, and each waiting migration's standing when read.
//!
//! The dispatcher wakes when a migration is queued, cancelled or ends, when the limits
//! change, and once a second regardless (a missed wake-up costs a second, never a
//! migration). A waiting migration whose turn comes is checked again (the cluster may
//! have changed while it waited): a failure takes it out of the queue as `failed` with
//! the report, and it never touched either host.

use std::sync::Arc;
use std::time::Duration;

use ferry_api::*;
use uuid::Uuid;

use super::Server;
use crate::queue;
use crate::store::NewEvent;

/// The dispatcher's look when nothing woke it.
const TICK: Duration = Duration::from_secs(1);

impl Server {
    /// Runs the queue for the server's life.
    pub fn spawn_queue(self: &Arc<Self>) {
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                let finished = server.orchestrator.finished.clone();
                tokio::select! {
                    _ = server.queue_wake.notified() => {}
                    _ = finished.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
                if let Err(e) = server.dispatch_queue().await {
                    tracing::warn!("migration queue: {e}");
                }
                server.share_links().await;
            }
        });
    }

    /// One look at the queue: start every waiting migration the limits now allow, in
    /// queue order, each after its checks pass again.
    pub async fn dispatch_queue(self: &Arc<Self>) -> Result<(), ApiError> {
        let limits = self.store.limits()?;
        let view = self.store.view()?;
        let decision = queue::decide(&limits, &view.migrations);
        for id in decision.start {
            let Some(m) = view.migrations.iter().find(|m| m.id == id) else {
                continue;
            };
            let req = MigrateRequest {
                vm: m.vm.clone(),
                to: Some(m.destination.clone()),
                options: m.options.clone(),
                priority: Some(m.priority),
            };
            let refusal = match self.check_queued_migration(&req, Some(id)).await {
                Ok(report) => match report.verdict() {
                    Verdict::Fail => Some((
                        format!(
                            "pre-migration checks failed when its turn came: {}",
                            report.summary(Verdict::Fail)
                        ),
                        serde_json::to_value(&report).unwrap_or_default(),
                    )),
                    Verdict::Warn if !m.options.force => Some((
                        format!(
                            "pre-migration checks warn when its turn came (it was not forced): {}",
                            report.summary(Verdict::Warn)
                        ),
                        serde_json::to_value(&report).unwrap_or_default(),
                    )),
                    _ => None,
                },
                Err(e) => Some((e.message, serde_json::Value::Null)),
            };
            if let Some((reason, data)) = refusal {
                self.store.withdraw_queued(id, false, &reason, &|m| {
                    queue_event(m, EventKind::MigrationRefused, Outcome::Error, &reason)
                        .with_data(data.clone())
                })?;
                continue;
            }
            // Take it out of the queue only if the limits still allow it as the store sees
            // them now (a request may have taken the slot meanwhile).
            let started = self.store.dequeue(
                &|view| {
                    if queue::decide(&limits, &view.migrations).start.contains(&id) {
                        vec![id]
                    } else {
                        Vec::new()
                    }
                },
                &|m| {
                    queue_event(
                        m,
                        EventKind::MigrationStarted,
                        Outcome::Ok,
                        &format!(
                            "migration {} of VM {} from {} to {} leaves the queue and starts",
                            m.id, m.vm, m.source, m.destination
                        ),
                    )
                },
            )?;
            for m in started {
                self.orchestrator.start(m);
            }
        }
        Ok(())
    }

    /// Cancels a migration still waiting in the queue: nothing was touched, so it ends at
    /// once. None if it was not (or is no longer) waiting.
    pub(super) fn cancel_queued(
        &self,
        id: Uuid,
        actor: &str,
    ) -> Result<Option<Migration>, ApiError> {
        let reason = format!("cancelled by {actor} while it waited in the queue");
        let m = self.store.withdraw_queued(id, true, &reason, &|m| {
            queue_event(
                m,
                EventKind::MigrationPhase,
                Outcome::Ok,
                &format!(
                    "migration {} of VM {} cancelled while queued: nothing was touched",
                    m.id, m.vm
                ),
            )
        })?;
        if m.is_some() {
            self.queue_wake.notify_one();
        }
        Ok(m)
    }

    /// Fills in a queued migration's position and what holds it back.
    pub fn with_standing(&self, mut list: Vec<Migration>) -> Result<Vec<Migration>, ApiError> {
        if !list.iter().any(|m| m.phase == Phase::Queued) {
            return Ok(list);
        }
        let limits = self.store.limits()?;
        let view = self.store.view()?;
        let mut decision = queue::decide(&limits, &view.migrations);
        for m in list.iter_mut().filter(|m| m.phase == Phase::Queued) {
            m.queue = Some(decision.waiting.remove(&m.id).unwrap_or(QueueStanding {
                position: 0,
                waits_for: Vec::new(),
            }));
        }
        Ok(list)
    }

    pub fn limits(&self) -> Result<MigrationLimits, ApiError> {
        Ok(self.store.limits()?)
    }

    pub(super) fn set_limits(&self, update: &LimitsUpdate) -> Result<MigrationLimits, ApiError> {
        let limits = update.apply(self.store.limits()?);
        limits.validate()?;
        self.store.set_limits(&limits)?;
        self.queue_wake.notify_one();
        Ok(limits)
    }

    /// After a migration was recorded: start it, or say where it waits.
    pub(super) fn after_admission(&self, m: &Migration) -> Result<Migration, ApiError> {
        if m.phase == Phase::Pending {
            self.orchestrator.start(m.clone());
            return Ok(m.clone());
        }
        let m = self
            .with_standing(vec![m.clone()])?
            .pop()
            .ok_or_else(|| ApiError::internal("the queued migration vanished"))?;
        let why = m
            .queue
            .as_ref()
            .map(|q| {
                let reasons: Vec<String> = q.waits_for.iter().map(|w| w.to_string()).collect();
                format!("position {}: {}", q.position, reasons.join("; "))
            })
            .unwrap_or_default();
        self.event(
            queue_event(
                &m,
                EventKind::MigrationQueued,
                Outcome::Ok,
                &format!(
                    "migration {} of VM {} from {} to {} waits in the queue ({why})",
                    m.id, m.vm, m.source, m.destination
                ),
            )
            .with_data(serde_json::to_value(&m.queue).unwrap_or_default()),
        );
        self.queue_wake.notify_one();
        Ok(m)
    }
}

/// An event about a migration in the queue, carrying its operation (if any) so
/// `ferry events --operation ID` finds it.
pub(super) fn queue_event(
    m: &Migration,
    kind: EventKind,
    outcome: Outcome,
    message: &str,
) -> NewEvent {
    NewEvent {
        actor: "server".to_string(),
        kind,
        vm: Some(m.vm.clone()),
        host: Some(m.source.clone()),
        migration: Some(m.id),
        outcome: Some(outcome),
        message: message.to_string(),
        data: serde_json::Value::Null,
    }
}

impl NewEvent {
    /// The event with `data` as its figures.
    pub fn with_data(mut self, data: serde_json::Value) -> NewEvent {
        self.data = data;
        self
    }
}
