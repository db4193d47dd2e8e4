//! `ferry cluster ...` (but balance); the shared client.

use ferry_api::*;

use crate::cli::ClusterCmd;
use crate::exit::{CliError, CliResult};
use crate::output::print_json;

pub use crate::connection::client;

pub async fn cluster(server: &crate::connection::ConnOpts, cmd: ClusterCmd) -> CliResult {
    let c = client(server)?;
    let (info, json) = match cmd {
        // Dispatched to cmd_balance by main.
        ClusterCmd::Balance(_) => {
            return Err(CliError::failed(
                "internal: cluster command dispatched to the wrong module",
            ))
        }
        ClusterCmd::Limits {
            per_host_out,
            per_host_in,
            per_pair,
            cluster,
            json,
        } => {
            let update = LimitsUpdate {
                per_host_outgoing: per_host_out,
                per_host_incoming: per_host_in,
                per_pair,
                cluster,
            };
            let limits = if update == LimitsUpdate::default() {
                c.limits().await?
            } else {
                update
                    .apply(MigrationLimits::default())
                    .validate()
                    .map_err(|e| CliError::refused(e.message))?;
                c.set_limits(&update).await?
            };
            if json.json {
                return print_json(&limits);
            }
            println!("per host out   {}", limits.per_host_outgoing);
            println!("per host in    {}", limits.per_host_incoming);
            println!("per host pair  {}", limits.per_pair);
            println!("cluster        {}", limits.cluster);
            return Ok(());
        }
        ClusterCmd::Show(j) => (c.cluster().await?, j.json),
        ClusterCmd::Defaults {
            tuning,
            clear,
            json,
        } => {
            let o = if clear {
                MigrationOptions::default()
            } else {
                // Flags given replace those defaults; the others stay as they are.
                crate::cmd_migrate::options_from(&tuning)?
                    .with_defaults(&c.cluster().await?.migration_defaults)
            };
            (c.set_migration_defaults(&o).await?, json.json)
        }
        ClusterCmd::Baseline { model, json, .. } => {
            let setting = match model {
                Some(m) => BaselineSetting::Fixed(m),
                None => BaselineSetting::Auto,
            };
            (c.set_baseline(&setting).await?, json.json)
        }
    };
    if json {
        return print_json(&info);
    }
    let mode = match &info.baseline_setting {
        BaselineSetting::Auto => "auto (the best model every host runs)".to_string(),
        BaselineSetting::Fixed(m) => format!("fixed ({m})"),
    };
    println!("cpu baseline   {mode}");
    println!(
        "new VMs get    {}",
        info.baseline_model
            .as_deref()
            .unwrap_or("nothing: no model is common to every host")
    );
    for p in &info.hosts_without_baseline {
        println!("  host {} {}", p.host, p.reason);
    }
    let d = serde_json::to_value(&info.migration_defaults).unwrap_or_default();
    let set: Vec<String> = d
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| !v.is_null() && **v != serde_json::Value::Bool(false))
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "migration      {}",
        if set.is_empty() {
            "Ferry's defaults".to_string()
        } else {
            set.join(" ")
        }
    );
    Ok(())
}
