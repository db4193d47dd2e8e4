//! Runs each migration across two agents as a persisted state machine
//! (see [`ferry_migration::phase`] for the diagram), and settles interrupted ones by the
//! written rules of [`ferry_migration::recovery`].
//!
//! ```text
//!   Begin ──▶ (FollowCopy) ──▶ StartStream ──▶ FollowStream ──▶ Settle ──▶ Done
//!     │            │                │               │   │          ▲ │
//!     └────────────┴── failure, cancel ─────────────┘   │          │ └─▶ Postcopy ─▶ Done
//!                          (Settle decides)             └ post-copy┘
//!   server restart ──▶ Settle(restart): follow a healthy stream on, or settle it
//! ```
//!
//! Quick and cold migrations have their own small drivers (`quick.rs`, `cold.rs`) over the
//! machines of [`ferry_migration::quick`] and [`ferry_migration::cold`]; they share the
//! saving, the events, the hold points and the clean-up after the switch with live ones.
//!
//! Rules that keep a VM on exactly one host, and where they live:
//! - every phase change is saved (with its event, in one transaction) *before* the step it
//!   allows; a refused transition or a failed save stops the run on the spot
//!   ([`OrchestratorError`]) and leaves the last durable phase for recovery;
//! - whatever interrupts the forward path (an agent error, QEMU's failure, a timeout, an
//!   operator's cancel, a restart) goes through `settle`: both sides' facts are gathered
//!   and [`ferry_migration::recovery::decide`] says what is allowed — a rollback only when
//!   the source holds the VM and the destination provably does not, a switch-over only
//!   when the destination holds everything, otherwise retry within a bound and then stop
//!   as `needs_attention`;
//! - the VM record moves only in the `Completed` transaction, after the destination was
//!   seen running; the source is shut down only after that transaction, and its agent
//!   refuses unless QEMU itself reports the stream completed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_api::*;
use ferry_migration::recovery::Trigger;
use ferry_migration::TransitionError;
use tracing::Instrument;
use uuid::Uuid;

use crate::lock;
use crate::store::{NewEvent, Store, StoreError};

pub mod agents;
mod cold;
mod control;
mod disks;
mod forward;
mod hold;
mod postcopy;
mod quick;
mod settle;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use agents::{AgentError, Agents, HttpAgents};
pub use hold::{Hold, HoldPoint};

/// Why a run stopped without settling the migration. The record keeps its last durable
/// phase; recovery picks it up at the next start (the operator sees the reason meanwhile).
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("the phase machine refused a transition: {0}")]
    Transition(#[from] TransitionError),
    #[error("the quick migration's machine refused a transition: {0}")]
    QuickTransition(#[from] ferry_migration::quick::QuickRefusal),
    #[error("the cold migration's machine refused a transition: {0}")]
    ColdTransition(#[from] ferry_migration::cold::ColdRefusal),
    #[error("cannot save the migration (tried {attempts} times): {source}")]
    Save {
        attempts: u32,
        #[source]
        source: StoreError,
    },
    #[error("the migration's VM record is gone: {0}")]
    VmGone(String),
}

type Step<T> = Result<T, OrchestratorError>;

/// Limits of the orchestrator's loops.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// How often a running migration is polled.
    pub poll_interval: Duration,
    /// An agent silent for this long in a loop fails the forward path (recovery follows).
    pub silence_limit: Duration,
    /// Each status call of a loop or of recovery.
    pub call_timeout: Duration,
    /// Recovery asks again for this long when facts are missing, then stops as
    /// `needs_attention`.
    pub recovery_bound: Duration,
    /// A failed save is retried this often (`retry_every` apart) before the run stops.
    pub save_attempts: u32,
    /// Between two looks when recovery, a clean-up or a reconnection waits for something.
    pub retry_every: Duration,
    /// How long clean-ups that wait for an agent (a destination to remove after a
    /// rollback, a source to retire after the switch) keep trying.
    pub cleanup_wait: Duration,
    /// Fault tests: where runs wait for a file to disappear.
    pub hold: Option<Hold>,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            poll_interval: Duration::from_millis(250),
            silence_limit: Duration::from_secs(15),
            call_timeout: Duration::from_secs(3),
            recovery_bound: Duration::from_secs(90),
            save_attempts: 3,
            retry_every: Duration::from_secs(1),
            cleanup_wait: Duration::from_secs(600),
            hold: None,
        }
    }
}

/// The migrations in flight and what drives them.
pub struct Orchestrator {
    pub(crate) store: Arc<Store>,
    pub(crate) agents: Arc<dyn Agents>,
    pub(crate) config: OrchestratorConfig,
    cancels: Mutex<HashSet<Uuid>>,
    /// Runs that stopped on an [`OrchestratorError`], with the reason (shown by the API).
    stalled: Mutex<HashMap<Uuid, String>>,
    /// Runs in progress (a resolution must not race one).
    running: Mutex<HashSet<Uuid>>,
    /// The runs' tasks (a unit test "kills the server" by aborting them).
    #[cfg_attr(not(test), allow(dead_code))]
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Told whenever a run ends (the migration queue may start the next one).
    pub finished: Arc<tokio::sync::Notify>,
}

impl Orchestrator {
    pub fn new(
        store: Arc<Store>,
        agents: Arc<dyn Agents>,
        config: OrchestratorConfig,
    ) -> Orchestrator {
        Orchestrator {
            store,
            agents,
            config,
            cancels: Default::default(),
            stalled: Default::default(),
            running: Default::default(),
            tasks: Default::default(),
            finished: Default::default(),
        }
    }

    /// Unit tests: the server dies on the spot (its runs stop wherever they are).
    #[cfg(test)]
    pub(crate) fn kill(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    /// Runs a migration just admitted (phase `Pending`) in the background.
    pub fn start(self: &Arc<Self>, m: Migration) {
        self.spawn(m, Next::Begin);
    }

    fn spawn(self: &Arc<Self>, m: Migration, next: Next) {
        if !lock(&self.running).insert(m.id) {
            return;
        }
        let span = tracing::info_span!("migration", id = %m.id, vm = %m.vm);
        let o = self.clone();
        let task = tokio::spawn(
            async move {
                let id = m.id;
                let mut run = Run::new(o.clone(), m);
                if let Err(e) = run.drive(next).await {
                    tracing::error!("orchestration stopped: {e}");
                    lock(&o.stalled).insert(id, e.to_string());
                }
                lock(&o.running).remove(&id);
                lock(&o.cancels).remove(&id);
                o.finished.notify_one();
            }
            .instrument(span),
        );
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }

    /// At server start: settle every migration the last server left unfinished, and finish
    /// the clean-up of those it completed.
    pub fn resume_unfinished(self: &Arc<Self>) {
        match self.store.unfinished_migrations() {
            Ok(list) => {
                for m in list {
                    if m.phase == Phase::NeedsAttention {
                        continue; // an operator decides
                    }
                    if m.phase == Phase::Queued {
                        continue; // it waits for its turn; the queue starts it
                    }
                    if m.phase == Phase::Pending && !m.run.cancel_requested {
                        // Admitted, nothing touched yet (`Preparing` is saved before the
                        // destination is asked for anything): it simply begins.
                        tracing::info!(id = %m.id, vm = %m.vm,
                            "starting a migration the last server admitted but had not begun");
                        self.spawn(m, Next::Begin);
                        continue;
                    }
                    tracing::warn!(id = %m.id, vm = %m.vm, phase = %m.phase,
                        "settling a migration the server was running when it stopped");
                    let next = if m.run.cancel_requested {
                        Next::Settle(Why::Cancel)
                    } else {
                        Next::Settle(Why::Restart)
                    };
                    self.spawn(m, next);
                }
            }
            Err(e) => tracing::error!("cannot read unfinished migrations: {e}"),
        }
        match self.store.completed_with_cleanup_pending() {
            Ok(list) => {
                for m in list {
                    self.spawn(m, Next::CleanUp);
                }
            }
            Err(e) => tracing::error!("cannot read completed migrations: {e}"),
        }
    }

    /// Records an operator's cancel (persisted: a restarted server still honours it).
    pub fn cancel(&self, m: &Migration) -> Result<(), StoreError> {
        let mut m = m.clone();
        m.run.cancel_requested = true;
        self.store.save_migration(&m)?;
        lock(&self.cancels).insert(m.id);
        Ok(())
    }

    fn cancel_requested(&self, id: Uuid) -> bool {
        lock(&self.cancels).contains(&id)
    }

    /// Why a run stopped without settling its migration, if it did.
    pub fn stalled(&self, id: Uuid) -> Option<String> {
        lock(&self.stalled).get(&id).cloned()
    }

    pub fn is_running(&self, id: Uuid) -> bool {
        lock(&self.running).contains(&id)
    }
}

/// Where a run goes next.
#[derive(Debug, Clone)]
enum Next {
    /// `Pending`: prepare the destination.
    Begin,
    /// `CopyingDisks`: follow the copy until every disk is in sync.
    FollowCopy,
    /// `Transferring`, stream not started yet.
    StartStream,
    /// `Transferring`: follow the pre-copy stream.
    FollowStream,
    /// Ask recovery what the facts allow.
    Settle(Why),
    /// Follow post-copy to its end (`just_started`: entered from the stream).
    Postcopy {
        just_started: bool,
    },
    /// `Completed`: retire the source and its disk copies.
    CleanUp,
    Done,
}

/// Why a run settles.
#[derive(Debug, Clone)]
enum Why {
    /// The source reported the stream completed.
    StreamEnded,
    /// The forward path failed, with the reason.
    Failure(String),
    /// The operator asked to cancel.
    Cancel,
    /// The server restarted.
    Restart,
}

impl Why {
    fn trigger(&self) -> Trigger {
        match self {
            Why::Restart => Trigger::Restart,
            _ => Trigger::Failure,
        }
    }
}

pub(crate) struct Run {
    o: Arc<Orchestrator>,
    m: Migration,
    started: Instant,
    /// When the part of the migration now under way began (see [`TimeParts`]).
    lap: Instant,
    /// Since when progress saves have been failing (they are retried each poll).
    saves_failing_since: Option<Instant>,
}

/// Progress saves may fail for this long (the next poll retries) before the run stops.
const PROGRESS_SAVE_GRACE: Duration = Duration::from_secs(30);

impl Run {
    fn new(o: Arc<Orchestrator>, m: Migration) -> Run {
        Run {
            o,
            m,
            started: Instant::now(),
            lap: Instant::now(),
            saves_failing_since: None,
        }
    }

    /// Ms since the last lap (or the run's start); the next part starts now.
    fn lap(&mut self) -> u64 {
        let ms = self.lap.elapsed().as_millis() as u64;
        self.lap = Instant::now();
        ms
    }

    fn agents(&self) -> &dyn Agents {
        self.o.agents.as_ref()
    }

    async fn drive(&mut self, next: Next) -> Step<()> {
        match self.m.options.mode {
            MigrationMode::Live => self.drive_live(next).await,
            MigrationMode::Quick => self.drive_quick(next).await,
            MigrationMode::Cold => self.drive_cold(next).await,
        }
    }

    async fn drive_live(&mut self, mut next: Next) -> Step<()> {
        loop {
            next = match next {
                Next::Begin => self.begin().await?,
                Next::FollowCopy => self.follow_copy().await?,
                Next::StartStream => self.start_stream().await?,
                Next::FollowStream => self.follow_stream().await?,
                Next::Settle(why) => self.settle(why).await?,
                Next::Postcopy { just_started } => self.post_copy(just_started).await?,
                Next::CleanUp => self.clean_up().await?,
                Next::Done => return Ok(()),
            };
        }
    }

    fn cancel_requested(&self) -> bool {
        self.m.run.cancel_requested || self.o.cancel_requested(self.m.id)
    }

    fn new_event(
        &self,
        kind: EventKind,
        outcome: Outcome,
        message: String,
        data: serde_json::Value,
    ) -> NewEvent {
        NewEvent {
            actor: "server".into(),
            kind,
            vm: Some(self.m.vm.clone()),
            host: None,
            migration: Some(self.m.id),
            outcome: Some(outcome),
            message,
            data,
        }
    }

    /// Appends an event; the log is evidence, not state, so a failure is only logged.
    fn event(&self, kind: EventKind, outcome: Outcome, message: String, data: serde_json::Value) {
        let e = self.new_event(kind, outcome, message, data);
        if let Err(err) = self.o.store.append_event(&e) {
            tracing::error!("cannot append to the event log: {err}");
        }
    }

    /// Saves `m` (and its event, and the VM's state) durably, retrying a few times. Only
    /// once this returns Ok may the step the new state allows run.
    async fn save_durably(
        &self,
        m: &Migration,
        event: Option<&NewEvent>,
        vm_state: Option<VmState>,
    ) -> Step<()> {
        let attempts = self.o.config.save_attempts.max(1);
        let mut last = None;
        for attempt in 1..=attempts {
            match self.o.store.save_migration_with(m, event, vm_state) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::error!(attempt, "cannot save the migration: {e}");
                    last = Some(e);
                    if attempt < attempts {
                        tokio::time::sleep(self.o.config.retry_every).await;
                    }
                }
            }
        }
        Err(OrchestratorError::Save {
            attempts,
            source: last.unwrap_or_else(|| StoreError::Corrupt("no attempt".into())),
        })
    }

    /// Moves to the next phase: refused transitions and failed saves stop the run; the
    /// in-memory record changes only once the new phase is durable.
    async fn advance(
        &mut self,
        ev: PhaseEvent,
        message: String,
        data: serde_json::Value,
    ) -> Step<()> {
        self.advance_with(ev, message, data, None).await
    }

    async fn advance_with(
        &mut self,
        ev: PhaseEvent,
        message: String,
        data: serde_json::Value,
        vm_state: Option<VmState>,
    ) -> Step<()> {
        let next = self.m.phase.next(ev)?;
        let mut m = self.m.clone();
        let from = m.phase;
        m.phase = next;
        m.updated_at = Utc::now();
        if next.is_terminal() {
            m.finished_at = Some(m.updated_at);
        }
        let outcome = match next {
            Phase::Failed | Phase::NeedsAttention => Outcome::Error,
            Phase::Completed | Phase::Cancelled => Outcome::Ok,
            _ => Outcome::Info,
        };
        let event = self.new_event(EventKind::MigrationPhase, outcome, message.clone(), data);
        self.save_durably(&m, Some(&event), vm_state).await?;
        tracing::info!(%from, to = %next, "{message}");
        self.m = m;
        Ok(())
    }

    /// Saves what changed without a phase change (run state before a call that needs it).
    async fn save_run(&mut self) -> Step<()> {
        self.m.updated_at = Utc::now();
        let m = self.m.clone();
        self.save_durably(&m, None, None).await
    }

    /// Saves progress figures; a failure is retried at the next poll, and stops the run
    /// only when saves keep failing for [`PROGRESS_SAVE_GRACE`].
    fn save_progress(&mut self) -> Step<()> {
        self.m.updated_at = Utc::now();
        match self.o.store.save_migration(&self.m) {
            Ok(()) => {
                self.saves_failing_since = None;
                Ok(())
            }
            Err(e) => {
                let since = *self.saves_failing_since.get_or_insert_with(Instant::now);
                tracing::warn!("cannot save progress: {e}");
                if since.elapsed() > PROGRESS_SAVE_GRACE {
                    return Err(OrchestratorError::Save {
                        attempts: 0,
                        source: e,
                    });
                }
                Ok(())
            }
        }
    }

    /// The VM's spec, as stored.
    fn spec(&self) -> Step<VmSpec> {
        match self.o.store.vm(&self.m.vm) {
            Ok(Some(vm)) => Ok(vm.spec),
            Ok(None) => Err(OrchestratorError::VmGone(self.m.vm.clone())),
            Err(e) => Err(OrchestratorError::Save {
                attempts: 0,
                source: e,
            }),
        }
    }

    async fn hold(&self, point: HoldPoint) {
        if let Some(h) = &self.o.config.hold {
            h.wait(point, self.m.id, &self.m.vm).await;
        }
    }
}
