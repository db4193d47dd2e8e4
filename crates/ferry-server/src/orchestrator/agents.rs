//! What the orchestrator needs from the host agents, as a trait with its own error type:
//! the orchestrator depends on this and nothing else of the server's plumbing, so its
//! every phase and fault is unit-tested against a scripted fake (see `fake.rs`), while
//! [`HttpAgents`] talks to the real agents.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_api::client::{AgentClient, ClientError};
use ferry_api::*;

use crate::store::Store;

/// Why an agent call failed, as far as the orchestrator's decisions care.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The server has no record of the host (a bug, or the host was removed).
    #[error("host {host} is not registered")]
    UnknownHost { host: String },
    /// Nothing answered in time: the agent, its host or the network is down. Nothing is
    /// known about what the call did.
    #[error("host {host} did not answer: {reason}")]
    Unreachable { host: String, reason: String },
    /// The agent answered: what was named is not there (e.g. no QEMU for the VM).
    #[error("host {host}: {reason}")]
    NotFound { host: String, reason: String },
    /// The agent answered and refused (a conflict with its state, or a bad request).
    #[error("host {host} refused: {reason}")]
    Refused { host: String, reason: String },
    /// The agent answered with a failure of its own (or something unreadable).
    #[error("host {host} failed: {reason}")]
    Failed { host: String, reason: String },
}

impl AgentError {
    pub fn from_client(host: &str, e: ClientError) -> AgentError {
        let host = host.to_string();
        match e {
            ClientError::Unreachable { reason, .. } => AgentError::Unreachable { host, reason },
            ClientError::Api(a) => match a.code {
                ErrorCode::NotFound => AgentError::NotFound {
                    host,
                    reason: a.message,
                },
                ErrorCode::Conflict | ErrorCode::BadRequest => AgentError::Refused {
                    host,
                    reason: a.message,
                },
                _ => AgentError::Failed {
                    host,
                    reason: a.message,
                },
            },
            ClientError::Decode { reason, .. } => AgentError::Failed { host, reason },
        }
    }

    /// The agent answered that what was asked about is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, AgentError::NotFound { .. })
    }

    /// Nothing is known: no answer, or no record of the host.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            AgentError::Unreachable { .. } | AgentError::UnknownHost { .. }
        )
    }
}

pub type AgentResult<T> = Result<T, AgentError>;

/// The agent operations a migration uses, by host name.
#[async_trait]
pub trait Agents: Send + Sync {
    /// Destination: start QEMU waiting for the stream (and export copy targets).
    async fn prepare_incoming(
        &self,
        host: &str,
        req: &IncomingRequest,
    ) -> AgentResult<IncomingResponse>;
    /// Source: mirror local-pool disks to the destination's export.
    async fn start_disk_copy(
        &self,
        host: &str,
        vm: &str,
        req: &DiskCopyRequest,
    ) -> AgentResult<AgentMigrationStatus>;
    /// Source: start sending memory.
    async fn start_outgoing(
        &self,
        host: &str,
        vm: &str,
        req: &OutgoingRequest,
    ) -> AgentResult<AgentMigrationStatus>;
    /// Either side: QEMU's migration status and the VM's state.
    async fn migration_status(&self, host: &str, vm: &str) -> AgentResult<AgentMigrationStatus>;
    /// Source or destination: the migration status once QEMU reports a change (a new
    /// status or pass), or after `wait_ms` (at most 1 s): a long poll.
    async fn migration_status_after(
        &self,
        host: &str,
        vm: &str,
        wait_ms: u64,
    ) -> AgentResult<AgentMigrationStatus> {
        let _ = wait_ms;
        self.migration_status(host, vm).await
    }
    /// Source: a controller step (throttle, post-copy).
    async fn tune(
        &self,
        host: &str,
        vm: &str,
        req: &TuneRequest,
    ) -> AgentResult<AgentMigrationStatus>;
    /// Source: cancel the stream and make sure the guest runs (refused once completed).
    async fn cancel_outgoing(&self, host: &str, vm: &str) -> AgentResult<()>;
    /// Source whose QEMU completed: resume it (an operator's resolution only).
    async fn reclaim(&self, host: &str, vm: &str) -> AgentResult<()>;
    /// Either side: kill the VM's QEMU (if any) and forget it, with partial copy targets.
    async fn remove(&self, host: &str, vm: &str) -> AgentResult<()>;
    /// Source: shut down a QEMU that completed the stream (refused otherwise).
    async fn hand_over(&self, host: &str, vm: &str) -> AgentResult<()>;
    /// Destination: announce the VM's MACs.
    async fn announce(&self, host: &str, vm: &str) -> AgentResult<()>;
    /// QEMU's checkpoints of the VM's last switch-over pause on `host`.
    async fn pause_checkpoints(&self, host: &str, vm: &str) -> AgentResult<Vec<PauseCheckpoint>>;
    /// Either side after the switch-over: what its taps showed (waits up to `wait_ms` for
    /// the side to settle: the source's drain to end, the destination's first frame).
    async fn frame_report(&self, host: &str, vm: &str, wait_ms: u64) -> AgentResult<FrameReport>;
    async fn delete_disk(&self, host: &str, pool: &str, image: &str) -> AgentResult<()>;
    /// Post-copy: drop the connection (either side).
    async fn pause_postcopy(&self, host: &str, vm: &str) -> AgentResult<AgentMigrationStatus>;
    /// Post-copy, destination: listen again.
    async fn recover_incoming(
        &self,
        host: &str,
        vm: &str,
        req: &RecoverRequest,
    ) -> AgentResult<IncomingResponse>;
    /// Post-copy, source: reconnect.
    async fn resume_outgoing(
        &self,
        host: &str,
        vm: &str,
        req: &ResumeRequest,
    ) -> AgentResult<AgentMigrationStatus>;
    /// A real connection from `source` to `destination`'s migration address carrying up
    /// to `bytes` in `max_ms`.
    async fn probe_link(
        &self,
        source: &str,
        destination: &str,
        bytes: u64,
        max_ms: u64,
    ) -> AgentResult<ProbeSendResponse>;

    // Quick and cold migrations. The defaults refuse: a cluster (or a test fake) that does
    // not offer them fails such a migration before anything is touched.

    /// Destination: a QEMU waiting (vCPUs held) for a quick migration's state file.
    async fn quick_incoming(&self, host: &str, req: &QuickIncomingRequest) -> AgentResult<()> {
        let _ = req;
        Err(unsupported(host, "quick migration"))
    }
    /// Source: pause the guest and save it to the state file.
    async fn quick_save(
        &self,
        host: &str,
        vm: &str,
        req: &QuickTransferRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        let _ = (vm, req);
        Err(unsupported(host, "quick migration"))
    }
    /// Destination: load the state file.
    async fn quick_restore(
        &self,
        host: &str,
        vm: &str,
        req: &QuickTransferRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        let _ = (vm, req);
        Err(unsupported(host, "quick migration"))
    }
    /// Destination: start the guest whose state loaded completely.
    async fn quick_resume(&self, host: &str, vm: &str) -> AgentResult<()> {
        let _ = vm;
        Err(unsupported(host, "quick migration"))
    }
    /// Either side: delete the state file (false: it was not there).
    async fn quick_discard(&self, host: &str, file: &QuickStateFile) -> AgentResult<bool> {
        let _ = file;
        Err(unsupported(host, "quick migration"))
    }
    /// Destination: an empty target for one disk, exported for the source.
    async fn cold_receive(
        &self,
        host: &str,
        id: uuid::Uuid,
        req: &ColdReceiveRequest,
    ) -> AgentResult<ColdReceiveResponse> {
        let _ = (id, req);
        Err(unsupported(host, "cold migration"))
    }
    /// Source: copy one disk into the destination's export.
    async fn cold_send(
        &self,
        host: &str,
        id: uuid::Uuid,
        req: &ColdSendRequest,
    ) -> AgentResult<ColdStatus> {
        let _ = (id, req);
        Err(unsupported(host, "cold migration"))
    }
    /// Either side: checksum one image.
    async fn cold_checksum(
        &self,
        host: &str,
        id: uuid::Uuid,
        req: &ColdDiskRequest,
    ) -> AgentResult<ColdStatus> {
        let _ = (id, req);
        Err(unsupported(host, "cold migration"))
    }
    async fn cold_status(&self, host: &str, id: uuid::Uuid) -> AgentResult<ColdStatus> {
        let _ = id;
        Err(unsupported(host, "cold migration"))
    }
    /// Stop the migration's jobs and delete the targets it made there.
    async fn cold_discard(&self, host: &str, id: uuid::Uuid) -> AgentResult<ColdCleanup> {
        let _ = id;
        Err(unsupported(host, "cold migration"))
    }
    /// Stop the migration's jobs and forget it (targets stay: the VM's disks now).
    async fn cold_finish(&self, host: &str, id: uuid::Uuid) -> AgentResult<ColdCleanup> {
        let _ = id;
        Err(unsupported(host, "cold migration"))
    }
}

fn unsupported(host: &str, what: &str) -> AgentError {
    AgentError::Refused {
        host: host.to_string(),
        reason: format!("{what} is not offered here"),
    }
}

/// What one side reports about the VM, as recovery reads it ([`SideFacts`]): one status
/// call bounded by `within`; no answer is `Unreachable`, "no such VM" is `Absent`.
pub async fn side_facts(
    agents: &dyn Agents,
    host: &str,
    vm: &str,
    within: Duration,
) -> (SideFacts, Option<AgentMigrationStatus>) {
    match tokio::time::timeout(within, agents.migration_status(host, vm)).await {
        Ok(Ok(status)) => (status.facts(), Some(status)),
        Ok(Err(e)) if e.is_not_found() => (SideFacts::Absent, None),
        Ok(Err(AgentError::Refused { .. } | AgentError::Failed { .. })) => {
            (SideFacts::Unresponsive, None)
        }
        Ok(Err(_)) | Err(_) => (SideFacts::Unreachable, None),
    }
}

/// The real agents, over HTTP, found by their registered URL (read afresh for every call:
/// a restarted agent may come back on another port).
pub struct HttpAgents {
    store: Arc<Store>,
    /// The server's certificate and trusted CAs, read per call (a CA rotation changes them).
    pki: Option<Arc<crate::pki::ServerPki>>,
}

/// Calls that only read or flip a flag: a live agent answers these at once.
const QUICK: Duration = Duration::from_secs(5);
/// Calls that start QEMU, create disks or wait for QEMU to settle.
const SLOW: Duration = Duration::from_secs(120);

impl HttpAgents {
    pub fn new(store: Arc<Store>, pki: Option<Arc<crate::pki::ServerPki>>) -> HttpAgents {
        HttpAgents { store, pki }
    }

    fn client(&self, host: &str, timeout: Duration) -> AgentResult<AgentClient> {
        let h = self
            .store
            .host(host)
            .map_err(|e| AgentError::Failed {
                host: host.to_string(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| AgentError::UnknownHost {
                host: host.to_string(),
            })?;
        let creds = match &self.pki {
            Some(p) => ferry_api::client::Credentials::daemon(p.material()),
            None => ferry_api::client::Credentials::default(),
        };
        AgentClient::connect(&h.url, host, &creds, timeout)
            .map_err(|e| AgentError::from_client(host, e))
    }
}

/// One call: the client for `host` with `timeout`, then `f`, errors typed.
macro_rules! call {
    ($self:ident, $host:expr, $timeout:expr, |$c:ident| $body:expr) => {{
        let $c = $self.client($host, $timeout)?;
        $body.await.map_err(|e| AgentError::from_client($host, e))
    }};
}

#[async_trait]
impl Agents for HttpAgents {
    async fn prepare_incoming(
        &self,
        host: &str,
        req: &IncomingRequest,
    ) -> AgentResult<IncomingResponse> {
        call!(self, host, SLOW, |c| c.prepare_incoming(req))
    }
    async fn start_disk_copy(
        &self,
        host: &str,
        vm: &str,
        req: &DiskCopyRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        call!(self, host, SLOW, |c| c.start_disk_copy(vm, req))
    }
    async fn start_outgoing(
        &self,
        host: &str,
        vm: &str,
        req: &OutgoingRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        call!(self, host, SLOW, |c| c.start_outgoing(vm, req))
    }
    async fn migration_status(&self, host: &str, vm: &str) -> AgentResult<AgentMigrationStatus> {
        call!(self, host, QUICK, |c| c.migration_status(vm))
    }
    async fn migration_status_after(
        &self,
        host: &str,
        vm: &str,
        wait_ms: u64,
    ) -> AgentResult<AgentMigrationStatus> {
        call!(self, host, QUICK, |c| c.migration_status_after(vm, wait_ms))
    }
    async fn tune(
        &self,
        host: &str,
        vm: &str,
        req: &TuneRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        call!(self, host, QUICK, |c| c.tune(vm, req))
    }
    async fn cancel_outgoing(&self, host: &str, vm: &str) -> AgentResult<()> {
        call!(self, host, SLOW, |c| c.cancel_outgoing(vm)).map(|_| ())
    }
    async fn reclaim(&self, host: &str, vm: &str) -> AgentResult<()> {
        call!(self, host, SLOW, |c| c.reclaim(vm)).map(|_| ())
    }
    async fn remove(&self, host: &str, vm: &str) -> AgentResult<()> {
        call!(self, host, SLOW, |c| c.remove(vm)).map(|_| ())
    }
    async fn hand_over(&self, host: &str, vm: &str) -> AgentResult<()> {
        call!(self, host, SLOW, |c| c.hand_over(vm)).map(|_| ())
    }
    async fn announce(&self, host: &str, vm: &str) -> AgentResult<()> {
        call!(self, host, QUICK, |c| c.announce(vm)).map(|_| ())
    }
    async fn pause_checkpoints(&self, host: &str, vm: &str) -> AgentResult<Vec<PauseCheckpoint>> {
        call!(self, host, QUICK, |c| c.pause_checkpoints(vm))
    }
    async fn frame_report(&self, host: &str, vm: &str, wait_ms: u64) -> AgentResult<FrameReport> {
        let within = QUICK + Duration::from_millis(wait_ms);
        call!(self, host, within, |c| c.frame_report(vm, wait_ms))
    }
    async fn delete_disk(&self, host: &str, pool: &str, image: &str) -> AgentResult<()> {
        call!(self, host, SLOW, |c| c.delete_disk(pool, image)).map(|_| ())
    }
    async fn pause_postcopy(&self, host: &str, vm: &str) -> AgentResult<AgentMigrationStatus> {
        call!(self, host, QUICK, |c| c.pause_postcopy(vm))
    }
    async fn recover_incoming(
        &self,
        host: &str,
        vm: &str,
        req: &RecoverRequest,
    ) -> AgentResult<IncomingResponse> {
        call!(self, host, QUICK, |c| c.recover_incoming(vm, req))
    }
    async fn resume_outgoing(
        &self,
        host: &str,
        vm: &str,
        req: &ResumeRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        call!(self, host, QUICK, |c| c.resume_outgoing(vm, req))
    }
    async fn quick_incoming(&self, host: &str, req: &QuickIncomingRequest) -> AgentResult<()> {
        call!(self, host, SLOW, |c| c.quick_incoming(req)).map(|_| ())
    }
    async fn quick_save(
        &self,
        host: &str,
        vm: &str,
        req: &QuickTransferRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        call!(self, host, SLOW, |c| c.quick_save(vm, req))
    }
    async fn quick_restore(
        &self,
        host: &str,
        vm: &str,
        req: &QuickTransferRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        call!(self, host, SLOW, |c| c.quick_restore(vm, req))
    }
    async fn quick_resume(&self, host: &str, vm: &str) -> AgentResult<()> {
        call!(self, host, SLOW, |c| c.quick_resume(vm)).map(|_| ())
    }
    async fn quick_discard(&self, host: &str, file: &QuickStateFile) -> AgentResult<bool> {
        call!(self, host, QUICK, |c| c.quick_discard(file)).map(|r| r.deleted)
    }
    async fn cold_receive(
        &self,
        host: &str,
        id: uuid::Uuid,
        req: &ColdReceiveRequest,
    ) -> AgentResult<ColdReceiveResponse> {
        call!(self, host, SLOW, |c| c.cold_receive(id, req))
    }
    async fn cold_send(
        &self,
        host: &str,
        id: uuid::Uuid,
        req: &ColdSendRequest,
    ) -> AgentResult<ColdStatus> {
        call!(self, host, SLOW, |c| c.cold_send(id, req))
    }
    async fn cold_checksum(
        &self,
        host: &str,
        id: uuid::Uuid,
        req: &ColdDiskRequest,
    ) -> AgentResult<ColdStatus> {
        call!(self, host, SLOW, |c| c.cold_checksum(id, req))
    }
    async fn cold_status(&self, host: &str, id: uuid::Uuid) -> AgentResult<ColdStatus> {
        call!(self, host, QUICK, |c| c.cold_status(id))
    }
    async fn cold_discard(&self, host: &str, id: uuid::Uuid) -> AgentResult<ColdCleanup> {
        call!(self, host, SLOW, |c| c.cold_discard(id))
    }
    async fn cold_finish(&self, host: &str, id: uuid::Uuid) -> AgentResult<ColdCleanup> {
        call!(self, host, SLOW, |c| c.cold_finish(id))
    }
    async fn probe_link(
        &self,
        source: &str,
        destination: &str,
        bytes: u64,
        max_ms: u64,
    ) -> AgentResult<ProbeSendResponse> {
        let listen = call!(self, destination, QUICK, |c| c.probe_listen(
            &ProbeListenRequest {
                peer_host: Some(source.to_string()),
            }
        ))?;
        call!(self, source, QUICK, |c| c.probe_send(&ProbeSendRequest {
            target: listen.advertised,
            peer_host: Some(destination.to_string()),
            bytes,
            max_ms,
            connect_timeout_ms: 1000,
        }))
    }
}
