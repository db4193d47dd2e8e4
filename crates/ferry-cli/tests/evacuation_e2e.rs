//! The migration queue and host evacuation on three- and four-host labs with real daemons,
//! real QEMU and real guests. Runs are held at the server's hold points (`--test-hold-at`)
//! so every check happens at a known moment, never after a guessed sleep.
//!
//! - Evacuating a host with four running guests leaves it empty, every guest clean on
//!   another host, the anti-affinity rule kept, a server restart in the middle carried
//!   through, and never more migrations at once than the limits allow (replayed from the
//!   event log). The dry run plans without marking or moving anything.
//! - A fifth concurrent migration waits for the cluster limit, is cancelled instantly while
//!   it waits, and when asked again starts as soon as one of the four finishes. A cancelled
//!   evacuation leaves every VM on exactly one host. An evacuation that cannot place one VM
//!   moves the others and names that one.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use ferry_api::*;
use ferry_lab::{hold, test_vm_spec, verdict_after, wait_ready, Lab, Observer};
use uuid::Uuid;

/// Creates the guests (name, host, workload MiB, dirty rate MiB/s) all at once, then waits
/// until each one's workload runs.
async fn boot_all(lab: &Lab, guests: &[(&str, &str, u64, f64)]) {
    let c = lab.client();
    for (name, host, workload, rate) in guests {
        c.create_vm(&CreateVmRequest {
            host: Some(host.to_string()),
            spec: test_vm_spec(name, 160, *workload, *rate),
        })
        .await
        .unwrap_or_else(|e| panic!("VM {name} created: {e}"));
    }
    for (name, ..) in guests {
        wait_ready(&c, name, Duration::from_secs(300))
            .await
            .unwrap_or_else(|e| panic!("guest {name} ready: {e}"));
    }
}

/// Each guest's last status line, to judge it after it moved.
async fn statuses(lab: &Lab, names: &[&str]) -> HashMap<String, ferry_guest::status::StatusLine> {
    let c = lab.client();
    let mut out = HashMap::new();
    for name in names {
        let s = Observer {
            client: &c,
            vm: name,
        }
        .last_status()
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{name} prints its status"));
        out.insert(name.to_string(), s);
    }
    out
}

/// Every guest's own verdict (counter on, every page re-verified, no mismatch), and it
/// runs in exactly one QEMU, on the host the server names.
async fn assert_clean_and_single(
    lab: &Lab,
    hosts: &[&str],
    before: &HashMap<String, ferry_guest::status::StatusLine>,
) {
    let c = lab.client();
    for (name, status) in before {
        let v = verdict_after(&c, name, status, Duration::from_secs(180))
            .await
            .unwrap();
        assert!(v.ok(), "guest {name}: {}", v.describe());
        let running: Vec<&str> = hosts
            .iter()
            .copied()
            .filter(|h| lab.qemu_pid(h, name).is_some())
            .collect();
        let vm = c.vm(name).await.unwrap();
        assert_eq!(
            running,
            vec![vm.host.as_str()],
            "VM {name} runs exactly once"
        );
        assert_eq!(vm.state, VmState::Running, "VM {name}");
    }
}

/// Waits until the operation is finished (at most 6 min).
async fn finished(lab: &Lab, id: Uuid) -> Operation {
    let c = lab.client();
    let deadline = Instant::now() + Duration::from_secs(360);
    loop {
        if let Ok(op) = c.operation(id).await {
            if op.state.is_finished() {
                return op;
            }
            assert!(Instant::now() < deadline, "operation {id} still {op:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until `n` runs are held in `dir`; returns their files.
async fn held(dir: &Path, n: usize) -> Vec<std::path::PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let files = hold::held(dir);
        if files.len() >= n {
            return files;
        }
        assert!(
            Instant::now() < deadline,
            "{} run(s) held, waited for {n}",
            files.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Releases every run held in `dir` as soon as it is held, until dropped.
struct Releaser(tokio::task::JoinHandle<()>);

impl Releaser {
    fn start(dir: &Path) -> Releaser {
        let dir = dir.to_path_buf();
        Releaser(tokio::spawn(async move {
            loop {
                hold::release_all(&dir);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    }
}

impl Drop for Releaser {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When each migration ran, as event ids: from its start (the check recorded with its
/// admission, or leaving the queue) to its terminal phase.
struct Span {
    source: String,
    destination: String,
    start: i64,
    end: i64,
}

fn spans(events: &[Event], migrations: &[Migration]) -> Vec<Span> {
    let mut out = Vec::new();
    for m in migrations {
        let id = m.id;
        let of = move |kind: EventKind| {
            events
                .iter()
                .filter(move |e| e.migration == Some(id) && e.kind == kind)
        };
        let queued = of(EventKind::MigrationQueued).next().is_some();
        let start = if queued {
            of(EventKind::MigrationStarted).next()
        } else {
            of(EventKind::MigrationCheck).next()
        };
        let Some(start) = start else {
            continue; // never started (cancelled or refused while it waited)
        };
        let end = of(EventKind::MigrationPhase)
            .find(|e| e.outcome != Outcome::Info)
            .map(|e| e.id)
            .unwrap_or(i64::MAX);
        out.push(Span {
            source: m.source.clone(),
            destination: m.destination.clone(),
            start: start.id,
            end,
        });
    }
    out
}

/// At every start, how many ran per source, per destination, per pair and in all; each
/// must stay within the limits. Returns the most that ran at once.
fn assert_within_limits(spans: &[Span], limits: &MigrationLimits) -> usize {
    let mut most = 0;
    for s in spans {
        let now: Vec<&Span> = spans
            .iter()
            .filter(|o| o.start <= s.start && s.start < o.end)
            .collect();
        most = most.max(now.len());
        let count = |f: &dyn Fn(&Span) -> bool| now.iter().filter(|o| f(o)).count() as u32;
        let out = count(&|o| o.source == s.source);
        let inc = count(&|o| o.destination == s.destination);
        let pair = count(&|o| {
            (o.source == s.source && o.destination == s.destination)
                || (o.source == s.destination && o.destination == s.source)
        });
        assert!(out <= limits.per_host_outgoing, "{out} out of {}", s.source);
        assert!(
            inc <= limits.per_host_incoming,
            "{inc} into {}",
            s.destination
        );
        assert!(
            pair <= limits.per_pair,
            "{pair} between {} and {}",
            s.source,
            s.destination
        );
        assert!(
            now.len() as u32 <= limits.cluster,
            "{} in the cluster",
            now.len()
        );
    }
    most
}

#[tokio::test(flavor = "multi_thread")]
async fn evacuating_a_host_moves_every_guest_within_the_limits_through_a_server_restart() {
    const HOSTS: [&str; 4] = ["a", "b", "c", "d"];
    const GUESTS: [&str; 4] = ["e1", "e2", "e3", "e4"];
    let holds = tempfile::tempdir().unwrap();
    let mut cfg = lab_config(&HOSTS);
    cfg.server_args = hold::server_args(&["transferring"], holds.path());
    let mut lab = Lab::start(cfg.clone()).await.expect("lab starts");
    let c = lab.client();
    boot_all(
        &lab,
        &[
            ("e1", "a", 32, 4.0),
            ("e2", "a", 32, 4.0),
            ("e3", "a", 16, 0.0),
            ("e4", "a", 16, 0.0),
        ],
    )
    .await;
    let out = ferry(
        &lab,
        &["rule", "add", "apart", "--anti-affinity", "--vms", "e1,e2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // The dry run: a destination for each VM and an estimate; nothing marked or moved.
    let out = ferry(
        &lab,
        &["host", "maintenance", "enter", "a", "--dry-run", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: EvacuationPlan = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(plan.operation.is_none());
    assert_eq!(plan.items.len(), 4, "{plan:?}");
    assert!(plan.items.iter().all(|i| i.destination.is_some()));
    assert!(plan.estimate_s > 0.0, "{plan:?}");
    assert!(!c.host("a").await.unwrap().maintenance);
    assert!(c.migrations().await.unwrap().is_empty());
    let out = ferry(&lab, &["host", "maintenance", "enter", "a", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("e1"), "{}", stdout(&out));

    let before = statuses(&lab, &GUESTS).await;
    let out = ferry(
        &lab,
        &["host", "maintenance", "enter", "a", "--no-wait", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let started: EvacuationPlan = serde_json::from_str(&stdout(&out)).unwrap();
    let op = started.operation.expect("an operation").id;
    assert!(c.host("a").await.unwrap().maintenance);

    // Two migrations leave a at once (its outgoing limit), the others wait in the queue.
    // Both are held streaming before the server dies: one still preparing then would be
    // rolled back by the recovery rules (nothing sent yet) and the evacuation would end
    // incomplete, which is not what this test is about.
    held(holds.path(), 2).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mine = loop {
        let mine: Vec<Migration> = c
            .migrations()
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.operation == Some(op))
            .collect();
        if mine.len() == 4 {
            break mine;
        }
        assert!(Instant::now() < deadline, "the driver requested {mine:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Held runs cannot finish: at most two run, so at least two wait.
    let waiting: Vec<&Migration> = mine.iter().filter(|m| m.phase == Phase::Queued).collect();
    assert!(waiting.len() >= 2, "the queue holds the rest: {mine:?}");
    assert!(waiting.iter().all(|m| m.queue.is_some()));

    // The server dies mid-evacuation, with a migration streaming; a new one carries on.
    lab.kill_server().unwrap();
    lab.restart_server(&cfg).await.expect("server restarts");
    let _releaser = Releaser::start(holds.path());
    let done = finished(&lab, op).await;
    assert_eq!(done.state, OperationState::Succeeded, "{done:?}");
    assert!(done.items.iter().all(|i| i.state == ItemState::Moved));

    // The host is empty; every guest runs clean, once, elsewhere; the rule held.
    assert!(lab.qemus_on("a").is_empty(), "QEMU left on a");
    assert_clean_and_single(&lab, &HOSTS, &before).await;
    let e1 = c.vm("e1").await.unwrap().host;
    let e2 = c.vm("e2").await.unwrap().host;
    assert_ne!(e1, e2, "anti-affinity kept e1 and e2 apart");
    assert!(![&e1, &e2].contains(&&"a".to_string()));

    // Never more at once than the limits, replayed from the event log.
    let events = c
        .events(&EventQuery {
            limit: Some(10_000),
            ..Default::default()
        })
        .await
        .unwrap();
    let migrations = c.migrations().await.unwrap();
    let most = assert_within_limits(&spans(&events, &migrations), &MigrationLimits::default());
    assert!(most >= 2, "the evacuation ran migrations side by side");

    // Its whole story under its id: start, placements with runner-ups, queue, each move.
    let out = ferry(
        &lab,
        &[
            "events",
            "--operation",
            &op.to_string(),
            "--json",
            "--limit",
            "1000",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let story: Vec<Event> = serde_json::from_str(&stdout(&out)).unwrap();
    let count = |k: EventKind| story.iter().filter(|e| e.kind == k).count();
    assert_eq!(count(EventKind::OperationStart), 1);
    assert_eq!(count(EventKind::VmPlaced), 4);
    assert_eq!(count(EventKind::OperationMoved), 4);
    assert_eq!(count(EventKind::OperationFinish), 1);
    assert!(count(EventKind::MigrationQueued) >= 1);
    assert!(count(EventKind::MigrationStarted) >= 1);
    assert!(story
        .iter()
        .filter(|e| e.kind == EventKind::VmPlaced)
        .all(|e| e.message.contains("runner-up")));

    // Back in service.
    let out = ferry(&lab, &["host", "maintenance", "exit", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!c.host("a").await.unwrap().maintenance);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_waits_and_cancels_and_evacuations_cancel_and_name_what_cannot_move() {
    const HOSTS: [&str; 3] = ["a", "b", "c"];
    const GUESTS: [&str; 5] = ["q1", "q2", "q3", "q4", "q5"];
    let holds = tempfile::tempdir().unwrap();
    let mut cfg = lab_config(&HOSTS);
    cfg.server_args = hold::server_args(&["transferring"], holds.path());
    let lab = Lab::start(cfg).await.expect("lab starts");
    let c = lab.client();
    boot_all(
        &lab,
        &[
            ("q1", "a", 16, 2.0),
            ("q2", "a", 16, 0.0),
            ("q3", "a", 16, 0.0),
            ("q4", "a", 16, 0.0),
            ("q5", "a", 16, 0.0),
        ],
    )
    .await;
    let before = statuses(&lab, &GUESTS).await;
    let out = ferry(
        &lab,
        &[
            "cluster",
            "limits",
            "--per-host-out",
            "4",
            "--per-host-in",
            "4",
            "--per-pair",
            "4",
            "--cluster",
            "4",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let migrate = |vm: &str, to: &str| MigrateRequest {
        vm: vm.into(),
        to: Some(to.into()),
        options: Default::default(),
        priority: None,
    };

    // Four run (each held while it streams); the fifth waits for the cluster's limit.
    let mut four = Vec::new();
    for vm in ["q1", "q2", "q3", "q4"] {
        let m = c.migrate(&migrate(vm, "b")).await.unwrap();
        assert_ne!(m.phase, Phase::Queued, "{vm} starts at once");
        four.push(m);
    }
    let fifth = c.migrate(&migrate("q5", "c")).await.unwrap();
    assert_eq!(fifth.phase, Phase::Queued);
    let standing = fifth.queue.clone().expect("its place in the queue");
    assert_eq!(standing.position, 1);
    assert!(
        standing
            .waits_for
            .iter()
            .any(|w| matches!(w, WaitReason::Cluster { .. })),
        "{standing:?}"
    );
    let out = ferry(&lab, &["migration", "list"]);
    assert!(stdout(&out).contains("cluster"), "{}", stdout(&out));

    // Cancelling a waiting migration is instant and touches nothing.
    let out = ferry(&lab, &["migration", "cancel", &fifth.id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gone = c.migration(fifth.id).await.unwrap();
    assert_eq!(gone.phase, Phase::Cancelled);
    assert_eq!(c.vm("q5").await.unwrap().host, "a");
    assert!(lab.qemu_pid("c", "q5").is_none());

    // Asked again, it waits; once all four stream, one is let go and the fifth follows it.
    let fifth = c.migrate(&migrate("q5", "c")).await.unwrap();
    assert_eq!(fifth.phase, Phase::Queued);
    let files = held(holds.path(), 4).await;
    assert_eq!(c.migration(fifth.id).await.unwrap().phase, Phase::Queued);
    hold::release(&files[0]).unwrap();
    let released: Uuid = files[0]
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("a hold file is named by its migration");
    let first_done = wait_migration_event(&c, released, "migration.phase", |e| {
        e.outcome != Outcome::Info
    })
    .await;
    let fifth_started = wait_migration_event(&c, fifth.id, "migration.started", |_| true).await;
    assert!(
        fifth_started.id > first_done.id,
        "the fifth started after one of the four finished"
    );
    {
        let _releaser = Releaser::start(holds.path());
        for m in four.iter().chain([&fifth]) {
            let end =
                wait_migration_event(&c, m.id, "migration.phase", |e| e.outcome != Outcome::Info)
                    .await;
            assert_eq!(end.outcome, Outcome::Ok, "{}: {}", m.vm, end.message);
        }
    }
    assert_clean_and_single(&lab, &HOSTS, &before).await;

    // A cancelled evacuation: waiting migrations are dropped, the streaming ones rolled
    // back; every VM stays on exactly one host. The streams are capped so that the ones
    // held mid-stream are still streaming when the cancel reaches them.
    let out = ferry(
        &lab,
        &[
            "cluster",
            "limits",
            "--per-host-out",
            "2",
            "--per-host-in",
            "2",
            "--per-pair",
            "1",
            "--cluster",
            "8",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferry(&lab, &["cluster", "defaults", "--max-bandwidth", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = statuses(&lab, &GUESTS).await;
    let plan = c
        .enter_maintenance("b", &EnterMaintenanceRequest { dry_run: false })
        .await
        .unwrap();
    let op = plan.operation.expect("an operation").id;
    let streaming = held(holds.path(), 2).await;
    let out = ferry(&lab, &["host", "maintenance", "cancel", "b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The driver asks each running migration to cancel; once asked, let them go on.
    for file in &streaming {
        let id: Uuid = file
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .expect("a hold file is named by its migration");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.migration(id).await.unwrap().run.cancel_requested {
            assert!(Instant::now() < deadline, "migration {id} not cancelled");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    {
        let _releaser = Releaser::start(holds.path());
        let done = finished(&lab, op).await;
        assert_eq!(done.state, OperationState::Cancelled, "{done:?}");
        assert!(
            done.items.iter().all(|i| i.state == ItemState::Cancelled),
            "{done:?}"
        );
        for m in c.migrations().await.unwrap() {
            if m.operation == Some(op) {
                assert_eq!(m.phase, Phase::Cancelled, "{m:?}");
            }
        }
    }
    assert_clean_and_single(&lab, &HOSTS, &before).await;
    let out = ferry(&lab, &["cluster", "defaults", "--clear"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferry(&lab, &["host", "maintenance", "exit", "b"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // One VM no other host may take: the others move, that one is named with the rule.
    let on_b: Vec<String> = {
        let mut v = Vec::new();
        for g in GUESTS {
            if c.vm(g).await.unwrap().host == "b" {
                v.push(g.to_string());
            }
        }
        v
    };
    assert!(on_b.len() >= 2, "b holds several VMs: {on_b:?}");
    let stuck = on_b[0].clone();
    let out = ferry(
        &lab,
        &["rule", "add", "pinned", "--vms", &stuck, "--on-hosts", "b"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let before = statuses(&lab, &GUESTS).await;
    let _releaser = Releaser::start(holds.path());
    let out = ferry(&lab, &["host", "maintenance", "enter", "b"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "an incomplete evacuation is not a success"
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains(&stuck) && text.contains("pinned"), "{text}");
    let op = c
        .operations()
        .await
        .unwrap()
        .into_iter()
        .find(|o| o.host == "b" && o.state.is_finished() && o.id != op)
        .expect("the evacuation of b");
    assert_eq!(op.state, OperationState::Incomplete, "{op:?}");
    for item in &op.items {
        if item.vm == stuck {
            assert_eq!(item.state, ItemState::CouldNotMove);
            assert!(
                item.reason.as_deref().unwrap_or("").contains("pinned"),
                "{item:?}"
            );
        } else {
            assert_eq!(item.state, ItemState::Moved, "{item:?}");
        }
    }
    assert_eq!(c.vm(&stuck).await.unwrap().host, "b");
    let story = c
        .events(&EventQuery {
            operation: Some(op.id),
            kind: Some("operation.could_not_move".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(story.len(), 1, "{story:?}");
    assert_eq!(story[0].vm.as_deref(), Some(stuck.as_str()));
    assert_clean_and_single(&lab, &HOSTS, &before).await;
}
