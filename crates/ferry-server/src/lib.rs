//! The Ferry server: the control plane.
//!
//! It owns desired state and history: hosts (registered by their agents), VMs and where
//! each runs, migrations as persisted state machines, and the append-only event log — all
//! in SQLite ([`store`]). Requests enter as [`core::Action`]s (one enum between the HTTP
//! front in [`api`] and the core, so the core is testable without HTTP); every
//! state-changing action is logged with its actor and outcome. Each migration runs as a
//! task in [`orchestrator`], which drives the two agents and persists every phase.

pub mod admission;
pub mod api;
pub mod balance;
pub mod baseline;
pub mod checks;
pub mod checks_modes;
pub mod cluster;
pub mod core;
pub mod estimate;
pub mod ha;
pub mod link_share;
pub mod load_book;
pub mod orchestrator;
pub mod pki;
pub mod placement;
pub mod precheck;
pub mod queue;
pub mod schedule;
pub mod storage_plan;
pub mod store;

pub use crate::core::{Action, ActionOutcome, Server, ServerConfig};

use std::sync::Arc;

/// Runs the server until SIGTERM/SIGINT.
pub async fn run(config: ServerConfig) -> Result<(), String> {
    let (listener, bound) = ferry_api::http::bind(config.listen).await?;
    let server = Arc::new(Server::open(config.clone()).map_err(|e| e.to_string())?);
    server.orchestrator.resume_unfinished();
    server.spawn_queue();
    server.resume_operations();
    server.spawn_balancer();
    server.spawn_ha_watch();
    server.spawn_scheduler();
    if let Some(file) = &config.ready_file {
        ferry_api::http::write_ready_file(file, &bound.to_string())?;
    }
    let tls = match &server.tls {
        Some(t) => Some(t.slot.clone()),
        None => {
            tracing::warn!(
                "running with --insecure: no TLS, no authentication, anyone who reaches \
                 {bound} controls the cluster; for development only"
            );
            None
        }
    };
    tracing::info!(%bound, data = %config.data_dir.display(), tls = tls.is_some(), "server listening");
    ferry_pki::serve(
        listener,
        tls,
        api::router(server),
        ferry_api::http::shutdown_signal(),
    )
    .await
    .map_err(|e| format!("HTTP server failed: {e}"))
}

/// A mutex's guard, also after a panic elsewhere poisoned it (what it guards is plain
/// bookkeeping, consistent at every unlock).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
