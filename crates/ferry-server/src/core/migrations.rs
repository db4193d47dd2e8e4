//! Migrations as the core sees them: the request checked and admitted (pre-migration
//! checks, destination capacity claimed in the same transaction as the VM), the run handed
//! to the [`crate::orchestrator`], and an operator's cancel.

use std::sync::Arc;

use chrono::Utc;

use ferry_api::*;
use ferry_migration::convergence::initial_target_ms;
use uuid::Uuid;

use super::{summary_of_checks, Server};
use crate::admission;
use crate::storage_plan::{plan_storage, PlannedCopy, StorageView};
use crate::store::NewEvent;

/// The pre-check's bandwidth probe, bytes/s (0 if it did not measure).
/// The link rate the controller may count on: what the pre-check's probe measured, but
/// never more than the migration's own bandwidth cap (QEMU will not send faster).
fn link_estimate(report: &CheckReport, options: &MigrationOptions) -> u64 {
    let probed = report
        .checks
        .iter()
        .find(|c| c.name == "migration_network.bandwidth")
        .and_then(|c| c.data.get("bytes_per_s"))
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    match options.max_bandwidth_mib {
        Some(cap) if cap > 0 => probed.min(cap << 20),
        _ => probed,
    }
}

impl Server {
    pub fn migration(&self, id: Uuid) -> Result<Migration, ApiError> {
        let m = self
            .store
            .migration(id)?
            .ok_or_else(|| ApiError::not_found(format!("no migration with id {id}")))?;
        let mut m = self
            .with_standing(vec![m])?
            .pop()
            .ok_or_else(|| ApiError::internal("the migration vanished"))?;
        if let Some(reason) = self.orchestrator.stalled(id) {
            // The run stopped without settling it: say so with the record.
            m.error = Some(format!(
                "orchestration stopped: {reason}; the migration stays {} until the server \
                 restarts and settles it",
                m.phase
            ));
        }
        Ok(m)
    }

    /// Runs the pre-migration checks, refuses on any failure (and on warnings unless
    /// forced) with the report attached, claims the VM and the destination's capacity in
    /// one transaction, then starts the migration in the background.
    pub(super) async fn start_migration(
        self: &Arc<Self>,
        actor: &str,
        mut req: MigrateRequest,
        operation: Option<Uuid>,
    ) -> Result<Migration, ApiError> {
        req.options = req.options.with_defaults(&self.migration_defaults()?);
        req.options.validate()?;
        let priority = req.priority.unwrap_or(DEFAULT_PRIORITY);
        validate_priority(priority)?;
        let vm = self.find_vm(&req.vm)?;
        let to = req
            .to
            .clone()
            .ok_or_else(|| ApiError::internal("the destination was not placed"))?;
        validate_name("host name", &to)?;
        let dest = self.host(&to)?;
        if dest.name == vm.host {
            return Err(ApiError::bad_request(format!(
                "VM '{}' already runs on {}; choose another destination",
                vm.spec.name, vm.host
            )));
        }
        self.refuse_if_migrating(&vm)?;
        let report = self.check_migration(&req).await?;
        let details = serde_json::to_value(&report).unwrap_or_default();
        match report.verdict() {
            Verdict::Fail => {
                return Err(ApiError::conflict(format!(
                    "pre-migration checks failed: {}",
                    report.summary(Verdict::Fail)
                ))
                .with_details(details))
            }
            Verdict::Warn if !req.options.force => {
                return Err(ApiError::conflict(format!(
                    "pre-migration checks warn (use --force to go on): {}",
                    report.summary(Verdict::Warn)
                ))
                .with_details(details))
            }
            _ => {}
        }
        let mode = req.options.mode;
        let copies = self.storage_plan(&vm, &dest).await?;
        let quick = match mode {
            MigrationMode::Quick => {
                if !copies.is_empty() {
                    return Err(ApiError::conflict(
                        "quick migration does not copy disks, and this VM has disks on local pools",
                    ));
                }
                let source = self.host(&vm.host)?;
                let pool = crate::checks_modes::state_pool(&vm.spec, &source, &dest)
                    .map_err(ApiError::conflict)?;
                Some(Box::new(QuickRun {
                    pool,
                    ..Default::default()
                }))
            }
            _ => None,
        };
        let cold = (mode == MigrationMode::Cold).then(|| {
            Box::new(ColdRun {
                copied: vec![false; copies.len()],
                verified: vec![false; copies.len()],
                ..Default::default()
            })
        });
        if mode == MigrationMode::Live
            && !copies.is_empty()
            && req.options.postcopy.unwrap_or_default() != PostcopyPolicy::Never
        {
            // Post-copy would start the guest on the destination before its disks finish.
            return Err(ApiError::bad_request(
                "post-copy cannot be combined with copying local disks; migrate with postcopy \
                 never, or move the disks to shared storage first",
            ));
        }
        let now = Utc::now();
        let mut m = Migration {
            id: Uuid::new_v4(),
            vm: vm.spec.name.clone(),
            source: vm.host.clone(),
            destination: dest.name.clone(),
            phase: Phase::Pending,
            options: req.options.clone(),
            stream_uri: None,
            addresses: None,
            progress: None,
            report: None,
            error: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            run: RunState {
                copies,
                ram_mib: vm.spec.memory_mib,
                controller: ConvergenceHistory {
                    target_ms: initial_target_ms(
                        &req.options.convergence_policy(vm.spec.memory_mib),
                    ),
                    ..ConvergenceHistory::with_link_estimate(link_estimate(&report, &req.options))
                },
                quick,
                cold,
                parts: TimeParts {
                    checks_ms: report.elapsed_ms,
                    ..Default::default()
                },
                ..Default::default()
            },
            attention: None,
            priority,
            operation,
            queue: None,
        };
        let (to, spec) = (&dest.name, &vm.spec);
        let limits = self.store.limits()?;
        self.store.begin_migration(
            &mut m,
            &|view| {
                if mode == MigrationMode::Cold {
                    // A stopped VM takes nothing on the destination until it starts there
                    // (and is admitted then).
                    Ok(())
                } else {
                    admission::admit(view, to, spec)
                }
            },
            &limits,
        )?;
        self.event(NewEvent {
            actor: actor.to_string(),
            kind: EventKind::MigrationCheck,
            vm: Some(m.vm.clone()),
            host: Some(m.destination.clone()),
            migration: Some(m.id),
            outcome: Some(Outcome::Ok),
            message: summary_of_checks(&report),
            data: details,
        });
        self.after_admission(&m)
    }

    /// What happens to each of the VM's disks (see [`crate::storage_plan`]), from the
    /// hosts' inventories and the image lists of the pools the VM uses.
    pub async fn storage_plan(&self, vm: &Vm, dest: &Host) -> Result<Vec<PlannedCopy>, ApiError> {
        if vm.spec.disks.is_empty() {
            return Ok(Vec::new());
        }
        let source = self.host(&vm.host)?;
        let mut pools: Vec<&str> = vm.spec.disks.iter().map(|d| d.pool.as_str()).collect();
        pools.sort();
        pools.dedup();
        let local: Vec<&str> = pools
            .into_iter()
            .filter(|p| {
                source
                    .inventory
                    .pools
                    .iter()
                    .any(|q| q.name == *p && !q.shared)
            })
            .collect();
        let (mut source_images, mut dest_images) = (Vec::new(), Vec::new());
        let mut dest_pools = dest.inventory.pools.clone();
        if !local.is_empty() {
            let src_agent = self.agent_client(&source)?;
            let dest_agent = self.agent_client(dest)?;
            // Free space right now, not as of the last heartbeat.
            dest_pools = dest_agent
                .pools()
                .await
                .map_err(|e| e.into_api_error(&format!("destination host {}", dest.name)))?;
            for pool in local {
                source_images.extend(
                    src_agent
                        .disks(pool)
                        .await
                        .map_err(|e| e.into_api_error(&format!("source host {}", source.name)))?,
                );
                if dest_pools.iter().any(|q| q.name == pool) {
                    dest_images.extend(dest_agent.disks(pool).await.map_err(|e| {
                        e.into_api_error(&format!("destination host {}", dest.name))
                    })?);
                }
            }
        }
        plan_storage(
            &vm.spec,
            &StorageView {
                host: &source.name,
                pools: &source.inventory.pools,
                images: &source_images,
            },
            &StorageView {
                host: &dest.name,
                pools: &dest_pools,
                images: &dest_images,
            },
        )
    }

    pub(super) fn cancel_migration(&self, id: Uuid, actor: &str) -> Result<Migration, ApiError> {
        if let Some(m) = self.cancel_queued(id, actor)? {
            return Ok(m);
        }
        let m = self.migration(id)?;
        if m.phase.is_terminal() {
            return Err(ApiError::conflict(format!(
                "migration {id} already ended ({})",
                m.phase
            )));
        }
        if m.phase == Phase::NeedsAttention {
            return Err(ApiError::conflict(format!(
                "migration {id} needs attention: {}; settle it with `ferry migration resolve \
                 {id} --keep source|destination`",
                m.attention
                    .as_ref()
                    .map(|a| a.reason.as_str())
                    .unwrap_or("no reason recorded")
            )));
        }
        if matches!(m.phase, Phase::SwitchingOver) {
            return Err(ApiError::conflict(format!(
                "migration {id} is switching over; it can no longer be cancelled"
            )));
        }
        if matches!(m.phase, Phase::PostCopy) || m.run.controller.step == ControllerStep::Postcopy {
            return Err(ApiError::conflict(format!(
                "migration {id} is in post-copy: the guest runs on {} while part of its memory \
                 is still on {}, so it can only finish, not be cancelled",
                m.destination, m.source
            )));
        }
        self.orchestrator.cancel(&m)?;
        self.migration(id)
    }

    pub fn events(&self, q: &EventQuery) -> Result<Vec<Event>, ApiError> {
        Ok(self.store.events(q)?)
    }
}
