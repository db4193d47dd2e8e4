//! Schedules in the store (schema v10) on a real SQLite file: add, list, remove; a run
//! is recorded with its operation and event in one compare-and-swap, so the same fire
//! time is never recorded twice; an operation's story includes what its run started.

use chrono::{DateTime, Duration, Utc};
use ferry_api::*;
use ferry_server::store::{NewEvent, Store};
use uuid::Uuid;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    (dir, store)
}

fn schedule(name: &str) -> Schedule {
    Schedule {
        name: name.into(),
        when: ScheduleWhen::Cron("0 2 * * SUN".into()),
        task: ScheduleTask::MaintenanceEnter { host: "a".into() },
        missed: MissedRule::RunOnce,
        actor: "user:admin".into(),
        created_at: Utc::now(),
        last_fire: None,
        last_operation: None,
        skipped: None,
        runs: 0,
        next_fire: None,
        last_run: None,
    }
}

fn run_of(s: &Schedule, fire_at: DateTime<Utc>) -> Operation {
    let now = Utc::now();
    Operation {
        id: Uuid::new_v4(),
        kind: OperationKind::Scheduled,
        host: "a".into(),
        state: OperationState::Running,
        actor: format!("schedule:{}", s.name),
        created_at: now,
        updated_at: now,
        finished_at: None,
        items: vec![],
        estimate_s: None,
        assumptions: vec![],
        revision: 0,
        eta_s: None,
        run: Some(ScheduledRun {
            schedule: s.name.clone(),
            task: s.task.clone(),
            fire_at,
            missed: 0,
            acted: false,
            migrations: vec![],
            operations: vec![],
            recommendations: vec![],
            refused: vec![],
            outcome: None,
        }),
    }
}

fn fired(s: &Schedule, fire_at: DateTime<Utc>, op: &Operation) -> Schedule {
    let mut next = s.clone();
    next.last_fire = Some(fire_at);
    next.last_operation = Some(op.id);
    next.runs += 1;
    next
}

fn start_event(op: &Operation) -> NewEvent {
    let mut e = NewEvent::new(op.actor.clone(), EventKind::OperationStart, "fires");
    e.data = serde_json::json!({ "operation": op.id });
    e
}

fn count_events(store: &Store) -> usize {
    store
        .events(&EventQuery {
            limit: Some(10_000),
            ..Default::default()
        })
        .unwrap()
        .len()
}

#[test]
fn schedules_are_added_once_listed_by_name_and_removed() {
    let (_dir, store) = store();
    assert!(store.add_schedule(&schedule("sun")).unwrap());
    assert!(store.add_schedule(&schedule("mon")).unwrap());
    let mut dup = schedule("sun");
    dup.task = ScheduleTask::Balance;
    assert!(!store.add_schedule(&dup).unwrap(), "the name is taken");
    let names: Vec<String> = store
        .schedules()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["mon", "sun"]);
    // The first one stays as it was.
    assert_eq!(
        store.schedule("sun").unwrap().unwrap().task,
        ScheduleTask::MaintenanceEnter { host: "a".into() }
    );
    assert!(store.remove_schedule("sun").unwrap());
    assert!(!store.remove_schedule("sun").unwrap());
    assert_eq!(store.schedule("sun").unwrap(), None);
    assert_eq!(store.schedules().unwrap().len(), 1);
}

/// Two loops (or a loop and a restarted server) deciding on the same fire time: the
/// second record is refused and writes nothing, operation and event included.
#[test]
fn a_fire_time_is_recorded_once_with_its_operation_and_event() {
    let (_dir, store) = store();
    let s = schedule("sun");
    assert!(store.add_schedule(&s).unwrap());
    let t1 = Utc::now() - Duration::minutes(1);
    let op = run_of(&s, t1);
    let before = count_events(&store);
    assert!(store
        .record_fire(None, &fired(&s, t1, &op), &op, &[start_event(&op)])
        .unwrap());
    assert_eq!(count_events(&store), before + 1);
    let now = store.schedule("sun").unwrap().unwrap();
    assert_eq!(now.last_fire, Some(t1));
    assert_eq!(now.last_operation, Some(op.id));
    assert_eq!(now.runs, 1);
    let stored = store
        .operation(op.id)
        .unwrap()
        .expect("the run's operation");
    assert_eq!(stored.kind, OperationKind::Scheduled);
    assert_eq!(stored.run.as_ref().unwrap().fire_at, t1);
    assert_eq!(store.unfinished_operations().unwrap().len(), 1);

    // Same decision again (stale `since`): refused, nothing written.
    let again = run_of(&s, t1);
    assert!(!store
        .record_fire(None, &fired(&s, t1, &again), &again, &[start_event(&again)])
        .unwrap());
    assert_eq!(store.operation(again.id).unwrap(), None);
    assert_eq!(count_events(&store), before + 1);
    assert_eq!(store.schedule("sun").unwrap().unwrap().runs, 1);

    // The next fire time, decided from what is stored: recorded.
    let t2 = t1 + Duration::seconds(30);
    let op2 = run_of(&now, t2);
    assert!(store
        .record_fire(Some(t1), &fired(&now, t2, &op2), &op2, &[start_event(&op2)])
        .unwrap());
    assert_eq!(store.schedule("sun").unwrap().unwrap().runs, 2);

    // A removed schedule fires no more.
    assert!(store.remove_schedule("sun").unwrap());
    let op3 = run_of(&now, t2);
    assert!(!store
        .record_fire(Some(t2), &fired(&now, t2, &op3), &op3, &[])
        .unwrap());
    assert_eq!(store.operation(op3.id).unwrap(), None);
    // Its runs stay on the record.
    assert!(store.operation(op.id).unwrap().is_some());
}

#[test]
fn a_skip_moves_the_schedule_on_with_its_event_and_no_operation() {
    let (_dir, store) = store();
    let s = schedule("sun");
    assert!(store.add_schedule(&s).unwrap());
    let t = Utc::now() - Duration::hours(1);
    let mut next = s.clone();
    next.last_fire = Some(t);
    next.skipped = Some(SkippedFires {
        fire_at: t,
        count: 3,
        decided_at: Utc::now(),
    });
    let e = NewEvent::new("schedule:sun", EventKind::ScheduleSkip, "skipped 3");
    let before = count_events(&store);
    assert!(store.record_skip(None, &next, &e).unwrap());
    assert!(!store.record_skip(None, &next, &e).unwrap(), "once");
    assert_eq!(count_events(&store), before + 1);
    let back = store.schedule("sun").unwrap().unwrap();
    assert_eq!(back.last_fire, Some(t));
    assert_eq!(back.skipped.unwrap().count, 3);
    assert_eq!(back.runs, 0);
    assert!(store.operations(10).unwrap().is_empty());
}

/// `ferry events --operation RUN` tells the run's story: its own events, the evacuation
/// it started and that evacuation's migrations, and the migrations it lists.
#[test]
fn a_runs_story_includes_what_it_started() {
    let (_dir, store) = store();
    let s = schedule("sun");
    assert!(store.add_schedule(&s).unwrap());
    let t = Utc::now();
    let mut op = run_of(&s, t);
    let evac = Uuid::new_v4();
    let listed = Uuid::new_v4();
    let run = op.run.as_mut().unwrap();
    run.operations.push(evac);
    run.migrations.push(listed);
    assert!(store
        .record_fire(None, &fired(&s, t, &op), &op, &[start_event(&op)])
        .unwrap());
    let mut of_evac = NewEvent::new("schedule:sun", EventKind::OperationStart, "evacuation");
    of_evac.data = serde_json::json!({ "operation": evac });
    store.append_event(&of_evac).unwrap();
    let mut of_listed = NewEvent::new("schedule:sun", EventKind::BalanceMove, "a move");
    of_listed.migration = Some(listed);
    store.append_event(&of_listed).unwrap();
    let mut unrelated = NewEvent::new("user:x", EventKind::BalanceMove, "another move");
    unrelated.migration = Some(Uuid::new_v4());
    store.append_event(&unrelated).unwrap();
    let story = store
        .events(&EventQuery {
            operation: Some(op.id),
            ..Default::default()
        })
        .unwrap();
    let messages: Vec<&str> = story.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["fires", "evacuation", "a move"]);
    // The evacuation's own story does not include the run's.
    let evac_story = store
        .events(&EventQuery {
            operation: Some(evac),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(evac_story.len(), 1);
}

/// A version 9 database (before schedules) is upgraded in place and keeps its data.
#[test]
fn a_version_9_database_gains_schedules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    {
        let store = Store::open(&path).unwrap();
        store.set_setting("k", "\"v\"").unwrap();
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE schedules; PRAGMA user_version = 9;")
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.setting("k").unwrap().as_deref(), Some("\"v\""));
    assert!(store.add_schedule(&schedule("sun")).unwrap());
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 10);
}
