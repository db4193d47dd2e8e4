//! The store on a real SQLite file.

use chrono::Utc;
use ferry_api::*;
use ferry_server::store::{NewEvent, Store};
use uuid::Uuid;

fn vm(name: &str, host: &str) -> Vm {
    Vm {
        spec: VmSpec {
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
        progress: None,
        report: None,
        error: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        finished_at: None,
    }
}

#[test]
fn the_event_log_refuses_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    store
        .append_event(&NewEvent {
            actor: "t".into(),
            kind: "vm.create".into(),
            message: "m".into(),
            ..Default::default()
        })
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
    assert!(store.begin_migration(&migration("web1", "a", "b")).unwrap());
    assert!(!store.begin_migration(&migration("web1", "a", "c")).unwrap());
}

#[test]
fn completing_moves_the_vm_and_failing_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    store.insert_vm(&vm("web1", "a")).unwrap();
    let mut m = migration("web1", "a", "b");
    store.begin_migration(&m).unwrap();
    m.phase = Phase::Failed;
    store.save_migration(&m).unwrap();
    let v = store.vm("web1").unwrap().unwrap();
    assert_eq!((v.host.as_str(), v.migration), ("a", None));

    let mut m = migration("web1", "a", "b");
    store.begin_migration(&m).unwrap();
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
