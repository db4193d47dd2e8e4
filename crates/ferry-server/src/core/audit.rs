//! The audit trail's checkpoints, for verifiers and exports.

use ferry_api::audit::{Checkpoint, Checkpoints};
use ferry_api::*;

use super::Server;

impl Server {
    /// The key the checkpoints are signed with, and all of them.
    pub fn checkpoints(&self) -> Result<Checkpoints, ApiError> {
        let key = self
            .store
            .audit_public_key()
            .ok_or_else(|| ApiError::unavailable("this server has no audit signing key"))?;
        Ok(Checkpoints {
            public_key: key.to_hex(),
            checkpoints: self.store.checkpoints()?,
        })
    }

    /// Signs the log's current head (for a verifier or an export about to read it).
    pub fn checkpoint_now(&self) -> Result<Option<Checkpoint>, ApiError> {
        Ok(self.store.checkpoint_now()?)
    }
}
