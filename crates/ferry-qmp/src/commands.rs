//! Typed wrappers of the QMP commands Ferry uses.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::client::QmpClient;
use crate::error::QmpError;
use crate::types::*;

/// For commands that return `{}`.
#[derive(Deserialize)]
struct Empty {}

impl QmpClient {
    async fn execute_no_args<R: serde::de::DeserializeOwned>(
        &self,
        command: &str,
    ) -> Result<R, QmpError> {
        self.execute::<Value, R>(command, None).await
    }

    async fn execute_unit(&self, command: &str, arguments: Option<Value>) -> Result<(), QmpError> {
        let value = self.execute_raw(command, arguments).await?;
        crate::client::decode::<Empty>(command, value).map(|_| ())
    }

    // -- VM state ------------------------------------------------------------------------------

    /// `query-status`: the run state.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        self.execute_no_args("query-status").await
    }

    /// `query-version`.
    pub async fn query_version(&self) -> Result<VersionInfo, QmpError> {
        self.execute_no_args("query-version").await
    }

    /// `query-kvm`: whether KVM is present and in use.
    pub async fn query_kvm(&self) -> Result<KvmInfo, QmpError> {
        self.execute_no_args("query-kvm").await
    }

    /// `stop`: pause the vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute_unit("stop", None).await
    }

    /// `cont`: resume the vCPUs (also starts a VM launched with `-S`, and a destination after an
    /// incoming migration when it did not autostart).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute_unit("cont", None).await
    }

    /// `quit`: QEMU exits at once. Succeeds also when QEMU closed the connection before its
    /// reply arrived; use [`QmpClient::closed`] to wait until it is gone.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute_unit("quit", None).await {
            Err(QmpError::Disconnected { .. }) => Ok(()),
            other => other,
        }
    }

    /// `system_powerdown`: ACPI power button; the guest decides what to do.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute_unit("system_powerdown", None).await
    }

    /// `announce-self`: send gratuitous ARP/RARP for the VM's NICs so switches learn where it is
    /// now. With `None`, uses the VM's `announce-*` migration parameters (QEMU 10 requires all
    /// timing fields in the command itself).
    pub async fn announce_self(&self, params: Option<&AnnounceParameters>) -> Result<(), QmpError> {
        let params = match params {
            Some(p) => p.clone(),
            None => {
                let mp = self.query_migrate_parameters().await?;
                let d = AnnounceParameters::default();
                AnnounceParameters {
                    initial: mp.announce_initial.unwrap_or(d.initial),
                    max: mp.announce_max.unwrap_or(d.max),
                    rounds: mp.announce_rounds.unwrap_or(d.rounds),
                    step: mp.announce_step.unwrap_or(d.step),
                    ..d
                }
            }
        };
        self.execute_unit("announce-self", Some(to_args("announce-self", &params)?))
            .await
    }

    /// `human-monitor-command`: run an HMP command (debugging only; the output format is not
    /// stable).
    pub async fn human_monitor_command(&self, command_line: &str) -> Result<String, QmpError> {
        self.execute(
            "human-monitor-command",
            Some(&json!({ "command-line": command_line })),
        )
        .await
    }

    // -- Migration -----------------------------------------------------------------------------

    /// `query-migrate`: status and statistics of the current (or last) migration, on either side.
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        self.execute_no_args("query-migrate").await
    }

    /// `migrate` to a URI (`tcp:HOST:PORT`, `unix:PATH`, ...). Returns once the migration has
    /// started; follow it with `query-migrate` or `MIGRATION` events. `resume` continues a
    /// paused post-copy migration.
    pub async fn migrate(&self, uri: &str, resume: bool) -> Result<(), QmpError> {
        self.migrate_with(&MigrateArgs {
            uri: Some(uri.into()),
            channels: None,
            resume: resume.then_some(true),
        })
        .await
    }

    /// `migrate` with all arguments (e.g. `channels` instead of `uri`).
    pub async fn migrate_with(&self, args: &MigrateArgs) -> Result<(), QmpError> {
        self.execute_unit("migrate", Some(to_args("migrate", args)?))
            .await
    }

    /// `migrate-incoming` on a destination started with `-incoming defer`. With port 0
    /// (`tcp:HOST:0`), read the real port from [`MigrationInfo::socket_address`].
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.migrate_incoming_with(&MigrateIncomingArgs {
            uri: Some(uri.into()),
            ..Default::default()
        })
        .await
    }

    /// `migrate-incoming` with all arguments (channels, `exit-on-error`).
    pub async fn migrate_incoming_with(&self, args: &MigrateIncomingArgs) -> Result<(), QmpError> {
        self.execute_unit("migrate-incoming", Some(to_args("migrate-incoming", args)?))
            .await
    }

    /// `migrate_cancel` (the one migration command still spelt with an underscore): cancel the
    /// outgoing migration; the source keeps running.
    pub async fn migrate_cancel(&self) -> Result<(), QmpError> {
        self.execute_unit("migrate_cancel", None).await
    }

    /// `migrate-set-capabilities`, e.g. `&[("events", true), ("multifd", true)]`.
    pub async fn migrate_set_capabilities(
        &self,
        capabilities: &[(&str, bool)],
    ) -> Result<(), QmpError> {
        let capabilities: Vec<Value> = capabilities
            .iter()
            .map(|(name, state)| json!({ "capability": name, "state": state }))
            .collect();
        self.execute_unit(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": capabilities })),
        )
        .await
    }

    /// `query-migrate-capabilities`.
    pub async fn query_migrate_capabilities(
        &self,
    ) -> Result<Vec<MigrationCapabilityStatus>, QmpError> {
        self.execute_no_args("query-migrate-capabilities").await
    }

    /// `migrate-set-parameters`: changes only the fields that are `Some`.
    pub async fn migrate_set_parameters(
        &self,
        parameters: &MigrationParameters,
    ) -> Result<(), QmpError> {
        self.execute_unit(
            "migrate-set-parameters",
            Some(to_args("migrate-set-parameters", parameters)?),
        )
        .await
    }

    /// `query-migrate-parameters`.
    pub async fn query_migrate_parameters(&self) -> Result<MigrationParameters, QmpError> {
        self.execute_no_args("query-migrate-parameters").await
    }

    /// `migrate-start-postcopy` (needs the `postcopy-ram` capability on both sides).
    pub async fn migrate_start_postcopy(&self) -> Result<(), QmpError> {
        self.execute_unit("migrate-start-postcopy", None).await
    }

    /// `migrate-pause`: pause a post-copy migration (e.g. to move it to another network).
    pub async fn migrate_pause(&self) -> Result<(), QmpError> {
        self.execute_unit("migrate-pause", None).await
    }

    /// `migrate-pause` out of band (see [`QmpClient::execute_oob`]).
    pub async fn migrate_pause_oob(&self) -> Result<(), QmpError> {
        self.execute_oob("migrate-pause", None).await.map(|_| ())
    }

    /// `migrate-recover` out of band (see [`QmpClient::execute_oob`]).
    pub async fn migrate_recover_oob(&self, uri: &str) -> Result<(), QmpError> {
        self.execute_oob("migrate-recover", Some(json!({ "uri": uri })))
            .await
            .map(|_| ())
    }

    /// `migrate-recover` on the destination of a paused post-copy migration: listen on `uri`.
    pub async fn migrate_recover(&self, uri: &str) -> Result<(), QmpError> {
        self.execute_unit("migrate-recover", Some(json!({ "uri": uri })))
            .await
    }

    /// `migrate-continue`: leave the given paused state (`pre-switchover`).
    pub async fn migrate_continue(&self, state: MigrationStatus) -> Result<(), QmpError> {
        self.execute_unit("migrate-continue", Some(json!({ "state": state })))
            .await
    }

    /// `calc-dirty-rate`: start measuring the guest's dirty page rate over `calc_time_s`
    /// seconds; returns at once (QEMU measures in a thread). Read the result with
    /// [`QmpClient::query_dirty_rate`] once its status is `measured`. QEMU refuses while a
    /// measurement runs.
    pub async fn calc_dirty_rate(
        &self,
        calc_time_s: u64,
        mode: DirtyRateMeasureMode,
    ) -> Result<(), QmpError> {
        // Seconds, without `calc-time-unit`: that argument only exists since QEMU 8.2.
        self.execute_unit(
            "calc-dirty-rate",
            Some(json!({ "calc-time": calc_time_s, "mode": mode })),
        )
        .await
    }

    /// `query-dirty-rate`: the result of the most recent `calc-dirty-rate`.
    pub async fn query_dirty_rate(&self) -> Result<DirtyRateInfo, QmpError> {
        self.execute_no_args("query-dirty-rate").await
    }

    // -- CPUs, machines ------------------------------------------------------------------------

    /// `query-cpu-definitions`: CPU models, with what this host/accelerator cannot provide.
    pub async fn query_cpu_definitions(&self) -> Result<Vec<CpuDefinitionInfo>, QmpError> {
        self.execute_no_args("query-cpu-definitions").await
    }

    /// `query-cpu-model-expansion`.
    pub async fn query_cpu_model_expansion(
        &self,
        kind: CpuModelExpansionType,
        model: &CpuModelInfo,
    ) -> Result<CpuModelExpansionInfo, QmpError> {
        self.execute(
            "query-cpu-model-expansion",
            Some(&json!({ "type": kind, "model": model })),
        )
        .await
    }

    /// `query-machines`: machine types this binary provides.
    pub async fn query_machines(&self) -> Result<Vec<MachineInfo>, QmpError> {
        self.execute_no_args("query-machines").await
    }

    /// `query-cpus-fast`: vCPUs with their host thread ids.
    pub async fn query_cpus_fast(&self) -> Result<Vec<CpuInfoFast>, QmpError> {
        self.execute_no_args("query-cpus-fast").await
    }

    // -- Block ---------------------------------------------------------------------------------

    /// `query-block`: the guest's block devices.
    pub async fn query_block(&self) -> Result<Vec<BlockInfo>, QmpError> {
        self.execute_no_args("query-block").await
    }

    /// `query-named-block-nodes` with `flat: true` (no nested backing images).
    pub async fn query_named_block_nodes(&self) -> Result<Vec<BlockDeviceInfo>, QmpError> {
        self.execute("query-named-block-nodes", Some(&json!({ "flat": true })))
            .await
    }
}

fn to_args<T: serde::Serialize>(command: &str, args: &T) -> Result<Value, QmpError> {
    serde_json::to_value(args).map_err(|source| QmpError::Encode {
        command: command.into(),
        source,
    })
}
