//! QEMU's TLS on the NBD disk export of a storage migration, set up as the agent does it
//! (`ferry_agent::qemu_tls`): a plain client and a client with another host's valid
//! certificate are refused, and a mirror over TLS copies the disk exactly.

#[path = "../../ferry-qmp/tests/common/mod.rs"]
mod common;
#[path = "support/pki.rs"]
mod pki;
#[path = "support/relay.rs"]
mod relay;
#[path = "support/tls_vm.rs"]
mod tls_vm;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_agent::qemu_tls::PeerTls;
use ferry_qmp::*;
use relay::{contains, Relay};
use tls_vm::*;

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs")
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

async fn wait_job(qmp: &QmpClient, done: impl Fn(&BlockJobInfo) -> bool) -> BlockJobInfo {
    let deadline = Instant::now() + T;
    loop {
        let jobs = qmp.query_block_jobs().await.expect("query-block-jobs");
        if let Some(j) = jobs.iter().find(|j| done(j)) {
            return j.clone();
        }
        assert!(Instant::now() < deadline, "block job stuck: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nbd_export_over_tls_refuses_plain_and_wrong_clients_and_mirrors_exactly() {
    let w = World::new();
    let (src_img, dst_img) = (
        w.tmp.path().join("src.qcow2"),
        w.tmp.path().join("dst.qcow2"),
    );
    let (s, d) = (src_img.to_str().unwrap(), dst_img.to_str().unwrap());
    for img in [s, d] {
        assert!(qemu_img(&["create", "-q", "-f", "qcow2", img, "32M"])
            .status
            .success());
    }
    // The guest's data on the source disk: the same readable pattern as in RAM tests.
    let io = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -s {} 1M 1M", w.pattern.display()))
        .arg(s)
        .output()
        .expect("qemu-io runs");
    assert!(io.status.success(), "{io:?}");

    let dst_disk = disk_args(&dst_img);
    let mut dst_extra: Vec<&str> = dst_disk.iter().map(String::as_str).collect();
    dst_extra.push("-S");
    let (dst, dq) = guest(&w, "nbd-b", true, &dst_extra).await;
    let ds = w.scratch("nbd-b");
    let b_for_a = PeerTls {
        local: &w.b,
        peer: "a",
    };
    let server_tls = b_for_a.nbd_server(&dq, &ds).await.expect("NBD server TLS");
    assert_empty(&ds);
    let port = free_port();
    dq.nbd_server_start_with("127.0.0.1", port, Some(&server_tls))
        .await
        .expect("nbd-server-start with TLS");
    let export = uuid::Uuid::new_v4().simple().to_string();
    dq.block_export_add_nbd("export0", "disk0", &export, true)
        .await
        .expect("block-export-add");

    // A plain client: the server insists on TLS before anything else.
    let plain = qemu_img(&[
        "info",
        "--image-opts",
        &format!(
            "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export={export}"
        ),
    ]);
    let said = String::from_utf8_lossy(&plain.stderr).into_owned();
    assert!(!plain.status.success(), "a plain client got in: {plain:?}");
    assert!(said.contains("TLS"), "QEMU says TLS is required: {said}");

    // A client with c's valid certificate: refused by tls-authz.
    let src_disk = disk_args(&src_img);
    let src_extra: Vec<&str> = src_disk.iter().map(String::as_str).collect();
    let (_imp, iq) = guest(&w, "nbd-c", false, &[]).await;
    let c_to_b = PeerTls {
        local: &w.c,
        peer: "b",
    };
    let tls = c_to_b.nbd_client(&iq, &w.scratch("nbd-c")).await.unwrap();
    let refused = iq
        .blockdev_add_nbd_with("stolen", "127.0.0.1", port, &export, Some(&tls))
        .await;
    assert!(refused.is_err(), "another host's certificate got in");
    assert!(
        dst.log()
            .contains("authz check for CN=c.host.ferry is denied"),
        "{}",
        dst.log()
    );

    // The real source, through a recording relay: a mirror over TLS.
    let (_src, sq) = guest(&w, "nbd-a", false, &src_extra).await;
    let ss = w.scratch("nbd-a");
    let a_to_b = PeerTls {
        local: &w.a,
        peer: "b",
    };
    let tls = a_to_b.nbd_client(&sq, &ss).await.expect("NBD client TLS");
    assert_empty(&ss);
    let relay = Relay::start(([127, 0, 0, 1], port).into()).await;
    sq.blockdev_add_nbd_with("copy0", "127.0.0.1", relay.port, &export, Some(&tls))
        .await
        .expect("NBD client over TLS");
    sq.blockdev_mirror(&MirrorArgs::full("copy0", "disk0", "copy0", None))
        .await
        .expect("blockdev-mirror");
    wait_job(&sq, |j| j.ready).await;
    sq.block_job_cancel("copy0", false).await.unwrap();
    let done = wait_job(&sq, |j| j.is_concluded()).await;
    assert_eq!(done.error, None);
    sq.job_dismiss("copy0").await.unwrap();
    sq.blockdev_del("copy0").await.unwrap();
    dq.nbd_server_stop().await.unwrap();
    let up = relay.upstream();
    assert!(up.len() > 1 << 20, "only {} bytes crossed", up.len());
    assert!(!contains(&up, MARK), "disk data readable on the wire");

    let _ = sq.quit().await;
    let _ = dq.quit().await;
    let _ = iq.quit().await;
    // Wait for the QEMUs to release the images before comparing.
    drop((_src, dst, _imp));
    let cmp = qemu_img(&["compare", s, d]);
    assert!(cmp.status.success(), "images differ: {cmp:?}");
}
