//! The scheduler in a real server core (SQLite, the loop, the followers; no hosts): who
//! may add and remove schedules and what is refused; fire times missed while the server
//! was down follow each schedule's rule at start; a run recorded but not acted on when
//! the server stopped is never acted on again. Scheduled balancing runs are used as the
//! task: with the balancer off the server refuses them, a real outcome without hosts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_api::*;
use ferry_server::core::Caller;
use ferry_server::store::NewEvent;
use ferry_server::{Action, ActionOutcome, Server, ServerConfig};
use uuid::Uuid;

fn server() -> (tempfile::TempDir, Arc<Server>) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::open(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        host_timeout: Duration::from_secs(5),
        orchestrator: Default::default(),
        ready_file: None,
        insecure: true,
        host_cert_validity: Duration::from_secs(3600),
        ha: Default::default(),
    })
    .unwrap();
    (dir, Arc::new(server))
}

fn user(role: Role) -> Caller {
    Caller::User {
        name: format!("{role}"),
        role,
    }
}

fn request(name: &str, when: ScheduleWhen, task: ScheduleTask) -> ScheduleRequest {
    ScheduleRequest {
        name: name.into(),
        when,
        task,
        missed: MissedRule::RunOnce,
    }
}

/// A schedule as an older server would have left it: created at `created`, firing at
/// `at` (which the API would refuse now, being past).
fn stored(name: &str, at: chrono::DateTime<Utc>, missed: MissedRule) -> Schedule {
    Schedule {
        name: name.into(),
        when: ScheduleWhen::At(at),
        task: ScheduleTask::Balance,
        missed,
        actor: "user:admin".into(),
        created_at: at - chrono::Duration::minutes(1),
        last_fire: None,
        last_operation: None,
        skipped: None,
        runs: 0,
        next_fire: None,
        last_run: None,
    }
}

async fn finished(server: &Server, id: Uuid) -> Operation {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(op) = server.store.operation(id).unwrap() {
            if op.state.is_finished() {
                return op;
            }
        }
        assert!(Instant::now() < deadline, "run {id} never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn story(server: &Server, id: Uuid) -> Vec<Event> {
    server
        .events(&EventQuery {
            operation: Some(id),
            ..Default::default()
        })
        .unwrap()
}

#[tokio::test]
async fn adding_needs_an_admin_and_everything_is_checked_before_anything_is_written() {
    let (_dir, s) = server();
    let sunday = ScheduleWhen::Cron("0 2 * * SUN".into());
    let add = |r: ScheduleRequest| Action::AddSchedule(r);
    let err = s
        .handle(
            &user(Role::Operator),
            add(request("a", sunday.clone(), ScheduleTask::Balance)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    for (req, code, says) in [
        (
            request(
                "a",
                ScheduleWhen::Cron("0 2 * *".into()),
                ScheduleTask::Balance,
            ),
            ErrorCode::BadRequest,
            "5",
        ),
        (
            request(
                "a",
                ScheduleWhen::At(Utc::now() - chrono::Duration::seconds(1)),
                ScheduleTask::Balance,
            ),
            ErrorCode::BadRequest,
            "in the past",
        ),
        (
            request(
                "a",
                sunday.clone(),
                ScheduleTask::Migrate {
                    vm: "nope".into(),
                    to: None,
                },
            ),
            ErrorCode::NotFound,
            "no VM named 'nope'",
        ),
        (
            request(
                "a",
                sunday.clone(),
                ScheduleTask::MaintenanceEnter { host: "zz".into() },
            ),
            ErrorCode::NotFound,
            "no host named 'zz'",
        ),
        (
            request("A!", sunday.clone(), ScheduleTask::Balance),
            ErrorCode::BadRequest,
            "schedule name",
        ),
    ] {
        let err = s.handle(&Caller::Insecure, add(req)).await.unwrap_err();
        assert_eq!(err.code, code, "{}", err.message);
        assert!(err.message.contains(says), "{}", err.message);
    }
    assert!(s.store.schedules().unwrap().is_empty());

    let ok = s
        .handle(
            &user(Role::Admin),
            add(request("a", sunday.clone(), ScheduleTask::Balance)),
        )
        .await
        .unwrap();
    let ActionOutcome::Schedule(added) = ok else {
        panic!("{ok:?}")
    };
    assert!(added.next_fire.is_some_and(|t| t > Utc::now()));
    assert_eq!(added.actor, "user:admin");
    let err = s
        .handle(
            &Caller::Insecure,
            add(request("a", sunday, ScheduleTask::Balance)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);
    // Viewers list, operators may not remove, admins do.
    let listed = s
        .query(&user(Role::Viewer), ferry_server::core::Query::Schedules)
        .await
        .unwrap();
    assert!(matches!(listed, ferry_server::core::QueryOutcome::Schedules(l) if l.len() == 1));
    let err = s
        .handle(&user(Role::Operator), Action::RemoveSchedule("a".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    s.handle(&user(Role::Admin), Action::RemoveSchedule("a".into()))
        .await
        .unwrap();
    assert!(s.store.schedules().unwrap().is_empty());
    // Every attempt is on the record with its actor.
    let removes = s
        .events(&EventQuery {
            kind: Some("schedule.remove".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(removes
        .iter()
        .any(|e| e.actor == "user:operator" && e.outcome == Outcome::Error));
    assert!(removes
        .iter()
        .any(|e| e.actor == "user:admin" && e.outcome == Outcome::Ok));
}

#[tokio::test]
async fn at_start_a_missed_fire_time_runs_once_or_is_skipped_by_the_rule() {
    let (_dir, s) = server();
    let past = Utc::now() - chrono::Duration::minutes(5);
    for (name, rule) in [("once", MissedRule::RunOnce), ("skip", MissedRule::Skip)] {
        assert!(s.store.add_schedule(&stored(name, past, rule)).unwrap());
    }
    let mut later = stored(
        "later",
        Utc::now() + chrono::Duration::hours(1),
        MissedRule::RunOnce,
    );
    later.created_at = Utc::now();
    assert!(s.store.add_schedule(&later).unwrap());
    s.spawn_scheduler();

    let deadline = Instant::now() + Duration::from_secs(20);
    let (once, skip) = loop {
        let once = s.store.schedule("once").unwrap().unwrap();
        let skip = s.store.schedule("skip").unwrap().unwrap();
        if once.last_operation.is_some() && skip.skipped.is_some() {
            break (once, skip);
        }
        assert!(Instant::now() < deadline, "{once:?} {skip:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // run-once: one run, for the missed time, refused by the server (balancer off).
    let run = finished(&s, once.last_operation.unwrap()).await;
    assert_eq!(run.state, OperationState::Failed);
    let r = run.run.clone().unwrap();
    assert_eq!((r.fire_at, r.missed, r.acted), (past, 1, true));
    assert!(
        r.outcome
            .as_deref()
            .unwrap_or("")
            .contains("balancer is off"),
        "{r:?}"
    );
    let kinds: Vec<String> = story(&s, run.id)
        .iter()
        .map(|e| format!("{} {}", e.kind, e.outcome.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            "operation.start info",
            "schedule.fire error",
            "operation.finish error"
        ]
    );
    assert_eq!(once.runs, 1);
    // skip: noted, not run, done.
    assert_eq!(skip.runs, 0);
    assert_eq!(skip.last_fire, Some(past));
    assert_eq!(skip.skipped.unwrap().count, 1);
    let runs: Vec<Operation> = s
        .store
        .operations(100)
        .unwrap()
        .into_iter()
        .filter(|o| o.kind == OperationKind::Scheduled)
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    // The later one waits.
    let later = s.store.schedule("later").unwrap().unwrap();
    assert_eq!((later.runs, later.last_fire), (0, None));
}

/// The previous server recorded the run and stopped before acting: the next one never
/// acts on it, it reports it interrupted.
#[tokio::test]
async fn a_run_recorded_but_not_acted_on_is_not_acted_on_again() {
    let (_dir, s) = server();
    let at = Utc::now() - chrono::Duration::minutes(1);
    let sched = stored("bal", at, MissedRule::RunOnce);
    assert!(s.store.add_schedule(&sched).unwrap());
    let now = Utc::now();
    let op = Operation {
        id: Uuid::new_v4(),
        kind: OperationKind::Scheduled,
        host: String::new(),
        state: OperationState::Running,
        actor: "schedule:bal".into(),
        created_at: now,
        updated_at: now,
        finished_at: None,
        items: vec![],
        estimate_s: None,
        assumptions: vec![],
        revision: 0,
        eta_s: None,
        run: Some(ScheduledRun {
            schedule: "bal".into(),
            task: ScheduleTask::Balance,
            fire_at: at,
            missed: 0,
            acted: false,
            migrations: vec![],
            operations: vec![],
            recommendations: vec![],
            refused: vec![],
            outcome: None,
        }),
    };
    let mut next = sched.clone();
    next.last_fire = Some(at);
    next.last_operation = Some(op.id);
    next.runs = 1;
    let mut start = NewEvent::new("schedule:bal", EventKind::OperationStart, "recorded");
    start.data = serde_json::json!({ "operation": op.id });
    assert!(s.store.record_fire(None, &next, &op, &[start]).unwrap());

    s.resume_operations();
    s.spawn_scheduler();
    let done = finished(&s, op.id).await;
    assert_eq!(done.state, OperationState::Failed);
    let r = done.run.unwrap();
    assert!(r.acted);
    assert!(
        r.outcome.as_deref().unwrap_or("").contains("interrupted"),
        "{r:?}"
    );
    // Nothing was asked of the balancer, and the schedule did not fire again.
    let plans = s
        .events(&EventQuery {
            kind: Some("balance".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(plans.is_empty(), "{plans:?}");
    assert_eq!(s.store.schedule("bal").unwrap().unwrap().runs, 1);
    let kinds: Vec<String> = story(&s, op.id)
        .iter()
        .map(|e| e.kind.to_string())
        .collect();
    assert_eq!(
        kinds,
        ["operation.start", "schedule.fire", "operation.finish"]
    );
}
