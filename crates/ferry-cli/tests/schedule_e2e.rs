//! Scheduled operations on a two-host lab with real daemons, real QEMU and a real guest,
//! driven through the `ferry` CLI:
//!
//! - bad input (a bad cron expression, a time in the past, an unknown VM or host, a bad
//!   or taken name) is refused and changes nothing;
//! - a schedule set a few seconds ahead fires at its time, its migration of the guest runs
//!   and completes, and the run is an operation with its outcome and its whole story under
//!   its id;
//! - two schedules whose time passes while the server is down: the `run-once` one runs once
//!   when the server is back (its migration completes, the guest clean), the `skip` one
//!   does not run; a further restart runs neither again;
//! - a scheduled maintenance entry starts an evacuation that is part of the run's story,
//!   and a scheduled balancing run the server refuses (the balancer is off) is a failed
//!   run with the reason.
//!
//! Moments are decided by the server's own records (a run recorded, an operation
//! finished, a skip noted), never by a guessed sleep; the only waits are for a known fire
//! time to pass.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use common::*;
use ferry_api::*;
use ferry_lab::{test_vm_spec, verdict_after, wait_ready, Lab, Observer};
use uuid::Uuid;

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Sleeps until `t` has passed (a known fire time).
async fn until_past(t: DateTime<Utc>) {
    let left = (t - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(200)).await;
}

fn schedules(lab: &Lab) -> Vec<Schedule> {
    let out = ferry(lab, &["schedule", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("schedule list --json")
}

fn schedule(lab: &Lab, name: &str) -> Schedule {
    schedules(lab)
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("schedule {name} listed"))
}

/// Waits (up to `within`) until schedule `name` satisfies `pred`.
async fn wait_schedule(
    lab: &Lab,
    name: &str,
    within: Duration,
    pred: impl Fn(&Schedule) -> bool,
) -> Schedule {
    let deadline = Instant::now() + within;
    loop {
        let s = schedule(lab, name);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "schedule {name}: {s:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until operation `id` is finished (at most 3 min).
async fn finished(lab: &Lab, id: Uuid) -> Operation {
    let c = lab.client();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let op = c.operation(id).await.expect("the run's operation");
        if op.state.is_finished() {
            return op;
        }
        assert!(Instant::now() < deadline, "run {id} still {op:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The runs (operations) of one schedule.
async fn runs_of(lab: &Lab, name: &str) -> Vec<Operation> {
    lab.client()
        .operations()
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.run.as_ref().is_some_and(|r| r.schedule == name))
        .collect()
}

/// The guest's last status line, to judge it after it moved.
async fn status(lab: &Lab) -> ferry_guest::status::StatusLine {
    let c = lab.client();
    Observer {
        client: &c,
        vm: "g1",
    }
    .last_status()
    .await
    .unwrap()
    .expect("the guest prints its status")
}

/// The guest's own verdict after a move, and it runs in one QEMU, on `host`.
async fn assert_clean_on(lab: &Lab, host: &str, before: &ferry_guest::status::StatusLine) {
    let c = lab.client();
    let v = verdict_after(&c, "g1", before, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(v.ok(), "guest g1: {}", v.describe());
    let vm = c.vm("g1").await.unwrap();
    assert_eq!((vm.host.as_str(), vm.state), (host, VmState::Running));
    let running: Vec<&str> = ["a", "b"]
        .into_iter()
        .filter(|h| lab.qemu_pid(h, "g1").is_some())
        .collect();
    assert_eq!(running, vec![host], "g1 runs exactly once");
}

/// Every bad request is refused with exit status 2 and a reason naming the problem.
fn refused(lab: &Lab, args: &[&str], says: &str) {
    let out = ferry(lab, args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stdout(&out));
    assert!(
        stderr(&out).contains(says),
        "{args:?}: wanted '{says}' in: {}",
        stderr(&out)
    );
}

/// The next Sunday 02:00 UTC strictly after `t`.
fn next_sunday_two(t: DateTime<Utc>) -> DateTime<Utc> {
    let mut d = t
        .with_hour(2)
        .and_then(|d| d.with_minute(0))
        .and_then(|d| d.with_second(0))
        .and_then(|d| d.with_nanosecond(0))
        .unwrap();
    while d <= t || d.weekday() != chrono::Weekday::Sun {
        d += chrono::Duration::days(1);
    }
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn schedules_fire_on_time_and_after_a_server_outage_by_their_rule() {
    let (mut lab, cfg) = start_lab(&["a", "b"]).await;
    let c = lab.client();
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec: test_vm_spec("g1", 160, 16, 2.0),
    })
    .await
    .expect("VM created");
    wait_ready(&c, "g1", Duration::from_secs(240))
        .await
        .expect("guest ready");

    // ---- bad input is refused and changes nothing ---------------------------------
    let later = rfc3339(Utc::now() + chrono::Duration::hours(1));
    let past = rfc3339(Utc::now() - chrono::Duration::hours(1));
    refused(
        &lab,
        &["schedule", "add", "x", "--cron", "0 2 * *", "--balance"],
        "5",
    );
    refused(
        &lab,
        &[
            "schedule",
            "add",
            "x",
            "--cron",
            "0 2 * * FUNDAY",
            "--balance",
        ],
        "not valid",
    );
    refused(
        &lab,
        &["schedule", "add", "x", "--cron", "0 0 30 2 *", "--balance"],
        "never fires",
    );
    refused(
        &lab,
        &["schedule", "add", "x", "--at", &past, "--migrate", "g1"],
        "in the past",
    );
    refused(
        &lab,
        &[
            "schedule",
            "add",
            "x",
            "--at",
            "tomorrow",
            "--migrate",
            "g1",
        ],
        "RFC 3339",
    );
    refused(
        &lab,
        &["schedule", "add", "x", "--at", &later, "--migrate", "nope"],
        "no VM named 'nope'",
    );
    refused(
        &lab,
        &[
            "schedule",
            "add",
            "x",
            "--at",
            &later,
            "--migrate",
            "g1",
            "--to",
            "zz",
        ],
        "zz",
    );
    refused(
        &lab,
        &[
            "schedule",
            "add",
            "x",
            "--cron",
            "0 2 * * SUN",
            "--maintenance-enter",
            "zz",
        ],
        "zz",
    );
    refused(
        &lab,
        &["schedule", "add", "Bad Name", "--at", &later, "--balance"],
        "schedule name",
    );
    // A good one, listed with its next fire time (UTC); then the same name again.
    let out = ferry(
        &lab,
        &[
            "schedule",
            "add",
            "sunday-a",
            "--cron",
            "0 2 * * SUN",
            "--maintenance-enter",
            "a",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let sunday: Schedule = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(sunday.next_fire, Some(next_sunday_two(Utc::now())));
    assert_eq!(sunday.missed, MissedRule::RunOnce);
    refused(
        &lab,
        &["schedule", "add", "sunday-a", "--at", &later, "--balance"],
        "exists",
    );
    let listed = schedule(&lab, "sunday-a");
    assert_eq!(
        listed.task,
        ScheduleTask::MaintenanceEnter { host: "a".into() }
    );
    assert_eq!(listed.next_fire, sunday.next_fire);
    let out = ferry(&lab, &["schedule", "list"]);
    assert!(stdout(&out).contains("0 2 * * SUN"), "{}", stdout(&out));
    let out = ferry(&lab, &["schedule", "remove", "sunday-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    refused(
        &lab,
        &["schedule", "remove", "sunday-a"],
        "no schedule named",
    );
    assert!(schedules(&lab).is_empty());
    assert!(c.operations().await.unwrap().is_empty());
    assert!(c.migrations().await.unwrap().is_empty());
    assert!(!c.host("a").await.unwrap().maintenance);
    let adds = c
        .events(&EventQuery {
            kind: Some("schedule.add".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // Each refusal the server saw is on the record (the CLI itself refuses a bad time).
    let errors = adds.iter().filter(|e| e.outcome == Outcome::Error).count();
    assert_eq!(errors, 9, "{adds:?}");

    // ---- a schedule fires on time: its migration runs and completes ------------------
    let before = status(&lab).await;
    let at = Utc::now() + chrono::Duration::seconds(6);
    let out = ferry(
        &lab,
        &[
            "schedule",
            "add",
            "move-g1",
            "--at",
            &rfc3339(at),
            "--migrate",
            "g1",
            "--to",
            "b",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let added: Schedule = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        added.next_fire.map(|t| t.timestamp_millis()),
        Some(at.timestamp_millis())
    );
    let s = wait_schedule(&lab, "move-g1", Duration::from_secs(60), |s| {
        s.last_run.is_some()
    })
    .await;
    let run_id = s.last_run.unwrap().operation;
    let op = finished(&lab, run_id).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    assert_eq!(op.kind, OperationKind::Scheduled);
    assert_eq!(op.actor, "schedule:move-g1");
    assert!(
        op.created_at >= at,
        "fired at {}, before its time",
        op.created_at
    );
    let run = op.run.clone().unwrap();
    assert_eq!(
        (run.fire_at.timestamp_millis(), run.missed),
        (at.timestamp_millis(), 0)
    );
    assert_eq!(run.migrations.len(), 1, "{run:?}");
    let m = c.migration(run.migrations[0]).await.unwrap();
    assert_eq!(m.phase, Phase::Completed);
    assert_eq!(m.operation, Some(op.id), "the migration names its run");
    assert_clean_on(&lab, "b", &before).await;
    // Listed as done, with its run's outcome.
    let s = schedule(&lab, "move-g1");
    assert_eq!(s.next_fire, None);
    assert_eq!(s.runs, 1);
    assert_eq!(
        s.last_run.as_ref().unwrap().state,
        OperationState::Succeeded
    );
    let out = ferry(&lab, &["schedule", "list"]);
    assert!(stdout(&out).contains("succeeded"), "{}", stdout(&out));
    let out = ferry(&lab, &["operation", "show", &op.id.to_string()]);
    assert!(stdout(&out).contains("moved to b"), "{}", stdout(&out));
    // Its story under its id: recorded, fired, the migration's phases, finished.
    let out = ferry(
        &lab,
        &[
            "events",
            "--operation",
            &op.id.to_string(),
            "--json",
            "--limit",
            "1000",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let story: Vec<Event> = serde_json::from_str(&stdout(&out)).unwrap();
    let of = |k: EventKind| story.iter().filter(move |e| e.kind == k);
    assert_eq!(of(EventKind::OperationStart).count(), 1);
    let fire: Vec<&Event> = of(EventKind::ScheduleFire).collect();
    assert_eq!(fire.len(), 1);
    assert_eq!(fire[0].outcome, Outcome::Ok);
    assert_eq!(fire[0].migration, Some(m.id));
    assert!(of(EventKind::MigrationPhase).any(|e| e.outcome == Outcome::Ok));
    let finish: Vec<&Event> = of(EventKind::OperationFinish).collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0].outcome, Outcome::Ok);
    assert!(story
        .iter()
        .filter(|e| e.migration.is_none())
        .all(|e| e.actor == "schedule:move-g1"));

    // ---- fire times passing while the server is down ---------------------------------
    let before = status(&lab).await;
    let due = Utc::now() + chrono::Duration::seconds(8);
    for args in [
        vec!["--migrate", "g1", "--to", "a"],
        vec!["--maintenance-exit", "b", "--missed", "skip"],
    ] {
        let name = if args.contains(&"skip") {
            "back-skip"
        } else {
            "back-once"
        };
        let mut all = vec!["schedule", "add", name];
        let at = rfc3339(due);
        all.extend(["--at", at.as_str()]);
        all.extend(args);
        let out = ferry(&lab, &all);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    lab.kill_server().unwrap();
    until_past(due).await;
    lab.restart_server(&cfg).await.expect("server restarts");

    // run-once: one run, at start, standing for the missed fire time; it completes.
    let s = wait_schedule(&lab, "back-once", Duration::from_secs(60), |s| {
        s.last_run.is_some()
    })
    .await;
    let op = finished(&lab, s.last_run.unwrap().operation).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    let run = op.run.clone().unwrap();
    assert_eq!(run.missed, 1, "{run:?}");
    assert!(op.created_at > due);
    assert_eq!(
        c.migration(run.migrations[0]).await.unwrap().phase,
        Phase::Completed
    );
    assert_clean_on(&lab, "a", &before).await;
    // skip: noted, never run, done.
    let skipped = wait_schedule(&lab, "back-skip", Duration::from_secs(60), |s| {
        s.skipped.is_some()
    })
    .await;
    assert_eq!(skipped.skipped.as_ref().unwrap().count, 1);
    assert_eq!((skipped.runs, skipped.next_fire), (0, None));
    assert!(skipped.last_run.is_none());
    assert!(runs_of(&lab, "back-skip").await.is_empty());
    let skips = c
        .events(&EventQuery {
            kind: Some("schedule.skip".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!(skips[0].actor, "schedule:back-skip");

    // Another restart runs neither again. Two probes firing after it show the scheduler
    // has looked at every schedule since: a maintenance entry of the now empty host b
    // (its evacuation is the run's, and in its story) and a balancing run, refused
    // because the balancer is off (a failed run, with the reason).
    lab.kill_server().unwrap();
    lab.restart_server(&cfg).await.expect("server restarts");
    let probe_at = rfc3339(Utc::now() + chrono::Duration::seconds(2));
    for (name, task) in [
        ("probe-enter", ["--maintenance-enter", "b"]),
        ("probe-balance", ["--balance", "--missed"]),
    ] {
        let mut args = vec!["schedule", "add", name, "--at", probe_at.as_str()];
        args.extend(task);
        if name == "probe-balance" {
            args.push("skip");
        }
        let out = ferry(&lab, &args);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut probes = Vec::new();
    for name in ["probe-enter", "probe-balance"] {
        let s = wait_schedule(&lab, name, Duration::from_secs(60), |s| {
            s.last_run.is_some()
        })
        .await;
        probes.push(finished(&lab, s.last_run.unwrap().operation).await);
    }
    let enter = &probes[0];
    assert_eq!(enter.state, OperationState::Succeeded, "{enter:?}");
    let evac = enter.run.as_ref().unwrap().operations[0];
    assert_eq!(
        c.operation(evac).await.unwrap().kind,
        OperationKind::Evacuation
    );
    assert!(c.host("b").await.unwrap().maintenance);
    let story = c
        .events(&EventQuery {
            operation: Some(enter.id),
            kind: Some("operation.finish".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(story.len(), 2, "the evacuation's and the run's: {story:?}");
    let balance = &probes[1];
    assert_eq!(balance.state, OperationState::Failed, "{balance:?}");
    let why = balance.run.as_ref().unwrap().outcome.clone().unwrap();
    assert!(why.contains("balancer is off"), "{why}");
    let fired = c
        .events(&EventQuery {
            operation: Some(balance.id),
            kind: Some("schedule.fire".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].outcome, Outcome::Error);
    let out = ferry(&lab, &["schedule", "list"]);
    assert!(stdout(&out).contains("balancer is off"), "{}", stdout(&out));
    assert_eq!(runs_of(&lab, "back-once").await.len(), 1);
    assert!(runs_of(&lab, "back-skip").await.is_empty());
    assert_eq!(runs_of(&lab, "move-g1").await.len(), 1);
    assert_eq!(c.vm("g1").await.unwrap().host, "a");
    let out = ferry(&lab, &["host", "maintenance", "exit", "b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for name in [
        "move-g1",
        "back-once",
        "back-skip",
        "probe-enter",
        "probe-balance",
    ] {
        let out = ferry(&lab, &["schedule", "remove", name]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}
