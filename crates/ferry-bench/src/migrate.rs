//! `ferry bench migrate`: one guest, several dirty rates, migrated over loopback through the
//! whole stack (CLI API -> server -> agents -> QEMU). Prints a table and writes a result file
//! with the machine it ran on. Figures, not assertions: timing lives here, not in tests.

use std::path::PathBuf;
use std::time::Duration;

use ferry_api::*;
use ferry_lab::{test_vm_spec, verdict_after, wait_ready, Lab, LabConfig, Observer};
use serde::Serialize;

use crate::console::{bytes, millis, print_json, print_table};
use crate::error::{BenchError, BenchResult};
use crate::progress::follow;
use crate::results::write_result;
use crate::setup::{own_binary, test_image};

/// The options of `ferry bench migrate`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct MigrateConfig {
    /// Guest memory, MiB.
    pub memory: u64,
    /// MiB the guest workload fills.
    pub workload_mem: u64,
    /// Guest dirty rates to run, MiB/s.
    pub rates: Vec<f64>,
    /// Also move the same guest at each rate with QEMU alone, uncapped (what a user gets
    /// from QEMU by hand), for comparison.
    pub vs_qemu: bool,
    /// Where to write the result file.
    pub out: PathBuf,
    /// Print JSON (for scripts) instead of a table.
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    /// `ferry` (default options) or `qemu-uncapped` (QEMU alone, no bandwidth cap).
    mode: &'static str,
    dirty_rate_mib_s: f64,
    completed: bool,
    total_time_ms: u64,
    transfer_time_ms: u64,
    downtime_ms: u64,
    bytes_sent: u64,
    passes: u64,
    guest_mismatches: Option<u64>,
    guest_ok: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct Machine {
    cpu: String,
    cpus: u32,
    memory_mib: u64,
    qemu: String,
    accel: String,
    kernel: String,
}

#[derive(Serialize)]
struct Results {
    benchmark: &'static str,
    date: String,
    machine: Machine,
    guest_memory_mib: u64,
    workload_mib: u64,
    link: &'static str,
    rows: Vec<Row>,
}

pub async fn migrate(a: MigrateConfig) -> BenchResult {
    if a.rates.iter().any(|r| !(r.is_finite() && *r >= 0.0)) {
        return Err(BenchError::refused("--rates must be numbers >= 0"));
    }
    let image_dir = test_image().await?;
    let exe = own_binary()?;
    let mut cfg = LabConfig::new(exe, &["a", "b"]);
    cfg.image_dir = Some(image_dir);
    let mut lab = Lab::start(cfg.clone())
        .await
        .map_err(|e| BenchError::failed(e.to_string()))?;
    if a.vs_qemu {
        // The plain arm drives the source QEMU over its second monitor, which the agent
        // opens only when asked to.
        lab.restart_agent_with(&cfg, "a", &["--aux-qmp"])
            .await
            .map_err(|e| BenchError::failed(e.to_string()))?;
    }
    let c = lab.client();
    let hosts = c.hosts().await?;
    let inv = hosts
        .first()
        .map(|h| h.inventory.clone())
        .unwrap_or_default();

    let mut rows = Vec::new();
    for (i, rate) in a.rates.iter().enumerate() {
        let vm = format!("bench{i}");
        eprintln!(
            "bench: {vm}: {} MiB guest, workload {} MiB at {rate} MiB/s",
            a.memory, a.workload_mem
        );
        let spec = test_vm_spec(&vm, a.memory, a.workload_mem, *rate);
        c.create_vm(&CreateVmRequest {
            host: Some("a".into()),
            spec,
        })
        .await?;
        wait_ready(&c, &vm, Duration::from_secs(600))
            .await
            .map_err(BenchError::failed)?;
        // Let the dirty rate settle before measuring.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = Observer {
            client: &c,
            vm: &vm,
        }
        .last_status()
        .await
        .map_err(BenchError::failed)?
        .ok_or_else(|| BenchError::failed("no guest status"))?;
        let m = c
            .migrate(&MigrateRequest {
                vm: vm.clone(),
                to: Some("b".into()),
                options: Default::default(),
                priority: None,
            })
            .await?;
        let m = follow(&c, &m, true).await?;
        let r = m.report.clone().unwrap_or_default();
        let verdict = if m.phase == Phase::Completed {
            verdict_after(&c, &vm, &before, Duration::from_secs(300))
                .await
                .ok()
        } else {
            None
        };
        rows.push(Row {
            mode: "ferry",
            dirty_rate_mib_s: *rate,
            completed: m.phase == Phase::Completed,
            total_time_ms: r.total_time_ms,
            transfer_time_ms: r.transfer_time_ms,
            downtime_ms: r.downtime_ms,
            bytes_sent: r.bytes_sent,
            passes: r.passes,
            guest_mismatches: verdict.as_ref().map(|v| v.mismatches),
            guest_ok: verdict.as_ref().is_some_and(|v| v.ok()),
            error: m.error.clone(),
        });
        let _ = c.stop_vm(&vm).await;
        let _ = c.delete_vm(&vm).await;
        if a.vs_qemu {
            rows.push(plain_row(&lab, &a, i, *rate).await?);
        }
    }
    drop(lab);

    let results = Results {
        benchmark: "migrate-loopback",
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: Machine {
            cpu: inv.cpu_model_name.clone(),
            cpus: inv.cpus,
            memory_mib: inv.memory_total_mib,
            qemu: inv.qemu_version.clone(),
            accel: inv.accel.to_string(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        },
        guest_memory_mib: a.memory,
        workload_mib: a.workload_mem,
        link: "loopback (127.0.0.1), no bandwidth cap",
        rows,
    };
    let doc = serde_json::to_value(&results).map_err(|e| BenchError::failed(e.to_string()))?;
    let file = write_result(&a.out, "migrate-loopback", &doc)?;
    if a.json {
        print_json(&results)?;
    } else {
        let rows: Vec<Vec<String>> = results
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.mode.to_string(),
                    format!("{}", r.dirty_rate_mib_s),
                    if r.completed {
                        "yes".into()
                    } else {
                        "NO".into()
                    },
                    millis(r.total_time_ms),
                    millis(r.downtime_ms),
                    bytes(r.bytes_sent),
                    r.passes.to_string(),
                    r.guest_mismatches
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        println!(
            "{} MiB guest ({} MiB workload), {} on {} x {}, QEMU {} ({})",
            a.memory,
            a.workload_mem,
            results.link,
            results.machine.cpus,
            results.machine.cpu,
            results.machine.qemu,
            results.machine.accel
        );
        print_table(
            &[
                "MODE",
                "DIRTY MiB/s",
                "DONE",
                "TOTAL",
                "DOWNTIME",
                "SENT",
                "PASSES",
                "MISMATCHES",
            ],
            &rows,
        );
        println!("results written to {}", file.display());
    }
    if results.rows.iter().all(|r| r.completed && r.guest_ok) {
        Ok(())
    } else {
        Err(BenchError::failed(
            "some runs did not complete cleanly (see the table)",
        ))
    }
}

/// The same guest and rate moved by QEMU alone, uncapped (a fresh guest; the lab's
/// shutdown ends both QEMUs).
async fn plain_row(lab: &Lab, a: &MigrateConfig, i: usize, rate: f64) -> Result<Row, BenchError> {
    let c = lab.client();
    let vm = format!("plain{i}");
    eprintln!("bench: {vm}: the same guest and rate, moved by QEMU alone (uncapped)");
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec: test_vm_spec(&vm, a.memory, a.workload_mem, rate),
    })
    .await?;
    wait_ready(&c, &vm, Duration::from_secs(600))
        .await
        .map_err(BenchError::failed)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = crate::plain::plain_qemu_uncapped(lab, &c, &vm, Duration::from_secs(600)).await?;
    Ok(Row {
        mode: "qemu-uncapped",
        dirty_rate_mib_s: rate,
        completed: r.completed,
        total_time_ms: r.total_ms,
        transfer_time_ms: r.total_ms.saturating_sub(r.downtime_ms),
        downtime_ms: r.downtime_ms,
        bytes_sent: r.bytes_sent,
        passes: r.passes,
        guest_mismatches: None,
        // The guest is not re-verified after a move the server did not make.
        guest_ok: r.completed,
        error: (!r.completed).then_some(r.outcome),
    })
}
