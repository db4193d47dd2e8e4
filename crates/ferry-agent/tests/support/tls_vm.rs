//! Real QEMUs (TCG) with a known pattern in guest RAM, and host TLS material from a
//! throw-away CA, for the QEMU TLS tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_agent::qemu_tls::PeerTls;
use ferry_agent::tls_material::HostTls;
use ferry_qmp::*;

use super::common::Qemu;
use super::pki::TestCa;

pub const T: Duration = Duration::from_secs(90);

/// Starts every 64-byte line of the pattern loaded into guest RAM: found in a capture
/// only if guest pages crossed the wire readable.
pub const MARK: &[u8] = b"FERRY-SECRET-GUEST-PAGE:";
const PATTERN_BYTES: usize = 1 << 20;
/// Guest-physical address the pattern is loaded at (above what SeaBIOS touches in a
/// 64 MiB guest).
const PATTERN_ADDR: &str = "0x1000000";

/// A CA, three hosts' material (`a`, `b`, and `c`, a valid host that is not the peer),
/// the pattern file, and private scratch directories for the credentials.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub a: HostTls,
    pub b: HostTls,
    pub c: HostTls,
    pub pattern: PathBuf,
}

impl World {
    pub fn new() -> World {
        let tmp = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new("Ferry test CA");
        let load =
            |h: &str| HostTls::load(&ca.host_dir(tmp.path(), h), h).expect("host material loads");
        let (a, b, c) = (load("a"), load("b"), load("c"));
        let pattern = tmp.path().join("pattern.bin");
        let mut bytes = Vec::with_capacity(PATTERN_BYTES);
        let mut line = 0u64;
        while bytes.len() < PATTERN_BYTES {
            let mut l = MARK.to_vec();
            l.extend_from_slice(format!("{line:039}\n").as_bytes());
            bytes.extend_from_slice(&l);
            line += 1;
        }
        bytes.truncate(PATTERN_BYTES);
        std::fs::write(&pattern, bytes).expect("pattern file");
        World {
            tmp,
            a,
            b,
            c,
            pattern,
        }
    }

    /// A scratch directory (the VM directory's stand-in) for `name`.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(format!("scratch-{name}"));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }
}

/// Nothing of the credentials is left in `dir`.
pub fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .expect("scratch dir")
        .map(|e| e.map(|e| e.path()))
        .collect();
    assert!(left.is_empty(), "credentials left behind: {left:?}");
}

/// A 64 MiB PC guest running SeaBIOS, with the pattern in its RAM; `incoming`: waits
/// with `-incoming defer`.
pub async fn guest(w: &World, name: &str, incoming: bool, extra: &[&str]) -> (Qemu, QmpClient) {
    guest_with(w, name, incoming, extra, false).await
}

/// [`guest`], with out-of-band execution negotiated when `oob` (a post-copy destination's
/// main loop may wait for a page; only out-of-band commands answer then).
pub async fn guest_with(
    w: &World,
    name: &str,
    incoming: bool,
    extra: &[&str],
    oob: bool,
) -> (Qemu, QmpClient) {
    let loader = format!(
        "loader,file={},addr={PATTERN_ADDR},force-raw=on",
        w.pattern.display()
    );
    let mut args = vec!["-machine", "pc", "-m", "64", "-device", &loader];
    if incoming {
        args.extend(["-incoming", "defer"]);
    }
    args.extend(extra);
    let mut q = Qemu::spawn(name, &args);
    let qmp = q
        .connect_with(QmpOptions {
            oob,
            ..Default::default()
        })
        .await;
    qmp.migrate_set_capabilities(&[("events", true)])
        .await
        .expect("events capability");
    (q, qmp)
}

/// Destination: TLS set up as the agent does it (when `tls` is given), then listening on
/// a free loopback port; stays up when the incoming migration fails.
pub async fn listen(dst: &QmpClient, tls: Option<PeerTls<'_>>, scratch: &Path) -> u16 {
    if let Some(t) = tls {
        t.secure_incoming(dst, scratch)
            .await
            .expect("TLS on the destination");
    }
    dst.migrate_incoming_with(&MigrateIncomingArgs {
        channels: Some(vec![MigrationChannel::tcp("127.0.0.1", 0)]),
        exit_on_error: Some(false),
        ..Default::default()
    })
    .await
    .expect("migrate-incoming");
    dst.query_migrate()
        .await
        .expect("query-migrate")
        .listening_port()
        .expect("listening port")
}

/// Source: TLS set up as the agent does it (when `tls` is given), then `migrate`.
pub async fn send(src: &QmpClient, tls: Option<PeerTls<'_>>, scratch: &Path, port: u16) {
    if let Some(t) = tls {
        t.secure_outgoing(src, scratch)
            .await
            .expect("TLS on the source");
    }
    src.migrate_set_parameters(&MigrationParameters {
        max_bandwidth: Some(0),
        ..Default::default()
    })
    .await
    .expect("lift the bandwidth cap");
    src.migrate(&format!("tcp:127.0.0.1:{port}"), false)
        .await
        .expect("migrate");
}

/// Polls `query-migrate` until the status is one of `want`; fails the test if it ends
/// otherwise or never gets there.
pub async fn wait_status(qmp: &QmpClient, want: &[MigrationStatus]) -> MigrationInfo {
    let deadline = Instant::now() + T;
    loop {
        let info = qmp.query_migrate().await.expect("query-migrate");
        if let Some(s) = &info.status {
            if want.contains(s) {
                return info;
            }
            assert!(!s.is_finished(), "migration ended as {s}: {info:?}");
        }
        assert!(Instant::now() < deadline, "migration stuck: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the VM runs (the destination after a migration).
pub async fn wait_running(qmp: &QmpClient) {
    let deadline = Instant::now() + T;
    loop {
        let s = qmp.query_status().await.expect("query-status");
        if s.status == RunState::Running {
            return;
        }
        assert!(Instant::now() < deadline, "not running: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `mem_mib` guest with `pattern` (any size) loaded at 16 MiB: for measurements.
pub async fn guest_big(
    name: &str,
    incoming: bool,
    mem_mib: u32,
    pattern: &Path,
) -> (Qemu, QmpClient) {
    let loader = format!(
        "loader,file={},addr={PATTERN_ADDR},force-raw=on",
        pattern.display()
    );
    let mem = mem_mib.to_string();
    let mut args = vec!["-machine", "pc", "-m", &mem, "-device", &loader];
    if incoming {
        args.extend(["-incoming", "defer"]);
    }
    let mut q = Qemu::spawn(name, &args);
    let qmp = q.connect().await;
    qmp.migrate_set_capabilities(&[("events", true)])
        .await
        .expect("events capability");
    (q, qmp)
}

/// `bytes` of non-zero, non-repeating pages (no page is a zero page or a duplicate).
pub fn write_big_pattern(path: &Path, bytes: usize) {
    let mut data = Vec::with_capacity(bytes);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < bytes {
        // xorshift: cheap, and nothing a compressor or zero-page check could shortcut.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, data).expect("pattern file");
}
