//! The migration queue as clients see it: the cluster's concurrency limits, and where a
//! waiting migration stands and what it waits for.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ApiError;

/// How many migrations may run at once (`GET/PUT /v1/cluster/limits`,
/// `ferry cluster limits`). A request past a limit waits in the queue.
///
/// The defaults follow what operators of other platforms settled on: two outgoing and two
/// incoming per host (KubeVirt's per-node default), one per pair of hosts (Hyper-V runs one
/// live migration per pair), eight in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationLimits {
    pub per_host_outgoing: u32,
    pub per_host_incoming: u32,
    pub per_pair: u32,
    pub cluster: u32,
}

impl Default for MigrationLimits {
    fn default() -> Self {
        MigrationLimits {
            per_host_outgoing: 2,
            per_host_incoming: 2,
            per_pair: 1,
            cluster: 8,
        }
    }
}

/// The largest value any limit may take: more concurrent migrations than this would only
/// split the links into slivers.
pub const MAX_LIMIT: u32 = 64;

impl MigrationLimits {
    pub fn validate(&self) -> Result<(), ApiError> {
        for (name, v) in [
            ("per_host_outgoing", self.per_host_outgoing),
            ("per_host_incoming", self.per_host_incoming),
            ("per_pair", self.per_pair),
            ("cluster", self.cluster),
        ] {
            if !(1..=MAX_LIMIT).contains(&v) {
                return Err(ApiError::bad_request(format!(
                    "limit {name} is {v}; it must be between 1 and {MAX_LIMIT}"
                )));
            }
        }
        Ok(())
    }
}

/// `PUT /v1/cluster/limits`: the limits to change; unset ones stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsUpdate {
    #[serde(default)]
    pub per_host_outgoing: Option<u32>,
    #[serde(default)]
    pub per_host_incoming: Option<u32>,
    #[serde(default)]
    pub per_pair: Option<u32>,
    #[serde(default)]
    pub cluster: Option<u32>,
}

impl LimitsUpdate {
    pub fn apply(&self, to: MigrationLimits) -> MigrationLimits {
        MigrationLimits {
            per_host_outgoing: self.per_host_outgoing.unwrap_or(to.per_host_outgoing),
            per_host_incoming: self.per_host_incoming.unwrap_or(to.per_host_incoming),
            per_pair: self.per_pair.unwrap_or(to.per_pair),
            cluster: self.cluster.unwrap_or(to.cluster),
        }
    }
}

/// A limit that holds a waiting migration back, with the migrations that fill it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitReason {
    /// The source already sends `running` migrations (its limit).
    HostOutgoing {
        host: String,
        limit: u32,
        running: Vec<Uuid>,
    },
    /// The destination already receives `running` migrations.
    HostIncoming {
        host: String,
        limit: u32,
        running: Vec<Uuid>,
    },
    /// This pair of hosts (either direction) already carries `running` migrations.
    Pair {
        a: String,
        b: String,
        limit: u32,
        running: Vec<Uuid>,
    },
    /// The cluster already runs `running` migrations.
    Cluster { limit: u32, running: Vec<Uuid> },
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids = |r: &[Uuid]| {
            r.iter()
                .map(|id| id.to_string()[..8].to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            WaitReason::HostOutgoing {
                host,
                limit,
                running,
            } => write!(
                f,
                "{host} already sends {} migration(s) (limit {limit}): {}",
                running.len(),
                ids(running)
            ),
            WaitReason::HostIncoming {
                host,
                limit,
                running,
            } => write!(
                f,
                "{host} already receives {} migration(s) (limit {limit}): {}",
                running.len(),
                ids(running)
            ),
            WaitReason::Pair {
                a,
                b,
                limit,
                running,
            } => write!(
                f,
                "{a} and {b} already carry {} migration(s) between them (limit {limit}): {}",
                running.len(),
                ids(running)
            ),
            WaitReason::Cluster { limit, running } => write!(
                f,
                "the cluster already runs {} migration(s) (limit {limit})",
                running.len()
            ),
        }
    }
}

/// Where a queued migration stands (filled in when a migration is read, never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStanding {
    /// 1 for the next to start.
    pub position: u32,
    /// Every limit that holds it back right now (empty: it starts at the next look).
    pub waits_for: Vec<WaitReason>,
}

/// A migration's rank in the queue: higher first, then the earlier request.
pub const DEFAULT_PRIORITY: i32 = 0;
/// Migrations an evacuation sends (above ordinary requests: a host is being emptied).
pub const EVACUATION_PRIORITY: i32 = 10;
/// Migrations the balancer sends (below ordinary requests: nothing is urgent about them).
pub const BALANCE_PRIORITY: i32 = -10;
pub const MAX_PRIORITY: i32 = 100;

pub fn validate_priority(p: i32) -> Result<(), ApiError> {
    if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&p) {
        return Err(ApiError::bad_request(format!(
            "priority is {p}; it must be between -{MAX_PRIORITY} and {MAX_PRIORITY}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_and_updates_keep_what_they_do_not_name() {
        assert!(MigrationLimits::default().validate().is_ok());
        let zero = LimitsUpdate {
            per_pair: Some(0),
            ..Default::default()
        }
        .apply(MigrationLimits::default());
        assert!(zero.validate().unwrap_err().message.contains("per_pair"));
        let big = MigrationLimits {
            cluster: MAX_LIMIT + 1,
            ..Default::default()
        };
        assert!(big.validate().is_err());
        let u = LimitsUpdate {
            cluster: Some(4),
            ..Default::default()
        }
        .apply(MigrationLimits::default());
        assert_eq!(u.cluster, 4);
        assert_eq!(u.per_host_outgoing, 2);
        assert!(serde_json::from_str::<LimitsUpdate>(r#"{"clusterr": 3}"#).is_err());
    }

    #[test]
    fn priorities_are_bounded() {
        assert!(validate_priority(0).is_ok());
        assert!(validate_priority(EVACUATION_PRIORITY).is_ok());
        assert!(validate_priority(1000).is_err());
    }
}
