//! The Ferry agent: the one process per host that owns the truth of what runs there.
//!
//! It launches one QEMU per VM from a [`ferry_api::VmSpec`], drives it over QMP, supervises
//! it, keeps each VM's spec in its state directory so a restarted agent adopts the QEMUs it
//! left running, reports its host's inventory to the server, and plays either side of a
//! migration: the destination starts an identical QEMU waiting for the stream, the source
//! sends to it.
//!
//! Layout: [`config`] (validated settings), [`runtime`] (one VM's QEMU and QMP), [`host`]
//! (the set of VMs and the operations on them), [`api`] (HTTP routes, thin), [`heartbeat`]
//! (registration with the server), [`inventory`] (what the host offers), [`probe`] (the
//! reachability and bandwidth probe of the pre-migration checks), [`error`] (the agent's
//! failures, turned into API errors only in [`api`]), [`postcopy`] (pausing and
//! resuming a post-copy migration across a broken link), [`tls_material`] and [`qemu_tls`]
//! (QEMU's own TLS for the migration stream and the NBD disk export), [`memory`] (what
//! moving a VM's memory costs, for the evacuation estimate), [`quick`] (saving a paused VM
//! to a shared pool and restoring it) and [`cold`] (copying a stopped VM's local disks, with
//! [`disk_sum`] to verify them and [`tools`] to run the helpers), [`frames`] (frames that reach
//! a paused source, forwarded to the destination; the switch-over as the taps saw it),
//! [`status_wait`] (the migration status as a long poll).

pub mod api;
pub mod boot_paths;
pub mod cancel;
pub mod cold;
pub mod config;
pub mod copy_resume;
pub mod disk_copy;
pub mod disk_sum;
pub mod error;
pub mod frames;
pub mod frames_flow;
pub mod frames_sys;
pub mod ha;
pub mod heartbeat;
pub mod host;
pub mod identity;
pub mod inventory;
pub mod load;
pub mod memory;
pub mod net;
pub mod persist;
pub mod postcopy;
pub mod probe;
pub mod qemu_tls;
pub mod quick;
pub mod runtime;
pub mod status_wait;
pub mod storage;
pub mod stream_socket;
pub mod targets;
pub mod tls_material;
pub mod tools;

pub use config::AgentConfig;
pub use host::Agent;

use std::sync::Arc;

/// Runs the agent until SIGTERM/SIGINT. VMs keep running when the agent stops.
pub async fn run(config: AgentConfig) -> Result<(), String> {
    let identity = identity::establish(&config).await?;
    let (listener, bound) = ferry_api::http::bind(config.listen).await?;
    let agent = Arc::new(Agent::start(config, bound, identity.clone()).await?);
    let tls = match &identity {
        Some(id) => Some(id.server_tls.clone()),
        None => {
            tracing::warn!(
                "running with --insecure: plain HTTP and no authentication; anyone who reaches \
                 {bound} controls this host's VMs; for development only"
            );
            None
        }
    };
    if let Some(file) = &agent.config.ready_file {
        ferry_api::http::write_ready_file(file, &bound.to_string())?;
    }
    tracing::info!(host = %agent.config.name, %bound, tls = tls.is_some(), "agent listening");
    let hb = tokio::spawn(heartbeat::run(agent.clone()));
    let dirty = tokio::spawn(load::run_dirty_sampler(agent.clone()));
    let ha = tokio::spawn(ha::run_monitor(agent.clone()));
    let app = api::router(agent.clone());
    let served = ferry_pki::serve(listener, tls, app, ferry_api::http::shutdown_signal())
        .await
        .map_err(|e| format!("HTTP server failed: {e}"));
    hb.abort();
    dirty.abort();
    ha.abort();
    tracing::info!(host = %agent.config.name, "agent stopped; VMs keep running");
    served
}
