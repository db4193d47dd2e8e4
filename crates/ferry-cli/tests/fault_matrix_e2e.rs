//! The fault matrix on real daemons, QEMU 10 (TCG) and the test guest: a fixed subset of
//! cells (`ferry bench faults` runs them all) that covers every phase and every fault at
//! least once. Each cell is its own lab: the server holds the migration the moment the
//! phase begins, the fault strikes there (a daemon or a QEMU SIGKILLed and the daemon
//! restarted, the destination pool filled, the migration link cut in the network lab),
//! the run is released, and the cell checks that the migration settles the way the
//! recovery rules say, that exactly one QEMU runs the VM on the host the server names
//! (none, and reported crashed, when the VM is lost), that the guest verifies clean in
//! memory and on disk, and that nothing leaked. Two cells run side by side.

mod common;

use common::*;
use ferry_lab::faults::{run_matrix, table, Cell, Fault, MatrixConfig, Outcome, Point};

#[tokio::test(flavor = "multi_thread")]
async fn every_phase_and_every_fault_settles_safely() {
    let lab = lab_config(&["a", "b"]);
    let mut cfg = MatrixConfig::new(ferry_bin(), lab.image_dir.clone());
    cfg.keep = lab.keep;
    // Ordered so that a slow cell (post-copy, an agent restart mid-stream) runs beside a
    // quick one.
    let cells = [
        Cell::new(Point::PostCopy, Fault::KillSourceQemu),
        Cell::new(Point::Preparing, Fault::KillServer),
        Cell::new(Point::Transferring, Fault::KillSourceAgent),
        Cell::new(Point::CopyingDisks, Fault::DestPoolFull),
        Cell::new(Point::CopyingDisks, Fault::KillDestAgent),
        Cell::new(Point::Transferring, Fault::KillDestQemu),
        Cell::new(Point::SwitchingOver, Fault::KillDestQemu),
        Cell::new(Point::SwitchingOver, Fault::KillSourceQemu),
        // In the network lab: the destination's migration link down for 20 s.
        Cell::new(Point::Transferring, Fault::LinkCut),
    ];
    for f in Fault::ALL {
        assert!(cells.iter().any(|c| c.fault == f), "{f:?} is covered");
    }
    for p in Point::ALL {
        assert!(cells.iter().any(|c| c.point == p), "{p:?} is covered");
    }
    let results = run_matrix(&cfg, &cells, 2, |r| {
        eprintln!(
            "cell {}: {} in {:.0} s",
            r.cell.label(),
            r.outcome.as_str(),
            r.total_s
        )
    })
    .await;
    println!("{}", table(&results));
    let bad: Vec<String> = results
        .iter()
        .filter(|r| !r.as_expected || r.outcome == Outcome::Violation)
        .map(|r| {
            format!(
                "{}: {} (expected one of {:?}); violations: {:?}; {}",
                r.cell.label(),
                r.outcome.as_str(),
                r.cell.expected(),
                r.violations,
                r.detail
            )
        })
        .collect();
    assert!(bad.is_empty(), "cells broke the rules:\n{}", bad.join("\n"));
    // A needs_attention must have been settled by the operator's resolve.
    for r in &results {
        if r.outcome == Outcome::NeedsAttention {
            assert!(r.resolved.is_some(), "{}: not resolved", r.cell.label());
        }
    }
}
