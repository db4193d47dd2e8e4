//! QEMU's TLS on the migration stream between real QEMUs (TCG, loopback), set up exactly
//! as the agent does it (`ferry_agent::qemu_tls`), with host certificates from a
//! throw-away CA shaped as the cluster CA issues them.
//!
//! Guest memory holds a known pattern (loaded at 16 MiB by QEMU's generic `loader`
//! device), and a relay between the QEMUs records every byte: over TLS none of the
//! pattern may appear, in plain TCP (the control) it must.

#[path = "../../ferry-qmp/tests/common/mod.rs"]
mod common;
#[path = "support/pki.rs"]
mod pki;
#[path = "support/relay.rs"]
mod relay;
#[path = "support/tls_vm.rs"]
mod tls_vm;

use std::io::{Read, Write};

use ferry_agent::qemu_tls::PeerTls;
use ferry_qmp::*;
use relay::{contains, Relay};
use tls_vm::*;

/// `a` sends to `b` through a recording relay, over TLS or not; returns the relay and the
/// source's final `query-migrate`.
async fn migrate_through_relay(w: &World, tls: bool, name: &str) -> (Relay, MigrationInfo) {
    let (_src, sq) = guest(w, &format!("{name}-a"), false, &[]).await;
    let (_dst, dq) = guest(w, &format!("{name}-b"), true, &[]).await;
    let (ss, ds) = (
        w.scratch(&format!("{name}-a")),
        w.scratch(&format!("{name}-b")),
    );
    let dst_tls = tls.then_some(PeerTls {
        local: &w.b,
        peer: "a",
    });
    let src_tls = tls.then_some(PeerTls {
        local: &w.a,
        peer: "b",
    });
    let port = listen(&dq, dst_tls, &ds).await;
    let relay = Relay::start(([127, 0, 0, 1], port).into()).await;
    send(&sq, src_tls, &ss, relay.port).await;
    let info = wait_status(&sq, &[MigrationStatus::Completed]).await;
    wait_status(&dq, &[MigrationStatus::Completed]).await;
    wait_running(&dq).await;
    assert_empty(&ss);
    assert_empty(&ds);
    let _ = sq.quit().await;
    let _ = dq.quit().await;
    (relay, info)
}

#[tokio::test]
async fn tls_migration_completes_and_the_wire_shows_no_guest_page() {
    let w = World::new();
    let (relay, info) = migrate_through_relay(&w, true, "tls").await;
    let up = relay.upstream();
    // The pattern alone is 1 MiB of non-zero pages: it crossed, encrypted.
    assert!(up.len() > 1 << 20, "only {} bytes crossed", up.len());
    assert_eq!(
        &up[..2],
        &[0x16, 0x03],
        "starts with a TLS handshake record"
    );
    assert!(!contains(&up, MARK), "guest memory readable on the wire");
    assert!(
        !contains(&up, b"QEVM"),
        "QEMU's stream header readable on the wire"
    );
    eprintln!(
        "TLS: {} bytes on the wire, QEMU total {:?} ms, downtime {:?} ms",
        up.len(),
        info.total_time,
        info.downtime
    );
}

/// The control: the same capture of a plain TCP stream shows the pattern, so the test
/// above would see it if TLS let it through.
#[tokio::test]
async fn plain_migration_shows_the_guest_page_on_the_wire() {
    let w = World::new();
    let (relay, info) = migrate_through_relay(&w, false, "plain").await;
    let up = relay.upstream();
    assert!(
        contains(&up, MARK),
        "the pattern must be found in a plain stream"
    );
    eprintln!(
        "plain: {} bytes on the wire, QEMU total {:?} ms, downtime {:?} ms",
        up.len(),
        info.total_time,
        info.downtime
    );
}

/// Connects to `port`, sends what a migration stream starts with, and reads until QEMU
/// closes the connection (true) or `T` passes (false).
fn raw_connection_is_closed(port: u16) -> bool {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(T)).expect("read timeout");
    // QEMU's magic and version, then junk: a plain migration stream's start.
    let _ = s.write_all(b"QEVM\x00\x00\x00\x03junk junk junk junk");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn a_raw_connection_to_the_pending_port_is_refused_and_the_migration_completes() {
    let w = World::new();
    let (_src, sq) = guest(&w, "raw-a", false, &[]).await;
    let (dst, dq) = guest(&w, "raw-b", true, &[]).await;
    let (ss, ds) = (w.scratch("raw-a"), w.scratch("raw-b"));
    let port = listen(
        &dq,
        Some(PeerTls {
            local: &w.b,
            peer: "a",
        }),
        &ds,
    )
    .await;
    assert!(
        raw_connection_is_closed(port),
        "QEMU kept the raw connection"
    );
    // It did not become the migration: still waiting, nothing failed.
    assert_eq!(dq.query_status().await.unwrap().status, RunState::InMigrate);
    let info = dq.query_migrate().await.unwrap();
    assert_ne!(info.status, Some(MigrationStatus::Failed), "{info:?}");
    assert!(dst.log().contains("TLS"), "QEMU says why: {}", dst.log());
    send(
        &sq,
        Some(PeerTls {
            local: &w.a,
            peer: "b",
        }),
        &ss,
        port,
    )
    .await;
    wait_status(&sq, &[MigrationStatus::Completed]).await;
    wait_status(&dq, &[MigrationStatus::Completed]).await;
    wait_running(&dq).await;
}

/// The control: without TLS the first connection is the migration, so junk on it fails
/// the incoming side (what the test above proves TLS prevents).
#[tokio::test]
async fn without_tls_a_raw_connection_takes_the_pending_port() {
    let w = World::new();
    let (_dst, dq) = guest(&w, "rawplain-b", true, &[]).await;
    let port = listen(&dq, None, &w.scratch("rawplain-b")).await;
    raw_connection_is_closed(port);
    let failed = wait_status(&dq, &[MigrationStatus::Failed]).await;
    assert!(failed.error_desc.is_some(), "{failed:?}");
}

#[tokio::test]
async fn a_valid_certificate_of_the_wrong_host_is_refused_both_ways() {
    let w = World::new();
    // A client holding c's certificate (same CA) at a destination that expects a.
    let (dst, dq) = guest(&w, "who-b", true, &[]).await;
    let ds = w.scratch("who-b");
    let port = listen(
        &dq,
        Some(PeerTls {
            local: &w.b,
            peer: "a",
        }),
        &ds,
    )
    .await;
    let (_imp, iq) = guest(&w, "who-c", false, &[]).await;
    send(
        &iq,
        Some(PeerTls {
            local: &w.c,
            peer: "b",
        }),
        &w.scratch("who-c"),
        port,
    )
    .await;
    let failed = wait_status(&iq, &[MigrationStatus::Failed]).await;
    eprintln!("impostor client: {:?}", failed.error_desc);
    assert_eq!(
        dq.query_status().await.unwrap().status,
        RunState::InMigrate,
        "the destination still waits for the real source"
    );
    // Refused by tls-authz, by name (the certificate itself is valid).
    assert!(
        dst.log()
            .contains("authz check for CN=c.host.ferry is denied"),
        "QEMU names the refused certificate: {}",
        dst.log()
    );
    // The real source still gets through.
    let (_src, sq) = guest(&w, "who-a", false, &[]).await;
    let ss = w.scratch("who-a");
    let a_to_b = PeerTls {
        local: &w.a,
        peer: "b",
    };
    send(&sq, Some(a_to_b), &ss, port).await;
    wait_status(&sq, &[MigrationStatus::Completed]).await;
    wait_running(&dq).await;
    let _ = dq.quit().await;

    // A server holding c's certificate where the source expects b.
    let (_imp_dst, idq) = guest(&w, "who-c-dst", true, &[]).await;
    let port = listen(
        &idq,
        Some(PeerTls {
            local: &w.c,
            peer: "a",
        }),
        &w.scratch("who-c-dst"),
    )
    .await;
    let (_src2, sq2) = guest(&w, "who-a2", false, &[]).await;
    send(&sq2, Some(a_to_b), &w.scratch("who-a2"), port).await;
    let failed = wait_status(&sq2, &[MigrationStatus::Failed]).await;
    let why = failed.error_desc.unwrap_or_default();
    assert!(
        why.contains("b.host.ferry"),
        "names the expected host: {why}"
    );
    assert_eq!(
        sq2.query_status().await.unwrap().status,
        RunState::Running,
        "the source keeps its guest"
    );
}

/// TLS on one side only never becomes plain TCP: both ways the migration fails and the
/// source keeps its guest.
#[tokio::test]
async fn one_side_with_tls_never_falls_back_to_plain_tcp() {
    let w = World::new();
    for source_has_tls in [true, false] {
        let name = format!("half-{source_has_tls}");
        let (_src, sq) = guest(&w, &format!("{name}-a"), false, &[]).await;
        let (_dst, dq) = guest(&w, &format!("{name}-b"), true, &[]).await;
        let dst_tls = (!source_has_tls).then_some(PeerTls {
            local: &w.b,
            peer: "a",
        });
        let src_tls = source_has_tls.then_some(PeerTls {
            local: &w.a,
            peer: "b",
        });
        let port = listen(&dq, dst_tls, &w.scratch(&format!("{name}-b"))).await;
        send(&sq, src_tls, &w.scratch(&format!("{name}-a")), port).await;
        let failed = wait_status(&sq, &[MigrationStatus::Failed]).await;
        assert!(failed.error_desc.is_some(), "{failed:?}");
        assert_eq!(
            sq.query_status().await.unwrap().status,
            RunState::Running,
            "source with TLS: {source_has_tls}"
        );
        let d = dq.query_migrate().await.unwrap();
        assert_ne!(d.status, Some(MigrationStatus::Completed), "{d:?}");
    }
}

#[tokio::test]
async fn multifd_over_tls_completes_and_hides_the_pages() {
    let w = World::new();
    let (_src, sq) = guest(&w, "mfd-a", false, &[]).await;
    let (_dst, dq) = guest(&w, "mfd-b", true, &[]).await;
    for q in [&sq, &dq] {
        q.migrate_set_capabilities(&[("multifd", true)])
            .await
            .unwrap();
        q.migrate_set_parameters(&MigrationParameters {
            multifd_channels: Some(4),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let port = listen(
        &dq,
        Some(PeerTls {
            local: &w.b,
            peer: "a",
        }),
        &w.scratch("mfd-b"),
    )
    .await;
    let relay = Relay::start(([127, 0, 0, 1], port).into()).await;
    let a_to_b = PeerTls {
        local: &w.a,
        peer: "b",
    };
    send(&sq, Some(a_to_b), &w.scratch("mfd-a"), relay.port).await;
    let info = wait_status(&sq, &[MigrationStatus::Completed]).await;
    wait_status(&dq, &[MigrationStatus::Completed]).await;
    wait_running(&dq).await;
    assert!(
        relay.connections() >= 5,
        "main channel + 4 multifd channels, saw {}",
        relay.connections()
    );
    let up = relay.upstream();
    assert!(up.len() > 1 << 20, "only {} bytes crossed", up.len());
    assert!(!contains(&up, MARK), "guest memory readable on the wire");
    eprintln!(
        "multifd x4 over TLS: QEMU total {:?} ms, multifd bytes {:?}",
        info.total_time,
        info.ram.map(|r| r.multifd_bytes)
    );
}

#[tokio::test]
async fn postcopy_over_tls_survives_a_pause_and_recovers_over_tls() {
    let w = World::new();
    let (_src, sq) = guest(&w, "pc-a", false, &[]).await;
    let (dst, dq) = guest_with(&w, "pc-b", true, &[], true).await;
    for q in [&sq, &dq] {
        q.migrate_set_capabilities(&[("postcopy-ram", true), ("return-path", true)])
            .await
            .unwrap();
    }
    let b_from_a = PeerTls {
        local: &w.b,
        peer: "a",
    };
    let port = listen(&dq, Some(b_from_a), &w.scratch("pc-b")).await;
    let first = Relay::start(([127, 0, 0, 1], port).into()).await;
    let a_to_b = PeerTls {
        local: &w.a,
        peer: "b",
    };
    send(&sq, Some(a_to_b), &w.scratch("pc-a"), first.port).await;
    // Slow enough that post-copy is still running when the link is paused.
    sq.migrate_set_parameters(&MigrationParameters {
        max_bandwidth: Some(64 << 10),
        max_postcopy_bandwidth: Some(64 << 10),
        ..Default::default()
    })
    .await
    .unwrap();
    wait_status(&sq, &[MigrationStatus::Active]).await;
    sq.migrate_start_postcopy().await.unwrap();
    wait_status(&sq, &[MigrationStatus::PostcopyActive]).await;
    // Only a destination whose guest runs can pause: before that (device state still in
    // flight) QEMU fails the incoming migration on a broken link, TLS or not.
    wait_running(&dq).await;

    sq.migrate_pause().await.unwrap();
    wait_status(&sq, &[MigrationStatus::PostcopyPaused]).await;
    assert!(
        !contains(&first.upstream(), MARK),
        "guest memory readable before the pause"
    );
    drop(first);

    // The destination's main loop may wait for a page now: out of band only, as the
    // agent does it. The recovery listener reuses the TLS parameters the migration
    // started with.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let deadline = std::time::Instant::now() + T;
    loop {
        match dq
            .migrate_recover_oob(&format!("tcp:127.0.0.1:{port}"))
            .await
        {
            Ok(()) => break,
            // Refused until the destination noticed the pause itself.
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}\n{}", dst.log()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let second = Relay::start(([127, 0, 0, 1], port).into()).await;
    sq.migrate(&format!("tcp:127.0.0.1:{}", second.port), true)
        .await
        .unwrap();
    wait_status(&sq, &[MigrationStatus::PostcopyActive]).await;
    sq.migrate_set_parameters(&MigrationParameters {
        max_postcopy_bandwidth: Some(0),
        ..Default::default()
    })
    .await
    .unwrap();
    wait_status(&sq, &[MigrationStatus::Completed]).await;
    wait_status(&dq, &[MigrationStatus::Completed]).await;
    wait_running(&dq).await;
    let resumed = second.upstream();
    assert!(
        !resumed.is_empty(),
        "the resumed stream went through the relay"
    );
    assert_eq!(
        &resumed[..2],
        &[0x16, 0x03],
        "the recovery is a TLS handshake"
    );
    assert!(
        !contains(&resumed, MARK),
        "guest memory readable after recovery"
    );
}

/// A measurement, not a timed assertion (`cargo test -p ferry-agent --test qemu_tls_stream
/// tls_cost -- --ignored --nocapture`): a 512 MiB guest with 256 MiB of random pages,
/// loopback, plain vs TLS, one stream vs four; prints QEMU's total time and throughput.
#[tokio::test]
#[ignore]
async fn tls_cost_on_loopback() {
    let w = World::new();
    let pattern = w.tmp.path().join("big.bin");
    write_big_pattern(&pattern, 256 << 20);
    for streams in [1u64, 4] {
        for tls in [false, true] {
            let name = format!("cost-{streams}-{tls}");
            let (_src, sq) = guest_big(&format!("{name}-a"), false, 512, &pattern).await;
            let (_dst, dq) = guest_big(&format!("{name}-b"), true, 512, &pattern).await;
            if streams > 1 {
                for q in [&sq, &dq] {
                    q.migrate_set_capabilities(&[("multifd", true)])
                        .await
                        .unwrap();
                    q.migrate_set_parameters(&MigrationParameters {
                        multifd_channels: Some(streams),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                }
            }
            let b_from_a = PeerTls {
                local: &w.b,
                peer: "a",
            };
            let a_to_b = PeerTls {
                local: &w.a,
                peer: "b",
            };
            let port = listen(&dq, tls.then_some(b_from_a), &w.scratch(&name)).await;
            send(&sq, tls.then_some(a_to_b), &w.scratch(&name), port).await;
            let info = wait_status(&sq, &[MigrationStatus::Completed]).await;
            let ram = info.ram.clone().unwrap_or_default();
            eprintln!(
                "streams={streams} tls={tls}: total {:?} ms, downtime {:?} ms, {} MiB sent, {:.0} Mbit/s",
                info.total_time,
                info.downtime,
                ram.transferred >> 20,
                ram.mbps
            );
            let _ = sq.quit().await;
            let _ = dq.quit().await;
        }
    }
}
