//! The store on a real SQLite file.

use chrono::Utc;
use ferry_api::*;
use ferry_server::store::{NewEvent, Store};
use uuid::Uuid;

fn vm(name: &str, host: &str) -> Vm {
    Vm {
        spec: VmSpec {
            ha: None,
            name: name.into(),
            vcpus: 1,
            memory_mib: 256,
            boot: Boot::Image {
                image: "test-guest".into(),
                cmdline: String::new(),
            },
            accel: Accel::Tcg,
            machine: "pc-q35-10.0".into(),
            cpu_model: "qemu64".into(),
            nics: vec![],
            disks: vec![],
        },
        host: host.into(),
        state: VmState::Running,
        migration: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        runtime: None,
    }
}

fn migration(vm: &str, from: &str, to: &str) -> Migration {
    Migration {
        id: Uuid::new_v4(),
        vm: vm.into(),
        source: from.into(),
        destination: to.into(),
        phase: Phase::Pending,
        options: MigrationOptions::default(),
        stream_uri: None,
        addresses: None,
        progress: None,
        report: None,
        error: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        finished_at: None,
        run: Default::default(),
        attention: None,
        priority: 0,
        operation: None,
        queue: None,
    }
}

#[test]
fn the_event_log_refuses_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    store
        .append_event(&NewEvent::new("t", EventKind::VmCreate, "m"))
        .unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
    let upd = conn
        .execute("UPDATE events SET message = 'x'", [])
        .unwrap_err()
        .to_string();
    assert!(upd.contains("append-only"), "{upd}");
    let del = conn
        .execute("DELETE FROM events", [])
        .unwrap_err()
        .to_string();
    assert!(del.contains("append-only"), "{del}");
}

#[test]
fn only_one_migration_per_vm_can_begin() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    store.insert_vm(&vm("web1", "a")).unwrap();
    store
        .begin_migration(
            &mut migration("web1", "a", "b"),
            &|_| Ok(()),
            &Default::default(),
        )
        .unwrap();
    let second = store
        .begin_migration(
            &mut migration("web1", "a", "c"),
            &|_| Ok(()),
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(second.contains("already migrating"), "{second}");
}

#[test]
fn completing_moves_the_vm_and_failing_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    store.insert_vm(&vm("web1", "a")).unwrap();
    let mut m = migration("web1", "a", "b");
    store
        .begin_migration(&mut m, &|_| Ok(()), &Default::default())
        .unwrap();
    m.phase = Phase::Failed;
    store.save_migration(&m).unwrap();
    let v = store.vm("web1").unwrap().unwrap();
    assert_eq!((v.host.as_str(), v.migration), ("a", None));

    let mut m = migration("web1", "a", "b");
    store
        .begin_migration(&mut m, &|_| Ok(()), &Default::default())
        .unwrap();
    m.phase = Phase::SwitchingOver;
    store.save_migration(&m).unwrap();
    assert_eq!(
        store.vm("web1").unwrap().unwrap().host,
        "a",
        "not moved before the destination runs"
    );
    m.phase = Phase::Completed;
    store.save_migration(&m).unwrap();
    let v = store.vm("web1").unwrap().unwrap();
    assert_eq!((v.host.as_str(), v.migration), ("b", None));
    assert_eq!(
        store.migration(m.id).unwrap().unwrap().phase,
        Phase::Completed
    );
}

#[test]
fn a_phase_change_and_its_event_land_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    let store = Store::open(&path).unwrap();
    store.insert_vm(&vm("web1", "a")).unwrap();
    let mut m = migration("web1", "a", "b");
    store
        .begin_migration(&mut m, &|_| Ok(()), &Default::default())
        .unwrap();
    let event = |kind: &str| NewEvent {
        migration: Some(m.id),
        ..NewEvent::new("server", EventKind::parse(kind), "VM web1 runs on b")
    };
    let logged = |store: &Store| {
        store
            .events(&EventQuery {
                migration: Some(m.id),
                ..Default::default()
            })
            .unwrap()
    };

    // The event cannot be written (a trigger refuses it): the phase does not move and the
    // VM stays where it was.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse_test BEFORE INSERT ON events WHEN NEW.kind = 'test.refused'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .unwrap();
    m.phase = Phase::Completed;
    let err = store
        .save_migration_logged(&m, Some(&event("test.refused")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused by the test"), "{err}");
    assert_eq!(
        store.migration(m.id).unwrap().unwrap().phase,
        Phase::Pending
    );
    assert_eq!(store.vm("web1").unwrap().unwrap().host, "a");
    assert!(logged(&store).is_empty());

    // Written: both are there.
    store
        .save_migration_logged(&m, Some(&event("migration.phase")))
        .unwrap();
    assert_eq!(
        store.migration(m.id).unwrap().unwrap().phase,
        Phase::Completed
    );
    assert_eq!(store.vm("web1").unwrap().unwrap().host, "b");
    let log = logged(&store);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].kind, EventKind::MigrationPhase);

    // The same for a VM's state.
    let err = store
        .set_vm_state_logged("web1", VmState::Crashed, Some(&event("test.refused")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused by the test"), "{err}");
    assert_eq!(store.vm("web1").unwrap().unwrap().state, VmState::Running);
}

#[test]
fn a_database_from_an_unknown_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 42).unwrap();
    drop(conn);
    let err = Store::open(&path).err().expect("must refuse").to_string();
    assert!(err.contains("schema version 42"), "{err}");
}

#[test]
fn a_version_1_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    {
        // The version 1 layout of the migrations table, with a row in it.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE hosts (name TEXT PRIMARY KEY, url TEXT NOT NULL, migration_address TEXT NOT NULL,
                registered_at TEXT NOT NULL, last_seen TEXT NOT NULL, inventory TEXT NOT NULL);
             CREATE TABLE vms (name TEXT PRIMARY KEY, spec TEXT NOT NULL, host TEXT NOT NULL, state TEXT NOT NULL,
                migration TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
             CREATE TABLE migrations (id TEXT PRIMARY KEY, vm TEXT NOT NULL, source TEXT NOT NULL,
                destination TEXT NOT NULL, phase TEXT NOT NULL, options TEXT NOT NULL, stream_uri TEXT,
                progress TEXT, report TEXT, error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
                finished_at TEXT);
             CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
                kind TEXT NOT NULL, vm TEXT, host TEXT, migration TEXT, outcome TEXT NOT NULL,
                message TEXT NOT NULL, data TEXT NOT NULL);
             INSERT INTO migrations VALUES ('6f9619ff-8b86-d011-b42d-00c04fc964ff', 'web1', 'a', 'b', 'completed',
                '{}', 'tcp:127.0.0.1:1', NULL, NULL, NULL, '2026-01-01T00:00:00.000Z',
                '2026-01-01T00:00:00.000Z', NULL);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let id = Uuid::parse_str("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
    let m = store
        .migration(id)
        .unwrap()
        .expect("old row still readable");
    assert_eq!((m.phase, m.addresses), (Phase::Completed, None));
    // Version 3: hosts have a maintenance flag, and there are cluster settings.
    assert!(!store.set_maintenance("nosuch", true).unwrap());
    assert_eq!(store.setting("cpu_baseline").unwrap(), None);
    store.set_setting("cpu_baseline", "\"qemu64\"").unwrap();
    assert_eq!(
        store.setting("cpu_baseline").unwrap().as_deref(),
        Some("\"qemu64\"")
    );
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, ferry_server::store::SCHEMA_VERSION);
}

#[test]
fn a_version_3_database_gains_run_state_and_in_flight_streams_count_as_started() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE hosts (name TEXT PRIMARY KEY, url TEXT NOT NULL, migration_address TEXT NOT NULL,
                registered_at TEXT NOT NULL, last_seen TEXT NOT NULL, inventory TEXT NOT NULL,
                maintenance INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE vms (name TEXT PRIMARY KEY, spec TEXT NOT NULL, host TEXT NOT NULL, state TEXT NOT NULL,
                migration TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
             CREATE TABLE migrations (id TEXT PRIMARY KEY, vm TEXT NOT NULL, source TEXT NOT NULL,
                destination TEXT NOT NULL, phase TEXT NOT NULL, options TEXT NOT NULL, stream_uri TEXT,
                progress TEXT, report TEXT, error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
                finished_at TEXT, addresses TEXT);
             CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
                kind TEXT NOT NULL, vm TEXT, host TEXT, migration TEXT, outcome TEXT NOT NULL,
                message TEXT NOT NULL, data TEXT NOT NULL);
             INSERT INTO migrations VALUES ('6f9619ff-8b86-d011-b42d-00c04fc964ff', 'web1', 'a', 'b', 'transferring',
                '{}', 'tcp:127.0.0.1:1', NULL, NULL, NULL, '2026-01-01T00:00:00.000Z',
                '2026-01-01T00:00:00.000Z', NULL, NULL);
             INSERT INTO migrations VALUES ('7f9619ff-8b86-d011-b42d-00c04fc964ff', 'web2', 'a', 'b', 'preparing',
                '{}', NULL, NULL, NULL, NULL, '2026-01-01T00:00:00.000Z',
                '2026-01-01T00:00:00.000Z', NULL, NULL);
             PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let streaming = store
        .migration(Uuid::parse_str("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap())
        .unwrap()
        .unwrap();
    assert!(streaming.run.outgoing_started, "{:?}", streaming.run);
    assert_eq!(streaming.attention, None);
    let preparing = store
        .migration(Uuid::parse_str("7f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap())
        .unwrap()
        .unwrap();
    assert!(!preparing.run.outgoing_started);
    // The new columns round-trip.
    let mut m = preparing;
    m.run.copies.push(PlannedCopy {
        index: 0,
        pool: "local".into(),
        image: "d".into(),
        virtual_size: 1 << 30,
        actual_size: 1 << 20,
    });
    m.run.controller.step = ControllerStep::Throttled(30);
    m.phase = Phase::NeedsAttention;
    m.attention = Some(Attention {
        reason: "r".into(),
        since: Utc::now(),
        source: SideFacts::Unreachable,
        destination: SideFacts::qemu(MigrationStatus::Completed, true),
    });
    store.save_migration(&m).unwrap();
    let back = store.migration(m.id).unwrap().unwrap();
    assert_eq!(back.run, m.run);
    assert_eq!(back.attention, m.attention);
    assert_eq!(
        store
            .unfinished_migrations()
            .unwrap()
            .iter()
            .filter(|u| u.phase == Phase::NeedsAttention)
            .count(),
        1
    );
}

#[test]
fn twenty_concurrent_claims_on_a_host_that_fits_three_admit_three() {
    use ferry_server::admission::admit;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(&dir.path().join("ferry.db")).unwrap());
    let mut reg = HostRegistration {
        name: "a".into(),
        url: "http://127.0.0.1:1".into(),
        migration_address: "127.0.0.1".into(),
        inventory: HostInventory::default(),
        vms: vec![],
        load: None,
        peers: None,
    };
    // 256 MiB guests with one vCPU take 256 + 96 + 4 + 16 = 372 MiB: 1200 MiB fit three.
    reg.inventory.memory_total_mib = 1200;
    reg.inventory.cpus = 64;
    reg.inventory.vcpu_overcommit = 1.0;
    store.upsert_host(&reg, Utc::now()).unwrap();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut v = vm(&format!("v{i}"), "a");
                v.state = VmState::Starting;
                let spec = v.spec.clone();
                store
                    .claim_new_vm(&v, &|view| admit(view, "a", &spec))
                    .is_ok()
            })
        })
        .collect();
    let admitted = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(admitted, 3);
    assert_eq!(store.vms().unwrap().len(), 3);
}

/// The queue in the store: past the pair limit a request is recorded `queued` (its VM
/// claimed), it leaves the queue only when the limits allow, with its event in the same
/// transaction; a withdrawn one releases its VM at once; an operation finds the migrations
/// it asked for and their events.
#[test]
fn the_queue_holds_what_the_limits_do_not_allow_and_releases_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    for n in ["v1", "v2", "v3"] {
        store.insert_vm(&vm(n, "a")).unwrap();
    }
    let limits = MigrationLimits::default(); // one per pair
    let mut first = migration("v1", "a", "b");
    store
        .begin_migration(&mut first, &|_| Ok(()), &limits)
        .unwrap();
    assert_eq!(first.phase, Phase::Pending);
    let op = Uuid::new_v4();
    let mut second = migration("v2", "a", "b");
    second.operation = Some(op);
    store
        .begin_migration(&mut second, &|_| Ok(()), &limits)
        .unwrap();
    assert_eq!(second.phase, Phase::Queued, "the pair a-b is busy");
    assert_eq!(store.vm("v2").unwrap().unwrap().migration, Some(second.id));
    assert_eq!(
        store.migration(second.id).unwrap().unwrap().phase,
        Phase::Queued
    );
    let started = |m: &Migration| {
        let mut e = NewEvent::new("server", EventKind::MigrationStarted, "started");
        e.migration = Some(m.id);
        e
    };
    let pick = |v: &ferry_server::store::ClusterView| {
        ferry_server::queue::decide(&limits, &v.migrations).start
    };
    // While the first runs, nothing leaves the queue.
    assert!(store.dequeue(&pick, &started).unwrap().is_empty());
    // The first ends: the second starts, with its event.
    first.phase = Phase::Completed;
    first.finished_at = Some(Utc::now());
    store.save_migration(&first).unwrap();
    let out = store.dequeue(&pick, &started).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].id, second.id);
    assert_eq!(out[0].phase, Phase::Pending);
    let story = store
        .events(&EventQuery {
            operation: Some(op),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(story.len(), 1, "{story:?}");
    assert_eq!(story[0].kind, EventKind::MigrationStarted);
    assert_eq!(store.migrations_of(op).unwrap().len(), 1);
    // A started migration cannot be withdrawn; a queued one can, and its VM is free.
    let none = |m: &Migration| NewEvent::new("t", EventKind::MigrationPhase, m.id.to_string());
    assert!(store
        .withdraw_queued(second.id, true, "no", &none)
        .unwrap()
        .is_none());
    let mut third = migration("v3", "a", "b");
    store
        .begin_migration(&mut third, &|_| Ok(()), &limits)
        .unwrap();
    assert_eq!(third.phase, Phase::Queued);
    let gone = store
        .withdraw_queued(third.id, true, "cancelled by test", &none)
        .unwrap()
        .unwrap();
    assert_eq!(gone.phase, Phase::Cancelled);
    assert_eq!(store.vm("v3").unwrap().unwrap().migration, None);
    // Limits survive in the store.
    let l = MigrationLimits {
        cluster: 3,
        ..Default::default()
    };
    store.set_limits(&l).unwrap();
    assert_eq!(store.limits().unwrap(), l);
}

/// Two writers of one operation (the evacuation driver and an operator's cancel): the one
/// that read an older revision is refused and writes nothing, events included.
#[test]
fn a_stale_operation_save_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    let now = Utc::now();
    let op = Operation {
        id: Uuid::new_v4(),
        kind: OperationKind::Evacuation,
        host: "a".into(),
        state: OperationState::Running,
        actor: "user:t".into(),
        created_at: now,
        updated_at: now,
        finished_at: None,
        items: vec![],
        estimate_s: None,
        assumptions: vec![],
        revision: 0,
        eta_s: None,
        run: None,
    };
    store
        .insert_operation(&op, &NewEvent::new("t", EventKind::OperationStart, "start"))
        .unwrap();
    let mut cancel = store.operation(op.id).unwrap().unwrap();
    let mut driver = cancel.clone();
    cancel.state = OperationState::Cancelling;
    assert!(store.save_operation(&cancel, &[]).unwrap());
    driver.state = OperationState::Succeeded;
    let before = store.events(&EventQuery::default()).unwrap().len();
    assert!(!store
        .save_operation(
            &driver,
            &[NewEvent::new("t", EventKind::OperationFinish, "x")]
        )
        .unwrap());
    assert_eq!(store.events(&EventQuery::default()).unwrap().len(), before);
    let now = store.operation(op.id).unwrap().unwrap();
    assert_eq!(now.state, OperationState::Cancelling);
    assert_eq!(now.revision, 1);
    assert_eq!(store.unfinished_operations().unwrap().len(), 1);
}
