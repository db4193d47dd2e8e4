//! `ferry bench faults`: the fault matrix ([`ferry_lab::faults`]) on real daemons, QEMU and
//! the guest. Every cell gets its own lab; a cell whose outcome the recovery rules do not
//! allow, or that broke an invariant, makes the command fail after the whole table.

use std::time::Instant;

use ferry_lab::ensure_test_image;
use ferry_lab::faults::{self, Cell, MatrixConfig, Outcome};

use crate::bench::{machine_json, write_result};
use crate::cli::BenchFaultsArgs;
use crate::exit::{CliError, CliResult};
use crate::output::print_json;

pub async fn faults(a: BenchFaultsArgs) -> CliResult {
    let cells: Vec<Cell> = if a.cells.is_empty() {
        Cell::all()
    } else {
        a.cells
            .iter()
            .map(|c| c.parse::<Cell>())
            .collect::<Result<_, _>>()
            .map_err(CliError::refused)?
    };
    if !nix_is_root() {
        return Err(CliError::refused(
            "ferry bench faults needs root (it mounts a tmpfs over a destination pool)",
        ));
    }
    eprintln!("bench: preparing the test guest image");
    let image_dir =
        tokio::task::spawn_blocking(|| ensure_test_image(&mut |s: &str| eprintln!("  {s}")))
            .await
            .map_err(|e| CliError::failed(e.to_string()))?
            .map_err(CliError::failed)?;
    let exe = std::env::current_exe().map_err(|e| CliError::failed(e.to_string()))?;
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
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", md.display())))?;
    if a.json.json {
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
        Err(CliError::failed(format!(
            "{} cells broke the rules: {}",
            bad.len(),
            bad.join(", ")
        )))
    }
}

fn nix_is_root() -> bool {
    // /proc/self belongs to the effective user (no libc call needed for this).
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
