//! Load balancing (`ferry cluster balance`, `ferry recommendation`): the settings, a
//! plan as the server shows it, and recommendations waiting for an operator.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ApiError;

/// What the balancer does with its plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceMode {
    /// Nothing runs by itself (`--dry-run` still shows the plan).
    #[default]
    Off,
    /// Each run lists its moves as recommendations; an operator applies or dismisses them.
    Recommend,
    /// Each run sends its moves through the migration queue.
    Automatic,
}

impl BalanceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceMode::Off => "off",
            BalanceMode::Recommend => "recommend",
            BalanceMode::Automatic => "automatic",
        }
    }
}

impl fmt::Display for BalanceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The balancer's settings (`GET /v1/cluster/balance`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BalanceSettings {
    pub mode: BalanceMode,
    /// 1: act only on a large imbalance; 5: aggressive.
    pub level: u8,
    /// A VM is not moved again within this many minutes of its last move.
    pub min_stay_minutes: u32,
    /// How often the balancer runs by itself (recommend and automatic modes), seconds.
    pub interval_s: u32,
    /// The most moves one run proposes.
    pub max_moves: u32,
}

impl Default for BalanceSettings {
    fn default() -> Self {
        BalanceSettings {
            mode: BalanceMode::Off,
            level: 3,
            min_stay_minutes: 30,
            interval_s: 300,
            max_moves: 4,
        }
    }
}

/// `POST /v1/cluster/balance`: each field given replaces the setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceSettingsUpdate {
    #[serde(default)]
    pub mode: Option<BalanceMode>,
    #[serde(default)]
    pub level: Option<u8>,
    #[serde(default)]
    pub min_stay_minutes: Option<u32>,
    #[serde(default)]
    pub interval_s: Option<u32>,
    #[serde(default)]
    pub max_moves: Option<u32>,
}

impl BalanceSettingsUpdate {
    /// The settings with this update applied, checked.
    pub fn apply(&self, to: BalanceSettings) -> Result<BalanceSettings, ApiError> {
        let s = BalanceSettings {
            mode: self.mode.unwrap_or(to.mode),
            level: self.level.unwrap_or(to.level),
            min_stay_minutes: self.min_stay_minutes.unwrap_or(to.min_stay_minutes),
            interval_s: self.interval_s.unwrap_or(to.interval_s),
            max_moves: self.max_moves.unwrap_or(to.max_moves),
        };
        if !(1..=5).contains(&s.level) {
            return Err(ApiError::bad_request(format!(
                "level {} is not 1 (only a large imbalance) to 5 (aggressive)",
                s.level
            )));
        }
        if s.min_stay_minutes > 7 * 24 * 60 {
            return Err(ApiError::bad_request(
                "min_stay_minutes is at most a week (10080)",
            ));
        }
        if !(10..=86_400).contains(&s.interval_s) {
            return Err(ApiError::bad_request(
                "interval_s is 10 seconds to a day (86400)",
            ));
        }
        if !(1..=100).contains(&s.max_moves) {
            return Err(ApiError::bad_request("max_moves is 1 to 100"));
        }
        Ok(s)
    }
}

/// `POST /v1/cluster/balance/plan`: the plan now, at the configured level or another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancePlanRequest {
    #[serde(default)]
    pub level: Option<u8>,
}

/// One host in a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostBalance {
    pub host: String,
    /// max(CPU share, memory share), 0..1+.
    pub load_before: f64,
    pub load_after: f64,
    /// Its VMs' CPU use, in CPUs, and the host's CPUs.
    pub cpu_used: f64,
    pub cpus: f64,
    pub memory_used_mib: u64,
    pub memory_capacity_mib: u64,
    /// Why it takes no VMs (maintenance): it may still give some away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// One move a plan proposes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedMove {
    pub vm: String,
    pub from: String,
    pub to: String,
    /// Drop in imbalance.
    pub gain: f64,
    /// Estimated seconds of migration (memory and dirty rate over the link).
    pub cost_s: f64,
    pub memory_mib: u64,
    pub dirty_rate_mib_s: f64,
}

/// `POST /v1/cluster/balance/plan`: what the balancer would do now (moves nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalancePlanView {
    pub settings: BalanceSettings,
    pub imbalance_before: f64,
    pub imbalance_after: f64,
    /// The imbalance under which the level does nothing.
    pub threshold: f64,
    pub hosts: Vec<HostBalance>,
    pub moves: Vec<PlannedMove>,
    /// Why the plan stops where it does.
    pub reason: String,
    /// VMs left out and why (no load measured yet, migrating, moved recently).
    #[serde(default)]
    pub left_out: Vec<String>,
}

/// Where a recommendation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecommendationState {
    Open,
    Applied,
    Dismissed,
    /// A later run replaced it (the cluster changed).
    Superseded,
}

impl RecommendationState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecommendationState::Open => "open",
            RecommendationState::Applied => "applied",
            RecommendationState::Dismissed => "dismissed",
            RecommendationState::Superseded => "superseded",
        }
    }
}

impl fmt::Display for RecommendationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A move the balancer recommends (`ferry recommendation list|apply|dismiss`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub state: RecommendationState,
    #[serde(rename = "move")]
    pub planned: PlannedMove,
    /// The cluster's imbalance when it was made, and after the whole plan.
    pub imbalance_before: f64,
    pub imbalance_after: f64,
    /// The migration that applied it.
    #[serde(default)]
    pub migration: Option<Uuid>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    /// Who applied or dismissed it.
    #[serde(default)]
    pub actor: Option<String>,
}

/// `POST /v1/cluster/balance/run`: what one run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceRun {
    pub plan: BalancePlanView,
    /// Recommend mode: the recommendations made.
    #[serde(default)]
    pub recommendations: Vec<Recommendation>,
    /// Automatic mode: the migrations requested.
    #[serde(default)]
    pub migrations: Vec<Uuid>,
    /// Moves that could not be requested, with the reason.
    #[serde(default)]
    pub refused: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_apply_and_are_checked() {
        let s = BalanceSettings::default();
        let u = BalanceSettingsUpdate {
            mode: Some(BalanceMode::Automatic),
            level: Some(5),
            ..Default::default()
        };
        let t = u.apply(s).unwrap();
        assert_eq!(
            (t.mode, t.level, t.max_moves),
            (BalanceMode::Automatic, 5, 4)
        );
        for bad in [
            BalanceSettingsUpdate {
                level: Some(0),
                ..Default::default()
            },
            BalanceSettingsUpdate {
                level: Some(6),
                ..Default::default()
            },
            BalanceSettingsUpdate {
                interval_s: Some(1),
                ..Default::default()
            },
            BalanceSettingsUpdate {
                max_moves: Some(0),
                ..Default::default()
            },
        ] {
            assert!(bad.apply(s).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&BalanceMode::Recommend).unwrap();
        assert_eq!(json, "\"recommend\"");
        assert!(serde_json::from_str::<BalanceSettingsUpdate>(r#"{"mode":"sometimes"}"#).is_err());
        assert!(serde_json::from_str::<BalanceSettingsUpdate>(r#"{"extra":1}"#).is_err());
    }
}
