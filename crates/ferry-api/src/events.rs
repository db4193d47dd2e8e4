//! The event log: who asked what, what happened, with the numbers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Error,
    Info,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Info => "info",
        }
    }
    pub fn parse(s: &str) -> Outcome {
        match s {
            "ok" => Outcome::Ok,
            "error" => Outcome::Error,
            _ => Outcome::Info,
        }
    }
}

macro_rules! event_kinds {
    ($($(#[$m:meta])* $variant:ident => $text:literal,)*) => {
        /// What an event is about. On the wire and in the log as `area.what`; a kind this
        /// build does not know (written by a newer server) reads as `Other`.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $($(#[$m])* $variant,)*
            Other(String),
        }

        impl EventKind {
            pub const KNOWN: &'static [EventKind] = &[$(EventKind::$variant,)*];

            pub fn as_str(&self) -> &str {
                match self {
                    $(EventKind::$variant => $text,)*
                    EventKind::Other(s) => s,
                }
            }

            pub fn parse(text: &str) -> EventKind {
                match text {
                    $($text => EventKind::$variant,)*
                    other => EventKind::Other(other.to_string()),
                }
            }
        }
    };
}

event_kinds! {
    HostRegister => "host.register",
    HostMaintenance => "host.maintenance",
    HostBaseline => "host.baseline",
    /// An admin made a join token for a host (the token itself is never logged).
    HostJoinToken => "host.join_token",
    /// A host redeemed its join token and got its certificate.
    HostJoin => "host.join",
    /// A host renewed its certificate.
    HostCertificate => "host.certificate",
    /// A host was removed and its certificates revoked.
    HostRemove => "host.remove",
    /// A CA rotation started or finished.
    CaRotate => "ca.rotate",
    UserAdd => "user.add",
    UserRemove => "user.remove",
    /// A user got a new API token.
    UserToken => "user.token",
    ClusterBaseline => "cluster.baseline",
    ClusterMigrationDefaults => "cluster.migration_defaults",
    VmCreate => "vm.create",
    /// Placement chose a host for a VM (with the runner-up and every candidate's score).
    VmPlaced => "vm.placed",
    RuleAdd => "rule.add",
    RuleDelete => "rule.delete",
    VmStart => "vm.start",
    VmStop => "vm.stop",
    VmDelete => "vm.delete",
    /// A VM's state as its host reported it changed (e.g. crashed).
    VmState => "vm.state",
    DiskCreate => "disk.create",
    DiskDelete => "disk.delete",
    MigrationRequest => "migration.request",
    MigrationCheck => "migration.check",
    MigrationCancel => "migration.cancel",
    /// An operator settled a migration that needed attention.
    MigrationResolve => "migration.resolve",
    /// A phase change, with its reason and numbers.
    MigrationPhase => "migration.phase",
    MigrationPass => "migration.pass",
    MigrationController => "migration.controller",
    MigrationDisks => "migration.disks",
    /// What recovery found on both sides and what it decided.
    MigrationRecovery => "migration.recovery",
    MigrationSourceRetired => "migration.source_retired",
    MigrationSourceDisks => "migration.source_disks",
    MigrationDestinationCleanup => "migration.destination_cleanup",
    /// A quick migration's state file: saved, loaded, deleted (or kept, with the reason).
    MigrationStateFile => "migration.state_file",
    MigrationPostcopyPaused => "migration.postcopy_paused",
    MigrationPostcopyResuming => "migration.postcopy_resuming",
    MigrationPostcopyResumed => "migration.postcopy_resumed",
    MigrationPostcopyProgress => "migration.postcopy_progress",
    /// A migration past a limit waits in the queue (with its position and what it waits for).
    MigrationQueued => "migration.queued",
    /// The queue gave a migration its slot.
    MigrationStarted => "migration.started",
    /// A queued migration's checks failed when its turn came: it leaves the queue.
    MigrationRefused => "migration.refused",
    /// The cluster's migration limits changed.
    ClusterLimits => "cluster.limits",
    /// An operation started: an evacuation, with its plan; a scheduled run, recorded
    /// before it acts.
    OperationStart => "operation.start",
    /// An operation's VM moved, with where it went.
    OperationMoved => "operation.moved",
    /// An operation's VM could not move, with the reason (it runs where it was).
    OperationCouldNotMove => "operation.could_not_move",
    /// An operator cancelled an operation.
    OperationCancel => "operation.cancel",
    /// An operation ended, with its outcome.
    OperationFinish => "operation.finish",
    /// An operation's VM is tried again after its migration failed and was rolled back.
    OperationRetry => "operation.retry",
    /// Admission control refused or granted capacity.
    AdmissionRefused => "admission.refused",
    /// How the server judges a host changed (alive, suspected, partitioned, failed).
    HostHealth => "host.health",
    /// HA restarted a failed host's VM elsewhere, or names why it could not.
    VmRestart => "vm.restart",
    /// The balancer's settings changed.
    ClusterBalance => "cluster.balance",
    /// A balancing run: its plan (imbalance before and after, each move's gain and cost).
    BalancePlan => "balance.plan",
    /// The balancer requested a move (automatic mode) or recommended it.
    BalanceMove => "balance.move",
    /// An operator applied a recommendation.
    RecommendationApply => "recommendation.apply",
    /// An operator dismissed a recommendation.
    RecommendationDismiss => "recommendation.dismiss",
    /// A schedule was added (with its next fire time).
    ScheduleAdd => "schedule.add",
    /// A schedule was removed.
    ScheduleRemove => "schedule.remove",
    /// A schedule fired: what it started (ok) or why it could not (error).
    ScheduleFire => "schedule.fire",
    /// Fire times missed while the server was down were skipped (`--missed skip`).
    ScheduleSkip => "schedule.skip",
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(EventKind::parse(&text))
    }
}

/// One line of the append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Who asked: the client's `x-ferry-actor`, or `server` / `agent:NAME` for the system.
    pub actor: String,
    /// What: `vm.create`, `migration.phase`, `migration.pass`, `host.register`, ...
    pub kind: EventKind,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub migration: Option<Uuid>,
    pub outcome: Outcome,
    pub message: String,
    /// The numbers behind it.
    #[serde(default)]
    pub data: serde_json::Value,
    /// Hex SHA-256 of the audit chain at this event (see [`crate::audit`]). Absent in
    /// answers from servers that predate the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// Filters for `GET /v1/events`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventQuery {
    pub vm: Option<String>,
    pub migration: Option<Uuid>,
    /// A kind (`migration.phase`) or an area (`migration`: every `migration.*` kind).
    pub kind: Option<String>,
    /// An operation's whole story: its own events and every event of the migrations it
    /// started.
    #[serde(default)]
    pub operation: Option<Uuid>,
    /// Only events with an id greater than this, and then the oldest `limit` of them (for
    /// following or paging through the log). Without it, the newest `limit`.
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_ones_are_kept() {
        for k in EventKind::KNOWN {
            assert_eq!(&EventKind::parse(k.as_str()), k);
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), *k);
        }
        assert_eq!(
            EventKind::parse("future.thing"),
            EventKind::Other("future.thing".into())
        );
    }
}
