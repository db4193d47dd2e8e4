//! The client against a real QEMU (`-machine none`, TCG).

mod common;

use std::time::Duration;

use common::Qemu;
use ferry_qmp::*;
use serde_json::json;

const MACHINE_NONE: &[&str] = &["-machine", "none"];
const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn greeting_status_stop_cont() {
    let mut qemu = Qemu::spawn("basic", MACHINE_NONE);
    let qmp = qemu.connect().await;

    let greeting = qmp.version().clone();
    assert!(greeting.qemu.major >= 8, "QEMU too old: {}", greeting.qemu);
    assert_eq!(qmp.query_version().await.unwrap(), greeting);

    let status = qmp.query_status().await.unwrap();
    assert_eq!(status.status, RunState::Running);
    assert!(status.running);

    let mut events = qmp.events();
    qmp.stop().await.unwrap();
    let status = qmp.query_status().await.unwrap();
    assert_eq!(status.status, RunState::Paused);
    assert!(!status.running);
    wait_for_event_on(&mut events, "STOP", T, |e| e.event == "STOP")
        .await
        .unwrap();

    qmp.cont().await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Running);
    let resume = wait_for_event_on(&mut events, "RESUME", T, |e| e.event == "RESUME")
        .await
        .unwrap();
    assert!(resume.timestamp.since_epoch().is_some());
}

#[tokio::test]
async fn command_errors_carry_qemus_message() {
    let mut qemu = Qemu::spawn("errors", MACHINE_NONE);
    let qmp = qemu.connect().await;

    match qmp.execute_raw("no-such-command", None).await {
        Err(QmpError::Command {
            command,
            class,
            desc,
        }) => {
            assert_eq!(command, "no-such-command");
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("no-such-command"), "{desc}");
        }
        other => panic!("expected a command error, got {other:?}"),
    }

    // A typed command QEMU refuses: migrate-incoming without -incoming.
    let err = qmp.migrate_incoming("tcp:127.0.0.1:0").await.unwrap_err();
    let QmpError::Command { class, desc, .. } = &err else {
        panic!("expected a command error, got {err:?}")
    };
    assert_eq!(class, "GenericError");
    assert!(desc.contains("incoming"), "{desc}");
    assert!(err.to_string().contains(desc.as_str()));

    // Bad arguments.
    let err = qmp
        .execute_raw("query-status", Some(json!({"bogus": 1})))
        .await
        .unwrap_err();
    assert_eq!(err.command_error_class(), Some("GenericError"), "{err}");

    // The connection is still fine.
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Running);
}

#[tokio::test]
async fn concurrent_calls_get_their_own_answers() {
    let mut qemu = Qemu::spawn("concurrent", MACHINE_NONE);
    let qmp = qemu.connect().await;
    let version = qmp.version().qemu;

    let mut tasks = Vec::new();
    for task in 0..8 {
        let qmp = qmp.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                match (task + i) % 4 {
                    0 => assert_eq!(qmp.query_version().await.unwrap().qemu, version),
                    1 => assert!(!qmp.query_kvm().await.unwrap().enabled),
                    2 => {
                        // Each caller asks for a different QOM property path and must get its own.
                        let name = format!("/machine/unattached/nonexistent-{task}-{i}");
                        let err = qmp
                            .execute_raw("qom-list", Some(json!({ "path": name })))
                            .await
                            .unwrap_err();
                        assert!(err.to_string().contains(&name), "{err}");
                    }
                    _ => {
                        let out = qmp.human_monitor_command("info version").await.unwrap();
                        assert!(out.starts_with(&version.to_string()), "{out}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn quit_closes_the_connection() {
    let mut qemu = Qemu::spawn("quit", MACHINE_NONE);
    let qmp = qemu.connect().await;
    let other_handle = qmp.clone();
    let mut events = qmp.events();

    qmp.quit().await.unwrap();
    tokio::time::timeout(T, qmp.closed())
        .await
        .expect("connection not closed after quit");
    assert!(!other_handle.is_connected());

    // The SHUTDOWN event QEMU sends on its way out is still delivered, then the stream ends.
    let shutdown = wait_for_event_on(&mut events, "SHUTDOWN", T, |e| e.event == "SHUTDOWN")
        .await
        .unwrap();
    let data: ShutdownEventData = shutdown.data_as().unwrap();
    assert_eq!(data.reason, "host-qmp-quit");
    assert!(!data.guest);

    let err = other_handle.query_status().await.unwrap_err();
    assert!(
        matches!(&err, QmpError::Disconnected { path } if path == &qemu.qmp_path),
        "{err:?}"
    );
    assert!(err.to_string().contains("closed"), "{err}");

    let status = qemu.wait_exit(T).expect("QEMU did not exit");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn killed_qemu_fails_pending_and_later_calls() {
    let mut qemu = Qemu::spawn("killed", MACHINE_NONE);
    let qmp = qemu.connect().await;
    // Keep a call in flight: wait for an event that never comes on one task...
    let waiter = {
        let qmp = qmp.clone();
        tokio::spawn(async move {
            qmp.wait_for_event("POWERDOWN", Duration::from_secs(60))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::process::Command::new("kill")
        .args(["-KILL", &qemu.pid().to_string()])
        .status()
        .unwrap();
    tokio::time::timeout(T, qmp.closed()).await.unwrap();
    let err = waiter.await.unwrap().unwrap_err();
    assert!(err.is_disconnected(), "{err:?}");
    assert!(qmp.query_status().await.unwrap_err().is_disconnected());
}

#[tokio::test]
async fn connect_errors_name_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.sock");
    let err = QmpClient::connect(&path).await.unwrap_err();
    assert!(matches!(err, QmpError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.sock"), "{err}");

    let started = std::time::Instant::now();
    let err = QmpClient::connect_with_retry(&path, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(matches!(err, QmpError::ConnectTimeout { .. }), "{err:?}");
}

#[tokio::test]
async fn typed_queries() {
    let mut qemu = Qemu::spawn(
        "queries",
        &[
            "-machine",
            "none",
            "-blockdev",
            "driver=null-co,node-name=null0,size=1048576",
        ],
    );
    let qmp = qemu.connect().await;

    let kvm = qmp.query_kvm().await.unwrap();
    assert!(!kvm.enabled, "tests run with TCG");

    let machines = qmp.query_machines().await.unwrap();
    let q35 = machines
        .iter()
        .find(|m| m.alias.as_deref() == Some("q35"))
        .expect("q35 machine");
    assert!(q35.name.starts_with("pc-q35-"), "{}", q35.name);
    assert!(machines.iter().any(|m| m.is_default));
    assert!(q35.cpu_max > 1);

    let cpus = qmp.query_cpu_definitions().await.unwrap();
    let qemu64 = cpus
        .iter()
        .find(|c| c.name == "qemu64")
        .expect("qemu64 model");
    assert_eq!(qemu64.migration_safe, Some(true));
    assert!(cpus.iter().any(|c| c.is_static));

    let expanded = qmp
        .query_cpu_model_expansion(CpuModelExpansionType::Full, &CpuModelInfo::named("qemu64"))
        .await
        .unwrap();
    let props = expanded.model.props.expect("props");
    assert!(props.contains_key("sse2"), "{props:?}");

    assert!(qmp.query_cpus_fast().await.unwrap().is_empty());
    assert!(qmp.query_block().await.unwrap().is_empty());
    let nodes = qmp.query_named_block_nodes().await.unwrap();
    let null0 = nodes
        .iter()
        .find(|n| n.node_name.as_deref() == Some("null0"))
        .expect("null0 node");
    assert_eq!(null0.drv, "null-co");
    assert!(null0.active);

    // Nothing migrated yet.
    let info = qmp.query_migrate().await.unwrap();
    assert_eq!(info.status, None);

    // Parameters and capabilities round-trip.
    let before = qmp.query_migrate_parameters().await.unwrap();
    assert!(before.downtime_limit.is_some() && before.max_bandwidth.is_some());
    qmp.migrate_set_parameters(&MigrationParameters {
        downtime_limit: Some(1234),
        max_bandwidth: Some(50 << 20),
        multifd_channels: Some(4),
        multifd_compression: Some(MultifdCompression::None),
        cpu_throttle_initial: Some(30),
        cpu_throttle_increment: Some(15),
        announce_rounds: Some(3),
        ..Default::default()
    })
    .await
    .unwrap();
    let after = qmp.query_migrate_parameters().await.unwrap();
    assert_eq!(after.downtime_limit, Some(1234));
    assert_eq!(after.max_bandwidth, Some(50 << 20));
    assert_eq!(after.multifd_channels, Some(4));
    assert_eq!(after.cpu_throttle_initial, Some(30));
    assert_eq!(after.cpu_throttle_increment, Some(15));
    assert_eq!(after.announce_rounds, Some(3));
    assert_eq!(after.xbzrle_cache_size, before.xbzrle_cache_size);
    let err = qmp
        .migrate_set_parameters(&MigrationParameters {
            multifd_channels: Some(0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("multifd"), "{err}");

    qmp.migrate_set_capabilities(&[("events", true), ("multifd", true)])
        .await
        .unwrap();
    let caps = qmp.query_migrate_capabilities().await.unwrap();
    let state = |name: &str| caps.iter().find(|c| c.capability == name).map(|c| c.state);
    assert_eq!(state("events"), Some(true));
    assert_eq!(state("multifd"), Some(true));
    assert_eq!(state("postcopy-ram"), Some(false));
    let err = qmp
        .migrate_set_capabilities(&[("no-such-capability", true)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-capability"), "{err}");

    // announce-self: with the VM's parameters, and explicit ones (no NICs here: a no-op).
    qmp.announce_self(None).await.unwrap();
    qmp.announce_self(Some(&AnnounceParameters {
        rounds: 1,
        id: Some("test".into()),
        ..Default::default()
    }))
    .await
    .unwrap();

    // Per-handle timeout.
    let quick = qmp.with_command_timeout(Duration::from_secs(5));
    assert_eq!(quick.command_timeout(), Duration::from_secs(5));
    quick.query_status().await.unwrap();
}

#[tokio::test]
async fn pc_machine_cpus_and_powerdown() {
    let mut qemu = Qemu::spawn("pc", &["-machine", "pc", "-m", "32", "-smp", "2,sockets=2"]);
    let qmp = qemu.connect().await;

    let cpus = qmp.query_cpus_fast().await.unwrap();
    assert_eq!(cpus.len(), 2);
    assert!(cpus.iter().all(|c| c.thread_id > 0 && c.target == "x86_64"));
    assert_eq!(cpus[1].cpu_index, 1);
    assert_eq!(cpus[1].props.as_ref().and_then(|p| p.socket_id), Some(1));

    let mut events = qmp.events();
    qmp.system_powerdown().await.unwrap();
    wait_for_event_on(&mut events, "POWERDOWN", T, |e| e.event == "POWERDOWN")
        .await
        .unwrap();
}

#[tokio::test]
async fn out_of_band_commands_need_the_capability_and_reach_qemu() {
    let mut qemu = Qemu::spawn("oob", MACHINE_NONE);
    {
        let plain = qemu.connect().await;
        let err = plain.execute_oob("migrate-pause", None).await.unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{err:?}");
    }
    let qmp = qemu
        .connect_with(QmpOptions {
            oob: true,
            ..Default::default()
        })
        .await;
    // QEMU ran it (out of band) and refused it for the right reason: no post-copy here.
    match qmp.migrate_pause_oob().await {
        Err(QmpError::Command { desc, .. }) => assert!(desc.contains("postcopy"), "{desc}"),
        other => panic!("expected QEMU's refusal, got {other:?}"),
    }
    // In-band commands still work on the same connection.
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Running);
}
