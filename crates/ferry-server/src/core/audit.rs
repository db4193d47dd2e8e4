//! No audit record, no action; and the audit trail's checkpoints for verifiers.
//!
//! [`Server::handle`] records every state-changing request *before* it runs it, as a
//! `requested` event (same kind as the outcome, outcome `info`, `data.stage = "requested"`)
//! appended durably (synced to disk). If that append fails — disk full, database read-only
//! or locked, a refusing trigger — the request is refused with 503 and nothing is done.
//!
//! Why a record before rather than only the one after: the outcome is known only once the
//! action has taken effect (a VM started on a host, a migration begun), and by then it
//! cannot be taken back, so an outcome record that fails to write would leave a change
//! nobody can trace. The request record is written while refusing still costs nothing.
//! The outcome record stays best-effort (its failure is logged); a `requested` record with
//! no outcome after it says exactly that. Heartbeats (`Action::RegisterHost`) are not
//! recorded this way: they arrive every second per host and record themselves when
//! something changes.

use ferry_api::audit::{Checkpoint, Checkpoints};
use ferry_api::*;
use uuid::Uuid;

use super::Server;
use crate::store::NewEvent;

impl Server {
    /// Appends (durably) that `actor` asked for an action of `kind`, or refuses the action.
    pub(super) fn record_request(
        &self,
        actor: &str,
        kind: &EventKind,
        vm: &Option<String>,
        host: &Option<String>,
        migration: Option<Uuid>,
    ) -> Result<i64, ApiError> {
        let e = NewEvent {
            vm: vm.clone(),
            host: host.clone(),
            migration,
            outcome: Some(Outcome::Info),
            data: serde_json::json!({ "stage": "requested" }),
            ..NewEvent::new(actor, kind.clone(), format!("{kind} requested by {actor}"))
        };
        self.store.append_event_durable(&e).map_err(|err| {
            tracing::error!(%kind, actor, "refused: cannot append to the audit log: {err}");
            ApiError::unavailable(format!(
                "refused: the audit log cannot record this request, so it was not carried \
                 out ({err})"
            ))
        })
    }

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
