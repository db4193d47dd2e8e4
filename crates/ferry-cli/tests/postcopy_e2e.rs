//! Post-copy with recovery, on real agents in the network lab, QEMU 10 (TCG) and the guest:
//! a guest dirtying memory four times faster than its capped link cannot converge, the
//! controller (policy `automatic`) switches to post-copy, and then the destination's
//! migration link is cut at the switch, silently, as a pulled cable would. Ferry sees the
//! page stream stall, pauses both sides, and resumes the stream when the link is back; the
//! guest finishes on the destination and verifies every page. The lab's agents hold their
//! cluster certificates, so the stream and the recovery run over QEMU's TLS, admitting only
//! the source's certificate.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_api::*;
use ferry_lab::netlab::{NetLab, NetLabConfig};
use ferry_lab::{ensure_test_image, test_vm_spec, verdict_after, wait_ready, Observer};

const VM: &str = "pc1";

/// One network lab at a time: two guests rewriting memory on two cores would starve each
/// other.
static ONE_LAB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start_netlab(host_args: Vec<(String, Vec<String>)>) -> NetLab {
    let image_dir = ensure_test_image(&mut |_| {}).expect("test image");
    let mut cfg = NetLabConfig::new(ferry_bin(), &["a", "b"]);
    cfg.image_dir = Some(image_dir);
    cfg.keep = std::env::var_os("FERRY_KEEP_LAB").is_some();
    cfg.host_args = host_args;
    NetLab::start(cfg).await.expect("network lab starts")
}

async fn wait_phase(
    c: &ferry_api::client::ServerClient,
    id: uuid::Uuid,
    timeout: Duration,
    done: impl Fn(Phase) -> bool,
) -> Migration {
    let deadline = Instant::now() + timeout;
    loop {
        let m = c.migration(id).await.expect("migration");
        if done(m.phase) || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn post_copy_survives_a_broken_link_over_qemu_tls_and_the_guest_finishes_clean() {
    let _one = ONE_LAB.lock().await;
    let host_args = ["a", "b"]
        .iter()
        .map(|h| (h.to_string(), vec!["--aux-qmp".to_string()]))
        .collect();
    let lab = start_netlab(host_args).await;
    broken_link_story(&lab).await;
    // b's QEMU took the stream, and the recovery, over TLS from a only.
    let socket = lab
        .host("b")
        .expect("host b")
        .state_dir
        .join("vms")
        .join(VM)
        .join(ferry_agent::runtime::AUX_QMP_SOCKET);
    let qmp = ferry_qmp::QmpClient::connect(&socket)
        .await
        .expect("aux monitor");
    let params = qmp.query_migrate_parameters().await.expect("parameters");
    assert_eq!(params.tls_creds.as_deref(), Some("ferry-migration-tls"));
    let admitted = qmp
        .qom_get_string("/objects/ferry-migration-authz", "identity")
        .await
        .expect("authz object");
    assert_eq!(admitted, "CN=a.host.ferry");
}

/// The story of the module doc, on a started lab.
async fn broken_link_story(lab: &NetLab) {
    let c = lab.client();
    // 128 MiB rewritten at 64 MiB/s over a 16 MiB/s cap: pre-copy cannot converge.
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec: test_vm_spec(VM, 512, 128, 64.0),
    })
    .await
    .expect("VM created");
    wait_ready(&c, VM, Duration::from_secs(240))
        .await
        .expect("guest ready");
    let before = Observer { client: &c, vm: VM }
        .last_status()
        .await
        .unwrap()
        .expect("status");

    // Post-copy is refused where QEMU cannot do it (with parallel streams).
    let refused = c
        .migrate(&MigrateRequest {
            vm: VM.into(),
            to: Some("b".into()),
            options: MigrationOptions {
                postcopy: Some(PostcopyPolicy::Automatic),
                streams: Some(2),
                ..Default::default()
            },
            priority: None,
        })
        .await
        .expect_err("post-copy with multifd is refused");
    assert!(refused.to_string().contains("post-copy"), "{refused}");

    let m = c
        .migrate(&MigrateRequest {
            vm: VM.into(),
            to: Some("b".into()),
            options: MigrationOptions {
                max_bandwidth_mib: Some(16),
                postcopy: Some(PostcopyPolicy::Automatic),
                ..Default::default()
            },
            priority: None,
        })
        .await
        .expect("migration starts");
    let pc = wait_phase(&c, m.id, Duration::from_secs(120), |p| {
        p == Phase::PostCopy || p.is_terminal()
    })
    .await;
    assert_eq!(pc.phase, Phase::PostCopy, "{:?}", pc.error);
    let decision = migration_events(&c, m.id, "migration.controller").await;
    assert!(
        decision
            .iter()
            .any(|e| e.message.contains("switching to post-copy")),
        "the controller chose post-copy: {decision:?}"
    );

    // Cut b's migration link while pages still flow; the guest runs on b meanwhile.
    lab.set_migration_link("b", false).expect("link down");
    let cut = Instant::now();
    eprintln!("link cut at {}", chrono::Utc::now().format("%H:%M:%S%.3f"));
    let cancel = c.cancel_migration(m.id).await;
    assert!(
        cancel.is_err_and(|e| e.to_string().contains("can only finish")),
        "a post-copy cannot be cancelled"
    );
    // Ferry notices within seconds (3 s without progress, plus answers that can be slow
    // while the guest on b waits for pages); the limit leaves room for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(45);
    while migration_events(&c, m.id, "migration.postcopy_paused")
        .await
        .is_empty()
    {
        if Instant::now() > deadline {
            let now = c.migration(m.id).await.ok();
            let events = c
                .events(&EventQuery {
                    migration: Some(m.id),
                    ..Default::default()
                })
                .await
                .unwrap_or_default();
            let lines: Vec<String> = events
                .iter()
                .map(|e| format!("{} {}", e.kind, e.message))
                .collect();
            panic!(
                "Ferry never paused the stalled post-copy: {now:#?}\nevents:\n{}\nserver: {}\n\
                 agent a: {}\nagent b: {}",
                lines.join("\n"),
                lab.log_tail("server"),
                lab.log_tail("a"),
                lab.log_tail("b")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("paused {:.1} s after the cut", cut.elapsed().as_secs_f64());
    // Down a while longer: reconnection attempts must fail quietly and keep trying.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = c.migration(m.id).await.unwrap();
    assert_eq!(
        during.phase,
        Phase::PostCopy,
        "still post-copy while the link is down"
    );
    lab.set_migration_link("b", true).expect("link up");

    let done = wait_phase(&c, m.id, Duration::from_secs(180), |p| p.is_terminal()).await;
    assert_eq!(done.phase, Phase::Completed, "{:?}", done.error);
    let r = done.report.clone().expect("report");
    eprintln!("post-copy migration: {}", r.summary());
    let mut log = c
        .events(&EventQuery {
            migration: Some(m.id),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap_or_default();
    log.sort_by_key(|e| e.id);
    for e in log
        .iter()
        .filter(|e| e.kind != EventKind::MigrationPostcopyProgress)
    {
        eprintln!("  {} {} {}", e.at.format("%H:%M:%S%.3f"), e.kind, e.message);
    }
    assert!(r.postcopy, "finished in post-copy");
    assert!(r.postcopy_pauses >= 1, "the break was seen: {r:?}");
    assert!(!migration_events(&c, m.id, "migration.postcopy_resumed")
        .await
        .is_empty());

    // The VM runs on b alone, and every page the guest wrote came through.
    let vm = c.vm(VM).await.unwrap();
    assert_eq!((vm.host.as_str(), vm.state), ("b", VmState::Running));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab.qemus_on("a").is_empty() {
        assert!(Instant::now() < deadline, "the source QEMU was not retired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v = verdict_after(&c, VM, &before, Duration::from_secs(180))
        .await
        .unwrap();
    assert!(v.ok(), "guest verdict: {}", v.describe());
}
