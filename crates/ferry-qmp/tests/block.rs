//! Storage migration between two real QEMUs: NBD export on an incoming QEMU, a write-blocking
//! mirror from the source, memory migration paused before switch-over while the mirror
//! completes, and the destination's export dropped before its vCPUs start. The images must
//! end up identical.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Qemu;
use ferry_qmp::*;

const T: Duration = Duration::from_secs(60);

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn disk_args(path: &Path) -> Vec<String> {
    vec![
        "-blockdev".into(),
        format!(
            r#"{{"driver":"file","filename":"{}","node-name":"disk0-file"}}"#,
            path.display()
        ),
        "-blockdev".into(),
        r#"{"driver":"qcow2","file":"disk0-file","node-name":"disk0"}"#.into(),
        "-device".into(),
        "virtio-blk-pci,drive=disk0,id=disk0dev".into(),
    ]
}

fn borrow(v: &[String]) -> Vec<&str> {
    v.iter().map(|a| a.as_str()).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_jobs(qmp: &QmpClient, done: impl Fn(&BlockJobInfo) -> bool) -> BlockJobInfo {
    let deadline = Instant::now() + T;
    loop {
        let jobs = qmp.query_block_jobs().await.unwrap();
        if let Some(j) = jobs.iter().find(|j| done(j)) {
            return j.clone();
        }
        assert!(Instant::now() < deadline, "block job stuck: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_migration(qmp: &QmpClient, want: MigrationStatus) {
    let deadline = Instant::now() + T;
    loop {
        let info = qmp.query_migrate().await.unwrap();
        if info.status.as_ref() == Some(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "migration stuck: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn mirror_over_nbd_then_switch_over_leaves_identical_images() {
    let dir = tempfile::tempdir().unwrap();
    let src_img = dir.path().join("src.qcow2");
    let dst_img = dir.path().join("dst.qcow2");
    let (s, d) = (src_img.to_str().unwrap(), dst_img.to_str().unwrap());
    qemu_img(&["create", "-q", "-f", "qcow2", s, "64M"]);
    qemu_img(&["create", "-q", "-f", "qcow2", d, "64M"]);
    let io = Command::new("qemu-io")
        .args(["-c", "write -P 0xab 1M 8M", s])
        .output()
        .unwrap();
    assert!(io.status.success());

    let vm = ["-machine", "pc", "-m", "64"];
    let src_args: Vec<String> = vm
        .iter()
        .map(|a| a.to_string())
        .chain(disk_args(&src_img))
        .collect();
    let mut dst_args = src_args.clone();
    dst_args.truncate(vm.len());
    dst_args.extend(disk_args(&dst_img));
    dst_args.extend(["-incoming".into(), "defer".into(), "-S".into()]);
    let mut src = Qemu::spawn("blk-src", &borrow(&src_args));
    let mut dst = Qemu::spawn("blk-dst", &borrow(&dst_args));
    let sq = src.connect().await;
    let dq = dst.connect().await;

    dq.migrate_incoming("tcp:127.0.0.1:0").await.unwrap();
    let mig_port = dq.query_migrate().await.unwrap().listening_port().unwrap();
    let nbd_port = free_port();
    dq.nbd_server_start("127.0.0.1", nbd_port).await.unwrap();
    dq.block_export_add_nbd("export-disk0", "disk0", "disk0", true)
        .await
        .unwrap();

    // A refused connection is an error at blockdev-add, before any job exists.
    let refused = sq
        .blockdev_add_nbd("bad", "127.0.0.1", free_port(), "disk0")
        .await;
    assert!(refused.is_err(), "connecting to a closed port must fail");

    sq.blockdev_add_nbd("mirror0", "127.0.0.1", nbd_port, "disk0")
        .await
        .unwrap();
    sq.blockdev_mirror(&MirrorArgs::full("mirror-disk0", "disk0", "mirror0", None).background())
        .await
        .unwrap();
    let ready = wait_jobs(&sq, |j| j.ready).await;
    assert_eq!(ready.len, 64 << 20);
    assert_eq!(ready.outstanding(), 0);
    assert!(!ready.actively_synced, "background mode copies later");
    sq.block_job_block_writes("mirror-disk0").await.unwrap();
    wait_jobs(&sq, |j| j.ready && j.actively_synced).await;

    sq.migrate_set_capabilities(&[("events", true), ("pause-before-switchover", true)])
        .await
        .unwrap();
    sq.migrate(&format!("tcp:127.0.0.1:{mig_port}"), false)
        .await
        .unwrap();
    wait_migration(&sq, MigrationStatus::PreSwitchover).await;
    // The source's vCPUs are stopped now: completing the mirror captures every write.
    sq.block_job_cancel("mirror-disk0", false).await.unwrap();
    let done = wait_jobs(&sq, |j| j.is_concluded()).await;
    assert_eq!(done.error, None);
    sq.job_dismiss("mirror-disk0").await.unwrap();
    sq.blockdev_del("mirror0").await.unwrap();
    sq.migrate_continue(MigrationStatus::PreSwitchover)
        .await
        .unwrap();
    wait_migration(&sq, MigrationStatus::Completed).await;
    wait_migration(&dq, MigrationStatus::Completed).await;
    assert_eq!(dq.query_status().await.unwrap().status, RunState::Paused);
    dq.nbd_server_stop().await.unwrap();
    dq.cont().await.unwrap();
    assert_eq!(dq.query_status().await.unwrap().status, RunState::Running);

    let _ = sq.quit().await;
    let _ = dq.quit().await;
    src.wait_exit(Duration::from_secs(10));
    dst.wait_exit(Duration::from_secs(10));
    assert!(
        !dst.log().contains("Permission conflict"),
        "destination complained: {}",
        dst.log()
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", s, d])
        .output()
        .unwrap();
    assert!(cmp.status.success(), "images differ: {cmp:?}");
}
