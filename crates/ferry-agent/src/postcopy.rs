//! Post-copy recovery on one QEMU: after the switch to post-copy the guest runs on the
//! destination and the source holds the pages not sent yet, so a broken migration link
//! must never end the migration. Either side can be told to drop the connection
//! (`migrate-pause`, also what QEMU does itself when it sees the socket fail); the
//! destination then listens again (`migrate-recover`) and the source reconnects
//! (`migrate` with `resume`), and the page stream carries on where it stopped.
//!
//! ```text
//!   source                                     destination
//!   postcopy-active ── link breaks / pause ──▶ postcopy-active
//!        │ migrate-pause                             │ migrate-pause
//!   postcopy-paused                            postcopy-paused
//!        │                                           │ migrate-recover tcp:MIG:PORT
//!        │                                     postcopy-recover (listening)
//!        │ migrate uri=tcp:MIG:PORT resume=true      │
//!   postcopy-recover-setup ─── handshake ────▶ postcopy-recover
//!   postcopy-active  ◀── pages flow again ───▶ postcopy-active ──▶ completed
//! ```

use std::net::IpAddr;

use crate::error::AgentError;
use ferry_qmp::MigrationStatus;

use crate::runtime::{qmp_err, QemuVm};

/// What a QEMU in post-copy can do to survive a broken link.
#[allow(async_fn_in_trait)]
pub trait PostcopyRecoverable {
    /// Drop the migration connection; a side already paused stays paused.
    async fn pause_postcopy(&self) -> Result<(), AgentError>;
    /// Destination: listen for the source again on `address`:`port` (0: any free port);
    /// returns the port. A destination already listening answers with its port.
    async fn recover_incoming(&self, address: IpAddr, port: u16) -> Result<u16, AgentError>;
    /// Source: reconnect to the destination's recovery listener at `uri`.
    async fn resume_outgoing(&self, uri: &str) -> Result<(), AgentError>;
}

impl QemuVm {
    async fn migration_state(&self) -> Result<(Option<MigrationStatus>, Option<u16>), AgentError> {
        // Short: on a stuck destination an in-band command waits for the main loop.
        let info = self
            .qmp
            .with_command_timeout(std::time::Duration::from_secs(2))
            .query_migrate()
            .await
            .map_err(|e| qmp_err("query-migrate", e))?;
        let port = info.listening_port();
        Ok((info.status, port))
    }
}

fn not_in_postcopy(status: Option<MigrationStatus>) -> AgentError {
    let shown = status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "none".into());
    AgentError::refused(format!("the migration is '{shown}', not in post-copy"))
}

impl PostcopyRecoverable for QemuVm {
    async fn pause_postcopy(&self) -> Result<(), AgentError> {
        if let Some(oob) = &self.oob_qmp {
            // Out of band first: on a destination whose guest waits for a page, the main
            // loop (and with it every in-band command) may be stuck until the link is back.
            match oob.migrate_pause_oob().await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!("out-of-band migrate-pause refused: {e}"),
            }
        }
        match self.migration_state().await?.0 {
            Some(MigrationStatus::PostcopyPaused) => Ok(()),
            Some(
                MigrationStatus::PostcopyActive
                | MigrationStatus::PostcopyRecover
                | MigrationStatus::PostcopyRecoverSetup,
            ) => self
                .qmp
                .migrate_pause()
                .await
                .map_err(|e| qmp_err("migrate-pause", e)),
            other => Err(not_in_postcopy(other)),
        }
    }

    async fn recover_incoming(&self, address: IpAddr, port: u16) -> Result<u16, AgentError> {
        let Some(oob) = &self.oob_qmp else {
            return self.recover_incoming_in_band(address, port).await;
        };
        // Out of band (see `pause_postcopy`), so the port cannot be read back from
        // `query-migrate`: with no fixed migration port, take a free one here.
        let port = match port {
            0 => std::net::TcpListener::bind((address, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| {
                    AgentError::internal(format!("no free port on {address} for the recovery: {e}"))
                })?,
            p => p,
        };
        oob.migrate_recover_oob(&tcp_uri(address, port))
            .await
            .map_err(|e| qmp_err("migrate-recover", e))?;
        Ok(port)
    }

    async fn resume_outgoing(&self, uri: &str) -> Result<(), AgentError> {
        match self.migration_state().await?.0 {
            Some(MigrationStatus::PostcopyPaused) => self
                .qmp
                .migrate(uri, true)
                .await
                .map_err(|e| qmp_err("migrate (resume)", e)),
            other => Err(AgentError::refused(format!(
                "only a paused post-copy can be resumed; this one is '{}'",
                other
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "none".into())
            ))),
        }
    }
}

impl QemuVm {
    /// Without an out-of-band monitor: check the state, listen, read the port back.
    async fn recover_incoming_in_band(
        &self,
        address: IpAddr,
        port: u16,
    ) -> Result<u16, AgentError> {
        match self.migration_state().await? {
            (Some(MigrationStatus::PostcopyPaused), _) => {}
            // Listening from an earlier attempt whose source never connected.
            (Some(MigrationStatus::PostcopyRecover), Some(listening)) => return Ok(listening),
            (other, _) => return Err(not_in_postcopy(other)),
        }
        self.qmp
            .migrate_recover(&tcp_uri(address, port))
            .await
            .map_err(|e| qmp_err("migrate-recover", e))?;
        self.migration_state().await?.1.ok_or_else(|| {
            AgentError::internal("QEMU listens for the recovery but did not say on which port")
        })
    }
}

fn tcp_uri(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(a) => format!("tcp:{a}:{port}"),
        IpAddr::V6(a) => format!("tcp:[{a}]:{port}"),
    }
}
