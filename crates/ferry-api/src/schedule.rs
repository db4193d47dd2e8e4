//! Scheduled operations (`ferry schedule add|list|remove`): a migration, a maintenance
//! entry or exit, or a balancing run, at a time or on a cron expression (UTC). Each run is
//! an [`crate::Operation`] of kind `scheduled` that links to what it started.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{validate_name, ApiError, OperationState};

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleWhen {
    /// Once, at this instant.
    At(DateTime<Utc>),
    /// On a 5-field cron expression (minute hour day-of-month month day-of-week), read in
    /// UTC: `0 2 * * SUN` is every Sunday at 02:00 UTC.
    Cron(String),
}

impl std::fmt::Display for ScheduleWhen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleWhen::At(t) => write!(
                f,
                "at {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            ScheduleWhen::Cron(c) => write!(f, "cron '{c}' (UTC)"),
        }
    }
}

/// What a schedule does when it fires. It acts through the same core functions as the
/// API, as actor `schedule:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleTask {
    /// Live-migrate a VM (to `to`, or where placement puts it).
    Migrate {
        vm: String,
        #[serde(default)]
        to: Option<String>,
    },
    /// Put a host into maintenance and evacuate it.
    MaintenanceEnter { host: String },
    /// Return a host to service.
    MaintenanceExit { host: String },
    /// One balancing run in the balancer's configured mode.
    Balance,
}

impl ScheduleTask {
    /// The names it carries are well formed.
    pub fn validate(&self) -> Result<(), ApiError> {
        match self {
            ScheduleTask::Migrate { vm, to } => {
                validate_name("VM name", vm)?;
                if let Some(to) = to {
                    validate_name("host name", to)?;
                }
                Ok(())
            }
            ScheduleTask::MaintenanceEnter { host } | ScheduleTask::MaintenanceExit { host } => {
                validate_name("host name", host)
            }
            ScheduleTask::Balance => Ok(()),
        }
    }

    /// The host it is about, if one (the operation record's `host`).
    pub fn host(&self) -> Option<&str> {
        match self {
            ScheduleTask::Migrate { to, .. } => to.as_deref(),
            ScheduleTask::MaintenanceEnter { host } | ScheduleTask::MaintenanceExit { host } => {
                Some(host)
            }
            ScheduleTask::Balance => None,
        }
    }
}

impl std::fmt::Display for ScheduleTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleTask::Migrate { vm, to: Some(to) } => write!(f, "migrate VM {vm} to {to}"),
            ScheduleTask::Migrate { vm, to: None } => {
                write!(f, "migrate VM {vm} (placement picks the host)")
            }
            ScheduleTask::MaintenanceEnter { host } => write!(f, "maintenance enter {host}"),
            ScheduleTask::MaintenanceExit { host } => write!(f, "maintenance exit {host}"),
            ScheduleTask::Balance => f.write_str("balancing run"),
        }
    }
}

/// What happens to fire times that passed while the server was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedRule {
    /// At start, the schedule runs once, however many fire times were missed.
    #[default]
    RunOnce,
    /// Missed fire times are skipped; the schedule waits for its next fire time.
    Skip,
}

impl MissedRule {
    pub fn as_str(self) -> &'static str {
        match self {
            MissedRule::RunOnce => "run-once",
            MissedRule::Skip => "skip",
        }
    }
}

impl std::fmt::Display for MissedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    pub name: String,
    pub when: ScheduleWhen,
    pub task: ScheduleTask,
    #[serde(default)]
    pub missed: MissedRule,
}

/// Fire times skipped at a server start (`--missed skip`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedFires {
    /// The latest fire time skipped.
    pub fire_at: DateTime<Utc>,
    /// How many were skipped (counted up to a bound).
    pub count: u64,
    /// When the server decided.
    pub decided_at: DateTime<Utc>,
}

/// A schedule's latest run, as `ferry schedule list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRunSummary {
    /// The run's operation (`ferry operation show ID`, `ferry events --operation ID`).
    pub operation: Uuid,
    pub fire_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub state: OperationState,
    /// What it did, or why it failed.
    #[serde(default)]
    pub outcome: Option<String>,
}

/// A schedule as the server keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    pub when: ScheduleWhen,
    pub task: ScheduleTask,
    #[serde(default)]
    pub missed: MissedRule,
    /// Who added it.
    pub actor: String,
    pub created_at: DateTime<Utc>,
    /// The latest fire time dealt with (run or skipped); only later ones are due.
    #[serde(default)]
    pub last_fire: Option<DateTime<Utc>>,
    /// The latest run's operation.
    #[serde(default)]
    pub last_operation: Option<Uuid>,
    /// Fire times skipped at the latest start that skipped any.
    #[serde(default)]
    pub skipped: Option<SkippedFires>,
    /// How many times it ran.
    #[serde(default)]
    pub runs: u64,
    /// The next fire time (None: a one-time schedule that is done). Filled in when read.
    #[serde(default)]
    pub next_fire: Option<DateTime<Utc>>,
    /// The latest run and its outcome. Filled in when read.
    #[serde(default)]
    pub last_run: Option<ScheduleRunSummary>,
}

/// A scheduled run, in its operation's record: which schedule and fire time, and what
/// it started (so `ferry events --operation ID` finds their stories too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledRun {
    pub schedule: String,
    pub task: ScheduleTask,
    /// The fire time this run is for.
    pub fire_at: DateTime<Utc>,
    /// Fire times missed while the server was down that this one run stands for (0: on
    /// time).
    #[serde(default)]
    pub missed: u64,
    /// Whether the task was carried out. A run recorded but not acted on when the
    /// server stopped is not acted on again by the next one: it fails as interrupted.
    #[serde(default)]
    pub acted: bool,
    /// The migrations it requested.
    #[serde(default)]
    pub migrations: Vec<Uuid>,
    /// The operations it started (an evacuation).
    #[serde(default)]
    pub operations: Vec<Uuid>,
    /// The recommendations a balancing run made (recommend mode).
    #[serde(default)]
    pub recommendations: Vec<Uuid>,
    /// Moves a balancing run could not request, each with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// What it did, or why it failed.
    #[serde(default)]
    pub outcome: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented_and_refuse_unknown_fields() {
        let r: ScheduleRequest = serde_json::from_str(
            r#"{"name":"sun","when":{"cron":"0 2 * * SUN"},
                "task":{"kind":"maintenance_enter","host":"a"}}"#,
        )
        .unwrap();
        assert_eq!(r.missed, MissedRule::RunOnce);
        assert_eq!(r.task, ScheduleTask::MaintenanceEnter { host: "a".into() });
        let r: ScheduleRequest = serde_json::from_str(
            r#"{"name":"m","when":{"at":"2026-12-06T02:00:00Z"},
                "task":{"kind":"migrate","vm":"web1"},"missed":"skip"}"#,
        )
        .unwrap();
        assert_eq!(
            r.task,
            ScheduleTask::Migrate {
                vm: "web1".into(),
                to: None
            }
        );
        assert_eq!(r.missed, MissedRule::Skip);
        let b: ScheduleTask = serde_json::from_str(r#"{"kind":"balance"}"#).unwrap();
        assert_eq!(b, ScheduleTask::Balance);
        for bad in [
            r#"{"kind":"migrate","vm":"x","too":"b"}"#,
            r#"{"kind":"reboot"}"#,
            r#"{"vm":"x"}"#,
        ] {
            assert!(serde_json::from_str::<ScheduleTask>(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<ScheduleRequest>(
            r#"{"name":"m","when":{"at":"2026-12-06T02:00:00Z"},"task":{"kind":"balance"},"x":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<ScheduleWhen>(r#"{"at":"tomorrow"}"#).is_err());
    }

    #[test]
    fn task_names_are_checked() {
        assert!(ScheduleTask::Migrate {
            vm: "Bad Name".into(),
            to: None
        }
        .validate()
        .is_err());
        assert!(ScheduleTask::MaintenanceEnter { host: "".into() }
            .validate()
            .is_err());
        assert!(ScheduleTask::Migrate {
            vm: "web1".into(),
            to: Some("b".into())
        }
        .validate()
        .is_ok());
    }
}
