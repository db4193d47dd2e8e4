//! Real migrations between two QEMUs (TCG) on loopback, driven through ferry-qmp.

mod common;

use std::time::{Duration, Instant};

use common::Qemu;
use ferry_qmp::*;

const T: Duration = Duration::from_secs(60);
const VM: &[&str] = &["-machine", "pc", "-m", "64"];

/// Source and destination QEMUs with identical devices; the destination waits with
/// `-incoming defer`. Both have the `events` migration capability set.
async fn pair(name: &str) -> (Qemu, QmpClient, Qemu, QmpClient) {
    let mut src = Qemu::spawn(&format!("{name}-src"), VM);
    let mut dst_args = VM.to_vec();
    dst_args.extend(["-incoming", "defer"]);
    let mut dst = Qemu::spawn(&format!("{name}-dst"), &dst_args);
    let src_qmp = src.connect().await;
    let dst_qmp = dst.connect().await;
    for qmp in [&src_qmp, &dst_qmp] {
        qmp.migrate_set_capabilities(&[("events", true)])
            .await
            .unwrap();
    }
    assert_eq!(
        dst_qmp.query_status().await.unwrap().status,
        RunState::InMigrate
    );
    (src, src_qmp, dst, dst_qmp)
}

/// Polls `query-migrate` until the status is one of `done` (or fails the test after `T`).
async fn poll_until(qmp: &QmpClient, done: &[MigrationStatus]) -> MigrationInfo {
    let deadline = Instant::now() + T;
    loop {
        let info = qmp.query_migrate().await.unwrap();
        if let Some(status) = &info.status {
            if done.contains(status) {
                return info;
            }
            assert!(
                !status.is_finished(),
                "migration ended as {status}: {info:?}"
            );
        }
        assert!(Instant::now() < deadline, "migration stuck: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn migrate_over_loopback() {
    let (_src, src_qmp, _dst, dst_qmp) = pair("mig").await;
    let mut src_events = src_qmp.events();
    let mut dst_events = dst_qmp.events();

    dst_qmp.migrate_incoming("tcp:127.0.0.1:0").await.unwrap();
    let incoming = dst_qmp.query_migrate().await.unwrap();
    let port = incoming
        .listening_port()
        .unwrap_or_else(|| panic!("no listening port in {incoming:?}"));
    assert_ne!(port, 0);
    match incoming.socket_address.as_deref() {
        Some([SocketAddress::Inet(inet)]) => assert_eq!(inet.host, "127.0.0.1"),
        other => panic!("unexpected socket-address {other:?}"),
    }

    src_qmp
        .migrate(&format!("tcp:127.0.0.1:{port}"), false)
        .await
        .unwrap();
    let info = poll_until(&src_qmp, &[MigrationStatus::Completed]).await;
    let ram = info.ram.as_ref().expect("ram stats");
    assert!(ram.total >= 64 << 20, "{ram:?}");
    assert!(ram.transferred > 0, "{ram:?}");
    assert!(ram.duplicate > 0, "mostly zero pages: {ram:?}");
    assert_eq!(ram.page_size, 4096);
    assert!(ram.dirty_sync_count >= 1, "{ram:?}");
    assert!(info.total_time.is_some(), "{info:?}");
    assert!(info.downtime.is_some(), "{info:?}");
    assert!(info.setup_time.is_some(), "{info:?}");
    assert!(info.error_desc.is_none());

    // Events, subscribed before acting: setup, active, completed on both sides; passes on the
    // source.
    let completed = |e: &QmpEvent| e.migration_status() == Some(MigrationStatus::Completed);
    let mut src_seen = Vec::new();
    wait_for_event_on(&mut src_events, "MIGRATION completed (source)", T, |e| {
        src_seen.push(e.clone());
        completed(e)
    })
    .await
    .unwrap();
    let statuses: Vec<_> = src_seen
        .iter()
        .filter_map(|e| e.migration_status())
        .collect();
    // QEMU 10 also passes through `device` (the switch-over) even without the
    // pause-before-switchover capability.
    assert_eq!(
        statuses,
        [
            MigrationStatus::Setup,
            MigrationStatus::Active,
            MigrationStatus::Device,
            MigrationStatus::Completed
        ]
    );
    assert_eq!(
        src_seen.iter().find_map(|e| e.migration_pass()),
        Some(1),
        "{src_seen:?}"
    );
    // The source stops the guest for the switch-over.
    assert!(src_seen.iter().any(|e| e.event == "STOP"), "{src_seen:?}");
    wait_for_event_on(
        &mut dst_events,
        "MIGRATION completed (destination)",
        T,
        completed,
    )
    .await
    .unwrap();

    // The destination runs (it was not started with -S), the source is done.
    let deadline = Instant::now() + T;
    loop {
        let status = dst_qmp.query_status().await.unwrap();
        if status.status == RunState::Running {
            break;
        }
        assert!(Instant::now() < deadline, "destination is {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        src_qmp.query_status().await.unwrap().status,
        RunState::PostMigrate
    );
    assert_eq!(
        dst_qmp.query_migrate().await.unwrap().status,
        Some(MigrationStatus::Completed)
    );
    // Announce from the new host (no NICs here, so a no-op; must be accepted).
    dst_qmp.announce_self(None).await.unwrap();
}

/// Destination set up with `channels` and `exit-on-error: false`; a slow (bandwidth-limited)
/// migration is cancelled: the source keeps running, the destination reports the failure and
/// stays up.
#[tokio::test]
async fn cancelled_migration_leaves_the_source_running() {
    let (_src, src_qmp, mut dst, dst_qmp) = pair("cancel").await;

    dst_qmp
        .migrate_incoming_with(&MigrateIncomingArgs {
            channels: Some(vec![MigrationChannel::tcp("127.0.0.1", 0)]),
            exit_on_error: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    let port = dst_qmp.query_migrate().await.unwrap().listening_port();
    let port = port.expect("listening port");

    // ~10 KB/s: the BIOS ROMs alone take far longer than this test waits.
    src_qmp
        .migrate_set_parameters(&MigrationParameters {
            max_bandwidth: Some(10_000),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut src_events = src_qmp.events();
    src_qmp
        .migrate_with(&MigrateArgs {
            channels: Some(vec![MigrationChannel::tcp("127.0.0.1", port)]),
            ..Default::default()
        })
        .await
        .unwrap();
    let active = poll_until(&src_qmp, &[MigrationStatus::Active]).await;
    assert!(active.ram.is_some(), "{active:?}");
    assert!(active.expected_downtime.is_some(), "{active:?}");

    // A second migrate while one runs is refused with QEMU's explanation.
    let err = src_qmp
        .migrate(&format!("tcp:127.0.0.1:{port}"), false)
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Command { .. }), "{err:?}");

    src_qmp.migrate_cancel().await.unwrap();
    wait_for_event_on(&mut src_events, "MIGRATION cancelled", T, |e| {
        e.migration_status() == Some(MigrationStatus::Cancelled)
    })
    .await
    .unwrap();
    assert_eq!(
        src_qmp.query_migrate().await.unwrap().status,
        Some(MigrationStatus::Cancelled)
    );
    assert_eq!(
        src_qmp.query_status().await.unwrap().status,
        RunState::Running
    );

    // The destination saw its stream break; with exit-on-error off it is still there.
    let failed = poll_until(&dst_qmp, &[MigrationStatus::Failed]).await;
    assert!(failed.error_desc.is_some(), "{failed:?}");
    assert!(dst.is_running());
    dst_qmp.quit().await.unwrap();
    assert!(dst.wait_exit(T).is_some());
}
