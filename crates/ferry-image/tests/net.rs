//! End to end with networking: boot the test guest under QEMU (TCG) with a virtio-net NIC on
//! QEMU's user-mode network (libslirp), a host port forwarded to the guest's TCP service, and
//! `ferry.ip` / `ferry.gw` on the command line; check the `net` and `tcp` console lines and
//! hold one connection for 100 requests, timing each round trip.
//!
//! Needs what `boot.rs` needs (apt/dpkg with package lists, busybox-static,
//! qemu-system-x86_64 with `-netdev user`, and the static guest binary built with
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build -p ferry-guest --release --target x86_64-unknown-linux-gnu
//! ```
//!
//! found by `find_guest_binary` or named by `FERRY_GUEST_BIN`).

mod common;

use common::{read_lossy, KillOnDrop};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_guest::service::Answer;
use ferry_guest::status::ConsoleSummary;
use ferry_image::{build, kernel_cmdline_net, GuestNet};

const MEM_MIB: u64 = 64;
const RATE_MIB: f64 = 5.0;
const GUEST_IP: &str = "10.0.2.15/24";
const GUEST_ADDR: &str = "10.0.2.15";
const GATEWAY: &str = "10.0.2.2";
const MAC: &str = "52:54:00:12:34:56";
const REQUESTS: usize = 100;
/// Generous for TCG on a busy 2-core CI machine; a quiet machine needs a fraction of it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// One answer; under TCG it takes milliseconds, this only bounds a hang.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// A port that was free a moment ago (QEMU binds it for the forward).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

#[test]
fn guest_network_and_tcp_service() {
    let cache = tempfile::tempdir().expect("temp dir");
    let opts = common::build_options(cache.path());
    let image = build(&opts, &mut |m| eprintln!("build: {m}")).unwrap_or_else(|e| panic!("{e}"));

    let net = GuestNet::new(GUEST_IP).with_gateway(GATEWAY);
    net.validate().expect("valid network settings");
    let cmdline = kernel_cmdline_net(MEM_MIB, RATE_MIB, Some(&net));
    let host_port = free_port();
    let console = cache.path().join("console.log");
    let qemu_err = cache.path().join("qemu.stderr");
    let stderr = fs::File::create(&qemu_err).expect("create qemu.stderr");
    let boot_start = Instant::now();
    let mut qemu = KillOnDrop(
        common::guest_command(&image.kernel, &image.initrd, &cmdline, &console)
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{host_port}-{GUEST_ADDR}:{}",
                net.port
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={MAC}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start qemu-system-x86_64 (is QEMU installed?)"),
    );

    let fail = |why: &str| -> ! {
        panic!(
            "{why}\n--- console ---\n{}\n--- qemu stderr ---\n{}",
            read_lossy(&console),
            read_lossy(&qemu_err)
        )
    };

    // Wait for the network and the service, and for the memory workload to be in its steady
    // state (filled), so the round trips are timed against a busy vCPU.
    let summary = loop {
        std::thread::sleep(Duration::from_millis(250));
        if let Ok(Some(status)) = qemu.0.try_wait() {
            fail(&format!("QEMU exited early: {status}"));
        }
        let text = read_lossy(&console);
        let s = ConsoleSummary::parse(&text);
        if let Some(e) = &s.net_error {
            fail(&format!("the guest could not configure its network: {e}"));
        }
        if let Some(e) = &s.tcp_error {
            fail(&format!("the guest's TCP service did not start: {e}"));
        }
        if text.contains("config-error") {
            fail("the guest refused its settings");
        }
        if let Some(code) = s.exited {
            fail(&format!("ferry-guest exited with status {code}"));
        }
        if s.mismatch_lines > 0 || s.last.is_some_and(|l| l.mismatches > 0) {
            fail("the guest reported memory mismatches");
        }
        if s.net_ip.is_some() && s.tcp_port.is_some() && s.status_lines_after_ready >= 1 {
            eprintln!(
                "boot to net + tcp + ready: {:.1} s",
                boot_start.elapsed().as_secs_f64()
            );
            break s;
        }
        if boot_start.elapsed() > BOOT_TIMEOUT {
            fail(&format!(
                "no `net`, `tcp` and `ready` lines within {BOOT_TIMEOUT:?}"
            ));
        }
    };
    for l in read_lossy(&console)
        .lines()
        .filter(|l| l.contains("FERRY-GUEST net") || l.contains("FERRY-GUEST tcp"))
    {
        eprintln!("console: {}", l.trim_end());
    }
    assert_eq!(summary.net_ip.as_deref(), Some(GUEST_IP));
    assert_eq!(summary.net_mac.as_deref(), Some(MAC));
    assert_eq!(summary.tcp_port, Some(net.port));
    let tick_before = summary.last.map_or(0, |l| l.tick);

    let stream = TcpStream::connect(("127.0.0.1", host_port))
        .unwrap_or_else(|e| fail(&format!("connect to the forwarded port {host_port}: {e}")));
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("set read timeout");
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = BufReader::new(stream);

    let mut rtts = Vec::with_capacity(REQUESTS);
    let mut last_tick = tick_before;
    for i in 0..REQUESTS {
        let token = format!("req-{i:03}-{}", "x".repeat(i % 40));
        let t = Instant::now();
        writer
            .write_all(format!("{token}\n").as_bytes())
            .unwrap_or_else(|e| fail(&format!("request {i}: send: {e}")));
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => fail(&format!("request {i}: the guest closed the connection")),
            Ok(_) => {}
            Err(e) => fail(&format!("request {i}: no answer: {e}")),
        }
        rtts.push(t.elapsed());
        let a = Answer::parse(&line)
            .unwrap_or_else(|| fail(&format!("request {i}: malformed answer {line:?}")));
        assert_eq!(a.token, token, "request {i}: {line:?}");
        assert_eq!(a.mismatches, 0, "request {i}: {line:?}");
        assert!(
            a.tick >= last_tick,
            "request {i}: tick went back from {last_tick}: {line:?}"
        );
        last_tick = a.tick;
    }
    // The same connection also survives a bad line.
    writer.write_all(b"not a token\n").expect("send");
    let mut line = String::new();
    reader.read_line(&mut line).expect("answer to a bad line");
    assert!(line.starts_with("error "), "{line:?}");

    let slowest = (0..REQUESTS).max_by_key(|&i| rtts[i]).unwrap_or(0);
    // The first request also waits for slirp to finish connecting to the guest (host-side
    // connect() returns as soon as slirp accepts) and for the guest to start its thread.
    let max_after_first = rtts[1..].iter().max().copied().unwrap_or_default();
    rtts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "{REQUESTS} round trips through slirp into the TCG guest: median {:.2} ms, min {:.2} ms, \
         p90 {:.2} ms, max {:.2} ms (request {slowest}), max without the first {:.2} ms; \
         ticks {tick_before}..={last_tick}",
        ms(rtts[REQUESTS / 2]),
        ms(rtts[0]),
        ms(rtts[REQUESTS * 9 / 10]),
        ms(rtts[REQUESTS - 1]),
        ms(max_after_first),
    );
    assert!(last_tick >= 1, "the tick is reported");

    // Held open, the connection keeps answering with the workload's progress.
    std::thread::sleep(Duration::from_millis(2500));
    writer.write_all(b"later\n").expect("send");
    let mut line = String::new();
    reader.read_line(&mut line).expect("answer after a pause");
    let a = Answer::parse(&line).unwrap_or_else(|| fail(&format!("malformed answer {line:?}")));
    assert!(a.tick > last_tick, "tick did not advance: {line:?}");

    // The workload kept running clean while serving.
    let s = ConsoleSummary::parse(&read_lossy(&console));
    assert_eq!(s.exited, None);
    assert_eq!(s.mismatch_lines, 0);
    assert!(s.last.is_some_and(|l| l.mismatches == 0));
}
