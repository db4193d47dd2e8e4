//! `ferry host maintenance enter|cancel|exit|status` and `ferry operation list|show`:
//! evacuations, followed with a bar per VM and one for the whole host, and an ETA; the
//! list and show also cover scheduled runs (`ferry schedule`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use clap::Subcommand;
use ferry_api::client::ServerClient;
use ferry_api::*;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cli::JsonFlag;
use crate::cmd_cluster::client;
use crate::exit::{CliError, CliResult};
use crate::output::{bytes, print_json, print_table};

#[derive(Subcommand, Debug)]
pub enum MaintenanceCmd {
    /// Mark a host for maintenance (it takes no new VMs) and live-migrate every VM on it
    /// elsewhere through the migration queue, by placement and the rules. Shows progress
    /// per VM and overall with an ETA, and ends when the host is empty or names each VM
    /// that could not move and why (it keeps running where it is). Ctrl-C asks whether to
    /// cancel the evacuation or leave it running in the server.
    #[command(after_help = "Examples:\n  \
        ferry host maintenance enter a --dry-run   # the plan and a time estimate, nothing moves\n  \
        ferry host maintenance enter a\n  \
        ferry host maintenance enter a --no-wait --json\n  \
        ferry host maintenance status a            # follow it again\n  \
        ferry host maintenance cancel a\n  \
        ferry host maintenance exit a              # back in service")]
    Enter {
        host: String,
        /// Print the plan and its time estimate; mark nothing, move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Return once the evacuation started, without following it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Cancel a host's evacuation: waiting migrations are dropped, running ones rolled
    /// back; VMs already moved stay where they went. The host stays in maintenance.
    Cancel {
        host: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Return a host to service (refused while its evacuation runs: cancel it first).
    Exit {
        host: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Follow a host's latest evacuation (or print it, with --json).
    Status {
        host: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand, Debug)]
pub enum OperationCmd {
    /// Recent operations (evacuations, scheduled runs), newest first.
    List(JsonFlag),
    /// One operation: an evacuation's every VM, where it goes, its state and reason; a
    /// scheduled run's fire time, what it started and its outcome.
    #[command(
        after_help = "Examples:\n  ferry operation show 6f1c...\n  ferry events --operation 6f1c...   # its whole story"
    )]
    Show {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

pub async fn maintenance(server: &crate::connection::ConnOpts, cmd: MaintenanceCmd) -> CliResult {
    let c = client(server)?;
    match cmd {
        MaintenanceCmd::Enter {
            host,
            dry_run,
            no_wait,
            json,
        } => {
            // Planning asks every VM's host for its memory and dirty rate (a second of
            // sampling) and may probe links: say so meanwhile.
            let spinner = if json.json {
                ProgressBar::hidden()
            } else {
                ProgressBar::new_spinner()
            };
            spinner.set_message(format!(
                "planning the evacuation of host {host}: placing each VM, measuring its memory \
                 and dirty rate"
            ));
            spinner.enable_steady_tick(Duration::from_millis(120));
            let plan = c
                .enter_maintenance(&host, &EnterMaintenanceRequest { dry_run })
                .await;
            spinner.finish_and_clear();
            let plan = plan?;
            if json.json && (dry_run || no_wait) {
                return print_json(&plan);
            }
            if !json.json {
                print_plan(&plan);
            }
            let Some(op) = plan.operation else {
                return Ok(());
            };
            if no_wait {
                println!(
                    "evacuation {} started; follow it with `ferry host maintenance status {host}`",
                    op.id
                );
                return Ok(());
            }
            let done = follow(&c, op.id, !json.json).await?;
            finish(&done, json.json)
        }
        MaintenanceCmd::Cancel { host, json } => {
            let op = c.cancel_maintenance(&host).await?;
            if json.json {
                return print_json(&op);
            }
            println!(
                "evacuation {} of host {} is {}: waiting migrations dropped, running ones \
                 rolling back; host {host} stays in maintenance (`ferry host maintenance exit \
                 {host}` returns it to service)",
                op.id, op.host, op.state
            );
            Ok(())
        }
        MaintenanceCmd::Exit { host, json } => {
            let h = c.exit_maintenance(&host).await?;
            if json.json {
                return print_json(&h);
            }
            println!("host {} takes VMs again", h.name);
            Ok(())
        }
        MaintenanceCmd::Status { host, json } => {
            let latest = c
                .operations()
                .await?
                .into_iter()
                .find(|o| o.kind == OperationKind::Evacuation && o.host == host)
                .ok_or_else(|| CliError::refused(format!("host {host} has no evacuation")))?;
            if json.json {
                return print_json(&c.operation(latest.id).await?);
            }
            let done = follow(&c, latest.id, true).await?;
            finish(&done, false)
        }
    }
}

pub async fn operation(server: &crate::connection::ConnOpts, cmd: OperationCmd) -> CliResult {
    let c = client(server)?;
    match cmd {
        OperationCmd::List(j) => {
            let list = c.operations().await?;
            if j.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|o| {
                    let what = match &o.run {
                        Some(r) => format!("schedule {}: {}", r.schedule, r.task),
                        None => format!("{}/{} moved", o.count(ItemState::Moved), o.items.len()),
                    };
                    vec![
                        o.id.to_string(),
                        o.kind.to_string(),
                        if o.host.is_empty() {
                            "-".into()
                        } else {
                            o.host.clone()
                        },
                        o.state.to_string(),
                        what,
                        o.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ]
                })
                .collect();
            print_table(&["ID", "KIND", "HOST", "STATE", "WHAT", "CREATED"], &rows);
            Ok(())
        }
        OperationCmd::Show { id, json } => {
            let id = uuid::Uuid::parse_str(&id)
                .map_err(|_| CliError::refused(format!("'{id}' is not an operation id")))?;
            let op = c.operation(id).await?;
            if json.json {
                return print_json(&op);
            }
            if op.kind == OperationKind::Scheduled {
                crate::cmd_schedule::print_run(&op);
            } else {
                print_operation(&op);
            }
            Ok(())
        }
    }
}

fn secs(s: f64) -> String {
    if s >= 90.0 {
        format!("{:.0} min {:02.0} s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{s:.0} s")
    }
}

fn print_plan(p: &EvacuationPlan) {
    let header = if p.operation.is_some() {
        format!("evacuating host {}", p.host)
    } else {
        format!("dry run: evacuating host {} (nothing moves)", p.host)
    };
    println!(
        "{header}: {} VM(s), estimate {}",
        p.items.len(),
        secs(p.estimate_s)
    );
    let assumed: HashMap<&str, &EstimateAssumption> =
        p.assumptions.iter().map(|a| (a.vm.as_str(), a)).collect();
    let rows: Vec<Vec<String>> = p
        .items
        .iter()
        .map(|i| {
            let a = assumed.get(i.vm.as_str());
            vec![
                i.vm.clone(),
                format!("{} MiB", i.memory_mib),
                i.destination.clone().unwrap_or_else(|| "-".into()),
                i.runner_up.clone().unwrap_or_else(|| "-".into()),
                a.map(|a| bytes(a.bytes)).unwrap_or_else(|| "-".into()),
                a.map(|a| format!("{}/s", bytes(a.dirty_bytes_per_s)))
                    .unwrap_or_else(|| "-".into()),
                a.map(|a| format!("{:.0}-{:.0} s", a.start_s, a.end_s))
                    .unwrap_or_else(|| "-".into()),
                i.reason
                    .clone()
                    .or_else(|| a.and_then(|a| a.note.clone()))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "VM",
            "MEMORY",
            "TO",
            "RUNNER-UP",
            "TO SEND",
            "DIRTY",
            "WHEN",
            "NOTE",
        ],
        &rows,
    );
}

fn print_operation(op: &Operation) {
    println!(
        "evacuation {} of host {}: {} ({} of {} moved){}",
        op.id,
        op.host,
        op.state,
        op.count(ItemState::Moved),
        op.items.len(),
        op.eta_s
            .map(|e| format!(", about {} left", secs(e)))
            .unwrap_or_default()
    );
    let rows: Vec<Vec<String>> = op
        .items
        .iter()
        .map(|i| {
            vec![
                i.vm.clone(),
                i.destination.clone().unwrap_or_else(|| "-".into()),
                i.state.to_string(),
                i.migration
                    .map(|m| m.to_string()[..8].to_string())
                    .unwrap_or_else(|| "-".into()),
                i.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["VM", "TO", "STATE", "MIGRATION", "REASON"], &rows);
}

/// The command's result: success only when every VM moved.
fn finish(op: &Operation, json: bool) -> CliResult {
    if json {
        print_json(op)?;
    } else {
        print_operation(op);
    }
    match op.state {
        OperationState::Succeeded => Ok(()),
        OperationState::Cancelled => Err(CliError::failed(format!(
            "evacuation {} of host {} was cancelled: {} of {} VM(s) moved, the others run \
             where they were",
            op.id,
            op.host,
            op.count(ItemState::Moved),
            op.items.len()
        ))),
        _ => {
            let stuck: Vec<String> = op
                .items
                .iter()
                .filter(|i| i.state != ItemState::Moved)
                .map(|i| {
                    format!(
                        "{} ({})",
                        i.vm,
                        i.reason.as_deref().unwrap_or("no reason recorded")
                    )
                })
                .collect();
            Err(CliError::failed(format!(
                "evacuation {} of host {} ended with VM(s) that could not move and still run \
                 there: {}",
                op.id,
                op.host,
                stuck.join("; ")
            )))
        }
    }
}

/// What the operator answered after Ctrl-C.
enum Answer {
    Cancel,
    KeepFollowing,
    Detach,
}

/// Asks on the terminal whether Ctrl-C means cancel; without a terminal, it detaches
/// (the evacuation goes on in the server).
fn ask_cancel(host: &str) -> Answer {
    if !std::io::stdin().is_terminal() {
        return Answer::Detach;
    }
    eprint!(
        "\nCancel the evacuation of host {host}? Waiting migrations are dropped, running ones \
         rolled back, moved VMs stay. [y = cancel / N = keep following / d = detach, it goes \
         on in the server] "
    );
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line).map(|_| line) {
        Ok(s) => match s.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => Answer::Cancel,
            "d" | "detach" => Answer::Detach,
            _ => Answer::KeepFollowing,
        },
        _ => Answer::Detach,
    }
}

/// Follows an operation to its end: one bar per VM and one overall, with the ETA.
async fn follow(c: &ServerClient, id: uuid::Uuid, bars: bool) -> Result<Operation, CliError> {
    let multi = MultiProgress::new();
    if !bars {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:<16} [{bar:30}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let overall = multi.add(ProgressBar::new(1));
    overall.set_style(style.clone());
    overall.set_prefix("overall");
    let mut per_vm: HashMap<String, ProgressBar> = HashMap::new();
    let mut failures = 0;
    let mut cancel_sent = false;
    loop {
        let op = match c.operation(id).await {
            Ok(op) => {
                failures = 0;
                op
            }
            // The server may be restarting; the evacuation is its business, keep asking.
            Err(e) if failures < 60 => {
                failures += 1;
                overall.set_message(format!("(server not answering: {e})"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        overall.set_length(op.items.len().max(1) as u64);
        overall.set_position(op.count(ItemState::Moved) as u64);
        overall.set_message(format!(
            "{} of {} moved, {}{}",
            op.count(ItemState::Moved),
            op.items.len(),
            op.state,
            op.eta_s
                .map(|e| format!(", ETA {}", secs(e)))
                .unwrap_or_default()
        ));
        for item in &op.items {
            let bar = per_vm.entry(item.vm.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(1000));
                b.set_style(style.clone());
                b.set_prefix(item.vm.clone());
                b
            });
            let (fraction, msg) = item_line(item);
            bar.set_position((fraction * 1000.0) as u64);
            bar.set_message(msg);
        }
        if op.state.is_finished() {
            let _ = multi.clear();
            return Ok(op);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c(), if !cancel_sent => {
                // The bars stop drawing while the question waits for its answer.
                let answer = tokio::task::block_in_place(|| multi.suspend(|| ask_cancel(&op.host)));
                match answer {
                    Answer::Cancel => {
                        c.cancel_maintenance(&op.host).await?;
                        cancel_sent = true;
                    }
                    Answer::KeepFollowing => {}
                    Answer::Detach => {
                        let _ = multi.clear();
                        return Err(CliError::failed(format!(
                            "stopped following; evacuation {} of host {} goes on in the server \
                             (`ferry host maintenance status {}` follows it, `... cancel {}` \
                             stops it)",
                            op.id, op.host, op.host, op.host
                        )));
                    }
                }
            }
        }
    }
}

/// A VM's bar: how far, and what it is doing.
fn item_line(i: &OperationItem) -> (f64, String) {
    let to = i.destination.as_deref().unwrap_or("-");
    match i.state {
        ItemState::Moved => (1.0, format!("moved to {to}")),
        ItemState::Moving => match &i.progress {
            Some(p) if p.sent_bytes + p.remaining_bytes > 0 => (
                p.sent_bytes as f64 / (p.sent_bytes + p.remaining_bytes) as f64,
                format!(
                    "-> {to}: {}, {} sent, {} left",
                    p.phase,
                    bytes(p.sent_bytes),
                    bytes(p.remaining_bytes)
                ),
            ),
            _ => (0.0, format!("-> {to}: starting")),
        },
        ItemState::Queued => (0.0, format!("-> {to}: queued")),
        ItemState::Planned => (0.0, format!("-> {to}: planned")),
        ItemState::CouldNotMove => (
            0.0,
            format!(
                "could not move: {}",
                i.reason.as_deref().unwrap_or("no reason")
            ),
        ),
        ItemState::Cancelled => (0.0, "cancelled: stays".to_string()),
    }
}
