//! Quick and cold migration on real daemons, real QEMU 10 under TCG and the real guest.
//!
//! Quick: a guest whose disk is on the shared pool (and which writes self-verifying blocks
//! to it) is saved to the pool and restored on b with zero mismatches, and the report has
//! the downtime; before that, the destination's QEMU is killed right after the save, and
//! the VM comes back running on the source, clean. A VM with a local-pool disk, or a pair
//! of hosts without a shared pool, is refused with the reason.
//!
//! Cold: a running VM is refused ("stop it first"); stopped, its local-pool disk is copied
//! to b, verified, the source's copy deleted, and the guest's disk checker finds every
//! block intact when it boots there.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use ferry_api::client::ServerClient;
use ferry_api::*;
use ferry_lab::{hold, verdict_after, wait_ready, Lab, Observer};

const QVM: &str = "quick1";
const CVM: &str = "cold1";

/// The state files in the shared pool (none must be left behind).
fn state_files(lab: &Lab) -> Vec<String> {
    std::fs::read_dir(lab.dir().join("shared-pool"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".vmstate"))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_end(c: &ServerClient, id: uuid::Uuid) -> Migration {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let cur = c.migration(id).await.unwrap();
        if cur.phase.is_settled() {
            return cur;
        }
        assert!(Instant::now() < deadline, "migration did not end: {cur:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Releases every run held in `dir` until dropped (the successful quick migration passes
/// the hold point the fault used).
struct Releaser(tokio::task::JoinHandle<()>);

impl Releaser {
    fn start(dir: &Path) -> Releaser {
        let dir = dir.to_path_buf();
        Releaser(tokio::spawn(async move {
            loop {
                hold::release_all(&dir);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }))
    }
}

impl Drop for Releaser {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn create_disk(lab: &Lab, host: &str, pool: &str, name: &str) {
    let out = ferry(
        lab,
        &[
            "disk", "create", name, "--host", host, "--pool", pool, "--size", "64M",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A guest writing self-verifying blocks (32 MiB area) to its disk `pool/image`.
fn spec_with_disk(name: &str, mem_mib: u64, rate: f64, pool: &str, image: &str) -> VmSpec {
    let mut spec = ferry_lab::test_vm_spec(name, 512, mem_mib, rate);
    spec.disks = vec![DiskRef {
        pool: pool.into(),
        image: image.into(),
    }];
    if let Boot::Image { cmdline, .. } = &mut spec.boot {
        *cmdline = ferry_image::with_disk(cmdline, "vda", 32, 2.0);
    }
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn quick_moves_a_running_guest_and_cold_moves_a_stopped_one_with_its_disk() {
    let holds = tempfile::tempdir().unwrap();
    let mut cfg = lab_config(&["a", "b"]);
    cfg.pools = true;
    cfg.server_args = hold::server_args(&["quick_saved"], holds.path());
    let lab = Lab::start(cfg).await.expect("lab");
    let c = lab.client();

    // The quick guest: memory workload plus a disk on the shared pool; the cold guest: a
    // disk on a's local pool. Both boot at once.
    create_disk(&lab, "a", "shared", "qdata");
    create_disk(&lab, "a", "local", "cdata");
    for spec in [
        spec_with_disk(QVM, 128, 20.0, "shared", "qdata"),
        spec_with_disk(CVM, 32, 1.0, "local", "cdata"),
    ] {
        c.create_vm(&CreateVmRequest {
            host: Some("a".into()),
            spec,
        })
        .await
        .expect("VM created");
    }
    for vm in [QVM, CVM] {
        wait_ready(&c, vm, Duration::from_secs(240))
            .await
            .expect("guest ready");
    }
    let qobs = Observer {
        client: &c,
        vm: QVM,
    };

    // 1. The destination's QEMU dies right after the save: the VM comes back on a.
    let before = qobs.last_status().await.unwrap().expect("status");
    let m = c
        .migrate(&MigrateRequest {
            vm: QVM.into(),
            to: Some("b".into()),
            options: MigrationOptions {
                mode: MigrationMode::Quick,
                ..Default::default()
            },
            priority: None,
        })
        .await
        .expect("quick migration accepted");
    let held = hold::wait_held(
        holds.path(),
        m.id,
        "quick_saved",
        Duration::from_secs(120),
        || async { Ok(()) },
    )
    .await
    .expect("held after the save");
    assert_eq!(
        state_files(&lab).len(),
        1,
        "the state is in the shared pool"
    );
    assert!(lab.kill_qemu("b", QVM), "b's waiting QEMU killed");
    hold::release(&held).unwrap();
    let failed = wait_end(&c, m.id).await;
    assert_eq!(failed.phase, Phase::Failed, "{failed:?}");
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or("")
            .contains("not waiting"),
        "{:?}",
        failed.error
    );
    let vm = c.vm(QVM).await.unwrap();
    assert_eq!(vm.host, "a");
    assert_eq!(vm.runtime.expect("runtime").state, VmState::Running);
    assert!(lab.qemus_on("b").is_empty(), "nothing left on b");
    assert!(
        state_files(&lab).is_empty(),
        "the state file went with the rollback"
    );
    let v = verdict_after(&c, QVM, &before, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(v.ok(), "guest after the failed restore: {}", v.describe());

    // 2. The quick migration through the CLI, with its report.
    let before = qobs.last_status().await.unwrap().expect("status");
    let releaser = Releaser::start(holds.path());
    let out = ferry(
        &lab,
        &[
            "vm", "migrate", QVM, "--mode", "quick", "--to", "b", "--json",
        ],
    );
    drop(releaser);
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    let m: Migration = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (m.phase, m.options.mode),
        (Phase::Completed, MigrationMode::Quick)
    );
    let r = m.report.clone().expect("report");
    let (save, restore) = (
        r.save_ms.expect("save time"),
        r.restore_ms.expect("restore time"),
    );
    assert!(
        r.downtime_ms > 0 && r.downtime_ms == save + restore,
        "{r:?}"
    );
    assert!(r.total_time_ms >= r.downtime_ms, "{r:?}");
    assert!(r.bytes_sent > 0, "{r:?}");
    eprintln!(
        "quick: total {} ms, downtime {} ms (save {save} + restore {restore}), state {} MiB",
        r.total_time_ms,
        r.downtime_ms,
        r.bytes_sent >> 20
    );
    let v = verdict_after(&c, QVM, &before, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(v.ok(), "guest after the quick migration: {}", v.describe());
    let vm = c.vm(QVM).await.unwrap();
    assert_eq!(vm.host, "b");
    let deadline = Instant::now() + Duration::from_secs(20);
    while (!lab
        .qemus_on("a")
        .iter()
        .all(|pid| Some(*pid) == lab.qemu_pid("a", CVM))
        || !state_files(&lab).is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lab.qemu_pid("a", QVM), None, "the source QEMU is gone");
    assert_eq!(lab.qemus_on("b").len(), 1);
    assert!(state_files(&lab).is_empty(), "the state file was deleted");
    let disk = wait_console(&qobs, "disk lines on b", |s| {
        s.disk_last.as_ref().is_some_and(|d| d.tick > 3)
    })
    .await;
    assert_eq!(disk.disk_mismatch_lines, 0);
    assert_eq!(disk.disk_last.expect("disk line").mismatches, 0);
    let events = migration_events(&c, m.id, "migration.state_file").await;
    assert!(
        events.iter().any(|e| e.message.contains("saved"))
            && events.iter().any(|e| e.message.contains("deleted")),
        "{events:?}"
    );

    // 2b. Back live (over QEMU's TLS), then quick again: a QEMU that arrived by a TLS
    // stream is saved to a file (no TLS there) and moves clean.
    for (mode, to) in [(MigrationMode::Live, "a"), (MigrationMode::Quick, "b")] {
        let before = qobs.last_status().await.unwrap().expect("status");
        let releaser = Releaser::start(holds.path());
        let m = c
            .migrate(&MigrateRequest {
                vm: QVM.into(),
                to: Some(to.into()),
                options: MigrationOptions {
                    mode,
                    ..Default::default()
                },
                priority: None,
            })
            .await
            .expect("migration accepted");
        let done = wait_end(&c, m.id).await;
        drop(releaser);
        assert_eq!(
            done.phase,
            Phase::Completed,
            "{mode} to {to}: {:?}",
            done.error
        );
        let v = verdict_after(&c, QVM, &before, Duration::from_secs(120))
            .await
            .unwrap();
        assert!(v.ok(), "guest after {mode} to {to}: {}", v.describe());
    }

    // 3. Cold: refused while the VM runs; quick refused for its local disk.
    let out = ferry(&lab, &["vm", "migrate", CVM, "--mode", "cold", "--to", "b"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("stop it first"), "{}", stderr(&out));
    let out = ferry(
        &lab,
        &["vm", "migrate", CVM, "--mode", "quick", "--to", "b"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("local/cdata") && stderr(&out).contains("does not copy disks"),
        "{}",
        stderr(&out)
    );

    // 4. Stopped, it moves with its disk, verified; then it boots on b, disk intact.
    let cobs = Observer {
        client: &c,
        vm: CVM,
    };
    wait_console(&cobs, "disk writes on a", |s| {
        s.disk_last
            .as_ref()
            .is_some_and(|d| d.written > 0 && d.tick > 2)
    })
    .await;
    let out = ferry(&lab, &["vm", "stop", CVM]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferry(
        &lab,
        &[
            "vm", "migrate", CVM, "--mode", "cold", "--to", "b", "--json",
        ],
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    let m: Migration = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (m.phase, m.options.mode),
        (Phase::Completed, MigrationMode::Cold)
    );
    let r = m.report.clone().expect("report");
    assert_eq!(r.disks_verified, Some(1), "{r:?}");
    assert!(r.disk_bytes_copied > 0, "{r:?}");
    let vm = c.vm(CVM).await.unwrap();
    assert_eq!((vm.host.as_str(), vm.state), ("b", VmState::Stopped));
    let on = |host: &str| lab.dir().join(host).join("pool-local/cdata.qcow2");
    let deadline = Instant::now() + Duration::from_secs(20);
    while on("a").exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!on("a").exists(), "the source's copy is deleted");
    assert!(on("b").exists(), "the disk is in b's local pool");
    let out = ferry(&lab, &["vm", "start", CVM]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(c.vm(CVM).await.unwrap().host, "b");
    let after = wait_console(&cobs, "disk verified after the boot on b", |s| {
        s.disk_verified_after_restart.is_some()
    })
    .await;
    let (blocks, mismatches) = after.disk_verified_after_restart.expect("verified");
    assert!(blocks > 8000, "the whole 32 MiB area: {blocks} blocks");
    assert_eq!(mismatches, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn quick_is_refused_without_a_pool_both_hosts_share() {
    let (lab, _) = start_lab(&["a", "b"]).await;
    boot_guest(&lab, "lonely", "a", 32, 1.0).await;
    let out = ferry(
        &lab,
        &["vm", "migrate", "lonely", "--mode", "quick", "--to", "b"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no storage pool is shared by a and b"),
        "{}",
        stderr(&out)
    );
    let c = lab.client();
    assert!(c.migrations().await.unwrap().is_empty(), "nothing started");
    let vm = c.vm("lonely").await.unwrap();
    assert_eq!(vm.host, "a");
    assert_eq!(vm.runtime.expect("runtime").state, VmState::Running);
}
