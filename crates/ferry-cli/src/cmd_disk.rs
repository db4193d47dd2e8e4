//! `ferry disk create|list|delete`.

use ferry_api::{parse_size_mib, CreateDiskRequest};

use crate::cli::DiskCmd;
use crate::cmd_cluster::client;
use crate::exit::{CliError, CliResult};
use crate::output::{bytes, print_json, print_table};

pub async fn run(server: &crate::connection::ConnOpts, cmd: DiskCmd) -> CliResult {
    let c = client(server)?;
    match cmd {
        DiskCmd::Create {
            name,
            host,
            pool,
            size,
            json,
        } => {
            let size_mib = parse_size_mib(&size).map_err(|e| CliError::refused(e.message))?;
            let req = CreateDiskRequest { name, size_mib };
            req.validate().map_err(|e| CliError::refused(e.message))?;
            let d = c.create_disk(&host, &pool, &req).await?;
            if json.json {
                return print_json(&d);
            }
            println!(
                "disk {} created in pool {} on {} ({})",
                d.name,
                d.pool,
                host,
                bytes(d.virtual_size)
            );
            Ok(())
        }
        DiskCmd::List { host, pool, json } => {
            let pools: Vec<String> = match pool {
                Some(p) => vec![p],
                None => c
                    .host(&host)
                    .await?
                    .inventory
                    .pools
                    .into_iter()
                    .map(|p| p.name)
                    .collect(),
            };
            let mut all = Vec::new();
            for p in &pools {
                all.extend(c.disks(&host, p).await?);
            }
            if json.json {
                return print_json(&all);
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|d| {
                    vec![
                        d.pool.clone(),
                        d.name.clone(),
                        d.format.clone(),
                        bytes(d.virtual_size),
                        bytes(d.actual_size),
                        d.in_use_by.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(
                &["POOL", "DISK", "FORMAT", "SIZE", "ON DISK", "USED BY"],
                &rows,
            );
            Ok(())
        }
        DiskCmd::Delete { name, host, pool } => {
            c.delete_disk(&host, &pool, &name).await?;
            println!("disk {name} deleted from pool {pool} on {host}");
            Ok(())
        }
    }
}
