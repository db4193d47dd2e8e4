//! Operations: work the server carries out over many migrations and a long time, with an
//! id, a durable record and a story in the event log: the evacuation of a host entering
//! maintenance (`ferry host maintenance enter HOST`), and each run of a schedule
//! (`ferry schedule add`), which links to what it started.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// Empty a host entering maintenance: live-migrate each of its VMs elsewhere.
    Evacuation,
    /// One run of a schedule (its record's `run` says which, and what it started).
    Scheduled,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Evacuation => "evacuation",
            OperationKind::Scheduled => "scheduled",
        }
    }
}

impl std::fmt::Display for OperationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Its migrations are queued or running.
    Running,
    /// An operator cancelled it: waiting migrations are dropped, running ones roll back.
    Cancelling,
    /// Every VM moved.
    Succeeded,
    /// It ended with VMs that could not move (each named with its reason).
    Incomplete,
    /// Cancelled; what had moved stays where it went.
    Cancelled,
    /// It could not do what it was for (a scheduled run refused, or what it started
    /// failed); the reason is on the record.
    Failed,
}

impl OperationState {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            OperationState::Succeeded
                | OperationState::Incomplete
                | OperationState::Cancelled
                | OperationState::Failed
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Running => "running",
            OperationState::Cancelling => "cancelling",
            OperationState::Succeeded => "succeeded",
            OperationState::Incomplete => "incomplete",
            OperationState::Cancelled => "cancelled",
            OperationState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for OperationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one VM of an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    /// Placed; its migration is not requested yet.
    Planned,
    /// Its migration waits in the queue.
    Queued,
    /// Its migration runs.
    Moving,
    /// It runs on its new host.
    Moved,
    /// It stays where it was, with the reason (no host fits, a rule, a failed migration).
    CouldNotMove,
    /// The operation was cancelled before it moved; it stays where it was.
    Cancelled,
}

impl ItemState {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            ItemState::Moved | ItemState::CouldNotMove | ItemState::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Planned => "planned",
            ItemState::Queued => "queued",
            ItemState::Moving => "moving",
            ItemState::Moved => "moved",
            ItemState::CouldNotMove => "could_not_move",
            ItemState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for ItemState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One VM of an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationItem {
    pub vm: String,
    pub memory_mib: u64,
    /// Where placement sends it (None: nowhere fits; `reason` says why).
    pub destination: Option<String>,
    /// The second-best host, for the record.
    #[serde(default)]
    pub runner_up: Option<String>,
    pub state: ItemState,
    /// The migration that moves it, once requested.
    #[serde(default)]
    pub migration: Option<Uuid>,
    /// Why it could not move (or was cancelled).
    #[serde(default)]
    pub reason: Option<String>,
    /// The plan's estimate of its migration, seconds.
    #[serde(default)]
    pub estimate_s: Option<f64>,
    /// Bytes its migration sent and has left, while it runs (filled in when read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ItemProgress>,
    /// Earlier migrations of it that failed and were rolled back (it was tried again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_migrations: Vec<Uuid>,
}

/// A moving VM's stream, as last polled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ItemProgress {
    pub sent_bytes: u64,
    pub remaining_bytes: u64,
    pub phase: crate::Phase,
}

/// The server's record of an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: Uuid,
    pub kind: OperationKind,
    /// The host it is about (empty when it is about none, e.g. a scheduled balancing run).
    #[serde(default)]
    pub host: String,
    pub state: OperationState,
    /// Who started it.
    pub actor: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// An evacuation's VMs (empty for other kinds).
    #[serde(default)]
    pub items: Vec<OperationItem>,
    /// The plan's estimate of the whole operation, seconds.
    #[serde(default)]
    pub estimate_s: Option<f64>,
    /// The figures behind the estimate (the ETA is worked out from them and the progress).
    #[serde(default)]
    pub assumptions: Vec<EstimateAssumption>,
    /// Bumped by every save: a writer that read an older revision is refused, so the
    /// driver and an operator's cancel never overwrite each other's changes.
    #[serde(default)]
    pub revision: u64,
    /// Seconds left, from what is still to move and how far the running ones are
    /// (filled in when read, while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    /// A scheduled run: its schedule, fire time, and what it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<crate::ScheduledRun>,
}

impl Operation {
    pub fn count(&self, state: ItemState) -> usize {
        self.items.iter().filter(|i| i.state == state).count()
    }
}

/// `POST /v1/hosts/{name}/maintenance/enter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnterMaintenanceRequest {
    /// Plan and estimate only: nothing is marked and nothing moves.
    #[serde(default)]
    pub dry_run: bool,
}

/// What `enter` answers: the plan (a dry run), or the plan and the operation carrying it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvacuationPlan {
    pub host: String,
    /// Every VM on the host: where it goes, or why it cannot.
    pub items: Vec<OperationItem>,
    /// The whole evacuation, seconds, under the queue's limits.
    pub estimate_s: f64,
    /// What the estimate assumed, per VM (resident memory, dirty rate, link share).
    #[serde(default)]
    pub assumptions: Vec<EstimateAssumption>,
    /// The operation started (None for a dry run).
    #[serde(default)]
    pub operation: Option<Operation>,
}

/// One VM's figures behind the estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateAssumption {
    pub vm: String,
    /// Bytes to send: the smaller of guest RAM and what QEMU holds resident.
    pub bytes: u64,
    pub dirty_bytes_per_s: u64,
    /// The link the estimate used between its hosts, bytes/s (shared when migrations run
    /// at once).
    pub link_bytes_per_s: u64,
    pub start_s: f64,
    pub end_s: f64,
    #[serde(default)]
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_name_themselves_as_they_serialize() {
        for s in [
            ItemState::Planned,
            ItemState::Queued,
            ItemState::Moving,
            ItemState::Moved,
            ItemState::CouldNotMove,
            ItemState::Cancelled,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        for s in [
            OperationState::Running,
            OperationState::Cancelling,
            OperationState::Succeeded,
            OperationState::Incomplete,
            OperationState::Cancelled,
            OperationState::Failed,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!(serde_json::from_str::<EnterMaintenanceRequest>(r#"{"dry":true}"#).is_err());
        for k in [OperationKind::Evacuation, OperationKind::Scheduled] {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
    }

    /// A record written before scheduled runs existed still reads, and an evacuation's
    /// record is written as before (no `run`).
    #[test]
    fn old_records_read_and_evacuations_write_as_before() {
        let old = r#"{"id":"6c1f3c56-7a4e-4f3e-9a1f-0c8b9f0f2e11","kind":"evacuation",
            "host":"a","state":"succeeded","actor":"user:admin",
            "created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z",
            "items":[],"estimate_s":1.0,"assumptions":[],"revision":3}"#;
        let op: Operation = serde_json::from_str(old).unwrap();
        assert_eq!(op.run, None);
        assert_eq!(op.kind, OperationKind::Evacuation);
        let back = serde_json::to_value(&op).unwrap();
        assert!(back.get("run").is_none());
        // A scheduled run's record may leave out the evacuation-only fields.
        let run = r#"{"id":"6c1f3c56-7a4e-4f3e-9a1f-0c8b9f0f2e11","kind":"scheduled",
            "state":"failed","actor":"schedule:x",
            "created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z",
            "run":{"schedule":"x","task":{"kind":"balance"},"fire_at":"2026-01-01T00:00:00Z"}}"#;
        let op: Operation = serde_json::from_str(run).unwrap();
        assert_eq!(op.host, "");
        assert!(op.items.is_empty());
        assert_eq!(op.run.unwrap().task, crate::ScheduleTask::Balance);
    }
}
