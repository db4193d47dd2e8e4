//! `ferry bench faults`: the fault matrix ([`ferry_lab::faults`]) on real daemons, QEMU and
//! the guest. Every cell gets its own lab; a cell whose outcome the recovery rules do not
//! allow, or that broke an invariant, makes the command fail after the whole table.
//!
//! `ferry bench soak`: [`ferry_lab::soak`], rounds of migrations with seeded faults.

use std::path::PathBuf;
use std::time::Instant;

use ferry_lab::faults::{self, Cell, MatrixConfig, Outcome};

use crate::console::{print_json, print_table};
use crate::error::{BenchError, BenchResult};
use crate::results::{machine_json, write_result};
use crate::setup::{own_binary, test_image};

/// The options of `ferry bench faults`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct FaultsConfig {
    /// Cells to run, POINT:FAULT (points: preparing, copying_disks, transferring,
    /// switching_over, post_copy; faults: kill-server, kill-source-agent, kill-dest-agent,
    /// kill-dest-qemu, kill-source-qemu, link-cut, dest-pool-full). Default: all.
    pub cells: Vec<String>,
    /// Cells run side by side (each on its own lab).
    pub parallel: usize,
    /// The server's --recovery-bound-s in every lab.
    pub recovery_bound: u64,
    /// Keep every lab's directory (daemon logs) afterwards.
    pub keep: bool,
    /// Where to write the result files.
    pub out: PathBuf,
    /// Print JSON (for scripts) instead of a table.
    pub json: bool,
}

/// The options of `ferry bench soak`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Rounds (one migration each).
    pub count: u32,
    /// Seed of the fault sequence.
    pub seed: u64,
    /// The server's --recovery-bound-s.
    pub recovery_bound: u64,
    /// Keep the lab's directory (daemon logs) afterwards.
    pub keep: bool,
    /// Where to write the result file.
    pub out: PathBuf,
    /// Print JSON (for scripts) instead of a table.
    pub json: bool,
}

pub async fn faults(a: FaultsConfig) -> BenchResult {
    let cells: Vec<Cell> = if a.cells.is_empty() {
        Cell::all()
    } else {
        a.cells
            .iter()
            .map(|c| c.parse::<Cell>())
            .collect::<Result<_, _>>()
            .map_err(BenchError::refused)?
    };
    if !nix_is_root() {
        return Err(BenchError::refused(
            "ferry bench faults needs root (it mounts a tmpfs over a destination pool)",
        ));
    }
    let image_dir = test_image().await?;
    let exe = own_binary()?;
    let mut cfg = MatrixConfig::new(exe, Some(image_dir));
    cfg.keep = a.keep;
    cfg.recovery_bound_s = a.recovery_bound;
    let started = Instant::now();
    let total = cells.len();
    let mut n = 0;
    let results = faults::run_matrix(&cfg, &cells, a.parallel, |r| {
        n += 1;
        eprintln!(
            "bench: [{n}/{total}] {}: {}{} ({:.0} s)",
            r.cell.label(),
            r.outcome.as_str(),
            if r.as_expected { "" } else { " (NOT EXPECTED)" },
            r.total_s
        );
    })
    .await;
    let doc = serde_json::json!({
        "benchmark": "faults",
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": machine_json("tcg"),
        "guest_memory_mib": cfg.vm_memory_mib,
        "workload_mib": cfg.workload_mib,
        "recovery_bound_s": cfg.recovery_bound_s,
        "parallel": a.parallel,
        "wall_s": started.elapsed().as_secs(),
        "cells": results,
    });
    let file = write_result(&a.out, "faults", &doc)?;
    let md = a.out.join("faults.md");
    let text = format!(
        "# Fault matrix\n\nEach migration phase x each fault, injected the moment the phase \
         begins (the server's hold points), on real daemons, QEMU (TCG) and the test guest; \
         written by `ferry bench faults` on {}.\n\n{}",
        doc["date"].as_str().unwrap_or_default(),
        faults::markdown(&results)
    );
    std::fs::write(&md, text)
        .map_err(|e| BenchError::failed(format!("cannot write {}: {e}", md.display())))?;
    if a.json {
        print_json(&doc)?;
    } else {
        print!("{}", faults::table(&results));
        println!(
            "{} cells in {} s; results written to {} and {}",
            results.len(),
            started.elapsed().as_secs(),
            file.display(),
            md.display()
        );
    }
    let bad: Vec<String> = results
        .iter()
        .filter(|r| !r.as_expected || r.outcome == Outcome::Violation)
        .map(|r| r.cell.label())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(BenchError::failed(format!(
            "{} cells broke the rules: {}",
            bad.len(),
            bad.join(", ")
        )))
    }
}

pub async fn soak(a: SoakConfig) -> BenchResult {
    if !nix_is_root() {
        return Err(BenchError::refused("ferry bench soak needs root"));
    }
    let image_dir = test_image().await?;
    let exe = own_binary()?;
    let cfg = ferry_lab::soak::SoakConfig {
        ferry_bin: exe,
        image_dir: Some(image_dir),
        count: a.count,
        seed: a.seed,
        keep: a.keep,
        recovery_bound_s: a.recovery_bound,
    };
    let report = ferry_lab::soak::run(&cfg, |r| {
        eprintln!(
            "bench: round {}: {} {} -> {}, {}: {} ({:.0} s){}",
            r.n,
            r.vm,
            r.from,
            r.to,
            r.fault,
            r.result,
            r.seconds,
            if r.problems.is_empty() {
                String::new()
            } else {
                format!(" PROBLEMS: {}", r.problems.join("; "))
            }
        )
    })
    .await
    .map_err(BenchError::failed)?;
    let doc = serde_json::json!({
        "benchmark": "soak",
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": machine_json("tcg"),
        "guest_memory_mib": 256,
        "workload_mib": 32,
        "report": report,
    });
    let file = write_result(&a.out, "soak", &doc)?;
    let s = &report.summary;
    if a.json {
        print_json(&doc)?;
    } else {
        print_table(
            &[
                "ROUNDS",
                "OK",
                "FAILED CLEANLY",
                "NEEDS ATTENTION",
                "LOST",
                "ERRORS",
            ],
            &[vec![
                s.rounds.to_string(),
                s.ok.to_string(),
                s.failed_cleanly.to_string(),
                s.needs_attention.to_string(),
                s.lost.to_string(),
                s.errors.to_string(),
            ]],
        );
        print_table(
            &[
                "MISMATCHES",
                "LEAKED QEMUS",
                "SOCKETS",
                "FILES",
                "TAPS",
                "WALL",
            ],
            &[vec![
                s.guest_mismatches.to_string(),
                s.leaked_qemus.to_string(),
                s.leaked_sockets.to_string(),
                s.leaked_files.to_string(),
                s.leaked_taps.to_string(),
                format!("{:.0} s", s.wall_s),
            ]],
        );
        println!(
            "seed {}; results written to {}",
            report.seed,
            file.display()
        );
    }
    let problems = report
        .rounds
        .iter()
        .filter(|r| !r.problems.is_empty())
        .count();
    if s.lost + s.errors > 0 || s.guest_mismatches > 0 || problems > 0 {
        return Err(BenchError::failed(format!(
            "{problems} rounds with problems, {} lost, {} errors, {} mismatches",
            s.lost, s.errors, s.guest_mismatches
        )));
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // /proc/self belongs to the effective user (no libc call needed for this).
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
