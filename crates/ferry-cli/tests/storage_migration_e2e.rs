//! Storage migration (local-pool disks) on real agents, real QEMU 10 under TCG and the real
//! guest writing self-verifying blocks to the disk being copied.
//!
//! One guest lives through the whole story, so every failure is checked against the same
//! disk: the destination runs out of space mid-copy, its QEMU is killed mid-copy, its disk
//! export is unreachable, its agent dies mid-copy. Each time the VM must keep running on
//! the source with a clean disk, and the destination must be left without the partial
//! image. Then the move succeeds, the source image is deleted, the guest verifies clean on
//! the destination, comes back with `--keep-source`, and after a reboot the whole disk
//! area is verified once more.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use ferry_api::client::ServerClient;
use ferry_api::*;

const VM: &str = "mover";
const DISK: &str = "ldata";
/// The guest's self-verifying area on the disk, and how fast it rewrites it.
const AREA_MIB: u64 = 48;
const WRITE_MIB_S: f64 = 2.0;

fn free_bytes(dir: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    #[allow(clippy::unnecessary_cast)]
    let free = s.blocks_available() as u64 * s.fragment_size() as u64;
    free
}

/// Starts a migration to b through the API, capped so the copy takes a while.
async fn start(c: &ServerClient, max_mib: Option<u64>) -> Migration {
    c.migrate(&MigrateRequest {
        vm: VM.into(),
        to: Some("b".into()),
        options: MigrationOptions {
            max_bandwidth_mib: max_mib,
            ..Default::default()
        },
        priority: None,
    })
    .await
    .expect("migration accepted")
}

/// Waits until the migration is copying disks and at least `bytes` went over.
async fn wait_copying(c: &ServerClient, m: &Migration, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let cur = c.migration(m.id).await.unwrap();
        let copied = cur
            .progress
            .as_ref()
            .map(|p| disk_totals(&p.disks).0)
            .unwrap_or(0);
        if cur.phase == Phase::CopyingDisks && copied >= bytes {
            return;
        }
        assert!(
            !cur.phase.is_terminal(),
            "migration ended before the copy got going: {:?}",
            cur.error
        );
        assert!(Instant::now() < deadline, "copy not started: {cur:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_end(c: &ServerClient, m: &Migration) -> Migration {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let cur = c.migration(m.id).await.unwrap();
        if cur.phase.is_terminal() {
            return cur;
        }
        assert!(Instant::now() < deadline, "migration did not end: {cur:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The VM runs on a, its disk workload keeps writing and verifying with zero mismatches,
/// and b has neither a QEMU nor the image.
async fn assert_left_intact(lab: &ferry_lab::Lab, m: &Migration, why: &str, reason: &str) {
    let c = lab.client();
    assert_eq!(m.phase, Phase::Failed, "{why}: {m:?}");
    let error = m.error.clone().unwrap_or_default();
    assert!(error.contains(reason), "{why}: error was {error:?}");
    let vm = c.vm(VM).await.unwrap();
    assert_eq!(
        (vm.host.as_str(), vm.state),
        ("a", VmState::Running),
        "{why}"
    );
    assert!(lab.qemus_on("b").is_empty(), "{why}: a QEMU is left on b");
    let on_b = c.disks("b", "local").await.unwrap();
    assert!(
        on_b.iter().all(|d| d.name != DISK),
        "{why}: the partial image is left on b: {on_b:?}"
    );
    let obs = ferry_lab::Observer { client: &c, vm: VM };
    let before = wait_console(&obs, why, |s| s.disk_last.is_some()).await;
    let before = before.disk_last.expect("disk line");
    let after = wait_console(&obs, why, |s| {
        s.disk_last
            .as_ref()
            .is_some_and(|d| d.tick >= before.tick + 2)
    })
    .await;
    let d = after.disk_last.expect("disk line");
    assert_eq!(
        (d.mismatches, after.disk_mismatch_lines),
        (0, 0),
        "{why}: {d}"
    );
    assert!(
        d.written > before.written,
        "{why}: the guest still writes: {d}"
    );
    println!("{why}: refused cleanly: {error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_disks_move_with_the_vm_and_every_failure_leaves_the_source_intact() {
    let mut cfg = lab_config(&["a", "b"]);
    cfg.pools = true;
    let mut lab = ferry_lab::Lab::start(cfg.clone()).await.expect("lab");
    let c = lab.client();
    let out = ferry(
        &lab,
        &[
            "disk", "create", DISK, "--host", "a", "--pool", "local", "--size", "64M",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut spec = ferry_lab::test_vm_spec(VM, 512, 32, 1.0);
    spec.disks = vec![DiskRef {
        pool: "local".into(),
        image: DISK.into(),
    }];
    if let Boot::Image { cmdline, .. } = &mut spec.boot {
        *cmdline = ferry_image::with_disk(cmdline, "vda", AREA_MIB, WRITE_MIB_S);
    }
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec,
    })
    .await
    .unwrap();
    ferry_lab::wait_ready(&c, VM, Duration::from_secs(240))
        .await
        .unwrap();
    let obs = ferry_lab::Observer { client: &c, vm: VM };
    // The whole area is written once before the disk status lines start.
    wait_console(&obs, "disk initialised", |s| s.disk_last.is_some()).await;
    let b_pool = lab
        .agents
        .iter()
        .find(|a| a.name == "b")
        .expect("agent b")
        .state_dir
        .join("pool-local");

    // 1. The destination runs out of space mid-copy: room for the data when checked,
    //    then something else fills the pool.
    {
        let _tmpfs = Tmpfs::mount(&b_pool, 128);
        let m = start(&c, Some(4)).await;
        wait_copying(&c, &m, 4 << 20).await;
        let filler = b_pool.join("filler.bin");
        let fill = free_bytes(&b_pool).saturating_sub(2 << 20);
        let out = std::process::Command::new("fallocate")
            .args(["-l", &fill.to_string()])
            .arg(&filler)
            .output()
            .expect("fallocate runs");
        assert!(out.status.success(), "fallocate: {out:?}");
        let m = wait_end(&c, &m).await;
        assert_left_intact(&lab, &m, "destination out of space", "No space left").await;
        // The copy's progress went into the event log, bytes copied and outstanding.
        let events = migration_events(&c, m.id, "migration.disks").await;
        let e = events.first().expect("a disk progress event");
        assert!(e.message.contains("outstanding"), "{}", e.message);
        assert!(
            e.data["copied_bytes"].as_u64().unwrap_or(0) > 0,
            "{:?}",
            e.data
        );
        std::fs::remove_file(&filler).unwrap();
    }

    // 2. The destination's QEMU dies mid-copy.
    let m = start(&c, Some(4)).await;
    wait_copying(&c, &m, 4 << 20).await;
    assert!(lab.kill_qemu("b", VM), "b's QEMU was running");
    let m = wait_end(&c, &m).await;
    assert_left_intact(&lab, &m, "destination QEMU killed", "b").await;

    // 3. The export is unreachable: b sits behind a relay (as behind a NAT) that forwards
    //    its fixed migration port P but not the disk export's P+1. The pre-migration probe
    //    goes through (it uses P); the copy cannot reach the export.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = ferry_lab::relay::Relay::start(
        format!("127.0.0.3:{port}").parse().unwrap(),
        ferry_lab::relay::RelayConfig::new(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::ZERO,
        ),
    )
    .await
    .expect("relay");
    let port_arg = port.to_string();
    lab.restart_agent_with(
        &cfg,
        "b",
        &[
            "--migration-port",
            &port_arg,
            "--migration-advertise",
            "127.0.0.3",
        ],
    )
    .await
    .unwrap();
    wait_host_registered(&lab, "b").await;
    let m = start(&c, Some(4)).await;
    let m = wait_end(&c, &m).await;
    assert_left_intact(
        &lab,
        &m,
        "export unreachable",
        &format!(
            "cannot reach the destination's disk export 127.0.0.3:{}",
            port + 1
        ),
    )
    .await;
    relay.stop().await;
    lab.restart_agent_with(&cfg, "b", &[]).await.unwrap();
    wait_host_registered(&lab, "b").await;

    // 4. The destination's agent dies mid-copy and comes back later: the server gives up
    //    on it, the source goes on alone, and once the agent is back its incoming QEMU
    //    and the partial image are removed.
    let m = start(&c, Some(2)).await;
    wait_copying(&c, &m, 2 << 20).await;
    lab.kill_agent("b").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cur = c.migration(m.id).await.unwrap();
        if cur.phase == Phase::RollingBack || cur.phase.is_terminal() {
            break;
        }
        assert!(Instant::now() < deadline, "no rollback without b's agent");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    lab.restart_agent_with(&cfg, "b", &[]).await.unwrap();
    wait_host_registered(&lab, "b").await;
    let m = wait_end(&c, &m).await;
    assert_left_intact(&lab, &m, "destination agent died", "stopped answering").await;

    // 5. The move itself: disks in sync, memory, switch-over; the source image goes.
    let out = ferry(&lab, &["vm", "migrate", VM, "--to", "b", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m: Migration = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(m.phase, Phase::Completed);
    let report = m.report.clone().expect("report");
    assert!(
        report.disk_bytes_copied >= AREA_MIB << 20,
        "the disk data was copied: {report:?}"
    );
    assert_eq!(c.vm(VM).await.unwrap().host, "b");
    // The source QEMU is retired and its image deleted right after the switch.
    wait_disks(&c, "a", "source image deleted", |d| {
        d.iter().all(|d| d.name != DISK)
    })
    .await;
    let on_b = c.disks("b", "local").await.unwrap();
    let img = on_b.iter().find(|d| d.name == DISK).expect("image on b");
    assert_eq!(img.in_use_by.as_deref(), Some(VM));
    assert_eq!(img.virtual_size, 64 << 20);
    assert!(migration_events(&c, m.id, "migration.phase")
        .await
        .iter()
        .any(|e| e.message.contains("in sync")));
    // The event is written once the agent's delete returns, a moment after the listing
    // above can already show the image gone.
    wait_migration_event(&c, m.id, "migration.source_disks", |e| {
        e.outcome == Outcome::Ok
    })
    .await;
    let first = wait_console(&obs, "disk status on b", |s| s.disk_last.is_some()).await;
    let first = first.disk_last.expect("disk line");
    let later = wait_console(&obs, "disk progress on b", |s| {
        s.disk_last
            .as_ref()
            .is_some_and(|d| d.tick >= first.tick + 3)
    })
    .await;
    let d = later.disk_last.expect("disk line");
    assert_eq!((d.mismatches, later.disk_mismatch_lines), (0, 0), "{d}");

    // 6. Back to a, keeping b's copy.
    let out = ferry(
        &lab,
        &["vm", "migrate", VM, "--to", "a", "--keep-source", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_disks(&c, "b", "b keeps its copy, no longer in use", |d| {
        d.iter().any(|d| d.name == DISK && d.in_use_by.is_none())
    })
    .await;
    assert!(c
        .disks("a", "local")
        .await
        .unwrap()
        .iter()
        .any(|d| d.name == DISK && d.in_use_by.as_deref() == Some(VM)));

    // 7. Reboot on a: the guest verifies its whole area once more.
    for step in ["stop", "start"] {
        let out = ferry(&lab, &["vm", step, VM]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let after = wait_console(&obs, "disk verified after reboot", |s| {
        s.disk_verified_after_restart.is_some()
    })
    .await;
    let (blocks, mismatches) = after.disk_verified_after_restart.expect("verified");
    assert!(blocks >= (AREA_MIB << 20) / 4096 - 64, "{blocks} blocks");
    assert_eq!(mismatches, 0);
}

/// Waits until the server knows the (restarted) agent's new address and sees it connected.
/// Waits (10 s at most) until host `host`'s local pool satisfies `pred`.
async fn wait_disks(c: &ServerClient, host: &str, what: &str, pred: impl Fn(&[DiskImage]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let disks = c.disks(host, "local").await.unwrap();
        if pred(&disks) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {disks:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_host_registered(lab: &ferry_lab::Lab, host: &str) {
    let c = lab.client();
    let url = lab
        .agents
        .iter()
        .find(|a| a.name == host)
        .map(|a| a.url.clone())
        .expect("agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    while c
        .host(host)
        .await
        .map(|h| h.state != HostState::Connected || h.url != url)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "{host} did not reconnect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
