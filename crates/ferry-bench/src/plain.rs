//! The plain-QEMU arm of `ferry bench migrate --vs-qemu`: the same guest moved by QEMU alone,
//! uncapped, the way a user drives it by hand: the destination agent starts QEMU with
//! `-incoming`, the source gets `migrate-set-parameters max-bandwidth` (1 TiB/s, i.e. no
//! cap) and one `migrate`, and nothing else (no throttle, no post-copy, QEMU's 300 ms
//! downtime limit). What Ferry's controller must at least match.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_api::client::{AgentClient, ServerClient};
use ferry_api::*;
use ferry_lab::Lab;
use ferry_qmp::{MigrationParameters, MigrationStatus, QmpClient};

use crate::error::{fail, BenchError};

/// What one plain run did.
pub(crate) struct PlainRun {
    pub completed: bool,
    pub outcome: String,
    pub total_ms: u64,
    pub downtime_ms: u64,
    pub bytes_sent: u64,
    pub passes: u64,
}

/// How a migration driven by QEMU alone ended.
pub(crate) struct Watched {
    pub info: ferry_qmp::MigrationInfo,
    pub completed: bool,
    pub outcome: String,
    /// The highest vCPU throttle QEMU applied meanwhile, percent.
    pub max_throttle: u64,
}

/// Polls the source QEMU every `poll` until its migration completes or fails; past
/// `limit` (from `started`) it is cancelled. Shared by the benchmarks' plain-QEMU arms.
pub(crate) async fn watch_until_done(
    qmp: &QmpClient,
    started: Instant,
    limit: Duration,
    poll: Duration,
) -> Result<Watched, BenchError> {
    let mut max_throttle = 0;
    loop {
        let info = qmp.query_migrate().await.map_err(fail)?;
        max_throttle = max_throttle.max(info.cpu_throttle_percentage.unwrap_or(0));
        let (completed, outcome) = match info.status {
            Some(MigrationStatus::Completed) => (true, "completed".to_string()),
            Some(MigrationStatus::Failed | MigrationStatus::Cancelled) => {
                let why = info.error_desc.clone().unwrap_or_default();
                (false, format!("failed: {why}"))
            }
            _ if started.elapsed() > limit => {
                let _ = qmp.migrate_cancel().await;
                (
                    false,
                    format!("not done after {} s; cancelled", limit.as_secs()),
                )
            }
            _ => {
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        return Ok(Watched {
            info,
            completed,
            outcome,
            max_throttle,
        });
    }
}

/// The two ends of a migration QEMU drives alone: the destination agent starts QEMU with
/// `-incoming` (as libvirt does), and the source QEMU's second monitor (which its agent
/// opens with `--aux-qmp`) is opened to send `migrate` on. The URI to migrate to, and that
/// monitor.
pub(crate) async fn open_plain_migration(
    c: &ServerClient,
    vm: &str,
    dest: &AgentClient,
    source_state_dir: &Path,
) -> Result<(String, QmpClient), BenchError> {
    let spec = c.vm(vm).await?.spec;
    let incoming = dest
        .prepare_incoming(&IncomingRequest {
            spec,
            copy_disks: Vec::new(),
            stream: StreamSettings::default(),
            peer_host: Some("a".into()),
        })
        .await?;
    let socket = source_state_dir
        .join("vms")
        .join(vm)
        .join(ferry_agent::runtime::AUX_QMP_SOCKET);
    let qmp = QmpClient::connect(&socket).await.map_err(fail)?;
    Ok((format!("tcp:{}", incoming.advertised), qmp))
}

/// Moves `vm` from the lab's first host to its second with QEMU alone (see the module doc).
/// The server is not told (the lab is torn down afterwards, QEMUs with it).
pub(crate) async fn plain_qemu_uncapped(
    lab: &Lab,
    c: &ServerClient,
    vm: &str,
    limit: Duration,
) -> Result<PlainRun, BenchError> {
    let (Some(a), Some(b)) = (lab.agents.first(), lab.agents.get(1)) else {
        return Err(fail("the lab needs two hosts"));
    };
    let dest = lab.agent_client(&b.name).map_err(fail)?;
    let (uri, qmp) = open_plain_migration(c, vm, &dest, &a.state_dir).await?;
    qmp.migrate_set_parameters(&MigrationParameters {
        max_bandwidth: Some(1 << 40),
        ..Default::default()
    })
    .await
    .map_err(fail)?;
    let started = Instant::now();
    qmp.migrate(&uri, false).await.map_err(fail)?;
    let Watched {
        info,
        completed,
        outcome,
        ..
    } = watch_until_done(&qmp, started, limit, Duration::from_millis(20)).await?;
    let total_ms = started.elapsed().as_millis() as u64;
    let ram = info.ram.clone().unwrap_or_default();
    Ok(PlainRun {
        completed,
        outcome,
        total_ms: info.total_time.unwrap_or(total_ms),
        downtime_ms: info.downtime.unwrap_or(0),
        bytes_sent: ram.transferred,
        passes: ram.dirty_sync_count,
    })
}
