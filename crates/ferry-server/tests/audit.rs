//! The audit trail on a real SQLite file: the chain and checkpoints as written, the
//! upgrade that chains an older log, tampering found, a client verifying over HTTP, and
//! actions refused when their audit record cannot be written.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use ferry_api::audit::{self, Problem, PublicKey};
use ferry_api::*;
use ferry_server::core::Caller;
use ferry_server::store::{load_or_create_audit_key, NewEvent, Store, AUDIT_KEY_FILE};
use ferry_server::{Action, Server, ServerConfig};
use uuid::Uuid;

fn signed_store(dir: &Path) -> Store {
    Store::open(&dir.join("ferry.db"))
        .expect("open")
        .with_audit_key(load_or_create_audit_key(dir).expect("key"))
}

fn all_events(store: &Store) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    loop {
        let page = store
            .events(&EventQuery {
                after: Some(out.last().map_or(0, |e| e.id)),
                limit: Some(50),
                ..Default::default()
            })
            .expect("events");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn verify(store: &Store) -> audit::Report {
    let key = store.audit_public_key().expect("a signing key");
    audit::verify(
        &all_events(store),
        &store.checkpoints().expect("checkpoints"),
        &key,
    )
}

fn note(n: usize) -> NewEvent {
    NewEvent {
        data: serde_json::json!({"n": n, "rate": 1.5, "nested": {"b": [1, null], "a": "x"}}),
        vm: Some(format!("web{n}")),
        outcome: Some(Outcome::Ok),
        ..NewEvent::new("cli:test", EventKind::VmStart, format!("event {n}"))
    }
}

fn sql(path: &Path, batch: &str) {
    rusqlite::Connection::open(path)
        .expect("open")
        .execute_batch(batch)
        .expect(batch);
}

#[test]
fn every_write_path_chains_and_a_checkpoint_is_signed_every_64_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = signed_store(dir.path());
    // The three ways events are written: alone, with a VM's state, with a migration.
    let vm = Vm {
        spec: VmSpec {
            ha: None,
            name: "web1".into(),
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
        host: "a".into(),
        state: VmState::Running,
        migration: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        runtime: None,
    };
    store.insert_vm(&vm).unwrap();
    let mut m = Migration {
        id: Uuid::new_v4(),
        vm: "web1".into(),
        source: "a".into(),
        destination: "b".into(),
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
    };
    store
        .begin_migration(&mut m, &|_| Ok(()), &Default::default())
        .unwrap();
    for n in 0..130 {
        match n % 3 {
            0 => {
                store.append_event(&note(n)).unwrap();
            }
            1 => store
                .set_vm_state_logged("web1", VmState::Running, Some(&note(n)))
                .unwrap(),
            _ => store.save_migration_logged(&m, Some(&note(n))).unwrap(),
        }
    }
    let events = all_events(&store);
    assert_eq!(events.len(), 130);
    assert!(events.iter().all(|e| e.hash.is_some()));
    let cps = store.checkpoints().unwrap();
    assert_eq!(
        cps.iter().map(|c| c.event_id).collect::<Vec<_>>(),
        vec![64, 128]
    );
    let r = verify(&store);
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.events, r.checkpoints_ok), (130, 2));
    assert_eq!(r.signed_through, Some(128));
    assert_eq!(r.head, events[129].hash);

    // Asked for: a checkpoint at the head, once.
    let now = store.checkpoint_now().unwrap().expect("a checkpoint");
    assert_eq!(now.event_id, 130);
    assert_eq!(store.checkpoint_now().unwrap(), Some(now.clone()));
    assert_eq!(store.checkpoints().unwrap().len(), 3);
    assert_eq!(verify(&store).signed_through, Some(130));

    // The checkpoints are append-only like the events.
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
    for stmt in [
        "UPDATE checkpoints SET hash = 'x'",
        "DELETE FROM checkpoints",
    ] {
        let err = conn.execute(stmt, []).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{stmt}: {err}");
    }
}

#[test]
fn an_empty_log_has_no_checkpoint_to_sign() {
    let dir = tempfile::tempdir().unwrap();
    let store = signed_store(dir.path());
    assert_eq!(store.checkpoint_now().unwrap(), None);
    // And a store without a key refuses rather than pretending.
    let unsigned = Store::open(&dir.path().join("other.db")).unwrap();
    unsigned.append_event(&note(1)).unwrap();
    let err = unsigned.checkpoint_now().unwrap_err().to_string();
    assert!(err.contains("no signing key"), "{err}");
}

#[test]
fn paging_with_after_reads_the_log_oldest_first_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = signed_store(dir.path());
    for n in 0..30 {
        store.append_event(&note(n)).unwrap();
    }
    let ids =
        |q: EventQuery| -> Vec<i64> { store.events(&q).unwrap().iter().map(|e| e.id).collect() };
    let page = |after, limit| EventQuery {
        after: Some(after),
        limit: Some(limit),
        ..Default::default()
    };
    assert_eq!(ids(page(0, 10)), (1..=10).collect::<Vec<_>>());
    assert_eq!(ids(page(10, 10)), (11..=20).collect::<Vec<_>>());
    // Without `after`: the newest, as before.
    assert_eq!(
        ids(EventQuery {
            limit: Some(10),
            ..Default::default()
        }),
        (21..=30).collect::<Vec<_>>()
    );
}

#[test]
fn edits_and_deletions_behind_the_triggers_back_are_found_at_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ferry.db");
    let store = signed_store(dir.path());
    for n in 0..40 {
        store.append_event(&note(n)).unwrap();
    }
    store.checkpoint_now().unwrap();
    assert!(verify(&store).ok());
    // Someone with the file drops the triggers and edits the log.
    sql(
        &db,
        "DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete;
         UPDATE events SET actor = 'nobody' WHERE id = 10;
         DELETE FROM events WHERE id = 20;",
    );
    let r = verify(&store);
    assert_eq!(r.problems_total, 2, "{r:?}");
    assert!(
        matches!(r.problems[0], Problem::HashMismatch { event: 10, .. }),
        "{r:?}"
    );
    assert!(
        matches!(r.problems[1], Problem::HashMismatch { event: 21, .. }),
        "{r:?}"
    );

    // Cutting off the end (with the checkpoint that signed it still there) is found too.
    sql(&db, "DELETE FROM events WHERE id > 35;");
    let r = verify(&store);
    assert!(
        r.problems
            .iter()
            .any(|p| matches!(p, Problem::CheckpointEventMissing { event: 40, .. })),
        "{r:?}"
    );
}

#[test]
fn a_dropped_append_only_trigger_is_restored_on_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ferry.db");
    let store = signed_store(dir.path());
    store.append_event(&note(1)).unwrap();
    store.checkpoint_now().unwrap();
    drop(store);
    sql(
        &db,
        "DROP TRIGGER events_no_delete; DROP TRIGGER checkpoints_no_update;",
    );
    drop(signed_store(dir.path()));
    let conn = rusqlite::Connection::open(&db).unwrap();
    for stmt in ["DELETE FROM events", "UPDATE checkpoints SET hash = 'x'"] {
        let err = conn.execute(stmt, []).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{stmt}: {err}");
    }
}

/// The version 4 layout (before the chain), with events in it.
const V4_SCHEMA: &str = "
CREATE TABLE hosts (name TEXT PRIMARY KEY, url TEXT NOT NULL, migration_address TEXT NOT NULL,
    registered_at TEXT NOT NULL, last_seen TEXT NOT NULL, inventory TEXT NOT NULL,
    maintenance INTEGER NOT NULL DEFAULT 0);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE vms (name TEXT PRIMARY KEY, spec TEXT NOT NULL, host TEXT NOT NULL, state TEXT NOT NULL,
    migration TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE migrations (id TEXT PRIMARY KEY, vm TEXT NOT NULL, source TEXT NOT NULL,
    destination TEXT NOT NULL, phase TEXT NOT NULL, options TEXT NOT NULL, stream_uri TEXT,
    addresses TEXT, progress TEXT, report TEXT, error TEXT, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, finished_at TEXT, run TEXT, attention TEXT);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
    kind TEXT NOT NULL, vm TEXT, host TEXT, migration TEXT, outcome TEXT NOT NULL,
    message TEXT NOT NULL, data TEXT NOT NULL);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
INSERT INTO events (at, actor, kind, vm, host, migration, outcome, message, data) VALUES
    ('2026-01-01T00:00:00.000Z', 'cli:a@b', 'vm.create', 'web1', 'a', NULL, 'ok', 'VM web1 created', 'null'),
    ('2026-01-01T00:00:01.250Z', 'server', 'migration.phase', 'web1', NULL,
     '6f9619ff-8b86-d011-b42d-00c04fc964ff', 'info', 'transferring', '{\"b\":2,\"a\":[1.5,\"x\"]}'),
    ('2026-01-01T00:00:02.000Z', 'agent:a', 'future.kind', NULL, NULL, NULL, 'error', 'crashed', '{}');
PRAGMA user_version = 4;";

#[test]
fn a_version_4_log_is_chained_on_upgrade_and_stays_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ferry.db");
    sql(&db, V4_SCHEMA);
    let store = signed_store(dir.path());
    let events = all_events(&store);
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.hash.is_some()), "{events:?}");
    // The old rows, re-read, fit the chain; the log goes on from them.
    store.append_event(&note(4)).unwrap();
    store.checkpoint_now().unwrap();
    let r = verify(&store);
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.events, r.signed_through), (4, Some(4)));
    drop(store);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, ferry_server::store::SCHEMA_VERSION);
    let err = conn
        .execute("UPDATE events SET hash = NULL", [])
        .unwrap_err()
        .to_string();
    assert!(err.contains("append-only"), "the trigger is back: {err}");
}

#[test]
fn a_failed_upgrade_leaves_version_4_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ferry.db");
    sql(&db, V4_SCHEMA);
    // A row the chain cannot read (bad time) stops the upgrade.
    sql(
        &db,
        "INSERT INTO events (at, actor, kind, outcome, message, data)
         VALUES ('yesterday', 'x', 'vm.create', 'ok', 'm', 'null');",
    );
    let err = Store::open(&db).err().expect("refused").to_string();
    assert!(err.contains("yesterday"), "{err}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 4);
    let hash_column: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'hash'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(hash_column, 0, "the half-done upgrade was rolled back");
}

#[test]
fn the_signing_key_is_created_private_once_and_refused_when_garbled() {
    let dir = tempfile::tempdir().unwrap();
    let first = load_or_create_audit_key(dir.path()).unwrap().public_key();
    let path = dir.path().join(AUDIT_KEY_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = load_or_create_audit_key(dir.path()).unwrap().public_key();
    assert_eq!(first, again, "the same key on the next start");
    std::fs::write(&path, b"not a key").unwrap();
    let err = load_or_create_audit_key(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains(AUDIT_KEY_FILE), "{err}");
}

fn server(dir: &Path) -> Arc<Server> {
    Arc::new(
        Server::open(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.to_path_buf(),
            host_timeout: std::time::Duration::from_secs(10),
            orchestrator: Default::default(),
            ready_file: None,
            // Identities are not what this file tests; callers are built directly.
            insecure: true,
            host_cert_validity: std::time::Duration::from_secs(3600),
            ha: Default::default(),
        })
        .expect("server"),
    )
}

/// What `ferry events verify` does, over HTTP: the hashes survive JSON both ways.
#[tokio::test]
async fn a_client_verifies_the_log_the_api_serves() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    for n in 0..70 {
        s.store.append_event(&note(n)).unwrap();
    }
    let (listener, bound) = ferry_api::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let serving =
        tokio::spawn(
            async move { axum::serve(listener, ferry_server::api::router(s.clone())).await },
        );
    let c = ferry_api::client::ServerClient::new(&format!("http://{bound}")).unwrap();

    let head = c.checkpoint_now().await.unwrap().expect("a checkpoint");
    assert_eq!(head.event_id, 70);
    let published = c.checkpoints().await.unwrap();
    assert_eq!(
        published
            .checkpoints
            .iter()
            .map(|c| c.event_id)
            .collect::<Vec<_>>(),
        vec![64, 70]
    );
    let key = PublicKey::parse(&published.public_key).unwrap();
    let mut v = audit::Verifier::new(&key, &published.checkpoints);
    let mut after = 0;
    loop {
        let page = c
            .events(&EventQuery {
                after: Some(after),
                limit: Some(25),
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        page.iter().for_each(|e| v.push(e));
    }
    let r = v.finish();
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.events, r.signed_through), (70, Some(70)));
    serving.abort();
}

fn alice() -> Caller {
    Caller::User {
        name: "alice".into(),
        role: Role::Admin,
    }
}

fn defaults(streams: u8) -> Action {
    Action::SetMigrationDefaults(MigrationOptions {
        streams: Some(streams),
        ..Default::default()
    })
}

#[tokio::test]
async fn an_action_whose_audit_record_cannot_be_written_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    // A real SQLite failure: the database refuses every new event.
    sql(
        &dir.path().join("ferry.db"),
        "CREATE TRIGGER refuse_events BEFORE INSERT ON events
         BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;",
    );
    let err = s.handle(&alice(), defaults(4)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert_eq!(err.http_status(), 503);
    assert!(
        err.message.contains("audit log") && err.message.contains("disk full (test)"),
        "{}",
        err.message
    );
    assert_eq!(
        s.store.setting("migration_defaults").unwrap(),
        None,
        "the refused action did not take effect"
    );

    // Heartbeats still go through: a host does not drop out while the log is down.
    let reg = HostRegistration {
        name: "a".into(),
        url: "http://127.0.0.1:1".into(),
        migration_address: "127.0.0.1".into(),
        inventory: HostInventory::default(),
        vms: vec![],
        load: None,
        peers: None,
    };
    s.handle(
        &Caller::Host("a".into()),
        Action::RegisterHost(Box::new(reg)),
    )
    .await
    .unwrap();

    // The log works again: the request, then its outcome, both by the actor.
    sql(&dir.path().join("ferry.db"), "DROP TRIGGER refuse_events;");
    s.handle(&alice(), defaults(4)).await.unwrap();
    assert!(s.store.setting("migration_defaults").unwrap().is_some());
    let log = s
        .events(&EventQuery {
            kind: Some("cluster.migration_defaults".into()),
            ..Default::default()
        })
        .unwrap();
    let shape: Vec<(Outcome, &str, &serde_json::Value)> = log
        .iter()
        .map(|e| (e.outcome, e.actor.as_str(), &e.data["stage"]))
        .collect();
    assert_eq!(
        shape,
        vec![
            (Outcome::Info, "user:alice", &serde_json::json!("requested")),
            (Outcome::Ok, "user:alice", &serde_json::Value::Null),
        ]
    );
    let key = s.store.audit_public_key().unwrap();
    assert_eq!(
        PublicKey::parse(&s.checkpoints().unwrap().public_key),
        Ok(key)
    );
    assert!(verify(&s.store).ok());
}
