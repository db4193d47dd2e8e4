//! Cluster-wide settings: the CPU baseline (see [`crate::baseline`] for the choice itself).

use ferry_api::*;

use crate::baseline::{best_common_model, missing_features, runs, BASELINE_KEYWORD};
use crate::core::Server;
use crate::store::NewEvent;

const BASELINE_KEY: &str = "cpu_baseline";
const MIGRATION_DEFAULTS_KEY: &str = "migration_defaults";
/// The last baseline model announced, to log changes of an automatic baseline.
const EFFECTIVE_KEY: &str = "cpu_baseline_effective";

impl Server {
    pub fn baseline_setting(&self) -> Result<BaselineSetting, ApiError> {
        match self.store.setting(BASELINE_KEY)? {
            None => Ok(BaselineSetting::Auto),
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                ApiError::internal(format!("stored CPU baseline setting is unreadable: {e}"))
            }),
        }
    }

    pub fn migration_defaults(&self) -> Result<MigrationOptions, ApiError> {
        match self.store.setting(MIGRATION_DEFAULTS_KEY)? {
            None => Ok(MigrationOptions::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                ApiError::internal(format!("stored migration defaults are unreadable: {e}"))
            }),
        }
    }

    /// Replaces the cluster's migration defaults (validated like a migration's options).
    pub fn set_migration_defaults(&self, o: MigrationOptions) -> Result<ClusterInfo, ApiError> {
        o.validate()?;
        if o.keep_source || o.force {
            return Err(ApiError::bad_request(
                "keep_source and force are per migration, not cluster defaults",
            ));
        }
        let text = serde_json::to_string(&o).map_err(|e| ApiError::internal(e.to_string()))?;
        self.store.set_setting(MIGRATION_DEFAULTS_KEY, &text)?;
        self.cluster_info()
    }

    /// The setting, the model it resolves to, and the hosts that cannot run it.
    pub fn cluster_info(&self) -> Result<ClusterInfo, ApiError> {
        let setting = self.baseline_setting()?;
        let hosts = self.hosts()?;
        // Hosts that never reported CPU models (older agents) cannot vote.
        let reporting: Vec<&Host> = hosts
            .iter()
            .filter(|h| !h.inventory.cpu_models.is_empty())
            .collect();
        let model = match &setting {
            BaselineSetting::Auto => {
                best_common_model(reporting.iter().map(|h| &h.inventory)).map(str::to_string)
            }
            BaselineSetting::Fixed(m) => Some(m.clone()),
        };
        let hosts_without_baseline = reporting
            .iter()
            .filter_map(|h| {
                let reason = match &model {
                    None => "no CPU model is common to every host".to_string(),
                    Some(m) if runs(&h.inventory, m) => return None,
                    Some(m) => match missing_features(&h.inventory, m) {
                        Some(f) => format!("cannot run {m}: missing {}", f.join(", ")),
                        None => format!("its QEMU does not offer {m}"),
                    },
                };
                Some(HostBaselineProblem {
                    host: h.name.clone(),
                    reason,
                })
            })
            .collect();
        Ok(ClusterInfo {
            baseline_setting: setting,
            baseline_model: model,
            hosts_without_baseline,
            migration_defaults: self.migration_defaults()?,
        })
    }

    /// Sets the baseline; a fixed model must run on every host that reports its models.
    pub fn set_baseline(&self, setting: BaselineSetting) -> Result<ClusterInfo, ApiError> {
        if let BaselineSetting::Fixed(m) = &setting {
            validate_name(
                "CPU model",
                &m.to_ascii_lowercase().replace(['_', '.'], "-"),
            )
            .map_err(|_| ApiError::bad_request(format!("'{m}' is not a CPU model name")))?;
            let unable: Vec<String> = self
                .hosts()?
                .iter()
                .filter(|h| !h.inventory.cpu_models.is_empty() && !runs(&h.inventory, m))
                .map(|h| h.name.clone())
                .collect();
            if !unable.is_empty() {
                return Err(ApiError::conflict(format!(
                    "CPU model {m} cannot be the baseline: {} cannot run it",
                    unable.join(", ")
                )));
            }
        }
        let text =
            serde_json::to_string(&setting).map_err(|e| ApiError::internal(e.to_string()))?;
        self.store.set_setting(BASELINE_KEY, &text)?;
        let info = self.cluster_info()?;
        self.remember_effective(&info)?;
        Ok(info)
    }

    /// `cpu_model: "baseline"` becomes the cluster's baseline model.
    pub fn resolve_cpu_model(&self, spec: &mut VmSpec) -> Result<(), ApiError> {
        if spec.cpu_model != BASELINE_KEYWORD {
            return Ok(());
        }
        match self.cluster_info()?.baseline_model {
            Some(m) => {
                spec.cpu_model = m;
                Ok(())
            }
            None => Err(ApiError::conflict(
                "the cluster has no CPU baseline (no model common to the hosts, or none reported \
                 its CPU models yet); name a CPU model with --cpu",
            )),
        }
    }

    /// After a host registered or changed: flag it if it cannot run the baseline, and log a
    /// change of the automatic baseline.
    pub(crate) fn review_baseline(&self, actor: &str, host: &str) {
        let Ok(info) = self.cluster_info() else {
            return;
        };
        if let Some(p) = info.hosts_without_baseline.iter().find(|p| p.host == host) {
            self.event(NewEvent {
                actor: actor.to_string(),
                kind: EventKind::HostBaseline,
                vm: None,
                host: Some(host.to_string()),
                migration: None,
                outcome: Some(Outcome::Error),
                message: format!(
                    "host {host} {} (the cluster CPU baseline{})",
                    p.reason,
                    info.baseline_model
                        .as_ref()
                        .map(|m| format!(" is {m}"))
                        .unwrap_or_default()
                ),
                data: serde_json::to_value(&info).unwrap_or_default(),
            });
        }
        if let Err(e) = self.remember_effective(&info) {
            tracing::warn!("cannot record the CPU baseline: {e}");
        }
    }

    fn remember_effective(&self, info: &ClusterInfo) -> Result<(), ApiError> {
        let now = info.baseline_model.clone().unwrap_or_default();
        let before = self.store.setting(EFFECTIVE_KEY)?.unwrap_or_default();
        if now != before {
            self.store.set_setting(EFFECTIVE_KEY, &now)?;
            self.event(NewEvent {
                actor: "server".into(),
                kind: EventKind::ClusterBaseline,
                vm: None,
                host: None,
                migration: None,
                outcome: Some(Outcome::Info),
                message: match (&info.baseline_model, before.is_empty()) {
                    (Some(m), true) => format!("cluster CPU baseline is {m}"),
                    (Some(m), false) => format!("cluster CPU baseline is now {m} (was {before})"),
                    (None, _) => {
                        "the cluster has no CPU baseline: no model is common to every host".into()
                    }
                },
                data: serde_json::to_value(info).unwrap_or_default(),
            });
        }
        Ok(())
    }
}
