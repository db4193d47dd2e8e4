//! A running guest moves A -> B -> A through the CLI while its workload dirties memory,
//! and comes out with every page intact.

mod common;

use std::time::Duration;

use common::*;
use ferry_api::*;
use ferry_lab::{verdict_after, Observer};

const VM: &str = "web1";

async fn hop(lab: &ferry_lab::Lab, from: &str, to: &str) -> Migration {
    let c = lab.client();
    let before = Observer { client: &c, vm: VM }
        .last_status()
        .await
        .unwrap()
        .expect("status before");
    let out = ferry(lab, &["vm", "migrate", VM, "--to", to, "--json"]);
    assert!(
        out.status.success(),
        "migrate {from}->{to} failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    let m: Migration = serde_json::from_str(&stdout(&out)).expect("--json prints the migration");
    assert_eq!(m.phase, Phase::Completed);
    assert_eq!((m.source.as_str(), m.destination.as_str()), (from, to));
    let r = m
        .report
        .clone()
        .expect("a completed migration has a report");
    assert!(r.bytes_sent > 0 && r.passes >= 1, "{r:?}");

    // The guest's own verdict: counter advanced on the new host, all pages re-verified,
    // zero mismatches.
    let v = verdict_after(&c, VM, &before, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(v.ok(), "guest verdict after {from}->{to}: {}", v.describe());

    // Exactly one host runs it: nothing left on the source, the server says the destination.
    assert!(lab.qemus_on(from).is_empty(), "a QEMU is left on {from}");
    assert_eq!(lab.qemus_on(to).len(), 1, "one QEMU on {to}");
    let vm = c.vm(VM).await.unwrap();
    assert_eq!(vm.host, to);
    assert_eq!(vm.runtime.expect("live runtime").state, VmState::Running);
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_migrates_there_and_back_with_zero_corrupt_pages() {
    let (lab, _) = start_lab(&["a", "b"]).await;
    boot_guest(&lab, VM, "a", 128, 40.0).await;

    let there = hop(&lab, "a", "b").await;
    let back = hop(&lab, "b", "a").await;

    // Every phase is in the event log, attributed, with its numbers.
    let out = ferry(&lab, &["events", "--vm", VM, "--json", "--limit", "500"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<Event> = serde_json::from_str(&stdout(&out)).unwrap();
    for m in [&there, &back] {
        let phases: Vec<&str> = events
            .iter()
            .filter(|e| e.migration == Some(m.id) && e.kind == EventKind::MigrationPhase)
            .map(|e| e.message.as_str())
            .collect();
        assert!(phases.len() >= 4, "phases of {}: {phases:?}", m.id);
        assert!(events.iter().any(|e| e.migration == Some(m.id)
            && e.kind == EventKind::MigrationRequest
            && e.actor == "user:admin"));
        let done = events
            .iter()
            .find(|e| {
                e.migration == Some(m.id)
                    && e.outcome == Outcome::Ok
                    && e.kind == EventKind::MigrationPhase
            })
            .expect("a completion event");
        assert!(
            done.data["downtime_ms"].is_u64(),
            "completion carries its numbers: {}",
            done.data
        );
    }
    assert!(events
        .iter()
        .any(|e| e.kind == EventKind::VmCreate && e.outcome == Outcome::Ok));
}
