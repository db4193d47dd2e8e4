//! The agent routes of quick and cold migrations (see [`crate::modes`]).

use uuid::Uuid;

use super::{seg, AgentClient, ClientError};
use crate::*;

impl AgentClient {
    /// Destination: a QEMU waiting for a quick migration's state file.
    pub async fn quick_incoming(
        &self,
        req: &QuickIncomingRequest,
    ) -> Result<VmRuntime, ClientError> {
        self.http
            .post(
                &format!("/v1/vms/{}/quick/incoming", seg(&req.spec.name)),
                req,
            )
            .await
    }
    /// Source: pause the guest and save it to the state file.
    pub async fn quick_save(
        &self,
        name: &str,
        req: &QuickTransferRequest,
    ) -> Result<AgentMigrationStatus, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/quick/save", seg(name)), req)
            .await
    }
    /// Destination: load the state file.
    pub async fn quick_restore(
        &self,
        name: &str,
        req: &QuickTransferRequest,
    ) -> Result<AgentMigrationStatus, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/quick/restore", seg(name)), req)
            .await
    }
    /// Destination: the state loaded; start the guest.
    pub async fn quick_resume(&self, name: &str) -> Result<VmRuntime, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/quick/resume", seg(name)), &())
            .await
    }
    /// Either side: delete a quick migration's state file.
    pub async fn quick_discard(
        &self,
        file: &QuickStateFile,
    ) -> Result<QuickDiscardResponse, ClientError> {
        self.http.post("/v1/quick/discard", file).await
    }

    pub async fn cold_receive(
        &self,
        id: Uuid,
        req: &ColdReceiveRequest,
    ) -> Result<ColdReceiveResponse, ClientError> {
        self.http.post(&format!("/v1/cold/{id}/receive"), req).await
    }
    pub async fn cold_send(
        &self,
        id: Uuid,
        req: &ColdSendRequest,
    ) -> Result<ColdStatus, ClientError> {
        self.http.post(&format!("/v1/cold/{id}/send"), req).await
    }
    pub async fn cold_checksum(
        &self,
        id: Uuid,
        req: &ColdDiskRequest,
    ) -> Result<ColdStatus, ClientError> {
        self.http
            .post(&format!("/v1/cold/{id}/checksum"), req)
            .await
    }
    pub async fn cold_status(&self, id: Uuid) -> Result<ColdStatus, ClientError> {
        self.http.get(&format!("/v1/cold/{id}")).await
    }
    /// Stop everything of the migration here and delete the targets it created.
    pub async fn cold_discard(&self, id: Uuid) -> Result<ColdCleanup, ClientError> {
        self.http.post(&format!("/v1/cold/{id}/discard"), &()).await
    }
    /// The migration is over: stop its processes and forget it (targets stay: the VM's now).
    pub async fn cold_finish(&self, id: Uuid) -> Result<ColdCleanup, ClientError> {
        self.http.post(&format!("/v1/cold/{id}/finish"), &()).await
    }
}
