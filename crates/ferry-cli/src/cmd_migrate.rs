//! `ferry vm migrate` (with a live progress bar and a final report) and `ferry migration ...`.

use ferry_api::client::ClientError;
use ferry_api::*;
use ferry_bench::progress::{follow, waits_for};

use crate::cli::{KeepSide, MigrateArgs, MigrationCmd, TuningArgs};
use crate::cmd_cluster::client;
use crate::exit::{CliError, CliResult};
use crate::output::{bytes, millis, print_json, print_table, rate};

pub async fn migrate(server: &crate::connection::ConnOpts, a: MigrateArgs) -> CliResult {
    let c = client(server)?;
    let req = MigrateRequest {
        vm: a.name.clone(),
        to: a.to.clone(),
        options: MigrationOptions {
            mode: named(&a.mode)?,
            keep_source: a.keep_source,
            force: a.force,
            ..options_from(&a.tuning)?
        },
        priority: a.priority,
    };
    req.options
        .validate()
        .map_err(|e| CliError::refused(e.message))?;
    if a.explain {
        crate::cmd_rules::explain(
            &c,
            &PlacementRequest {
                vm: Some(a.name.clone()),
                spec: None,
            },
            a.json.json,
        )
        .await?;
    }
    if a.check {
        let report = c.check_migration(&req).await?;
        if a.json.json {
            print_json(&report)?;
        } else {
            print_checks(&report);
        }
        return match report.verdict() {
            Verdict::Fail => Err(CliError::refused(format!(
                "VM {} cannot move to {}: {}",
                report.vm,
                report.destination,
                report.summary(Verdict::Fail)
            ))),
            _ => Ok(()),
        };
    }
    let m = match c.migrate(&req).await {
        Ok(m) => m,
        Err(ClientError::Api(e)) => {
            // A refusal by the checks carries the report: show it.
            if let Some(report) = e
                .details
                .clone()
                .and_then(|d| serde_json::from_value::<CheckReport>(d).ok())
            {
                if a.json.json {
                    print_json(&report)?;
                } else {
                    print_checks(&report);
                }
            }
            return Err(ClientError::Api(e).into());
        }
        Err(e) => return Err(e.into()),
    };
    if a.no_wait {
        if a.json.json {
            return print_json(&m);
        }
        match &m.queue {
            Some(q) => println!(
                "migration {} of VM {} from {} to {} waits in the queue at position {}: {}",
                m.id,
                m.vm,
                m.source,
                m.destination,
                q.position,
                waits_for(q)
            ),
            None => println!(
                "migration {} of VM {} from {} to {} started",
                m.id, m.vm, m.source, m.destination
            ),
        }
        return Ok(());
    }
    let done = follow(&c, &m, !a.json.json).await?;
    if a.json.json {
        print_json(&done)?;
    } else {
        print_report(&done);
    }
    settled_result(&done)
}

/// A settled migration as the command's result: success only for `completed`.
fn settled_result(m: &Migration) -> CliResult {
    match m.phase {
        Phase::Completed => Ok(()),
        Phase::NeedsAttention => Err(CliError::attention(format!(
            "migration {} needs attention: {}; settle it with `ferry migration resolve {} \
             --keep source|destination` after checking both hosts",
            m.id,
            m.error.as_deref().unwrap_or("no reason recorded"),
            m.id
        ))),
        _ => Err(CliError::failed(format!(
            "migration {} {}: {}",
            m.id,
            m.phase,
            m.error.as_deref().unwrap_or("no reason recorded")
        ))),
    }
}

/// The streaming and convergence options the flags name (unset flags stay unset).
pub fn options_from(t: &TuningArgs) -> Result<MigrationOptions, CliError> {
    Ok(MigrationOptions {
        max_bandwidth_mib: t.max_bandwidth,
        downtime_limit_ms: t.downtime_limit,
        progress_timeout_s: t.progress_timeout,
        streams: t.streams,
        compression: t.compression.as_deref().map(named).transpose()?,
        zero_page: t.zero_page.as_deref().map(named).transpose()?,
        max_throttle_pct: t.max_throttle,
        postcopy: t.postcopy.as_deref().map(named).transpose()?,
        completion_timeout_s_per_gib: t.completion_timeout_per_gib,
        switchover: t.switchover.as_deref().map(named).transpose()?,
        forward_frames: t.no_frame_forwarding.then_some(false),
        ..Default::default()
    })
}

/// A snake_case option value as its API enum (clap already limited the choices).
fn named<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, CliError> {
    serde_json::from_value(serde_json::Value::String(value.to_string()))
        .map_err(|e| CliError::refused(format!("'{value}': {e}")))
}

/// The check report as a table (stdout) with a one-line verdict.
pub fn print_checks(r: &CheckReport) {
    println!(
        "checks for VM {} from {} to {} ({} ms):",
        r.vm, r.source, r.destination, r.elapsed_ms
    );
    let rows: Vec<Vec<String>> = r
        .checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.verdict.to_string().to_uppercase(),
                c.message.clone(),
            ]
        })
        .collect();
    print_table(&["CHECK", "VERDICT", "DETAIL"], &rows);
    println!(
        "verdict: {}",
        match r.verdict() {
            Verdict::Pass => "the destination can take the VM".to_string(),
            Verdict::Warn => "warnings: a migration needs --force".to_string(),
            Verdict::Fail => format!("refused ({} failed)", r.with(Verdict::Fail).len()),
        }
    );
}

pub fn print_report(m: &Migration) {
    let mode = m.options.mode;
    println!(
        "migration {}  VM {}  {} -> {}  {}{}",
        m.id,
        m.vm,
        m.source,
        m.destination,
        m.phase,
        if mode == MigrationMode::Live {
            String::new()
        } else {
            format!("  ({mode})")
        }
    );
    if let Some(q) = &m.run.quick {
        println!("  state file     pool {} ({})", q.pool, q.step);
    }
    if let Some(r) = &m.report {
        println!("  total time     {}", millis(r.total_time_ms));
        if mode == MigrationMode::Cold {
            println!("  disks copied   {}", bytes(r.disk_bytes_copied));
            println!("  verified       {} disk(s)", r.disks_verified.unwrap_or(0));
            print_footer(m);
            return;
        }
        if let (Some(save), Some(restore)) = (r.save_ms, r.restore_ms) {
            println!(
                "  downtime       {} (save {} + restore {})",
                millis(r.downtime_ms),
                millis(save),
                millis(restore)
            );
            println!(
                "  state saved    {} (guest RAM {})",
                bytes(r.bytes_sent),
                bytes(r.ram_total_bytes)
            );
            print_footer(m);
            return;
        }
        if let Some(p) = &r.parts {
            println!("  where it went  {}", p.summary());
        }
        println!("  transfer time  {}", millis(r.transfer_time_ms));
        match r.switchover_target_ms {
            Some(t) => println!(
                "  downtime       {} (QEMU's figure; switch-over target {})",
                millis(r.downtime_ms),
                millis(t)
            ),
            None => println!("  downtime       {}", millis(r.downtime_ms)),
        }
        if let Some(p) = &r.pause {
            println!("  pause pieces   {}", p.summary());
        }
        println!(
            "  bytes sent     {} (guest RAM {})",
            bytes(r.bytes_sent),
            bytes(r.ram_total_bytes)
        );
        println!("  passes         {}", r.passes);
        println!("  avg bandwidth  {}", rate(r.average_bandwidth_bytes_per_s));
        if r.disk_bytes_copied > 0 {
            println!("  disks copied   {}", bytes(r.disk_bytes_copied));
        }
        if r.postcopy {
            println!(
                "  post-copy      yes ({} link break(s), {} paused)",
                r.postcopy_pauses,
                millis(r.postcopy_paused_ms)
            );
        }
        if let Some(n) = &r.network {
            print_network(n);
        }
    }
    print_footer(m);
}

/// The switch-over as the taps saw it, under QEMU's downtime.
fn print_network(n: &NetworkReport) {
    match n.client_gap_ms {
        Some(g) => println!("  client gap     {} (guest's last frame on the source to its first on the destination)", millis(g)),
        None => println!("  client gap     not measured"),
    }
    if n.forwarding {
        println!(
            "  frames fwd     {} forwarded, {} delivered, drained for {}",
            n.frames_forwarded,
            n.frames_injected,
            millis(n.drain_ms)
        );
    } else {
        println!("  frames fwd     off (--no-frame-forwarding)");
    }
    if let Some(note) = &n.note {
        println!("  network note   {note}");
    }
}

/// The stream, the error and what an operator must settle, after the figures.
fn print_footer(m: &Migration) {
    if let Some(uri) = &m.stream_uri {
        println!("  stream         {uri}");
    }
    if let Some(a) = &m.addresses {
        println!(
            "  migration net  {} -> {} (destination listens on {})",
            a.source, a.destination_advertised, a.destination_listen
        );
    }
    if let Some(e) = &m.error {
        println!("  reason         {e}");
    }
    if let Some(a) = &m.attention {
        println!(
            "  needs attention since {}",
            a.since.format("%Y-%m-%d %H:%M:%S")
        );
        println!("    source       {}: {}", m.source, a.source);
        println!("    destination  {}: {}", m.destination, a.destination);
        println!(
            "    settle with  ferry migration resolve {} --keep source|destination",
            m.id
        );
    }
}

pub async fn migration(server: &crate::connection::ConnOpts, cmd: MigrationCmd) -> CliResult {
    let c = client(server)?;
    let parse = |id: &str| {
        uuid::Uuid::parse_str(id)
            .map_err(|_| CliError::refused(format!("'{id}' is not a migration id")))
    };
    match cmd {
        MigrationCmd::List(j) => {
            let list = c.migrations().await?;
            if j.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.vm.clone(),
                        format!("{} -> {}", m.source, m.destination),
                        match &m.queue {
                            Some(q) => format!("queued #{}", q.position),
                            None => m.phase.to_string(),
                        },
                        m.queue
                            .as_ref()
                            .map(waits_for)
                            .unwrap_or_else(|| "-".into()),
                        m.report
                            .as_ref()
                            .map(|r| millis(r.total_time_ms))
                            .unwrap_or_else(|| "-".into()),
                        m.report
                            .as_ref()
                            .map(|r| millis(r.downtime_ms))
                            .unwrap_or_else(|| "-".into()),
                        m.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "VM",
                    "ROUTE",
                    "PHASE",
                    "WAITS FOR",
                    "TOTAL",
                    "DOWNTIME",
                    "CREATED",
                ],
                &rows,
            );
            Ok(())
        }
        MigrationCmd::Show { id, json } => {
            let m = c.migration(parse(&id)?).await?;
            if json.json {
                return print_json(&m);
            }
            print_report(&m);
            if let (Some(p), false) = (&m.progress, m.phase.is_terminal()) {
                for d in &p.disks {
                    println!(
                        "  disk {:<14} {} / {} copied, {} outstanding, {}",
                        d.disk,
                        bytes(d.copied_bytes),
                        bytes(d.total_bytes),
                        bytes(d.outstanding_bytes()),
                        if d.ready {
                            "in sync"
                        } else {
                            d.status.as_str()
                        }
                    );
                }
                println!(
                    "  progress       {} sent, {} remaining, pass {}, dirty {}",
                    bytes(p.transferred_bytes),
                    bytes(p.remaining_bytes),
                    p.passes,
                    rate(p.dirty_rate_bytes_per_s)
                );
            }
            Ok(())
        }
        MigrationCmd::Resolve {
            id,
            keep,
            force,
            json,
        } => {
            let req = ResolveRequest {
                keep: match keep {
                    KeepSide::Source => Keep::Source,
                    KeepSide::Destination => Keep::Destination,
                },
                force,
            };
            let m = c.resolve_migration(parse(&id)?, &req).await?;
            if json.json {
                return print_json(&m);
            }
            let host = if m.phase == Phase::Completed {
                &m.destination
            } else {
                &m.source
            };
            println!(
                "migration {} resolved ({}): VM {} runs on {host}",
                m.id, m.phase, m.vm
            );
            Ok(())
        }
        MigrationCmd::Cancel { id } => {
            let m = c.cancel_migration(parse(&id)?).await?;
            if m.phase == Phase::Cancelled {
                println!(
                    "migration {} cancelled while it waited in the queue; the VM stays on {}",
                    m.id, m.source
                );
            } else {
                println!(
                    "cancel requested for migration {}; the VM stays on {}",
                    m.id, m.source
                );
            }
            Ok(())
        }
    }
}
