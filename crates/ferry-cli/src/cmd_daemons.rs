//! `ferry server` and `ferry agent`: options into validated configs, then run.

use std::time::Duration;

use anyhow::Context;

use ferry_server::orchestrator::{Hold, HoldPoint, OrchestratorConfig};

use crate::cli::{AgentArgs, ServerArgs};
use crate::exit::{CliError, CliResult};

pub async fn server(a: ServerArgs) -> CliResult {
    let data_dir = absolute(&a.data_dir)?;
    let hold = match &a.test_hold_dir {
        Some(dir) => {
            let at = a
                .test_hold_at
                .iter()
                .map(|p| p.parse::<HoldPoint>())
                .collect::<Result<Vec<_>, String>>()
                .map_err(CliError::refused)?;
            Some(Hold {
                dir: absolute(dir)?,
                at,
            })
        }
        None => None,
    };
    let config = ferry_server::ServerConfig {
        listen: a.listen,
        data_dir,
        host_timeout: Duration::from_millis(a.host_timeout_ms.max(100)),
        orchestrator: OrchestratorConfig {
            poll_interval: Duration::from_millis(a.poll_ms.clamp(20, 10_000)),
            recovery_bound: Duration::from_secs(a.recovery_bound_s.clamp(1, 86_400)),
            hold,
            ..Default::default()
        },
        ready_file: a.ready_file,
        insecure: a.insecure,
        host_cert_validity: Duration::from_secs(a.host_cert_validity_s.clamp(60, 3 * 365 * 86_400)),
        ha: ha_config(a.ha_lease_s)?,
    };
    ferry_server::run(config).await.map_err(CliError::failed)
}

/// HA's timing from `--ha-lease-s`: the margins scale with the lease (a third to fence,
/// a fifth of grace), never below what a heartbeat and a probe round need.
fn ha_config(lease_s: u64) -> Result<ferry_server::ha::HaConfig, CliError> {
    if !(6..=600).contains(&lease_s) {
        return Err(CliError::refused(format!(
            "--ha-lease-s {lease_s}: the lease is 6 to 600 seconds"
        )));
    }
    let s = |n: i64| chrono::Duration::seconds(n);
    let l = lease_s as i64;
    let cfg = ferry_server::ha::HaConfig {
        lease: s(l),
        fence_margin: s((l / 3).max(2)),
        grace: s((l / 5).max(3)),
        suspect_after: s((l * 2 / 5).clamp(4, l)),
        ..Default::default()
    };
    cfg.validate().map_err(CliError::refused)?;
    Ok(cfg)
}

pub async fn agent(a: AgentArgs, conn: &crate::connection::ConnOpts) -> CliResult {
    let server_url = conn.server_url()?;
    let state_dir = absolute(&a.state_dir)?;
    let config = ferry_agent::AgentConfig {
        tls_dir: (!a.insecure).then(|| state_dir.join("tls")),
        join_token: a.join.clone(),
        qemu_user: a.qemu_user.clone(),
        name: a.name,
        listen: a.listen,
        advertise_url: a.advertise_url,
        server_url: (!a.standalone).then(|| server_url.to_string()),
        state_dir,
        image_dir: match a.image_dir {
            Some(d) => absolute(&d)?,
            None => ferry_image::default_cache_dir(),
        },
        qemu: a.qemu,
        migration_address: a.migration_address,
        migration_advertise: a.migration_advertise,
        migration_port: a.migration_port,
        networks: parse_networks(&a.networks)?,
        pools: a
            .pools
            .iter()
            .map(|p| ferry_agent::storage::parse_pool_arg(p))
            .collect::<Result<_, _>>()
            .map_err(CliError::refused)?,
        heartbeat: Duration::from_millis(a.heartbeat_ms.clamp(100, 60_000)),
        ready_file: a.ready_file,
        memory_reserve_mib: a.memory_reserve_mib,
        vcpu_overcommit: a.vcpu_overcommit,
        migration_link_mib_s: a.migration_link_mib_s,
        cpu_models: a.cpu_models,
        aux_qmp: a.aux_qmp,
        boot_path_allow: a
            .boot_path_allow
            .iter()
            .map(|d| absolute(d))
            .collect::<Result<_, _>>()?,
    };
    config.validate().map_err(CliError::refused)?;
    ferry_agent::run(config).await.map_err(CliError::failed)
}

fn absolute(p: &std::path::Path) -> Result<std::path::PathBuf, CliError> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    Ok(cwd.join(p))
}

/// `NAME=BRIDGE` pairs into a map; a name given twice is an error.
fn parse_networks(
    items: &[String],
) -> Result<std::collections::BTreeMap<String, String>, CliError> {
    let mut map = std::collections::BTreeMap::new();
    for item in items {
        let (name, bridge) = item.split_once('=').ok_or_else(|| {
            CliError::refused(format!(
                "--network '{item}' must be NAME=BRIDGE, e.g. vmnet=br-vm"
            ))
        })?;
        if map.insert(name.to_string(), bridge.to_string()).is_some() {
            return Err(CliError::refused(format!(
                "--network {name} is given twice"
            )));
        }
    }
    Ok(map)
}
