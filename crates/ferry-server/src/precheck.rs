//! Gathers what the pre-migration checks need from the store and both agents, with short
//! timeouts so a dead host fails its checks instead of hanging the request, then runs the
//! pure [`crate::checks::run_checks`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::client::AgentClient;
use ferry_api::*;

use crate::checks::{run_checks, CheckInput};
use crate::core::Server;

/// Each agent call of the checks gets this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The bandwidth probe: at most this much data, for at most this long.
const PROBE_BYTES: u64 = 32 << 20;
const PROBE_MAX_MS: u64 = 400;
const PROBE_CONNECT_MS: u64 = 1000;

async fn within<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {}s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

/// A real connection from the source to the destination's migration address, with at
/// most `bytes` sent in at most `max_ms` (the bandwidth estimate). Also how post-copy
/// recovery sees that a broken link is back.
pub(crate) async fn probe_link(
    (source_name, source): (&str, &AgentClient),
    (dest_name, dest): (&str, &AgentClient),
    bytes: u64,
    max_ms: u64,
) -> Result<ProbeSendResponse, String> {
    let listen = within(
        &format!("{dest_name} (probe listener)"),
        dest.probe_listen(&ProbeListenRequest {
            peer_host: Some(source_name.to_string()),
        }),
    )
    .await?;
    within(
        &format!("{source_name} (probe)"),
        source.probe_send(&ProbeSendRequest {
            target: listen.advertised,
            peer_host: Some(dest_name.to_string()),
            bytes,
            max_ms,
            connect_timeout_ms: PROBE_CONNECT_MS,
        }),
    )
    .await
}

impl Server {
    /// The check report for moving `req.vm` to `req.to`. Errors only for requests that name
    /// nothing (unknown VM or host); everything else is a check in the report.
    pub async fn check_migration(
        self: &Arc<Self>,
        req: &MigrateRequest,
    ) -> Result<CheckReport, ApiError> {
        self.check_queued_migration(req, None).await
    }

    /// [`Server::check_migration`] for a migration already recorded (`own`: it waited in
    /// the queue and its turn came), so its own claim on the VM is not taken for another
    /// migration in flight.
    pub async fn check_queued_migration(
        self: &Arc<Self>,
        req: &MigrateRequest,
        own: Option<uuid::Uuid>,
    ) -> Result<CheckReport, ApiError> {
        let started = Instant::now();
        let vm = self.find_vm(&req.vm)?;
        let to = req
            .to
            .as_deref()
            .ok_or_else(|| ApiError::internal("the destination was not placed"))?;
        validate_name("host name", to)?;
        let dest = self.host(to)?;
        let source = self.host(&vm.host)?;
        let source_agent = self.agent_client(&source)?;
        let dest_agent = self.agent_client(&dest)?;

        let mode = req.options.mode;
        let source_state = async {
            match tokio::time::timeout(CALL_TIMEOUT, source_agent.vm(&vm.spec.name)).await {
                Ok(Ok(rt)) => Some(rt.state),
                // The agent answered: no QEMU runs the VM there (a stopped VM is forgotten).
                Ok(Err(ferry_api::client::ClientError::Api(e)))
                    if e.code == ErrorCode::NotFound =>
                {
                    Some(VmState::Stopped)
                }
                _ => None,
            }
        };
        let storage = async {
            match tokio::time::timeout(CALL_TIMEOUT * 2, self.storage_plan(&vm, &dest)).await {
                Ok(r) => r.map_err(|e| e.message),
                Err(_) => Err("the hosts did not list their disks in time".into()),
            }
        };
        // Only a live migration streams over the migration network; a probe of the same
        // pair from a recent check is reused (the link's rate does not change by the
        // second, and a migration that finds the link gone still rolls back safely).
        let fresh = self.fresh_probe(&source.name, &dest.name);
        let probe_age_s = fresh.as_ref().map(|(age, _)| age.as_secs());
        let probe = async {
            if mode != MigrationMode::Live {
                return Err(format!("not probed: a {mode} migration does not use it"));
            }
            if let Some((_, r)) = fresh {
                return Ok(r);
            }
            let probe = probe_link(
                (&source.name, &source_agent),
                (&dest.name, &dest_agent),
                PROBE_BYTES,
                PROBE_MAX_MS,
            )
            .await;
            if let Ok(r) = &probe {
                self.record_probe(&source.name, &dest.name, r);
            }
            probe
        };
        // The three gatherings are independent: at once, not one after the other.
        let (source_state, storage, probe) = tokio::join!(source_state, storage, probe);

        let (mut incoming_memory_mib, mut incoming_vcpus) = (0, 0);
        for m in self.store.unfinished_migrations()? {
            // A cold migration moves a stopped VM: it holds no memory there.
            let holds = m.options.mode != MigrationMode::Cold;
            if holds && m.destination == dest.name && m.vm != vm.spec.name {
                if let Ok(other) = self.find_vm(&m.vm) {
                    incoming_memory_mib += other.spec.memory_mib;
                    incoming_vcpus += other.spec.vcpus;
                }
            }
        }
        let checks = run_checks(&CheckInput {
            mode,
            vm: &vm,
            source_state,
            migrating: vm.migration.is_some_and(|id| Some(id) != own),
            source: &source,
            dest: &dest,
            incoming_memory_mib,
            incoming_vcpus,
            storage,
            probe,
            probe_age_s,
        });
        Ok(CheckReport {
            vm: vm.spec.name.clone(),
            source: source.name.clone(),
            destination: dest.name.clone(),
            checks,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }
}
