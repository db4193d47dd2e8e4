//! `ferry host list|show` (join tokens, removal and maintenance have their own modules).

use ferry_api::*;

use crate::cli::HostCmd;
use crate::cmd_cluster::client;
use crate::exit::{CliError, CliResult};
use crate::output::{ago, bytes, print_json, print_table};

pub async fn host(server: &crate::connection::ConnOpts, cmd: HostCmd) -> CliResult {
    let c = client(server)?;
    match cmd {
        HostCmd::List(j) => {
            let hosts = c.hosts().await?;
            if j.json {
                return print_json(&hosts);
            }
            let rows: Vec<Vec<String>> = hosts
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        match h.health {
                            HostHealth::Alive => h.state.to_string(),
                            other => format!("{} ({other})", h.state),
                        },
                        h.inventory.qemu_version.clone(),
                        h.inventory.accel.to_string(),
                        h.inventory.cpus.to_string(),
                        format!(
                            "{} / {}",
                            bytes(h.inventory.memory_available_mib << 20),
                            bytes(h.inventory.memory_total_mib << 20)
                        ),
                        h.vms.to_string(),
                        h.migration_address.clone(),
                        ago(h.last_seen),
                    ]
                })
                .collect();
            print_table(
                &[
                    "HOST",
                    "STATE",
                    "QEMU",
                    "ACCEL",
                    "CPUS",
                    "MEM FREE/TOTAL",
                    "VMS",
                    "MIGRATION ADDR",
                    "SEEN",
                ],
                &rows,
            );
            Ok(())
        }
        HostCmd::Show { name, json } => {
            let h = c.host(&name).await?;
            // The history is extra: an older server without it still shows the host.
            let load = c.host_load(&name).await.ok();
            if json.json {
                return crate::cmd_load::print_with_load(&h, load.as_ref());
            }
            println!("host            {}", h.name);
            println!("state           {} ({})", h.state, h.health);
            println!("agent           {}", h.url);
            println!("migration addr  {}", h.migration_address);
            println!("qemu            {}", h.inventory.qemu_version);
            println!(
                "accel           {} ({})",
                h.inventory.accel, h.inventory.accel_reason
            );
            println!(
                "cpus            {} x {}",
                h.inventory.cpus, h.inventory.cpu_model_name
            );
            println!(
                "memory          {} free of {}",
                bytes(h.inventory.memory_available_mib << 20),
                bytes(h.inventory.memory_total_mib << 20)
            );
            println!(
                "vms             {} ({} running here)",
                h.vms, h.inventory.vms_running
            );
            println!(
                "maintenance     {}",
                if h.maintenance { "yes" } else { "no" }
            );
            println!(
                "cpu vendor      {} ({} CPU models usable)",
                h.inventory.cpu_vendor,
                h.inventory
                    .cpu_models
                    .iter()
                    .filter(|m| m.unavailable_features.is_empty())
                    .count()
            );
            println!("last seen       {}", ago(h.last_seen));
            if let Some(l) = &load {
                for line in crate::cmd_load::load_lines(l, 16, Some(h.inventory.cpus)) {
                    println!("{line}");
                }
            }
            Ok(())
        }
        // Dispatched to cmd_security by main.
        HostCmd::JoinToken { .. } | HostCmd::Remove { .. } | HostCmd::Maintenance(_) => Err(
            CliError::failed("internal: host command dispatched to the wrong module"),
        ),
    }
}
