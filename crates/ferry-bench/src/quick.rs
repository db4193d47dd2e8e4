//! `ferry bench quick`: quick vs live migration of one guest (1 GiB, 768 MiB of
//! self-verifying pages rewritten at 20 MiB/s by default) on a two-host lab on this
//! machine. Each round moves it a -> b quick (paused, saved to the lab's shared pool,
//! restored) and b -> a live (over loopback); the guest is verified after every move.
//! Prints a table with each move's total time and downtime, and the medians per mode;
//! writes bench/results/quick.json.

use std::path::PathBuf;
use std::time::Duration;

use ferry_api::*;
use ferry_lab::{test_vm_spec, verdict_after, wait_ready, Lab, LabConfig};
use serde::Serialize;

use crate::console::{bytes, millis, print_json, print_table};
use crate::error::{BenchError, BenchResult};
use crate::progress::follow;
use crate::results::{machine_json, write_result};
use crate::setup::{own_binary, test_image};

/// The options of `ferry bench quick`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct QuickConfig {
    /// Guest memory (MiB).
    pub memory: u64,
    /// Memory the guest's workload fills with self-verifying pages (MiB).
    pub workload_mem: u64,
    /// How fast the workload rewrites its pages (MiB/s).
    pub rate: f64,
    /// Rounds; each is a quick move a -> b and a live move back b -> a.
    pub rounds: u32,
    /// Cap the live migration's stream (MiB/s); default: uncapped (loopback).
    pub max_bandwidth: Option<u64>,
    /// Channels that write and read the quick migration's state file (default: Ferry's, 2).
    pub streams: Option<u8>,
    /// Where to write the result file.
    pub out: PathBuf,
    /// Print JSON (for scripts) instead of a table.
    pub json: bool,
}

const VM: &str = "qbench";

#[derive(Serialize)]
struct Row {
    round: u32,
    mode: MigrationMode,
    route: String,
    completed: bool,
    total_time_ms: u64,
    downtime_ms: u64,
    save_ms: Option<u64>,
    restore_ms: Option<u64>,
    /// Live: bytes on the stream; quick: bytes written to the state file.
    bytes: u64,
    passes: u64,
    guest_mismatches: Option<u64>,
    guest_ok: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct Summary {
    mode: MigrationMode,
    moves: usize,
    median_total_time_ms: u64,
    median_downtime_ms: u64,
}

fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

async fn one_move(
    c: &ferry_api::client::ServerClient,
    a: &QuickConfig,
    round: u32,
    mode: MigrationMode,
    (from, to): (&str, &str),
) -> Result<Row, BenchError> {
    // Let the dirty rate settle after the last move.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = ferry_lab::Observer { client: c, vm: VM }
        .last_status()
        .await
        .map_err(BenchError::failed)?
        .ok_or_else(|| BenchError::failed("no guest status"))?;
    eprintln!("bench: round {round}: {mode} {from} -> {to}");
    let m = c
        .migrate(&MigrateRequest {
            vm: VM.into(),
            to: Some(to.into()),
            options: MigrationOptions {
                mode,
                max_bandwidth_mib: (mode == MigrationMode::Live)
                    .then_some(a.max_bandwidth)
                    .flatten(),
                streams: (mode == MigrationMode::Quick)
                    .then_some(a.streams)
                    .flatten(),
                ..Default::default()
            },
            priority: None,
        })
        .await?;
    let m = follow(c, &m, true).await?;
    let r = m.report.clone().unwrap_or_default();
    let completed = m.phase == Phase::Completed;
    let verdict = if completed {
        verdict_after(c, VM, &before, Duration::from_secs(300))
            .await
            .ok()
    } else {
        None
    };
    Ok(Row {
        round,
        mode,
        route: format!("{from} -> {to}"),
        completed,
        total_time_ms: r.total_time_ms,
        downtime_ms: r.downtime_ms,
        save_ms: r.save_ms,
        restore_ms: r.restore_ms,
        bytes: r.bytes_sent,
        passes: r.passes,
        guest_mismatches: verdict.as_ref().map(|v| v.mismatches),
        guest_ok: verdict.as_ref().is_some_and(|v| v.ok()),
        error: m.error.clone(),
    })
}

pub async fn quick(a: QuickConfig) -> BenchResult {
    if !(a.rate.is_finite() && a.rate >= 0.0) || a.rounds == 0 {
        return Err(BenchError::refused(
            "--rate must be a number >= 0 and --rounds at least 1",
        ));
    }
    if a.workload_mem >= a.memory {
        return Err(BenchError::refused(
            "--workload-mem must leave room for the guest's kernel (less than --memory)",
        ));
    }
    let image_dir = test_image().await?;
    let exe = own_binary()?;
    let mut cfg = LabConfig::new(exe, &["a", "b"]);
    cfg.image_dir = Some(image_dir);
    cfg.pools = true;
    let lab = Lab::start(cfg)
        .await
        .map_err(|e| BenchError::failed(e.to_string()))?;
    let c = lab.client();
    let inv = c
        .hosts()
        .await?
        .first()
        .map(|h| h.inventory.clone())
        .unwrap_or_default();
    eprintln!(
        "bench: {VM}: {} MiB guest, workload {} MiB at {} MiB/s",
        a.memory, a.workload_mem, a.rate
    );
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec: test_vm_spec(VM, a.memory, a.workload_mem, a.rate),
    })
    .await?;
    wait_ready(&c, VM, Duration::from_secs(600))
        .await
        .map_err(BenchError::failed)?;
    let mut rows = Vec::new();
    for round in 1..=a.rounds {
        rows.push(one_move(&c, &a, round, MigrationMode::Quick, ("a", "b")).await?);
        if !rows.last().is_some_and(|r| r.completed) {
            break;
        }
        rows.push(one_move(&c, &a, round, MigrationMode::Live, ("b", "a")).await?);
        if !rows.last().is_some_and(|r| r.completed) {
            break;
        }
    }
    drop(lab);

    let summary: Vec<Summary> = [MigrationMode::Quick, MigrationMode::Live]
        .into_iter()
        .map(|mode| {
            let done: Vec<&Row> = rows
                .iter()
                .filter(|r| r.mode == mode && r.completed)
                .collect();
            Summary {
                mode,
                moves: done.len(),
                median_total_time_ms: median(done.iter().map(|r| r.total_time_ms).collect()),
                median_downtime_ms: median(done.iter().map(|r| r.downtime_ms).collect()),
            }
        })
        .collect();
    let ratio = |f: fn(&Summary) -> u64| {
        let (q, l) = (f(&summary[0]), f(&summary[1]));
        (l > 0).then(|| q as f64 / l as f64)
    };
    let doc = serde_json::json!({
        "benchmark": "quick-vs-live",
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": machine_json(&inv.accel.to_string()),
        "qemu": inv.qemu_version,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "note": "one machine shared with other developers (2 cores): both hosts, both QEMUs \
                 and the guest's TCG vCPU share it, so figures vary from run to run; the \
                 'shared pool' is a directory on this machine's local disk (the page cache \
                 absorbs the state file), and live moves go over loopback",
        "guest_memory_mib": a.memory,
        "workload_mib": a.workload_mem,
        "workload_rate_mib_s": a.rate,
        "live_link": match a.max_bandwidth {
            Some(cap) => format!("loopback capped at {cap} MiB/s"),
            None => "loopback (127.0.0.1), no bandwidth cap".to_string(),
        },
        "quick_state_file": format!(
            "mapped-ram, {} channel(s), in the lab's shared pool",
            a.streams.unwrap_or(2)
        ),
        "rows": rows,
        "summary": summary,
        "quick_over_live": {
            "total_time": ratio(|s| s.median_total_time_ms),
            "downtime": ratio(|s| s.median_downtime_ms),
        },
    });
    let file = write_result(&a.out, "quick", &doc)?;
    if a.json {
        print_json(&doc)?;
    } else {
        println!(
            "{} MiB guest ({} MiB workload at {} MiB/s), QEMU {} ({})",
            a.memory, a.workload_mem, a.rate, inv.qemu_version, inv.accel
        );
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.round.to_string(),
                    r.mode.to_string(),
                    r.route.clone(),
                    if r.completed { "yes" } else { "NO" }.into(),
                    millis(r.total_time_ms),
                    millis(r.downtime_ms),
                    match (r.save_ms, r.restore_ms) {
                        (Some(s), Some(x)) => format!("{} + {}", millis(s), millis(x)),
                        _ => "-".into(),
                    },
                    bytes(r.bytes),
                    r.guest_mismatches
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print_table(
            &[
                "ROUND",
                "MODE",
                "ROUTE",
                "DONE",
                "TOTAL",
                "DOWNTIME",
                "SAVE + RESTORE",
                "BYTES",
                "MISMATCHES",
            ],
            &table,
        );
        for s in &summary {
            println!(
                "{}: {} move(s), median total {}, median downtime {}",
                s.mode,
                s.moves,
                millis(s.median_total_time_ms),
                millis(s.median_downtime_ms)
            );
        }
        println!("results written to {}", file.display());
    }
    if rows.iter().all(|r| r.completed && r.guest_ok) {
        Ok(())
    } else {
        Err(BenchError::failed(
            "some moves did not complete cleanly (see the table)",
        ))
    }
}
