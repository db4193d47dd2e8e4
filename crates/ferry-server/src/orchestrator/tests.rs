//! The orchestrator against a scripted fake cluster (`fake.rs`): every phase x every fault,
//! plus the rules that keep it honest (a failed save stops irreversible steps, a refused
//! transition stops the run, cancel and resolve). The store is real SQLite in a temp dir.
//!
//! Every cell checks the same promise: the migration ends (or waits for an operator with
//! its reason), the guest runs on at most one host and the store names that host, the
//! fake's judge saw no moment with two running copies and no removal of the only whole
//! copy, and the outcome is the one the recovery rules give for that fault.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_api::*;
use uuid::Uuid;

use super::fake::{FakeCluster, Fault};
use super::{Orchestrator, OrchestratorConfig, Run};
use crate::store::Store;

const VM: &str = "web1";

fn config() -> OrchestratorConfig {
    OrchestratorConfig {
        poll_interval: Duration::from_millis(5),
        silence_limit: Duration::from_millis(400),
        call_timeout: Duration::from_millis(200),
        recovery_bound: Duration::from_millis(600),
        save_attempts: 2,
        retry_every: Duration::from_millis(10),
        cleanup_wait: Duration::from_millis(1500),
        hold: None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Preparing,
    CopyingDisks,
    Transferring,
    SwitchingOver,
    PostCopy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Server,
    SourceAgent,
    DestAgent,
    DestQemu,
    SourceQemu,
    LinkCut,
    PoolFull,
}

/// What the recovery rules give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Completed: the guest runs on `b`, the store says `b`, the source was retired.
    Moved,
    /// Failed or cancelled: the guest runs on `a`, the destination was removed.
    RolledBack,
    /// The only whole copy died: failed, and the VM is reported crashed.
    Lost,
    /// Nothing provably safe: waits for an operator, with the facts.
    Attention,
}

struct Lab {
    _dir: tempfile::TempDir,
    db: PathBuf,
    store: Arc<Store>,
    fake: Arc<FakeCluster>,
    o: Arc<Orchestrator>,
}

fn spec() -> VmSpec {
    VmSpec {
        ha: None,
        name: VM.into(),
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
    }
}

impl Lab {
    fn new(stream_polls: u32) -> Lab {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("ferry.db");
        let store = Arc::new(Store::open(&db).expect("store"));
        store
            .insert_vm(&Vm {
                spec: spec(),
                host: "a".into(),
                state: VmState::Running,
                migration: None,
                created_at: Utc::now(),
                updated_at: Utc::now(),
                runtime: None,
            })
            .expect("vm");
        let fake = FakeCluster::new(VM, stream_polls);
        let o = Arc::new(Orchestrator::new(store.clone(), fake.clone(), config()));
        Lab {
            _dir: dir,
            db,
            store,
            fake,
            o,
        }
    }

    /// Admits a migration a -> b (with one local disk to copy if `copies`) and starts it.
    fn start(&self, options: MigrationOptions, copies: bool) -> Uuid {
        let mut m = pending(options);
        if copies {
            m.run.copies = vec![PlannedCopy {
                index: 0,
                pool: "local".into(),
                image: "web1-root".into(),
                virtual_size: 256 << 20,
                actual_size: 64 << 20,
            }];
        }
        self.store
            .begin_migration(&mut m, &|_| Ok(()), &Default::default())
            .expect("begin migration");
        self.o.start(m.clone());
        m.id
    }

    /// An operator's `resolve` of migration `id`.
    async fn resolve(&self, id: Uuid, keep: Keep, force: bool) -> Result<Migration, ApiError> {
        self.o
            .resolve(id, &ResolveRequest { keep, force }, "op")
            .await
    }

    /// The server dies and a new one starts on the same store and agents.
    fn restart_server(&mut self) {
        self.o.kill();
        self.o = Arc::new(Orchestrator::new(
            self.store.clone(),
            self.fake.clone(),
            config(),
        ));
        self.o.resume_unfinished();
    }

    fn migration(&self, id: Uuid) -> Migration {
        self.store
            .migration(id)
            .expect("read migration")
            .expect("migration exists")
    }

    fn vm(&self) -> Vm {
        self.store.vm(VM).expect("read vm").expect("vm exists")
    }

    /// Waits until the migration is settled and nothing runs for it any more.
    async fn settled(&self, id: Uuid) -> Migration {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.migration(id);
            if m.phase.is_settled() && !self.o.is_running(id) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "migration did not settle: {m:#?}\nstalled: {:?}",
                self.o.stalled(id)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The checks every cell makes, then the expected outcome's own.
    fn check(&self, m: &Migration, expect: Expect, what: &str) {
        let violations = self.fake.violations();
        assert!(violations.is_empty(), "{what}: {violations:?}");
        let running = self.fake.running_on();
        assert!(running.len() <= 1, "{what}: runs on {running:?}");
        let vm = self.vm();
        if m.phase.is_terminal() {
            assert_eq!(vm.migration, None, "{what}: the VM is still claimed");
        } else {
            // Waiting for an operator: still claimed, so nothing else starts on it.
            assert_eq!(vm.migration, Some(m.id), "{what}: released while unsettled");
        }
        match expect {
            Expect::Moved => {
                assert_eq!(m.phase, Phase::Completed, "{what}: {m:#?}");
                assert_eq!(running, vec!["b".to_string()], "{what}");
                assert_eq!(vm.host, "b", "{what}");
                assert_eq!(vm.state, VmState::Running, "{what}");
                assert!(
                    self.fake.vm_on("a").is_none_or(|v| v.exited),
                    "{what}: source not retired"
                );
            }
            Expect::RolledBack => {
                assert!(
                    matches!(m.phase, Phase::Failed | Phase::Cancelled),
                    "{what}: {m:#?}"
                );
                assert_eq!(running, vec!["a".to_string()], "{what}");
                assert_eq!(vm.host, "a", "{what}");
                assert_eq!(vm.state, VmState::Running, "{what}");
                assert!(
                    self.fake.vm_on("b").is_none_or(|v| v.exited),
                    "{what}: destination left behind: {:?}",
                    self.fake.vm_on("b")
                );
                assert!(m.error.is_some(), "{what}: no reason given");
            }
            Expect::Lost => {
                assert_eq!(m.phase, Phase::Failed, "{what}: {m:#?}");
                assert_eq!(vm.state, VmState::Crashed, "{what}");
                let e = m.error.clone().unwrap_or_default();
                assert!(
                    e.contains("lost") || e.contains("cannot be recovered"),
                    "{what}: {e}"
                );
                // Nothing of the VM is left running anywhere (a post-copy survivor holds
                // only part of the memory and is stopped too).
                for host in ["a", "b"] {
                    assert!(
                        self.fake.vm_on(host).is_none_or(|v| v.exited),
                        "{what}: a QEMU is left on {host}: {:?}",
                        self.fake.vm_on(host)
                    );
                }
            }
            Expect::Attention => {
                assert_eq!(m.phase, Phase::NeedsAttention, "{what}: {m:#?}");
                assert!(m.attention.is_some(), "{what}: no facts kept");
                assert_eq!(vm.host, "a", "{what}: the record moved without a commit");
            }
        }
    }
}

/// A migration of the VM from a to b, not started.
fn pending(options: MigrationOptions) -> Migration {
    Migration {
        id: Uuid::new_v4(),
        vm: VM.into(),
        source: "a".into(),
        destination: "b".into(),
        phase: Phase::Pending,
        options,
        stream_uri: None,
        addresses: None,
        progress: None,
        report: None,
        error: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        finished_at: None,
        run: RunState::default(),
        attention: None,
        priority: 0,
        operation: None,
        queue: None,
    }
}

fn postcopy_options() -> MigrationOptions {
    MigrationOptions {
        postcopy: Some(PostcopyPolicy::Automatic),
        max_throttle_pct: Some(0),
        ..Default::default()
    }
}

fn fault(kill: Kill) -> Fault {
    let outage = Duration::from_millis(300);
    match kill {
        Kill::Server => Fault::Notify,
        Kill::SourceAgent => Fault::AgentDown {
            host: "a".into(),
            for_: outage,
        },
        Kill::DestAgent => Fault::AgentDown {
            host: "b".into(),
            for_: outage,
        },
        Kill::DestQemu => Fault::KillQemu { host: "b".into() },
        Kill::SourceQemu => Fault::KillQemu { host: "a".into() },
        Kill::LinkCut => Fault::CutLink { for_: outage },
        Kill::PoolFull => Fault::PoolFull,
    }
}

/// One cell: run a migration, fire the fault at the moment its phase begins, restart the
/// server if it was the one killed, and check the outcome.
async fn cell(at: At, kill: Kill, expect: Expect) {
    let what = format!("{at:?} x {kill:?}");
    let postcopy = at == At::PostCopy;
    let copies = at == At::CopyingDisks || kill == Kill::PoolFull;
    let mut lab = Lab::new(if postcopy { 40 } else { 6 });
    let f = fault(kill);
    match at {
        At::Preparing => lab.fake.after("prepare_incoming", "b", f),
        At::CopyingDisks => lab.fake.after("start_disk_copy", "a", f),
        At::Transferring => lab.fake.after("start_outgoing", "a", f),
        At::SwitchingOver => lab.fake.at_completion(f),
        At::PostCopy => {
            lab.fake.hopeless();
            lab.fake.at_postcopy(f);
        }
    }
    let options = if postcopy {
        postcopy_options()
    } else {
        MigrationOptions::default()
    };
    let id = lab.start(options, copies);
    if kill == Kill::Server {
        tokio::time::timeout(Duration::from_secs(10), lab.fake.fired.notified())
            .await
            .unwrap_or_else(|_| panic!("{what}: the fault's moment never came"));
        lab.restart_server();
    }
    let m = lab.settled(id).await;
    lab.check(&m, expect, &what);
    if copies && expect == Expect::RolledBack {
        assert!(
            lab.fake.calls("delete_disk").contains(&"b".to_string()),
            "{what}: the destination's copy was left"
        );
    }
}

macro_rules! cells {
    ($($name:ident: $at:ident x $kill:ident => $expect:ident;)*) => {$(
        #[tokio::test]
        async fn $name() {
            cell(At::$at, Kill::$kill, Expect::$expect).await;
        }
    )*};
}

cells! {
    // Preparing: nothing was sent; the source holds everything. A source that cannot be
    // told to send fails the forward path: rolled back once it answers again.
    preparing_server: Preparing x Server => RolledBack;
    preparing_source_agent: Preparing x SourceAgent => RolledBack;
    preparing_dest_agent: Preparing x DestAgent => Moved;
    preparing_dest_qemu: Preparing x DestQemu => RolledBack;
    preparing_source_qemu: Preparing x SourceQemu => Lost;
    preparing_link: Preparing x LinkCut => Moved;
    preparing_pool_full: Preparing x PoolFull => Moved;
    // Copying disks: a restarted server follows a healthy copy on.
    copying_server: CopyingDisks x Server => Moved;
    copying_source_agent: CopyingDisks x SourceAgent => Moved;
    copying_dest_agent: CopyingDisks x DestAgent => Moved;
    copying_dest_qemu: CopyingDisks x DestQemu => RolledBack;
    copying_source_qemu: CopyingDisks x SourceQemu => Lost;
    copying_link: CopyingDisks x LinkCut => Moved;
    copying_pool_full: CopyingDisks x PoolFull => RolledBack;
    // Transferring: a restarted server follows a healthy stream on.
    transferring_server: Transferring x Server => Moved;
    transferring_source_agent: Transferring x SourceAgent => Moved;
    transferring_dest_agent: Transferring x DestAgent => Moved;
    transferring_dest_qemu: Transferring x DestQemu => RolledBack;
    transferring_source_qemu: Transferring x SourceQemu => Lost;
    transferring_link: Transferring x LinkCut => Moved;
    transferring_pool_full: Transferring x PoolFull => Moved;
    // Switching over: the source completed; the destination holds the VM. A server that
    // died here, with the record still saying transferring, must switch over, not roll
    // back; a destination killed now held the only running copy.
    switching_server: SwitchingOver x Server => Moved;
    switching_source_agent: SwitchingOver x SourceAgent => Moved;
    switching_dest_agent: SwitchingOver x DestAgent => Moved;
    switching_dest_qemu: SwitchingOver x DestQemu => Attention;
    switching_source_qemu: SwitchingOver x SourceQemu => Moved;
    switching_link: SwitchingOver x LinkCut => Moved;
    switching_pool_full: SwitchingOver x PoolFull => Moved;
    // Post-copy: the guest runs on the destination, its memory split. A server that died
    // just after asking for post-copy (record still transferring) follows it on; either
    // QEMU dying loses the VM, and that is reported, never called a success.
    postcopy_server: PostCopy x Server => Moved;
    postcopy_source_agent: PostCopy x SourceAgent => Moved;
    postcopy_dest_agent: PostCopy x DestAgent => Moved;
    postcopy_dest_qemu: PostCopy x DestQemu => Lost;
    postcopy_source_qemu: PostCopy x SourceQemu => Lost;
    postcopy_link: PostCopy x LinkCut => Moved;
}

/// A destination whose agent stays silent past the recovery bound after the source
/// completed: nothing is touched, the migration waits for an operator; once the agent is
/// back, keeping the destination commits the move and retires the source, and keeping the
/// source is refused (the destination runs the VM: resuming the source would make two).
#[tokio::test]
async fn a_silent_destination_after_the_switch_needs_an_operator_who_keeps_it() {
    let lab = Lab::new(6);
    lab.fake.at_completion(Fault::AgentDown {
        host: "b".into(),
        for_: Duration::from_millis(1200),
    });
    let id = lab.start(MigrationOptions::default(), false);
    let m = lab.settled(id).await;
    lab.check(&m, Expect::Attention, "silent destination");
    assert!(lab.fake.calls("remove").is_empty(), "something was removed");
    assert!(lab.fake.calls("cancel_outgoing").is_empty());
    assert!(lab.fake.calls("reclaim").is_empty());
    let reason = m
        .attention
        .as_ref()
        .map(|a| a.reason.clone())
        .unwrap_or_default();
    assert!(reason.contains("s"), "{reason}");

    tokio::time::sleep(Duration::from_millis(1300)).await; // the agent is back
    let keep_source = lab
        .resolve(id, Keep::Source, false)
        .await
        .expect_err("keeping the source must be refused");
    assert!(
        keep_source.message.contains("cannot keep the source"),
        "{}",
        keep_source.message
    );
    assert_eq!(lab.migration(id).phase, Phase::NeedsAttention);

    let m = lab
        .resolve(id, Keep::Destination, false)
        .await
        .expect("keep the destination");
    assert_eq!(m.phase, Phase::Completed);
    let m = lab.settled(id).await;
    lab.check(&m, Expect::Moved, "resolved: keep destination");
    assert_eq!(lab.fake.calls("hand_over"), vec!["a".to_string()]);
}

/// The destination died right after the switch: the source's QEMU completed (it must not
/// simply resume), so an operator decides. Keeping the destination is refused (it is
/// gone); keeping the source reclaims the paused source and the VM runs there again.
#[tokio::test]
async fn a_dead_destination_after_the_switch_is_resolved_by_reclaiming_the_source() {
    let lab = Lab::new(6);
    lab.fake.at_completion(Fault::KillQemu { host: "b".into() });
    let id = lab.start(MigrationOptions::default(), false);
    let m = lab.settled(id).await;
    lab.check(&m, Expect::Attention, "dead destination");
    assert!(
        lab.fake.calls("cancel_outgoing").is_empty(),
        "a completed source was cancelled"
    );
    assert!(lab.fake.running_on().is_empty());

    let refused = lab
        .resolve(id, Keep::Destination, true)
        .await
        .expect_err("the destination is gone");
    assert!(
        refused.message.contains("destination"),
        "{}",
        refused.message
    );

    let m = lab
        .resolve(id, Keep::Source, false)
        .await
        .expect("keep the source");
    assert_eq!(m.phase, Phase::Failed);
    assert_eq!(lab.fake.calls("reclaim"), vec!["a".to_string()]);
    lab.check(&m, Expect::RolledBack, "resolved: keep source");
}

/// Resolving a migration that does not need attention is refused and changes nothing.
#[tokio::test]
async fn only_a_migration_that_needs_attention_can_be_resolved() {
    let lab = Lab::new(3);
    let id = lab.start(MigrationOptions::default(), false);
    let m = lab.settled(id).await;
    assert_eq!(m.phase, Phase::Completed);
    let e = lab
        .resolve(id, Keep::Source, true)
        .await
        .expect_err("nothing to resolve");
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(lab.migration(id), m);
}

/// `Completed` cannot be saved (the database refuses it): the run stops on the spot and
/// nothing irreversible happens (no source shut down, no disk deleted); the record keeps
/// its last durable phase, and the next server, once saves work, completes the move.
#[tokio::test]
async fn a_failed_save_of_completed_stops_before_anything_irreversible() {
    let mut lab = Lab::new(4);
    let conn = rusqlite::Connection::open(&lab.db).expect("open db");
    conn.execute_batch(
        "CREATE TRIGGER refuse_completed BEFORE UPDATE ON migrations
         WHEN NEW.phase = 'completed'
         BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;",
    )
    .expect("trigger");
    let id = lab.start(MigrationOptions::default(), true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.o.stalled(id).is_none() {
        assert!(Instant::now() < deadline, "the run did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stalled = lab.o.stalled(id).unwrap_or_default();
    assert!(stalled.contains("cannot save"), "{stalled}");
    assert_eq!(lab.migration(id).phase, Phase::SwitchingOver);
    assert!(
        lab.fake.calls("hand_over").is_empty(),
        "the source was shut down"
    );
    assert!(
        lab.fake.calls("delete_disk").is_empty(),
        "a disk was deleted"
    );
    assert!(lab.fake.calls("remove").is_empty(), "a QEMU was removed");
    assert_eq!(lab.vm().host, "a");

    conn.execute_batch("DROP TRIGGER refuse_completed")
        .expect("drop trigger");
    lab.restart_server();
    let m = lab.settled(id).await;
    lab.check(&m, Expect::Moved, "after the save works again");
    assert_eq!(lab.fake.calls("delete_disk"), vec!["a".to_string()]);
}

/// A transition the phase machine refuses stops the run with the reason and saves
/// nothing.
#[tokio::test]
async fn a_refused_transition_stops_the_run_and_saves_nothing() {
    let lab = Lab::new(3);
    let mut m = pending(MigrationOptions::default());
    let id = m.id;
    lab.store
        .begin_migration(&mut m, &|_| Ok(()), &Default::default())
        .expect("begin");
    let mut run = Run::new(lab.o.clone(), m.clone());
    let e = run
        .advance(
            PhaseEvent::DestinationRunning,
            "skip ahead".into(),
            serde_json::Value::Null,
        )
        .await
        .expect_err("pending cannot complete");
    assert!(matches!(e, super::OrchestratorError::Transition(_)), "{e}");
    assert_eq!(run.m.phase, Phase::Pending);
    assert_eq!(lab.migration(id).phase, Phase::Pending);
    assert_eq!(lab.vm().host, "a");
}

/// An operator's cancel while memory moves rolls back: the destination is removed first,
/// then the source resumes.
#[tokio::test]
async fn a_cancel_while_transferring_rolls_back() {
    let lab = Lab::new(50);
    lab.fake.after("start_outgoing", "a", Fault::Notify);
    let id = lab.start(MigrationOptions::default(), false);
    lab.fake.fired.notified().await;
    lab.o.cancel(&lab.migration(id)).expect("cancel");
    let m = lab.settled(id).await;
    assert_eq!(m.phase, Phase::Cancelled);
    lab.check(&m, Expect::RolledBack, "cancel");
    assert_eq!(lab.fake.calls("remove"), vec!["b".to_string()]);
    assert_eq!(lab.fake.calls("cancel_outgoing"), vec!["a".to_string()]);
}

/// A source agent silent past the recovery bound mid-stream: the destination may hold
/// data, so nothing is killed; the migration waits for an operator.
#[tokio::test]
async fn a_long_silent_source_mid_stream_needs_an_operator() {
    let lab = Lab::new(50);
    lab.fake.after(
        "start_outgoing",
        "a",
        Fault::AgentDown {
            host: "a".into(),
            for_: Duration::from_secs(3),
        },
    );
    let id = lab.start(MigrationOptions::default(), false);
    let m = lab.settled(id).await;
    lab.check(&m, Expect::Attention, "silent source");
    assert!(
        lab.fake.calls("remove").is_empty(),
        "the destination was killed"
    );
}

/// The destination's agent goes silent during the disk copy, longer than the silence
/// limit: no memory was sent, so the copy is stopped and the migration rolls back; the
/// destination's partial QEMU is removed once its agent answers again.
#[tokio::test]
async fn a_destination_silent_during_the_disk_copy_is_rolled_back_and_cleaned_up_when_back() {
    let lab = Lab::new(6);
    lab.fake.copy_polls(100_000); // the copy goes on while the agent is down
    lab.fake.after(
        "start_disk_copy",
        "a",
        Fault::AgentDown {
            host: "b".into(),
            for_: Duration::from_millis(1000),
        },
    );
    let id = lab.start(MigrationOptions::default(), true);
    let m = lab.settled(id).await;
    lab.check(&m, Expect::RolledBack, "silent destination during the copy");
    let e = m.error.clone().unwrap_or_default();
    assert!(e.contains("stopped answering"), "{e}");
    assert!(lab.fake.calls("remove").contains(&"b".to_string()));
    assert_eq!(lab.fake.calls("cancel_outgoing"), vec!["a".to_string()]);
}
